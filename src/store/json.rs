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

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::record::{self, Key, Record};
use super::{
    atomic, find, key_for_write, Baseline, Claim, ClaimState, Counts, Due, DueQuery, Found, Merge,
    Millis, Status, Store, StoreError, Summary, Tombstone, Tracking,
};
use crate::config::{Backend, Collection};

pub const TRACKING_FILE: &str = "sync_tracking.json";
/// The longest ferry waits for another process's lock on a JSON file.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting lock is tried again.
const LOCK_POLL: Duration = Duration::from_millis(5);
pub const TOMBSTONES_FILE: &str = "ferry_tombstones.json";
/// `{"store_id": …, "collections": {name: baseline}}`: see [`Baseline`].
pub const BASELINE_FILE: &str = "ferry_baseline.json";

/// What identifies one version of a file on disk; a cached parse is good while it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> Self {
        FileIdentity {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

struct Cached {
    identity: Option<FileIdentity>,
    object: Arc<Map<String, Value>>,
    /// The records were checked (objects, keys matching) since this parse.
    checked: bool,
}

pub struct JsonStore {
    dir: PathBuf,
    collections: Vec<Collection>,
    cache: HashMap<PathBuf, Cached>,
    /// `sync_tracking.json` as typed rows, for the parse it was made from.
    tracking_rows: Option<(Arc<Map<String, Value>>, TrackingRows)>,
}

type TrackingRows = Arc<HashMap<String, HashMap<Key, Tracking>>>;

/// The locks held on a JSON file, released on drop (closing a descriptor releases the
/// flock and the OFD lock taken through it).
pub(crate) struct FileLock {
    _lock_file: File,
    /// The data file itself, locked the way other programs lock it; `None` when it
    /// does not exist. Open for writing under an exclusive lock.
    data: Option<File>,
}

impl FileLock {
    fn data(&self) -> Option<&File> {
        self.data.as_ref()
    }
}

/// Takes the locks every reader (shared) and writer (exclusive) of `path` takes: an
/// flock on `<path>.lock` (ferry's protocol, SPEC §4), then, on the data file itself,
/// an flock and an OFD record lock (what seed 000's service takes with
/// `fcntl.flock` or `fcntl.lockf`; OFD locks conflict with `lockf`'s and belong to
/// the descriptor, not the process, so closing another descriptor of the file does
/// not drop them). An interrupted in-place write found under the lock is finished
/// (or dropped) before this returns.
pub(crate) fn lock(path: &Path, exclusive: bool) -> Result<FileLock, StoreError> {
    // Waiting is bounded: a process that holds a lock for this long is stuck, and
    // ferry says so rather than freezing behind it.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let lock_file = lock_lock_file(path, exclusive, deadline)?;
        let data = lock_data_file(path, exclusive, deadline)?;
        let journal = atomic::journal_path(path);
        if fs::symlink_metadata(&journal).is_err() {
            return Ok(FileLock {
                _lock_file: lock_file,
                data,
            });
        }
        if exclusive {
            finish_journal(path, data.as_ref())?;
            return Ok(FileLock {
                _lock_file: lock_file,
                data,
            });
        }
        // A reader cannot finish a write: it takes the writer's lock to do so, then
        // its own again.
        drop(data);
        drop(lock_file);
        drop(lock(path, true)?);
    }
}

fn lock_lock_file(path: &Path, exclusive: bool, deadline: Instant) -> Result<File, StoreError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .or_else(|err| match err.kind() {
            // A lock file made by another user: flock works on a read-only descriptor.
            io::ErrorKind::PermissionDenied => File::open(&lock_path),
            _ => Err(err),
        })
        .map_err(StoreError::io(&lock_path, "opening the lock file"))?;
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(LOCK_POLL);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Io {
                    path: lock_path,
                    op: "waiting for the lock (another process has held it for 30 s; is a program stuck?)",
                    source: io::Error::from(io::ErrorKind::TimedOut),
                })
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(StoreError::io(&lock_path, "locking")(err)),
        }
    }
}

/// Opens and locks the data file (`None` if it does not exist).
fn lock_data_file(
    path: &Path,
    exclusive: bool,
    deadline: Instant,
) -> Result<Option<File>, StoreError> {
    loop {
        let opened = OpenOptions::new().read(true).write(exclusive).open(path);
        let file = match opened {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) if exclusive => {
                return Err(StoreError::io(
                    path,
                    "opening the file for writing in place",
                )(err))
            }
            Err(err) => return Err(StoreError::io(path, "opening the file for reading")(err)),
        };
        let locked = try_lock_data(&file, exclusive).map_err(StoreError::io(path, "locking"))?;
        if locked {
            // A program that replaced the file (a rename) while ferry waited: the lock
            // is on a file no longer there; lock the one that is.
            if is_still(&file, path) {
                return Ok(Some(file));
            }
            continue;
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                op: "waiting for another program's lock on the file (held for 30 s: is the \
                     program that shares this file stuck?)",
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        drop(file);
        std::thread::sleep(LOCK_POLL);
    }
}

/// Takes both locks on the data file, or neither: ferry never waits while holding
/// one of them, so a program that takes them in the other order cannot deadlock it.
fn try_lock_data(file: &File, exclusive: bool) -> io::Result<bool> {
    let flock = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match flock {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(err)) => return Err(err),
    }
    match try_lock_ofd(file, exclusive) {
        Ok(true) => Ok(true),
        Ok(false) => {
            file.unlock()?;
            Ok(false)
        }
        Err(err) => {
            let _ = file.unlock();
            Err(err)
        }
    }
}

/// An OFD record lock on the whole file (`F_OFD_SETLK`): false when another holds a
/// conflicting lock (an OFD lock, or a classic POSIX lock such as Python's `lockf`).
fn try_lock_ofd(file: &File, exclusive: bool) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = if exclusive {
        libc::F_WRLCK as libc::c_short
    } else {
        libc::F_RDLCK as libc::c_short
    };
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows; l_pid must be 0.
    // SAFETY: fcntl on a descriptor we own, with a pointer to a live `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        // A kernel older than 3.15 has no OFD locks: the flock still excludes
        // programs that use flock.
        Some(libc::EINVAL) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::warn!("this kernel has no OFD locks: JSON files are locked with flock only, which programs using lockf do not see"));
            Ok(true)
        }
        _ => Err(err),
    }
}

/// Whether `path` still names the file open as `file`.
fn is_still(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Finishes (or drops) what an interrupted in-place write left, under the exclusive
/// lock, and says so in the log.
fn finish_journal(path: &Path, file: Option<&File>) -> Result<(), StoreError> {
    let journal = atomic::journal_path(path);
    atomic::remove_stale_temps(&journal);
    match atomic::finish_journal(path, file) {
        Ok(atomic::Recovery::None) => Ok(()),
        Ok(atomic::Recovery::Completed) => {
            tracing::info!(path = %path.display(), "removed the journal of a write that was interrupted after it had reached the file");
            Ok(())
        }
        Ok(atomic::Recovery::Replayed) => {
            tracing::warn!(path = %path.display(), "finished a write that was interrupted (a crash or a kill) from its journal");
            Ok(())
        }
        Ok(atomic::Recovery::Dropped(why)) => {
            tracing::warn!(path = %path.display(), "dropped the journal of an interrupted write: {why}");
            Ok(())
        }
        Err(err) => Err(StoreError::io(
            journal,
            "finishing an interrupted write from its journal",
        )(err)),
    }
}

pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

impl JsonStore {
    pub fn open(dir: &Path, collections: &[Collection]) -> Result<JsonStore, StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io(dir, "creating the JSON folder"))?;
        let mut store = JsonStore {
            dir: dir.to_path_buf(),
            collections: collections.to_vec(),
            cache: HashMap::new(),
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

    /// The parsed object in `path` (empty if the file does not exist), from the cache
    /// when the file has not changed. Takes a shared lock unless the caller holds one.
    fn load(&mut self, path: &Path, locked: bool) -> Result<Arc<Map<String, Value>>, StoreError> {
        let _guard = if locked {
            None
        } else {
            Some(lock(path, false)?)
        };
        let identity = match fs::metadata(path) {
            Ok(meta) => Some(FileIdentity::of(&meta)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(StoreError::io(path, "reading metadata")(err)),
        };
        if let Some(cached) = self.cache.get(path) {
            if cached.identity == identity {
                return Ok(Arc::clone(&cached.object));
            }
        }
        let object = match identity {
            None => Map::new(),
            Some(_) => parse_object(
                path,
                &fs::read(path).map_err(StoreError::io(path, "reading"))?,
            )?,
        };
        let object = Arc::new(object);
        self.cache.insert(
            path.to_path_buf(),
            Cached {
                identity,
                object: Arc::clone(&object),
                checked: false,
            },
        );
        Ok(object)
    }

    /// Changes the object in `path` under an exclusive lock and writes it back: a
    /// collection's file in place (it may be shared with another program, which
    /// keeps its inode, owner and mode), ferry's own files by an atomic replace.
    /// `change` returns whether it changed anything; nothing is written when it did not.
    fn update<R>(
        &mut self,
        path: &Path,
        change: impl FnOnce(&mut Map<String, Value>) -> Result<(R, bool), StoreError>,
    ) -> Result<R, StoreError> {
        let guard = lock(path, true)?;
        // Always read afresh under the exclusive lock: a cached parse is trusted for
        // reads, never as the base of a write (an inode number can be reused).
        self.cache.remove(path);
        let current = self.load(path, true)?;
        let mut object = Arc::unwrap_or_clone(current);
        self.cache.remove(path);
        let (result, changed) = change(&mut object)?;
        if changed {
            atomic::remove_stale_temps(path);
            let shared = self.collections.iter().any(|c| self.file_of(c) == path);
            match guard.data() {
                Some(file) if shared => write_in_place(path, file, &object)?,
                None if shared => {
                    let mut bytes = Vec::new();
                    write_pretty(&mut bytes, &object).map_err(StoreError::io(path, "writing"))?;
                    atomic::create_new(path, &bytes).map_err(|err| {
                        if err.kind() == io::ErrorKind::AlreadyExists {
                            StoreError::Io {
                                path: path.to_path_buf(),
                                op: "creating the file (another program created it at the same \
                                     moment; nothing was written: try again)",
                                source: err,
                            }
                        } else {
                            StoreError::io(path, "creating the file")(err)
                        }
                    })?;
                }
                _ => atomic::replace(path, |out| write_pretty(out, &object))
                    .map_err(StoreError::io(path, "writing"))?,
            }
            let meta = fs::metadata(path).map_err(StoreError::io(path, "reading metadata"))?;
            self.cache.insert(
                path.to_path_buf(),
                Cached {
                    identity: Some(FileIdentity::of(&meta)),
                    object: Arc::new(object),
                    // Every collection write runs `check_records` on what it writes.
                    checked: true,
                },
            );
        }
        drop(guard);
        Ok(result)
    }

    /// The records of a collection, checked: every entry an object whose key field, if
    /// present, matches its entry's key.
    fn records(&mut self, collection: &Collection) -> Result<Arc<Map<String, Value>>, StoreError> {
        let path = self.file_of(collection);
        let object = self.load(&path, false)?;
        // Checked once per parse, not on every read of a cached parse.
        if let Some(cached) = self.cache.get_mut(&path) {
            if !cached.checked && Arc::ptr_eq(&cached.object, &object) {
                check_records(&path, collection, &object)?;
                cached.checked = true;
            }
        } else {
            check_records(&path, collection, &object)?;
        }
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

fn parse_object(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(StoreError::BadJsonShape {
            path: path.to_path_buf(),
            message: format!(
                "expected a JSON object keyed by record key, found {}",
                record::type_name(&other)
            ),
        }),
        Err(err) => Err(StoreError::CorruptJson {
            path: path.to_path_buf(),
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        }),
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

fn write_pretty(out: &mut dyn Write, object: &Map<String, Value>) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, object).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// Rewrites a collection's file in place through `file` (open for writing, locked
/// exclusively), crash-safe through a journal (see `atomic`).
fn write_in_place(path: &Path, file: &File, object: &Map<String, Value>) -> Result<(), StoreError> {
    let mut bytes = Vec::new();
    write_pretty(&mut bytes, object).map_err(StoreError::io(path, "writing"))?;
    let before = file
        .metadata()
        .map_err(StoreError::io(path, "reading metadata"))?;
    let before = FileIdentity::of(&before);
    atomic::remove_stale_temps(&atomic::journal_path(path));
    atomic::rewrite_in_place(path, file, &bytes)
        .map_err(StoreError::io(path, "writing the file in place"))?;
    make_change_visible(file, before, bytes[0]).map_err(StoreError::io(path, "writing"))
}

/// Readers keep a parse while the file's identity (inode, length, times) holds. An
/// in-place rewrite keeps the inode, often the length, and within one tick of the
/// kernel's coarse clock the times too: then the first byte is written again until
/// the time moves (a write needs only write access; setting a time needs ownership).
fn make_change_visible(file: &File, before: FileIdentity, first: u8) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    for _ in 0..100 {
        if FileIdentity::of(&file.metadata()?) != before {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
        file.write_all_at(&[first], 0)?;
    }
    Ok(())
}

fn tracking_to_json(row: &Tracking) -> Value {
    let mut map = Map::new();
    map.insert("status".into(), row.status.as_str().into());
    map.insert(
        "remote_id".into(),
        row.remote_id.as_ref().map_or(Value::Null, Key::to_value),
    );
    map.insert("sync_date".into(), row.sync_date.clone().into());
    map.insert("error_message".into(), row.error_message.clone().into());
    map.insert("attempts".into(), row.attempts.into());
    map.insert("next_attempt_at".into(), row.next_attempt_at.into());
    map.insert("version".into(), row.version.clone().into());
    if let Some(fingerprint) = row.fingerprint {
        map.insert("fingerprint".into(), format!("{fingerprint:016x}").into());
    }
    map.insert("last_http_status".into(), row.last_http_status.into());
    map.insert("bytes_sent".into(), row.bytes_sent.into());
    map.insert("created".into(), row.created.into());
    if let Some(claim) = &row.claim {
        let mut c = Map::new();
        c.insert("key".into(), claim.key.clone().into());
        c.insert("version".into(), claim.version.clone().into());
        c.insert(
            "fingerprint".into(),
            format!("{:016x}", claim.fingerprint).into(),
        );
        c.insert(
            "body_hash".into(),
            format!("{:016x}", claim.body_hash).into(),
        );
        c.insert("state".into(), claim.state.as_str().into());
        if let Some(body) = &claim.body {
            c.insert("body".into(), record::bytes_value(body));
        }
        map.insert("claim".into(), Value::Object(c));
    }
    Value::Object(map)
}

fn tracking_from_json(
    path: &Path,
    collection: &str,
    key: &str,
    value: &Value,
) -> Result<Tracking, StoreError> {
    let bad = |what: &str| StoreError::BadJsonShape {
        path: path.to_path_buf(),
        message: format!("tracking of {collection} record {key:?}: {what}"),
    };
    let row = value.as_object().ok_or_else(|| bad("expected an object"))?;
    let text = |name: &str| row.get(name).and_then(Value::as_str).map(str::to_string);
    let number = |name: &str| row.get(name).and_then(Value::as_i64);
    let status = text("status")
        .as_deref()
        .and_then(Status::parse)
        .ok_or_else(|| bad("status must be \"pending\", \"success\" or \"failed\""))?;
    Ok(Tracking {
        collection: collection.to_string(),
        key: Key::parse(key),
        status,
        remote_id: match row.get("remote_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(Key::from_value(v).map_err(|e| bad(&format!("remote_id: {e}")))?),
        },
        sync_date: text("sync_date").unwrap_or_default(),
        error_message: text("error_message"),
        attempts: number("attempts")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        next_attempt_at: number("next_attempt_at"),
        version: text("version"),
        fingerprint: text("fingerprint").and_then(|h| u64::from_str_radix(&h, 16).ok()),
        last_http_status: number("last_http_status").and_then(|n| u16::try_from(n).ok()),
        bytes_sent: number("bytes_sent")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        // Rows written before ferry recorded it: a delivery, or a remote id, says so.
        created: match row.get("created") {
            Some(value) => value.as_bool().unwrap_or(false),
            None => {
                status == Status::Success
                    || !matches!(row.get("remote_id"), None | Some(Value::Null))
            }
        },
        claim: match row.get("claim") {
            None | Some(Value::Null) => None,
            Some(Value::Object(c)) => {
                let field = |name: &str| c.get(name).and_then(Value::as_str);
                Some(Claim {
                    key: field("key")
                        .ok_or_else(|| bad("claim.key must be a string"))?
                        .to_string(),
                    version: field("version").unwrap_or("").to_string(),
                    fingerprint: field("fingerprint")
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .unwrap_or(0),
                    body_hash: field("body_hash")
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .unwrap_or(0),
                    state: ClaimState::parse(field("state").unwrap_or("")),
                    body: c
                        .get("body")
                        .and_then(record::decode_bytes)
                        .and_then(Result::ok),
                })
            }
            Some(_) => return Err(bad("claim must be an object")),
        },
    })
}

/// A new store identity: 128 random bits (the time and pid if /dev/urandom cannot be
/// read: it only has to differ from other stores' ids).
fn new_store_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let mut hash = record::Fnv::new();
        hash.write(&super::now_ms().to_le_bytes());
        hash.write(&std::process::id().to_le_bytes());
        bytes[..8].copy_from_slice(&hash.finish().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("json-{hex}")
}

/// A baseline as `ferry_baseline.json` keeps it: per key the fingerprint both sides
/// share (`"fp-…"`), or `[source, target]` where they differ (`null`: absent).
fn baseline_to_json(baseline: &Baseline) -> Value {
    let fp = |v: Option<u64>| v.map_or(Value::Null, |v| record::fingerprint_version(v).into());
    let records: Map<String, Value> = baseline
        .records
        .iter()
        .map(|(key, (source, target))| {
            let value = if source == target {
                fp(*source)
            } else {
                Value::Array(vec![fp(*source), fp(*target)])
            };
            (key.to_string(), value)
        })
        .collect();
    let mut map = Map::new();
    map.insert("generation".into(), baseline.generation.into());
    map.insert("source_id".into(), baseline.source_id.clone().into());
    map.insert("target_id".into(), baseline.target_id.clone().into());
    map.insert("source_mark".into(), baseline.source_mark.clone().into());
    map.insert("records".into(), Value::Object(records));
    Value::Object(map)
}

fn baseline_from_json(value: &Value) -> Result<Baseline, String> {
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{name:?} must be a string"))
    };
    let fp = |v: &Value| -> Result<Option<u64>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => s
                .strip_prefix(record::FINGERPRINT_PREFIX)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .map(Some)
                .ok_or_else(|| format!("{s:?} is not a fingerprint")),
            other => Err(format!(
                "expected a fingerprint, found {}",
                record::type_name(other)
            )),
        }
    };
    let mut records = BTreeMap::new();
    let entries = value
        .get("records")
        .and_then(Value::as_object)
        .ok_or("\"records\" must be an object")?;
    for (key, entry) in entries {
        let pair = match entry {
            Value::Array(pair) if pair.len() == 2 => (fp(&pair[0])?, fp(&pair[1])?),
            single => {
                let both = fp(single)?;
                (both, both)
            }
        };
        records.insert(Key::parse(key), pair);
    }
    Ok(Baseline {
        generation: value
            .get("generation")
            .and_then(Value::as_u64)
            .ok_or("\"generation\" must be a whole number")?,
        source_id: text("source_id")?,
        target_id: text("target_id")?,
        source_mark: text("source_mark")?,
        records,
    })
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
        // Written into a temp folder beside `dest`, then moved in: a killed backup
        // leaves only that folder (named with its pid), which the next one removes.
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)
            .map_err(StoreError::io(&parent, "creating the backup folder"))?;
        atomic::remove_dead_temps(&parent);
        if dest.is_dir() {
            atomic::remove_dead_temps(dest);
        }
        let temp = atomic::backup_temp(dest);
        // Only a process that had this pid before can have left it.
        let _ = fs::remove_dir_all(&temp);
        fs::create_dir(&temp)
            .map_err(StoreError::io(&temp, "creating the backup's temp folder"))?;
        let mut files: Vec<PathBuf> = self.collections.iter().map(|c| self.file_of(c)).collect();
        files.push(self.dir.join(TRACKING_FILE));
        files.push(self.dir.join(TOMBSTONES_FILE));
        files.push(self.dir.join(BASELINE_FILE));
        let result = (|| {
            let mut names = Vec::new();
            for file in files {
                let bytes = {
                    let _guard = lock(&file, false)?;
                    match fs::read(&file) {
                        Ok(bytes) => bytes,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(StoreError::io(&file, "reading for a backup")(err)),
                    }
                };
                let name = file.file_name().unwrap_or_default().to_os_string();
                let target = temp.join(&name);
                File::create(&target)
                    .and_then(|mut out| {
                        out.write_all(&bytes)?;
                        out.sync_all()
                    })
                    .map_err(StoreError::io(&target, "writing the backup"))?;
                names.push(name);
            }
            let sync = |dir: &Path| {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(StoreError::io(dir, "writing the backup"))
            };
            sync(&temp)?;
            if dest.exists() {
                for name in &names {
                    fs::rename(temp.join(name), dest.join(name))
                        .map_err(StoreError::io(dest.join(name), "writing the backup"))?;
                }
                sync(dest)?;
                fs::remove_dir(&temp)
                    .map_err(StoreError::io(&temp, "removing the backup's temp folder"))?;
            } else {
                fs::rename(&temp, dest).map_err(StoreError::io(dest, "finishing the backup"))?;
            }
            sync(&parent)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even a write that changed nothing a reader's cache looks at (same inode, same
    /// length, times within one clock tick) ends with the file's identity moved on.
    #[test]
    fn make_change_visible_moves_an_unchanged_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        fs::write(&path, "{}\n").unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let before = FileIdentity::of(&file.metadata().unwrap());
        make_change_visible(&file, before, b'{').unwrap();
        assert_ne!(FileIdentity::of(&fs::metadata(&path).unwrap()), before);
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
    }

    /// ferry's locks exclude another program's: Python's `fcntl.flock` and
    /// `fcntl.lockf` on the data file, tried without waiting, fail while ferry holds
    /// its exclusive lock; a shared one lets another reader in.
    #[test]
    fn ferrys_locks_exclude_python_flock_and_lockf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        fs::write(&path, "{}\n").unwrap();
        let try_lock = |how: &str| {
            let script = r#"
import fcntl, sys
path, how = sys.argv[1], sys.argv[2]
with open(path, 'r+') as f:
    try:
        if how == 'flock-ex':
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif how == 'flock-sh':
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        elif how == 'lockf-ex':
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        print('got it')
    except OSError:
        print('blocked')
"#;
            let out = std::process::Command::new("python3")
                .args(["-c", script])
                .arg(&path)
                .arg(how)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let held = lock(&path, true).unwrap();
        for how in ["flock-ex", "flock-sh", "lockf-ex", "lockf-sh"] {
            assert_eq!(
                try_lock(how),
                "blocked",
                "{how} under ferry's exclusive lock"
            );
        }
        drop(held);
        let held = lock(&path, false).unwrap();
        assert_eq!(try_lock("flock-sh"), "got it");
        assert_eq!(try_lock("lockf-sh"), "got it");
        assert_eq!(try_lock("flock-ex"), "blocked");
        assert_eq!(try_lock("lockf-ex"), "blocked");
        drop(held);
        assert_eq!(try_lock("lockf-ex"), "got it");
    }
}
