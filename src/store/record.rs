//! Records, their keys and versions: the data model both backends share.
//!
//! A record is a JSON object. Bytes (SQLite BLOBs) are carried inside it as
//! `{"$base64": "<standard base64>"}`, so they round-trip exactly through the JSON
//! backend and `ferry put`/`get`; blob fields are sent to the server as plain base64.
//!
//! **Keys.** A key is a non-empty string or a 64-bit signed integer. An integer and its
//! decimal string are the *same* key: `42` and `"42"` name one record, as they do in a
//! JSON object (whose keys are strings) and in a SQLite INTEGER column (which stores
//! `'42'` as 42). `"042"`, `"+42"` and `"4.2"` stay strings, distinct from 42.

use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};

pub type Record = Map<String, Value>;

/// The tag of a bytes value inside a record.
pub const BYTES_TAG: &str = "$base64";

/// A record's identity within its collection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    /// The key a text names: an integer when the text is exactly an integer's decimal
    /// spelling, a string otherwise.
    pub fn parse(text: &str) -> Key {
        match text.parse::<i64>() {
            Ok(n) if n.to_string() == text => Key::Int(n),
            _ => Key::Text(text.to_string()),
        }
    }

    /// The key held by a record's key field.
    pub fn from_value(value: &Value) -> Result<Key, String> {
        match value {
            Value::String(s) if s.is_empty() => Err("the key is an empty string".into()),
            Value::String(s) => Ok(Key::parse(s)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Key::Int(i)),
                None => Err(format!(
                    "the key {n} is not an integer within the 64-bit signed range; use a string"
                )),
            },
            other => Err(format!(
                "the key must be a string or an integer (got {})",
                type_name(other)
            )),
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Key::Int(i) => Value::from(*i),
            Key::Text(s) => Value::String(s.clone()),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => f.write_str(s),
        }
    }
}

/// The key of `record` in a collection whose key field is `field`.
pub fn key_of(record: &Record, field: &str) -> Result<Key, String> {
    match record.get(field) {
        None | Some(Value::Null) => Err(format!("the record has no key field {field:?}")),
        Some(value) => Key::from_value(value).map_err(|e| format!("field {field:?}: {e}")),
    }
}

/// A record's `updated_at` value as text, or `None` for append-only collections (and
/// records without the field). It matches SQLite's `CAST(x AS TEXT)` for strings and
/// integers.
pub fn updated_at_text(record: &Record, updated_at: Option<&str>) -> Option<String> {
    match record.get(updated_at?)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        other => Some(other.to_string()),
    }
}

/// A record's version: what `sync_tracking.version` stores for a delivery and what the
/// Idempotency-Key carries. It is the record's `updated_at` text when it has one;
/// otherwise (append-only collections, records without the field) a fingerprint of its
/// content, `fp-<16 hex digits>`, so that a record that changes, or a key that is used
/// again for another record, is told apart from what was delivered.
pub fn version(record: &Record, updated_at: Option<&str>, blob_fields: &[&str]) -> String {
    version_and_fingerprint(record, updated_at, blob_fields).0
}

/// A record's [`version`] and [`fingerprint`], computed once.
pub fn version_and_fingerprint(
    record: &Record,
    updated_at: Option<&str>,
    blob_fields: &[&str],
) -> (String, u64) {
    let fingerprint = fingerprint(record, blob_fields);
    let version = match updated_at_text(record, updated_at) {
        Some(text) => text,
        None => fingerprint_version(fingerprint),
    };
    (version, fingerprint)
}

/// The version text of a content fingerprint.
pub fn fingerprint_version(fingerprint: u64) -> String {
    format!("{FINGERPRINT_PREFIX}{fingerprint:016x}")
}

/// Versions that are content fingerprints start with this.
pub const FINGERPRINT_PREFIX: &str = "fp-";

/// A fingerprint of a record's content that both backends compute alike, whatever the
/// spelling a value took on its way through them: field names compared without case
/// (SQLite columns), `null` and absent fields the same, booleans as 0/1, numbers by
/// value (`1.0`, `1` and the text `"1"` alike, as a SQLite column's affinity may turn
/// one into another), bytes by content. A field named in `blob_fields` counts by its
/// length only, so the store can fingerprint a row without reading its BLOBs. Stable
/// across ferry versions (FNV-1a): it is stored in `sync_tracking`.
pub fn fingerprint(record: &Record, blob_fields: &[&str]) -> u64 {
    fingerprint_fields(record.iter().map(|(name, value)| {
        let part = if blob_fields.iter().any(|b| b.eq_ignore_ascii_case(name)) {
            match value {
                Value::Null => Part::Value(value),
                Value::String(s) => Part::Length(s.len() as u64),
                other => match decode_bytes(other) {
                    Some(Ok(bytes)) => Part::Length(bytes.len() as u64),
                    _ => Part::Length(other.to_string().len() as u64),
                },
            }
        } else {
            Part::Value(value)
        };
        (name.as_str(), part)
    }))
}

/// A field as [`fingerprint_fields`] takes it.
pub enum Part<'a> {
    Value(&'a Value),
    /// A blob field, by its length in bytes (SQLite's `octet_length`).
    Length(u64),
}

/// [`fingerprint`] over fields given one by one: the SQLite store passes a blob's
/// length without reading the blob.
pub fn fingerprint_fields<'a>(fields: impl IntoIterator<Item = (&'a str, Part<'a>)>) -> u64 {
    let mut fields: Vec<(String, Part<'a>)> = fields
        .into_iter()
        .filter(|(_, part)| !matches!(part, Part::Value(Value::Null)))
        .map(|(name, part)| (name.to_lowercase(), part))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Fnv::new();
    for (name, part) in fields {
        hash.write(name.as_bytes());
        hash.write(&[0]);
        match part {
            Part::Length(len) => {
                hash.write(b"#len");
                hash.write(&len.to_le_bytes());
            }
            Part::Value(value) => canonical_value(value, &mut hash),
        }
        hash.write(&[0xff]);
    }
    hash.finish()
}

/// FNV-1a, 64 bits.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

/// The text a scalar is fingerprinted as: numbers (and numeric text) by value.
fn canonical_value(value: &Value, hash: &mut Fnv) {
    let number = |text: &str| -> Option<String> {
        if let Ok(i) = text.parse::<i64>() {
            return Some(i.to_string());
        }
        let f: f64 = text.parse().ok()?;
        if !f.is_finite() {
            return None;
        }
        Some(if f.fract() == 0.0 && f.abs() < 9.0e15 {
            (f as i64).to_string()
        } else {
            f.to_string()
        })
    };
    match value {
        Value::Null => {}
        Value::Bool(b) => hash.write(if *b { b"n1" } else { b"n0" }),
        Value::Number(n) => {
            let text = n.to_string();
            hash.write(b"n");
            hash.write(number(&text).unwrap_or(text).as_bytes());
        }
        Value::String(s) => match number(s) {
            Some(n) if !s.trim().is_empty() && s.trim() == s => {
                hash.write(b"n");
                hash.write(n.as_bytes());
            }
            _ => {
                hash.write(b"s");
                hash.write(s.as_bytes());
            }
        },
        other => match decode_bytes(other) {
            Some(Ok(bytes)) => {
                hash.write(b"b");
                hash.write(&bytes);
            }
            _ => {
                // Arrays and objects: as their JSON text (SQLite keeps them as text).
                hash.write(b"s");
                hash.write(other.to_string().as_bytes());
            }
        },
    }
}

pub fn bytes_value(bytes: &[u8]) -> Value {
    let mut tagged = Map::with_capacity(1);
    tagged.insert(
        BYTES_TAG.to_string(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
    Value::Object(tagged)
}

/// The base64 text of a bytes value, if `value` is one.
pub fn bytes_base64(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(BYTES_TAG)?.as_str(),
        _ => None,
    }
}

/// The bytes of a bytes value: `None` if `value` is not one, `Some(Err)` if its base64
/// is malformed.
pub fn decode_bytes(value: &Value) -> Option<Result<Vec<u8>, String>> {
    let text = bytes_base64(value)?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64 in a {BYTES_TAG} value: {e}")),
    )
}

pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) if bytes_base64(value).is_some() => "bytes",
        Value::Object(_) => "an object",
    }
}

/// Orders values as SQLite's `ORDER BY` does, so both backends push in the same order:
/// null, then numbers (booleans as 0/1), then text, then bytes; arrays and objects sort
/// as their JSON text.
pub fn sql_order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn class(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_) | Value::Number(_)) => 1,
            Some(v) if bytes_base64(v).is_some() => 3,
            Some(_) => 2,
        }
    }
    fn number(v: &Value) -> f64 {
        match v {
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Number(n) => n.as_f64().unwrap_or(0.0),
            _ => 0.0,
        }
    }
    fn text(v: &Value) -> std::borrow::Cow<'_, str> {
        match v {
            Value::String(s) => s.as_str().into(),
            other => other.to_string().into(),
        }
    }
    match class(a).cmp(&class(b)) {
        Ordering::Equal => {}
        unequal => return unequal,
    }
    match (a, b) {
        (Some(a), Some(b)) => match class(Some(a)) {
            1 => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => number(a).total_cmp(&number(b)),
            },
            2 => text(a).cmp(&text(b)),
            3 => {
                let bytes = |v| decode_bytes(v).and_then(Result::ok).unwrap_or_default();
                bytes(a).cmp(&bytes(b))
            }
            _ => Ordering::Equal,
        },
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_integer_and_its_decimal_string_are_one_key() {
        assert_eq!(
            Key::from_value(&json!(42)).unwrap(),
            Key::from_value(&json!("42")).unwrap()
        );
        assert_eq!(Key::parse("42"), Key::Int(42));
        assert_eq!(Key::parse("-7"), Key::Int(-7));
        for text in ["042", "+42", "4.2", "abc", "9223372036854775808", "-0"] {
            assert_eq!(Key::parse(text), Key::Text(text.into()), "{text}");
        }
        assert_eq!(Key::parse("042").to_string(), "042");
    }

    #[test]
    fn keys_that_cannot_be_keys_are_refused() {
        for bad in [
            json!(""),
            json!(1.5),
            json!(true),
            json!([1]),
            json!(18446744073709551615u64),
        ] {
            assert!(Key::from_value(&bad).is_err(), "{bad}");
        }
        let record: Record = serde_json::from_value(json!({"name": "x"})).unwrap();
        assert!(key_of(&record, "id")
            .unwrap_err()
            .contains("no key field \"id\""));
    }

    #[test]
    fn bytes_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        let value = bytes_value(&bytes);
        assert_eq!(decode_bytes(&value).unwrap().unwrap(), bytes);
        assert_eq!(type_name(&value), "bytes");
        assert!(decode_bytes(&json!({"$base64": "!!"})).unwrap().is_err());
        assert!(decode_bytes(&json!({"a": 1})).is_none());
    }

    #[test]
    fn versions_match_sqlite_text_casts() {
        let record: Record =
            serde_json::from_value(json!({"u": "2026-01-01 10:00:00", "n": 17, "b": true}))
                .unwrap();
        assert_eq!(
            updated_at_text(&record, Some("u")).as_deref(),
            Some("2026-01-01 10:00:00")
        );
        assert_eq!(updated_at_text(&record, Some("n")).as_deref(), Some("17"));
        assert_eq!(updated_at_text(&record, Some("b")).as_deref(), Some("1"));
        assert_eq!(updated_at_text(&record, Some("missing")), None);
        assert_eq!(updated_at_text(&record, None), None);
        assert_eq!(version(&record, Some("u"), &[]), "2026-01-01 10:00:00");
        assert!(version(&record, None, &[]).starts_with(FINGERPRINT_PREFIX));
    }

    #[test]
    fn fingerprints_ignore_how_a_backend_spells_a_value() {
        let fp = |v: Value| fingerprint(&serde_json::from_value(v).unwrap(), &["clip"]);
        let json_side = fp(
            json!({"id": 7, "Flag": true, "n": 1.0, "s": "x", "gone": null,
            "raw": bytes_value(b"\x00\x01"), "clip": bytes_value(&[9; 300])}),
        );
        // As a SQLite columns table hands it back: other case, 1 for true, 1 for 1.0,
        // "7" in a TEXT column, a NULL column, the clip's length only.
        let sqlite_side = fp(json!({"id": "7", "flag": 1, "n": 1, "s": "x",
            "raw": bytes_value(b"\x00\x01"), "clip": "A".repeat(300)}));
        assert_eq!(json_side, sqlite_side);
        assert_ne!(
            json_side,
            fp(json!({"id": 7, "Flag": true, "n": 1.5, "s": "x",
            "raw": bytes_value(b"\x00\x01"), "clip": bytes_value(&[9; 300])}))
        );
        assert_ne!(fp(json!({"s": "1"})), fp(json!({"s": " 1"})));
        assert_ne!(
            fp(json!({"a": "x", "b": "y"})),
            fp(json!({"a": "xb", "": "y"}))
        );
        // Stable across builds: it is stored.
        assert_eq!(fp(json!({"id": 1})), 0x39d0_b661_c5a5_c3fa);
    }

    #[test]
    fn order_follows_sqlite_classes() {
        let values = [
            json!(null),
            json!(false),
            json!(2),
            json!(2.5),
            json!(10),
            json!("10"),
            json!("9"),
            bytes_value(b"a"),
        ];
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                assert_eq!(sql_order(Some(a), Some(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
    }
}
