//! The scenario generator: from one u64 seed, the collections, ferry's config, the
//! server's faults, and a timed plan of what the other program writes and what
//! happens to the ferry process. A seed always gives the same scenario, whatever the
//! command-line flags; only the timing of a run varies.

use std::fmt;

use crate::rng::Rng;

/// The kinds of collection a scenario draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Append-only document table ferry creates: `events`, key `id`.
    Events,
    /// Seed 003's `evenement` table, created before ferry starts (columns).
    Evenement,
    /// Seed 003's `media` table with a BLOB column (columns).
    Media,
    /// Seed 000's `downloads` table, created by ferry with the seed's columns; mutable.
    Downloads,
    /// A mutable document collection.
    Jobs,
}

pub const TEMPLATES: [Template; 5] = [
    Template::Events,
    Template::Evenement,
    Template::Media,
    Template::Downloads,
    Template::Jobs,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updates {
    Put,
    Post,
    Ignore,
}

impl Updates {
    pub fn as_str(self) -> &'static str {
        match self {
            Updates::Put => "put",
            Updates::Post => "post",
            Updates::Ignore => "ignore",
        }
    }
}

/// One collection of a scenario.
#[derive(Clone, Debug)]
pub struct Spec {
    pub template: Template,
    /// `None`: append-only (no `updated_at`).
    pub updates: Option<Updates>,
    /// The foreign tables' `INTEGER PRIMARY KEY` has AUTOINCREMENT (keys never reused).
    pub autoincrement: bool,
    /// Sent in batches of at most this many records (`batch_endpoint`), or one a
    /// request.
    pub batch: Option<u32>,
}

/// Seeds from here on may send collections in batches. Lower seeds name the
/// scenarios they named before batches were modelled, so the fixed seeds found then
/// keep their meaning; fresh seeds are drawn from here on.
pub const BATCH_SEEDS: u64 = 1 << 44;

impl Spec {
    pub fn name(&self) -> &'static str {
        match self.template {
            Template::Events => "events",
            Template::Evenement => "evenement",
            Template::Media => "media",
            Template::Downloads => "downloads",
            Template::Jobs => "jobs",
        }
    }

    pub fn key_field(&self) -> &'static str {
        match self.template {
            Template::Evenement => "id_evenement",
            Template::Media => "id_media",
            _ => "id",
        }
    }

    pub fn endpoint(&self) -> &'static str {
        match self.template {
            Template::Events => "/api/events",
            Template::Evenement => "/api/evenements",
            Template::Media => "/api/media",
            Template::Downloads => "/api/downloads",
            Template::Jobs => "/api/jobs",
        }
    }

    /// The field whose text names the record, incarnation and version of the content
    /// (`<collection>/<key>/i<inc>/v<ver>`), so the check can tell them apart.
    pub fn sig_field(&self) -> &'static str {
        match self.template {
            Template::Events | Template::Jobs => "sig",
            Template::Evenement => "capteur",
            Template::Media => "nom",
            Template::Downloads => "torrent_name",
        }
    }

    pub fn mutable(&self) -> bool {
        self.updates.is_some()
    }

    /// SQLite keeps it as columns (not ferry's `(key, record)` document table).
    pub fn columns(&self) -> bool {
        matches!(
            self.template,
            Template::Evenement | Template::Media | Template::Downloads
        )
    }

    /// Created by the other program before ferry starts.
    pub fn foreign(&self) -> bool {
        matches!(self.template, Template::Evenement | Template::Media)
    }

    /// Keys are integers the store assigns (the foreign tables).
    pub fn assigned_keys(&self) -> bool {
        self.foreign()
    }

    pub fn toml(&self) -> String {
        let mut out = format!(
            "[[collections]]\nname = \"{}\"\nkey = \"{}\"\nendpoint = \"{}\"\n",
            self.name(),
            self.key_field(),
            self.endpoint()
        );
        match self.template {
            Template::Evenement | Template::Media => out.push_str("order_by = \"date\"\n"),
            _ => {}
        }
        if self.template == Template::Media {
            out.push_str("blob_fields = [\"video_data\"]\n");
        }
        if let Some(updates) = self.updates {
            out.push_str(&format!(
                "updated_at = \"updated_at\"\nupdates = \"{}\"\n",
                updates.as_str()
            ));
        }
        if let Some(max) = self.batch {
            out.push_str(&format!(
                "batch_endpoint = \"{}/batch\"\nbatch_max_records = {max}\n",
                self.endpoint()
            ));
        }
        out
    }

    pub fn describe(&self) -> String {
        let mut text = self.name().to_string();
        match (self.template, self.updates) {
            (Template::Evenement | Template::Media, _) => text.push_str(if self.autoincrement {
                " (foreign table, AUTOINCREMENT)"
            } else {
                " (foreign table, keys reused)"
            }),
            (_, Some(updates)) => text.push_str(&format!(" (updates = {})", updates.as_str())),
            (_, None) => text.push_str(" (append-only)"),
        }
        if let Some(max) = self.batch {
            text.push_str(&format!(" in batches of ≤ {max}"));
        }
        text
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Json,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Json => "json",
        }
    }

    pub fn other(self) -> Backend {
        match self {
            Backend::Sqlite => Backend::Json,
            Backend::Json => Backend::Sqlite,
        }
    }
}

/// ferry's config, the parts a scenario varies.
#[derive(Clone, Debug)]
pub struct FerryConf {
    pub max_concurrent: u32,
    pub timeout_ms: u64,
    pub max_retry_delay_ms: u64,
    pub retry_failed_every: &'static str,
    pub batch_size: u32,
}

/// What the server may do instead of a plain success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Stores the record, answers 2xx without an `id`.
    NoId,
    /// Stores the record, then drops the connection without answering.
    LostAnswer,
    /// Stores the record, then answers 500.
    StoreThen500,
    /// Answers nothing until the client gives up.
    Hang,
    /// Processes slowly (the key is "in progress" meanwhile), then stores and answers.
    Slow,
    Status500,
    Status503,
    /// 429 with `Retry-After`.
    Status429,
    /// 409 without processing.
    Status409,
    Status400,
    Status413,
    Redirect301,
    Redirect302,
    Redirect307,
    Redirect308,
}

pub const FAULT_KINDS: [FaultKind; 15] = [
    FaultKind::NoId,
    FaultKind::LostAnswer,
    FaultKind::StoreThen500,
    FaultKind::Hang,
    FaultKind::Slow,
    FaultKind::Status500,
    FaultKind::Status503,
    FaultKind::Status429,
    FaultKind::Status409,
    FaultKind::Status400,
    FaultKind::Status413,
    FaultKind::Redirect301,
    FaultKind::Redirect302,
    FaultKind::Redirect307,
    FaultKind::Redirect308,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::NoId => "2xx without id",
            FaultKind::LostAnswer => "lost answer (stored)",
            FaultKind::StoreThen500 => "stored, then 500",
            FaultKind::Hang => "hang",
            FaultKind::Slow => "slow (in progress)",
            FaultKind::Status500 => "500",
            FaultKind::Status503 => "503",
            FaultKind::Status429 => "429 + Retry-After",
            FaultKind::Status409 => "409",
            FaultKind::Status400 => "400",
            FaultKind::Status413 => "413",
            FaultKind::Redirect301 => "redirect 301",
            FaultKind::Redirect302 => "redirect 302",
            FaultKind::Redirect307 => "redirect 307",
            FaultKind::Redirect308 => "redirect 308",
        }
    }

    pub fn redirect(self) -> Option<u16> {
        match self {
            FaultKind::Redirect301 => Some(301),
            FaultKind::Redirect302 => Some(302),
            FaultKind::Redirect307 => Some(307),
            FaultKind::Redirect308 => Some(308),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FaultConf {
    /// Share of requests that get a fault.
    pub rate: f64,
    pub kinds: Vec<FaultKind>,
    /// Share of 422 answers (a key reused with another request) that carry the id
    /// stored under the key.
    pub id_in_422: f64,
    /// Seed of the server's per-request draws.
    pub seed: u64,
}

/// How `updated_at` moves in an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Forward, the usual.
    Forward,
    /// Backwards (a Pi without a clock, NTP stepping back).
    Backwards,
    /// The same instant in the other spelling, nothing else changed.
    Respell,
    /// The content changes, `updated_at` keeps its text (two writes within one tick
    /// of its clock): still a new version, which must go out.
    SameTick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A new record. `no_updated_at`: written without `updated_at` (it gets one later).
    Insert {
        no_updated_at: bool,
        extra_field: bool,
    },
    /// A live record changes; `pick` chooses which at the time (among live keys).
    Update {
        pick: u64,
        clock: Clock,
        extra_field: bool,
    },
    Delete {
        pick: u64,
    },
    /// A deleted key is written again, with new content: a new incarnation.
    Recreate {
        pick: u64,
    },
    /// Just before a quiet gap: a live record is deleted (with store-assigned keys
    /// the newest, so that the insert after the gap gets its key again where the
    /// table has no AUTOINCREMENT).
    DeleteBeforeGap {
        pick: u64,
    },
    /// Just after a quiet gap: the key deleted last is written again (with
    /// store-assigned keys, an insert). ferry had seconds to see the first record
    /// gone, so this one is a new record and must get a row of its own.
    RecreateAfterGap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    MaxConcurrent(u32),
    TimeoutMs(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchHow {
    /// SIGTERM, edit `storage.backend`, start again.
    Restart,
    /// Edit `storage.backend`, SIGHUP.
    Hup,
    /// SIGTERM, edit, start, `kill -9` during start-up (the migration), start again.
    KillDuringStart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Write {
        coll: usize,
        op: WriteOp,
    },
    /// `kill -9` of `ferry run`, then start again.
    Kill9,
    /// `kill -9` of ferry the moment the server receives its next request
    /// (`store_first`: after the server stored the record).
    KillOnRequest {
        store_first: bool,
    },
    /// SIGTERM (ferry must exit 0), then start again.
    Term,
    /// SIGHUP, with the config changed or not.
    Hup(Option<ConfigChange>),
    /// Switch `storage.backend` to the other one.
    Switch(SwitchHow),
    /// `ferry retry`.
    Retry,
    /// `ferry reset-tracking --collection C --yes`.
    Reset {
        coll: usize,
    },
    /// SIGTERM and no start: ferry is down while the other program writes (a backlog
    /// in every collection at the next start).
    Down,
    /// Start ferry again if it is down.
    Up,
    /// Nothing happens for this long (the events after it come later by as much): a
    /// gap in which ferry, if it runs, looks at the store and sees what was deleted.
    Quiet {
        ms: u64,
    },
}

impl Event {
    pub fn is_write(&self) -> bool {
        matches!(self, Event::Write { .. })
    }
}

#[derive(Clone, Debug)]
pub struct Timed {
    pub at_ms: u64,
    pub event: Event,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub backend: Backend,
    pub specs: Vec<Spec>,
    pub ferry: FerryConf,
    pub faults: FaultConf,
    pub events: Vec<Timed>,
}

impl Scenario {
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let mut shape = rng.fork(1);
        let mut plan = rng.fork(2);
        let mut fault_rng = rng.fork(3);

        let count = 1 + shape.below(3) as usize;
        let mut pool: Vec<Template> = TEMPLATES.to_vec();
        let mut specs = Vec::new();
        for _ in 0..count {
            let template = pool.remove(shape.below(pool.len() as u64) as usize);
            let updates = match template {
                Template::Downloads => Some(Updates::Put),
                Template::Jobs => Some(shape.pick(&[Updates::Put, Updates::Post, Updates::Ignore])),
                _ => None,
            };
            specs.push(Spec {
                template,
                updates,
                autoincrement: shape.chance(0.5),
                batch: None,
            });
        }
        if seed >= BATCH_SEEDS {
            // Its own stream: the other draws stay as they were.
            let mut batches = Rng::new(seed ^ 0xBA7C_4E5D_0C0F_FEE5);
            for spec in &mut specs {
                if batches.chance(0.5) {
                    spec.batch = Some(batches.pick(&[2, 3, 5, 50, 500]));
                }
            }
        }
        let backend = if shape.chance(0.5) {
            Backend::Sqlite
        } else {
            Backend::Json
        };
        let ferry = FerryConf {
            max_concurrent: shape.pick(&[1, 1, 1, 2, 3, 4, 8, 16]),
            timeout_ms: shape.range(300, 501),
            max_retry_delay_ms: shape.range(200, 501),
            retry_failed_every: shape.pick(&["2s", "1h"]),
            batch_size: shape.pick(&[250, 250, 20, 5]),
        };

        let rate = fault_rng.pick(&[0.0, 0.05, 0.1, 0.2, 0.3]);
        let mut kinds: Vec<FaultKind> = FAULT_KINDS
            .iter()
            .copied()
            .filter(|k| fault_rng.chance(if k.redirect().is_some() { 0.15 } else { 0.35 }))
            .collect();
        if kinds.is_empty() {
            kinds.push(fault_rng.pick(&FAULT_KINDS));
        }
        let faults = FaultConf {
            rate,
            kinds,
            id_in_422: if fault_rng.chance(0.8) { 1.0 } else { 0.0 },
            seed: fault_rng.next_u64(),
        };

        let workload_ms = plan.range(700, 1600);
        let mut events = Vec::new();
        let writes = plan.range(12, 49);
        for _ in 0..writes {
            let coll = plan.below(specs.len() as u64) as usize;
            let op = write_op(&mut plan, &specs[coll]);
            events.push(Timed {
                at_ms: plan.below(workload_ms),
                event: Event::Write { coll, op },
            });
        }
        // Writes come in bursts now and then (a program that writes several records
        // at once, a backlog after downtime).
        events.sort_by_key(|t| t.at_ms);
        let mut last_at = 0;
        for timed in events.iter_mut() {
            if plan.chance(0.25) {
                timed.at_ms = last_at + plan.below(3);
            }
            last_at = timed.at_ms;
        }
        let process_events = plan.below(5) + u64::from(plan.chance(0.3));
        for _ in 0..process_events {
            let roll = plan.below(110);
            let at_ms = plan.below(workload_ms);
            let event = match roll {
                0..=21 => Event::Kill9,
                22..=41 => Event::KillOnRequest {
                    store_first: plan.chance(0.5),
                },
                42..=51 => Event::Term,
                52..=61 => Event::Hup(match plan.below(4) {
                    0 => Some(ConfigChange::MaxConcurrent(plan.pick(&[1, 2, 4, 16]))),
                    1 => Some(ConfigChange::TimeoutMs(plan.range(300, 501))),
                    _ => None,
                }),
                62..=75 => Event::Switch(plan.pick(&[
                    SwitchHow::Restart,
                    SwitchHow::Restart,
                    SwitchHow::Hup,
                    SwitchHow::KillDuringStart,
                ])),
                76..=84 => Event::Retry,
                85..=93 => Event::Reset {
                    coll: plan.below(specs.len() as u64) as usize,
                },
                _ => {
                    events.push(Timed {
                        at_ms: at_ms + plan.range(100, 500),
                        event: Event::Up,
                    });
                    Event::Down
                }
            };
            events.push(Timed { at_ms, event });
        }
        events.sort_by_key(|t| t.at_ms);
        // A quiet gap of seconds, in a fifth of the scenarios (drawn from a stream of
        // its own, so the rest of the plan is the same with or without it): a record
        // deleted just before it, its key written again just after it. Reused keys
        // written in one go, or within a moment, may be taken for the same record
        // changed; after a gap that ferry ran through, the key is a new record's.
        let mut gap = rng.fork(4);
        if gap.chance(0.2) {
            let coll = gap.below(specs.len() as u64) as usize;
            let at_ms = gap.range(workload_ms / 2, workload_ms);
            let ms = gap.range(4000, 4500);
            for timed in events.iter_mut().filter(|t| t.at_ms > at_ms) {
                timed.at_ms += ms;
            }
            events.push(Timed {
                at_ms: at_ms.saturating_sub(gap.range(200, 400)),
                event: Event::Write {
                    coll,
                    op: WriteOp::Insert {
                        no_updated_at: false,
                        extra_field: false,
                    },
                },
            });
            events.push(Timed {
                at_ms,
                event: Event::Write {
                    coll,
                    op: WriteOp::DeleteBeforeGap {
                        pick: gap.next_u64(),
                    },
                },
            });
            events.push(Timed {
                at_ms,
                event: Event::Quiet { ms },
            });
            events.push(Timed {
                at_ms: at_ms + ms,
                event: Event::Write {
                    coll,
                    op: WriteOp::RecreateAfterGap,
                },
            });
            events.sort_by_key(|t| t.at_ms);
        }
        Scenario {
            seed,
            backend,
            specs,
            ferry,
            faults,
            events,
        }
    }

    /// An event, with its collection named.
    pub fn event_text(&self, event: &Event) -> String {
        let name = |coll: usize| self.specs.get(coll).map_or("?", Spec::name);
        match event {
            Event::Write { coll, op } => {
                let what = match op {
                    WriteOp::Insert {
                        no_updated_at,
                        extra_field,
                    } => format!(
                        "insert{}{}",
                        if *no_updated_at {
                            " without updated_at"
                        } else {
                            ""
                        },
                        if *extra_field {
                            " (+ uid on the JSON side)"
                        } else {
                            ""
                        }
                    ),
                    WriteOp::Update { pick, clock, .. } => {
                        format!("update (pick {}, {clock:?})", pick % 1000)
                    }
                    WriteOp::Delete { pick } => format!("delete (pick {})", pick % 1000),
                    WriteOp::Recreate { pick } => {
                        format!("re-create a deleted key (pick {})", pick % 1000)
                    }
                    WriteOp::DeleteBeforeGap { pick } => {
                        format!("delete before the gap (pick {})", pick % 1000)
                    }
                    WriteOp::RecreateAfterGap => {
                        "write the key deleted before the gap again".to_string()
                    }
                };
                format!("write {}: {what}", name(*coll))
            }
            Event::Reset { coll } => {
                format!("ferry reset-tracking --collection {} --yes", name(*coll))
            }
            other => other.to_string(),
        }
    }

    /// One line: the collections, backend, config and faults.
    pub fn describe(&self) -> String {
        let kinds: Vec<&str> = self.faults.kinds.iter().map(|k| k.name()).collect();
        let faults = if self.faults.rate > 0.0 {
            format!(
                "faults on {:.0} % of requests, from {}",
                self.faults.rate * 100.0,
                kinds.join(", ")
            )
        } else {
            "no faults".to_string()
        };
        format!(
            "{} backend; {}; max_concurrent {}, timeout {} ms, max_retry_delay {} ms, retry_failed_every {}, batch_size {}; {faults}{}",
            self.backend.as_str(),
            self.specs.iter().map(Spec::describe).collect::<Vec<_>>().join(", "),
            self.ferry.max_concurrent,
            self.ferry.timeout_ms,
            self.ferry.max_retry_delay_ms,
            self.ferry.retry_failed_every,
            self.ferry.batch_size,
            if self.faults.id_in_422 > 0.0 { "" } else { "; 422 answers carry no id" },
        )
    }
}

fn write_op(rng: &mut Rng, spec: &Spec) -> WriteOp {
    let pick = rng.next_u64();
    let roll = rng.below(100);
    if spec.mutable() {
        match roll {
            0..=29 => WriteOp::Insert {
                no_updated_at: rng.chance(0.2),
                extra_field: rng.chance(0.1),
            },
            30..=79 => WriteOp::Update {
                pick,
                clock: match rng.below(100) {
                    0..=84 => Clock::Forward,
                    85..=92 => Clock::Backwards,
                    93..=96 => Clock::Respell,
                    _ => Clock::SameTick,
                },
                extra_field: rng.chance(0.1),
            },
            80..=89 => WriteOp::Delete { pick },
            _ => WriteOp::Recreate { pick },
        }
    } else {
        match roll {
            0..=69 => WriteOp::Insert {
                no_updated_at: false,
                extra_field: false,
            },
            70..=84 => WriteOp::Delete { pick },
            _ => WriteOp::Recreate { pick },
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Write { coll, op } => write!(f, "write #{coll}: {op:?}"),
            Event::Kill9 => f.write_str("kill -9"),
            Event::KillOnRequest { store_first } => write!(
                f,
                "kill -9 on the next request ({})",
                if *store_first {
                    "after the server stored it"
                } else {
                    "before the server stores it"
                }
            ),
            Event::Term => f.write_str("SIGTERM, start again"),
            Event::Hup(None) => f.write_str("SIGHUP (config unchanged)"),
            Event::Hup(Some(change)) => write!(f, "SIGHUP with {change:?}"),
            Event::Switch(how) => write!(f, "backend switch ({how:?})"),
            Event::Retry => f.write_str("ferry retry"),
            Event::Reset { coll } => write!(f, "ferry reset-tracking of #{coll}"),
            Event::Down => f.write_str("SIGTERM, ferry stays down"),
            Event::Up => f.write_str("start ferry if it is down"),
            Event::Quiet { ms } => {
                write!(f, "quiet for {ms} ms (nothing written, ferry left alone)")
            }
        }
    }
}
