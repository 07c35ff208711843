//! The check: the server's rows against the model of the store, the store against
//! the model, and what ferry's tracking says about what is missing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;

use crate::model::{instant, parse_sig, CollModel, Content};
use crate::scenario::Updates;
use crate::server::{Request, Row};
use crate::store::Track;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A record (or a field of one) the server or the store should have and has not,
    /// with ferry believing it delivered.
    Lost,
    /// A record stored twice or more at the server (per reset-tracking epoch).
    Duplicated,
    /// The server holds an older state of a record than the store.
    Stale,
    /// A record the other program deleted is back in the store, or an older state of
    /// one.
    Revived,
    /// Content the store never held, at the server or in the store.
    Extra,
    FollowedRedirect,
    /// The same Idempotency-Key sent with a different request (the server said 422).
    KeyReuse,
    /// Records left pending: ferry did not converge in time.
    Stalled,
    /// ferry exited unexpectedly, failed to start or stop, or a command failed.
    Crash,
}

pub const KINDS: [Kind; 9] = [
    Kind::Lost,
    Kind::Duplicated,
    Kind::Stale,
    Kind::Revived,
    Kind::Extra,
    Kind::FollowedRedirect,
    Kind::KeyReuse,
    Kind::Stalled,
    Kind::Crash,
];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Lost => "lost",
            Kind::Duplicated => "duplicated",
            Kind::Stale => "stale",
            Kind::Revived => "revived",
            Kind::Extra => "extra",
            Kind::FollowedRedirect => "followed-redirect",
            Kind::KeyReuse => "key-reuse",
            Kind::Stalled => "stalled",
            Kind::Crash => "crash",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: Kind,
    pub detail: String,
    /// The records it is about, `collection/key`, to pick the history lines to show.
    pub records: Vec<String>,
}

impl Finding {
    pub fn new(kind: Kind, detail: impl Into<String>, records: Vec<String>) -> Finding {
        Finding {
            kind,
            detail: detail.into(),
            records,
        }
    }
}

/// Record counts of one check.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub lost: u64,
    pub duplicated: u64,
    pub stale: u64,
    pub revived: u64,
    pub extra: u64,
    /// Undelivered, with a reason in ferry's tracking.
    pub excused: u64,
    /// Retries of a claimed create whose record changed since, under the claimed
    /// key (answered 422: the server holds the claimed attempt; README "Delivery").
    pub changed_claim_retries: u64,
    pub pending: u64,
}

/// Numbers equal as numbers, `updated_at` as instants (when `instants`), blobs as
/// the server gets them (plain base64) or as stored (`{"$base64": …}`).
fn same_value(field: &str, expected: &Value, got: Option<&Value>, instants: bool) -> bool {
    let Some(got) = got else { return false };
    match expected {
        Value::Number(n) => got
            .as_f64()
            .zip(n.as_f64())
            .is_some_and(|(a, b)| (a - b).abs() < 1e-9),
        Value::String(s) if instants && field == "updated_at" => got
            .as_str()
            .is_some_and(|g| g == s || (instant(g).is_some() && instant(g) == instant(s))),
        Value::Object(tagged) if tagged.len() == 1 && tagged.contains_key("$base64") => {
            got == expected || got.as_str() == tagged.get("$base64").and_then(Value::as_str)
        }
        other => got == other,
    }
}

/// The first field of `expected` that `got` does not hold, if any.
pub fn mismatch(expected: &Content, got: &Value, instants: bool) -> Option<String> {
    for (field, value) in expected {
        let held = got.get(field);
        if !same_value(field, value, held, instants) {
            let shown = |v: Option<&Value>| {
                let text = v.map_or("nothing".to_string(), Value::to_string);
                if text.len() > 60 {
                    format!("{}…", &text[..60])
                } else {
                    text
                }
            };
            return Some(format!(
                "{field} is {} where the store had {}",
                shown(held),
                shown(Some(value))
            ));
        }
    }
    None
}

/// What the server has of one collection, by what its rows say they are.
struct RowInfo<'a> {
    row: &'a Row,
    created: Option<(String, u32, u32)>,
    current: Option<(String, u32, u32)>,
}

fn sig_of(body: &Value, field: &str, collection: &str) -> Option<(String, u32, u32)> {
    let (coll, key, inc, ver) = parse_sig(body.get(field)?.as_str()?)?;
    (coll == collection).then_some((key, inc, ver))
}

/// A live record missing from the server in its latest state.
pub struct Missing {
    pub collection: String,
    pub key: String,
    /// The server has an older state of this incarnation.
    pub older: bool,
}

/// The live records whose latest state the server does not hold (by the
/// collection's `updates`), in model order.
pub fn missing(colls: &[CollModel], rows: &[Row]) -> Vec<Missing> {
    let mut out = Vec::new();
    for coll in colls {
        let spec = &coll.spec;
        let field = spec.sig_field();
        let infos: Vec<RowInfo> = rows
            .iter()
            .filter(|r| r.endpoint == spec.endpoint())
            .map(|row| RowInfo {
                row,
                created: sig_of(&row.created, field, spec.name()),
                current: sig_of(&row.body, field, spec.name()),
            })
            .collect();
        for (key, rec) in coll.records.iter().filter(|(_, r)| r.live) {
            // This incarnation, or one it may be taken for: its key was written
            // again with no look by ferry since the delete (Rec::first_inc).
            let taken_for = |s: &Option<(String, u32, u32)>| {
                s.as_ref()
                    .is_some_and(|(k, i, _)| k == key && (rec.first_inc..=rec.inc).contains(i))
            };
            let latest = |s: &Option<(String, u32, u32)>| {
                s.as_ref()
                    .is_some_and(|(k, i, v)| k == key && *i == rec.inc && *v == rec.ver)
            };
            let held = match spec.updates {
                // Changes are not sent: a row created from this incarnation, or
                // from the one it was taken for changed (the server keeps that).
                None | Some(Updates::Ignore) => infos.iter().any(|r| taken_for(&r.created)),
                Some(Updates::Post) => infos
                    .iter()
                    .any(|r| latest(&r.created) || latest(&r.current)),
                Some(Updates::Put) => infos.iter().any(|r| {
                    latest(&r.current) && mismatch(&rec.content, &r.row.body, true).is_none()
                }),
            };
            if !held {
                let older = infos
                    .iter()
                    .any(|r| taken_for(&r.created) || taken_for(&r.current));
                out.push(Missing {
                    collection: spec.name().to_string(),
                    key: key.clone(),
                    older,
                });
            }
        }
    }
    out
}

pub struct Input<'a> {
    pub colls: &'a [CollModel],
    pub rows: &'a [Row],
    pub log: &'a [Request],
    pub tracking: &'a HashMap<(String, String), Track>,
    /// `reset-tracking` runs: collection index, and the last request seq before it
    /// started and when it had ended.
    pub resets: &'a [(usize, u64, u64)],
}

/// The server against the model; ferry's tracking for what is missing.
pub fn check_server(input: &Input, findings: &mut Vec<Finding>, tally: &mut Tally) {
    let requests_by_seq: HashMap<u64, &Request> = input.log.iter().map(|r| (r.seq, r)).collect();
    for (index, coll) in input.colls.iter().enumerate() {
        let spec = &coll.spec;
        let name = spec.name();
        let field = spec.sig_field();
        let rows: Vec<&Row> = input
            .rows
            .iter()
            .filter(|r| r.endpoint == spec.endpoint())
            .collect();
        // Nothing extra: every state a row held is a version the store held.
        for row in &rows {
            for body in &row.history {
                let problem = match body.get(field).and_then(Value::as_str) {
                    None => Some(format!("no {field} field: not a record of the store")),
                    Some(sig) => match parse_sig(sig) {
                        Some((c, _, _, _)) if c != name => {
                            Some(format!("a record of {c} at the endpoint of {name}"))
                        }
                        Some(_) => match coll.versions.get(sig) {
                            None => Some(format!("{sig}, a version the store never held")),
                            Some(expected) => mismatch(expected, body, true)
                                .map(|m| format!("{sig} with other content: {m}")),
                        },
                        None => Some(format!("{field} = {sig:?} names no record")),
                    },
                };
                if let Some(problem) = problem {
                    tally.extra += 1;
                    findings.push(Finding::new(
                        Kind::Extra,
                        format!("{name}: server row {} holds {problem}", row.id),
                        Vec::new(),
                    ));
                    break;
                }
            }
        }
        // Stored once per epoch: rows created by POST, per record incarnation (per
        // version with updates = "post"), between two reset-tracking runs. A request
        // that arrived while a reset-tracking ran may be of the epoch before or after
        // it: the epochs a row may be of.
        let epochs = |seq: u64| {
            let surely = |(c, _, end): &&(usize, u64, u64)| *c == index && *end < seq;
            let maybe = |(c, start, _): &&(usize, u64, u64)| *c == index && *start < seq;
            (
                input.resets.iter().filter(surely).count(),
                input.resets.iter().filter(maybe).count(),
            )
        };
        // With updates = "post" a version is updated_at's text plus the content: the
        // same content under a re-spelt updated_at is another version, posted again.
        let mut groups: BTreeMap<(String, u32, u32, String), Vec<&Row>> = BTreeMap::new();
        for row in &rows {
            if let Some((key, inc, ver)) = sig_of(&row.created, field, name) {
                let (ver, spelt) = if spec.updates == Some(Updates::Post) {
                    let spelt = row
                        .created
                        .get("updated_at")
                        .map_or(String::new(), Value::to_string);
                    (ver, spelt)
                } else {
                    (0, String::new())
                };
                groups.entry((key, inc, ver, spelt)).or_default().push(row);
            }
        }
        for ((key, inc, ver, _), group) in groups {
            if group.len() < 2 {
                continue;
            }
            // One row per epoch at most: rows given the earliest epoch each may be of,
            // those whose epochs end first first; a row with none left is one too many.
            let mut ranged: Vec<(usize, usize)> =
                group.iter().map(|r| epochs(r.created_seq)).collect();
            ranged.sort_by_key(|&(lo, hi)| (hi, lo));
            let mut used = std::collections::BTreeSet::new();
            let extra = ranged
                .iter()
                .filter(|&&(lo, hi)| match (lo..=hi).find(|e| !used.contains(e)) {
                    Some(e) => !used.insert(e),
                    None => true,
                })
                .count();
            if extra == 0 {
                continue;
            }
            let ep = ranged.iter().map(|&(_, hi)| hi).max().unwrap_or(0);
            tally.duplicated += extra as u64;
            let how: Vec<String> = group
                .iter()
                .map(|row| {
                    let request = requests_by_seq.get(&row.created_seq);
                    format!(
                        "row {} ({} by request #{} key {})",
                        row.id,
                        row.created
                            .get(field)
                            .and_then(Value::as_str)
                            .unwrap_or("?"),
                        row.created_seq,
                        request
                            .and_then(|r| r.key.clone())
                            .unwrap_or_else(|| "none".into())
                    )
                })
                .collect();
            let sigs: std::collections::BTreeSet<&str> = group
                .iter()
                .filter_map(|row| row.created.get(field).and_then(Value::as_str))
                .collect();
            let same = if sigs.len() == 1 {
                " (the same version each time; the bodies differ at most in how updated_at is spelt)"
            } else {
                ""
            };
            findings.push(Finding::new(
                Kind::Duplicated,
                format!(
                    "{name} {key} (incarnation {inc}{}) stored {} times{}{same}: {}",
                    if ver > 0 {
                        format!(", version {ver}")
                    } else {
                        String::new()
                    },
                    group.len(),
                    if ep > 0 {
                        format!(" after reset-tracking #{ep}")
                    } else {
                        String::new()
                    },
                    how.join("; ")
                ),
                vec![format!("{name}/{key}")],
            ));
        }
    }
    // Every live record, in its latest state.
    for m in missing(input.colls, input.rows) {
        let track = input.tracking.get(&(m.collection.clone(), m.key.clone()));
        let label = format!("{} {}", m.collection, m.key);
        let coll = input.colls.iter().find(|c| c.spec.name() == m.collection);
        let rec = coll.and_then(|c| c.records.get(&m.key));
        let latest = rec.map_or(String::new(), |r| {
            let how = if r.first_inc < r.inc {
                format!(", may be taken for i{} changed", r.first_inc)
            } else if r.inc > 1 {
                format!(", written again after ferry saw i{} gone", r.inc - 1)
            } else {
                String::new()
            };
            format!("i{} v{}{how}", r.inc, r.ver)
        });
        match track {
            Some(t)
                if t.status == "failed" && t.error.as_deref().is_some_and(|e| !e.is_empty()) =>
            {
                tally.excused += 1;
            }
            Some(t) if t.status == "success" => {
                let (kind, what) = if m.older {
                    tally.stale += 1;
                    (Kind::Stale, "the server holds an older state")
                } else {
                    tally.lost += 1;
                    (Kind::Lost, "the server has no row for it")
                };
                findings.push(Finding::new(
                    kind,
                    format!(
                        "{label} (latest {latest}): {what}, tracking says success (version {}, remote id {})",
                        t.version.as_deref().unwrap_or("none"),
                        t.remote_id.as_deref().unwrap_or("none")
                    ),
                    vec![format!("{}/{}", m.collection, m.key)],
                ));
            }
            _ => tally.pending += 1,
        }
    }
    // Requests that show a redirect was followed, or a key reused.
    let followed: Vec<&Request> = input.log.iter().filter(|r| r.followed_redirect).collect();
    if !followed.is_empty() {
        let shown: Vec<String> = followed
            .iter()
            .take(3)
            .map(|r| format!("#{} {} {}", r.seq, r.method, r.path))
            .collect();
        findings.push(Finding::new(
            Kind::FollowedRedirect,
            format!(
                "{} request(s) at a redirect target or GET: {}",
                followed.len(),
                shown.join(", ")
            ),
            Vec::new(),
        ));
    }
    // A create retried under its claimed key after its record changed (a kill -9
    // before the claimed attempt's answer was recorded, a claimed body too large to
    // keep) is answered 422 by a server that keeps keys: ferry reads that as "the
    // server holds the claimed attempt" (README "Delivery"). Its key was first sent
    // by a POST of the same record. Any other key sent with another request is a
    // finding.
    let record_of = |r: &Request| {
        r.sig
            .as_deref()
            .and_then(parse_sig)
            .map(|(c, k, _, _)| (c, k))
    };
    let changed_claim_retry = |r: &Request| {
        let earlier: Vec<&Request> = input
            .log
            .iter()
            .filter(|e| e.seq < r.seq && e.key.is_some() && e.key == r.key)
            .collect();
        r.method == "POST"
            && record_of(r).is_some()
            && !earlier.is_empty()
            && earlier
                .iter()
                .all(|e| e.method == "POST" && record_of(e) == record_of(r))
    };
    let reused: Vec<&Request> = input
        .log
        .iter()
        .filter(|r| r.key_reused)
        .filter(|r| {
            let accepted = changed_claim_retry(r);
            if accepted {
                tally.changed_claim_retries += 1;
            }
            !accepted
        })
        .collect();
    if !reused.is_empty() {
        let shown: Vec<String> = reused
            .iter()
            .take(3)
            .map(|r| {
                format!(
                    "#{} {} {} key {} ({})",
                    r.seq,
                    r.method,
                    r.path,
                    r.key.as_deref().unwrap_or(""),
                    r.sig.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let records = reused
            .iter()
            .filter_map(|r| r.sig.as_deref().and_then(parse_sig))
            .map(|(c, k, _, _)| format!("{c}/{k}"))
            .collect();
        findings.push(Finding::new(
            Kind::KeyReuse,
            format!(
                "{} request(s) reused an Idempotency-Key with another request (422): {}",
                reused.len(),
                shown.join(", ")
            ),
            records,
        ));
    }
}

/// The store against the model: nothing deleted back, nothing older back, nothing
/// missing, no field lost. `already` holds what earlier looks reported.
pub fn check_store(
    colls: &[CollModel],
    store: &[BTreeMap<String, Content>],
    when: &str,
    already: &mut std::collections::HashSet<String>,
    findings: &mut Vec<Finding>,
    tally: &mut Tally,
) {
    for (coll, records) in colls.iter().zip(store) {
        let name = coll.spec.name();
        let field = coll.spec.sig_field();
        for (key, record) in records {
            let id = format!("{name}/{key}");
            let held = record.get(field).and_then(Value::as_str).unwrap_or("?");
            let problem = match coll.records.get(key) {
                None => Some((Kind::Extra, format!("{name} {key} is in the store ({held}) but was never written"))),
                Some(m) if !m.live => Some((
                    Kind::Revived,
                    format!("{name} {key} was deleted by the other program and is back in the store (holds {held}; last written i{} v{})", m.inc, m.ver),
                )),
                Some(m) => {
                    let sig = coll.sig(&m.key, m.inc, m.ver);
                    if held != sig {
                        if coll.versions.contains_key(held) {
                            Some((Kind::Revived, format!("{name} {key}: an older state came back in the store ({held}; last written {sig})")))
                        } else {
                            Some((Kind::Extra, format!("{name} {key}: the store holds {held}, never written (last written {sig})")))
                        }
                    } else {
                        mismatch(&m.content, &Value::Object(record.clone()), false)
                            .map(|m| (Kind::Lost, format!("{name} {key} ({sig}) changed in the store: {m}")))
                    }
                }
            };
            if let Some((kind, detail)) = problem {
                if already.insert(format!("{kind}:{id}")) {
                    match kind {
                        Kind::Revived => tally.revived += 1,
                        Kind::Lost => tally.lost += 1,
                        _ => tally.extra += 1,
                    }
                    findings.push(Finding::new(kind, format!("{detail} ({when})"), vec![id]));
                }
            }
        }
        for (key, m) in coll.records.iter().filter(|(_, r)| r.live) {
            if !records.contains_key(key) {
                let id = format!("{name}/{key}");
                if already.insert(format!("gone:{id}")) {
                    tally.lost += 1;
                    findings.push(Finding::new(
                        Kind::Lost,
                        format!(
                            "{name} {key} (i{} v{}) is gone from the store ({when})",
                            m.inc, m.ver
                        ),
                        vec![id],
                    ));
                }
            }
        }
    }
}
