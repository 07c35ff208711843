//! Crash-safe file writes, in two forms.
//!
//! - **Replace** (`replace`): temp file, fsync, rename, fsync of the folder. A reader —
//!   or a power cut — sees the old file or the new one, never a part of either. The
//!   file gets a new inode, owner and mode: right for ferry's own files.
//! - **Rewrite in place** (`rewrite_in_place`): for a file another program shares (seed
//!   000's service keeps `active_downloads.json` open and locks it with fcntl), so its
//!   inode, owner and mode must stay. The new content first goes whole into a journal
//!   beside the file, `<file>.journal`, by `replace` (so the journal exists only when
//!   complete). Then the file is rewritten through the caller's locked descriptor:
//!   its first byte is overwritten with NUL (`POISON`) and synced, the rest of the new
//!   content is written and the length set, synced, and last the real first byte is
//!   written and synced. Then the journal is removed and the folder synced.
//!
//!   A crash anywhere leaves one of: no journal (the old or the new content, whole);
//!   a journal and a file that is still the old content (its length and FNV-1a hash
//!   are in the journal's header); a journal and a file that starts with NUL or is
//!   empty (torn by this write: valid JSON never starts with NUL). `finish_journal`,
//!   run under the exclusive lock before any read or write, replays the journal in
//!   the last two cases. In any other case another program rewrote the file after
//!   the crash, and its content is kept: the journal is dropped.
//!
//!   Space is reserved (`fallocate`) before the file is touched, so a full disk fails
//!   the write while the file still holds its old content; if a step fails anyway,
//!   the old content is written back.
//!
//! Temp files carry the writer's pid. `remove_stale_temps` clears a file's temps under
//! its exclusive lock; `remove_dead_temps` clears the temps of backups whose process
//! is gone (a backup has no lock: several may run at once).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The first byte of a file while ferry rewrites it in place: no JSON text starts
/// with it, so a file torn by a crash is told apart from any other program's write.
const POISON: u8 = 0;

const JOURNAL_MAGIC: &str = "ferry-journal 1";

/// The prefix of the temp files made for `path`, so stale ones can be found.
pub fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!(".{name}.tmp-")
}

fn temp_for(path: &Path) -> PathBuf {
    parent(path).join(format!(
        "{}{}-{}",
        temp_prefix(path),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `path` whole, atomically, with `fill` writing the new content.
pub fn replace(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = parent(path);
    let temp = temp_for(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let mut writer = io::BufWriter::with_capacity(256 * 1024, file);
        fill(&mut writer)?;
        let file = writer
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `path` with `content`, atomically, and only if it does not exist yet: a
/// file another program created meanwhile is never overwritten (`AlreadyExists`).
pub fn create_new(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let temp = temp_for(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        // A hard link, unlike a rename, refuses to replace an existing file.
        match fs::hard_link(&temp, path) {
            Ok(()) => {}
            // Filesystems without hard links (FAT on a USB stick): a rename, after a
            // last look; the window is the caller's lock on the `.lock` file only.
            Err(err) if !matches!(err.kind(), io::ErrorKind::AlreadyExists) && !path.exists() => {
                tracing::debug!(path = %path.display(), "no hard links here ({err}); creating by rename");
                fs::rename(&temp, path)?;
            }
            Err(err) => return Err(err),
        }
        File::open(&dir)?.sync_all()
    })();
    let _ = fs::remove_file(&temp);
    result
}

/// The journal of an in-place rewrite of `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    path.with_file_name(name)
}

/// FNV-1a, 64 bits: stable across Rust versions (a journal may outlive an upgrade),
/// enough to tell "unchanged" from "rewritten by another program".
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read_at(&mut buffer, offset)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buffer[..n]);
        offset += n as u64;
    }
}

/// One in-place rewrite of `path` through `file` (open for reading and writing, and
/// locked exclusively by the caller). The steps are separate so that a test can stop
/// after any of them, as a crash would.
pub struct InPlace<'a> {
    path: &'a Path,
    file: &'a File,
    old: Vec<u8>,
    new: &'a [u8],
}

impl<'a> InPlace<'a> {
    pub fn new(path: &'a Path, file: &'a File, new: &'a [u8]) -> io::Result<InPlace<'a>> {
        if new.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an in-place rewrite needs content (an empty file reads as torn)",
            ));
        }
        Ok(InPlace {
            path,
            file,
            old: read_all(file)?,
            new,
        })
    }

    /// Step 1: the journal, whole, or not at all.
    pub fn journal(&self) -> io::Result<()> {
        let header = format!(
            "{JOURNAL_MAGIC} before={}:{:016x} length={}\n",
            self.old.len(),
            fnv1a(&self.old),
            self.new.len()
        );
        replace(&journal_path(self.path), |out| {
            out.write_all(header.as_bytes())?;
            out.write_all(self.new)
        })
    }

    /// Step 2: space for the new content, so a full disk stops the write here.
    pub fn reserve(&self) -> io::Result<()> {
        reserve(self.file, self.new.len())
    }

    /// Step 3: the file marked as being rewritten.
    pub fn poison(&self) -> io::Result<()> {
        poison(self.file)
    }

    /// Step 4: all but the first byte, and the length.
    pub fn body(&self) -> io::Result<()> {
        body(self.file, self.new)
    }

    /// Step 5: the first byte; the file is whole again.
    pub fn seal(&self) -> io::Result<()> {
        seal(self.file, self.new)
    }

    /// Step 6: the journal removed, durably (a journal that came back after a power
    /// cut would be replayed over another program's later write).
    pub fn finish(&self) -> io::Result<()> {
        remove_journal(self.path)
    }

    /// Writes the old content back after a failed step (the blocks it used are still
    /// allocated, so this works on a full disk too).
    fn restore(&self) -> io::Result<()> {
        self.file.write_all_at(&self.old, 0)?;
        self.file.set_len(self.old.len() as u64)?;
        self.file.sync_data()?;
        remove_journal(self.path)
    }
}

/// Rewrites `path` in place with `new`, keeping its inode, owner and mode (see the
/// module doc). `file` is `path` open for reading and writing, locked exclusively.
pub fn rewrite_in_place(path: &Path, file: &File, new: &[u8]) -> io::Result<()> {
    let write = InPlace::new(path, file, new)?;
    write.journal()?;
    if let Err(err) = write.reserve() {
        let _ = remove_journal(path);
        return Err(err);
    }
    let rewritten = write
        .poison()
        .and_then(|()| write.body())
        .and_then(|()| write.seal());
    if let Err(err) = rewritten {
        if let Err(restore) = write.restore() {
            // The journal stays: the next lock of this file replays it.
            tracing::warn!(path = %path.display(), "could not put the old content back after a failed write ({restore}); the write is finished from its journal on the next access");
        }
        return Err(err);
    }
    write.finish()
}

fn reserve(file: &File, len: usize) -> io::Result<()> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Ok(());
    };
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not offered by this filesystem: the write goes on, with `restore` as the
        // fallback.
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(()),
        _ => Err(err),
    }
}

fn poison(file: &File) -> io::Result<()> {
    file.write_all_at(&[POISON], 0)?;
    file.sync_data()
}

fn body(file: &File, new: &[u8]) -> io::Result<()> {
    file.write_all_at(&new[1..], 1)?;
    file.set_len(new.len() as u64)?;
    file.sync_data()
}

fn seal(file: &File, new: &[u8]) -> io::Result<()> {
    file.write_all_at(&new[..1], 0)?;
    file.sync_data()
}

fn remove_journal(path: &Path) -> io::Result<()> {
    match fs::remove_file(journal_path(path)) {
        Ok(()) => File::open(parent(path))?.sync_all(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// What `finish_journal` did with a journal left by an interrupted rewrite.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No journal: nothing to do.
    None,
    /// The interrupted write was finished: the file holds the journal's content.
    Replayed,
    /// The write had reached the file whole; only its journal was left to remove.
    Completed,
    /// The journal was dropped: it was cut short or unreadable, or another program
    /// rewrote the file after the interruption (its content is kept).
    Dropped(&'static str),
}

/// Finishes or drops the journal an interrupted `rewrite_in_place` left beside
/// `path`. Call under the exclusive lock; `file` is `path` open for reading and
/// writing (`None` when the file does not exist).
pub fn finish_journal(path: &Path, file: Option<&File>) -> io::Result<Recovery> {
    let journal = journal_path(path);
    let mut bytes = Vec::new();
    match File::open(&journal) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Recovery::None),
        Err(err) => return Err(err),
    };
    let Some((before, new)) = parse_journal(&bytes) else {
        remove_journal(path)?;
        return Ok(Recovery::Dropped("the journal is cut short or not ferry's"));
    };
    let Some(file) = file else {
        remove_journal(path)?;
        return Ok(Recovery::Dropped(
            "the file was removed after the interrupted write",
        ));
    };
    let current = read_all(file)?;
    if current == new {
        remove_journal(path)?;
        return Ok(Recovery::Completed);
    }
    let ours = current.is_empty()
        || current.first() == Some(&POISON)
        || (current.len() as u64, fnv1a(&current)) == before;
    if !ours {
        remove_journal(path)?;
        return Ok(Recovery::Dropped(
            "another program rewrote the file after the interrupted write; its content is kept",
        ));
    }
    reserve(file, new.len())?;
    poison(file)?;
    body(file, new)?;
    seal(file, new)?;
    remove_journal(path)?;
    Ok(Recovery::Replayed)
}

/// The header's (old length, old hash) and the new content, if the journal is whole.
fn parse_journal(bytes: &[u8]) -> Option<((u64, u64), &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..end]).ok()?;
    let content = &bytes[end + 1..];
    let rest = header.strip_prefix(JOURNAL_MAGIC)?;
    let mut before = None;
    let mut length = None;
    for part in rest.split_whitespace() {
        if let Some(value) = part.strip_prefix("before=") {
            let (len, hash) = value.split_once(':')?;
            before = Some((len.parse().ok()?, u64::from_str_radix(hash, 16).ok()?));
        } else if let Some(value) = part.strip_prefix("length=") {
            length = Some(value.parse::<usize>().ok()?);
        }
    }
    (length? == content.len() && !content.is_empty()).then_some((before?, content))
}

/// Removes temp files a killed writer left beside `path`. Call only while holding the
/// exclusive lock that every writer of `path` takes.
pub fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// What marks a backup's temp file or folder: `.<dest name>.ferry-tmp-<pid>`.
const BACKUP_TEMP_MARK: &str = ".ferry-tmp-";

/// The temp file or folder a backup to `dest` is written to before it is moved in.
pub fn backup_temp(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    parent(dest).join(format!(".{name}{BACKUP_TEMP_MARK}{}", std::process::id()))
}

/// Writes a small file of a backup (its note) atomically through its backup temp.
pub fn write_backup_file(dest: &Path, content: &[u8]) -> io::Result<()> {
    let temp = backup_temp(dest);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&temp, dest)?;
        File::open(parent(dest))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Removes, in `dir`, the backup temps (`backup_temp`) of processes that are gone: a
/// `kill -9` or a power cut during a backup leaves one. A temp whose process still
/// runs is another backup in progress and is left alone. Returns what it removed.
pub fn remove_dead_temps(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = backup_temp_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match gone {
            Ok(()) => removed.push(path),
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot remove what a killed backup left: {err}")
            }
        }
    }
    removed
}

/// The pid in a backup temp's name: `.<name>.ferry-tmp-<pid>`, or SQLite's files
/// beside it (VACUUM INTO writes its target through a rollback journal, `-journal`).
fn backup_temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let rest = ["-journal", "-wal", "-shm"]
        .iter()
        .find_map(|suffix| rest.strip_suffix(suffix))
        .unwrap_or(rest);
    let (_, pid) = rest.rsplit_once(BACKUP_TEMP_MARK)?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists, under another user.
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    const OLD: &[u8] = b"{\n  \"a\": {\"progress\": 10},\n  \"b\": {\"progress\": 10}\n}\n";
    const NEW: &[u8] =
        b"{\n  \"a\": {\"progress\": 20},\n  \"b\": {\"progress\": 20},\n  \"c\": {}\n}\n";

    /// A crash after each step of an in-place rewrite (and inside the body): the
    /// recovery leaves the old content or the new, never anything else.
    #[test]
    fn a_crash_after_any_step_recovers_to_the_old_or_the_new_content() {
        for (short, long) in [(OLD, NEW), (NEW, OLD)] {
            for stop in 0..=7 {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("downloads.json");
                fs::write(&path, short).unwrap();
                let file = open_rw(&path);
                let write = InPlace::new(&path, &file, long).unwrap();
                let steps: [&dyn Fn() -> io::Result<()>; 6] = [
                    &|| write.journal(),
                    &|| write.reserve(),
                    &|| write.poison(),
                    &|| write.body(),
                    &|| write.seal(),
                    &|| write.finish(),
                ];
                let done = if stop == 7 { 0 } else { stop };
                for step in steps.iter().take(done) {
                    step().unwrap();
                }
                if stop == 7 {
                    // Torn inside the body: half of it written over the old content.
                    write.journal().unwrap();
                    write.poison().unwrap();
                    file.write_all_at(&long[1..long.len() / 2], 1).unwrap();
                }
                drop(file);
                let file = open_rw(&path);
                let recovery = finish_journal(&path, Some(&file)).unwrap();
                let content = fs::read(&path).unwrap();
                assert!(
                    content == short || content == long,
                    "stop {stop}: {recovery:?}: {:?}",
                    String::from_utf8_lossy(&content)
                );
                // Once the journal exists the write is finished: the new content.
                if (1..6).contains(&stop) || stop == 7 {
                    assert_eq!(content, long, "stop {stop}");
                    let expected = if stop == 5 {
                        Recovery::Completed
                    } else {
                        Recovery::Replayed
                    };
                    assert_eq!(recovery, expected, "stop {stop}");
                }
                assert!(!journal_path(&path).exists(), "stop {stop}");
                serde_json::from_slice::<serde_json::Value>(&content).unwrap();
            }
        }
    }

    /// Another program's write after the crash wins over the journal.
    #[test]
    fn a_journal_never_overwrites_another_programs_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        fs::write(&path, OLD).unwrap();
        let file = open_rw(&path);
        let write = InPlace::new(&path, &file, NEW).unwrap();
        write.journal().unwrap();
        drop(file);
        let theirs = b"{\"theirs\": {}}\n";
        fs::write(&path, theirs).unwrap();
        let file = open_rw(&path);
        assert!(matches!(
            finish_journal(&path, Some(&file)).unwrap(),
            Recovery::Dropped(_)
        ));
        assert_eq!(fs::read(&path).unwrap(), theirs);
        assert!(!journal_path(&path).exists());
    }

    #[test]
    fn a_journal_cut_short_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        fs::write(&path, OLD).unwrap();
        let header = format!(
            "{JOURNAL_MAGIC} before={}:{:016x} length={}\n",
            OLD.len(),
            fnv1a(OLD),
            NEW.len()
        );
        let mut cut = header.into_bytes();
        cut.extend_from_slice(&NEW[..10]);
        fs::write(journal_path(&path), &cut).unwrap();
        let file = open_rw(&path);
        assert!(matches!(
            finish_journal(&path, Some(&file)).unwrap(),
            Recovery::Dropped(_)
        ));
        assert_eq!(fs::read(&path).unwrap(), OLD);
    }

    #[test]
    fn backup_temps_are_named_with_their_pid() {
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-4242"), Some(4242));
        assert_eq!(backup_temp_pid(".copy.ferry-tmp-17"), Some(17));
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-17-journal"), Some(17));
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-17-wal"), Some(17));
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-17-other"), None);
        assert_eq!(backup_temp_pid("b3.db.ferry-tmp-17"), None);
        assert_eq!(backup_temp_pid(".b3.db.tmp-17"), None);
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-"), None);
        assert_eq!(backup_temp_pid(".b3.db.ferry-tmp-12x"), None);
    }
}
