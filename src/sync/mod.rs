//! Delivery (SPEC §5): loops that push every record to the server and record each
//! delivery in `sync_tracking`.
//!
//! - [`plan`]: every decision, pure — what to do with a due record, the request for it,
//!   what an answer means, the tracking row after it, when a server is down, when to
//!   wake. Tested on its own.
//! - `engine.rs`: the engine and its per-collection loops; `drain.rs`: one
//!   collection's batches of work (claim, send, record); `batch.rs`: the batch contract
//!   (`docs/PROTOCOL.md` §3), pure; `changes.rs`: waiting for another process's writes
//!   (continuous mode).
//! - [`transport`]: what requests go through; [`client`] is ferry's (reqwest, rustls),
//!   with the bearer token and `ca_file`; `body.rs`: request bodies, blobs streamed.
//! - [`causes`]: why records were not delivered, grouped for `ferry diagnose`.
//!
//! A create is claimed in `sync_tracking` before its request leaves, and every retry
//! reuses its Idempotency-Key until a definite answer, so a crash, a lost answer or a
//! change of the record in between can never make the server create it twice.

mod adaptive;
mod batch;
mod body;
pub mod causes;
mod changes;
pub mod client;
mod drain;
mod engine;
mod error;
pub mod plan;
pub mod transport;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use changes::CHANGE_POLL;
pub use engine::{Engine, Planned, SHUTDOWN_GRACE};
pub use error::SyncError;

use crate::store::{now_ms, Millis, Store, StoreError};

/// The store, shared between the collection loops; calls run on blocking threads.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Box<dyn Store>>>);

impl SharedStore {
    pub fn new(store: Box<dyn Store>) -> Self {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, SyncError> {
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut store = inner.lock().map_err(|_| {
                SyncError::Internal("the store lock was poisoned by a panic".into())
            })?;
            f(store.as_mut()).map_err(SyncError::from)
        })
        .await
        .map_err(|e| SyncError::Internal(format!("store task failed: {e}")))?
    }
}

/// What one collection's batches did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
    /// The server looked down; the collection is paused.
    pub paused: bool,
}

impl Tally {
    pub(crate) fn add(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.failed += other.failed;
        self.paused |= other.paused;
    }
}

/// One delivery loop's sign of life, read by the watchdog supervisor.
#[derive(Debug)]
pub struct Beat {
    pub collection: String,
    /// When the loop last made progress (a store call returned, a request finished).
    last_step: AtomicI64,
    /// The loop is waiting for work: healthy however long it waits.
    waiting: AtomicBool,
}

impl Beat {
    fn new(collection: &str) -> Beat {
        Beat {
            collection: collection.to_string(),
            last_step: AtomicI64::new(now_ms()),
            waiting: AtomicBool::new(false),
        }
    }

    fn step(&self) {
        self.last_step.store(now_ms(), Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    fn wait(&self) {
        self.last_step.store(now_ms(), Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// Busy without progress for longer than `limit` ms: wedged.
    pub fn stalled(&self, now: Millis, limit: Millis) -> bool {
        !self.waiting.load(Ordering::Relaxed)
            && now - self.last_step.load(Ordering::Relaxed) > limit
    }
}

/// What the daemon shows in `STATUS=`: totals since start and the last delivery.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bumped whenever a batch did something, so the status is refreshed only then.
    pub generation: AtomicU64,
    /// Signalled with each bump of `generation`, so nothing polls for it.
    pub changed: tokio::sync::Notify,
    pub last_push: AtomicI64,
}
