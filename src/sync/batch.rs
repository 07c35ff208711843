//! The batch contract (`docs/PROTOCOL.md` §3), pure: which records go in one request,
//! the request's body and key, and what its answer means for each member. The loop in
//! `drain.rs` sends what this builds.

use std::ops::Range;

use serde_json::Value;

use super::plan::{self, classify, Outcome};
use super::transport::{AnswerHeaders, Reply};
use crate::store::record::{Fnv, Key};
use crate::store::Millis;

/// How much of a batch's answer is read: every member's result fits.
pub const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// One member of a batch, as the body carries it.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    pub key: &'a Key,
    /// `Some` for an update (`op: "update"`, what `PUT <endpoint>/<remote_id>` does).
    pub remote_id: Option<&'a Key>,
    pub idempotency_key: &'a str,
    pub version: &'a str,
    /// The member's body as the single-record API would send it (JSON).
    pub record: &'a [u8],
}

/// Consecutive runs of members that fit the limits: at most `max_records`, and at most
/// `max_bytes` of member bodies — a member bigger than that alone goes alone.
pub fn pack(sizes: &[usize], max_records: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, &size) in sizes.iter().enumerate() {
        let full = i - start >= max_records.max(1) || (i > start && bytes + size > max_bytes);
        if full {
            batches.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// The body of a batch: `{"device_id", "collection", "records": [...]}`, each member's
/// record embedded as it is (already JSON).
pub fn body(device_id: &str, collection: &str, members: &[Member<'_>]) -> Vec<u8> {
    let size: usize = members.iter().map(|m| m.record.len() + 200).sum();
    let mut out = Vec::with_capacity(size + 100);
    let text = |out: &mut Vec<u8>, value: &str| {
        out.extend_from_slice(Value::String(value.to_string()).to_string().as_bytes())
    };
    out.extend_from_slice(b"{\"device_id\":");
    text(&mut out, device_id);
    out.extend_from_slice(b",\"collection\":");
    text(&mut out, collection);
    out.extend_from_slice(b",\"records\":[");
    for (i, member) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        out.extend_from_slice(member.key.to_value().to_string().as_bytes());
        match member.remote_id {
            Some(remote_id) => {
                out.extend_from_slice(b",\"op\":\"update\",\"remote_id\":");
                out.extend_from_slice(remote_id.to_value().to_string().as_bytes());
            }
            None => out.extend_from_slice(b",\"op\":\"create\""),
        }
        out.extend_from_slice(b",\"idempotency_key\":");
        text(&mut out, member.idempotency_key);
        out.extend_from_slice(b",\"version\":");
        text(&mut out, member.version);
        out.extend_from_slice(b",\"record\":");
        out.extend_from_slice(member.record);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The batch's own Idempotency-Key: `<device_id>:<collection>:batch:<hash of its
/// members' keys>`, the same whenever the same members are sent again.
pub fn key(device_id: &str, collection: &str, members: &[Member<'_>]) -> String {
    let mut hash = Fnv::new();
    for member in members {
        hash.write(member.idempotency_key.as_bytes());
        hash.write(&[0]);
    }
    format!(
        "{}:{}:batch:{:016x}",
        plan::percent_encode(device_id),
        plan::percent_encode(collection),
        hash.finish()
    )
}

/// What a batch's answer means.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// An outcome for each member, in the members' order.
    Members(Vec<Outcome>),
    /// `413`: too big for the server; send it in halves.
    Split,
}

/// What came back from a batch means for each member (`keys`: their Idempotency-Keys,
/// `bytes`: their bodies' sizes). `pointer` is where an id is in a member's result.
pub fn answer(reply: &Reply, keys: &[&str], bytes: &[u64], pointer: &str, now: Millis) -> Answer {
    let (status, headers, body) = match reply {
        Reply::Answer {
            status,
            headers,
            body,
        } => (*status, headers, body),
        failure => {
            return Answer::Members(
                bytes
                    .iter()
                    .map(|b| plan::outcome(failure, pointer, now, *b))
                    .collect(),
            )
        }
    };
    if status == 413 {
        return Answer::Split;
    }
    if !(200..300).contains(&status) {
        // The batch as a whole: every member gets what the answer means for one.
        return Answer::Members(
            bytes
                .iter()
                .map(|b| classify(status, body, headers, pointer, now, *b))
                .collect(),
        );
    }
    let results = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("results").and_then(Value::as_array).cloned());
    let Some(results) = results else {
        // A 2xx without per-member results: every member was accepted.
        return Answer::Members(
            bytes
                .iter()
                .map(|b| classify(status, b"", headers, pointer, now, *b))
                .collect(),
        );
    };
    let find = |key: &str| {
        results
            .iter()
            .find(|r| r.get("idempotency_key").and_then(Value::as_str) == Some(key))
    };
    Answer::Members(
        keys.iter()
            .zip(bytes)
            .map(|(key, b)| match find(key) {
                Some(result) => member_outcome(result, headers, pointer, now, *b),
                None => Outcome::Retry {
                    status: Some(status),
                    error: "the batch's answer had no result for this record".into(),
                    retry_after: None,
                    transport: false,
                    maybe_processed: true,
                    failure: None,
                },
            })
            .collect(),
    )
}

/// One member's result: what its `status` would mean as the answer to it alone, its
/// `id` read at `pointer` within the result, its `error` as the answer's text.
fn member_outcome(
    result: &Value,
    headers: &AnswerHeaders,
    pointer: &str,
    now: Millis,
    bytes: u64,
) -> Outcome {
    let status = result
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(0);
    let text = match result.get("error") {
        Some(Value::String(error)) => error.clone().into_bytes(),
        _ => result.to_string().into_bytes(),
    };
    let mut outcome = classify(status, &text, headers, pointer, now, bytes);
    // The id is read from the result itself.
    let id = plan::remote_id_from(result.to_string().as_bytes(), pointer);
    match &mut outcome {
        Outcome::Delivered { remote_id, .. } | Outcome::Failed { remote_id, .. } => *remote_id = id,
        Outcome::Retry { .. } => {}
    }
    if status == 0 {
        return Outcome::Retry {
            status: None,
            error: format!("the batch's answer gave this record no status: {result}"),
            retry_after: None,
            transport: false,
            maybe_processed: true,
            failure: None,
        };
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batches_keep_to_their_limits_and_a_big_record_goes_alone() {
        assert_eq!(pack(&[10; 5], 2, 1000), [0..2, 2..4, 4..5]);
        assert_eq!(pack(&[400, 400, 400], 10, 1000), [0..2, 2..3]);
        assert_eq!(pack(&[10, 5000, 10, 10], 10, 1000), [0..1, 1..2, 2..4]);
        assert_eq!(pack(&[], 10, 1000), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_batch_body_is_the_protocols_json() {
        let (a, b, id) = (Key::Int(1), Key::parse("dl-3"), Key::Int(17));
        let members = [
            Member {
                key: &a,
                remote_id: None,
                idempotency_key: "pi:c:1:fp-1",
                version: "fp-1",
                record: br#"{"id":1}"#,
            },
            Member {
                key: &b,
                remote_id: Some(&id),
                idempotency_key: "pi:c:dl-3:v",
                version: "v\"2",
                record: br#"{"id":"dl-3","p":5}"#,
            },
        ];
        let parsed: Value = serde_json::from_slice(&body("pi", "c", &members)).unwrap();
        assert_eq!(
            parsed,
            json!({"device_id": "pi", "collection": "c", "records": [
                {"key": 1, "op": "create", "idempotency_key": "pi:c:1:fp-1", "version": "fp-1", "record": {"id": 1}},
                {"key": "dl-3", "op": "update", "remote_id": 17, "idempotency_key": "pi:c:dl-3:v",
                 "version": "v\"2", "record": {"id": "dl-3", "p": 5}}
            ]})
        );
        assert_eq!(key("pi", "c", &members), key("pi", "c", &members));
        assert_ne!(key("pi", "c", &members), key("pi", "c", &members[..1]));
    }

    fn answered(status: u16, body: Value) -> Reply {
        Reply::Answer {
            status,
            headers: AnswerHeaders::default(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn per_member_results_decide_each_member_and_a_missing_one_is_retried() {
        let reply = answered(
            200,
            json!({"results": [
                {"idempotency_key": "k2", "status": 422, "error": "progress: must be <= 100"},
                {"idempotency_key": "k1", "status": 201, "id": 42}
            ]}),
        );
        let Answer::Members(outcomes) =
            answer(&reply, &["k1", "k2", "k3"], &[10, 20, 30], "/id", 0)
        else {
            panic!()
        };
        assert!(
            matches!(
                &outcomes[0],
                Outcome::Delivered {
                    status: 201,
                    remote_id: Some(Key::Int(42)),
                    bytes: 10,
                    ..
                }
            ),
            "{:?}",
            outcomes[0]
        );
        assert!(
            matches!(&outcomes[1], Outcome::Failed { status: Some(422), error, .. } if error.contains("progress")),
            "{:?}",
            outcomes[1]
        );
        assert!(
            matches!(
                &outcomes[2],
                Outcome::Retry {
                    maybe_processed: true,
                    ..
                }
            ),
            "{:?}",
            outcomes[2]
        );
    }

    #[test]
    fn answers_to_the_whole_batch() {
        let all_ok = answer(&answered(204, json!(null)), &["a", "b"], &[1, 1], "/id", 0);
        assert!(
            matches!(&all_ok, Answer::Members(o) if o.iter().all(|o| matches!(o, Outcome::Delivered { .. })))
        );
        assert_eq!(
            answer(&answered(413, json!({})), &["a"], &[1], "/id", 0),
            Answer::Split
        );
        let busy = answer(&answered(503, json!({})), &["a", "b"], &[1, 1], "/id", 0);
        assert!(
            matches!(&busy, Answer::Members(o) if o.iter().all(|o| matches!(o, Outcome::Retry { maybe_processed: true, .. })))
        );
        let refused = answer(&answered(401, json!({})), &["a"], &[1], "/id", 0);
        assert!(
            matches!(&refused, Answer::Members(o) if matches!(o[0], Outcome::Failed { status: Some(401), .. }))
        );
        let lost = Reply::Failure {
            kind: super::super::transport::FailureKind::Timeout,
            error: "timeout".into(),
            maybe_processed: true,
        };
        assert!(
            matches!(answer(&lost, &["a"], &[1], "/id", 0), Answer::Members(o) if matches!(o[0], Outcome::Retry { transport: true, .. }))
        );
    }
}
