//! A collection's work, as a pipeline: the next records are read from the store,
//! decided ([`plan::triage`]) and — creates — claimed while requests are in flight;
//! requests go out with at most `max_concurrent` in flight (all collections
//! together), one record or one batch each; outcomes are written in groups, each
//! group before the next read; the server's health is judged as answers come. Until
//! nothing is due, the server looks down, or a stop is asked for.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::batch;
use super::body;
use super::engine::{Engine, Lane, SHUTDOWN_GRACE};
use super::plan::{self, Action, Health, Outcome};
use super::transport::{FailureKind, Reply, Request, Transport};
use super::{SyncError, Tally};
use crate::config::{Collection, Compression};
use crate::store::{now_ms, Due, DueQuery, Key, Millis, Tracking};

/// Consecutive failed requests (no answer, 5xx, 429) after which a batch stops
/// starting new ones and the server is treated as down: at least this many, and at
/// least `max_concurrent` (a down server fails every request in flight; a flaky one
/// rarely fails that many in a row).
const TRIP_AFTER: usize = 5;
/// How much of a record's answer is read: enough for an id or an error message.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// What a batch member's JSON carries besides its body, its key and version: field
/// names and its record key (generously).
const MEMBER_ENVELOPE: usize = 200;
/// What a batch's JSON carries besides its members (generously).
const BATCH_ENVELOPE: usize = 512;

/// A drain's state: what is queued, in flight, finished but not yet written.
struct Flow {
    /// Units (a record, or a batch) claimed and ready to send, in order.
    queue: VecDeque<Vec<Prepared>>,
    tasks: JoinSet<Vec<(Prepared, Outcome)>>,
    /// Records queued, in flight, or finished and not yet written: the store would hand
    /// them out again, and they must not go twice at once.
    busy: HashSet<Key>,
    /// Outcomes not yet written.
    finished: Vec<(Prepared, Outcome)>,
    /// Rows to write with them (records that never left give their claim back).
    rows: Vec<Tracking>,
    tally: Tally,
    /// The earliest time a change held back (one update a second) may go.
    deferred: Option<Millis>,
    /// The store had nothing more to hand out.
    exhausted: bool,
    answers: Answers,
    consecutive_unhealthy: usize,
    /// The server looks down: no new request starts.
    stop_starting: bool,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            queue: VecDeque::new(),
            tasks: JoinSet::new(),
            busy: HashSet::new(),
            finished: Vec::new(),
            rows: Vec::new(),
            tally: Tally::default(),
            deferred: None,
            exhausted: false,
            answers: Answers::default(),
            consecutive_unhealthy: 0,
            stop_starting: false,
        }
    }
}

/// What answers since the last write say of the server.
#[derive(Default)]
struct Answers {
    finished: usize,
    /// Answers that show the server, not the record, is the problem.
    unhealthy: usize,
    retry_after: Option<Duration>,
}

impl Engine {
    /// Runs one collection's work until nothing is due, the server looks down, or a
    /// stop is asked for. Returns what happened and, if some records were held back
    /// because they changed too recently, when to look at them again.
    pub(super) async fn drain(
        &self,
        lane: &mut Lane,
        shutdown: &watch::Receiver<bool>,
        single_pass: bool,
    ) -> Result<(Tally, Option<Millis>), SyncError> {
        let mut flow = Flow::new();
        let mut shutdown = shutdown.clone();
        let result = self
            .run_flow(lane, &mut flow, &mut shutdown, single_pass)
            .await;
        // Whatever ended it, what finished is written and what never left gives its
        // claim back; what is still in flight keeps its claim (outcome unknown).
        let unsent: Vec<Prepared> = flow.queue.drain(..).flatten().collect();
        let name = lane.collection.name.as_str().to_string();
        let settle = self
            .give_back_claims(&name, unsent, &mut flow.rows)
            .await
            .and(self.flush(lane, &mut flow).await);
        flow.tasks.abort_all();
        result.and(settle)?;
        Ok((flow.tally, flow.deferred))
    }

    async fn run_flow(
        &self,
        lane: &mut Lane,
        flow: &mut Flow,
        shutdown: &mut watch::Receiver<bool>,
        single_pass: bool,
    ) -> Result<(), SyncError> {
        let low_water = self.config.remote.max_concurrent as usize;
        loop {
            if *shutdown.borrow() {
                return self.grace(flow).await;
            }
            if !flow.exhausted && !flow.stop_starting && flow.queue.len() < low_water {
                // Outcomes first: the next read must see them.
                self.flush(lane, flow).await?;
                match self.next_query(lane, now_ms(), single_pass, flow.busy.len()) {
                    Some(query) => self.refill(lane, flow, query).await?,
                    None => {
                        // Paused, the server looks down: nothing new until the probe.
                        flow.tally.paused = true;
                        flow.exhausted = true;
                    }
                }
                if single_pass && flow.tally.paused {
                    flow.exhausted = true;
                }
            }
            self.start(lane, flow, shutdown).await;
            if flow.queue.is_empty()
                && flow.tasks.len() < low_water
                && !flow.exhausted
                && !flow.stop_starting
                && !*shutdown.borrow()
            {
                // A connection would idle: read the next batch now, while these are
                // in flight (their keys are busy, so none is read twice), rather than
                // when one of them is answered.
                continue;
            }
            if flow.tasks.is_empty() {
                if flow.exhausted || flow.stop_starting {
                    // The last answers may reopen it (a probe answered).
                    self.flush(lane, flow).await?;
                    if flow.exhausted || flow.stop_starting {
                        return Ok(());
                    }
                }
                continue;
            }
            tokio::select! {
                finished = flow.tasks.join_next() => {
                    if let Some(Ok(done)) = finished {
                        lane.beat.step();
                        self.finished(flow, done);
                    }
                }
                Ok(()) = shutdown.changed() => {}
            }
        }
    }

    /// A stop: what is in flight may finish, for a while; what is still unanswered
    /// then keeps its claim and is sent again, with the same key, later.
    async fn grace(&self, flow: &mut Flow) -> Result<(), SyncError> {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while let Ok(Some(finished)) =
            tokio::time::timeout_at(deadline, flow.tasks.join_next()).await
        {
            if let Ok(done) = finished {
                flow.finished.extend(done);
            }
        }
        Ok(())
    }

    /// Starts as many queued units as permits allow.
    async fn start(&self, lane: &Lane, flow: &mut Flow, shutdown: &mut watch::Receiver<bool>) {
        while !flow.stop_starting && !*shutdown.borrow() && !flow.queue.is_empty() {
            let Some(permit) = self.permit(flow.tasks.is_empty(), shutdown).await else {
                break;
            };
            let Some(unit) = flow.queue.pop_front() else {
                break;
            };
            let sender = self.sender(&lane.collection);
            flow.tasks.spawn(async move {
                let done = sender.send(unit).await;
                drop(permit);
                done
            });
        }
    }

    /// A unit's outcomes: kept for the next write, counted, and — a run of answers that
    /// show the server down — no new request starts.
    fn finished(&self, flow: &mut Flow, done: Vec<(Prepared, Outcome)>) {
        let trip_after = TRIP_AFTER.max(self.config.remote.max_concurrent as usize);
        if !done.is_empty() && done.iter().all(|(_, o)| o.is_unhealthy()) {
            flow.consecutive_unhealthy += 1;
            if flow.consecutive_unhealthy >= trip_after {
                flow.stop_starting = true;
            }
        } else {
            flow.consecutive_unhealthy = 0;
        }
        flow.finished.extend(done);
    }

    /// What to ask the store for next: a batch (and as many more as are busy, which it
    /// would hand out again), or one record to probe a server that looked down; `None`
    /// while the collection waits out its pause. Once every `retry_failed_every`, a
    /// full look (the safety net for what the store's watermarks cannot see).
    fn next_query(
        &self,
        lane: &mut Lane,
        now: Millis,
        single_pass: bool,
        busy: usize,
    ) -> Option<DueQuery> {
        let probing = match lane.health {
            Health::Up => false,
            Health::Down { until, .. } if now < until => return None,
            Health::Down { .. } => true,
        };
        let full_scan = now >= lane.next_full_scan;
        if full_scan {
            lane.next_full_scan =
                now + self.config.sync.retry_failed_every.get().as_millis() as Millis;
        }
        Some(DueQuery {
            now,
            limit: if probing {
                1 + busy
            } else {
                self.batch_limit(&lane.collection) + busy
            },
            include_changed: lane.collection.sends_changes(),
            full_scan,
            pace: !single_pass,
            peek: false,
        })
    }

    /// Reads what is due and not busy, writes what [`plan::triage`] decides for it,
    /// claims the creates, and queues the requests. Marks the flow exhausted when
    /// nothing at all came of it.
    async fn refill(
        &self,
        lane: &mut Lane,
        flow: &mut Flow,
        query: DueQuery,
    ) -> Result<(), SyncError> {
        let name = lane.collection.name.as_str().to_string();
        let now = query.now;
        let probe = matches!(lane.health, Health::Down { .. });
        let due_name = name.clone();
        let mut due = self.store.call(move |s| s.due(&due_name, &query)).await?;
        lane.beat.step();
        due.retain(|d| !flow.busy.contains(&d.key));
        if probe {
            due.truncate(1);
        }
        if due.is_empty() {
            if probe {
                // Nothing to probe with: the next request, whenever it comes, judges
                // the server again. Staying down would wake the lane at once, forever.
                lane.health = Health::Up;
            }
            flow.exhausted = true;
            return Ok(());
        }
        let triage = plan::triage(due, &lane.collection, now, self.policy());
        flow.tally.failed += triage.refused;
        for row in triage
            .rows
            .iter()
            .filter(|r| r.status == crate::store::Status::Failed)
        {
            if let Some(error) = &row.error_message {
                tracing::warn!(collection = %name, local_id = %row.key, "{name} {}: {error}", row.key);
            }
        }
        if let Some(at) = triage.deferred {
            flow.deferred = Some(flow.deferred.map_or(at, |d| d.min(at)));
        }
        let wrote = !triage.rows.is_empty() || !triage.forget.is_empty();
        self.forget(&name, triage.forget).await?;
        let mut rows = triage.rows;
        let (sends, unbuildable) = self.prepare(triage.sends, &lane.collection);
        for (d, attempt, outcome) in unbuildable {
            flow.tally.failed += 1;
            rows.push(plan::after(
                &d,
                &lane.collection,
                &attempt,
                &outcome,
                now,
                self.policy(),
                self.random(),
            ));
        }
        if !rows.is_empty() {
            self.store.call(move |s| s.write_tracking(&rows)).await?;
        }
        if sends.is_empty() && !wrote {
            // Everything due was held back (changed too recently) or skipped.
            if probe {
                lane.health = Health::Up;
            }
            flow.exhausted = true;
            return Ok(());
        }
        self.claim(lane, &sends, now).await?;
        flow.busy.extend(sends.iter().map(|p| p.due.key.clone()));
        flow.queue.extend(self.units(&lane.collection, sends));
        if probe && !flow.queue.is_empty() {
            // A probe is one request: the rest waits for its answer ([`Self::flush`]
            // opens the flow again when it says the server is up). One that only
            // settled rows (a deleted record's) sent nothing: the next record probes.
            flow.exhausted = true;
        }
        Ok(())
    }

    /// Writes the outcomes finished since the last write (and the claims given back),
    /// in one write, then judges the server's health on them.
    async fn flush(&self, lane: &mut Lane, flow: &mut Flow) -> Result<(), SyncError> {
        if flow.finished.is_empty() && flow.rows.is_empty() {
            return Ok(());
        }
        let finished = std::mem::take(&mut flow.finished);
        let mut rows = std::mem::take(&mut flow.rows);
        let mut tally = Tally::default();
        let answers = self.read_outcomes(lane, &finished, &mut rows, &mut tally);
        for (p, _) in &finished {
            flow.busy.remove(&p.due.key);
        }
        if !rows.is_empty() {
            self.store.call(move |s| s.write_tracking(&rows)).await?;
            lane.beat.step();
        }
        self.note_activity(&tally, finished.len(), now_ms());
        flow.answers.finished += answers.finished;
        flow.answers.unhealthy += answers.unhealthy;
        flow.answers.retry_after = flow.answers.retry_after.max(answers.retry_after);
        let answers = std::mem::take(&mut flow.answers);
        let was_down = matches!(lane.health, Health::Down { .. });
        self.judge_health(lane, answers, &mut tally, now_ms());
        if matches!(lane.health, Health::Down { .. }) {
            // Down (or still down after a probe): nothing new starts until the pause ends.
            flow.stop_starting = true;
        } else {
            flow.stop_starting = false;
            flow.consecutive_unhealthy = 0;
            if was_down {
                // The probe was answered: the rest goes now. What was written during
                // the pause has no row to wake the lane, and its change notices were
                // spent while the lane was paused.
                flow.exhausted = false;
            }
        }
        flow.tally.add(&tally);
        Ok(())
    }

    fn policy(&self) -> plan::RetryPolicy {
        plan::RetryPolicy {
            failed_every: self.config.sync.retry_failed_every.get(),
            max_delay: self.config.sync.max_retry_delay.get(),
        }
    }

    async fn forget(&self, name: &str, keys: Vec<crate::store::Key>) -> Result<(), SyncError> {
        if keys.is_empty() {
            return Ok(());
        }
        let name = name.to_string();
        self.store
            .call(move |s| s.delete_tracking(&name, &keys))
            .await
    }

    /// The requests for what is to be sent; the records whose body cannot be built,
    /// with the outcome that says why.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        sends: Vec<(Due, Action)>,
        collection: &Collection,
    ) -> (Vec<Prepared>, Vec<(Due, plan::Attempt, Outcome)>) {
        let device_id = self.config.device_id();
        let mut ready = Vec::with_capacity(sends.len());
        let mut unbuildable = Vec::new();
        for (d, action) in sends {
            match Prepared::new(d, action, collection, device_id) {
                Ok(prepared) => ready.push(prepared),
                Err(refused) => unbuildable.push(refused),
            }
        }
        (ready, unbuildable)
    }

    /// Creates are claimed before any leaves: from here on, a crash, a reload or a
    /// change of the record cannot make their retries use another key.
    async fn claim(&self, lane: &Lane, sends: &[Prepared], now: Millis) -> Result<(), SyncError> {
        let name = lane.collection.name.as_str();
        let claims: Vec<Tracking> = sends
            .iter()
            .filter(|p| p.attempt.action == Action::Create)
            .map(|p| plan::claim(&p.due, name, &p.attempt, now))
            .collect();
        if !claims.is_empty() {
            self.store.call(move |s| s.write_tracking(&claims)).await?;
            lane.beat.step();
        }
        Ok(())
    }

    /// Creates that never left give their claim back: nothing can have been stored,
    /// and a claim would pin a key for nothing.
    async fn give_back_claims(
        &self,
        name: &str,
        unsent: Vec<Prepared>,
        rows: &mut Vec<Tracking>,
    ) -> Result<(), SyncError> {
        let mut unclaim = Vec::new();
        for p in unsent
            .into_iter()
            .filter(|p| p.attempt.action == Action::Create)
        {
            match p.due.tracking {
                Some(previous) => rows.push(previous),
                None => unclaim.push(p.due.key),
            }
        }
        self.forget(name, unclaim).await
    }

    /// What `STATUS=` shows follows what batches did.
    fn note_activity(&self, tally: &Tally, sent: usize, now: Millis) {
        if tally.delivered > 0 {
            self.activity.last_push.store(now, Ordering::Relaxed);
        }
        if sent > 0 {
            self.activity.generation.fetch_add(1, Ordering::Relaxed);
            self.activity.changed.notify_one();
        }
    }

    /// What is sent in one request each: a record, or a batch of records that fits the
    /// collection's limits.
    fn units(&self, collection: &Collection, sends: Vec<Prepared>) -> Vec<Vec<Prepared>> {
        if collection.batch_endpoint.is_none() {
            return sends.into_iter().map(|p| vec![p]).collect();
        }
        // What each member adds to the batch's JSON: its body and its envelope.
        let sizes: Vec<usize> = sends
            .iter()
            .map(|p| {
                p.len() + p.plan.idempotency_key.len() + p.attempt.version.len() + MEMBER_ENVELOPE
            })
            .collect();
        let ranges = batch::pack(
            &sizes,
            collection.batch_max_records as usize,
            (collection.batch_max_bytes.get() as usize).saturating_sub(BATCH_ENVELOPE),
        );
        let mut sends = sends.into_iter();
        ranges
            .into_iter()
            .map(|range| sends.by_ref().take(range.len()).collect())
            .collect()
    }

    fn sender(&self, collection: &Collection) -> Sender {
        Sender {
            transport: Arc::clone(&self.transport),
            collection: collection.clone(),
            device_id: self.config.device_id().to_string(),
            gzip: self.config.remote.compression == Compression::Gzip,
            adaptive: self.adaptive.clone(),
        }
    }

    /// The tracking rows of a batch's outcomes (into `rows`), the tally, and what
    /// they say of the server's health.
    fn read_outcomes(
        &self,
        lane: &Lane,
        batch: &[(Prepared, Outcome)],
        rows: &mut Vec<Tracking>,
        tally: &mut Tally,
    ) -> Answers {
        let name = lane.collection.name.as_str();
        let now = now_ms();
        let mut answers = Answers {
            finished: batch.len(),
            ..Answers::default()
        };
        for (p, outcome) in batch {
            let key = &p.due.key;
            match outcome {
                Outcome::Delivered {
                    status, remote_id, ..
                } => {
                    tally.delivered += 1;
                    tracing::debug!(
                        collection = %name,
                        local_id = %key,
                        remote_id = remote_id.as_ref().map(ToString::to_string),
                        http_status = u32::from(*status),
                        "{name} {key}: delivered"
                    );
                }
                Outcome::Retry { retry_after, .. } => {
                    tally.retrying += 1;
                    answers.unhealthy += 1;
                    answers.retry_after = answers.retry_after.max(*retry_after);
                    tracing::debug!(collection = %name, local_id = %key, "{name} {key}: {outcome:?}");
                }
                Outcome::Failed { error, status, .. } => {
                    tally.failed += 1;
                    tracing::warn!(
                        collection = %name,
                        local_id = %key,
                        http_status = status.map(u32::from),
                        "{name} {key}: {error}"
                    );
                }
            }
            rows.push(plan::after(
                &p.due,
                &lane.collection,
                &p.attempt,
                outcome,
                now,
                self.policy(),
                self.random(),
            ));
        }
        answers
    }

    /// The collection's health after a batch ([`plan::health_after`]), said in the
    /// log when it turns.
    fn judge_health(&self, lane: &mut Lane, answers: Answers, tally: &mut Tally, now: Millis) {
        let name = lane.collection.name.as_str();
        let health = plan::health_after(
            lane.health,
            answers.finished,
            answers.unhealthy,
            answers.retry_after,
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
        if matches!(health, Health::Down { .. })
            && answers.unhealthy > 0
            && answers.finished == answers.unhealthy
        {
            tally.paused = true;
        }
        lane.health = health;
    }
}

/// Sends one unit — a record, or a batch — from a task of its own.
struct Sender {
    transport: Arc<dyn Transport>,
    collection: Collection,
    device_id: String,
    gzip: bool,
    adaptive: Option<Arc<super::adaptive::Concurrency>>,
}

impl Sender {
    async fn send(&self, mut unit: Vec<Prepared>) -> Vec<(Prepared, Outcome)> {
        match (&self.collection.batch_endpoint, unit.len()) {
            (None, 1) => {
                let mut prepared = unit.remove(0);
                let outcome = self.one(&mut prepared).await;
                vec![(prepared, outcome)]
            }
            (Some(endpoint), _) => self.batch(endpoint.as_str(), unit).await,
            (None, _) => unreachable!("without batch_endpoint a unit is one record"),
        }
    }

    /// One record, one request.
    async fn one(&self, prepared: &mut Prepared) -> Outcome {
        let Some(body) = prepared.body.take() else {
            return Outcome::refused("the request was already sent");
        };
        let bytes = body.len() as u64;
        let (body, encoding) = match self.encode(body).await {
            Ok(encoded) => encoded,
            Err(outcome) => return outcome,
        };
        let request = Request {
            method: if prepared.plan.method == "PUT" {
                Method::PUT
            } else {
                Method::POST
            },
            path: prepared.plan.path.clone(),
            body,
            idempotency_key: prepared.plan.idempotency_key.clone(),
            encoding,
            answer_limit: MAX_ANSWER_BYTES,
        };
        let reply = self.timed(request).await;
        plan::outcome(&reply, self.collection.remote_id.as_str(), now_ms(), bytes)
    }

    /// One request; with adaptive concurrency, its round trip and whether the server
    /// pushed back (429, 503, no answer in time) size the permits.
    async fn timed(&self, request: Request) -> Reply {
        let started = std::time::Instant::now();
        let reply = self.transport.send(request).await;
        if let Some(adaptive) = &self.adaptive {
            let pushed_back = match &reply {
                Reply::Answer { status, .. } => matches!(status, 429 | 503),
                Reply::Failure { kind, .. } => *kind == FailureKind::Timeout,
            };
            adaptive.observe(started.elapsed(), pushed_back);
        }
        reply
    }

    /// A batch, one request; a `413` splits it in halves, sent one after the other,
    /// down to single records.
    async fn batch(&self, endpoint: &str, unit: Vec<Prepared>) -> Vec<(Prepared, Outcome)> {
        let mut done = Vec::with_capacity(unit.len());
        let mut pending = vec![unit];
        while let Some(mut unit) = pending.pop() {
            let records: Vec<Vec<u8>> = unit.iter().map(Prepared::bytes).collect();
            let members: Vec<batch::Member<'_>> = unit
                .iter()
                .zip(&records)
                .map(|(p, record)| p.member(record))
                .collect();
            let body = batch::body(&self.device_id, self.collection.name.as_str(), &members);
            let key = batch::key(&self.device_id, self.collection.name.as_str(), &members);
            let keys: Vec<&str> = members.iter().map(|m| m.idempotency_key).collect();
            let sizes: Vec<u64> = records.iter().map(|r| r.len() as u64).collect();
            let reply = match self.encode(body::JsonBody::from_bytes(body)).await {
                Ok((body, encoding)) => {
                    let request = Request {
                        method: Method::POST,
                        path: endpoint.to_string(),
                        body,
                        idempotency_key: key,
                        encoding,
                        answer_limit: batch::ANSWER_LIMIT,
                    };
                    Some(self.timed(request).await)
                }
                Err(outcome) => {
                    done.extend(unit.into_iter().map(|p| (p, outcome.clone())));
                    continue;
                }
            };
            let pointer = self.collection.remote_id.as_str();
            match reply.map(|r| batch::answer(&r, &keys, &sizes, pointer, now_ms())) {
                Some(batch::Answer::Split) if unit.len() > 1 => {
                    let second = unit.split_off(unit.len() / 2);
                    pending.push(second);
                    pending.push(unit);
                }
                Some(batch::Answer::Split) => {
                    let outcome =
                        plan::classify(413, b"", &Default::default(), pointer, now_ms(), sizes[0]);
                    done.extend(unit.into_iter().map(|p| (p, outcome.clone())));
                }
                Some(batch::Answer::Members(outcomes)) => {
                    done.extend(unit.into_iter().zip(outcomes))
                }
                None => {}
            }
        }
        done
    }

    /// The body as it goes on the wire: gzip-compressed (on a blocking thread: a big
    /// body takes a while on a small board) when `remote.compression` says so.
    async fn encode(
        &self,
        body: body::JsonBody,
    ) -> Result<(body::JsonBody, Option<&'static str>), Outcome> {
        if !self.gzip {
            return Ok((body, None));
        }
        let bytes = body.to_vec();
        let compressed = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 3),
                flate2::Compression::default(),
            );
            encoder.write_all(&bytes)?;
            encoder.finish()
        })
        .await;
        match compressed {
            Ok(Ok(gzipped)) => Ok((body::JsonBody::from_bytes(gzipped), Some("gzip"))),
            Ok(Err(e)) => Err(Outcome::refused(format!(
                "the body cannot be compressed: {e}"
            ))),
            Err(e) => Err(Outcome::refused(format!(
                "the body cannot be compressed: {e}"
            ))),
        }
    }
}

impl Engine {
    /// A permit to have one more request in flight (`remote.max_concurrent`, all
    /// collections together): one free now, or — when this batch has nothing in
    /// flight, so nothing of its own will free one — the next one given back, kept
    /// (a permit given back and taken again by nobody would leave every lane waiting
    /// on the others). `None`: none to be had now, or a stop.
    async fn permit(
        &self,
        idle: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if idle => tokio::select! {
                permit = Arc::clone(&self.in_flight).acquire_owned() => permit.ok(),
                Ok(()) = shutdown.changed() => None,
            },
            Err(_) => None,
        }
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

    /// The body's size in bytes (uncompressed).
    fn len(&self) -> usize {
        self.body.as_ref().map_or(0, body::JsonBody::len)
    }

    /// The body as one buffer (a batch member's `record`).
    fn bytes(&self) -> Vec<u8> {
        self.body
            .as_ref()
            .map(body::JsonBody::to_vec)
            .unwrap_or_default()
    }

    /// This record as a batch member.
    fn member<'a>(&'a self, record: &'a [u8]) -> batch::Member<'a> {
        batch::Member {
            key: &self.due.key,
            remote_id: match &self.attempt.action {
                Action::Put(remote_id) => Some(remote_id),
                _ => None,
            },
            idempotency_key: &self.plan.idempotency_key,
            version: &self.attempt.version,
            record,
        }
    }
}
