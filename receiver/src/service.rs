//! Runs record writes: the rules of the collection, the keys and records in progress
//! in this process (`409`), update coalescing, the storage call, and the metrics.
//!
//! A write runs in a task of its own: a client that hangs up mid-request does not
//! cancel a transaction half way (the answer is kept with its key; the retry gets it).
//!
//! **Coalescing** (seed 004: progress written at 2–4 Hz per job). For a collection
//! with `max_update_rate = r`, a record is written at most once every 1/r s. A write
//! that comes sooner waits for the record's next slot; if a later state of the same
//! record arrives while it waits, the later one takes its place and the earlier one's
//! Idempotency-Key is stored with the later write, in its transaction, and answered
//! then. So the latest state is written within 1/r s, every answer is given after a
//! state at least as new is committed, and nothing answered is lost to a `kill -9`.
//! The slots are per process: N receivers behind a balancer allow N × r writes/s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::config::CollectionRules;
use crate::metrics::Metrics;
use crate::plan::{Answer, Effect, Member, Superseded};
use crate::rules;
use crate::store::{Backend, Storage, StoreError};
use crate::tokens::Tokens;
use crate::version;

/// Settings a reload (SIGHUP) may change.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub collections: Vec<CollectionRules>,
    pub tokens: Option<Tokens>,
}

pub struct Service {
    store: Backend,
    settings: RwLock<Arc<Settings>>,
    in_progress: Mutex<HashSet<String>>,
    slots: Mutex<HashMap<String, Slot>>,
    queues: Mutex<HashMap<String, Queue>>,
    /// Transactions a collection may have in flight at once.
    writers: usize,
    pub metrics: Metrics,
}

/// Most members in one group of writes.
const GROUP: usize = 512;

/// A collection's writes waiting for a writer: whatever queued while the writers were
/// busy goes in one transaction (group commit). An idle receiver writes a request at
/// once; a busy one writes many per commit.
#[derive(Default)]
struct Queue {
    items: Vec<Queued>,
    writers: usize,
}

struct Queued {
    member: Member,
    guard: Guard,
    /// The coalescing slot to free once written.
    slot: Option<String>,
    reply: oneshot::Sender<Answer>,
}

/// Removes its names from the in-progress set when dropped.
pub struct Guard {
    service: Arc<Service>,
    names: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut set = self
            .service
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in &self.names {
            set.remove(name);
        }
    }
}

/// A record's coalescing slot.
struct Slot {
    /// The earliest time of its next write.
    next: Instant,
    /// A write of it is in flight.
    busy: bool,
    pending: Option<Pending>,
    /// A flusher task is scheduled for `pending`.
    flusher: bool,
    idle: Arc<Notify>,
}

struct Pending {
    collection: String,
    member: Member,
    guard: Guard,
    reply: oneshot::Sender<Answer>,
    /// Earlier states it replaced: answered when it is written.
    replaced: Vec<(oneshot::Sender<Answer>, Guard)>,
}

enum Admission {
    Now(Box<Member>, Guard),
    Wait(oneshot::Receiver<Answer>),
}

impl Service {
    /// `writers`: transactions per collection at once (at most the pool's connections).
    pub fn new(store: Backend, settings: Settings, writers: usize) -> Arc<Service> {
        Arc::new(Service {
            store,
            settings: RwLock::new(Arc::new(settings)),
            in_progress: Mutex::new(HashSet::new()),
            slots: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            writers: writers.max(1),
            metrics: Metrics::default(),
        })
    }

    pub fn store(&self) -> &Backend {
        &self.store
    }

    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// New rules and tokens (SIGHUP); writes under way finish with the old ones.
    pub fn reload(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    fn rules(&self, collection: &str) -> Option<CollectionRules> {
        self.settings()
            .collections
            .iter()
            .find(|c| c.name == collection)
            .cloned()
    }

    /// Marks `names` in progress, or `None` if one of them already is.
    fn claim(self: &Arc<Self>, names: Vec<String>) -> Option<Guard> {
        let mut set = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        if names.iter().any(|n| set.contains(n)) {
            return None;
        }
        for name in &names {
            set.insert(name.clone());
        }
        drop(set);
        Some(Guard {
            service: Arc::clone(self),
            names,
        })
    }

    /// Writes `members` of `collection` and answers each, in order.
    pub async fn write(self: &Arc<Self>, collection: &str, members: Vec<Member>) -> Vec<Answer> {
        let rules = self.rules(collection);
        let interval = rules
            .as_ref()
            .and_then(|r| r.max_update_rate)
            .map(|rate| Duration::from_secs_f64(1.0 / rate));

        let mut answers: Vec<Option<Answer>> = vec![None; members.len()];
        let mut now: Vec<(usize, Member, Guard)> = Vec::new();
        let mut waiting: Vec<(usize, oneshot::Receiver<Answer>)> = Vec::new();
        for (i, member) in members.into_iter().enumerate() {
            if let Err(rejection) = rules::validate_text(&member.record_text, rules.as_ref()) {
                self.metrics.rejection(collection, "validation");
                answers[i] = Some(Answer {
                    status: 422,
                    body: serde_json::json!({ "error": rejection.text(), "field": rejection.field }),
                    replayed: false,
                    effect: Effect::Invalid,
                });
                continue;
            }
            // The key, and the record unless coalescing serializes its writes.
            let mut names = Vec::new();
            if let Some(key) = &member.idempotency_key {
                names.push(format!("k\0{collection}\0{key}"));
            }
            if interval.is_none() {
                if let Some((device, key)) = member.identity() {
                    names.push(format!("r\0{collection}\0{device}\0{key}"));
                }
            }
            let Some(guard) = self.claim(names) else {
                answers[i] = Some(Answer::in_progress());
                continue;
            };
            match (interval, member.identity().is_some()) {
                (Some(interval), true) => match self.admit(collection, member, guard, interval) {
                    Admission::Now(member, guard) => now.push((i, *member, guard)),
                    Admission::Wait(rx) => waiting.push((i, rx)),
                },
                _ => now.push((i, member, guard)),
            }
        }

        if !now.is_empty() {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queues.entry(collection.to_string()).or_default();
            for (i, member, guard) in now {
                let (reply, rx) = oneshot::channel();
                queue.items.push(Queued {
                    slot: interval.and(slot_name(collection, &member)),
                    member,
                    guard,
                    reply,
                });
                waiting.push((i, rx));
            }
            if queue.writers < self.writers {
                queue.writers += 1;
                let service = Arc::clone(self);
                let name = collection.to_string();
                // Its own task: see the module doc.
                tokio::spawn(async move { service.drain(name).await });
            }
        }
        for (i, rx) in waiting {
            answers[i] = Some(rx.await.unwrap_or_else(|_| {
                Answer::error(
                    503,
                    "the coalesced write was lost; try again",
                    Effect::Refused,
                )
            }));
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Answer::error(500, "no answer", Effect::Refused)))
            .collect()
    }

    /// A writer: takes what is queued for the collection, writes it in one call, answers
    /// each, and again until the queue is empty.
    async fn drain(self: Arc<Self>, collection: String) {
        loop {
            let group: Vec<Queued> = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(&collection) else {
                    return;
                };
                if queue.items.is_empty() {
                    queue.writers -= 1;
                    return;
                }
                let take = queue.items.len().min(GROUP);
                queue.items.drain(..take).collect()
            };
            let terminal = self.rules(&collection).and_then(|r| r.terminal);
            let mut members = Vec::with_capacity(group.len());
            let mut rest = Vec::with_capacity(group.len());
            for q in group {
                rest.push((q.member.device.clone(), q.slot, q.reply, q.guard));
                members.push(q.member);
            }
            let count = members.len();
            let result = self.store.apply(&collection, terminal, members).await;
            let answers = match result {
                Ok(answers) => answers,
                Err(err) => {
                    self.metrics.storage_error();
                    tracing::error!(
                        "collection {collection}: {count} record(s) not written: {err}"
                    );
                    vec![unavailable(&err); count]
                }
            };
            for ((device, slot, reply, guard), answer) in rest.into_iter().zip(answers) {
                if let Some(slot) = &slot {
                    self.slot_done(slot);
                }
                self.count(&collection, &device, &answer);
                let _ = reply.send(answer);
                drop(guard);
            }
        }
    }

    fn count(&self, collection: &str, device: &str, answer: &Answer) {
        self.metrics
            .record(collection, device, answer.effect.as_str());
        match answer.effect {
            Effect::Replayed => self.metrics.replay(collection),
            Effect::KeyReused => self.metrics.rejection(collection, "key_reused"),
            Effect::Refused => self.metrics.rejection(collection, "refused"),
            _ => {}
        }
    }

    /// A coalesced record's write now, or a wait for its next slot.
    fn admit(
        self: &Arc<Self>,
        collection: &str,
        mut member: Member,
        guard: Guard,
        interval: Duration,
    ) -> Admission {
        let Some(name) = slot_name(collection, &member) else {
            return Admission::Now(Box::new(member), guard);
        };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if slots.len() > 4096 {
            slots.retain(|_, s| s.busy || s.pending.is_some() || s.next > now);
        }
        let slot = slots.entry(name.clone()).or_insert_with(|| Slot {
            next: now,
            busy: false,
            pending: None,
            flusher: false,
            idle: Arc::new(Notify::new()),
        });
        if !slot.busy && slot.pending.is_none() && slot.next <= now {
            slot.busy = true;
            slot.next = now + interval;
            return Admission::Now(Box::new(member), guard);
        }
        let (tx, rx) = oneshot::channel();
        match slot.pending.take() {
            None => {
                slot.pending = Some(Pending {
                    collection: collection.to_string(),
                    member,
                    guard,
                    reply: tx,
                    replaced: Vec::new(),
                })
            }
            Some(mut pending) => {
                self.metrics.coalesced(collection);
                // The newer version stays pending; the other is answered with it.
                if version::not_older(&member.order, &pending.member.order) {
                    member.superseded.append(&mut pending.member.superseded);
                    if let Some(key) = pending.member.idempotency_key.take() {
                        member.superseded.push(Superseded {
                            idempotency_key: key,
                            fingerprint: pending.member.fingerprint.clone(),
                        });
                    }
                    let mut replaced = pending.replaced;
                    replaced.push((pending.reply, pending.guard));
                    slot.pending = Some(Pending {
                        collection: collection.to_string(),
                        member,
                        guard,
                        reply: tx,
                        replaced,
                    });
                } else {
                    if let Some(key) = member.idempotency_key.take() {
                        pending.member.superseded.push(Superseded {
                            idempotency_key: key,
                            fingerprint: member.fingerprint.clone(),
                        });
                    }
                    pending.replaced.push((tx, guard));
                    slot.pending = Some(pending);
                }
            }
        }
        if !slot.flusher {
            slot.flusher = true;
            let service = Arc::clone(self);
            tokio::spawn(async move { service.flush(name, interval).await });
        }
        Admission::Wait(rx)
    }

    fn slot_done(&self, name: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(name) {
            slot.busy = false;
            slot.idle.notify_one();
        }
    }

    /// Writes a record's pending state at its next slot.
    async fn flush(self: Arc<Self>, name: String, interval: Duration) {
        let pending = loop {
            let (next, busy, idle) = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                let Some(slot) = slots.get(&name) else { return };
                (slot.next, slot.busy, Arc::clone(&slot.idle))
            };
            if busy {
                idle.notified().await;
                continue;
            }
            let now = Instant::now();
            if now < next {
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                continue;
            }
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = slots.get_mut(&name) else {
                return;
            };
            if slot.busy {
                continue;
            }
            slot.flusher = false;
            let Some(pending) = slot.pending.take() else {
                return;
            };
            slot.busy = true;
            slot.next = now + interval;
            break pending;
        };
        let Pending {
            collection,
            member,
            guard,
            reply,
            replaced,
        } = pending;
        let rules = self.rules(&collection);
        let terminal = rules.and_then(|r| r.terminal);
        let device = member.device.clone();
        let answer = match self.store.apply(&collection, terminal, vec![member]).await {
            Ok(mut answers) => answers
                .pop()
                .unwrap_or_else(|| Answer::error(500, "no answer", Effect::Refused)),
            Err(err) => {
                self.metrics.storage_error();
                tracing::error!("collection {collection}: a coalesced write failed: {err}");
                unavailable(&err)
            }
        };
        self.slot_done(&name);
        self.count(&collection, &device, &answer);
        // The replaced states: answered as written when this one was (their keys are
        // stored with it); otherwise tried again later.
        for (tx, guard) in replaced {
            let theirs = match answer.id() {
                Some(id) if answer.keeps_key() => Answer::written(200, id, Effect::Updated),
                _ => Answer::in_progress(),
            };
            let _ = tx.send(theirs);
            drop(guard);
        }
        let _ = reply.send(answer);
        drop(guard);
    }
}

fn slot_name(collection: &str, member: &Member) -> Option<String> {
    member
        .identity()
        .map(|(device, key)| format!("{collection}\0{device}\0{key}"))
}

fn unavailable(err: &StoreError) -> Answer {
    Answer::error(
        503,
        format!(
            "the database is unavailable ({err}); try again later with the same Idempotency-Key"
        ),
        Effect::Refused,
    )
}
