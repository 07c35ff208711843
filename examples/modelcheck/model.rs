//! The model of what the other program wrote: every record of every collection, each
//! incarnation (a key written again after a delete is a new one) and each version of
//! its content. Every version carries a signature `<collection>/<key>/i<inc>/v<ver>`
//! in one of its fields, so the check can tell which version a server row or a store
//! record holds.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::rng::Rng;
use crate::scenario::{Clock, Spec, Template};

pub type Content = Map<String, Value>;

/// A record key: an integer or a string, as ferry's keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    pub fn text(&self) -> String {
        match self {
            Key::Int(i) => i.to_string(),
            Key::Text(s) => s.clone(),
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Key::Int(i) => json!(i),
            Key::Text(s) => json!(s),
        }
    }
}

/// `updated_at` as the model keeps it: seconds after 2026-01-01T10:00:00Z, and how
/// it is spelt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub offset: i64,
    /// `2026-01-01T10:00:05Z` (true) or `2026-01-01 10:00:05` (false).
    pub rfc3339: bool,
}

impl Stamp {
    pub fn text(self) -> String {
        let total = (10 * 3600 + self.offset).clamp(0, 86_399);
        let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
        if self.rfc3339 {
            format!("2026-01-01T{h:02}:{m:02}:{s:02}Z")
        } else {
            format!("2026-01-01 {h:02}:{m:02}:{s:02}")
        }
    }
}

/// The instant a timestamp names, in seconds after 2026-01-01 00:00 UTC, for the two
/// spellings the model writes (a time without a zone is UTC, as ferry reads it).
pub fn instant(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("2026-01-01")?;
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    let rest = rest.strip_suffix('Z').unwrap_or(rest);
    let mut parts = rest.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(h * 3600 + m * 60 + s)
}

#[derive(Clone, Debug)]
pub struct Rec {
    pub key: Key,
    pub inc: u32,
    pub ver: u32,
    pub live: bool,
    pub content: Content,
    pub stamp: Option<Stamp>,
    /// The first incarnation this one may be taken for. A key written again is a new
    /// record only once ferry has seen the first one gone; written again with no
    /// look by ferry in between (in one go, within a moment, while ferry was down),
    /// ferry may treat it as the same record changed (README "Delivery"). Then
    /// `first_inc` is the earlier incarnation's (and so on back); after a gap that
    /// ferry ran through it is `inc`: this incarnation must get a row of its own.
    pub first_inc: u32,
    /// When the other program deleted it (ms since the scenario's start), while dead.
    pub deleted_ms: Option<u64>,
}

pub struct CollModel {
    pub spec: Spec,
    /// By key text.
    pub records: BTreeMap<String, Rec>,
    /// Every version ever written, by signature (the latest spelling of it).
    pub versions: HashMap<String, Content>,
    /// Keys this model chose so far (for collections whose keys it chooses).
    pub next_key: i64,
    /// The largest integer key ever used.
    pub max_key_ever: i64,
    /// The key deleted last.
    pub last_deleted: Option<String>,
}

impl CollModel {
    pub fn new(spec: Spec) -> CollModel {
        CollModel {
            spec,
            records: BTreeMap::new(),
            versions: HashMap::new(),
            next_key: 1,
            max_key_ever: 0,
            last_deleted: None,
        }
    }

    pub fn live_keys(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, r)| r.live)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn dead_keys(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, r)| !r.live)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A key the model chooses for a new record.
    pub fn fresh_key(&mut self) -> Key {
        let n = self.next_key;
        self.next_key += 1;
        match self.spec.template {
            Template::Jobs => Key::Text(format!("job-{n}")),
            Template::Downloads => Key::Text(format!("dl-{n}")),
            _ => Key::Int(n),
        }
    }

    /// The key the store would give a new row of a foreign table, on the JSON side:
    /// one more than the largest live key (keys reused), or than any key ever
    /// (AUTOINCREMENT).
    pub fn assigned_key(&self) -> i64 {
        let live_max = self
            .records
            .values()
            .filter(|r| r.live)
            .filter_map(|r| match r.key {
                Key::Int(i) => Some(i),
                Key::Text(_) => None,
            })
            .max()
            .unwrap_or(0);
        if self.spec.autoincrement {
            self.max_key_ever.max(live_max) + 1
        } else {
            live_max + 1
        }
    }

    pub fn sig(&self, key: &Key, inc: u32, ver: u32) -> String {
        format!("{}/{}/i{inc}/v{ver}", self.spec.name(), key.text())
    }

    /// Records a written version.
    pub fn commit(&mut self, rec: Rec) {
        if let Key::Int(i) = rec.key {
            self.max_key_ever = self.max_key_ever.max(i);
        }
        let sig = self.sig(&rec.key, rec.inc, rec.ver);
        self.versions.insert(sig, rec.content.clone());
        self.records.insert(rec.key.text(), rec);
    }

    /// The incarnation a new record under `key` is: one after the last one.
    pub fn next_inc(&self, key: &Key) -> u32 {
        self.records.get(&key.text()).map_or(1, |r| r.inc + 1)
    }
}

/// Builds the content of one version of a record.
pub struct Builder<'a> {
    pub rng: &'a mut Rng,
    /// Seconds after 10:00:00 of "now", for dates.
    pub now: i64,
}

impl Builder<'_> {
    pub fn content(
        &mut self,
        coll: &CollModel,
        key: &Key,
        inc: u32,
        ver: u32,
        stamp: Option<Stamp>,
        uid: Option<Value>,
    ) -> Content {
        let spec = &coll.spec;
        let sig = coll.sig(key, inc, ver);
        let date = Stamp {
            offset: self.now,
            rfc3339: true,
        }
        .text();
        // A value with a fraction, so SQLite's REAL and JSON agree on its spelling.
        let progress = (u64::from(ver) * 37 % 100) as f64 + 0.25;
        let mut c = Map::new();
        c.insert(spec.key_field().to_string(), key.to_value());
        match spec.template {
            Template::Events => {
                c.insert("sig".into(), json!(sig));
                c.insert("date".into(), json!(date));
                c.insert("value".into(), json!(self.rng.below(1000)));
            }
            Template::Jobs => {
                c.insert("sig".into(), json!(sig));
                c.insert(
                    "status".into(),
                    json!(["queued", "running", "done"][ver.min(3) as usize - 1]),
                );
                c.insert("progress".into(), json!(progress));
            }
            Template::Downloads => {
                c.insert("torrent_name".into(), json!(sig));
                c.insert(
                    "status".into(),
                    json!(["queued", "downloading", "completed"][ver.min(3) as usize - 1]),
                );
                c.insert("progress".into(), json!(progress));
                c.insert(
                    "downloaded_size".into(),
                    json!(u64::from(ver) * 1_048_576 + self.rng.below(1000)),
                );
            }
            Template::Evenement => {
                c.insert("date".into(), json!(date));
                c.insert("capteur".into(), json!(sig));
                c.insert(
                    "type".into(),
                    json!(["mouvement", "porte", "fumee"][self.rng.below(3) as usize]),
                );
                c.insert(
                    "valeur".into(),
                    json!(self.rng.below(10_000) as f64 / 8.0 + 0.125),
                );
            }
            Template::Media => {
                c.insert("date".into(), json!(date));
                c.insert("nom".into(), json!(sig));
                let len = self.rng.range(512, 4096) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                c.insert(
                    "video_data".into(),
                    json!({"$base64": base64::engine::general_purpose::STANDARD.encode(bytes)}),
                );
            }
        }
        if let Some(stamp) = stamp {
            c.insert("updated_at".into(), json!(stamp.text()));
        }
        if let Some(uid) = uid {
            c.insert("uid".into(), uid);
        }
        c
    }
}

/// Where a signature points: collection, key text, incarnation, version.
pub fn parse_sig(sig: &str) -> Option<(String, String, u32, u32)> {
    let mut parts = sig.rsplitn(3, '/');
    let ver = parts.next()?.strip_prefix('v')?.parse().ok()?;
    let inc = parts.next()?.strip_prefix('i')?.parse().ok()?;
    let (coll, key) = parts.next()?.split_once('/')?;
    Some((coll.to_string(), key.to_string(), inc, ver))
}

/// How an update moves `updated_at`.
pub fn next_stamp(previous: Option<Stamp>, clock: Clock, now: i64, rng: &mut Rng) -> Stamp {
    match (previous, clock) {
        (None, _) => Stamp {
            offset: now,
            rfc3339: rng.chance(0.5),
        },
        (Some(p), Clock::Forward) => Stamp {
            offset: now.max(p.offset + 1),
            rfc3339: rng.chance(0.5),
        },
        (Some(p), Clock::Backwards) => Stamp {
            offset: p.offset - rng.range(1, 120) as i64,
            rfc3339: rng.chance(0.5),
        },
        (Some(p), Clock::Respell) => Stamp {
            offset: p.offset,
            rfc3339: !p.rfc3339,
        },
        (Some(p), Clock::SameTick) => p,
    }
}
