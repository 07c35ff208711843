//! The server model: HTTP/1.1 on 127.0.0.1:0, on its own thread and runtime, stopped
//! when dropped. It stores rows `(id, endpoint, body)`: `POST <endpoint>` creates one
//! and answers `201 {"id": n}`, `PUT <endpoint>/<id>` replaces one (404 if none). It
//! keeps Idempotency-Keys as draft-ietf-httpapi-idempotency-key-header says: the same
//! key with the same request (method, path, body) gets the first answer again; with
//! another request, 422 (naming the stored id, usually); while the first request with
//! the key is still being processed, 409. A key is kept once a request with it was
//! processed (stored), never before: an error answered before processing (a 503 from
//! a proxy, say) leaves the key unused. Keys are opaque strings.
//!
//! Per request the scenario's seed draws a fault, at the scenario's rate, from the
//! scenario's kinds. Every request is logged with what the model did; a `GET`, or a
//! request at a redirect target (the path with a trailing `/`), means the client
//! followed a redirect. A `GET` of any path answers `200 []`, as a list endpoint
//! would, so a client that follows a 301 for a POST sees a success.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_devkit::http::{self, read_request, Limits};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::rng::Rng;
use crate::scenario::{FaultConf, FaultKind};

/// The longest a hanging answer, or an idle connection, is held.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// The largest request head or body the model reads.
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// A row the server stored.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: u64,
    /// The collection's endpoint.
    pub endpoint: String,
    /// The request (its `seq`) that created the row.
    pub created_seq: u64,
    /// The body it was created with, and the body it holds now.
    pub created: Value,
    pub body: Value,
    /// Bodies it held, in order (the first is `created`).
    pub history: Vec<Value>,
}

/// One request as it arrived, and what the model did with it.
#[derive(Clone, Debug)]
pub struct Request {
    pub seq: u64,
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    /// The record version the body names (its signature field), if any.
    pub sig: Option<String>,
    pub outcome: String,
    /// A GET, or a request at a redirect target.
    pub followed_redirect: bool,
    /// The key was reused with another request (answered 422).
    pub key_reused: bool,
}

/// `kill -9` of ferry when the next POST or PUT arrives, armed by the driver. The
/// driver clears `pid` (under this lock) before it reaps the child, so the model
/// never signals a pid that may have been reused.
#[derive(Debug, Default)]
pub struct KillArm {
    pub pid: Option<i32>,
    pub store_first: bool,
    /// Set when the model fired it.
    pub fired: bool,
    /// When it fired (ms since the scenario's start).
    pub fired_ms: Option<u64>,
}

enum KeyState {
    InProgress,
    Done { status: u16, body: String },
}

struct KeyEntry {
    method: String,
    path: String,
    body: Value,
    state: KeyState,
    row: Option<u64>,
}

struct State {
    rng: Rng,
    faults: FaultConf,
    faults_on: bool,
    next_id: u64,
    seq: u64,
    rows: Vec<Row>,
    keys: HashMap<String, KeyEntry>,
    log: Vec<Request>,
    injected: BTreeMap<&'static str, u64>,
}

struct Shared {
    state: Mutex<State>,
    kill: Arc<Mutex<KillArm>>,
    started: Instant,
    /// Endpoint → the body field that carries the record version's signature.
    sig_fields: Vec<(String, &'static str)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct ServerModel {
    pub url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server holds and saw, copied out for the check.
pub struct Snapshot {
    pub rows: Vec<Row>,
    pub log: Vec<Request>,
    pub injected: BTreeMap<&'static str, u64>,
    pub seq: u64,
}

impl ServerModel {
    pub fn start(
        faults: FaultConf,
        sig_fields: Vec<(String, &'static str)>,
        kill: Arc<Mutex<KillArm>>,
        started: Instant,
    ) -> std::io::Result<ServerModel> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: Rng::new(faults.seed),
                faults,
                faults_on: true,
                next_id: 1,
                seq: 0,
                rows: Vec::new(),
                keys: HashMap::new(),
                log: Vec::new(),
                injected: BTreeMap::new(),
            }),
            kill,
            started,
            sig_fields,
        });
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("server-model".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = TcpListener::from_std(listener) {
                        serve(listener, thread_shared, stop_rx).await;
                    }
                });
            })?;
        Ok(ServerModel {
            url,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Faults off (the drain) or on.
    pub fn set_faults(&self, on: bool) {
        self.shared.state().faults_on = on;
    }

    /// The number of the last request that arrived.
    pub fn seq(&self) -> u64 {
        self.shared.state().seq
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.shared.state();
        Snapshot {
            rows: state.rows.clone(),
            log: state.log.clone(),
            injected: state.injected.clone(),
            seq: state.seq,
        }
    }

    /// When the last request arrived (ms since the scenario started), if any did.
    pub fn last_request_ms(&self) -> Option<u64> {
        self.shared.state().log.last().map(|r| r.at_ms)
    }
}

impl Drop for ServerModel {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                tokio::spawn(connection(socket, Arc::clone(&shared), stop.clone()));
            }
        }
    }
}

/// What the model takes of a request.
const LIMITS: Limits = Limits {
    head: MAX_REQUEST,
    body: MAX_REQUEST,
    wait: Some(HOLD_LIMIT),
};

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn respond(socket: &mut TcpStream, status: u16, body: &str, extra: &str) -> bool {
    let text = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        reason(status),
        body.len()
    );
    socket.write_all(text.as_bytes()).await.is_ok()
}

/// What to do with the connection after a request.
enum Plan {
    Answer {
        status: u16,
        body: String,
        extra: String,
    },
    /// Close without answering.
    Drop,
    /// Answer nothing until the client gives up.
    Hang,
    /// Process after `delay` (the key is in progress meanwhile), then answer.
    Slow { delay: Duration, job: Job },
}

/// A request whose processing was put off (the slow fault).
struct Job {
    seq: u64,
    method: String,
    endpoint: String,
    target: Option<u64>,
    key: Option<String>,
    body: Value,
}

async fn connection(mut socket: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    let mut buffer = Vec::new();
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return,
            r = read_request(&mut socket, &mut buffer, LIMITS) => r,
        };
        let Some(request) = request else { return };
        let plan = decide(&shared, request);
        let plan = match plan {
            Plan::Slow { delay, job } => {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                finish_slow(&shared, job)
            }
            other => other,
        };
        match plan {
            Plan::Answer {
                status,
                body,
                extra,
            } => {
                if !respond(&mut socket, status, &body, &extra).await {
                    return;
                }
            }
            Plan::Drop | Plan::Slow { .. } => return,
            Plan::Hang => {
                // Until the client closes its end (it gave up), or the limit.
                let mut sink = [0u8; 4096];
                let until = tokio::time::Instant::now() + HOLD_LIMIT;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep_until(until) => return,
                        read = socket.read(&mut sink) => match read {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        },
                    }
                }
            }
        }
    }
}

fn answer(status: u16, body: impl Into<String>) -> Plan {
    Plan::Answer {
        status,
        body: body.into(),
        extra: String::new(),
    }
}

/// Decides what happens to one request, and does it (stores, logs) when it is done at
/// once.
fn decide(shared: &Shared, request: http::Request) -> Plan {
    let mut state = shared.state();
    state.seq += 1;
    let seq = state.seq;
    let at_ms = shared.started.elapsed().as_millis() as u64;
    let key = request.headers.get("idempotency-key").cloned();
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let mut log = Request {
        seq,
        at_ms,
        method: request.method.clone(),
        path: request.path.clone(),
        key: key.clone(),
        sig: None,
        outcome: String::new(),
        followed_redirect: false,
        key_reused: false,
    };
    if request.method != "POST" && request.method != "PUT" {
        log.followed_redirect = true;
        log.outcome = "200 [] (a list, as a GET of a collection answers)".into();
        state.log.push(log);
        return answer(200, "[]");
    }
    let mut path = request.path.clone();
    if path.len() > 1 && path.ends_with('/') {
        // The target of the model's own redirects: a client that followed one.
        log.followed_redirect = true;
        path.pop();
    }
    // A batch (docs/PROTOCOL.md §3) at `<endpoint>/batch`.
    let batch = request.method == "POST"
        && path
            .strip_suffix("/batch")
            .is_some_and(|endpoint| shared.sig_fields.iter().any(|(e, _)| e == endpoint));
    // Which collection, and for PUT which row.
    let found = shared.sig_fields.iter().find_map(|(endpoint, field)| {
        if request.method == "POST"
            && (path == *endpoint || (batch && path == format!("{endpoint}/batch")))
        {
            Some((endpoint.clone(), *field, None))
        } else {
            path.strip_prefix(endpoint.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|_| request.method == "PUT")
                .map(|id| {
                    (
                        endpoint.clone(),
                        *field,
                        Some(id.parse::<u64>().unwrap_or(0)),
                    )
                })
        }
    });
    let Some((endpoint, sig_field, target)) = found else {
        log.outcome = "404 (no such endpoint)".into();
        state.log.push(log);
        return answer(404, "{\"error\": \"no such endpoint\"}");
    };
    log.sig = body
        .get(sig_field)
        .and_then(Value::as_str)
        .map(str::to_string);

    // The driver's kill -9, when armed, takes the place of a fault.
    let (kill_pid, kill_after_store) = {
        let mut arm = shared.kill.lock().unwrap_or_else(|p| p.into_inner());
        match arm.pid.take() {
            Some(pid) => {
                arm.fired = true;
                arm.fired_ms = Some(at_ms);
                (Some(pid), arm.store_first)
            }
            None => (None, false),
        }
    };
    if let Some(pid) = kill_pid {
        if !kill_after_store {
            // SAFETY: the driver's unreaped child (see KillArm).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            log.outcome =
                "ferry killed (-9) before the server stored it; connection dropped".into();
            state.log.push(log);
            return Plan::Drop;
        }
    }

    let fault = if kill_pid.is_none() && state.faults_on && state.faults.rate > 0.0 {
        let rate = state.faults.rate;
        if state.rng.chance(rate) {
            let kinds = state.faults.kinds.clone();
            Some(state.rng.pick(&kinds))
        } else {
            None
        }
    } else {
        None
    };
    if let Some(kind) = fault {
        *state.injected.entry(kind.name()).or_default() += 1;
        let early = match kind {
            FaultKind::Hang => Some((
                Plan::Hang,
                "hang (no answer until the client gives up)".to_string(),
            )),
            FaultKind::Status500 | FaultKind::Status503 => {
                let status = if kind == FaultKind::Status500 {
                    500
                } else {
                    503
                };
                Some((
                    answer(status, format!("{{\"error\": \"injected {status}\"}}")),
                    format!("{status} (injected, nothing stored)"),
                ))
            }
            FaultKind::Status429 => {
                let after = state.rng.below(2);
                Some((
                    Plan::Answer {
                        status: 429,
                        body: "{\"error\": \"slow down\"}".into(),
                        extra: format!("retry-after: {after}\r\n"),
                    },
                    format!("429, Retry-After: {after}"),
                ))
            }
            FaultKind::Status409 => Some((
                answer(409, "{\"error\": \"conflict (injected)\"}"),
                "409 (injected, nothing stored)".to_string(),
            )),
            FaultKind::Status400 => Some((
                answer(400, "{\"error\": \"bad request (injected)\"}"),
                "400 (injected)".to_string(),
            )),
            FaultKind::Status413 => Some((
                answer(413, "{\"error\": \"too large (injected)\"}"),
                "413 (injected)".to_string(),
            )),
            _ => kind.redirect().map(|status| {
                (
                    Plan::Answer {
                        status,
                        body: String::new(),
                        extra: format!("location: {path}/\r\n"),
                    },
                    format!("{status} → {path}/"),
                )
            }),
        };
        if let Some((plan, outcome)) = early {
            log.outcome = outcome;
            state.log.push(log);
            return plan;
        }
    }

    if batch {
        // Each member is a request of its own under its own key; the batch's key is
        // not kept (ferry may send a member again in another batch).
        let (status, answer_body, stored) =
            store_batch(&mut state, &endpoint, sig_field, &body, at_ms, fault);
        let plan = send_back(&mut log, kill_pid, fault, status, answer_body, stored);
        state.log.push(log);
        return plan;
    }

    // Processing: the idempotency key first.
    if let Some(known) = known_key(&mut state, key.as_ref(), &request.method, &path, &body) {
        let plan = match known {
            KnownKey::Reused {
                named,
                answer: text,
            } => {
                log.key_reused = true;
                log.outcome = format!(
                    "422 (key reused with another request{})",
                    named.map_or(String::new(), |id| format!("; answer names id {id}"))
                );
                answer(422, text)
            }
            KnownKey::InProgress => {
                log.outcome = "409 (a request with this key is still being processed)".into();
                answer(409, IN_PROGRESS)
            }
            KnownKey::Replay { status, body } => {
                log.outcome = format!("{status} replayed ({body})");
                Plan::Answer {
                    status,
                    body,
                    extra: "idempotent-replayed: true\r\n".into(),
                }
            }
        };
        // A fault on the way back still applies to a replay.
        let plan = match (plan, fault) {
            (Plan::Answer { status, .. }, Some(FaultKind::LostAnswer)) if status < 300 => {
                log.outcome.push_str(", answer lost");
                Plan::Drop
            }
            (plan, _) => plan,
        };
        state.log.push(log);
        return plan;
    }
    if fault == Some(FaultKind::Slow) {
        let delay = Duration::from_millis(state.rng.range(100, 900));
        if let Some(k) = &key {
            state.keys.insert(
                k.clone(),
                KeyEntry {
                    method: request.method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                    state: KeyState::InProgress,
                    row: None,
                },
            );
        }
        log.outcome = format!("slow: processing for {} ms", delay.as_millis());
        state.log.push(log);
        return Plan::Slow {
            delay,
            job: Job {
                seq,
                method: request.method,
                endpoint,
                target,
                key,
                body,
            },
        };
    }
    let (status, answer_body, row) = store(
        &mut state,
        seq,
        &request.method,
        &endpoint,
        target,
        body.clone(),
        fault == Some(FaultKind::NoId),
    );
    if let Some(k) = &key {
        state.keys.insert(
            k.clone(),
            KeyEntry {
                method: request.method.clone(),
                path,
                body,
                state: KeyState::Done {
                    status,
                    body: answer_body.clone(),
                },
                row,
            },
        );
    }
    let stored = row.map_or("nothing stored".to_string(), |id| format!("row {id}"));
    let plan = send_back(&mut log, kill_pid, fault, status, answer_body, stored);
    state.log.push(log);
    plan
}

/// The answer to a request that was processed, unless the fault drawn for it (or
/// the driver's kill) takes it away.
fn send_back(
    log: &mut Request,
    kill_pid: Option<i32>,
    fault: Option<FaultKind>,
    status: u16,
    answer_body: String,
    stored: String,
) -> Plan {
    if let Some(pid) = kill_pid {
        // SAFETY: the driver's unreaped child (see KillArm).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        log.outcome = format!("{status} ({stored}), then ferry killed (-9) before the answer");
        return Plan::Drop;
    }
    match fault {
        Some(FaultKind::LostAnswer) => {
            log.outcome = format!("{status} ({stored}), answer lost (connection dropped)");
            Plan::Drop
        }
        Some(FaultKind::StoreThen500) => {
            log.outcome = format!("{stored}, then 500");
            answer(500, "{\"error\": \"internal error after commit\"}")
        }
        _ => {
            log.outcome = format!("{status} {answer_body} ({stored})");
            answer(status, answer_body)
        }
    }
}

/// A batch's members, each as the single-record API would take it (its own key,
/// replayed, refused with 422 when used with another request, or stored). Each is
/// logged as a request of its own. The answer lists per-member results, or — the
/// no-id fault — is a bare 2xx, which accepts every member without ids.
fn store_batch(
    state: &mut State,
    endpoint: &str,
    sig_field: &str,
    body: &Value,
    at_ms: u64,
    fault: Option<FaultKind>,
) -> (u16, String, String) {
    let members = body
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let no_ids = fault == Some(FaultKind::NoId);
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for member in &members {
        state.seq += 1;
        let seq = state.seq;
        let key = member
            .get("idempotency_key")
            .and_then(Value::as_str)
            .map(str::to_string);
        let record = member.get("record").cloned().unwrap_or(Value::Null);
        let target = (member.get("op").and_then(Value::as_str) == Some("update")).then(|| {
            member
                .get("remote_id")
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                .unwrap_or(0)
        });
        let (method, path) = match target {
            Some(id) => ("PUT", format!("{endpoint}/{id}")),
            None => ("POST", endpoint.to_string()),
        };
        let mut log = Request {
            seq,
            at_ms,
            method: method.to_string(),
            path: path.clone(),
            key: key.clone(),
            sig: record
                .get(sig_field)
                .and_then(Value::as_str)
                .map(str::to_string),
            outcome: String::new(),
            followed_redirect: false,
            key_reused: false,
        };
        let (status, answer_body) = match known_key(state, key.as_ref(), method, &path, &record) {
            Some(KnownKey::Reused { answer, .. }) => {
                log.key_reused = true;
                (422, answer)
            }
            Some(KnownKey::InProgress) => (409, IN_PROGRESS.to_string()),
            Some(KnownKey::Replay { status, body }) => (status, body),
            None => {
                let (status, answer_body, row) =
                    store(state, seq, method, endpoint, target, record.clone(), no_ids);
                rows.extend(row);
                if let Some(k) = &key {
                    state.keys.insert(
                        k.clone(),
                        KeyEntry {
                            method: method.to_string(),
                            path,
                            body: record,
                            state: KeyState::Done {
                                status,
                                body: answer_body.clone(),
                            },
                            row,
                        },
                    );
                }
                (status, answer_body)
            }
        };
        log.outcome = format!("{status} {answer_body} (a batch member)");
        state.log.push(log);
        let mut result = serde_json::from_str::<Value>(&answer_body)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        result["idempotency_key"] = json!(key);
        result["status"] = json!(status);
        results.push(result);
    }
    let stored = format!("batch of {}, rows {rows:?}", members.len());
    if no_ids {
        return (200, "{}".to_string(), stored);
    }
    (200, json!({ "results": results }).to_string(), stored)
}

/// The answer to a request under a key in use.
const IN_PROGRESS: &str =
    "{\"error\": \"a request with this idempotency key is still being processed\"}";

/// What an Idempotency-Key already used says of a request with it (the IETF draft).
enum KnownKey {
    /// The same request again: its first answer.
    Replay { status: u16, body: String },
    /// The same request while the first is still being processed: 409.
    InProgress,
    /// Another request under the key: 422, naming the row the key made when the
    /// scenario draws so (`named`).
    Reused { named: Option<u64>, answer: String },
}

/// How a request under `key` is answered when the key was seen before (`None`: a
/// new key, or none).
fn known_key(
    state: &mut State,
    key: Option<&String>,
    method: &str,
    path: &str,
    body: &Value,
) -> Option<KnownKey> {
    let entry = state.keys.get(key?)?;
    let same = entry.method == method && entry.path == path && entry.body == *body;
    let known = match (&entry.state, same) {
        (_, false) => {
            let row = entry.row;
            let id_in_422 = state.faults.id_in_422;
            let named = row.filter(|_| state.rng.chance(id_in_422));
            let mut error = json!({
                "error": "idempotency key reused",
                "detail": "this Idempotency-Key was used for a different request",
            });
            if let Some(id) = named {
                error["id"] = json!(id);
            }
            KnownKey::Reused {
                named,
                answer: error.to_string(),
            }
        }
        (KeyState::InProgress, true) => KnownKey::InProgress,
        (KeyState::Done { status, body }, true) => KnownKey::Replay {
            status: *status,
            body: body.clone(),
        },
    };
    Some(known)
}

fn finish_slow(shared: &Shared, job: Job) -> Plan {
    let mut state = shared.state();
    let (status, answer_body, row) = store(
        &mut state,
        job.seq,
        &job.method,
        &job.endpoint,
        job.target,
        job.body,
        false,
    );
    if let Some(entry) = job.key.as_ref().and_then(|k| state.keys.get_mut(k)) {
        entry.state = KeyState::Done {
            status,
            body: answer_body.clone(),
        };
        entry.row = row;
    }
    if let Some(entry) = state.log.iter_mut().rev().find(|r| r.seq == job.seq) {
        entry
            .outcome
            .push_str(&format!(", then {status} {answer_body}"));
    }
    answer(status, answer_body)
}

/// Stores a POST (a new row) or a PUT (replaces the row); returns the answer and the
/// row.
fn store(
    state: &mut State,
    seq: u64,
    method: &str,
    endpoint: &str,
    target: Option<u64>,
    body: Value,
    no_id: bool,
) -> (u16, String, Option<u64>) {
    if method == "POST" {
        let id = state.next_id;
        state.next_id += 1;
        state.rows.push(Row {
            id,
            endpoint: endpoint.to_string(),
            created_seq: seq,
            created: body.clone(),
            body: body.clone(),
            history: vec![body],
        });
        let answer = if no_id {
            "{\"status\": \"created\"}".to_string()
        } else {
            json!({"id": id}).to_string()
        };
        return (201, answer, Some(id));
    }
    let id = target.unwrap_or(0);
    match state
        .rows
        .iter_mut()
        .find(|r| r.id == id && r.endpoint == endpoint)
    {
        Some(row) => {
            row.body = body.clone();
            row.history.push(body);
            let answer = if no_id {
                "{\"status\": \"updated\"}".to_string()
            } else {
                json!({"id": id}).to_string()
            };
            (200, answer, Some(id))
        }
        None => (404, format!("{{\"error\": \"no row {id}\"}}"), None),
    }
}
