//! The JSON backend's files: the locks every reader and writer takes (the `.lock`
//! file's flock, then an flock and an OFD record lock on the data file itself), the
//! cache of parsed files, and the writes — a collection's file in place through a
//! journal, ferry's own files by an atomic replace.
//!
//! This file knows files, not records: it parses an object and writes one back, and
//! never looks inside. It never writes without the exclusive lock, and never writes a
//! file that does not parse (the parse comes first, under the lock).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::store::{atomic, record, StoreError};

/// The longest ferry waits for another process's lock on a JSON file.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting lock is tried again.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// What identifies one version of a file on disk; a cached parse is good while it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileIdentity {
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
}

impl FileIdentity {
    pub(super) fn of(meta: &fs::Metadata) -> Self {
        FileIdentity {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// A parsed file, good while the file's identity holds.
struct Cached {
    identity: Option<FileIdentity>,
    object: Arc<Map<String, Value>>,
    /// The records were checked (objects, keys matching) since this parse.
    checked: bool,
}

/// The parsed files of a store, each cached while its identity holds.
#[derive(Default)]
pub(super) struct Files {
    cache: HashMap<PathBuf, Cached>,
}

impl Files {
    /// The parsed object in `path` (empty if the file does not exist), from the cache
    /// when the file has not changed. Takes a shared lock unless the caller holds one.
    pub(super) fn load(
        &mut self,
        path: &Path,
        locked: bool,
    ) -> Result<Arc<Map<String, Value>>, StoreError> {
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

    /// Runs `check` on `object`, the parse of `path` just loaded, unless this parse
    /// was checked already: a file is checked once per parse, not on every read of a
    /// cached parse.
    pub(super) fn check_once(
        &mut self,
        path: &Path,
        object: &Arc<Map<String, Value>>,
        check: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Some(cached) = self.cache.get_mut(path) {
            if !cached.checked && Arc::ptr_eq(&cached.object, object) {
                check()?;
                cached.checked = true;
            }
            Ok(())
        } else {
            check()
        }
    }

    /// Changes the object in `path` under an exclusive lock and writes it back: a
    /// collection's file (`shared`: it may be shared with another program) in place,
    /// so it keeps its inode, owner and mode; ferry's own files by an atomic replace.
    /// `change` returns whether it changed anything; nothing is written when it did not.
    pub(super) fn update<R>(
        &mut self,
        path: &Path,
        shared: bool,
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
}

/// The locks held on a JSON file, released on drop (closing a descriptor releases the
/// flock and the OFD lock taken through it).
pub(crate) struct FileLock {
    _lock_file: File,
    /// The data file itself, locked the way other programs lock it; `None` when it
    /// does not exist. Open for writing under an exclusive lock.
    data: Option<File>,
}

impl FileLock {
    pub(super) fn data(&self) -> Option<&File> {
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

/// A consistent copy of `files` in the folder `dest`, each file read under its shared
/// lock (one that does not exist is left out). Written into a temp folder beside
/// `dest`, then moved in: a killed backup leaves only that folder (named with its
/// pid), which the next one removes.
pub(super) fn backup(files: &[PathBuf], dest: &Path) -> Result<(), StoreError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(StoreError::io(&parent, "creating the backup folder"))?;
    atomic::remove_dead_temps(&parent);
    if dest.is_dir() {
        atomic::remove_dead_temps(dest);
    }
    let temp = atomic::backup_temp(dest);
    // Only a process that had this pid before can have left it.
    let _ = fs::remove_dir_all(&temp);
    fs::create_dir(&temp).map_err(StoreError::io(&temp, "creating the backup's temp folder"))?;
    let result = copy_under_locks(files, &temp).and_then(|names| {
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
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temp);
    }
    result
}

/// Copies each of `files` that exists into the folder `temp`, read under its shared
/// lock and written durably; returns the names copied.
fn copy_under_locks(files: &[PathBuf], temp: &Path) -> Result<Vec<OsString>, StoreError> {
    let mut names = Vec::new();
    for file in files {
        let bytes = {
            let _guard = lock(file, false)?;
            match fs::read(file) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(StoreError::io(file, "reading for a backup")(err)),
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
    Ok(names)
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
