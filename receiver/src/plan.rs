//! What a write does, decided as a pure function over what the database holds: the
//! Idempotency-Key's stored answer (IETF draft), the record's row (unique per device
//! and key), the version order (PROTOCOL.md §4) and the terminal state (seed 004).
//! Both storages fetch the same facts, call [`decide`], and carry out its decision in
//! the same transaction; the conformance suite checks they agree.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Terminal;
use crate::rules;
use crate::version;

/// What the request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /api/<collection>`, or a batch member with `"op": "create"`.
    Create,
    /// `PUT /api/<collection>/<id>`, or a batch member with `"op": "update"`.
    Update(i64),
}

/// A key that a coalesced write answers too: an earlier state of the same record that
/// a later one replaced before it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub idempotency_key: String,
    pub fingerprint: String,
}

/// One record write: a single-record request, or one member of a batch.
#[derive(Clone, Debug)]
pub struct Member {
    pub op: Op,
    pub device: String,
    /// The record's key on the box; `None` for a client that sends no key (seed 003's
    /// own client): such a record is never matched with another.
    pub key: Option<String>,
    pub version: Option<String>,
    /// [`version::order_key`] of `version`.
    pub order: String,
    pub idempotency_key: Option<String>,
    /// What "the same request" means for the key: see [`fingerprint`].
    pub fingerprint: String,
    /// The record as stored: its JSON text without the whitespace between tokens.
    pub record_text: String,
    pub superseded: Vec<Superseded>,
}

impl Member {
    pub fn new(
        collection: &str,
        op: Op,
        device: String,
        key: Option<String>,
        version: Option<String>,
        idempotency_key: Option<String>,
        record: Value,
    ) -> Member {
        Member::from_text(
            collection,
            op,
            device,
            key,
            version,
            idempotency_key,
            compact_json(&record.to_string()),
        )
    }

    /// A member whose record is JSON text as received (see [`compact_json`]).
    pub fn from_text(
        collection: &str,
        op: Op,
        device: String,
        key: Option<String>,
        version: Option<String>,
        idempotency_key: Option<String>,
        record_text: String,
    ) -> Member {
        Member {
            op,
            order: version::order_key(version.as_deref()),
            fingerprint: fingerprint(collection, op, &record_text),
            device,
            key,
            version,
            idempotency_key,
            record_text,
            superseded: Vec::new(),
        }
    }

    /// What two writes of the same record share: the lock and the coalescing slot.
    pub fn identity(&self) -> Option<(&str, &str)> {
        self.key.as_deref().map(|k| (self.device.as_str(), k))
    }
}

/// JSON text without the whitespace between its tokens, in one pass and one
/// allocation (no parse: a batch's records are taken as the text they came in). What
/// is inside strings, escapes included, is kept as it is.
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// The request a key was first used with: the collection, the operation and the
/// record's [`compact_json`] text (so whitespace and gzip do not count, and a batch
/// member and a single request with the same record compare equal). 128 bits of
/// SHA-256, hex.
pub fn fingerprint(collection: &str, op: Op, record_text: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(collection.as_bytes());
    hasher.update(b"\n");
    match op {
        Op::Create => hasher.update(b"create"),
        Op::Update(id) => hasher.update(format!("update {id}").as_bytes()),
    }
    hasher.update(b"\n");
    hasher.update(record_text.as_bytes());
    crate::tokens::hex(&hasher.finalize()[..16])
}

/// An Idempotency-Key's stored answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub fingerprint: String,
    pub status: u16,
    /// The answer's body, JSON text.
    pub answer: String,
    /// The record the first request created or wrote.
    pub record_id: Option<i64>,
}

/// A record's row, as far as deciding needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Existing {
    pub id: i64,
    pub device: String,
    pub key: Option<String>,
    pub order: String,
    /// The value of the collection's terminal field, when it has one.
    pub terminal_value: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The stored version is newer.
    Older,
    /// The stored record is in a terminal state.
    Terminal,
}

/// What to do with one member.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The key was used with this very request: its first answer again.
    Replay { status: u16, answer: String },
    /// The key was used with another request: 422, naming what the key wrote.
    KeyReused { id: Option<i64> },
    /// A new row.
    Insert,
    /// Replace row `id`'s record.
    Update { id: i64 },
    /// Keep row `id` as it is, and answer as if written.
    Ignore { id: i64, why: Ignored },
    /// Refused (404, 400) without writing; the key stays unused.
    Refuse { status: u16, error: String },
}

/// Decides one member. `by_identity` is the row with the member's (device, key);
/// `by_id` the row an update names.
pub fn decide(
    member: &Member,
    stored_key: Option<&StoredKey>,
    by_identity: Option<&Existing>,
    by_id: Option<&Existing>,
    terminal: Option<&Terminal>,
) -> Decision {
    if let Some(stored) = stored_key {
        return if stored.fingerprint == member.fingerprint {
            Decision::Replay {
                status: stored.status,
                answer: stored.answer.clone(),
            }
        } else {
            Decision::KeyReused {
                id: stored.record_id,
            }
        };
    }
    let target = match member.op {
        Op::Create => by_identity,
        Op::Update(id) => match by_id {
            Some(row) => {
                if let (Some(key), Some(row_key)) = (member.key.as_deref(), row.key.as_deref()) {
                    if row_key != key || row.device != member.device {
                        return Decision::Refuse {
                            status: 400,
                            error: format!(
                                "record {id} is {}:{row_key}, but the Idempotency-Key names {}:{key}; \
                                 the remote id does not belong to this record",
                                row.device, member.device
                            ),
                        };
                    }
                }
                Some(row)
            }
            // The id is unknown, but the record is here under another id (a client
            // whose ids came from another server): write that row.
            None => match by_identity {
                Some(row) => Some(row),
                None => {
                    return Decision::Refuse {
                        status: 404,
                        error: format!(
                            "no record {id} here; send the record with POST to create it"
                        ),
                    }
                }
            },
        },
    };
    let Some(row) = target else {
        return Decision::Insert;
    };
    if let Some(terminal) = terminal {
        if rules::is_terminal(row.terminal_value.as_ref(), terminal) {
            return Decision::Ignore {
                id: row.id,
                why: Ignored::Terminal,
            };
        }
    }
    if !version::not_older(&member.order, &row.order) {
        return Decision::Ignore {
            id: row.id,
            why: Ignored::Older,
        };
    }
    Decision::Update { id: row.id }
}

/// What a member came to, for the answer and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Created,
    Updated,
    IgnoredOlder,
    IgnoredTerminal,
    Replayed,
    KeyReused,
    Refused,
    InProgress,
    Invalid,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Created => "created",
            Effect::Updated => "updated",
            Effect::IgnoredOlder => "ignored_older",
            Effect::IgnoredTerminal => "ignored_terminal",
            Effect::Replayed => "replayed",
            Effect::KeyReused => "key_reused",
            Effect::Refused => "refused",
            Effect::InProgress => "in_progress",
            Effect::Invalid => "invalid",
        }
    }
}

/// The answer to one member (or to a single-record request).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
    pub effect: Effect,
}

impl Answer {
    pub fn written(status: u16, id: i64, effect: Effect) -> Answer {
        Answer {
            status,
            body: json!({ "id": id }),
            replayed: false,
            effect,
        }
    }

    pub fn error(status: u16, error: impl Into<String>, effect: Effect) -> Answer {
        Answer {
            status,
            body: json!({ "error": error.into() }),
            replayed: false,
            effect,
        }
    }

    pub fn in_progress() -> Answer {
        Answer::error(
            409,
            "a request with this Idempotency-Key (or another write of this record) is being processed; try again later with the same key",
            Effect::InProgress,
        )
    }

    /// The answer a decision comes to, given the id a new row got.
    pub fn of(decision: &Decision, inserted: Option<i64>) -> Answer {
        match decision {
            Decision::Replay { status, answer } => Answer {
                status: *status,
                body: serde_json::from_str(answer).unwrap_or_else(|_| json!({})),
                replayed: true,
                effect: Effect::Replayed,
            },
            Decision::KeyReused { id } => {
                let mut body = json!({
                    "error": "this Idempotency-Key was used before with another request body; \
                              the first request's record is named by \"id\""
                });
                if let Some(id) = id {
                    body["id"] = json!(id);
                }
                Answer {
                    status: 422,
                    body,
                    replayed: false,
                    effect: Effect::KeyReused,
                }
            }
            Decision::Insert => match inserted {
                Some(id) => Answer::written(201, id, Effect::Created),
                None => Answer::error(500, "the new row got no id", Effect::Refused),
            },
            Decision::Update { id } => Answer::written(200, *id, Effect::Updated),
            Decision::Ignore { id, why } => Answer::written(
                200,
                *id,
                match why {
                    Ignored::Older => Effect::IgnoredOlder,
                    Ignored::Terminal => Effect::IgnoredTerminal,
                },
            ),
            Decision::Refuse { status, error } => Answer::error(*status, error, Effect::Refused),
        }
    }

    /// Is this an answer whose key is kept (the request was processed)?
    pub fn keeps_key(&self) -> bool {
        matches!(
            self.effect,
            Effect::Created | Effect::Updated | Effect::IgnoredOlder | Effect::IgnoredTerminal
        )
    }

    pub fn id(&self) -> Option<i64> {
        self.body.get("id").and_then(Value::as_i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(op: Op, version: &str, body: Value) -> Member {
        Member::new(
            "downloads",
            op,
            "box".into(),
            Some("dl-1".into()),
            Some(version.into()),
            Some(format!("box:downloads:dl-1:{version}")),
            body,
        )
    }

    fn row(id: i64, version: &str, status: &str) -> Existing {
        Existing {
            id,
            device: "box".into(),
            key: Some("dl-1".into()),
            order: version::order_key(Some(version)),
            terminal_value: Some(json!(status)),
        }
    }

    fn terminal() -> Terminal {
        Terminal {
            field: "status".into(),
            values: vec!["completed".into(), "failed".into()],
        }
    }

    #[test]
    fn a_new_record_is_inserted_and_an_existing_one_updated() {
        let m = member(Op::Create, "2026-01-01T00:00:01Z", json!({"a": 1}));
        assert_eq!(decide(&m, None, None, None, None), Decision::Insert);
        let existing = row(7, "2026-01-01T00:00:00Z", "running");
        assert_eq!(
            decide(&m, None, Some(&existing), None, None),
            Decision::Update { id: 7 }
        );
    }

    #[test]
    fn an_older_version_never_overwrites_a_newer_one() {
        let m = member(Op::Update(7), "2026-01-01T00:00:00Z", json!({"a": 1}));
        let newer = row(7, "2026-01-01T00:00:05Z", "running");
        assert_eq!(
            decide(&m, None, None, Some(&newer), None),
            Decision::Ignore {
                id: 7,
                why: Ignored::Older
            }
        );
    }

    #[test]
    fn nothing_changes_a_record_in_a_terminal_state() {
        let m = member(
            Op::Update(7),
            "2026-01-01T00:00:09Z",
            json!({"status": "running"}),
        );
        let done = row(7, "2026-01-01T00:00:05Z", "completed");
        assert_eq!(
            decide(&m, None, None, Some(&done), Some(&terminal())),
            Decision::Ignore {
                id: 7,
                why: Ignored::Terminal
            }
        );
    }

    #[test]
    fn a_key_replays_its_request_and_refuses_another() {
        let m = member(Op::Create, "v1", json!({"a": 1}));
        let stored = StoredKey {
            fingerprint: m.fingerprint.clone(),
            status: 201,
            answer: "{\"id\":3}".into(),
            record_id: Some(3),
        };
        assert_eq!(
            decide(&m, Some(&stored), None, None, None),
            Decision::Replay {
                status: 201,
                answer: "{\"id\":3}".into()
            }
        );
        let other = member(Op::Create, "v1", json!({"a": 2}));
        let decision = decide(&other, Some(&stored), None, None, None);
        assert_eq!(decision, Decision::KeyReused { id: Some(3) });
        let answer = Answer::of(&decision, None);
        assert_eq!(answer.status, 422);
        assert_eq!(answer.body["id"], json!(3));
    }

    #[test]
    fn an_unknown_remote_id_is_404_and_a_foreign_one_400() {
        let m = member(Op::Update(99), "v1", json!({}));
        assert!(matches!(
            decide(&m, None, None, None, None),
            Decision::Refuse { status: 404, .. }
        ));
        let mut foreign = row(99, "v0", "running");
        foreign.key = Some("dl-2".into());
        assert!(matches!(
            decide(&m, None, None, Some(&foreign), None),
            Decision::Refuse { status: 400, .. }
        ));
    }

    #[test]
    fn compact_json_drops_whitespace_between_tokens_only() {
        assert_eq!(
            compact_json("{ \"a b\" : [1, 2],\n\t\"c\": \"x \\\" y\" }"),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
        );
    }

    #[test]
    fn the_fingerprint_ignores_spelling_but_not_content() {
        let a: Value = serde_json::from_str("{\"a\": 1,  \"b\": [1, 2]}").expect("json");
        let b: Value = serde_json::from_str("{\"a\":1,\"b\":[1,2]}").expect("json");
        let ma = member(Op::Create, "v", a);
        let mb = member(Op::Create, "v", b);
        assert_eq!(ma.fingerprint, mb.fingerprint);
        let mc = member(Op::Update(1), "v", json!({"a": 1, "b": [1, 2]}));
        assert_ne!(ma.fingerprint, mc.fingerprint);
    }
}
