//! `ferry-receiver run`: opens the database (migrating it), listens, serves until the
//! shutdown future resolves, then finishes the requests in flight. It takes its
//! shutdown and reloads as parameters; signals and exit codes are `main`'s.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::http::{router, AppState};
use crate::notify;
use crate::service::{Service, Settings};
use crate::store::{Backend, Storage, StoreError};
use crate::tokens::{Tokens, TokensError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot listen on {addr}: {source}; is another server on that port? (listen in the config)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the address file {path}: {source}")]
    AddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

impl RunError {
    /// The tokens file is configuration: 78, which the unit does not restart on.
    pub fn is_config(&self) -> bool {
        matches!(self, RunError::Tokens(_))
    }
}

/// The settings of a config: its rules and its tokens, read now.
pub fn settings(config: &Config) -> Result<Settings, TokensError> {
    let tokens = match &config.tokens_file {
        Some(path) => Some(Tokens::load(path)?),
        None => None,
    };
    Ok(Settings {
        collections: config.collections.clone(),
        tokens,
    })
}

#[derive(Default)]
pub struct Options {
    /// Written with `http://<address>` once listening (tests, `make fleet`).
    pub addr_file: Option<PathBuf>,
    /// Told the address once listening (in-process tests).
    pub bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

/// Runs the receiver until `shutdown` resolves. Each message on `reloads` carries a
/// config read again (SIGHUP): its rules and tokens replace the running ones.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: mpsc::Receiver<Config>,
) -> Result<(), RunError> {
    let initial = settings(&config)?;
    let store = Backend::open(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.listen,
        source,
    })?;
    if let Some(path) = &options.addr_file {
        std::fs::write(path, format!("http://{addr}\n")).map_err(|source| RunError::AddrFile {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(bound) = options.bound {
        let _ = bound.send(addr);
    }
    // SQLite has one connection: one writer, which takes everything queued meanwhile.
    let writers = match config.database {
        crate::config::Database::Sqlite(_) => 1,
        crate::config::Database::Postgres(_) => config.pool_size,
    };
    let service = Service::new(store, initial, writers);
    let app = router(AppState {
        service: Arc::clone(&service),
        max_body_bytes: config.max_body_bytes,
        max_batch_records: config.max_batch_records,
    });
    let status = format!(
        "listening on http://{addr}, records in {} ({})",
        config.database,
        config.database.kind()
    );
    tracing::info!("{status}");
    notify::ready(&status);

    let maintenance = {
        let service = Arc::clone(&service);
        let keep_days = config.keep_keys_days;
        tokio::spawn(async move { maintain(service, keep_days).await })
    };
    let reloader = {
        let service = Arc::clone(&service);
        let running = config.clone();
        tokio::spawn(async move {
            while let Some(new) = reloads.recv().await {
                notify::reloading();
                if new.listen != running.listen || new.database != running.database {
                    tracing::warn!(
                        "reload: listen and database changes take effect on restart (systemctl restart ferry-receiver)"
                    );
                }
                match settings(&new) {
                    Ok(settings) => {
                        let tokens = settings.tokens.as_ref().map_or(0, Tokens::len);
                        service.reload(settings);
                        tracing::info!("reloaded: collection rules and {tokens} token(s)");
                    }
                    Err(err) => tracing::error!("reload refused, the running settings stay: {err}"),
                }
                notify::ready(&status);
            }
        })
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            notify::stopping();
            tracing::info!("stopping: finishing the requests in flight");
        })
        .await;
    maintenance.abort();
    reloader.abort();
    served.map_err(RunError::Serve)
}

/// Every hour: forget old Idempotency-Keys. Every 20 s: the watchdog, and a status
/// line that says whether the database answers.
async fn maintain(service: Arc<Service>, keep_days: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        notify::watchdog();
        if n.is_multiple_of(180) {
            match service.store().prune_keys(keep_days).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!("forgot {count} Idempotency-Key(s) older than {keep_days} days")
                }
                Err(err) => tracing::warn!("forgetting old Idempotency-Keys: {err}"),
            }
        }
        if let Err(err) = service.store().health().await {
            notify::status(&format!("the database does not answer: {err}"));
            tracing::warn!("health: {err}");
        }
        n += 1;
    }
}
