//! The delivery engine: one loop per collection (`lane_loop`), each draining its due
//! records in batches (`drain.rs`), woken by the store's changes (continuous mode),
//! a periodic pass, retries falling due, and a full look now and then. What to do
//! with each record, when a server is down and when to wake are decided in
//! [`super::plan`]; this is the thin loop around those decisions.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::changes::watch_for_changes;
use super::client::Client;
use super::plan::{self, Health, Jitter};
use super::transport::Transport;
use super::{Activity, Beat, SharedStore, SyncError, Tally};
use crate::config::{Collection, Config, SyncMode};
use crate::store::{now_ms, DueQuery, Millis};

/// How long in-flight requests may finish after a stop is asked for (SPEC §5).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
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

pub struct Engine {
    pub(super) config: Config,
    pub(super) store: SharedStore,
    pub(super) transport: Arc<dyn Transport>,
    /// Requests in flight, all collections together (`remote.max_concurrent`).
    pub(super) in_flight: Arc<Semaphore>,
    /// With `remote.concurrency = "adaptive"`: what sizes `in_flight` as answers come.
    pub(super) adaptive: Option<Arc<super::adaptive::Concurrency>>,
    jitter: Mutex<Jitter>,
    beats: Vec<Arc<Beat>>,
    pub(super) activity: Arc<Activity>,
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

/// One collection's delivery loop's state.
pub(super) struct Lane {
    pub(super) collection: Collection,
    pub(super) health: Health,
    pub(super) next_full_scan: Millis,
    pub(super) beat: Arc<Beat>,
}

impl Lane {
    fn new(collection: Collection, beat: Arc<Beat>) -> Lane {
        Lane {
            collection,
            health: Health::Up,
            next_full_scan: 0,
            beat,
        }
    }
}

impl Engine {
    /// The engine on `store`, sending through ferry's HTTP client for `config.remote`.
    pub fn new(config: Config, store: SharedStore) -> Result<Engine, SyncError> {
        let client = Client::new(&config.remote, config.remote.max_concurrent as usize)?;
        Ok(Engine::with_transport(config, store, Arc::new(client)))
    }

    /// The engine on `store`, sending through `transport`.
    pub fn with_transport(
        config: Config,
        store: SharedStore,
        transport: Arc<dyn Transport>,
    ) -> Engine {
        let max = config.remote.max_concurrent as usize;
        let adaptive = config.remote.concurrency == crate::config::Concurrency::Adaptive;
        let in_flight = Arc::new(Semaphore::new(if adaptive { 1 } else { max }));
        Engine {
            store,
            transport,
            adaptive: adaptive.then(|| {
                Arc::new(super::adaptive::Concurrency::new(
                    max,
                    Arc::clone(&in_flight),
                ))
            }),
            in_flight,
            jitter: Mutex::new(Jitter::from_clock()),
            beats: config
                .collections
                .iter()
                .map(|c| Arc::new(Beat::new(c.name.as_str())))
                .collect(),
            activity: Arc::new(Activity::default()),
            config,
        }
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
    pub(super) fn batch_limit(&self, collection: &Collection) -> usize {
        let batch = self.config.sync.batch_size as usize;
        if collection.blob_fields.is_empty() {
            batch
        } else {
            batch.min(2 * self.config.remote.max_concurrent as usize)
        }
    }

    pub(super) fn random(&self) -> f64 {
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
                let mut lane = Lane::new(collection, beat);
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
        let mut lane = Lane::new(collection, beat);
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
            let deferred = self.drain_and_tell(&mut lane, &shutdown).await?;
            let now = now_ms();
            if periodic && next_pass <= now {
                next_pass = now + interval;
            }
            let wait = self
                .wait_before_next(&lane, deferred, periodic.then_some(next_pass), now)
                .await;
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

    /// One drain of a lane, told in the log. A store error that may mend (a full
    /// disk, a locked database, a damaged file) is said and tried again later, the
    /// other collections running on; one that cannot ends the loop. Returns when
    /// to look again at changes held back.
    async fn drain_and_tell(
        &self,
        lane: &mut Lane,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Millis>, SyncError> {
        let name = lane.collection.name.as_str().to_string();
        let (tally, deferred) = match self.drain(lane, shutdown, false).await {
            Ok(result) => result,
            Err(err) => {
                let Some(wait) = err.retry_after() else {
                    return Err(err);
                };
                tracing::error!(
                    collection = %name,
                    "store error, trying again in {}: {err}",
                    crate::config::HumanDuration(wait)
                );
                return Ok(Some(now_ms() + wait.as_millis() as Millis));
            }
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
        Ok(deferred)
    }

    /// How long a lane sleeps before it looks again ([`plan::next_wake`]), never less
    /// than 50 ms whatever the arithmetic says. Before a long sleep it gives back the
    /// store's caches and the freed heap (`make bench` figure 3).
    async fn wait_before_next(
        &self,
        lane: &Lane,
        deferred: Option<Millis>,
        next_pass: Option<Millis>,
        now: Millis,
    ) -> Duration {
        let name = lane.collection.name.as_str().to_string();
        let retry_at = self
            .store
            .call(move |s| s.next_attempt_at(&name))
            .await
            .unwrap_or(None);
        let wake = plan::next_wake(
            lane.next_full_scan,
            retry_at,
            deferred,
            next_pass,
            lane.health,
        );
        let wait = Duration::from_millis(u64::try_from(wake - now).unwrap_or(0).max(50));
        if wait >= IDLE_RELEASE_AFTER {
            let _ = self
                .store
                .call(|s| {
                    s.release_memory();
                    release_freed_heap();
                    Ok(())
                })
                .await;
        }
        wait
    }
}
