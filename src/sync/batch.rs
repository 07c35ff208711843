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

use super::body;
use super::engine::{Engine, Lane, SHUTDOWN_GRACE};
use super::plan::{self, Action, Health, Outcome};
use super::transport::Request;
use super::{Beat, SyncError, Tally};
use crate::config::Collection;
use crate::store::{now_ms, Due, DueQuery, Millis, Tracking};

/// Consecutive failed requests (no answer, 5xx, 429) after which a batch stops
/// starting new ones and the server is treated as down: at least this many, and at
/// least `max_concurrent` (a down server fails every request in flight; a flaky one
/// rarely fails that many in a row).
const TRIP_AFTER: usize = 5;

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
                let transport = Arc::clone(&self.transport);
                let pointer = pointer.clone();
                tasks.spawn(async move {
                    let outcome = match prepared.take_request(&pointer) {
                        Some(request) => transport.send(request).await,
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
