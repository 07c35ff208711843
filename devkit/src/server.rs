//! An HTTP/1.1 server on loopback for the delivery tests: it stores what it receives
//! and can be told to fail in every way a real server or network does — 5xx, 429 with
//! Retry-After, 4xx, hanging past the client's timeout, closing the connection, and
//! committing a record and then dropping the connection before answering (a lost
//! acknowledgement), and in the hostile ways `make torture` adds (garbage, a redirect
//! loop, a 10 GB answer, one byte a second). It honours Idempotency-Key as a careful
//! server would, unless told not to. It runs on its own thread and stops when dropped.
//! The integration tests and `examples/torture` use it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::http::{read_request, Limits, Request};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status (and a short JSON error body), storing nothing.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    RetryAfter(u64),
    /// Read the request, then answer nothing for `Faults::hang_for`.
    Hang,
    /// Read the request, then close the connection.
    Close,
    /// Store the record, then close the connection without answering.
    LostAck,
    /// Answer bytes that are not HTTP, then close.
    Garbage,
    /// 302 to the same path: a redirect loop.
    Redirect,
    /// Store the record, then answer 201 with a 10 GB body, sent until the client
    /// gives up.
    HugeBody,
    /// Answer 201, one byte a second.
    Trickle,
    /// Answer this 3xx with `Location: <path>/` (a trailing-slash redirect, as
    /// Django's APPEND_SLASH or an nginx rule makes).
    Moved(u16),
    /// Store the record, then answer nothing until the client gives up (or is killed):
    /// a crash while the answer is awaited.
    StoreThenHang,
}

/// Every way of failing, for "a server failing in all the ways above".
pub fn every_fault() -> Vec<Fault> {
    vec![
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(408),
        Fault::RetryAfter(1),
        Fault::Hang,
        Fault::Close,
        Fault::LostAck,
    ]
}

pub struct Faults {
    /// Share of requests answered with a fault drawn from `kinds`.
    pub rate: f64,
    pub kinds: Vec<Fault>,
    pub honour_idempotency: bool,
    /// Accept connections and close them at once: a server that is down.
    pub down: bool,
    /// The record fields that name a record (the first one present), for `per_key`
    /// and for telling duplicates apart.
    pub key_fields: Vec<String>,
    /// A fixed answer for given records (by key as text).
    pub per_key: HashMap<String, Fault>,
    /// Bodies larger than this get 413.
    pub max_body: Option<usize>,
    pub hang_for: Duration,
    /// Added to every answer.
    pub delay: Duration,
    /// Keep Idempotency-Keys as the IETF draft says: the same key with another body is
    /// answered 422 (naming the id the key created), not replayed.
    pub strict_idempotency: bool,
    /// Answer creates without an id.
    pub no_remote_id: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate: 0.0,
            kinds: Vec::new(),
            honour_idempotency: true,
            down: false,
            key_fields: vec!["id".into()],
            per_key: HashMap::new(),
            max_body: None,
            hang_for: Duration::from_secs(3),
            delay: Duration::ZERO,
            strict_idempotency: false,
            no_remote_id: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stored {
    pub method: String,
    pub path: String,
    pub key: String,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: std::time::Instant,
    /// The id the server gave (for a POST) or was addressed by (a PUT).
    pub id: String,
}

#[derive(Default)]
struct State {
    faults: Faults,
    rng: u64,
    next_id: u64,
    requests: u64,
    refused_while_down: u64,
    stored: Vec<Stored>,
    /// By Idempotency-Key: the first answer, and the body it was for.
    answers: HashMap<String, (u16, String, Vec<u8>)>,
    /// GET requests (a followed redirect turns a POST into one).
    gets: u64,
    /// Batches received: members, bytes of JSON, bytes on the wire.
    batches: Vec<(usize, usize, usize)>,
    /// Requests being answered now (in their `delay`), and the most at once.
    in_flight: usize,
    peak_in_flight: usize,
    /// Faults injected so far, by kind.
    injected: HashMap<String, u64>,
}

pub struct TestServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(faults: Faults) -> TestServer {
        let state = Arc::new(Mutex::new(State {
            faults,
            rng: 0x9E37_79B9_7F4A_7C15,
            next_id: 1,
            ..State::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serve(thread_state, stop_rx, addr_tx));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server listening");
        TestServer {
            url: format!("http://{addr}"),
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.state.lock().unwrap().faults);
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Batches received: (members, bytes of JSON, bytes on the wire).
    pub fn batches(&self) -> Vec<(usize, usize, usize)> {
        self.state.lock().unwrap().batches.clone()
    }

    /// The most requests answered at once (each within its `delay`).
    pub fn peak_in_flight(&self) -> usize {
        self.state.lock().unwrap().peak_in_flight
    }

    /// GET requests received: a client that followed a redirect sent them.
    pub fn gets(&self) -> u64 {
        self.state.lock().unwrap().gets
    }

    /// Rows as a server that applies PUTs would hold them: the latest body for each
    /// id, by record key. A record stored twice appears twice.
    pub fn rows(&self, path: &str) -> Vec<(String, Value)> {
        let mut rows: Vec<(String, String, Value)> = Vec::new();
        for s in self.stored() {
            if s.method == "POST" && s.path == path {
                let id = s.id.clone();
                rows.push((id, s.key.clone(), s.body.clone()));
            } else if s.method == "PUT" && s.path.starts_with(&format!("{path}/")) {
                let id = s.path.rsplit('/').next().unwrap_or("").to_string();
                if let Some(row) = rows.iter_mut().find(|r| r.0 == id) {
                    row.2 = s.body.clone();
                }
            }
        }
        rows.into_iter().map(|(_, key, body)| (key, body)).collect()
    }

    pub fn refused_while_down(&self) -> u64 {
        self.state.lock().unwrap().refused_while_down
    }

    /// Faults injected so far, by kind (`Status(503)`, `LostAck`, …).
    pub fn injected(&self) -> HashMap<String, u64> {
        self.state.lock().unwrap().injected.clone()
    }

    pub fn stored(&self) -> Vec<Stored> {
        self.state.lock().unwrap().stored.clone()
    }

    /// Distinct records stored by POST at `path`, by key.
    pub fn keys(&self, path: &str) -> HashSet<String> {
        self.stored()
            .into_iter()
            .filter(|s| s.method == "POST" && s.path == path)
            .map(|s| s.key)
            .collect()
    }

    /// Records stored twice or more by POST (same path, same key).
    pub fn duplicates(&self) -> usize {
        let stored: Vec<_> = self
            .stored()
            .into_iter()
            .filter(|s| s.method == "POST")
            .collect();
        let distinct: HashSet<_> = stored
            .iter()
            .map(|s| (s.path.clone(), s.key.clone()))
            .collect();
        stored.len() - distinct.len()
    }

    /// Waits (bounded) until `done` holds; false if it never did.
    pub fn wait_for(&self, limit: Duration, mut done: impl FnMut(&TestServer) -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done(self)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
    addr_tx: std::sync::mpsc::Sender<std::net::SocketAddr>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let _ = addr_tx.send(listener.local_addr().expect("address"));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let stop = stop.clone();
                tokio::spawn(connection(socket, state, stop));
            }
        }
    }
}

/// What the test server takes of a request: a head of 64 KiB, any body.
const LIMITS: Limits = Limits {
    head: 64 * 1024,
    body: usize::MAX,
    wait: None,
};

async fn respond(socket: &mut TcpStream, status: u16, body: &str, extra: &str) -> bool {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        409 => "Conflict",
        422 => "Unprocessable Content",
        400 => "Bad Request",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    socket.write_all(text.as_bytes()).await.is_ok()
}

enum Plan {
    Answer(u16, String, String),
    Hang(Duration),
    Close,
    LostAck,
    Raw(&'static [u8]),
    HugeBody,
    Trickle,
}

/// What a garbage answer says.
const GARBAGE: &[u8] = b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe not http at all\r\n\r\n";

async fn connection(
    mut socket: TcpStream,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    if state.lock().unwrap().faults.down {
        state.lock().unwrap().refused_while_down += 1;
        return; // dropped: the client sees the connection closed at once
    }
    let mut buffer = Vec::new();
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return,
            r = read_request(&mut socket, &mut buffer, LIMITS) => r,
        };
        let Some(request) = request else { return };
        let (plan, delay) = decide(&state, &request);
        {
            let mut state = state.lock().unwrap();
            state.in_flight += 1;
            state.peak_in_flight = state.peak_in_flight.max(state.in_flight);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.lock().unwrap().in_flight -= 1;
        match plan {
            Plan::Answer(status, body, extra) => {
                if !respond(&mut socket, status, &body, &extra).await {
                    return;
                }
            }
            Plan::Hang(time) => {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(time) => {}
                }
                return;
            }
            Plan::Close | Plan::LostAck => return,
            Plan::Raw(bytes) => {
                let _ = socket.write_all(bytes).await;
                return;
            }
            Plan::HugeBody => {
                let head = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n{\"id\": 1, \"pad\": \"";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let zeros = vec![b'0'; 64 * 1024];
                let mut sent: u64 = 0;
                while sent < 10_000_000_000 {
                    tokio::select! {
                        _ = stop.changed() => return,
                        written = socket.write_all(&zeros) => if written.is_err() { return },
                    }
                    sent += zeros.len() as u64;
                }
                return;
            }
            Plan::Trickle => {
                let answer = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"id\": 1}";
                for byte in answer.iter() {
                    if socket.write_all(std::slice::from_ref(byte)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                return;
            }
        }
    }
}

/// What to do with a request; stores the record when the plan says the server took it.
fn decide(state: &Mutex<State>, request: &Request) -> (Plan, Duration) {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let delay = state.faults.delay;
    if request.method == "GET" {
        // A list endpoint, as a redirect target often is: 200 and nothing stored.
        state.gets += 1;
        return (Plan::Answer(200, "[]".into(), String::new()), delay);
    }
    if request.path.ends_with("/batch") {
        return decide_batch(&mut state, request, delay);
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let key = match state.faults.key_fields.iter().find_map(|f| body.get(f)) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => request.path.rsplit('/').next().unwrap_or("").to_string(),
    };
    if let Some(max) = state.faults.max_body {
        if request.body.len() > max {
            let answer = format!(
                "{{\"error\": \"body of {} bytes is over the {max} byte limit\"}}",
                request.body.len()
            );
            return (Plan::Answer(413, answer, String::new()), delay);
        }
    }
    let fault = match state.faults.per_key.get(&key) {
        Some(fault) => Some(fault.clone()),
        None if state.faults.rate > 0.0 && !state.faults.kinds.is_empty() => {
            let roll = next_random(&mut state.rng);
            if roll < state.faults.rate {
                let index =
                    (next_random(&mut state.rng) * state.faults.kinds.len() as f64) as usize;
                Some(state.faults.kinds[index.min(state.faults.kinds.len() - 1)].clone())
            } else {
                None
            }
        }
        None => None,
    };
    let plan_for = |fault: &Fault, hang_for: Duration| match fault {
        Fault::Status(status) => Some(Plan::Answer(
            *status,
            format!("{{\"error\": \"injected {status} for record {key}\"}}"),
            String::new(),
        )),
        Fault::RetryAfter(secs) => Some(Plan::Answer(
            429,
            "{\"error\": \"slow down\"}".into(),
            format!("retry-after: {secs}\r\n"),
        )),
        Fault::Hang => Some(Plan::Hang(hang_for)),
        Fault::Close => Some(Plan::Close),
        Fault::LostAck => None,
        Fault::Garbage => Some(Plan::Raw(GARBAGE)),
        Fault::Redirect => Some(Plan::Answer(
            302,
            String::new(),
            format!("location: {}\r\n", request.path),
        )),
        // Taken first (below), then the huge answer.
        Fault::HugeBody => None,
        Fault::Trickle => Some(Plan::Trickle),
        Fault::Moved(status) => Some(Plan::Answer(
            *status,
            String::new(),
            format!("location: {}/\r\n", request.path.trim_end_matches('/')),
        )),
        Fault::StoreThenHang => None,
    };
    if let Some(fault) = &fault {
        *state.injected.entry(format!("{fault:?}")).or_default() += 1;
        if let Some(plan) = plan_for(fault, state.faults.hang_for) {
            return (plan, delay);
        }
    }
    // The server takes the record (then loses the answer, for LostAck).
    let idempotency_key = request.headers.get("idempotency-key").cloned();
    if state.faults.honour_idempotency {
        if let Some(known) = idempotency_key.as_ref().and_then(|k| state.answers.get(k)) {
            let (status, answer, first_body) = known.clone();
            if state.faults.strict_idempotency && first_body != request.body {
                let id = serde_json::from_str::<Value>(&answer)
                    .ok()
                    .and_then(|a| a.get("id").cloned())
                    .unwrap_or(Value::Null);
                let refusal =
                    json!({"error": "Idempotency-Key reused with another body", "id": id});
                return (Plan::Answer(422, refusal.to_string(), String::new()), delay);
            }
            return (
                Plan::Answer(status, answer, "idempotent-replayed: true\r\n".into()),
                delay,
            );
        }
    }
    let (status, id) = if request.method == "PUT" {
        (
            200,
            request.path.rsplit('/').next().unwrap_or("").to_string(),
        )
    } else {
        let id = state.next_id;
        state.next_id += 1;
        (201, id.to_string())
    };
    let answer = if state.faults.no_remote_id && request.method == "POST" {
        json!({"message": "stored"}).to_string()
    } else {
        json!({"id": id.parse::<u64>().map_or(Value::String(id.clone()), Value::from), "message": "stored"}).to_string()
    };
    state.stored.push(Stored {
        method: request.method.clone(),
        path: request.path.clone(),
        key,
        idempotency_key: idempotency_key.clone(),
        authorization: request.headers.get("authorization").cloned(),
        body,
        at: std::time::Instant::now(),
        id: id.clone(),
    });
    if let Some(k) = idempotency_key {
        state
            .answers
            .insert(k, (status, answer.clone(), request.body.clone()));
    }
    match fault {
        Some(Fault::LostAck) => return (Plan::LostAck, delay),
        Some(Fault::StoreThenHang) => return (Plan::Hang(state.faults.hang_for), delay),
        Some(Fault::HugeBody) => return (Plan::HugeBody, delay),
        _ => {}
    }
    (Plan::Answer(status, answer, String::new()), delay)
}

fn next_random(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// A batch (`docs/PROTOCOL.md` §3): the whole request may meet a fault drawn as for a
/// single one (a lost answer: every member stored, then the connection dropped); each
/// member is taken as a single request would be (its own Idempotency-Key, its own
/// `per_key` fault), and answered in `results`.
fn decide_batch(state: &mut State, request: &Request, delay: Duration) -> (Plan, Duration) {
    let batch: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let members = batch["records"].as_array().cloned().unwrap_or_default();
    state
        .batches
        .push((members.len(), request.body.len(), request.wire_bytes));
    if let Some(max) = state.faults.max_body {
        if request.body.len() > max {
            return (
                Plan::Answer(
                    413,
                    "{\"error\": \"batch too large\"}".into(),
                    String::new(),
                ),
                delay,
            );
        }
    }
    let fault = if state.faults.rate > 0.0 && !state.faults.kinds.is_empty() {
        let roll = next_random(&mut state.rng);
        let index = (next_random(&mut state.rng) * state.faults.kinds.len() as f64) as usize;
        (roll < state.faults.rate)
            .then(|| state.faults.kinds[index.min(state.faults.kinds.len() - 1)].clone())
    } else {
        None
    };
    if let Some(fault) = &fault {
        *state.injected.entry(format!("{fault:?}")).or_default() += 1;
        match fault {
            Fault::Status(status) => {
                let answer = format!("{{\"error\": \"injected {status}\"}}");
                return (Plan::Answer(*status, answer, String::new()), delay);
            }
            Fault::Hang => return (Plan::Hang(state.faults.hang_for), delay),
            Fault::Close => return (Plan::Close, delay),
            _ => {}
        }
    }
    let base = request.path.trim_end_matches("/batch").to_string();
    let mut results = Vec::new();
    for member in &members {
        let key = match &member["key"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let idempotency_key = member["idempotency_key"].as_str().map(str::to_string);
        if let Some(Fault::Status(status)) = state.faults.per_key.get(&key) {
            results.push(json!({"idempotency_key": idempotency_key, "status": status,
                                "error": format!("injected {status} for record {key}")}));
            continue;
        }
        let record_bytes = member["record"].to_string().into_bytes();
        if state.faults.honour_idempotency {
            if let Some((status, answer, first)) = idempotency_key
                .as_ref()
                .and_then(|k| state.answers.get(k))
                .cloned()
            {
                let mut result: Value = serde_json::from_str(&answer).unwrap_or(json!({}));
                if state.faults.strict_idempotency && first != record_bytes {
                    result = json!({"status": 422, "error": "Idempotency-Key reused with another body",
                                    "id": result.get("id").cloned().unwrap_or(Value::Null)});
                } else {
                    result["status"] = json!(status);
                }
                result["idempotency_key"] = json!(idempotency_key);
                results.push(result);
                continue;
            }
        }
        let update = member["op"] == "update";
        let (status, id, method, path) = if update {
            let id = match &member["remote_id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (200, id.clone(), "PUT", format!("{base}/{id}"))
        } else {
            let id = state.next_id;
            state.next_id += 1;
            (201, id.to_string(), "POST", base.clone())
        };
        let id_value = id
            .parse::<u64>()
            .map_or(Value::String(id.clone()), Value::from);
        state.stored.push(Stored {
            method: method.into(),
            path,
            key: key.clone(),
            idempotency_key: idempotency_key.clone(),
            authorization: request.headers.get("authorization").cloned(),
            body: member["record"].clone(),
            at: std::time::Instant::now(),
            id: id.clone(),
        });
        let answer = json!({"id": id_value}).to_string();
        if let Some(k) = &idempotency_key {
            state
                .answers
                .insert(k.clone(), (status, answer, record_bytes));
        }
        results.push(json!({"idempotency_key": idempotency_key, "status": status, "id": id_value}));
    }
    if matches!(fault, Some(Fault::LostAck)) {
        return (Plan::LostAck, delay);
    }
    let answer = json!({"results": results}).to_string();
    (Plan::Answer(200, answer, String::new()), delay)
}
