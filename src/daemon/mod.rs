//! `ferry run` (SPEC §6): start-up in order (the store's run lock, the integrity check
//! after an unclean stop, migration, store, engine), then READY=1; a supervisor that pings the watchdog only while the delivery loops make
//! progress and refreshes `STATUS=`; SIGHUP reloads the config (an invalid one is
//! logged and the old one kept); SIGTERM/SIGINT stop gracefully. The process's
//! signals arrive as [`Signal`]s, so tests can drive this in-process.
//!
//! Without `remote.url` (the config as the package installs it) ferry starts all the
//! same — store opened and migrated, READY=1 — but sends nothing: it says why in
//! `STATUS=` and the log, keeps the watchdog fed, and waits for a reload that sets it.
//!
//! [`run_lock`] makes this the one process delivering from its store (SPEC §5); the
//! other commands that deliver or rewrite the store take the same lock.

mod notify;
pub mod run_lock;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{CheckOnStart, Config, Env};
use crate::store::{self, now_ms, Store};
use crate::sync::{Engine, SharedStore, SyncError, SHUTDOWN_GRACE};
pub use run_lock::{RunLock, RunLockError};

/// What the process was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// How often `STATUS=` is refreshed, at most (it counts records).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// What [`start`] brought up.
enum Started {
    Delivering(Arc<Engine>),
    /// The store is ready but `remote.url` is not set: nothing to deliver to.
    Waiting,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Another ferry delivers from the store (or its lock file cannot be used).
    #[error(transparent)]
    RunLock(#[from] RunLockError),
}

impl From<store::StoreError> for DaemonError {
    fn from(err: store::StoreError) -> Self {
        DaemonError::Sync(err.into())
    }
}

/// The store as every command that delivers opens it (`ferry run`, `ferry sync`): with
/// its run lock held, checked first if the last daemon did not stop cleanly on it (or
/// as `storage.check_on_start` says) — a damaged store is neither migrated into nor
/// delivered from —, then brought up to date from the other backend
/// (`migrate_on_start`), then opened. Without a lock (a dry run, beside a daemon) it
/// is only opened.
pub fn open_store(config: &Config, lock: Option<&RunLock>) -> Result<Box<dyn Store>, DaemonError> {
    let opened = store::open(config)?;
    let Some(lock) = lock else {
        return Ok(opened);
    };
    check_store(config, lock, opened)?;
    if config.storage.migrate_on_start {
        store::migrate::migrate(config, config.storage.backend, false)?;
    }
    Ok(store::open(config)?)
}

/// The integrity check before a start, when `check_on_start` asks for it; the store
/// is closed after it.
fn check_store(
    config: &Config,
    lock: &RunLock,
    mut opened: Box<dyn Store>,
) -> Result<(), DaemonError> {
    let unclean = lock.unclean();
    let check = match config.storage.check_on_start {
        CheckOnStart::Always => true,
        CheckOnStart::Unclean => unclean,
        CheckOnStart::Never => false,
    };
    if unclean {
        tracing::warn!("ferry did not stop cleanly last time");
    }
    if check {
        tracing::info!("checking the store's integrity");
        if let Some(problem) = opened.quick_check()? {
            return Err(SyncError::Damaged(format!(
                "the {} store is damaged ({problem}); ferry will not start on it: \
                 run `ferry check --repair` (it keeps the damaged copy and says what it recovered)",
                config.storage.backend.as_str()
            ))
            .into());
        }
    }
    Ok(())
}

/// The store opened (see [`open_store`]) and the delivery engine on it, when there is
/// a server to deliver to. `lock` is the store's run lock: it says whether the last
/// daemon stopped cleanly, and records that this one runs.
fn start(config: &Config, lock: &mut RunLock) -> Result<Started, DaemonError> {
    let opened = open_store(config, Some(lock))?;
    let started = match config.remote.url {
        None => Started::Waiting,
        Some(_) => Started::Delivering(Arc::new(Engine::new(
            config.clone(),
            SharedStore::new(opened),
        )?)),
    };
    lock.mark_running()?;
    Ok(started)
}

/// What a reload leaves to go back to if the new config cannot start: the config that
/// ran, and, when the reload moved to another store, the old store's lock (kept until
/// the new store has started, so that no other ferry slips in between).
struct Previous {
    config: Config,
    lock: Option<RunLock>,
}

/// Puts `new` in place of `config` for the next start. A new store is locked before
/// anything else touches it — before its migration. `None` when it cannot be (another
/// ferry holds it): the reload is refused and `config` stays.
fn switch_to(new: Config, config: &mut Config, lock: &mut RunLock) -> Option<Previous> {
    if new.storage.backend != config.storage.backend {
        tracing::info!(
            "reload: storage backend {} → {}",
            config.storage.backend.as_str(),
            new.storage.backend.as_str()
        );
    }
    let old_lock = if lock.guards(&new, new.storage.backend) {
        None
    } else {
        match RunLock::acquire(&new, new.storage.backend, "run") {
            Ok(new_lock) => Some(std::mem::replace(lock, new_lock)),
            Err(err) => {
                tracing::error!("reload refused, keeping the running config: {err}");
                return None;
            }
        }
    };
    Some(Previous {
        config: std::mem::replace(config, new),
        lock: old_lock,
    })
}

/// Without `remote.url`: READY=1 with a `STATUS=` that says what to do, the watchdog
/// fed, until a stop (`None`) or a reload that loads (`Some`, whether or not it sets
/// the URL).
async fn wait_for_url(
    config_path: &Path,
    env: &dyn Env,
    signals: &mut mpsc::Receiver<Signal>,
) -> Option<Config> {
    let status = format!(
        "not sending: remote.url is not set in {} — records are kept; set it, then systemctl reload ferry",
        config_path.display()
    );
    notify::ready(&status);
    tracing::warn!("{status}");
    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                None | Some(Signal::Stop) => {
                    notify::stopping();
                    return None;
                }
                Some(Signal::Reload) => match Config::load(config_path, env) {
                    Ok(new) => {
                        notify::reloading();
                        return Some(new);
                    }
                    Err(err) => tracing::error!("reload refused, keeping the running config: {err}"),
                },
            },
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
        }
    }
}

/// Runs the daemon until a [`Signal::Stop`]. `config` is the config already loaded
/// from `config_path`; a reload reads `config_path` again. The store's run lock is
/// taken first and held until the end, across reloads.
pub async fn run(
    config_path: &Path,
    mut config: Config,
    env: &dyn Env,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<(), DaemonError> {
    // Held until this function returns; on an orderly return its drop records a clean
    // stop.
    let mut lock = RunLock::acquire(&config, config.storage.backend, "run")?;
    let mut reloaded = false;
    let mut previous: Option<Previous> = None;
    loop {
        let started = match start(&config, &mut lock) {
            Ok(started) => started,
            Err(err) => match previous.take() {
                Some(old) => {
                    tracing::error!("reload failed, going back to the previous config: {err}");
                    config = old.config;
                    if let Some(old_lock) = old.lock {
                        // The new store's lock is released here.
                        lock = old_lock;
                    }
                    continue;
                }
                None => return Err(err),
            },
        };
        // Started: the old store's lock, if the reload moved, is released here.
        drop(previous.take());
        let engine = match started {
            Started::Delivering(engine) => engine,
            Started::Waiting => match wait_for_url(config_path, env, &mut signals).await {
                None => {
                    tracing::info!("stopped");
                    return Ok(());
                }
                Some(new) => {
                    previous = switch_to(new, &mut config, &mut lock);
                    reloaded = true;
                    continue;
                }
            },
        };
        let status = engine.status_line().await.unwrap_or_default();
        notify::ready(&status);
        tracing::info!(
            "ferry {} {}: {} backend, {} collection(s), {:?} mode; {status}",
            env!("CARGO_PKG_VERSION"),
            if reloaded { "reloaded" } else { "ready" },
            config.storage.backend.as_str(),
            config.collections.len(),
            config.sync.mode
        );
        let (stop, stop_rx) = watch::channel(false);
        let mut running = tokio::spawn({
            let engine = Arc::clone(&engine);
            async move { engine.run(stop_rx).await }
        });
        let watchdog_every = notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let activity = engine.activity();
        let mut shown_generation = activity.generation.load(Ordering::Relaxed);
        // STATUS= follows activity, at most every STATUS_EVERY; idle, nothing wakes.
        let mut status_shown = tokio::time::Instant::now();
        let mut status_due: Option<tokio::time::Instant> = None;
        let mut wedged_reported = false;

        let next = loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    None | Some(Signal::Stop) => break None,
                    Some(Signal::Reload) => match Config::load(config_path, env) {
                        Ok(new) => break Some(new),
                        Err(err) => tracing::error!("reload refused, keeping the running config: {err}"),
                    },
                },
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    let now = now_ms();
                    let limit = engine.stall_limit().as_millis() as i64;
                    match engine.beats().iter().find(|b| b.stalled(now, limit)) {
                        None => {
                            notify::watchdog();
                            wedged_reported = false;
                        }
                        Some(beat) if !wedged_reported => {
                            tracing::error!(
                                collection = %beat.collection,
                                "the delivery loop of {} has made no progress for over {:?}; not pinging the watchdog",
                                beat.collection,
                                engine.stall_limit()
                            );
                            wedged_reported = true;
                        }
                        Some(_) => {}
                    }
                }
                _ = activity.changed.notified(), if status_due.is_none() => {
                    status_due = Some(status_shown + STATUS_EVERY);
                }
                _ = tokio::time::sleep_until(status_due.unwrap_or_else(tokio::time::Instant::now)),
                    if status_due.is_some() =>
                {
                    status_due = None;
                    status_shown = tokio::time::Instant::now();
                    let generation = activity.generation.load(Ordering::Relaxed);
                    if generation != shown_generation {
                        shown_generation = generation;
                        if let Ok(line) = engine.status_line().await {
                            notify::status(&line);
                        }
                    }
                }
                finished = &mut running => {
                    // The engine ended by itself (mode = "once", or an error): a stop.
                    notify::stopping();
                    return match finished {
                        Ok(result) => Ok(result?),
                        Err(err) => Err(SyncError::Internal(format!("the delivery engine failed: {err}")).into()),
                    };
                }
            }
        };

        match next {
            None => notify::stopping(),
            Some(_) => notify::reloading(),
        }
        let _ = stop.send(true);
        // The engine gives requests in flight SHUTDOWN_GRACE; a little more for the
        // tracking write that follows.
        match tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(3), &mut running).await {
            Ok(Ok(result)) => result?,
            Ok(Err(err)) => {
                return Err(
                    SyncError::Internal(format!("the delivery engine failed: {err}")).into(),
                )
            }
            Err(_) => {
                running.abort();
                tracing::warn!(
                    "the delivery engine did not stop in time; unfinished requests stay pending"
                );
            }
        }
        match next {
            None => {
                tracing::info!("stopped");
                return Ok(());
            }
            Some(new) => {
                // The old engine stopped cleanly: the store stays marked running (this
                // process still uses it), and the restart is not a crash recovery.
                previous = switch_to(new, &mut config, &mut lock);
                reloaded = true;
            }
        }
    }
}
