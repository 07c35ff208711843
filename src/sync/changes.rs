//! Waiting for another process's write to the store without polling: an inotify
//! watch on the store's folders (the SQLite database's `-wal` file changes on every
//! commit; JSON files are replaced or rewritten). An event only says "look again":
//! the caller then compares the store's change token, so ferry's own writes, which
//! raise events too, wake nothing else. Idle, the daemon sleeps in the kernel.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use super::{SharedStore, SyncError};

/// What counts as a write in a watched folder: contents changed, a file written and
/// closed, created, renamed in or out (atomic replace), or deleted.
const MASK: u32 = libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE;

pub struct ChangeWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ChangeWatch {
    /// Watches `dirs`. Fails where inotify is missing or out of watches; the caller
    /// then polls instead.
    pub fn new(dirs: &[PathBuf]) -> io::Result<ChangeWatch> {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a new fd
        // that nothing else owns.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid fd owned by nobody else (see above).
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        for dir in dirs {
            let path = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
            // SAFETY: the fd is open and `path` is a NUL-terminated string that
            // outlives the call.
            let watch = unsafe { libc::inotify_add_watch(owned.as_raw_fd(), path.as_ptr(), MASK) };
            if watch < 0 {
                let err = io::Error::last_os_error();
                return Err(io::Error::new(
                    err.kind(),
                    format!("watching {}: {err}", dir.display()),
                ));
            }
        }
        // SAFETY: the AsyncFd owns the fd, so it stays open and the same for the
        // AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(ChangeWatch { fd })
    }

    /// Waits for at least one event, then takes every event queued so far, so a
    /// burst of writes is one wake-up.
    pub async fn changed(&self) -> io::Result<()> {
        let mut buffer = [0u8; 4096];
        let mut got_some = false;
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                // SAFETY: the buffer is valid for `len` bytes for the whole call.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        buffer.as_mut_ptr().cast::<libc::c_void>(),
                        buffer.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => got_some = true,
                Ok(Err(err)) => return Err(err),
                // Nothing (more) queued: done if this call has seen an event.
                Err(_would_block) => {
                    if got_some {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How often continuous mode asks the store whether another process wrote to it,
/// where the store cannot be watched for file events.
pub const CHANGE_POLL: Duration = Duration::from_millis(500);
/// With file events, a look now and then all the same, for writes the kernel does
/// not report (a network file system, a folder replaced under the watch).
const WATCHED_POLL: Duration = Duration::from_secs(10);
/// The least time between two looks that file events cause.
const EVENT_GAP: Duration = Duration::from_millis(25);
/// After a file event that showed no change yet, look again after these waits.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// Continuous mode: tells the collection loops (through `changes`) when another
/// process wrote to the store. It waits on file events where the kernel offers
/// them, so an idle daemon does not wake, and looks at the change token every
/// `CHANGE_POLL` where it does not.
pub(super) async fn watch_for_changes(
    store: SharedStore,
    mut stop: watch::Receiver<bool>,
    changes: watch::Sender<u64>,
) -> Result<(), SyncError> {
    let dirs = store.call(|s| Ok(s.watched_dirs())).await?;
    let mut events = match ChangeWatch::new(&dirs) {
        Ok(events) => Some(events),
        Err(err) => {
            tracing::warn!(
                "cannot watch the store for changes ({err}); looking every {CHANGE_POLL:?} instead"
            );
            None
        }
    };
    let poll_every = |events: &Option<ChangeWatch>| {
        if events.is_some() {
            WATCHED_POLL
        } else {
            CHANGE_POLL
        }
    };
    let mut last = store.call(|s| s.change_token()).await?;
    // A write between the loops' first look and this baseline would go unnoticed:
    // the loops look once more, now that changes from here on are seen.
    changes.send_modify(|n| *n += 1);
    let mut tick = tokio::time::interval(poll_every(&events));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    // A file event can come before the write it announces is visible (SQLite writes
    // the WAL, syncs it, then publishes the commit): an event that finds no change
    // is followed by looks after each of RECHECKS.
    let mut rechecks = RECHECKS.len();
    let mut recheck_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(recheck_at), if rechecks < RECHECKS.len() => {}
            event = async { events.as_ref()?.changed().await.err() }, if events.is_some() => {
                rechecks = 0;
                if let Some(err) = event {
                    tracing::warn!(
                        "the store's change watch failed ({err}); looking every {CHANGE_POLL:?} instead"
                    );
                    events = None;
                    tick = tokio::time::interval(CHANGE_POLL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
        match store.call(|s| s.change_token()).await {
            Ok(token) if token != last => {
                last = token;
                changes.send_modify(|n| *n += 1);
                rechecks = RECHECKS.len();
            }
            Ok(_) => {
                if let Some(after) = RECHECKS.get(rechecks) {
                    recheck_at = tokio::time::Instant::now() + *after;
                    rechecks += 1;
                }
            }
            Err(err) => tracing::warn!("cannot tell whether the store changed: {err}"),
        }
        if events.is_some() {
            // ferry's own writes raise events too: look at most every EVENT_GAP,
            // taking the events of the gap in one go.
            tokio::time::sleep(EVENT_GAP).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_in_a_watched_folder_wakes_the_watch_and_silence_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = ChangeWatch::new(&[dir.path().to_path_buf()]).expect("inotify");
        let quiet = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(quiet.is_err(), "no write, no wake-up");

        // A burst of writes from "another process" is taken in one wake-up.
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").expect("write");
        }
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the writes wake the watch")
            .expect("read events");
        let after = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(after.is_err(), "every event of the burst was taken at once");
    }

    #[test]
    fn a_missing_folder_is_an_error_that_names_it() {
        let err = ChangeWatch::new(&[PathBuf::from("/nonexistent/ferry-test")])
            .err()
            .expect("no such folder");
        assert!(err.to_string().contains("/nonexistent/ferry-test"), "{err}");
    }
}
