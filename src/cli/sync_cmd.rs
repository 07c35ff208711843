//! `ferry sync --once` and `ferry run`: delivery from the command line.

use std::sync::Arc;

use tokio::sync::watch;

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::daemon::RunLock;
use crate::sync::{Engine, SharedStore};

/// `--dry-run` lists at most this many records per collection.
const DRY_RUN_LIMIT: usize = 10_000;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    // One thread is plenty for a board with a few requests in flight; the store's
    // calls run on tokio's blocking threads.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))
}

/// The delivery engine on the active store, opened as every delivering command opens
/// it ([`crate::daemon::open_store`]); a dry run (no lock) only opens it.
fn engine(config: Config, lock: Option<&RunLock>) -> Result<Arc<Engine>, CliError> {
    let store = SharedStore::new(crate::daemon::open_store(&config, lock)?);
    Ok(Arc::new(Engine::new(config, store)?))
}

pub fn sync(config: Config, dry_run: bool, collection: Option<&str>) -> Result<Exit, CliError> {
    // Held to the end of the pass, migration included: no other ferry sends from this
    // store meanwhile. A dry run sends and records nothing, so it runs beside a daemon.
    let lock = if dry_run {
        None
    } else {
        Some(RunLock::acquire(
            &config,
            config.storage.backend,
            "sync --once",
        )?)
    };
    let runtime = runtime()?;
    let engine = engine(config, lock.as_ref())?;
    runtime.block_on(async {
        if dry_run {
            let planned = engine.dry_run(collection, DRY_RUN_LIMIT).await?;
            let mut out = Stdout::new();
            for p in &planned {
                if !out.line(format_args!(
                    "{} {} {} (key {}, Idempotency-Key {})",
                    p.collection, p.method, p.path, p.key, p.idempotency_key
                ))? {
                    return Ok(Exit::Done);
                }
            }
            out.line(format_args!(
                "{} record(s) would be sent; nothing was sent",
                planned.len()
            ))?;
            out.finish()?;
            return Ok(Exit::Done);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let signals = tokio::spawn(stop_on_signal(stop_tx));
        let tally = engine.once(collection, stop_rx).await?;
        signals.abort();
        let left = engine.undelivered(collection).await?;
        let mut out = Stdout::new();
        out.line(format_args!(
            "{} delivered, {} to retry, {} failed{}",
            tally.delivered,
            tally.retrying,
            tally.failed,
            if tally.paused {
                "; the server did not answer"
            } else {
                ""
            }
        ))?;
        out.finish()?;
        Ok(if left { Exit::Incomplete } else { Exit::Done })
    })
}

pub fn run(config: Config) -> Result<Exit, CliError> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let (signals_tx, signals_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(forward_signals(signals_tx));
        let path = config.source.clone();
        crate::daemon::run(&path, config, &crate::config::ProcessEnv, signals_rx).await?;
        Ok(Exit::Done)
    })
}

/// SIGTERM and SIGINT ask the daemon to stop; SIGHUP to reload its config.
async fn forward_signals(to: tokio::sync::mpsc::Sender<crate::daemon::Signal>) {
    use crate::daemon::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT/SIGHUP");
        return;
    };
    loop {
        let signal = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Signal::Stop }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); Signal::Stop }
            _ = hup.recv() => { tracing::info!("SIGHUP: reloading the config"); Signal::Reload }
        };
        if to.send(signal).await.is_err() {
            return;
        }
    }
}

/// Turns SIGTERM or SIGINT into a stop request.
async fn stop_on_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = stop.send(true);
}
