//! The run lock (SPEC §5 "One delivering process"): `ferry run`, `ferry sync --once`,
//! `ferry migrate` and `ferry check --repair` each hold an exclusive `flock(2)` on a
//! file beside the store they deliver from or write into, so two of them never send
//! the same records; the second one refuses with a message naming the holder.
//!
//! Where: `<sqlite_path>.ferry-lock` for SQLite, `<json_dir>/.ferry-lock` for JSON —
//! beside the store rather than in `/var/lib/ferry`, because what must not be shared
//! is the store (its records and `sync_tracking`), whichever config points at it, and
//! because the store's folder is the one place ferry can always write: SQLite's `-wal`
//! and the JSON files' atomic replaces need it too, so the systemd unit's
//! `StateDirectory=` or the drop-in's `ReadWritePaths=` that lets ferry use a store
//! (another program's `/data/surveillance.db`) covers its lock as well.
//!
//! The lock is the flock, never the file: the kernel releases it when the holder's
//! process ends, however it ends, so a lock file left by a `kill -9` or a power cut
//! blocks nothing. The file is never deleted (deleting a lock file lets two processes
//! lock two different files of one name). Its text names the holder (pid, command),
//! for the refusal, and carries the daemon's state: `running` from the end of
//! `ferry run`'s start-up to its stop. A holder that finds `running` knows the last
//! daemon did not stop cleanly (a crash, a power cut), and `ferry run` checks the
//! store before using it (`storage.check_on_start = "unclean"`).
//!
//! This module owns that file; nothing else reads or writes it.

use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Backend, Config};
use crate::store::StoreError;

/// Exclusive use of one store by this process, until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// The store it guards, for messages.
    store: PathBuf,
    /// What holds it, as its file says (`ferry run`).
    command: &'static str,
    /// The previous daemon on this store did not stop cleanly.
    unclean: bool,
    /// This process wrote `running`: on drop, it writes `stopped`.
    running: bool,
    /// Where an earlier ferry kept its running marker ([`legacy_marker`]).
    legacy: PathBuf,
}

/// Why a run lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another process holds it.
    #[error("{0}")]
    Held(Box<Held>),
    #[error(transparent)]
    Io(#[from] StoreError),
}

/// Who holds a store, as the refused command tells its user.
#[derive(Debug)]
pub struct Held {
    /// What was refused (`sync --once`).
    pub refused: &'static str,
    pub store: PathBuf,
    pub lock_file: PathBuf,
    /// The holder's pid and command, as its lock file says (unknown when the file could
    /// not be read, or was read between the holder's lock and its write).
    pub pid: Option<u32>,
    pub command: Option<String>,
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let command = self.command.as_deref().unwrap_or("ferry");
        write!(f, "{} refused: another ferry (", self.refused)?;
        match self.pid {
            Some(pid) => write!(f, "pid {pid}, {command}")?,
            None => write!(
                f,
                "pid unknown, {command}; see the lock file {}",
                self.lock_file.display()
            )?,
        }
        // A daemon or a pass sends; a migration or a repair rewrites.
        let doing = match command {
            "ferry run" | "ferry sync --once" => "delivering from",
            _ => "working on",
        };
        write!(f, ") is {doing} {}; ", self.store.display())?;
        if command == "ferry run" {
            f.write_str("stop it first (sudo systemctl stop ferry")?;
            if let Some(pid) = self.pid {
                write!(f, ", or kill {pid} if it was started by hand")?;
            }
            f.write_str(")")?;
            if self.refused == "sync --once" {
                f.write_str(", or let it deliver")?;
            }
            Ok(())
        } else {
            f.write_str("wait for it to finish, then try again")
        }
    }
}

/// The state the lock file records.
const RUNNING: &str = "running";
const STOPPED: &str = "stopped";

/// The lock file of the `backend` store of `config`.
pub fn lock_path(config: &Config, backend: Backend) -> PathBuf {
    match backend {
        Backend::Sqlite => with_suffix(&config.storage.sqlite_path, ".ferry-lock"),
        Backend::Json => config.storage.json_dir.join(".ferry-lock"),
    }
}

/// What earlier versions of ferry wrote while running, instead of the lock's state:
/// after an upgrade, one left behind by a crash still makes the next start check.
fn legacy_marker(config: &Config, backend: Backend) -> PathBuf {
    match backend {
        Backend::Sqlite => with_suffix(&config.storage.sqlite_path, ".ferry-running"),
        Backend::Json => config.storage.json_dir.join(".ferry-running"),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn store_path(config: &Config, backend: Backend) -> PathBuf {
    match backend {
        Backend::Sqlite => config.storage.sqlite_path.clone(),
        Backend::Json => config.storage.json_dir.clone(),
    }
}

impl RunLock {
    /// Takes the lock of the `backend` store of `config` for `command` (`"sync --once"`),
    /// or says who holds it. Never waits.
    pub fn acquire(
        config: &Config,
        backend: Backend,
        command: &'static str,
    ) -> Result<RunLock, RunLockError> {
        let path = lock_path(config, backend);
        let store = store_path(config, backend);
        let folder = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(folder).map_err(StoreError::io(
            folder,
            "creating the store's folder for its run lock",
        ))?;
        let held = |file: Option<&File>| {
            let (pid, holder) = file.map(read_holder).unwrap_or_default();
            RunLockError::Held(Box::new(Held {
                refused: command,
                store: store.clone(),
                lock_file: path.clone(),
                pid,
                command: holder,
            }))
        };
        let (mut file, created) = match open(&path) {
            Ok(opened) => opened,
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                // Made by another user: flock works on a read-only descriptor, so
                // whether it is held can still be told, and who holds it.
                if let Ok(file) = File::open(&path) {
                    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
                        return Err(held(Some(&file)));
                    }
                }
                return Err(StoreError::io(&path, "opening the run lock for writing")(err).into());
            }
            Err(err) => return Err(StoreError::io(&path, "opening the run lock")(err).into()),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(held(Some(&file))),
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(StoreError::io(&path, "taking the run lock")(err).into())
            }
        }
        if created {
            adopt_owner(&file, &store, folder);
        }
        let mut text = String::new();
        // A file that is not text reads as empty: it only informs.
        let _ = file.read_to_string(&mut text);
        let legacy = legacy_marker(config, backend);
        let unclean = parse(&text).state.as_deref() == Some(RUNNING) || legacy.exists();
        let mut lock = RunLock {
            file,
            path,
            store,
            command,
            unclean,
            running: false,
            legacy,
        };
        // The state read is kept until the daemon says otherwise: a `sync --once` after
        // a crash leaves the next `ferry run` its check.
        lock.write(if unclean { RUNNING } else { STOPPED })?;
        Ok(lock)
    }

    /// The previous daemon on this store did not stop cleanly (and no daemon has
    /// started on it since).
    pub fn unclean(&self) -> bool {
        self.unclean
    }

    /// Whether this lock is the one of the `backend` store of `config`: the same file,
    /// however its path is spelled (a second flock on it from this process would fail).
    pub fn guards(&self, config: &Config, backend: Backend) -> bool {
        let other = lock_path(config, backend);
        if other == self.path {
            return true;
        }
        match (std::fs::metadata(&other), self.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// The daemon has started on the store: until [`RunLock::mark_stopped`] (or this
    /// lock is dropped), the file says `running`, so that a crash is known to the next
    /// start.
    pub fn mark_running(&mut self) -> Result<(), RunLockError> {
        self.write(RUNNING)?;
        self.running = true;
        self.unclean = false;
        self.remove_legacy_marker();
        Ok(())
    }

    /// The store is known to be left in order (a clean stop, a repair): the next start
    /// need not check it.
    pub fn mark_stopped(&mut self) -> Result<(), RunLockError> {
        self.write(STOPPED)?;
        self.running = false;
        self.unclean = false;
        self.remove_legacy_marker();
        Ok(())
    }

    /// The state is in the lock file now, flushed: the old marker has served.
    fn remove_legacy_marker(&self) {
        let _ = std::fs::remove_file(&self.legacy);
    }

    /// Replaces the file's text: holder and `state`. Flushed to the disk, since the
    /// state must survive the power cut it is there to reveal.
    fn write(&mut self, state: &str) -> Result<(), RunLockError> {
        let text = format!(
            "# ferry's run lock: the process below holds an flock on this file while it uses\n\
             # {}; the kernel frees it when that process ends\n\
             pid {}\ncommand ferry {}\nstate {state}\n",
            self.store.display(),
            std::process::id(),
            self.command
        );
        let io = |op| StoreError::io(&self.path, op);
        // In place (the file is the lock: it is never replaced), shortened after.
        self.file
            .write_all_at(text.as_bytes(), 0)
            .map_err(io("writing the run lock"))?;
        self.file
            .set_len(text.len() as u64)
            .map_err(io("writing the run lock"))?;
        self.file
            .sync_data()
            .map_err(io("flushing the run lock to disk"))?;
        Ok(())
    }
}

impl Drop for RunLock {
    /// A daemon that gets here stopped in order (a stop, the end of `mode = "once"`, a
    /// reload onto another store): the store is left clean. A panic is not a clean
    /// stop. Closing the file releases the flock.
    fn drop(&mut self) {
        if self.running && !std::thread::panicking() {
            if let Err(err) = self.mark_stopped() {
                tracing::warn!("{err} (the next start will check the store)");
            }
        }
    }
}

/// Opens (or creates) the lock file for reading and writing; says whether it was made.
fn open(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match options.clone().create_new(true).mode(0o600).open(path) {
        Ok(file) => Ok((file, true)),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            options.open(path).map(|file| (file, false))
        }
        Err(err) => Err(err),
    }
}

/// A lock file made by root (`sudo ferry sync --once`) would shut the service's user
/// out of it: like SQLite for its `-wal`, a new lock file takes the owner and group of
/// the store (of its folder when there is no store yet), and the store's read and write
/// bits for owner and group (never for others: whoever can open it can hold it).
/// Best effort. Only a file made by root is given away, as SQLite does: only root
/// may, and the unit's `SystemCallFilter=~@privileged` kills a process that tries
/// `fchown` (the service never runs as root).
fn adopt_owner(file: &File, store: &Path, folder: &Path) {
    let Ok(reference) = std::fs::metadata(store).or_else(|_| std::fs::metadata(folder)) else {
        return;
    };
    if let Ok(mine) = file.metadata() {
        let made_by_root = mine.uid() == 0;
        if made_by_root && (mine.uid(), mine.gid()) != (reference.uid(), reference.gid()) {
            let _ = std::os::unix::fs::fchown(file, Some(reference.uid()), Some(reference.gid()));
        }
    }
    let mode = (reference.mode() & 0o660) | 0o600;
    let _ = file.set_permissions(Permissions::from_mode(mode));
}

/// What a lock file says.
#[derive(Debug, Default, PartialEq)]
struct Contents {
    pid: Option<u32>,
    command: Option<String>,
    state: Option<String>,
}

/// Reads a lock file's text; anything it does not understand is left out.
fn parse(text: &str) -> Contents {
    let mut contents = Contents::default();
    for line in text.lines() {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        match name {
            "pid" => contents.pid = value.parse().ok(),
            "command" if !value.is_empty() => contents.command = Some(value.to_string()),
            "state" if !value.is_empty() => contents.state = Some(value.to_string()),
            _ => {}
        }
    }
    contents
}

/// The pid and command a held lock file names.
fn read_holder(mut file: &File) -> (Option<u32>, Option<String>) {
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return (None, None);
    }
    let contents = parse(&text);
    (contents.pid, contents.command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, backend: &str, sqlite_path: &str) -> Config {
        let path = dir.join("ferry.toml");
        std::fs::write(
            &path,
            format!(
                "[storage]\nbackend = \"{backend}\"\nsqlite_path = \"{sqlite_path}\"\n\
                 json_dir = \"state/json\"\nbackups_dir = \"state/backups\"\n\
                 [[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/e\"\n"
            ),
        )
        .unwrap();
        Config::load(&path, &[("STATE_DIRECTORY", "")]).unwrap()
    }

    fn held(result: Result<RunLock, RunLockError>) -> Held {
        match result {
            Err(RunLockError::Held(held)) => *held,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn beside_the_store_for_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        // Another program's database in its own folder (seed 003's /data/surveillance.db).
        let config = config(dir.path(), "sqlite", "data/surveillance.db");
        assert_eq!(
            lock_path(&config, Backend::Sqlite),
            dir.path().join("data/surveillance.db.ferry-lock")
        );
        assert_eq!(
            lock_path(&config, Backend::Json),
            dir.path().join("state/json/.ferry-lock")
        );
        // The folder is made if the store has none yet.
        drop(RunLock::acquire(&config, Backend::Sqlite, "sync --once").unwrap());
        drop(RunLock::acquire(&config, Backend::Json, "sync --once").unwrap());
        assert!(dir.path().join("data/surveillance.db.ferry-lock").is_file());
        assert!(dir.path().join("state/json/.ferry-lock").is_file());
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "sqlite", "state/ferry.db");
        let first = RunLock::acquire(&config, Backend::Sqlite, "run").unwrap();
        let refused = held(RunLock::acquire(&config, Backend::Sqlite, "sync --once"));
        assert_eq!(refused.pid, Some(std::process::id()));
        assert_eq!(refused.command.as_deref(), Some("ferry run"));
        assert_eq!(
            refused.to_string(),
            format!(
                "sync --once refused: another ferry (pid {pid}, ferry run) is delivering from {}; \
                 stop it first (sudo systemctl stop ferry, or kill {pid} if it was started by hand), \
                 or let it deliver",
                config.storage.sqlite_path.display(),
                pid = std::process::id()
            )
        );
        // Two backends, two stores, two locks.
        let json = RunLock::acquire(&config, Backend::Json, "migrate").unwrap();
        let refused = held(RunLock::acquire(&config, Backend::Json, "run"));
        assert!(
            refused.to_string().contains("(pid ")
                && refused
                    .to_string()
                    .contains(", ferry migrate) is working on ")
                && refused
                    .to_string()
                    .ends_with("wait for it to finish, then try again"),
            "{refused}"
        );
        drop((first, json));
        RunLock::acquire(&config, Backend::Sqlite, "sync --once").unwrap();
    }

    #[test]
    fn the_holder_is_unknown_when_its_file_says_nothing_useful() {
        let contents = parse("pid twelve\ncommand\nstate running\n\0\0garbage");
        assert_eq!(
            contents,
            Contents {
                pid: None,
                command: None,
                state: Some("running".into())
            }
        );
        let held = Held {
            refused: "run",
            store: "/s/ferry.db".into(),
            lock_file: "/s/ferry.db.ferry-lock".into(),
            pid: None,
            command: None,
        };
        assert_eq!(
            held.to_string(),
            "run refused: another ferry (pid unknown, ferry; see the lock file /s/ferry.db.ferry-lock) \
             is working on /s/ferry.db; wait for it to finish, then try again"
        );
    }

    #[test]
    fn running_until_dropped_so_that_a_crash_is_seen_by_the_next_holder() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "sqlite", "state/ferry.db");
        let path = lock_path(&config, Backend::Sqlite);
        let state = || parse(&std::fs::read_to_string(&path).unwrap()).state;

        let mut lock = RunLock::acquire(&config, Backend::Sqlite, "run").unwrap();
        assert!(!lock.unclean(), "a new store");
        assert_eq!(state().as_deref(), Some(STOPPED));
        lock.mark_running().unwrap();
        assert_eq!(state().as_deref(), Some(RUNNING));
        drop(lock);
        assert_eq!(state().as_deref(), Some(STOPPED), "a clean stop");

        // What a crash leaves: the text says running, nobody holds the flock.
        let lock = RunLock::acquire(&config, Backend::Sqlite, "run").unwrap();
        let mut crashed = lock;
        crashed.mark_running().unwrap();
        crashed.running = false; // as if the process had died without its drop
        drop(crashed);
        assert_eq!(state().as_deref(), Some(RUNNING));
        // A holder that is not a daemon keeps the state for the next daemon.
        let pass = RunLock::acquire(&config, Backend::Sqlite, "sync --once").unwrap();
        assert!(pass.unclean());
        drop(pass);
        assert_eq!(state().as_deref(), Some(RUNNING));
        let mut daemon = RunLock::acquire(&config, Backend::Sqlite, "run").unwrap();
        assert!(daemon.unclean());
        daemon.mark_running().unwrap();
        assert!(
            !daemon.unclean(),
            "this daemon started: its own crash is the next one's"
        );
        drop(daemon);

        // A repair leaves the store in order.
        std::fs::write(&path, "pid 1\ncommand ferry run\nstate running\n").unwrap();
        let mut repair = RunLock::acquire(&config, Backend::Sqlite, "check --repair").unwrap();
        assert!(repair.unclean());
        repair.mark_stopped().unwrap();
        drop(repair);
        assert!(!RunLock::acquire(&config, Backend::Sqlite, "run")
            .unwrap()
            .unclean());
    }

    #[test]
    fn the_marker_of_an_earlier_ferry_counts_as_an_unclean_stop_until_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "json", "state/ferry.db");
        std::fs::create_dir_all(&config.storage.json_dir).unwrap();
        let marker = config.storage.json_dir.join(".ferry-running");
        std::fs::write(&marker, "1234\n").unwrap();
        let mut lock = RunLock::acquire(&config, Backend::Json, "run").unwrap();
        assert!(lock.unclean());
        lock.mark_running().unwrap();
        assert!(!marker.exists(), "its state is in the run lock now");
    }

    #[test]
    fn the_same_file_under_another_name_is_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let config_a = config(dir.path(), "sqlite", "state/ferry.db");
        let lock = RunLock::acquire(&config_a, Backend::Sqlite, "run").unwrap();
        let config_b = config(dir.path(), "sqlite", "state/../state/ferry.db");
        assert_ne!(
            lock_path(&config_a, Backend::Sqlite),
            lock_path(&config_b, Backend::Sqlite)
        );
        assert!(lock.guards(&config_b, Backend::Sqlite));
        let config_c = config(dir.path(), "sqlite", "state/other.db");
        assert!(!lock.guards(&config_c, Backend::Sqlite));
        assert!(!lock.guards(&config_a, Backend::Json));
    }

    /// `sudo ferry sync --once` on a store the service (another user) owns: the lock
    /// file it makes is the owner's, or the service could no longer open it. Only root
    /// can give a file away; elsewhere the test checks the mode only.
    #[test]
    fn a_new_lock_file_takes_the_owner_and_mode_of_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "sqlite", "state/ferry.db");
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let db = &config.storage.sqlite_path;
        std::fs::write(db, b"").unwrap();
        std::fs::set_permissions(db, Permissions::from_mode(0o664)).unwrap();
        let root = std::fs::metadata(db).unwrap().uid() == 0;
        if root {
            std::os::unix::fs::chown(db, Some(65534), Some(65534)).unwrap();
        }
        drop(RunLock::acquire(&config, Backend::Sqlite, "sync --once").unwrap());
        let meta = std::fs::metadata(lock_path(&config, Backend::Sqlite)).unwrap();
        assert_eq!(
            meta.mode() & 0o777,
            0o660,
            "the store's bits, none for others"
        );
        if root {
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        }
    }
}
