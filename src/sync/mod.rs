//! Delivery (SPEC §5): loops that push every record to the server and record each
//! delivery in `sync_tracking`.
//!
//! A collection's loop reads a batch of due records from the store, sends them with at
//! most `max_concurrent` requests in flight, and writes all their outcomes in one
//! transaction. Nothing is written before a request: the idempotency key is derived
//! from the record and its version, so a request whose outcome was lost (a crash, a
//! dropped answer) is sent again with the same key and a careful server answers it
//! from memory. A server that stops answering pauses its collection, which then
//! probes with one request at a time, backing off, until it answers again.

mod body;
pub mod causes;
mod changes;
pub mod client;
pub mod plan;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Collection, Config, SyncMode};
use crate::store::{now_ms, Due, DueQuery, Millis, Store, StoreError, Tracking};
use changes::ChangeWatch;
use client::{Client, Request};
use plan::{Action, Health, Jitter, Outcome};

/// How long in-flight requests may finish after a stop is asked for (SPEC §5).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often continuous mode asks the store whether another process wrote to it,
/// where the store cannot be watched for file events.
pub const CHANGE_POLL: Duration = Duration::from_millis(500);
/// With file events, a look now and then all the same, for writes the kernel does
/// not report (a network file system, a folder replaced under the watch).
const WATCHED_POLL: Duration = Duration::from_secs(10);
/// The least time between two looks that file events cause.
const EVENT_GAP: Duration = Duration::from_millis(25);
/// A lane about to wait this long first gives memory back.
const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Returns the heap's free pages to the OS (glibc keeps them otherwise).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// After a file event that showed no change yet, look again after these waits.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];
/// Consecutive failed requests (no answer, 5xx, 429) after which a batch stops
/// starting new ones and the server is treated as down: at least this many, and at
/// least `max_concurrent` (a down server fails every request in flight; a flaky one
/// rarely fails that many in a row).
const TRIP_AFTER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Something the user must fix in the config (exit 78).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed its integrity check; ferry will not run on it.
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Internal(String),
}

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
    fn add(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.failed += other.failed;
        self.paused |= other.paused;
    }
}

struct Lane {
    collection: Collection,
    health: Health,
    next_full_scan: Millis,
    beat: Arc<Beat>,
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

pub struct Engine {
    config: Config,
    store: SharedStore,
    client: Arc<Client>,
    in_flight: Arc<Semaphore>,
    jitter: Mutex<Jitter>,
    beats: Vec<Arc<Beat>>,
    activity: Arc<Activity>,
}

/// One line of `ferry sync --dry-run`.
#[derive(Clone, Debug)]
pub struct Planned {
    pub collection: String,
    pub method: &'static str,
    pub path: String,
    pub key: String,
    pub idempotency_key: String,
}

impl Engine {
    pub fn new(config: Config, store: SharedStore) -> Result<Engine, SyncError> {
        let max = config.remote.max_concurrent as usize;
        let client = Client::new(&config.remote, max)?;
        Ok(Engine {
            store,
            client: Arc::new(client),
            in_flight: Arc::new(Semaphore::new(max)),
            jitter: Mutex::new(Jitter::from_clock()),
            beats: config
                .collections
                .iter()
                .map(|c| Arc::new(Beat::new(c.name.as_str())))
                .collect(),
            activity: Arc::new(Activity::default()),
            config,
        })
    }

    /// The delivery loops' signs of life.
    pub fn beats(&self) -> Vec<Arc<Beat>> {
        self.beats.clone()
    }

    /// How long a loop may be busy without progress before it counts as wedged: a
    /// request ends within `remote.timeout`, a store call within its busy timeout.
    pub fn stall_limit(&self) -> Duration {
        self.config.remote.timeout.get() + Duration::from_secs(5)
    }

    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }

    /// `412 synced · 3 pending · 1 failed · last push 10:42:01 UTC`.
    pub async fn status_line(&self) -> Result<String, SyncError> {
        let names: Vec<String> = self
            .config
            .collections
            .iter()
            .map(|c| c.name.as_str().to_string())
            .collect();
        let totals = self
            .store
            .call(move |s| {
                let mut total = crate::store::Counts::default();
                for name in &names {
                    let c = s.counts(name)?;
                    total.records += c.records;
                    total.success += c.success;
                    total.pending += c.pending;
                    total.failed += c.failed;
                }
                Ok(total)
            })
            .await?;
        let last = self.activity.last_push.load(Ordering::Relaxed);
        let last = if last == 0 {
            "no push yet".to_string()
        } else {
            format!("last push {} UTC", &crate::store::rfc3339(last)[11..19])
        };
        Ok(format!(
            "{} synced · {} pending · {} failed · {last}",
            totals.success, totals.pending, totals.failed
        ))
    }

    /// Records read per step. A collection with blobs reads only what it can have in
    /// flight (and as many again, ready): a batch of 250 camera clips would not fit
    /// in a small board's memory.
    fn batch_limit(&self, collection: &Collection) -> usize {
        let batch = self.config.sync.batch_size as usize;
        if collection.blob_fields.is_empty() {
            batch
        } else {
            batch.min(2 * self.config.remote.max_concurrent as usize)
        }
    }

    fn random(&self) -> f64 {
        self.jitter.lock().map_or(0.5, |mut j| j.uniform())
    }

    fn collections(&self, only: Option<&str>) -> Result<Vec<Collection>, SyncError> {
        match only {
            None => Ok(self.config.collections.clone()),
            Some(name) => self
                .config
                .collection(name)
                .cloned()
                .map(|c| vec![c])
                .ok_or_else(|| {
                    SyncError::Config(format!(
                        "collection {name:?} is not in the config (it has: {})",
                        self.config
                            .collections
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
        }
    }

    /// One pass: every record due now is tried once. Collections run side by side.
    pub async fn once(
        self: &Arc<Self>,
        only: Option<&str>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Tally, SyncError> {
        let mut tasks: JoinSet<Result<Tally, SyncError>> = JoinSet::new();
        for collection in self.collections(only)? {
            let engine = Arc::clone(self);
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let beat = Arc::new(Beat::new(collection.name.as_str()));
                let mut lane = Lane {
                    collection,
                    health: Health::Up,
                    next_full_scan: 0,
                    beat,
                };
                // A change held back for a moment (one update a second) is part of this
                // pass: wait for it, then drain again.
                let mut total = Tally::default();
                loop {
                    let (tally, deferred) = engine.drain(&mut lane, &shutdown, true).await?;
                    total.add(&tally);
                    let wait = deferred.map(|at| at - now_ms());
                    match wait {
                        Some(ms) if !tally.paused && ms <= plan::MIN_UPDATE_INTERVAL => {
                            let mut stop = shutdown.clone();
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(ms.max(0) as u64 + 5)) => {}
                                Ok(()) = stop.changed() => return Ok(total),
                            }
                        }
                        _ => return Ok(total),
                    }
                }
            });
        }
        let mut total = Tally::default();
        while let Some(done) = tasks.join_next().await {
            let tally =
                done.map_err(|e| SyncError::Internal(format!("collection task failed: {e}")))??;
            total.add(&tally);
        }
        Ok(total)
    }

    /// Whether anything is left to deliver (pending, failed, or never tried), now or later.
    pub async fn undelivered(&self, only: Option<&str>) -> Result<bool, SyncError> {
        for collection in self.collections(only)? {
            // Everything, as the pass that just ended saw it: its sweep too. A row of
            // a record that is gone is nothing left to deliver (it only keeps a key).
            let query = DueQuery {
                now: Millis::MAX,
                limit: self.config.sync.batch_size as usize,
                include_changed: collection.sends_changes(),
                full_scan: true,
                pace: false,
                peek: false,
            };
            let name = collection.name.as_str().to_string();
            let due = self.store.call(move |s| s.due(&name, &query)).await?;
            if due.iter().any(|d| d.record.is_some()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What a pass would send, without sending or recording anything.
    pub async fn dry_run(
        &self,
        only: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Planned>, SyncError> {
        let mut planned = Vec::new();
        let now = now_ms();
        for collection in self.collections(only)? {
            let query = DueQuery {
                now,
                limit,
                include_changed: collection.sends_changes(),
                full_scan: true,
                pace: false,
                peek: true,
            };
            let name = collection.name.as_str().to_string();
            let due = self.store.call(move |s| s.due(&name, &query)).await?;
            for d in due {
                // A change held back for a moment goes out within a second: listed.
                let action = plan::action(&d, &collection, now + plan::MIN_UPDATE_INTERVAL);
                let Some(request) =
                    plan::request_for(&d, &action, &collection, self.config.device_id())
                else {
                    continue;
                };
                planned.push(Planned {
                    collection: collection.name.as_str().to_string(),
                    method: request.method,
                    path: request.path,
                    key: d.key.to_string(),
                    idempotency_key: request.idempotency_key,
                });
            }
        }
        Ok(planned)
    }

    /// The daemon's delivery loops, until `shutdown` turns true. Continuous mode
    /// watches the store for other processes' writes; periodic mode passes every
    /// `sync.interval`; both wake for retries as they fall due.
    pub async fn run(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Result<(), SyncError> {
        let mode = self.config.sync.mode;
        if mode == SyncMode::Once {
            self.once(None, shutdown).await?;
            return Ok(());
        }
        let (changes_tx, changes_rx) = watch::channel(0u64);
        let mut tasks = JoinSet::new();
        if mode == SyncMode::Continuous {
            let store = self.store.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move { watch_for_changes(store, stop, changes_tx).await });
        }
        for collection in self.config.collections.clone() {
            let engine = Arc::clone(self);
            let shutdown = shutdown.clone();
            let changes = changes_rx.clone();
            tasks.spawn(async move { engine.lane_loop(collection, shutdown, changes).await });
        }
        drop(changes_rx);
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    result = Err(err);
                    break;
                }
                Err(err) => {
                    result = Err(SyncError::Internal(format!(
                        "a delivery task failed: {err}"
                    )));
                    break;
                }
            }
        }
        tasks.abort_all();
        result
    }

    async fn lane_loop(
        &self,
        collection: Collection,
        mut shutdown: watch::Receiver<bool>,
        mut changes: watch::Receiver<u64>,
    ) -> Result<(), SyncError> {
        let name = collection.name.as_str().to_string();
        let beat = self
            .beats
            .iter()
            .find(|b| b.collection == name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Beat::new(&name)));
        let mut lane = Lane {
            collection,
            health: Health::Up,
            next_full_scan: 0,
            beat,
        };
        // Debug builds only: lets the tests wedge a loop to show that a wedged loop
        // stops the watchdog pings. Release builds do not carry this.
        #[cfg(debug_assertions)]
        if std::env::var("FERRY_DEBUG_WEDGE").is_ok_and(|c| c == name) {
            lane.beat.step();
            std::future::pending::<()>().await;
        }
        let periodic = self.config.sync.mode == SyncMode::Periodic;
        let interval = self.config.sync.interval.get().as_millis() as Millis;
        let mut next_pass = now_ms();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let (tally, deferred) = match self.drain(&mut lane, &shutdown, false).await {
                Ok(result) => result,
                // A full disk or a locked database: say so, keep running, try again.
                Err(SyncError::Store(err)) => {
                    tracing::error!(collection = %name, "store error, retrying in 5 s: {err}");
                    (Tally::default(), Some(now_ms() + 5_000))
                }
                Err(err) => return Err(err),
            };
            // A pause is told once, when it starts ("the server is not answering").
            let quiet = Tally {
                paused: false,
                ..tally.clone()
            };
            if quiet != Tally::default() {
                tracing::info!(
                    collection = %name,
                    "{name}: {} delivered, {} to retry, {} failed{}",
                    tally.delivered,
                    tally.retrying,
                    tally.failed,
                    if tally.paused { " (server not answering: paused)" } else { "" }
                );
            }
            let now = now_ms();
            if periodic && next_pass <= now {
                next_pass = now + interval;
            }
            let query_name = name.clone();
            let retry_at = self
                .store
                .call(move |s| s.next_attempt_at(&query_name))
                .await
                .unwrap_or(None);
            let wake = plan::next_wake(
                lane.next_full_scan,
                retry_at,
                deferred,
                periodic.then_some(next_pass),
                lane.health,
            );
            // Never spin: wait at least a little, whatever the arithmetic says.
            let wait = Duration::from_millis(u64::try_from(wake - now).unwrap_or(0).max(50));
            if wait >= IDLE_RELEASE_AFTER {
                // A long wait ahead: hand back the caches and freed heap (figure 3).
                let _ = self
                    .store
                    .call(|s| {
                        s.release_memory();
                        release_freed_heap();
                        Ok(())
                    })
                    .await;
            }
            lane.beat.wait();
            tokio::select! {
                // A closed channel (Err) disables the branch rather than firing it.
                Ok(()) = shutdown.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = changes.changed(), if !periodic => {}
            }
            lane.beat.step();
        }
    }

    /// Runs batches for one collection until nothing is due, the server looks down,
    /// or a stop is asked for. Returns what happened and, if some records were held
    /// back because they changed too recently, when to look at them again.
    async fn drain(
        &self,
        lane: &mut Lane,
        shutdown: &watch::Receiver<bool>,
        single_pass: bool,
    ) -> Result<(Tally, Option<Millis>), SyncError> {
        let mut total = Tally::default();
        let name = lane.collection.name.as_str().to_string();
        let policy = plan::RetryPolicy {
            failed_every: self.config.sync.retry_failed_every.get(),
            max_delay: self.config.sync.max_retry_delay.get(),
        };
        loop {
            let now = now_ms();
            if *shutdown.borrow() {
                return Ok((total, None));
            }
            let probing = match lane.health {
                Health::Up => false,
                Health::Down { until, .. } if now < until => {
                    total.paused = true;
                    return Ok((total, None));
                }
                Health::Down { .. } => true,
            };
            let full_scan = now >= lane.next_full_scan;
            if full_scan {
                lane.next_full_scan =
                    now + self.config.sync.retry_failed_every.get().as_millis() as Millis;
            }
            let query = DueQuery {
                now,
                limit: if probing {
                    1
                } else {
                    self.batch_limit(&lane.collection)
                },
                include_changed: lane.collection.sends_changes(),
                full_scan,
                pace: !single_pass,
                peek: false,
            };
            let query_name = name.clone();
            let due = self.store.call(move |s| s.due(&query_name, &query)).await?;
            lane.beat.step();
            if due.is_empty() {
                return Ok((total, None));
            }
            let mut tally = Tally::default();
            let mut rows: Vec<Tracking> = Vec::new();
            let mut forget: Vec<crate::store::Key> = Vec::new();
            let mut sends: Vec<Prepared> = Vec::new();
            let mut deferred: Option<Millis> = None;
            let device_id = self.config.device_id();
            for d in due {
                match plan::action(&d, &lane.collection, now) {
                    Action::Abandon => match plan::abandoned(&d, now, policy) {
                        Some(row) => rows.push(row),
                        None => forget.push(d.key.clone()),
                    },
                    Action::Settle => rows.extend(plan::settled(&d, now)),
                    Action::Defer(at) => {
                        deferred = Some(deferred.map_or(at, |d: Millis| d.min(at)))
                    }
                    Action::Skip => {}
                    Action::Refuse(error) => {
                        tally.failed += 1;
                        tracing::warn!(collection = %name, local_id = %d.key, "{name} {}: {error}", d.key);
                        rows.push(plan::refused(&d, &name, &error, now, policy));
                    }
                    action @ (Action::Create | Action::Put(_)) => {
                        match Prepared::new(d, action, &lane.collection, device_id) {
                            Ok(prepared) => sends.push(prepared),
                            Err((d, attempt, outcome)) => {
                                tally.failed += 1;
                                rows.push(plan::after(
                                    &d,
                                    &lane.collection,
                                    &attempt,
                                    &outcome,
                                    now,
                                    policy,
                                    self.random(),
                                ));
                            }
                        }
                    }
                }
            }
            let forgot = !forget.is_empty();
            if forgot {
                let forget_name = name.clone();
                self.store
                    .call(move |s| s.delete_tracking(&forget_name, &forget))
                    .await?;
            }
            // Creates are claimed before any leaves: from here on, a crash, a reload
            // or a change of the record cannot make their retries use another key.
            let claims: Vec<Tracking> = sends
                .iter()
                .filter(|p| p.attempt.action == Action::Create)
                .map(|p| plan::claim(&p.due, &name, &p.attempt, now))
                .collect();
            if !claims.is_empty() {
                self.store.call(move |s| s.write_tracking(&claims)).await?;
                lane.beat.step();
            }
            let (batch, unsent) = self
                .send_batch(&lane.collection, sends, shutdown, &lane.beat)
                .await;
            // Creates that never left give their claim back: nothing can have been
            // stored, and a claim would pin a key for nothing.
            let mut unclaim: Vec<crate::store::Key> = Vec::new();
            for p in unsent {
                if p.attempt.action != Action::Create {
                    continue;
                }
                match &p.due.tracking {
                    Some(previous) => rows.push(previous.clone()),
                    None => unclaim.push(p.due.key.clone()),
                }
            }
            if !unclaim.is_empty() {
                let unclaim_name = name.clone();
                self.store
                    .call(move |s| s.delete_tracking(&unclaim_name, &unclaim))
                    .await?;
            }
            let mut unhealthy = 0usize;
            let mut retry_after: Option<Duration> = None;
            let now = now_ms();
            for (p, outcome) in &batch {
                let d = &p.due;
                match outcome {
                    Outcome::Delivered { .. } => tally.delivered += 1,
                    Outcome::Retry {
                        retry_after: after, ..
                    } => {
                        tally.retrying += 1;
                        unhealthy += 1;
                        retry_after = retry_after.max(*after);
                    }
                    Outcome::Failed { error, status, .. } => {
                        tally.failed += 1;
                        tracing::warn!(
                            collection = %name,
                            local_id = %d.key,
                            http_status = status.map(u32::from),
                            "{name} {}: {error}",
                            d.key
                        );
                    }
                }
                if let Outcome::Delivered {
                    status, remote_id, ..
                } = outcome
                {
                    tracing::debug!(
                        collection = %name,
                        local_id = %d.key,
                        remote_id = remote_id.as_ref().map(ToString::to_string),
                        http_status = u32::from(*status),
                        "{name} {}: delivered",
                        d.key
                    );
                } else {
                    tracing::debug!(collection = %name, local_id = %d.key, "{name} {}: {outcome:?}", d.key);
                }
                rows.push(plan::after(
                    d,
                    &lane.collection,
                    &p.attempt,
                    outcome,
                    now,
                    policy,
                    self.random(),
                ));
            }
            let wrote_rows = !rows.is_empty();
            if wrote_rows {
                self.store.call(move |s| s.write_tracking(&rows)).await?;
                lane.beat.step();
            }
            if tally.delivered > 0 {
                self.activity.last_push.store(now, Ordering::Relaxed);
            }
            if !batch.is_empty() {
                self.activity.generation.fetch_add(1, Ordering::Relaxed);
                self.activity.changed.notify_one();
            }
            let health = plan::health_after(
                lane.health,
                batch.len(),
                unhealthy,
                retry_after,
                now,
                self.random(),
            );
            match (lane.health, health) {
                (Health::Down { .. }, Health::Up) => {
                    tracing::info!(collection = %name, "{name}: the server answers again");
                }
                (Health::Up, Health::Down { .. }) => {
                    tracing::warn!(collection = %name, "{name}: the server is not answering; pausing, then probing");
                }
                _ => {}
            }
            if let Health::Down { .. } = health {
                if unhealthy > 0 && batch.len() == unhealthy {
                    tally.paused = true;
                }
            }
            lane.health = health;
            // Progress: something was sent, or a tracking row changed (abandoned,
            // settled, refused, forgotten) so that what was handed out is not handed
            // out again — and more may be waiting behind it (a probe asks for one).
            let progressed = !batch.is_empty() || wrote_rows || forgot;
            total.add(&tally);
            if single_pass && (tally.paused || !progressed) {
                return Ok((total, deferred));
            }
            if !progressed {
                // Everything due was held back (changed too recently) or skipped.
                return Ok((total, deferred));
            }
        }
    }

    /// Sends a batch, first attempts in order; stops starting new requests when the
    /// server looks down or a stop is asked for. Returns the outcome of every request
    /// that finished, and the records whose request never started. A request still in
    /// flight when the stop's grace ran out is in neither: its outcome is unknown, and
    /// its record stays as it was (a create stays claimed).
    async fn send_batch(
        &self,
        collection: &Collection,
        sends: Vec<Prepared>,
        shutdown: &watch::Receiver<bool>,
        beat: &Beat,
    ) -> (Vec<(Prepared, Outcome)>, Vec<Prepared>) {
        let mut results = Vec::with_capacity(sends.len());
        let mut tasks: JoinSet<(Prepared, Outcome)> = JoinSet::new();
        let mut queue = sends.into_iter();
        let mut consecutive_unhealthy = 0usize;
        let mut stop_starting = false;
        let mut shutdown = shutdown.clone();
        let pointer = collection.remote_id.as_str().to_string();
        let trip_after = TRIP_AFTER.max(self.config.remote.max_concurrent as usize);
        loop {
            // Start as many as the global limit allows.
            while !stop_starting && !*shutdown.borrow() && queue.len() > 0 {
                let permit = match Arc::clone(&self.in_flight).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) if tasks.is_empty() => {
                        // Other collections hold every permit: wait for one and keep
                        // it (a permit given back and taken again by nobody would
                        // leave every lane waiting on the others).
                        tokio::select! {
                            permit = Arc::clone(&self.in_flight).acquire_owned() => match permit {
                                Ok(permit) => permit,
                                Err(_) => break,
                            },
                            Ok(()) = shutdown.changed() => break,
                        }
                    }
                    Err(_) => break,
                };
                let Some(mut prepared) = queue.next() else {
                    break;
                };
                let client = Arc::clone(&self.client);
                let pointer = pointer.clone();
                tasks.spawn(async move {
                    let outcome = match prepared.take_request(&pointer) {
                        Some(request) => client.send(request).await,
                        None => plan::Outcome::refused("the request was already sent"),
                    };
                    drop(permit);
                    (prepared, outcome)
                });
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                finished = tasks.join_next() => {
                    let Some(Ok((prepared, outcome))) = finished else { continue };
                    beat.step();
                    if outcome.is_unhealthy() {
                        consecutive_unhealthy += 1;
                        if consecutive_unhealthy >= trip_after {
                            stop_starting = true;
                        }
                    } else {
                        consecutive_unhealthy = 0;
                    }
                    results.push((prepared, outcome));
                }
                Ok(()) = shutdown.changed() => {
                    // Stop: let what is in flight finish, for a while.
                    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                    while let Ok(Some(finished)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
                        if let Ok(done) = finished {
                            results.push(done);
                        }
                    }
                    // Outcome unknown: left pending, sent again with the same key.
                    tasks.abort_all();
                    break;
                }
            }
        }
        (results, queue.collect())
    }
}

/// A request ready to go, with what is needed to read its outcome.
struct Prepared {
    due: Due,
    attempt: plan::Attempt,
    plan: plan::RequestPlan,
    body: Option<body::JsonBody>,
}

impl Prepared {
    /// The request for `action` on `due`; the record moves into its body. Or, when no
    /// body can be built, the row's inputs and the outcome that says why.
    #[allow(clippy::result_large_err)]
    fn new(
        mut due: Due,
        action: Action,
        collection: &Collection,
        device_id: &str,
    ) -> Result<Prepared, (Due, plan::Attempt, Outcome)> {
        let Some(request) = plan::request_for(&due, &action, collection, device_id) else {
            unreachable!("only creates and updates are prepared")
        };
        let is_create = action == Action::Create;
        // A claimed create whose body was kept is sent again exactly as it was.
        let kept = plan::pinned_claim(&due, collection)
            .filter(|_| is_create)
            .and_then(|claim| Some((claim.clone(), claim.body.clone()?)));
        if let Some((claim, bytes)) = kept {
            let attempt = plan::Attempt {
                action,
                idempotency_key: request.idempotency_key.clone(),
                version: claim.version,
                fingerprint: claim.fingerprint,
                body_hash: claim.body_hash,
                body: Some(bytes.clone()),
            };
            due.record = None;
            return Ok(Prepared {
                due,
                attempt,
                plan: request,
                body: Some(body::JsonBody::from_bytes(bytes)),
            });
        }
        let mut attempt = plan::Attempt {
            action,
            idempotency_key: request.idempotency_key.clone(),
            version: due.version.clone(),
            fingerprint: due.fingerprint,
            body_hash: 0,
            body: None,
        };
        let Some(record) = due.record.take() else {
            return Err((
                due,
                attempt,
                Outcome::refused("the record was deleted before it was delivered"),
            ));
        };
        match body::JsonBody::new(plan::payload(record, collection, device_id)) {
            Ok(body) => {
                attempt.body_hash = body.hash();
                if is_create && body.len() <= crate::store::CLAIM_BODY_MAX {
                    attempt.body = Some(body.to_vec());
                }
                Ok(Prepared {
                    due,
                    attempt,
                    plan: request,
                    body: Some(body),
                })
            }
            Err(e) => Err((
                due,
                attempt,
                Outcome::refused(format!("the payload cannot be built: {e}")),
            )),
        }
    }

    fn take_request(&mut self, remote_id_pointer: &str) -> Option<Request> {
        Some(Request {
            method: if self.plan.method == "PUT" {
                Method::PUT
            } else {
                Method::POST
            },
            path: self.plan.path.clone(),
            body: self.body.take()?,
            idempotency_key: self.plan.idempotency_key.clone(),
            remote_id_pointer: remote_id_pointer.to_string(),
        })
    }
}

/// Continuous mode: tells the collection loops (through `changes`) when another
/// process wrote to the store. It waits on file events where the kernel offers
/// them, so an idle daemon does not wake, and looks at the change token every
/// `CHANGE_POLL` where it does not.
async fn watch_for_changes(
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
