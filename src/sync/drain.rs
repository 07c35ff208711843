//! A collection's batches: read what is due, decide per record ([`plan::triage`]),
//! claim the creates, send with at most `max_concurrent` requests in flight (all
//! collections together), record every outcome in one write, and judge the server's
//! health — until nothing is due, the server looks down, or a stop is asked for.

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
use super::transport::{Request, Transport};
use super::{Beat, SyncError, Tally};
use crate::config::{Collection, Compression};
use crate::store::{now_ms, Due, DueQuery, Millis, Tracking};

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

/// What one batch did.
struct Step {
    tally: Tally,
    /// The earliest time a change held back (one update a second) may go.
    deferred: Option<Millis>,
    progressed: bool,
}

/// What a batch's answers say of the server.
#[derive(Default)]
struct Answers {
    finished: usize,
    /// Answers that show the server, not the record, is the problem.
    unhealthy: usize,
    retry_after: Option<Duration>,
}

impl Engine {
    /// Runs batches for one collection until nothing is due, the server looks down,
    /// or a stop is asked for. Returns what happened and, if some records were held
    /// back because they changed too recently, when to look at them again.
    pub(super) async fn drain(
        &self,
        lane: &mut Lane,
        shutdown: &watch::Receiver<bool>,
        single_pass: bool,
    ) -> Result<(Tally, Option<Millis>), SyncError> {
        let mut total = Tally::default();
        loop {
            if *shutdown.borrow() {
                return Ok((total, None));
            }
            let now = now_ms();
            let Some(query) = self.next_query(lane, now, single_pass) else {
                total.paused = true;
                return Ok((total, None));
            };
            let name = lane.collection.name.as_str().to_string();
            let due = self.store.call(move |s| s.due(&name, &query)).await?;
            lane.beat.step();
            if due.is_empty() {
                return Ok((total, None));
            }
            let step = self.step(lane, due, now, shutdown).await?;
            total.add(&step.tally);
            // Nothing changed (everything was held back or skipped), or the server
            // looks down during a one-shot pass: this drain is over.
            if !step.progressed || (single_pass && step.tally.paused) {
                return Ok((total, step.deferred));
            }
        }
    }

    /// What to ask the store for next: a batch, or one record to probe a server that
    /// looked down; `None` while the collection waits out its pause. Once every
    /// `retry_failed_every`, a full look (the safety net for what the store's
    /// watermarks cannot see).
    fn next_query(&self, lane: &mut Lane, now: Millis, single_pass: bool) -> Option<DueQuery> {
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
                1
            } else {
                self.batch_limit(&lane.collection)
            },
            include_changed: lane.collection.sends_changes(),
            full_scan,
            pace: !single_pass,
            peek: false,
        })
    }

    fn policy(&self) -> plan::RetryPolicy {
        plan::RetryPolicy {
            failed_every: self.config.sync.retry_failed_every.get(),
            max_delay: self.config.sync.max_retry_delay.get(),
        }
    }

    /// One batch: what [`plan::triage`] decided is written or sent; creates are
    /// claimed before they leave; every outcome is recorded in one write.
    async fn step(
        &self,
        lane: &mut Lane,
        due: Vec<Due>,
        now: Millis,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Step, SyncError> {
        let name = lane.collection.name.as_str().to_string();
        let triage = plan::triage(due, &lane.collection, now, self.policy());
        let mut tally = Tally {
            failed: triage.refused,
            ..Tally::default()
        };
        let mut rows = triage.rows;
        for row in rows
            .iter()
            .filter(|r| r.status == crate::store::Status::Failed)
        {
            if let Some(error) = &row.error_message {
                tracing::warn!(collection = %name, local_id = %row.key, "{name} {}: {error}", row.key);
            }
        }
        let forgot = !triage.forget.is_empty();
        self.forget(&name, triage.forget).await?;
        let (sends, unbuildable) = self.prepare(triage.sends, &lane.collection);
        for (d, attempt, outcome) in unbuildable {
            tally.failed += 1;
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
        self.claim(lane, &sends, now).await?;
        let (batch, unsent) = self
            .send_batch(&lane.collection, sends, shutdown, &lane.beat)
            .await;
        self.give_back_claims(&name, unsent, &mut rows).await?;
        let answers = self.read_outcomes(lane, &batch, &mut rows, &mut tally);
        let wrote = !rows.is_empty();
        if wrote {
            self.store.call(move |s| s.write_tracking(&rows)).await?;
            lane.beat.step();
        }
        self.note_activity(&tally, batch.len(), now);
        self.judge_health(lane, answers, &mut tally, now);
        Ok(Step {
            tally,
            deferred: triage.deferred,
            // Something was sent, or a tracking row changed (abandoned, settled,
            // refused, forgotten) so that what was handed out is not handed out again —
            // and more may be waiting behind it (a probe asks for one).
            progressed: !batch.is_empty() || wrote || forgot,
        })
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

    /// Sends what is prepared — one request a record, or batches (`batch_endpoint`) —
    /// first attempts in order, with at most `max_concurrent` requests in flight (all
    /// collections together); stops starting new ones when the server looks down or a
    /// stop is asked for. Returns the outcome of every record whose request finished,
    /// and the records whose request never started. A request still in flight when the
    /// stop's grace ran out is in neither: its outcome is unknown, and its records stay
    /// as they were (a create stays claimed).
    async fn send_batch(
        &self,
        collection: &Collection,
        sends: Vec<Prepared>,
        shutdown: &watch::Receiver<bool>,
        beat: &Beat,
    ) -> (Vec<(Prepared, Outcome)>, Vec<Prepared>) {
        let mut results = Vec::with_capacity(sends.len());
        let mut tasks: JoinSet<Vec<(Prepared, Outcome)>> = JoinSet::new();
        let mut queue = self.units(collection, sends).into_iter();
        let mut consecutive_unhealthy = 0usize;
        let mut stop_starting = false;
        let mut shutdown = shutdown.clone();
        let trip_after = TRIP_AFTER.max(self.config.remote.max_concurrent as usize);
        loop {
            // Start as many as the global limit allows.
            while !stop_starting && !*shutdown.borrow() && queue.len() > 0 {
                let Some(permit) = self.permit(tasks.is_empty(), &mut shutdown).await else {
                    break;
                };
                let Some(unit) = queue.next() else {
                    break;
                };
                let sender = self.sender(collection);
                tasks.spawn(async move {
                    let done = sender.send(unit).await;
                    drop(permit);
                    done
                });
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                finished = tasks.join_next() => {
                    let Some(Ok(done)) = finished else { continue };
                    beat.step();
                    if !done.is_empty() && done.iter().all(|(_, o)| o.is_unhealthy()) {
                        consecutive_unhealthy += 1;
                        if consecutive_unhealthy >= trip_after {
                            stop_starting = true;
                        }
                    } else {
                        consecutive_unhealthy = 0;
                    }
                    results.extend(done);
                }
                Ok(()) = shutdown.changed() => {
                    // Stop: let what is in flight finish, for a while.
                    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                    while let Ok(Some(finished)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
                        if let Ok(done) = finished {
                            results.extend(done);
                        }
                    }
                    // Outcome unknown: left pending, sent again with the same key.
                    tasks.abort_all();
                    break;
                }
            }
        }
        (results, queue.flatten().collect())
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
        }
    }
}

/// Sends one unit — a record, or a batch — from a task of its own.
struct Sender {
    transport: Arc<dyn Transport>,
    collection: Collection,
    device_id: String,
    gzip: bool,
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
        let reply = self.transport.send(request).await;
        plan::outcome(&reply, self.collection.remote_id.as_str(), now_ms(), bytes)
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
                    Some(self.transport.send(request).await)
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
