//! What the JSON backend keeps beside the records, to and from JSON: tracking rows
//! (`sync_tracking.json`, as the seed `003_…` service's rows read in JSON), the
//! store's identity and the migration baseline (`ferry_baseline.json`). Conversions
//! only: this file reads and writes none of the store's files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use serde_json::{Map, Value};

use crate::store::record::{self, Key};
use crate::store::{now_ms, Baseline, Claim, ClaimState, Status, StoreError, Tracking};

pub(super) fn tracking_to_json(row: &Tracking) -> Value {
    let mut map = Map::new();
    map.insert("status".into(), row.status.as_str().into());
    map.insert(
        "remote_id".into(),
        row.remote_id.as_ref().map_or(Value::Null, Key::to_value),
    );
    map.insert("sync_date".into(), row.sync_date.clone().into());
    map.insert("error_message".into(), row.error_message.clone().into());
    map.insert("attempts".into(), row.attempts.into());
    map.insert("next_attempt_at".into(), row.next_attempt_at.into());
    map.insert("version".into(), row.version.clone().into());
    if let Some(cause) = &row.error_cause {
        map.insert("error_cause".into(), cause.clone().into());
    }
    if let Some(fingerprint) = row.fingerprint {
        map.insert("fingerprint".into(), format!("{fingerprint:016x}").into());
    }
    map.insert("last_http_status".into(), row.last_http_status.into());
    map.insert("bytes_sent".into(), row.bytes_sent.into());
    map.insert("created".into(), row.created.into());
    if let Some(claim) = &row.claim {
        let mut c = Map::new();
        c.insert("key".into(), claim.key.clone().into());
        c.insert("version".into(), claim.version.clone().into());
        c.insert(
            "fingerprint".into(),
            format!("{:016x}", claim.fingerprint).into(),
        );
        c.insert(
            "body_hash".into(),
            format!("{:016x}", claim.body_hash).into(),
        );
        c.insert("state".into(), claim.state.as_str().into());
        if let Some(body) = &claim.body {
            c.insert("body".into(), record::bytes_value(body));
        }
        map.insert("claim".into(), Value::Object(c));
    }
    Value::Object(map)
}

pub(super) fn tracking_from_json(
    path: &Path,
    collection: &str,
    key: &str,
    value: &Value,
) -> Result<Tracking, StoreError> {
    let bad = |what: &str| StoreError::BadJsonShape {
        path: path.to_path_buf(),
        message: format!("tracking of {collection} record {key:?}: {what}"),
    };
    let row = value.as_object().ok_or_else(|| bad("expected an object"))?;
    let text = |name: &str| row.get(name).and_then(Value::as_str).map(str::to_string);
    let number = |name: &str| row.get(name).and_then(Value::as_i64);
    let status = text("status")
        .as_deref()
        .and_then(Status::parse)
        .ok_or_else(|| bad("status must be \"pending\", \"success\" or \"failed\""))?;
    Ok(Tracking {
        collection: collection.to_string(),
        key: Key::parse(key),
        status,
        remote_id: match row.get("remote_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(Key::from_value(v).map_err(|e| bad(&format!("remote_id: {e}")))?),
        },
        sync_date: text("sync_date").unwrap_or_default(),
        error_message: text("error_message"),
        attempts: number("attempts")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        next_attempt_at: number("next_attempt_at"),
        version: text("version"),
        fingerprint: text("fingerprint").and_then(|h| u64::from_str_radix(&h, 16).ok()),
        error_cause: text("error_cause"),
        last_http_status: number("last_http_status").and_then(|n| u16::try_from(n).ok()),
        bytes_sent: number("bytes_sent")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        // Rows written before ferry recorded it: a delivery, or a remote id, says so.
        created: match row.get("created") {
            Some(value) => value.as_bool().unwrap_or(false),
            None => {
                status == Status::Success
                    || !matches!(row.get("remote_id"), None | Some(Value::Null))
            }
        },
        claim: match row.get("claim") {
            None | Some(Value::Null) => None,
            Some(Value::Object(c)) => {
                let field = |name: &str| c.get(name).and_then(Value::as_str);
                Some(Claim {
                    key: field("key")
                        .ok_or_else(|| bad("claim.key must be a string"))?
                        .to_string(),
                    version: field("version").unwrap_or("").to_string(),
                    fingerprint: field("fingerprint")
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .unwrap_or(0),
                    body_hash: field("body_hash")
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .unwrap_or(0),
                    state: ClaimState::parse(field("state").unwrap_or("")),
                    body: c
                        .get("body")
                        .and_then(record::decode_bytes)
                        .and_then(Result::ok),
                })
            }
            Some(_) => return Err(bad("claim must be an object")),
        },
    })
}

/// A new store identity: 128 random bits (the time and pid if /dev/urandom cannot be
/// read: it only has to differ from other stores' ids).
pub(super) fn new_store_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let mut hash = record::Fnv::new();
        hash.write(&now_ms().to_le_bytes());
        hash.write(&std::process::id().to_le_bytes());
        bytes[..8].copy_from_slice(&hash.finish().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("json-{hex}")
}

/// A baseline as `ferry_baseline.json` keeps it: per key the fingerprint both sides
/// share (`"fp-…"`), or `[source, target]` where they differ (`null`: absent).
pub(super) fn baseline_to_json(baseline: &Baseline) -> Value {
    let fp = |v: Option<u64>| v.map_or(Value::Null, |v| record::fingerprint_version(v).into());
    let records: Map<String, Value> = baseline
        .records
        .iter()
        .map(|(key, (source, target))| {
            let value = if source == target {
                fp(*source)
            } else {
                Value::Array(vec![fp(*source), fp(*target)])
            };
            (key.to_string(), value)
        })
        .collect();
    let mut map = Map::new();
    map.insert("generation".into(), baseline.generation.into());
    map.insert("source_id".into(), baseline.source_id.clone().into());
    map.insert("target_id".into(), baseline.target_id.clone().into());
    map.insert("source_mark".into(), baseline.source_mark.clone().into());
    map.insert("records".into(), Value::Object(records));
    Value::Object(map)
}

pub(super) fn baseline_from_json(value: &Value) -> Result<Baseline, String> {
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{name:?} must be a string"))
    };
    let fp = |v: &Value| -> Result<Option<u64>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => s
                .strip_prefix(record::FINGERPRINT_PREFIX)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .map(Some)
                .ok_or_else(|| format!("{s:?} is not a fingerprint")),
            other => Err(format!(
                "expected a fingerprint, found {}",
                record::type_name(other)
            )),
        }
    };
    let mut records = BTreeMap::new();
    let entries = value
        .get("records")
        .and_then(Value::as_object)
        .ok_or("\"records\" must be an object")?;
    for (key, entry) in entries {
        let pair = match entry {
            Value::Array(pair) if pair.len() == 2 => (fp(&pair[0])?, fp(&pair[1])?),
            single => {
                let both = fp(single)?;
                (both, both)
            }
        };
        records.insert(Key::parse(key), pair);
    }
    Ok(Baseline {
        generation: value
            .get("generation")
            .and_then(Value::as_u64)
            .ok_or("\"generation\" must be a whole number")?,
        source_id: text("source_id")?,
        target_id: text("target_id")?,
        source_mark: text("source_mark")?,
        records,
    })
}
