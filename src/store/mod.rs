//! The store: ferry's one seam to its storage. [`Store`] is what the rest of ferry
//! uses; [`sqlite::SqliteStore`] and [`json::JsonStore`] implement it, and one of them is
//! chosen at start-up by [`open`]. Both are checked by the same conformance suite
//! (`tests/store_conformance.rs`).
//!
//! The store owns records, delivery tracking (`sync_tracking`), deletion tombstones
//! and the bookkeeping that makes finding work cheap. It never talks to the network.

pub(crate) mod atomic;
mod error;
pub mod json;
pub mod migrate;
pub mod record;
pub mod repair;
pub mod sqlite;
pub mod time;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::StoreError;
pub use record::{Key, Record};
pub use time::{now_ms, rfc3339, Millis};

use crate::config::{Backend, Collection, Config};

/// A delivery's state, as the seed `003_…` `sync_tracking.sync_status` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// Delivered (`version` is the version the server has).
    Success,
    /// Refused by the server for good; tried again every `retry_failed_every`.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Success => "success",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "pending" => Some(Status::Pending),
            "success" => Some(Status::Success),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One row of `sync_tracking`: what ferry knows of one record's delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracking {
    pub collection: String,
    pub key: Key,
    pub status: Status,
    /// The server's id for the record (from the `remote_id` JSON pointer).
    pub remote_id: Option<Key>,
    /// When the status last changed (RFC 3339, UTC; the seed wrote local times).
    pub sync_date: String,
    pub error_message: Option<String>,
    /// Why the last attempt got no answer, as a code (`timeout`, `refused`, `dns`,
    /// `tls`, `connection`, `request`, `no_remote_id`): what `ferry diagnose` groups
    /// by. `None` when the answer's status says it (or for rows written before ferry
    /// recorded it: then the message is read).
    pub error_cause: Option<String>,
    /// Requests made for the current version.
    pub attempts: u32,
    /// When the record may be tried next (Unix ms); `None` means now.
    pub next_attempt_at: Option<Millis>,
    /// The record version this row is about: delivered (success) or being delivered.
    pub version: Option<String>,
    /// A fingerprint of the content of that version ([`record::fingerprint`]): two
    /// writes within one tick of `updated_at` differ here. `None` for rows written
    /// before ferry recorded it (the seed service's, older ferry's).
    pub fingerprint: Option<u64>,
    pub last_http_status: Option<u16>,
    /// Bytes of payload the server acknowledged for this record.
    pub bytes_sent: u64,
    /// The server is known to hold some version of the record (a create succeeded):
    /// what is sent later is an update, never a second create.
    pub created: bool,
    /// A create whose outcome is not known yet, recorded before its request left: until
    /// a definite answer, every retry reuses its Idempotency-Key, so a crash, a reload
    /// or a change of the record can never cause a second create.
    pub claim: Option<Claim>,
}

impl Tracking {
    /// The record, now at `version` with content `fingerprint`, is not in the state
    /// this row says was delivered (or is being delivered). A row without a version
    /// (the seed service's) stands for whatever state the record has.
    pub fn differs_from(&self, version: &str, fingerprint: u64) -> bool {
        self.version
            .as_deref()
            .is_some_and(|v| v != version || self.fingerprint.is_some_and(|f| f != fingerprint))
    }
}

/// A claimed attempt to create a record on the server (see [`Tracking::claim`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The Idempotency-Key the create was sent with.
    pub key: String,
    /// The record version it carried, and that version's content fingerprint.
    pub version: String,
    pub fingerprint: u64,
    /// A hash of the request body it carried (FNV-1a of the bytes), to tell a retry
    /// with the same body from one whose record changed meanwhile.
    pub body_hash: u64,
    pub state: ClaimState,
    /// The body itself, kept once an attempt's fate is unknown (when it is small
    /// enough, [`CLAIM_BODY_MAX`]): every retry then sends exactly what the server may
    /// already hold, and its answer says what it holds.
    pub body: Option<Vec<u8>>,
}

/// The largest claimed body kept in `sync_tracking` (bytes).
pub const CLAIM_BODY_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// Written just before the request. Read back after a restart, it means the
    /// process died with the request's outcome unknown.
    Sending,
    /// An attempt ended without a definite answer (no answer, 5xx, 409): the server
    /// may hold the record.
    Unsure,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Sending => "sending",
            ClaimState::Unsure => "unsure",
        }
    }

    /// An unknown spelling reads as `Unsure`: the safe reading.
    pub fn parse(text: &str) -> ClaimState {
        match text {
            "sending" => ClaimState::Sending,
            _ => ClaimState::Unsure,
        }
    }
}

impl Tracking {
    /// A fresh row for a record about to be tried for the first time.
    pub fn new(collection: &str, key: Key, now: Millis) -> Tracking {
        Tracking {
            collection: collection.to_string(),
            key,
            status: Status::Pending,
            remote_id: None,
            sync_date: rfc3339(now),
            error_message: None,
            error_cause: None,
            attempts: 0,
            next_attempt_at: None,
            version: None,
            fingerprint: None,
            last_http_status: None,
            bytes_sent: 0,
            created: false,
            claim: None,
        }
    }
}

/// A record deleted through ferry, remembered so a migration does not bring it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub key: Key,
    pub deleted_at: Millis,
}

/// How many records a collection holds, by delivery state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    /// Delivered (tracking says success).
    pub success: u64,
    /// Refused by the server (tracking says failed).
    pub failed: u64,
    /// Neither: never tried yet, or waiting for a retry.
    pub pending: u64,
}

/// What `ferry stats` shows of a collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub counts: Counts,
    /// Payload bytes the server acknowledged.
    pub bytes_delivered: u64,
    /// The latest delivery (`sync_date` of the newest success).
    pub last_success: Option<String>,
    /// The oldest record tried and not delivered yet (`sync_date`, pending or failed).
    pub oldest_pending: Option<String>,
}

/// What a migration writes into one collection of the store it brings up to date.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merge {
    /// Records to insert or replace.
    pub upserts: Vec<Record>,
    /// Records to delete (leaving tombstones).
    pub deletes: Vec<Key>,
    /// Tracking rows to write.
    pub tracking: Vec<Tracking>,
    /// Tracking rows to forget (of records replaced by ones never delivered).
    pub untrack: Vec<Key>,
    /// The baseline to keep for the next migration, written with the rest (SQLite: in
    /// the same transaction; JSON: after the collection file).
    pub baseline: Option<Baseline>,
}

impl Merge {
    /// Whether the merge changes records or tracking (and not only the baseline).
    pub fn writes_data(&self) -> bool {
        !self.upserts.is_empty()
            || !self.deletes.is_empty()
            || !self.tracking.is_empty()
            || !self.untrack.is_empty()
    }
}

/// What the two stores of a migration held, record by record, when one was last
/// brought up to date from the other: the start-up migration is a three-way merge
/// against it, so that a record missing on one side is told apart as deleted there
/// (it was in the baseline) or new on the other (it was not). The store migrated into
/// keeps it (SQLite: `ferry_baseline*` tables; JSON: `ferry_baseline.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    /// Counts up with every migration of the collection, whichever way it went: of the
    /// two stores' baselines the higher one is the latest (a wall clock can go back).
    pub generation: u64,
    /// The `store_id` of the store read from, and of the store written into.
    pub source_id: String,
    pub target_id: String,
    /// The source's `change_mark` before it was read: while it is the same and the
    /// migration goes the same way, there is nothing new to look at.
    pub source_mark: String,
    /// Per key, the content fingerprint ([`record::fingerprint`] of the whole record)
    /// on the source and on the target after the merge; `None`: absent on that side.
    pub records: BTreeMap<Key, (Option<u64>, Option<u64>)>,
}

/// What [`Store::due`] is asked for.
#[derive(Clone, Copy, Debug)]
pub struct DueQuery {
    pub now: Millis,
    pub limit: usize,
    /// Also return delivered records whose version has changed since (collections
    /// with `updated_at` whose `updates` is not `ignore`).
    pub include_changed: bool,
    /// Look at every record instead of only those past the store's watermark: the
    /// periodic safety net against changes a watermark cannot see.
    pub full_scan: bool,
    /// Spread the store's background work (the SQLite sweep) over calls, as the
    /// daemon wants; a one-shot pass (`sync --once`) does it all now.
    pub pace: bool,
    /// Only look: write nothing (no watermarks, no marks, nothing forgotten), as
    /// `ferry sync --dry-run` beside a running daemon must.
    pub peek: bool,
}

/// A record that needs delivery, with what tracking knows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    pub key: Key,
    /// `None` when a tracked record has been deleted since.
    pub record: Option<Record>,
    /// The record's version ([`record::version`]); empty when it was deleted.
    pub version: String,
    /// A fingerprint of its content ([`record::fingerprint`]); 0 when it was deleted.
    pub fingerprint: u64,
    pub tracking: Option<Tracking>,
    /// How the store found it.
    pub found: Found,
}

/// Why the store handed a record out: each source gets its share of a batch, so that
/// records that keep changing cannot crowd out new ones (or the other way round).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Found {
    /// Its tracking row says it is due for a (re)try.
    Retry,
    /// Never tried.
    New,
    /// Delivered, at another version than it has now.
    Changed,
}

/// ferry's storage. Methods take `&mut self` because both backends keep caches and
/// prepared state; a store is used from one thread at a time.
pub trait Store: Send {
    fn backend(&self) -> Backend;

    /// Inserts or replaces a record (the key comes from the record's key field).
    fn put(&mut self, collection: &str, record: Record) -> Result<Key, StoreError>;
    /// Inserts or replaces many records in one transaction / one file write.
    fn put_many(&mut self, collection: &str, records: Vec<Record>) -> Result<(), StoreError>;
    fn get(&mut self, collection: &str, key: &Key) -> Result<Option<Record>, StoreError>;
    /// Records in key order, after `after`, at most `limit`.
    fn list(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// Deletes a record and leaves a tombstone; `false` if there was none.
    fn delete(&mut self, collection: &str, key: &Key) -> Result<bool, StoreError>;
    fn tombstones(&mut self, collection: &str) -> Result<Vec<Tombstone>, StoreError>;

    /// Records needing delivery: never tried, due for a retry, or (on request) changed
    /// since delivered. Records never tried come in `order_by` order. Does not read
    /// what is already delivered, except on a `full_scan`.
    fn due(&mut self, collection: &str, query: &DueQuery) -> Result<Vec<Due>, StoreError>;
    fn tracking(&mut self, collection: &str, key: &Key) -> Result<Option<Tracking>, StoreError>;
    /// Tracking rows of a collection in key order, after `after`, at most `limit`.
    fn tracking_page(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Tracking>, StoreError>;
    /// Forgets the tracking rows of these records: they count as never tried.
    fn delete_tracking(&mut self, collection: &str, keys: &[Key]) -> Result<(), StoreError>;
    /// Writes tracking rows, all or none, in one transaction / one file write.
    fn write_tracking(&mut self, rows: &[Tracking]) -> Result<(), StoreError>;

    /// A quick integrity check: `None` when the store reads as sound, otherwise what
    /// is wrong. (SQLite: `PRAGMA quick_check`. JSON: every file is parsed when the
    /// store opens, so an opened JSON store has passed.)
    fn quick_check(&mut self) -> Result<Option<String>, StoreError>;

    /// Gives back memory held for speed (SQLite's page cache) before a long idle
    /// wait; the next pass reads its pages again from the OS.
    fn release_memory(&mut self) {}

    /// Counts, bytes delivered, last success and oldest pending, for `ferry stats`.
    fn summary(&mut self, collection: &str) -> Result<Summary, StoreError>;
    /// Records tried and not delivered (failed, or pending after an attempt), oldest
    /// first, at most `limit`: what `ferry diagnose` groups by cause.
    fn troubled(&mut self, collection: &str, limit: usize) -> Result<Vec<Tracking>, StoreError>;
    /// `ferry retry`: failed and waiting records are tried again now. Returns how many.
    fn retry_now(&mut self, collection: &str) -> Result<u64, StoreError>;
    /// `ferry reset-tracking`: forgets every delivery of a collection, so every record
    /// is sent again. Returns how many rows were forgotten.
    fn reset_tracking(&mut self, collection: &str) -> Result<u64, StoreError>;

    /// Records by delivery state, counted from indexes (for `STATUS=` and `stats`).
    fn counts(&mut self, collection: &str) -> Result<Counts, StoreError>;

    /// Applies a migration step to one collection (marking it as written now when it
    /// changes records) and keeps its baseline. SQLite: one transaction. JSON:
    /// tracking, tombstones, the collection file, then the baseline, each replaced
    /// atomically; the baseline last, so that a crash in between leaves the previous
    /// baseline, against which the next migration completes the job.
    fn apply_merge(&mut self, collection: &str, merge: &Merge) -> Result<(), StoreError>;

    /// This store's identity, kept inside it (a copy of the store keeps it; a store
    /// made anew gets a new one). A migration baseline counts only between the two
    /// stores it names. `create`: make one if there is none yet (`None` otherwise).
    fn store_id(&mut self, create: bool) -> Result<Option<String>, StoreError>;
    /// The migration baseline this store keeps for a collection, if any.
    fn baseline(&mut self, collection: &str) -> Result<Option<Baseline>, StoreError>;
    /// A text that changes whenever the collection's records, tombstones or tracking
    /// are written, by ferry or another program, as far as the store can tell without
    /// reading every record (JSON: the files' identities; SQLite: counts, the highest
    /// rowid and `updated_at`, ferry's write mark). Compared for equality only.
    fn change_mark(&mut self, collection: &str) -> Result<String, StoreError>;

    /// When the earliest pending or failed record of a collection may be tried again
    /// (Unix ms; 0 means now), read from an index, not by scanning — or when the
    /// store wants to be asked again for work it is finding (a sweep under way).
    fn next_attempt_at(&mut self, collection: &str) -> Result<Option<Millis>, StoreError>;

    /// A value that changes when another process writes to the store (SQLite's
    /// `data_version`, the JSON files' identities). Cheap enough to poll twice a second.
    fn change_token(&mut self) -> Result<u64, StoreError>;

    /// The folders where another process's write shows up as a file event (the
    /// database's folder: its `-wal` file changes; the JSON folder: files are
    /// replaced), so the daemon can wait for a write instead of polling for one.
    fn watched_dirs(&self) -> Vec<PathBuf>;

    /// When the collection was last written, as far as the store can tell (Unix ms).
    fn last_written(&mut self, collection: &str) -> Result<Option<Millis>, StoreError>;
    /// A consistent copy of the whole store at `dest` (a file for SQLite, a folder
    /// for JSON), taken while other processes may be writing.
    fn backup(&mut self, dest: &Path) -> Result<(), StoreError>;
}

/// Opens the backend `backend` as configured.
pub fn open_backend(config: &Config, backend: Backend) -> Result<Box<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Sqlite => Box::new(sqlite::SqliteStore::open(
            &config.storage.sqlite_path,
            &config.collections,
        )?),
        Backend::Json => Box::new(json::JsonStore::open(
            &config.storage.json_dir,
            &config.collections,
        )?),
    })
}

/// Opens the configured (active) backend.
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    open_backend(config, config.storage.backend)
}

/// The collection named `name`, or an error that lists the known ones.
fn find<'a>(collections: &'a [Collection], name: &str) -> Result<&'a Collection, StoreError> {
    collections
        .iter()
        .find(|c| c.name.as_str() == name)
        .ok_or_else(|| StoreError::UnknownCollection {
            name: name.to_string(),
            known: collections
                .iter()
                .map(|c| c.name.as_str().to_string())
                .collect(),
        })
}

/// The key of a record about to be written, or the error that names the collection.
fn key_for_write(collection: &Collection, record: &Record) -> Result<Key, StoreError> {
    record::key_of(record, collection.key.as_str()).map_err(|message| StoreError::InvalidRecord {
        collection: collection.name.as_str().to_string(),
        key: None,
        message,
    })
}

/// Every bytes value in a record must hold valid base64.
fn check_bytes(collection: &Collection, record: &Record) -> Result<(), StoreError> {
    for (field, value) in record {
        if let Some(Err(message)) = record::decode_bytes(value) {
            return Err(StoreError::InvalidRecord {
                collection: collection.name.as_str().to_string(),
                key: record::key_of(record, collection.key.as_str())
                    .ok()
                    .map(|k| k.to_string()),
                message: format!("field {field:?}: {message}"),
            });
        }
    }
    Ok(())
}

/// At most `limit` of the due records, in `order_by` order. The sources share the
/// batch in turns — a retry, a new record, a changed one, again — so that records
/// that keep changing never crowd out new ones, nor a backlog of new ones the
/// retries. Within a source, records go in `order_by` order.
pub(crate) fn compose_due(due: Vec<Due>, limit: usize, order_by: &str) -> Vec<Due> {
    let mut chosen = if due.len() <= limit {
        due
    } else {
        let mut sources: Vec<std::collections::VecDeque<Due>> = Vec::new();
        for found in [Found::Retry, Found::New, Found::Changed] {
            let mut source: Vec<Due> = due.iter().filter(|d| d.found == found).cloned().collect();
            sort_due(&mut source, order_by);
            sources.push(source.into());
        }
        drop(due);
        let mut chosen = Vec::with_capacity(limit);
        while chosen.len() < limit && sources.iter().any(|s| !s.is_empty()) {
            for source in sources.iter_mut() {
                if chosen.len() == limit {
                    break;
                }
                if let Some(d) = source.pop_front() {
                    chosen.push(d);
                }
            }
        }
        chosen
    };
    sort_due(&mut chosen, order_by);
    chosen
}

/// Due records in `order_by` order, ties broken by key.
pub(crate) fn sort_due(due: &mut [Due], order_by: &str) {
    due.sort_by(|a, b| {
        let value = |d: &Due| d.record.as_ref().and_then(|r| r.get(order_by)).cloned();
        record::sql_order(value(a).as_ref(), value(b).as_ref()).then_with(|| a.key.cmp(&b.key))
    });
}
