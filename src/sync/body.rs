//! Request bodies. A small payload is serialised into one buffer. A large one — a
//! record carrying a camera clip — is streamed: its long strings (base64 blobs) are
//! sent straight from the payload in 64 KiB slices, so a blob is held once in memory
//! (as the base64 text it was read as), never copied into a second, whole body.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::store::Record;

/// Payloads up to this size are sent from one buffer.
pub const STREAM_THRESHOLD: usize = 256 * 1024;
/// Strings at least this long are streamed from the payload rather than copied.
const LONG_STRING: usize = 16 * 1024;
const SLICE: usize = 64 * 1024;

enum Segment {
    Owned(Vec<u8>),
    /// `payload[field][start..end]`, a string that needs no JSON escaping.
    Slice {
        field: String,
        start: usize,
        end: usize,
    },
}

/// A payload ready to send, and its exact length in bytes.
pub struct JsonBody {
    payload: Arc<Record>,
    segments: Vec<Segment>,
    len: usize,
}

fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x80)
}

impl JsonBody {
    pub fn new(payload: Record) -> Result<JsonBody, serde_json::Error> {
        let mut segments = Vec::new();
        let mut pending = Vec::with_capacity(1024);
        pending.push(b'{');
        let mut len = 0usize;
        for (i, (name, value)) in payload.iter().enumerate() {
            if i > 0 {
                pending.push(b',');
            }
            serde_json::to_writer(&mut pending, name)?;
            pending.push(b':');
            match value {
                Value::String(text) if text.len() >= LONG_STRING && plain(text) => {
                    pending.push(b'"');
                    len += pending.len();
                    segments.push(Segment::Owned(std::mem::take(&mut pending)));
                    let mut start = 0;
                    while start < text.len() {
                        let end = (start + SLICE).min(text.len());
                        segments.push(Segment::Slice {
                            field: name.clone(),
                            start,
                            end,
                        });
                        start = end;
                    }
                    len += text.len();
                    pending.push(b'"');
                }
                other => serde_json::to_writer(&mut pending, other)?,
            }
        }
        pending.push(b'}');
        len += pending.len();
        segments.push(Segment::Owned(pending));
        Ok(JsonBody {
            payload: Arc::new(payload),
            segments,
            len,
        })
    }

    /// A body already serialised: the one a claimed create was first sent with.
    pub fn from_bytes(bytes: Vec<u8>) -> JsonBody {
        JsonBody {
            payload: Arc::new(Record::new()),
            len: bytes.len(),
            segments: vec![Segment::Owned(bytes)],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slice(payload: &Record, field: &str, start: usize, end: usize) -> Bytes {
        match payload.get(field) {
            Some(Value::String(text)) => Bytes::copy_from_slice(&text.as_bytes()[start..end]),
            _ => Bytes::new(),
        }
    }

    /// FNV-1a of the body's bytes, without putting them in one buffer: a claimed
    /// attempt records it, to tell a retry with the same body from a changed one.
    pub fn hash(&self) -> u64 {
        let mut hash = crate::store::record::Fnv::new();
        for segment in &self.segments {
            match segment {
                Segment::Owned(bytes) => hash.write(bytes),
                Segment::Slice { field, start, end } => {
                    if let Some(Value::String(text)) = self.payload.get(field) {
                        hash.write(&text.as_bytes()[*start..*end]);
                    }
                }
            }
        }
        hash.finish()
    }

    /// One buffer: for small payloads, and for tests.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for segment in &self.segments {
            match segment {
                Segment::Owned(bytes) => out.extend_from_slice(bytes),
                Segment::Slice { field, start, end } => {
                    out.extend_from_slice(&Self::slice(&self.payload, field, *start, *end))
                }
            }
        }
        out
    }

    pub fn into_body(self) -> reqwest::Body {
        if self.len <= STREAM_THRESHOLD {
            return reqwest::Body::from(self.to_vec());
        }
        let payload = self.payload;
        let chunks = self.segments.into_iter().map(move |segment| {
            Ok::<Bytes, std::io::Error>(match segment {
                Segment::Owned(bytes) => Bytes::from(bytes),
                Segment::Slice { field, start, end } => Self::slice(&payload, &field, start, end),
            })
        });
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stream_is_the_same_json_as_serde_writes() {
        let blob = "QUJD".repeat(100_000);
        let text_with_quotes = "say \"hi\" \\ ".repeat(5_000);
        let payload: Record = serde_json::from_value(json!({
            "id": 1, "video_data": blob, "note": text_with_quotes, "nested": {"a": [1, 2.5, null]},
            "short": "é"
        }))
        .unwrap();
        let expected = serde_json::to_vec(&payload).unwrap();
        let body = JsonBody::new(payload).unwrap();
        assert_eq!(body.len(), expected.len());
        assert_eq!(body.to_vec(), expected);
        let mut whole = crate::store::record::Fnv::new();
        whole.write(&expected);
        assert_eq!(body.hash(), whole.finish());
        assert!(
            body.segments
                .iter()
                .filter(|s| matches!(s, Segment::Slice { .. }))
                .count()
                >= 6
        );
    }

    #[test]
    fn small_payloads_are_one_segment() {
        let payload: Record = serde_json::from_value(json!({"id": "x", "v": 1})).unwrap();
        let body = JsonBody::new(payload).unwrap();
        assert_eq!(body.segments.len(), 1);
        assert_eq!(body.to_vec(), br#"{"id":"x","v":1}"#);
    }
}
