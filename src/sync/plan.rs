//! Delivery planning: pure functions over data, no I/O. What a server's answer means,
//! how long to wait before trying again, what a tracking row becomes, what a payload
//! holds. The engine (`mod.rs`) is a thin loop around these.

use std::time::Duration;

use serde_json::{Map, Value};

use super::transport::{AnswerHeaders, FailureKind, Reply};
use crate::config::{Collection, Updates};
use crate::store::record::{self, Key, Record};
use crate::store::{rfc3339, Claim, ClaimState, Due, Millis, Status, Tracking};

/// The first retry waits up to this long, doubling per attempt, up to
/// `sync.max_retry_delay`.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this is cut to it.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// A record that changes many times a second is sent at most this often.
pub const MIN_UPDATE_INTERVAL: Millis = 1_000;
/// How much of a server's answer is kept in `error_message`.
pub const ERROR_BODY_CHARS: usize = 200;

/// What happened to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered {
        status: u16,
        remote_id: Option<Key>,
        bytes: u64,
        /// The server said it answered from its memory of the Idempotency-Key
        /// (`Idempotent-Replayed: true`): it holds what the key was first sent with.
        replayed: bool,
    },
    /// Worth trying again later: connection errors, timeouts, 408, 409, 425, 429, 5xx.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
        /// No answer at all (refused, reset, timed out): the server may be down.
        transport: bool,
        /// The server may have acted on the request (no answer after it was sent, a
        /// 5xx, a 409 "still in progress"): a create stays claimed.
        maybe_processed: bool,
        /// Why there was no answer, when there was none.
        failure: Option<FailureKind>,
    },
    /// The server refused this record for good (other 4xx, 3xx), or it cannot be sent.
    Failed {
        status: Option<u16>,
        error: String,
        /// An id the answer carried all the same (a 422 for a reused Idempotency-Key
        /// may name what the key created).
        remote_id: Option<Key>,
    },
}

impl Outcome {
    /// A sign that the server, not the record, is the problem.
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Outcome::Retry { .. })
    }

    /// A refusal that is not the server's (the payload cannot be built, …).
    pub fn refused(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            status: None,
            error: error.into(),
            remote_id: None,
        }
    }
}

/// What came back from a request for one record means (SPEC §5). `pointer` is where
/// the record's id is in the answer; `bytes` the body's size.
pub fn outcome(reply: &Reply, pointer: &str, now: Millis, bytes: u64) -> Outcome {
    match reply {
        Reply::Answer {
            status,
            headers,
            body,
        } => classify(*status, body, headers, pointer, now, bytes),
        Reply::Failure {
            kind: FailureKind::Request,
            error,
            ..
        } => Outcome::refused(error.clone()),
        Reply::Failure {
            kind,
            error,
            maybe_processed,
        } => Outcome::Retry {
            status: None,
            error: error.clone(),
            retry_after: None,
            transport: true,
            maybe_processed: *maybe_processed,
            failure: Some(*kind),
        },
    }
}

/// What a server's answer means (SPEC §5). `body` is the start of the answer.
pub fn classify(
    status: u16,
    body: &[u8],
    headers: &AnswerHeaders,
    remote_id: &str,
    now: Millis,
    bytes: u64,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered {
            status,
            remote_id: remote_id_from(body, remote_id),
            bytes,
            replayed: headers.replayed,
        },
        // Not acted on (408 timeout reading the request, 425 too early, 429 slow
        // down) or maybe acted on (409: the first request with this key is still in
        // progress; 5xx: it may have failed after storing).
        408 | 409 | 425 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            error: http_error(status, body),
            retry_after: headers
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now)),
            transport: false,
            maybe_processed: status == 409 || status >= 500,
            failure: None,
        },
        // A redirect is never followed: it would turn the POST into a GET (301, 302)
        // or send the record where nobody configured it to go.
        300..=399 => Outcome::Failed {
            status: Some(status),
            error: match headers.location.as_deref() {
                Some(target) => format!(
                    "HTTP {status}: remote.url redirects to {target}; ferry does not follow redirects: \
                     fix remote.url or the collection's endpoint, then `ferry retry`"
                ),
                None => format!(
                    "HTTP {status}: a redirect without a Location; ferry does not follow redirects: \
                     check remote.url and the collection's endpoint, then `ferry retry`"
                ),
            },
            remote_id: None,
        },
        413 => Outcome::Failed {
            status: Some(413),
            error: format!(
                "HTTP 413: the record ({bytes} bytes as JSON) is larger than the server accepts: {}",
                body_excerpt(body)
            ),
            remote_id: None,
        },
        _ => Outcome::Failed {
            status: Some(status),
            error: http_error(status, body),
            remote_id: remote_id_from(body, remote_id),
        },
    }
}

/// `HTTP 422: <start of body>`.
pub fn http_error(status: u16, body: &[u8]) -> String {
    let excerpt = body_excerpt(body);
    if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    }
}

/// The start of a body as one line of text.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= ERROR_BODY_CHARS {
            break;
        }
    }
    if out.chars().count() > ERROR_BODY_CHARS {
        out = out.chars().take(ERROR_BODY_CHARS).collect::<String>() + "…";
    }
    out
}

/// The server's id for the record: the JSON pointer into the answer, if it is there.
pub fn remote_id_from(body: &[u8], pointer: &str) -> Option<Key> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(Key::parse(s)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Key::Int(i)),
            None => Some(Key::Text(n.to_string())),
        },
        _ => None,
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = parse_http_date(value)?;
            Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
        }
    };
    Some(delay.min(RETRY_AFTER_CAP))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as Unix ms.
fn parse_http_date(value: &str) -> Option<Millis> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    crate::store::time::parse_timestamp(&format!("{year}-{month:02}-{day:0>2}T{time}Z"))
}

/// The cause code of an update refused for want of the server's id.
pub const NO_REMOTE_ID: &str = "no_remote_id";

/// What to do with a due record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `POST <endpoint>`: the server creates the record (or, with `updates = "post"`, a
    /// new version of it).
    Create,
    /// `PUT <endpoint>/<remote_id>`.
    Put(Key),
    /// Changed too recently: send its latest state at this time instead.
    Defer(Millis),
    /// Deleted before its delivery was settled: nothing to send.
    Abandon,
    /// Nothing to send: delivered at this version, or its changes are ignored.
    Skip,
    /// Nothing to send any more, but the tracking row says an attempt is due: it is
    /// settled as delivered ([`settled`]), so it is not found again and again.
    Settle,
    /// It cannot be sent as things stand; the tracking row says why (`failed`).
    Refuse(String),
}

pub fn action(due: &Due, collection: &Collection, now: Millis) -> Action {
    if due.record.is_none() {
        return Action::Abandon;
    }
    let Some(tracking) = &due.tracking else {
        return Action::Create;
    };
    if let Some(claim) = &tracking.claim {
        // A create whose outcome is unknown is settled first, under its own key —
        // except that with `updates = "post"` every version is a create of its own.
        if collection.updates() != Updates::Post || claim.version == due.version {
            return Action::Create;
        }
    }
    if tracking.status == Status::Success {
        if delivered_as_it_is(tracking, due) || collection.updates() == Updates::Ignore {
            return Action::Skip;
        }
        // At most one update a second; a clock that went back does not hold it.
        let last = crate::store::time::parse_timestamp(&tracking.sync_date).unwrap_or(0);
        if (0..MIN_UPDATE_INTERVAL).contains(&(now - last)) {
            return Action::Defer(last + MIN_UPDATE_INTERVAL);
        }
    }
    if !tracking.created && tracking.remote_id.is_none() {
        return Action::Create;
    }
    match collection.updates() {
        Updates::Post => Action::Create,
        // An update tried while `updates` was put or post: no longer wanted.
        Updates::Ignore => Action::Settle,
        Updates::Put => match &tracking.remote_id {
            Some(remote_id) => Action::Put(remote_id.clone()),
            None => Action::Refuse(format!(
                "cannot send this update with PUT: when the record was created, the server's \
                 answer had no id at {:?} (collections[{}].remote_id); set remote_id to where the \
                 answer holds the id, or updates = \"post\", then `ferry retry`",
                collection.remote_id.as_str(),
                collection.name.as_str()
            )),
        },
    }
}

/// The record is delivered in the state it has now.
fn delivered_as_it_is(tracking: &Tracking, due: &Due) -> bool {
    !tracking.differs_from(&due.version, due.fingerprint)
}

/// What a batch's due records come to, record by record ([`action`]): tracking rows
/// to write (abandoned, settled, refused), rows to forget, requests to send, and when
/// changes held back (one update a second) may go.
#[derive(Debug, Default)]
pub struct Triage {
    pub rows: Vec<Tracking>,
    pub forget: Vec<Key>,
    pub sends: Vec<(Due, Action)>,
    pub deferred: Option<Millis>,
    /// Records refused as things stand (counted as failed).
    pub refused: usize,
}

pub fn triage(due: Vec<Due>, collection: &Collection, now: Millis, policy: RetryPolicy) -> Triage {
    let mut triage = Triage::default();
    let name = collection.name.as_str();
    for d in due {
        match action(&d, collection, now) {
            // Deleted before its delivery was settled: nothing to send, and the key is
            // free — a record written later under it is a new record, under its own
            // Idempotency-Key, even when a create of the first may be on the server
            // unconfirmed (that one stays whatever it is there; deletions are not sent).
            Action::Abandon => triage.forget.push(d.key.clone()),
            Action::Settle => triage.rows.extend(settled(&d, now)),
            Action::Defer(at) => {
                triage.deferred = Some(triage.deferred.map_or(at, |d: Millis| d.min(at)));
            }
            Action::Skip => {}
            Action::Refuse(error) => {
                triage.refused += 1;
                triage.rows.push(refused(&d, name, &error, now, policy));
            }
            action @ (Action::Create | Action::Put(_)) => triage.sends.push((d, action)),
        }
    }
    triage
}

/// A request to make: its method, path (after the base URL) and Idempotency-Key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPlan {
    pub method: &'static str,
    pub path: String,
    pub idempotency_key: String,
}

/// The request for `action` on `due` — shared by sending and `ferry sync --dry-run`.
/// A create reuses the key of a claimed attempt whose outcome is unknown.
pub fn request_for(
    due: &Due,
    action: &Action,
    collection: &Collection,
    device_id: &str,
) -> Option<RequestPlan> {
    let fresh_key = || {
        idempotency_key(
            device_id,
            collection.name.as_str(),
            &due.key,
            Some(&key_version(&due.version, due.fingerprint)),
        )
    };
    match action {
        Action::Create => Some(RequestPlan {
            method: "POST",
            path: collection.endpoint.as_str().to_string(),
            idempotency_key: match pinned_claim(due, collection) {
                Some(claim) => claim.key.clone(),
                None => fresh_key(),
            },
        }),
        Action::Put(remote_id) => Some(RequestPlan {
            method: "PUT",
            path: put_path(collection, remote_id),
            // Its own key: a create of the same version (after `reset-tracking`, say) is
            // another request, and a server that keeps keys must not take one for the other.
            idempotency_key: format!("{}:update", fresh_key()),
        }),
        Action::Defer(_) | Action::Abandon | Action::Skip | Action::Settle | Action::Refuse(_) => {
            None
        }
    }
}

/// The version part of an Idempotency-Key: the record's version, and for one that is
/// its `updated_at`, a short fingerprint of its content too — two states written
/// within one tick of `updated_at` are two requests, never one key with two bodies.
pub fn key_version(version: &str, fingerprint: u64) -> String {
    if version.starts_with(record::FINGERPRINT_PREFIX) {
        version.to_string()
    } else {
        format!("{version}~{:08x}", fingerprint >> 32)
    }
}

/// The claim a create of `due` must reuse, if any.
pub fn pinned_claim<'a>(due: &'a Due, collection: &Collection) -> Option<&'a Claim> {
    let claim = due.tracking.as_ref()?.claim.as_ref()?;
    (collection.updates() != Updates::Post || claim.version == due.version).then_some(claim)
}

/// `<endpoint>/<remote_id>`, the id percent-encoded.
pub fn put_path(collection: &Collection, remote_id: &Key) -> String {
    format!(
        "{}/{}",
        collection.endpoint.as_str().trim_end_matches('/'),
        percent_encode(&remote_id.to_string())
    )
}

/// Every byte but RFC 3986's unreserved characters as `%XX`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The `Idempotency-Key`: `<device_id>:<collection>:<key>:<version>`, each part
/// percent-encoded (so `:` inside a part cannot join two keys into one, and the
/// header is always a valid value), the same on every retry of the same version.
pub fn idempotency_key(
    device_id: &str,
    collection: &str,
    key: &Key,
    version: Option<&str>,
) -> String {
    let mut out = format!(
        "{}:{}:{}",
        percent_encode(device_id),
        percent_encode(collection),
        percent_encode(&key.to_string())
    );
    if let Some(version) = version.filter(|v| !v.is_empty()) {
        out.push(':');
        out.push_str(&percent_encode(version));
    }
    out
}

/// The body sent for a record: its fields, plus `device_id`, plus `extra` (a record's
/// own field wins over both), with `blob_fields` as plain base64 strings.
pub fn payload(record: Record, collection: &Collection, device_id: &str) -> Record {
    let mut body: Map<String, Value> = record;
    for field in &collection.blob_fields {
        if let Some(value) = body.get_mut(field.as_str()) {
            if record::bytes_base64(value).is_some() {
                // Moved out of its {"$base64": …} wrapper, not copied: a blob is
                // held once.
                if let Value::Object(tagged) = std::mem::take(value) {
                    if let Some(text) = tagged.into_iter().next().map(|(_, text)| text) {
                        *value = text;
                    }
                }
            }
        }
    }
    body.entry("device_id")
        .or_insert_with(|| Value::String(device_id.to_string()));
    for (name, value) in &collection.extra {
        body.entry(name.clone()).or_insert_with(|| value.clone());
    }
    body
}

/// When records are tried again (`sync.retry_failed_every`, `sync.max_retry_delay`).
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub failed_every: Duration,
    pub max_delay: Duration,
}

/// One request as sent: what [`after`] needs to read its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub action: Action,
    pub idempotency_key: String,
    /// The version of the record the body carried, and its content fingerprint.
    pub version: String,
    pub fingerprint: u64,
    /// FNV-1a of the body's bytes.
    pub body_hash: u64,
    /// The body, for a create small enough to keep in its claim
    /// ([`crate::store::CLAIM_BODY_MAX`]) should its fate be unknown.
    pub body: Option<Vec<u8>>,
}

/// The tracking row written before a create is sent: the attempt is claimed, so that
/// whatever happens next (a crash, a reload, the record changing) its retries reuse
/// its Idempotency-Key. A claim already there (an earlier attempt whose outcome is
/// unknown) is kept as it is: it says what the server may hold.
pub fn claim(due: &Due, collection: &str, attempt: &Attempt, now: Millis) -> Tracking {
    let mut row = due
        .tracking
        .clone()
        .unwrap_or_else(|| Tracking::new(collection, due.key.clone(), now));
    let earlier = row
        .claim
        .as_ref()
        .filter(|c| c.key == attempt.idempotency_key)
        .cloned();
    row.claim = Some(match earlier {
        Some(mut claim) => {
            claim.state = ClaimState::Unsure;
            claim
        }
        None => Claim {
            key: attempt.idempotency_key.clone(),
            version: attempt.version.clone(),
            fingerprint: attempt.fingerprint,
            body_hash: attempt.body_hash,
            state: ClaimState::Sending,
            body: None,
        },
    });
    // A claim is news: a start-up migration that meets this row and an older one on
    // the other backend keeps this one. And an attempt is under way: pending, due now
    // should the process die before its outcome is written.
    row.sync_date = rfc3339(now);
    row.status = Status::Pending;
    row.next_attempt_at = None;
    row
}

/// The tracking row after `outcome` of `attempt` for the record in `due` (whose
/// tracking is as it was before the attempt's claim).
pub fn after(
    due: &Due,
    collection: &Collection,
    attempt: &Attempt,
    outcome: &Outcome,
    now: Millis,
    policy: RetryPolicy,
    random: f64,
) -> Tracking {
    let previous = due.tracking.as_ref();
    let mut row = attempted(due, collection, attempt, now);
    let sent = Sent {
        attempt,
        // The claim this attempt was made under, if it reused an earlier one's key.
        pinned: previous
            .and_then(|t| t.claim.as_ref())
            .filter(|c| c.key == attempt.idempotency_key),
    };
    match outcome {
        Outcome::Delivered {
            status,
            remote_id,
            bytes,
            replayed,
        } => {
            let (version, fingerprint) = sent.delivered_version(collection, *replayed);
            let behind = version != due.version || fingerprint != due.fingerprint;
            delivered(
                &mut row,
                *status,
                remote_id.as_ref(),
                sent.is_create(),
                (version, fingerprint),
            );
            row.bytes_sent = row.bytes_sent.saturating_add(*bytes);
            if behind {
                follow_up(&mut row, collection, now);
            }
        }
        // A 422 to a changed retry of a claimed create: the key was used before with
        // another body (the IETF Idempotency-Key draft) — the server holds the claimed
        // attempt. Settled as that; the latest state follows as an update.
        Outcome::Failed {
            status: Some(422),
            remote_id,
            ..
        } if sent.is_create() && sent.body_changed() => {
            let claim = sent
                .pinned
                .unwrap_or_else(|| unreachable!("a changed body is a pinned one"));
            let version = (claim.version.clone(), claim.fingerprint);
            let remote_id = remote_id.as_ref().or(row.remote_id.as_ref()).cloned();
            delivered(&mut row, 422, remote_id.as_ref(), false, version);
            follow_up(&mut row, collection, now);
        }
        Outcome::Retry {
            status,
            error,
            retry_after,
            maybe_processed,
            failure,
            ..
        } => {
            // An update being retried is pending again: `stats` shows it outstanding.
            let wait = retry_after
                .unwrap_or_else(|| backoff(row.attempts, RETRY_BASE, policy.max_delay, random));
            not_delivered(&mut row, Status::Pending, *status, error, &sent);
            row.error_cause = failure.map(|kind| kind.code().to_string());
            row.next_attempt_at = Some(now + wait.as_millis() as Millis);
            row.claim = sent.claim_left(*maybe_processed);
        }
        Outcome::Failed { status, error, .. } => {
            not_delivered(&mut row, Status::Failed, *status, error, &sent);
            row.next_attempt_at =
                Some(now.saturating_add(policy.failed_every.as_millis() as Millis));
            // A refusal means the request was not acted on; an earlier attempt
            // whose outcome is unknown still may have been.
            row.claim = sent.claim_left(false);
        }
    }
    row
}

/// The record's tracking row as the attempt left it, before its outcome is read: one
/// more attempt at the same version, or the first at a new one.
fn attempted(due: &Due, collection: &Collection, attempt: &Attempt, now: Millis) -> Tracking {
    let previous = due.tracking.as_ref();
    let same_version = previous.is_some_and(|t| {
        t.status != Status::Success && t.version.as_deref() == Some(&attempt.version)
    });
    let mut row = previous
        .cloned()
        .unwrap_or_else(|| Tracking::new(collection.name.as_str(), due.key.clone(), now));
    row.attempts = if same_version { row.attempts + 1 } else { 1 };
    row.sync_date = rfc3339(now);
    row
}

/// One attempt as [`after`] reads its outcome.
struct Sent<'a> {
    attempt: &'a Attempt,
    pinned: Option<&'a Claim>,
}

impl Sent<'_> {
    fn is_create(&self) -> bool {
        self.attempt.action == Action::Create
    }

    /// The body differs from the claimed attempt's: the record changed meanwhile
    /// (and the first body was too big to keep).
    fn body_changed(&self) -> bool {
        self.pinned
            .is_some_and(|c| c.body_hash != self.attempt.body_hash)
    }

    /// What a 2xx says the server holds: what this request carried — unless it
    /// carried a changed body under a claimed key: then it may hold the claimed
    /// version (a replay; a server that keeps keys but not bodies) or this one. Where
    /// an update follows, assume the older: the update then brings the latest state
    /// whichever it holds.
    fn delivered_version(&self, collection: &Collection, replayed: bool) -> (String, u64) {
        match self.pinned {
            Some(claim)
                if self.body_changed()
                    && (replayed
                        || (collection.updated_at.is_some()
                            && collection.updates() == Updates::Put)) =>
            {
                (claim.version.clone(), claim.fingerprint)
            }
            _ => (self.attempt.version.clone(), self.attempt.fingerprint),
        }
    }

    fn claim_left(&self, maybe_processed: bool) -> Option<Claim> {
        settle_claim(self.is_create(), self.pinned, self.attempt, maybe_processed)
    }
}

/// The server holds an older state than the record has now (a claimed create settled
/// as it was first sent): the latest state is due as an update, as soon as one a second
/// allows — pending, so it is found again whatever the store's watermarks say.
fn follow_up(row: &mut Tracking, collection: &Collection, now: Millis) {
    if collection.sends_changes() {
        row.status = Status::Pending;
        row.next_attempt_at = Some(now + MIN_UPDATE_INTERVAL);
    }
}

/// A row the server now holds `version` of; a create's answer names the new record
/// (or nothing), an update's keeps the id it had.
fn delivered(
    row: &mut Tracking,
    status: u16,
    remote_id: Option<&Key>,
    is_create: bool,
    (version, fingerprint): (String, u64),
) {
    row.status = Status::Success;
    if remote_id.is_some() || is_create {
        row.remote_id = remote_id
            .cloned()
            .or(row.remote_id.take().filter(|_| !is_create));
    }
    row.error_message = None;
    row.error_cause = None;
    row.next_attempt_at = None;
    row.version = Some(version);
    row.fingerprint = Some(fingerprint);
    row.last_http_status = Some(status);
    row.created = true;
    row.claim = None;
}

/// A row whose attempt did not deliver (`status` pending or failed).
fn not_delivered(
    row: &mut Tracking,
    status: Status,
    http: Option<u16>,
    error: &str,
    sent: &Sent<'_>,
) {
    row.status = status;
    row.error_message = Some(error.to_string());
    row.error_cause = None;
    row.version = Some(sent.attempt.version.clone());
    row.fingerprint = Some(sent.attempt.fingerprint);
    row.last_http_status = http;
}

/// The claim a create leaves after an answer that did not settle it: kept while the
/// server may hold the record (this attempt or an earlier one may have been acted
/// on), dropped when nothing can have been created. A claim kept keeps the body the
/// server may hold, when it is small enough, so that every retry sends exactly it.
fn settle_claim(
    is_create: bool,
    pinned: Option<&Claim>,
    attempt: &Attempt,
    maybe_processed: bool,
) -> Option<Claim> {
    if !is_create {
        return None;
    }
    match pinned {
        Some(claim) => {
            let mut claim = claim.clone();
            claim.state = ClaimState::Unsure;
            if claim.body.is_none() && claim.body_hash == attempt.body_hash {
                claim.body = attempt.body.clone();
            }
            Some(claim)
        }
        None if maybe_processed => Some(Claim {
            key: attempt.idempotency_key.clone(),
            version: attempt.version.clone(),
            fingerprint: attempt.fingerprint,
            body_hash: attempt.body_hash,
            state: ClaimState::Unsure,
            body: attempt.body.clone(),
        }),
        None => None,
    }
}

/// The tracking row of a record whose pending attempt is no longer wanted (its
/// collection's `updates` became "ignore"): delivered, as far as ferry is concerned.
pub fn settled(due: &Due, now: Millis) -> Option<Tracking> {
    let mut row = due.tracking.clone()?;
    row.status = Status::Success;
    row.sync_date = rfc3339(now);
    row.error_message = None;
    row.next_attempt_at = None;
    row.version = Some(due.version.clone());
    row.fingerprint = Some(due.fingerprint);
    Some(row)
}

/// The tracking row of a record that cannot be sent as things stand.
pub fn refused(
    due: &Due,
    collection: &str,
    error: &str,
    now: Millis,
    policy: RetryPolicy,
) -> Tracking {
    let mut row = due
        .tracking
        .clone()
        .unwrap_or_else(|| Tracking::new(collection, due.key.clone(), now));
    row.status = Status::Failed;
    row.sync_date = rfc3339(now);
    row.error_message = Some(error.to_string());
    // The one refusal before a request: an update with nothing to address it by.
    row.error_cause = Some(NO_REMOTE_ID.to_string());
    row.next_attempt_at = Some(now.saturating_add(policy.failed_every.as_millis() as Millis));
    row.last_http_status = None;
    row
}

mod timing;
pub use timing::{backoff, health_after, next_wake, probe_delay, Health, Jitter};

#[cfg(test)]
mod tests;
