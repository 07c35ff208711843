//! Delivery planning: pure functions over data, no I/O. What a server's answer means,
//! how long to wait before trying again, what a tracking row becomes, what a payload
//! holds. The engine (`mod.rs`) is a thin loop around these.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Collection, Updates};
use crate::store::record::{self, Key, Record};
use crate::store::{rfc3339, Due, Millis, Status, Tracking};

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
    },
    /// Worth trying again later: connection errors, timeouts, 408, 425, 429, 5xx.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
        /// No answer at all (refused, reset, timed out): the server may be down.
        transport: bool,
    },
    /// The server refused this record for good (other 4xx), or it cannot be sent.
    Failed { status: Option<u16>, error: String },
}

impl Outcome {
    /// A sign that the server, not the record, is the problem.
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Outcome::Retry { .. })
    }
}

/// What a server's answer means (SPEC §5). `body` is the start of the answer.
pub fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    remote_id: &str,
    now: Millis,
    bytes: u64,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered {
            status,
            remote_id: remote_id_from(body, remote_id),
            bytes,
        },
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            error: http_error(status, body),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
            transport: false,
        },
        413 => Outcome::Failed {
            status: Some(413),
            error: format!(
                "HTTP 413: the record ({bytes} bytes as JSON) is larger than the server accepts: {}",
                body_excerpt(body)
            ),
        },
        _ => Outcome::Failed {
            status: Some(status),
            error: http_error(status, body),
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

/// Capped exponential backoff with full jitter: a uniform wait in
/// `[0, min(cap, base·2^(attempt-1))]`. `random` is uniform in `[0, 1)`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, random: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(cap).mul_f64(random.clamp(0.0, 1.0))
}

/// How long a collection whose server looks down waits before its next probe: half
/// fixed, half jitter, so probes never come in a burst. `failures` counts from 1.
pub fn probe_delay(failures: u32, random: f64) -> Duration {
    let window = RETRY_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(Duration::from_secs(60));
    window / 2 + (window / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// What to do with a due record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Post,
    /// `PUT <endpoint>/<remote_id>`.
    Put(Key),
    /// Changed too recently: send its latest state at this time instead.
    Defer(Millis),
    /// Deleted before its delivery was settled: nothing to send.
    Abandon,
}

pub fn action(due: &Due, collection: &Collection, now: Millis) -> Action {
    if due.record.is_none() {
        return Action::Abandon;
    }
    let Some(tracking) = &due.tracking else {
        return Action::Post;
    };
    if tracking.status == Status::Success {
        let last = crate::store::time::parse_timestamp(&tracking.sync_date).unwrap_or(0);
        if now - last < MIN_UPDATE_INTERVAL {
            return Action::Defer(last + MIN_UPDATE_INTERVAL);
        }
    }
    // A remote id is only ever learnt from a success: the server has the record.
    match (collection.updates(), &tracking.remote_id) {
        (Updates::Put, Some(remote_id)) => Action::Put(remote_id.clone()),
        _ => Action::Post,
    }
}

/// The `Idempotency-Key`: `<device_id>:<collection>:<key>[:<version>]`, the same on
/// every retry of the same version, so a server that saw a request whose answer was
/// lost recognises it.
pub fn idempotency_key(
    device_id: &str,
    collection: &str,
    key: &Key,
    version: Option<&str>,
) -> String {
    match version {
        Some(version) => format!("{device_id}:{collection}:{key}:{version}"),
        None => format!("{device_id}:{collection}:{key}"),
    }
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

/// The tracking row after `outcome` for the record in `due`.
pub fn after(
    due: &Due,
    collection: &str,
    outcome: &Outcome,
    now: Millis,
    policy: RetryPolicy,
    random: f64,
) -> Tracking {
    let previous = due.tracking.as_ref();
    let version = attempt_version(due);
    let same_version =
        previous.is_some_and(|t| t.version == version && t.status != Status::Success);
    let attempts = if same_version {
        previous.map_or(0, |t| t.attempts) + 1
    } else {
        1
    };
    let mut row = previous
        .cloned()
        .unwrap_or_else(|| Tracking::new(collection, due.key.clone(), now));
    row.attempts = attempts;
    row.sync_date = rfc3339(now);
    match outcome {
        Outcome::Delivered {
            status,
            remote_id,
            bytes,
        } => {
            row.status = Status::Success;
            if remote_id.is_some() {
                row.remote_id = remote_id.clone();
            }
            row.error_message = None;
            row.next_attempt_at = None;
            row.version = version.clone();
            row.last_http_status = Some(*status);
            row.bytes_sent = row.bytes_sent.saturating_add(*bytes);
        }
        Outcome::Retry {
            status,
            error,
            retry_after,
            ..
        } => {
            // An update being retried is pending again: `stats` shows it outstanding.
            row.status = Status::Pending;
            row.error_message = Some(error.clone());
            let wait = retry_after
                .unwrap_or_else(|| backoff(attempts, RETRY_BASE, policy.max_delay, random));
            row.next_attempt_at = Some(now + wait.as_millis() as Millis);
            row.version = version.clone();
            row.last_http_status = *status;
        }
        Outcome::Failed { status, error } => {
            row.status = Status::Failed;
            row.error_message = Some(error.clone());
            row.next_attempt_at =
                Some(now.saturating_add(policy.failed_every.as_millis() as Millis));
            row.version = version.clone();
            row.last_http_status = *status;
        }
    }
    row
}

/// A record deleted before its delivery was settled. Never delivered (no remote id):
/// its row is forgotten (`None`), so a record written later under the same key is
/// new. Delivered before: the server keeps the last version it got (deletions are not
/// sent), so the row says success again.
pub fn abandoned(due: &Due, now: Millis) -> Option<Tracking> {
    let row = due.tracking.as_ref()?;
    row.remote_id.as_ref()?;
    let mut row = row.clone();
    row.status = Status::Success;
    row.sync_date = rfc3339(now);
    row.error_message = None;
    row.next_attempt_at = None;
    Some(row)
}

/// The version a request for `due` is made for, and recorded as delivered on success.
/// After an attempt whose outcome is unknown (no answer: the server may have stored
/// it), the record keeps the version of that attempt, so the retry carries the same
/// Idempotency-Key even if the record changed meanwhile; the newer state follows as
/// an update once the first is settled.
pub fn attempt_version(due: &Due) -> Option<String> {
    match &due.tracking {
        Some(t)
            if t.status == Status::Pending
                && t.attempts > 0
                && t.last_http_status.is_none()
                && t.version.is_some() =>
        {
            t.version.clone()
        }
        _ => due.version.clone(),
    }
}

/// A small, fast pseudo-random source for jitter (xorshift64*), seeded per process.
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    pub fn from_clock() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
