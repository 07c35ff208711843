//! `ferry run` (SPEC §6): start-up in order (config, migration, store, engine), then
//! READY=1; a supervisor that pings the watchdog only while the delivery loops make
//! progress and refreshes `STATUS=`; SIGHUP reloads the config (an invalid one is
//! logged and the old one kept); SIGTERM/SIGINT stop gracefully. The process's
//! signals arrive as [`Signal`]s, so tests can drive this in-process.
//!
//! Without `remote.url` (the config as the package installs it) ferry starts all the
//! same — store opened and migrated, READY=1 — but sends nothing: it says why in
//! `STATUS=` and the log, keeps the watchdog fed, and waits for a reload that sets it.

mod notify;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{CheckOnStart, Config, Env};
use crate::store::{self, now_ms};
use crate::sync::{Engine, SharedStore, SyncError, SHUTDOWN_GRACE};

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

/// The store brought up to date and opened — checked first if ferry did not stop
/// cleanly on it — and the delivery engine on it, when there is a server to deliver to.
fn start(config: &Config) -> Result<Started, SyncError> {
    // The check comes first: a damaged store is not written into by a migration.
    let mut opened = store::open(config)?;
    let marker = store::running_marker(config);
    let unclean = marker.exists();
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
            )));
        }
    }
    if config.storage.migrate_on_start {
        drop(opened);
        store::migrate::migrate(config, config.storage.backend, false)?;
        opened = store::open(config)?;
    }
    std::fs::write(&marker, format!("{}\n", std::process::id())).map_err(|e| {
        SyncError::Store(store::StoreError::io(&marker, "writing the running marker")(e))
    })?;
    if config.remote.url.is_none() {
        return Ok(Started::Waiting);
    }
    let store = SharedStore::new(opened);
    Ok(Started::Delivering(Arc::new(Engine::new(
        config.clone(),
        store,
    )?)))
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
/// from `config_path`; a reload reads `config_path` again.
pub async fn run(
    config_path: &Path,
    mut config: Config,
    env: &dyn Env,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<(), SyncError> {
    let mut reloaded = false;
    // The config that ran before a reload, to go back to if the new one cannot start.
    let mut previous: Option<Config> = None;
    loop {
        let engine = match start(&config) {
            Ok(Started::Delivering(engine)) => engine,
            Ok(Started::Waiting) => {
                let next = wait_for_url(config_path, env, &mut signals).await;
                // Nothing was written while waiting: the next start need not check.
                let _ = std::fs::remove_file(store::running_marker(&config));
                match next {
                    None => {
                        tracing::info!("stopped");
                        return Ok(());
                    }
                    Some(new) => {
                        previous = Some(std::mem::replace(&mut config, new));
                        reloaded = true;
                        continue;
                    }
                }
            }
            Err(err) => match previous.take() {
                Some(old) => {
                    tracing::error!("reload failed, going back to the previous config: {err}");
                    config = old;
                    continue;
                }
                None => return Err(err),
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
                    let _ = std::fs::remove_file(store::running_marker(&config));
                    return match finished {
                        Ok(result) => result,
                        Err(err) => Err(SyncError::Internal(format!("the delivery engine failed: {err}"))),
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
                return Err(SyncError::Internal(format!(
                    "the delivery engine failed: {err}"
                )))
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
                // A clean stop: the next start need not check the store.
                let _ = std::fs::remove_file(store::running_marker(&config));
                tracing::info!("stopped");
                return Ok(());
            }
            Some(new) => {
                if new.storage.backend != config.storage.backend {
                    tracing::info!(
                        "reload: storage backend {} → {}",
                        config.storage.backend.as_str(),
                        new.storage.backend.as_str()
                    );
                }
                // The old engine stopped cleanly: the restart is not a crash recovery.
                let _ = std::fs::remove_file(store::running_marker(&config));
                previous = Some(std::mem::replace(&mut config, new));
                reloaded = true;
            }
        }
    }
}
