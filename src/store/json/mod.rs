//! The JSON backend (SPEC §4): one file a collection, `<json_dir>/<name>.json`, an
//! object keyed by the record key; `sync_tracking.json` for delivery tracking,
//! `ferry_tombstones.json` for deletions, and `ferry_baseline.json` for this store's
//! identity and the start-up migration's baseline.
//!
//! Every file has a lock file beside it (`<file>.lock`): writers take an exclusive
//! `flock(2)` on it, readers a shared one, so ferry processes and other programs that
//! follow the same rule never lose a write. Other programs that lock the data file
//! itself are honoured too: ferry also takes an flock and an OFD record lock on the
//! data file (seed 000's service locks it with Python's `fcntl.flock` or
//! `fcntl.lockf`). Every wait is bounded (30 s) and ends in an error that names the
//! file.
//!
//! A collection's file may be open in another program, owned by it, with its mode:
//! ferry rewrites it in place, through a journal (`<file>.journal`, see `atomic`),
//! so it keeps its inode, owner and mode, and a crash leaves the old content or the
//! new once ferry has taken the file's lock again (an interrupted write is finished
//! or dropped under the lock, before anything reads the file). ferry's own files are
//! replaced atomically (temp file, fsync, rename). A file that does not parse is never
//! written to; the error says where it breaks.
//!
//! Parses are cached while a file's identity (inode, length, modification and change
//! times) holds; an in-place write that would leave it unchanged moves the time on.
//!
//! This backend keeps a collection in memory while it works on it: it suits the
//! thousands of records a hand-editable file holds, not millions (use SQLite for those).
//!
//! This file owns the store and its [`Store`] impl: what a record, a tombstone or a
//! tracking row is in these files. `files.rs` owns the files themselves (locks, the
//! cache of parses, in-place and atomic writes); `tracking.rs` the tracking rows and
//! the baseline as JSON. Nothing here writes a file except through `Files::update`,
//! under its exclusive lock.

mod files;
mod tracking;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::record::{self, Key, Record};
use super::{
    find, key_for_write, Baseline, Counts, Due, DueQuery, Found, Merge, Millis, Status, Store,
    StoreError, Summary, Tombstone, Tracking,
};
use crate::config::{Backend, Collection};
pub(crate) use files::lock;
pub use files::lock_path;
use files::{FileIdentity, Files};
use tracking::{
    baseline_from_json, baseline_to_json, new_store_id, tracking_from_json, tracking_to_json,
};

pub const TRACKING_FILE: &str = "sync_tracking.json";
pub const TOMBSTONES_FILE: &str = "ferry_tombstones.json";
/// `{"store_id": …, "collections": {name: baseline}}`: see [`Baseline`].
pub const BASELINE_FILE: &str = "ferry_baseline.json";

pub struct JsonStore {
    dir: PathBuf,
    collections: Vec<Collection>,
    files: Files,
    /// `sync_tracking.json` as typed rows, for the parse it was made from.
    tracking_rows: Option<(Arc<Map<String, Value>>, TrackingRows)>,
}

type TrackingRows = Arc<HashMap<String, HashMap<Key, Tracking>>>;

impl JsonStore {
    pub fn open(dir: &Path, collections: &[Collection]) -> Result<JsonStore, StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io(dir, "creating the JSON folder"))?;
        let mut store = JsonStore {
            dir: dir.to_path_buf(),
            collections: collections.to_vec(),
            files: Files::default(),
            tracking_rows: None,
        };
        // Reading every file at start-up reports a damaged one now, not at first use.
        for collection in collections {
            store.records(collection)?;
        }
        let tracking = store.dir.join(TRACKING_FILE);
        store.load(&tracking, false)?;
        let tombstones = store.dir.join(TOMBSTONES_FILE);
        store.load(&tombstones, false)?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a collection.
    pub fn file_of(&self, collection: &Collection) -> PathBuf {
        self.dir.join(collection.json_file_name())
    }

    /// The parsed object in `path` (see [`Files::load`]).
    fn load(&mut self, path: &Path, locked: bool) -> Result<Arc<Map<String, Value>>, StoreError> {
        self.files.load(path, locked)
    }

    /// Changes the object in `path` and writes it back (see [`Files::update`]): a
    /// collection's file in place, ferry's own files by an atomic replace.
    fn update<R>(
        &mut self,
        path: &Path,
        change: impl FnOnce(&mut Map<String, Value>) -> Result<(R, bool), StoreError>,
    ) -> Result<R, StoreError> {
        let shared = self.collections.iter().any(|c| self.file_of(c) == path);
        self.files.update(path, shared, change)
    }

    /// The records of a collection, checked: every entry an object whose key field, if
    /// present, matches its entry's key.
    fn records(&mut self, collection: &Collection) -> Result<Arc<Map<String, Value>>, StoreError> {
        let path = self.file_of(collection);
        let object = self.load(&path, false)?;
        self.files
            .check_once(&path, &object, || check_records(&path, collection, &object))?;
        Ok(object)
    }

    fn collection(&self, name: &str) -> Result<Collection, StoreError> {
        find(&self.collections, name).cloned()
    }

    /// Every tracking row, typed; parsed once per version of `sync_tracking.json`.
    fn tracking_rows(&mut self) -> Result<TrackingRows, StoreError> {
        let path = self.dir.join(TRACKING_FILE);
        let object = self.load(&path, false)?;
        if let Some((parsed_from, rows)) = &self.tracking_rows {
            if Arc::ptr_eq(parsed_from, &object) {
                return Ok(Arc::clone(rows));
            }
        }
        let mut all = HashMap::new();
        for (collection, by_key) in object.iter() {
            let Value::Object(by_key) = by_key else {
                return Err(StoreError::BadJsonShape {
                    path,
                    message: format!("entry {collection:?} must be an object of tracking rows"),
                });
            };
            let mut rows = HashMap::with_capacity(by_key.len());
            for (key, row) in by_key {
                let row = tracking_from_json(&path, collection, key, row)?;
                rows.insert(row.key.clone(), row);
            }
            all.insert(collection.clone(), rows);
        }
        let all = Arc::new(all);
        self.tracking_rows = Some((object, Arc::clone(&all)));
        Ok(all)
    }
}

fn check_records(
    path: &Path,
    collection: &Collection,
    object: &Map<String, Value>,
) -> Result<(), StoreError> {
    for (key_text, value) in object {
        let bad = |message: String| StoreError::BadJsonShape {
            path: path.to_path_buf(),
            message: format!("record {key_text:?}: {message}"),
        };
        let Value::Object(fields) = value else {
            return Err(bad(format!(
                "expected an object, found {}",
                record::type_name(value)
            )));
        };
        if let Some(field) = fields.get(collection.key.as_str()) {
            match Key::from_value(field) {
                Ok(key) if key == Key::parse(key_text) => {}
                Ok(key) => {
                    return Err(bad(format!(
                        "its key field {:?} says {key}, but it is filed under {key_text:?}",
                        collection.key.as_str()
                    )))
                }
                Err(message) => return Err(bad(message)),
            }
        }
    }
    Ok(())
}

/// A record as stored, with its key field filled in from the entry's key if the file
/// left it out.
fn record_from_entry(collection: &Collection, key_text: &str, value: &Value) -> Record {
    let mut record = value.as_object().cloned().unwrap_or_default();
    if !record.contains_key(collection.key.as_str()) {
        record.insert(
            collection.key.as_str().to_string(),
            Key::parse(key_text).to_value(),
        );
    }
    record
}

/// Why a record at `version` with content `fingerprint` and this tracking row is due
/// now, if it is.
pub(crate) fn due_because(
    tracking: Option<&Tracking>,
    version: &str,
    fingerprint: u64,
    query: &DueQuery,
) -> Option<Found> {
    let Some(t) = tracking else {
        return Some(Found::New);
    };
    match t.status {
        Status::Pending | Status::Failed => t
            .next_attempt_at
            .is_none_or(|at| at <= query.now)
            .then_some(Found::Retry),
        Status::Success => (query.include_changed && t.differs_from(version, fingerprint))
            .then_some(Found::Changed),
    }
}

impl Store for JsonStore {
    fn backend(&self) -> Backend {
        Backend::Json
    }

    fn put(&mut self, collection: &str, record: Record) -> Result<Key, StoreError> {
        let collection = self.collection(collection)?;
        let key = key_for_write(&collection, &record)?;
        self.put_many(collection.name.as_str(), vec![record])?;
        Ok(key)
    }

    fn put_many(&mut self, collection: &str, records: Vec<Record>) -> Result<(), StoreError> {
        let collection = self.collection(collection)?;
        let mut keyed = Vec::with_capacity(records.len());
        for record in records {
            super::check_bytes(&collection, &record)?;
            keyed.push((key_for_write(&collection, &record)?, record));
        }
        let path = self.file_of(&collection);
        self.update(&path, |object| {
            check_records(&path, &collection, object)?;
            for (key, record) in &keyed {
                object.insert(key.to_string(), Value::Object(record.clone()));
            }
            Ok(((), !keyed.is_empty()))
        })?;
        // A record written again is no longer deleted.
        let tombstones_path = self.dir.join(TOMBSTONES_FILE);
        let name = collection.name.as_str();
        let has_tombstone = |object: &Map<String, Value>| {
            object
                .get(name)
                .and_then(Value::as_object)
                .is_some_and(|t| keyed.iter().any(|(k, _)| t.contains_key(&k.to_string())))
        };
        if has_tombstone(self.load(&tombstones_path, false)?.as_ref()) {
            self.update(&tombstones_path, |object| {
                let mut changed = false;
                if let Some(Value::Object(t)) = object.get_mut(name) {
                    for (key, _) in &keyed {
                        changed |= t.shift_remove(&key.to_string()).is_some();
                    }
                }
                Ok(((), changed))
            })?;
        }
        Ok(())
    }

    fn get(&mut self, collection: &str, key: &Key) -> Result<Option<Record>, StoreError> {
        let collection = self.collection(collection)?;
        let object = self.records(&collection)?;
        let text = key.to_string();
        Ok(object
            .get(&text)
            .map(|v| record_from_entry(&collection, &text, v)))
    }

    fn list(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let collection = self.collection(collection)?;
        let object = self.records(&collection)?;
        let mut keys: Vec<(Key, &String)> = object
            .keys()
            .map(|k| (Key::parse(k), k))
            .filter(|(k, _)| after.is_none_or(|a| k > a))
            .collect();
        keys.sort();
        Ok(keys
            .into_iter()
            .take(limit)
            .map(|(_, text)| record_from_entry(&collection, text, &object[text]))
            .collect())
    }

    fn delete(&mut self, collection: &str, key: &Key) -> Result<bool, StoreError> {
        let collection = self.collection(collection)?;
        let path = self.file_of(&collection);
        let text = key.to_string();
        if !self.records(&collection)?.contains_key(&text) {
            return Ok(false);
        }
        // The tombstone first: a crash between the two writes leaves a record with a
        // tombstone, which is read as present (a tombstone counts only for an absent
        // record); the other order could lose the deletion.
        let name = collection.name.as_str().to_string();
        let now = super::now_ms();
        self.update(&self.dir.join(TOMBSTONES_FILE), |object| {
            let entry = object
                .entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(t) = entry {
                t.insert(text.clone(), now.into());
            }
            Ok(((), true))
        })?;
        self.update(&path, |object| {
            check_records(&path, &collection, object)?;
            let removed = object.shift_remove(&text).is_some();
            Ok((removed, removed))
        })
    }

    fn tombstones(&mut self, collection: &str) -> Result<Vec<Tombstone>, StoreError> {
        let collection = self.collection(collection)?;
        let object = self.load(&self.dir.join(TOMBSTONES_FILE), false)?;
        let records = self.records(&collection)?;
        let mut out: Vec<Tombstone> = object
            .get(collection.name.as_str())
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter(|(k, _)| !records.contains_key(*k))
                    .map(|(k, at)| Tombstone {
                        key: Key::parse(k),
                        deleted_at: at.as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn due(&mut self, collection: &str, query: &DueQuery) -> Result<Vec<Due>, StoreError> {
        let collection = self.collection(collection)?;
        let records = self.records(&collection)?;
        let all_rows = self.tracking_rows()?;
        let no_rows = HashMap::new();
        let tracking = all_rows.get(collection.name.as_str()).unwrap_or(&no_rows);
        let updated_at = collection.updated_at.as_ref().map(|f| f.as_str());
        let blob_fields: Vec<&str> = collection.blob_fields.iter().map(|f| f.as_str()).collect();
        let order_by = collection.order_by().as_str();
        let no_fields = Map::new();
        let mut due = Vec::new();
        for (key_text, value) in records.iter() {
            let key = Key::parse(key_text);
            let fields = value.as_object().unwrap_or(&no_fields);
            let (version, fingerprint) =
                record::version_and_fingerprint(fields, updated_at, &blob_fields);
            let row = tracking.get(&key);
            // Only records that are due are copied out of the parse.
            if let Some(found) = due_because(row, &version, fingerprint, query) {
                let record = Some(record_from_entry(&collection, key_text, value));
                due.push(Due {
                    key,
                    record,
                    version,
                    fingerprint,
                    tracking: row.cloned(),
                    found,
                });
            }
        }
        // Tracked records that are gone. One whose delivery was not settled is handed
        // out without its record (the engine settles it); a delivered one frees its
        // key — a record written later under it is a new record — unless a create of
        // it may still be unconfirmed.
        let mut gone = Vec::new();
        for (key, row) in tracking {
            if records.contains_key(&key.to_string()) {
                continue;
            }
            if row.status != Status::Success {
                if due_because(Some(row), "", 0, query).is_some() {
                    due.push(Due {
                        key: key.clone(),
                        record: None,
                        version: String::new(),
                        fingerprint: 0,
                        tracking: Some(row.clone()),
                        found: Found::Retry,
                    });
                }
            } else if row.claim.is_none() {
                gone.push(key.clone());
            }
        }
        if !gone.is_empty() && !query.peek {
            self.delete_tracking(collection.name.as_str(), &gone)?;
        }
        Ok(super::compose_due(due, query.limit, order_by))
    }

    fn tracking(&mut self, collection: &str, key: &Key) -> Result<Option<Tracking>, StoreError> {
        let collection = self.collection(collection)?;
        let rows = self.tracking_rows()?;
        Ok(rows
            .get(collection.name.as_str())
            .and_then(|r| r.get(key))
            .cloned())
    }

    fn tracking_page(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Tracking>, StoreError> {
        let collection = self.collection(collection)?;
        let all = self.tracking_rows()?;
        let mut rows: Vec<Tracking> = all
            .get(collection.name.as_str())
            .into_iter()
            .flat_map(|rows| rows.values())
            .filter(|r| after.is_none_or(|a| &r.key > a))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows.truncate(limit);
        Ok(rows)
    }

    fn delete_tracking(&mut self, collection: &str, keys: &[Key]) -> Result<(), StoreError> {
        let collection = self.collection(collection)?;
        let name = collection.name.as_str();
        let path = self.dir.join(TRACKING_FILE);
        self.update(&path, |object| {
            let mut changed = false;
            if let Some(Value::Object(by_key)) = object.get_mut(name) {
                for key in keys {
                    changed |= by_key.shift_remove(&key.to_string()).is_some();
                }
            }
            Ok(((), changed))
        })
    }

    fn write_tracking(&mut self, rows: &[Tracking]) -> Result<(), StoreError> {
        for row in rows {
            self.collection(&row.collection)?;
        }
        let path = self.dir.join(TRACKING_FILE);
        self.update(&path, |object| {
            for row in rows {
                let entry = object
                    .entry(row.collection.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(by_key) = entry {
                    by_key.insert(row.key.to_string(), tracking_to_json(row));
                } else {
                    return Err(StoreError::BadJsonShape {
                        path: path.clone(),
                        message: format!(
                            "entry {:?} must be an object of tracking rows",
                            row.collection
                        ),
                    });
                }
            }
            Ok(((), !rows.is_empty()))
        })
    }

    fn apply_merge(&mut self, collection: &str, merge: &Merge) -> Result<(), StoreError> {
        let collection = self.collection(collection)?;
        let name = collection.name.as_str().to_string();
        let mut upserts = Vec::with_capacity(merge.upserts.len());
        for record in &merge.upserts {
            super::check_bytes(&collection, record)?;
            upserts.push((key_for_write(&collection, record)?.to_string(), record));
        }
        if !merge.untrack.is_empty() {
            self.delete_tracking(&name, &merge.untrack)?;
        }
        if !merge.tracking.is_empty() {
            self.write_tracking(&merge.tracking)?;
        }
        let now = super::now_ms();
        let upserted: Vec<&String> = upserts.iter().map(|(k, _)| k).collect();
        let deleted: Vec<String> = merge.deletes.iter().map(Key::to_string).collect();
        if !upserted.is_empty() || !deleted.is_empty() {
            self.update(&self.dir.join(TOMBSTONES_FILE), |object| {
                let entry = object
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                let mut changed = false;
                if let Value::Object(t) = entry {
                    for key in &upserted {
                        changed |= t.shift_remove(key.as_str()).is_some();
                    }
                    for key in &deleted {
                        t.insert(key.clone(), now.into());
                        changed = true;
                    }
                }
                Ok(((), changed))
            })?;
        }
        let path = self.file_of(&collection);
        if !upserts.is_empty() || !deleted.is_empty() {
            self.update(&path, |object| {
                check_records(&path, &collection, object)?;
                for (key, record) in &upserts {
                    object.insert(key.clone(), Value::Object((*record).clone()));
                }
                for key in &deleted {
                    object.shift_remove(key);
                }
                Ok(((), true))
            })?;
        }
        // Last: a crash before it leaves the previous baseline, against which the next
        // migration finds this one's work done and completes the rest.
        if let Some(baseline) = &merge.baseline {
            let value = baseline_to_json(baseline);
            self.update(&self.dir.join(BASELINE_FILE), |object| {
                let collections = object
                    .entry("collections")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !collections.is_object() {
                    *collections = Value::Object(Map::new());
                }
                if let Value::Object(by_name) = collections {
                    by_name.insert(name.clone(), value);
                }
                Ok(((), true))
            })?;
        }
        Ok(())
    }

    fn store_id(&mut self, create: bool) -> Result<Option<String>, StoreError> {
        let path = self.dir.join(BASELINE_FILE);
        let read = |object: &Map<String, Value>| {
            object
                .get("store_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let Some(id) = read(self.load(&path, false)?.as_ref()) {
            return Ok(Some(id));
        }
        if !create {
            return Ok(None);
        }
        let made = new_store_id();
        self.update(&path, |object| match read(object) {
            // Another process made it meanwhile.
            Some(id) => Ok((Some(id), false)),
            None => {
                object.insert("store_id".into(), made.clone().into());
                Ok((Some(made), true))
            }
        })
    }

    fn baseline(&mut self, collection: &str) -> Result<Option<Baseline>, StoreError> {
        let collection = self.collection(collection)?;
        let path = self.dir.join(BASELINE_FILE);
        let object = self.load(&path, false)?;
        let Some(value) = object
            .get("collections")
            .and_then(|c| c.get(collection.name.as_str()))
        else {
            return Ok(None);
        };
        baseline_from_json(value)
            .map(Some)
            .map_err(|message| StoreError::BadJsonShape {
                path,
                message: format!(
                    "baseline of {}: {message}; delete the file to have the next migration start afresh \
                     (a record found on one side only then comes over)",
                    collection.name.as_str()
                ),
            })
    }

    fn change_mark(&mut self, collection: &str) -> Result<String, StoreError> {
        let collection = self.collection(collection)?;
        let mut parts = Vec::new();
        // The shared files are in it too: deleting or delivering on this side changes
        // them. Another program rewrites the collection file, and its identity changes.
        for path in [
            self.file_of(&collection),
            self.dir.join(TOMBSTONES_FILE),
            self.dir.join(TRACKING_FILE),
        ] {
            parts.push(match fs::metadata(&path) {
                Ok(meta) => {
                    let id = FileIdentity::of(&meta);
                    format!("{}:{}:{}:{}", id.ino, id.len, id.mtime_ns, id.ctime_ns)
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => "-".to_string(),
                Err(err) => return Err(StoreError::io(&path, "reading metadata")(err)),
            });
        }
        Ok(parts.join(";"))
    }

    fn summary(&mut self, collection: &str) -> Result<Summary, StoreError> {
        let counts = self.counts(collection)?;
        let rows = self.tracking_rows()?;
        let mut summary = Summary {
            counts,
            ..Summary::default()
        };
        for row in rows.get(collection).into_iter().flat_map(|r| r.values()) {
            summary.bytes_delivered += row.bytes_sent;
            let date = Some(row.sync_date.clone());
            if row.status == Status::Success {
                if date > summary.last_success {
                    summary.last_success = date;
                }
            } else if summary.oldest_pending.is_none() || date < summary.oldest_pending {
                summary.oldest_pending = date;
            }
        }
        Ok(summary)
    }

    fn troubled(&mut self, collection: &str, limit: usize) -> Result<Vec<Tracking>, StoreError> {
        let collection = self.collection(collection)?;
        let rows = self.tracking_rows()?;
        let mut out: Vec<Tracking> = rows
            .get(collection.name.as_str())
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|r| {
                r.status != Status::Success && (r.attempts > 0 || r.error_message.is_some())
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.sync_date.cmp(&b.sync_date));
        out.truncate(limit);
        Ok(out)
    }

    fn retry_now(&mut self, collection: &str) -> Result<u64, StoreError> {
        let collection = self.collection(collection)?;
        let name = collection.name.as_str().to_string();
        self.update(&self.dir.join(TRACKING_FILE), |object| {
            let mut changed = 0u64;
            if let Some(Value::Object(by_key)) = object.get_mut(&name) {
                for row in by_key.values_mut() {
                    let Value::Object(row) = row else { continue };
                    let status = row.get("status").and_then(Value::as_str).unwrap_or("");
                    if status == "failed" || status == "pending" {
                        row.insert("status".into(), "pending".into());
                        row.insert("next_attempt_at".into(), Value::Null);
                        changed += 1;
                    }
                }
            }
            Ok((changed, changed > 0))
        })
    }

    fn reset_tracking(&mut self, collection: &str) -> Result<u64, StoreError> {
        let collection = self.collection(collection)?;
        let name = collection.name.as_str().to_string();
        self.update(&self.dir.join(TRACKING_FILE), |object| {
            let removed = match object.shift_remove(&name) {
                Some(Value::Object(by_key)) => by_key.len() as u64,
                Some(_) => 1,
                None => 0,
            };
            Ok((removed, removed > 0))
        })
    }

    fn quick_check(&mut self) -> Result<Option<String>, StoreError> {
        // Every file was parsed and checked when the store opened.
        Ok(None)
    }

    fn counts(&mut self, collection: &str) -> Result<Counts, StoreError> {
        let collection = self.collection(collection)?;
        let records = self.records(&collection)?;
        let rows = self.tracking_rows()?;
        let mut counts = Counts {
            records: records.len() as u64,
            ..Counts::default()
        };
        for row in rows
            .get(collection.name.as_str())
            .into_iter()
            .flat_map(|r| r.values())
        {
            if !records.contains_key(&row.key.to_string()) {
                continue;
            }
            match row.status {
                Status::Success => counts.success += 1,
                Status::Failed => counts.failed += 1,
                Status::Pending => {}
            }
        }
        counts.pending = counts
            .records
            .saturating_sub(counts.success + counts.failed);
        Ok(counts)
    }

    fn next_attempt_at(&mut self, collection: &str) -> Result<Option<Millis>, StoreError> {
        let collection = self.collection(collection)?;
        let rows = self.tracking_rows()?;
        Ok(rows
            .get(collection.name.as_str())
            .into_iter()
            .flat_map(|rows| rows.values())
            .filter(|r| r.status != Status::Success)
            .map(|r| r.next_attempt_at.unwrap_or(0))
            .min())
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn change_token(&mut self) -> Result<u64, StoreError> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let files = self.collections.iter().map(|c| self.file_of(c));
        // Tracking too: `ferry retry` from another process must wake the daemon.
        for path in files.chain([self.dir.join(TRACKING_FILE)]) {
            match fs::metadata(&path) {
                Ok(meta) => {
                    let id = FileIdentity::of(&meta);
                    (id.ino, id.len, id.mtime_ns, id.ctime_ns).hash(&mut hasher);
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => 0u8.hash(&mut hasher),
                Err(err) => return Err(StoreError::io(&path, "reading metadata")(err)),
            }
        }
        Ok(hasher.finish())
    }

    fn last_written(&mut self, collection: &str) -> Result<Option<Millis>, StoreError> {
        let collection = self.collection(collection)?;
        let path = self.file_of(&collection);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(
                meta.modified()
                    .map(super::time::system_time_ms)
                    .map_err(StoreError::io(&path, "reading the modification time"))?,
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::io(&path, "reading metadata")(err)),
        }
    }

    fn backup(&mut self, dest: &Path) -> Result<(), StoreError> {
        let mut files: Vec<PathBuf> = self.collections.iter().map(|c| self.file_of(c)).collect();
        files.push(self.dir.join(TRACKING_FILE));
        files.push(self.dir.join(TOMBSTONES_FILE));
        files.push(self.dir.join(BASELINE_FILE));
        files::backup(&files, dest)
    }
}
