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
    /// Requests made for the current version.
    pub attempts: u32,
    /// When the record may be tried next (Unix ms); `None` means now.
    pub next_attempt_at: Option<Millis>,
    /// The record version this row is about: delivered (success) or being delivered.
    pub version: Option<String>,
    pub last_http_status: Option<u16>,
    /// Bytes of payload the server acknowledged for this record.
    pub bytes_sent: u64,
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
            attempts: 0,
            next_attempt_at: None,
            version: None,
            last_http_status: None,
            bytes_sent: 0,
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
}

/// A record that needs delivery, with what tracking knows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    pub key: Key,
    /// `None` when a tracked record has been deleted since.
    pub record: Option<Record>,
    pub version: Option<String>,
    pub tracking: Option<Tracking>,
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

    /// Applies a migration step to one collection and marks it as written now.
    /// SQLite: one transaction. JSON: tracking, tombstones, then the collection file,
    /// each replaced atomically; the collection file last, so that a crash in between
    /// leaves this side looking older and the next migration completes the job.
    fn apply_merge(&mut self, collection: &str, merge: &Merge) -> Result<(), StoreError>;

    /// When the earliest pending or failed record of a collection may be tried again
    /// (Unix ms; 0 means now), read from an index, not by scanning.
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

/// The file that says ferry is running on the configured store (its pid inside). A
/// crash or a power cut leaves it behind, and the next start checks the store.
pub fn running_marker(config: &Config) -> std::path::PathBuf {
    match config.storage.backend {
        Backend::Sqlite => {
            let mut name = config.storage.sqlite_path.as_os_str().to_owned();
            name.push(".ferry-running");
            std::path::PathBuf::from(name)
        }
        Backend::Json => config.storage.json_dir.join(".ferry-running"),
    }
}

/// The pid of a live `ferry` process running on the configured store, if any.
pub fn running_daemon(config: &Config) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(running_marker(config))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_ferry = command
        .split(|b| *b == 0)
        .next()
        .is_some_and(|arg0| arg0.ends_with(b"ferry"));
    (is_ferry && pid != std::process::id()).then_some(pid)
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

/// Due records in `order_by` order, ties broken by key.
pub(crate) fn sort_due(due: &mut [Due], order_by: &str) {
    due.sort_by(|a, b| {
        let value = |d: &Due| d.record.as_ref().and_then(|r| r.get(order_by)).cloned();
        record::sql_order(value(a).as_ref(), value(b).as_ref()).then_with(|| a.key.cmp(&b.key))
    });
}
