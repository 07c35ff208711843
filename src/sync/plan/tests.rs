use super::*;
use crate::config::{Collection, Config};
use serde_json::json;

fn collection(extra_toml: &str) -> Collection {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        format!("[[collections]]\nname = \"c\"\nendpoint = \"/c\"\n{extra_toml}"),
    )
    .unwrap();
    Config::load(&path, &[("STATE_DIRECTORY", "")])
        .unwrap()
        .collections
        .remove(0)
}

fn due(key: i64, version: Option<&str>, tracking: Option<Tracking>) -> Due {
    Due {
        key: Key::Int(key),
        record: Some(serde_json::from_value(json!({"id": key})).unwrap()),
        version: version.map(str::to_string),
        tracking,
    }
}

#[test]
fn answers_are_classified_as_the_spec_says() {
    let ok = classify(
        201,
        r#"{"id": 123, "message": "créé"}"#.as_bytes(),
        None,
        "/id",
        0,
        10,
    );
    assert_eq!(
        ok,
        Outcome::Delivered {
            status: 201,
            remote_id: Some(Key::Int(123)),
            bytes: 10
        }
    );
    for status in [408, 425, 429, 500, 502, 503, 504, 599] {
        assert!(
            matches!(
                classify(status, b"", None, "/id", 0, 1),
                Outcome::Retry {
                    transport: false,
                    ..
                }
            ),
            "{status}"
        );
    }
    for status in [400, 401, 403, 404, 409, 410, 422, 451] {
        assert!(
            matches!(
                classify(status, b"", None, "/id", 0, 1),
                Outcome::Failed { .. }
            ),
            "{status}"
        );
    }
    let Outcome::Failed { error, .. } = classify(
        422,
        b"{\"error\":\n  \"capteur is required\"}",
        None,
        "/id",
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(error, "HTTP 422: {\"error\": \"capteur is required\"}");
    let Outcome::Failed { error, .. } = classify(413, b"too big", None, "/id", 0, 900) else {
        panic!()
    };
    assert!(
        error.starts_with(
            "HTTP 413: the record (900 bytes as JSON) is larger than the server accepts"
        ),
        "{error}"
    );
}

#[test]
fn remote_ids_come_from_the_pointer() {
    assert_eq!(
        remote_id_from(br#"{"data": {"id": "abc"}}"#, "/data/id"),
        Some(Key::parse("abc"))
    );
    assert_eq!(remote_id_from(br#"{"id": 7}"#, "/id"), Some(Key::Int(7)));
    assert_eq!(remote_id_from(br#"{"id": null}"#, "/id"), None);
    assert_eq!(remote_id_from(b"not json", "/id"), None);
    assert_eq!(remote_id_from(br#"{"other": 1}"#, "/id"), None);
}

#[test]
fn retry_after_takes_seconds_or_a_date_and_is_capped() {
    assert_eq!(parse_retry_after("5", 0), Some(Duration::from_secs(5)));
    assert_eq!(parse_retry_after("999999", 0), Some(RETRY_AFTER_CAP));
    let now = crate::store::time::parse_timestamp("1994-11-06T08:49:30Z").unwrap();
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", 0), None);
}

const CAP: Duration = Duration::from_secs(300);

#[test]
fn backoff_is_capped_exponential_with_full_jitter() {
    assert_eq!(backoff(1, RETRY_BASE, CAP, 0.999_999).as_millis(), 999);
    assert_eq!(backoff(4, RETRY_BASE, CAP, 0.5), Duration::from_secs(4));
    assert_eq!(backoff(30, RETRY_BASE, CAP, 1.0), CAP);
    assert_eq!(backoff(3, RETRY_BASE, CAP, 0.0), Duration::ZERO);
    // Probes: never sooner than half the window, never beyond a minute.
    assert_eq!(probe_delay(1, 0.0), Duration::from_millis(500));
    assert_eq!(probe_delay(3, 1.0), Duration::from_secs(4));
    assert_eq!(probe_delay(40, 1.0), Duration::from_secs(60));
    let mut jitter = Jitter::new(42);
    let samples: Vec<f64> = (0..1000).map(|_| jitter.uniform()).collect();
    assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
    let mean = samples.iter().sum::<f64>() / 1000.0;
    assert!((0.4..0.6).contains(&mean), "{mean}");
}

#[test]
fn actions_follow_updates_and_throttle_fast_changes() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let post = collection("updated_at = \"u\"\nupdates = \"post\"\n");
    let now = 1_000_000;
    assert_eq!(action(&due(1, Some("v1"), None), &put, now), Action::Post);
    let mut delivered = Tracking::new("c", Key::Int(1), now - 5_000);
    delivered.status = Status::Success;
    delivered.remote_id = Some(Key::Int(99));
    delivered.version = Some("v1".into());
    delivered.sync_date = rfc3339(now - 5_000);
    assert_eq!(
        action(&due(1, Some("v2"), Some(delivered.clone())), &put, now),
        Action::Put(Key::Int(99))
    );
    assert_eq!(
        action(&due(1, Some("v2"), Some(delivered.clone())), &post, now),
        Action::Post
    );
    // Delivered 300 ms ago: the latest state goes out when a second has passed.
    delivered.sync_date = rfc3339(now - 300);
    assert_eq!(
        action(&due(1, Some("v3"), Some(delivered.clone())), &put, now),
        Action::Defer(now + 700)
    );
    // An update whose first try failed is still a PUT: the server has the record.
    let mut retrying = delivered.clone();
    retrying.status = Status::Pending;
    retrying.version = Some("v3".into());
    assert_eq!(
        action(&due(1, Some("v3"), Some(retrying)), &put, now),
        Action::Put(Key::Int(99))
    );
    let deleted = Due {
        record: None,
        ..due(1, None, None)
    };
    assert_eq!(action(&deleted, &put, now), Action::Abandon);
}

#[test]
fn idempotency_keys_are_stable_per_version() {
    assert_eq!(
        idempotency_key("pi", "evenement", &Key::Int(42), None),
        "pi:evenement:42"
    );
    assert_eq!(
        idempotency_key(
            "pi",
            "downloads",
            &Key::parse("a"),
            Some("2026-01-01 10:00:00")
        ),
        "pi:downloads:a:2026-01-01 10:00:00"
    );
}

#[test]
fn payloads_carry_device_extra_and_base64_blobs() {
    let media = collection("blob_fields = [\"video\"]\nextra = { source = \"sync_service\", device_id = \"ignored\" }\n");
    let record: Record = serde_json::from_value(json!({
        "id": 1, "video": record::bytes_value(b"\x00\x01\xff"), "source": "mine"
    }))
    .unwrap();
    let body = payload(record, &media, "raspberry-1");
    assert_eq!(
        Value::Object(body),
        json!({"id": 1, "video": "AAH/", "source": "mine", "device_id": "raspberry-1"})
    );
}

#[test]
fn tracking_follows_outcomes() {
    let now = 10_000;
    let every = RetryPolicy {
        failed_every: Duration::from_secs(3600),
        max_delay: CAP,
    };
    let first = due(1, Some("v1"), None);
    let retry = Outcome::Retry {
        status: Some(503),
        error: "HTTP 503".into(),
        retry_after: None,
        transport: false,
    };
    let row = after(&first, "c", &retry, now, every, 0.5);
    assert_eq!(
        (row.status, row.attempts, row.next_attempt_at),
        (Status::Pending, 1, Some(now + 500))
    );
    assert_eq!(row.version.as_deref(), Some("v1"));

    let second = due(1, Some("v1"), Some(row));
    let slow = Outcome::Retry {
        status: Some(429),
        error: "HTTP 429".into(),
        retry_after: Some(Duration::from_secs(30)),
        transport: false,
    };
    let row = after(&second, "c", &slow, now, every, 0.5);
    assert_eq!((row.attempts, row.next_attempt_at), (2, Some(now + 30_000)));

    let third = due(1, Some("v1"), Some(row));
    let refused = Outcome::Failed {
        status: Some(422),
        error: "HTTP 422: no".into(),
    };
    let row = after(&third, "c", &refused, now, every, 0.5);
    assert_eq!(
        (row.status, row.attempts, row.next_attempt_at),
        (Status::Failed, 3, Some(now + 3_600_000))
    );
    assert_eq!(row.error_message.as_deref(), Some("HTTP 422: no"));

    let fourth = due(1, Some("v1"), Some(row));
    let ok = Outcome::Delivered {
        status: 201,
        remote_id: Some(Key::Int(5)),
        bytes: 40,
    };
    let row = after(&fourth, "c", &ok, now, every, 0.5);
    assert_eq!(
        (row.status, row.attempts, row.error_message.clone()),
        (Status::Success, 4, None)
    );
    assert_eq!(
        (row.remote_id.clone(), row.bytes_sent, row.next_attempt_at),
        (Some(Key::Int(5)), 40, None)
    );

    // A new version starts counting attempts again and keeps the remote id.
    let update = due(1, Some("v2"), Some(row));
    let row = after(&update, "c", &retry, now, every, 0.0);
    assert_eq!(
        (row.status, row.attempts, row.remote_id.clone()),
        (Status::Pending, 1, Some(Key::Int(5)))
    );

    // Deleted before any delivery: the row is forgotten; after one: success again.
    let never_sent = Due {
        record: None,
        ..due(2, None, Some(Tracking::new("c", Key::Int(2), 0)))
    };
    assert_eq!(abandoned(&never_sent, now), None);
    let mut sent = Tracking::new("c", Key::Int(2), 0);
    sent.remote_id = Some(Key::Int(9));
    let was_sent = Due {
        record: None,
        ..due(2, None, Some(sent))
    };
    assert_eq!(
        abandoned(&was_sent, now).map(|r| r.status),
        Some(Status::Success)
    );
}

#[test]
fn an_unanswered_attempt_keeps_its_idempotency_key_when_the_record_changes() {
    let now = 10_000;
    let policy = RetryPolicy {
        failed_every: Duration::from_secs(3600),
        max_delay: CAP,
    };
    let no_answer = Outcome::Retry {
        status: None,
        error: "timeout".into(),
        retry_after: None,
        transport: true,
    };
    let row = after(&due(1, Some("v1"), None), "c", &no_answer, now, policy, 0.5);
    // The record moved to v2 meanwhile: the retry still says v1 (the server may have it).
    let retry = due(1, Some("v2"), Some(row));
    assert_eq!(attempt_version(&retry).as_deref(), Some("v1"));
    let ok = Outcome::Delivered {
        status: 201,
        remote_id: Some(Key::Int(5)),
        bytes: 1,
    };
    let row = after(&retry, "c", &ok, now, policy, 0.5);
    assert_eq!(
        row.version.as_deref(),
        Some("v1"),
        "v1 is what the server has"
    );
    // v2 then goes out as an update.
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let later = due(1, Some("v2"), Some(row));
    assert_eq!(action(&later, &put, now + 5_000), Action::Put(Key::Int(5)));
    // After a definite answer (a 503), the next try is for the record's version.
    let busy = Outcome::Retry {
        status: Some(503),
        error: "HTTP 503".into(),
        retry_after: None,
        transport: false,
    };
    let row = after(&due(1, Some("v1"), None), "c", &busy, now, policy, 0.5);
    assert_eq!(
        attempt_version(&due(1, Some("v2"), Some(row))).as_deref(),
        Some("v2")
    );
}
