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

fn due(key: i64, version: &str, tracking: Option<Tracking>) -> Due {
    Due {
        key: Key::Int(key),
        record: Some(serde_json::from_value(json!({"id": key})).unwrap()),
        version: version.to_string(),
        fingerprint: 0,
        tracking,
        found: crate::store::Found::New,
    }
}

fn headers() -> crate::sync::transport::AnswerHeaders {
    crate::sync::transport::AnswerHeaders::default()
}

#[test]
fn answers_are_classified_as_the_spec_says() {
    let ok = classify(
        201,
        r#"{"id": 123, "message": "créé"}"#.as_bytes(),
        &headers(),
        "/id",
        0,
        10,
    );
    assert_eq!(
        ok,
        Outcome::Delivered {
            status: 201,
            remote_id: Some(Key::Int(123)),
            bytes: 10,
            replayed: false,
        }
    );
    for status in [408, 409, 425, 429, 500, 502, 503, 504, 599] {
        let Outcome::Retry {
            transport,
            maybe_processed,
            ..
        } = classify(status, b"", &headers(), "/id", 0, 1)
        else {
            panic!("{status} is retried");
        };
        assert!(!transport, "{status}");
        // 409: the first request under this key is still being processed; a 5xx
        // may come after the server stored the record.
        assert_eq!(maybe_processed, status == 409 || status >= 500, "{status}");
    }
    for status in [
        300, 301, 302, 303, 307, 308, 400, 401, 403, 404, 410, 422, 451,
    ] {
        assert!(
            matches!(
                classify(status, b"", &headers(), "/id", 0, 1),
                Outcome::Failed { .. }
            ),
            "{status}"
        );
    }
    let moved = crate::sync::transport::AnswerHeaders {
        location: Some("http://server/api/evenements/".into()),
        ..headers()
    };
    let Outcome::Failed { error, .. } = classify(301, b"", &moved, "/id", 0, 1) else {
        panic!()
    };
    assert!(
        error.starts_with("HTTP 301: remote.url redirects to http://server/api/evenements/"),
        "{error}"
    );
    let Outcome::Failed { error, .. } = classify(
        422,
        b"{\"error\":\n  \"capteur is required\"}",
        &headers(),
        "/id",
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(error, "HTTP 422: {\"error\": \"capteur is required\"}");
    let Outcome::Failed { error, .. } = classify(413, b"too big", &headers(), "/id", 0, 900) else {
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
    let ignore = collection("updated_at = \"u\"\nupdates = \"ignore\"\n");
    let now = 1_000_000;
    assert_eq!(action(&due(1, "v1", None), &put, now), Action::Create);
    let mut delivered = Tracking::new("c", Key::Int(1), now - 5_000);
    delivered.status = Status::Success;
    delivered.created = true;
    delivered.remote_id = Some(Key::Int(99));
    delivered.version = Some("v1".into());
    delivered.sync_date = rfc3339(now - 5_000);
    assert_eq!(
        action(&due(1, "v1", Some(delivered.clone())), &put, now),
        Action::Skip
    );
    assert_eq!(
        action(&due(1, "v2", Some(delivered.clone())), &put, now),
        Action::Put(Key::Int(99))
    );
    assert_eq!(
        action(&due(1, "v2", Some(delivered.clone())), &post, now),
        Action::Create
    );
    assert_eq!(
        action(&due(1, "v2", Some(delivered.clone())), &ignore, now),
        Action::Skip
    );
    // Delivered 300 ms ago: the latest state goes out when a second has passed.
    delivered.sync_date = rfc3339(now - 300);
    assert_eq!(
        action(&due(1, "v3", Some(delivered.clone())), &put, now),
        Action::Defer(now + 700)
    );
    // An update whose first try failed is still a PUT: the server has the record.
    let mut retrying = delivered.clone();
    retrying.status = Status::Pending;
    retrying.version = Some("v3".into());
    assert_eq!(
        action(&due(1, "v3", Some(retrying)), &put, now),
        Action::Put(Key::Int(99))
    );
    // Created without an id, then changed: an update cannot be PUT — said, not
    // turned into a second create; and still refused when that refusal is retried.
    let mut no_id = delivered.clone();
    no_id.remote_id = None;
    no_id.sync_date = rfc3339(now - 5_000);
    let Action::Refuse(why) = action(&due(1, "v2", Some(no_id.clone())), &put, now) else {
        panic!("refused");
    };
    assert!(why.contains("no id at \"/id\""), "{why}");
    no_id.status = Status::Failed;
    assert!(matches!(
        action(&due(1, "v2", Some(no_id)), &put, now),
        Action::Refuse(_)
    ));
    let deleted = Due {
        record: None,
        ..due(1, "", None)
    };
    assert_eq!(action(&deleted, &put, now), Action::Abandon);
}

#[test]
fn an_append_only_record_edited_in_place_is_not_sent_again_but_a_new_one_under_its_key_is() {
    let events = collection("");
    let now = 1_000_000;
    let mut delivered = Tracking::new("c", Key::Int(7), 0);
    delivered.status = Status::Success;
    delivered.created = true;
    delivered.remote_id = Some(Key::Int(70));
    delivered.version = Some("fp-0000000000000001".into());
    delivered.fingerprint = Some(1);
    let first = Due {
        fingerprint: 1,
        ..due(7, "fp-0000000000000001", Some(delivered.clone()))
    };
    assert_eq!(action(&first, &events, now), Action::Skip);
    // Edited in place (a flag set, a column added): an append-only collection
    // ignores changes.
    let edited = Due {
        fingerprint: 2,
        ..due(7, "fp-0000000000000002", Some(delivered))
    };
    assert_eq!(action(&edited, &events, now), Action::Skip);
    // Deleted, seen gone (its row forgotten), then written again with other content:
    // a new record, under a key of its own — the server does not answer it from the
    // old record's.
    let again = Due {
        fingerprint: 2,
        ..due(7, "fp-0000000000000002", None)
    };
    assert_eq!(action(&again, &events, now), Action::Create);
    let old_key = request_for(&first, &Action::Create, &events, "pi").unwrap();
    let new_key = request_for(&again, &Action::Create, &events, "pi").unwrap();
    assert_ne!(old_key.idempotency_key, new_key.idempotency_key);
}

#[test]
fn a_change_within_one_tick_of_updated_at_is_a_change() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let mut delivered = Tracking::new("c", Key::Int(1), 0);
    delivered.status = Status::Success;
    delivered.created = true;
    delivered.remote_id = Some(Key::Int(5));
    delivered.version = Some("2026-12-01 10:00:01".into());
    delivered.fingerprint = Some(0xaaaa_0000_0000_0000);
    let same_second = Due {
        fingerprint: 0xbbbb_0000_0000_0000,
        ..due(1, "2026-12-01 10:00:01", Some(delivered))
    };
    assert_eq!(action(&same_second, &put, 10_000), Action::Put(Key::Int(5)));
    // And its key is not the delivered state's: a strict server would refuse one key
    // with two bodies. Nor is it a create's of the same state: an update is another
    // request, which a server keeping keys must not answer with the create's answer.
    let key = request_for(&same_second, &Action::Put(Key::Int(5)), &put, "pi").unwrap();
    assert!(
        key.idempotency_key
            .ends_with(":2026-12-01%2010%3A00%3A01~bbbb0000:update"),
        "{key:?}"
    );
    let create = request_for(&same_second, &Action::Create, &put, "pi").unwrap();
    assert_eq!(
        format!("{}:update", create.idempotency_key),
        key.idempotency_key
    );
}

#[test]
fn an_update_that_is_no_longer_wanted_is_settled_not_found_again_and_again() {
    let ignore = collection("updated_at = \"u\"\nupdates = \"ignore\"\n");
    let mut retrying = Tracking::new("c", Key::Int(1), 0);
    retrying.status = Status::Pending;
    retrying.created = true;
    retrying.remote_id = Some(Key::Int(5));
    retrying.version = Some("v2".into());
    let d = due(1, "v3", Some(retrying));
    assert_eq!(action(&d, &ignore, 10_000), Action::Settle);
    let row = settled(&d, 10_000).unwrap();
    assert_eq!((row.status, row.next_attempt_at), (Status::Success, None));
    assert_eq!(row.version.as_deref(), Some("v3"));
}

#[test]
fn a_clock_that_went_back_does_not_hold_an_update_back() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let mut delivered = Tracking::new("c", Key::Int(1), 0);
    delivered.status = Status::Success;
    delivered.created = true;
    delivered.remote_id = Some(Key::Int(5));
    delivered.version = Some("v1".into());
    // Delivered "in an hour": the clock stepped back since.
    delivered.sync_date = rfc3339(10_000 + 3_600_000);
    assert_eq!(
        action(&due(1, "v2", Some(delivered)), &put, 10_000),
        Action::Put(Key::Int(5))
    );
}

#[test]
fn idempotency_keys_are_stable_per_version_and_unambiguous() {
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
        "pi:downloads:a:2026-01-01%2010%3A00%3A00"
    );
    // Two records whose parts joined by ':' would read alike get different keys.
    assert_ne!(
        idempotency_key("pi", "c", &Key::parse("a"), Some("b:c")),
        idempotency_key("pi", "c", &Key::parse("a:b"), Some("c"))
    );
    // Every key is a valid header value, whatever the key holds.
    for text in ["é", "a\nb", "tab\there", "\u{7f}"] {
        let key = idempotency_key("salon-ü", "c", &Key::parse(text), Some(text));
        assert!(
            reqwest::header::HeaderValue::from_str(&key).is_ok(),
            "{key:?}"
        );
    }
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

const POLICY: RetryPolicy = RetryPolicy {
    failed_every: Duration::from_secs(3600),
    max_delay: CAP,
};

fn attempt(d: &Due, c: &Collection, body_hash: u64) -> Attempt {
    let action = action(d, c, 1_000_000_000);
    let request = request_for(d, &action, c, "pi").unwrap();
    Attempt {
        action,
        idempotency_key: request.idempotency_key,
        version: d.version.clone(),
        fingerprint: 0,
        body_hash,
        body: None,
    }
}

fn no_answer() -> Outcome {
    Outcome::Retry {
        status: None,
        error: "timeout".into(),
        retry_after: None,
        transport: true,
        maybe_processed: true,
        failure: None,
    }
}

fn created(id: i64) -> Outcome {
    Outcome::Delivered {
        status: 201,
        remote_id: Some(Key::Int(id)),
        bytes: 40,
        replayed: false,
    }
}

#[test]
fn tracking_follows_outcomes() {
    let c = collection("updated_at = \"u\"\n");
    let now = 10_000;
    let first = due(1, "v1", None);
    let busy = Outcome::Retry {
        status: Some(429),
        error: "HTTP 429".into(),
        retry_after: None,
        transport: false,
        maybe_processed: false,
        failure: None,
    };
    let row = after(&first, &c, &attempt(&first, &c, 1), &busy, now, POLICY, 0.5);
    assert_eq!(
        (row.status, row.attempts, row.next_attempt_at),
        (Status::Pending, 1, Some(now + 500))
    );
    assert_eq!(row.version.as_deref(), Some("v1"));
    assert_eq!(row.claim, None, "a 429 was not acted on: nothing to settle");

    let second = due(1, "v1", Some(row));
    let slow = Outcome::Retry {
        status: Some(429),
        error: "HTTP 429".into(),
        retry_after: Some(Duration::from_secs(30)),
        transport: false,
        maybe_processed: false,
        failure: None,
    };
    let row = after(
        &second,
        &c,
        &attempt(&second, &c, 1),
        &slow,
        now,
        POLICY,
        0.5,
    );
    assert_eq!((row.attempts, row.next_attempt_at), (2, Some(now + 30_000)));

    let third = due(1, "v1", Some(row));
    let refused = Outcome::Failed {
        status: Some(422),
        error: "HTTP 422: no".into(),
        remote_id: None,
    };
    let row = after(
        &third,
        &c,
        &attempt(&third, &c, 1),
        &refused,
        now,
        POLICY,
        0.5,
    );
    assert_eq!(
        (row.status, row.attempts, row.next_attempt_at),
        (Status::Failed, 3, Some(now + 3_600_000))
    );
    assert_eq!(row.error_message.as_deref(), Some("HTTP 422: no"));

    let fourth = due(1, "v1", Some(row));
    let row = after(
        &fourth,
        &c,
        &attempt(&fourth, &c, 1),
        &created(5),
        now,
        POLICY,
        0.5,
    );
    assert_eq!(
        (row.status, row.attempts, row.error_message.clone()),
        (Status::Success, 4, None)
    );
    assert_eq!(
        (row.remote_id.clone(), row.bytes_sent, row.next_attempt_at),
        (Some(Key::Int(5)), 40, None)
    );
    assert!(row.created);

    // A new version starts counting attempts again and keeps the remote id.
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let update = due(1, "v2", Some(row));
    let row = after(
        &update,
        &put,
        &attempt(&update, &put, 2),
        &busy,
        now,
        POLICY,
        0.0,
    );
    assert_eq!(
        (row.status, row.attempts, row.remote_id.clone()),
        (Status::Pending, 1, Some(Key::Int(5)))
    );
}

/// The claim's life: a create is claimed before it leaves; an answer that leaves its
/// fate unknown keeps the key pinned through later answers of every kind, a crash, and
/// changes of the record, until a definite answer settles it.
#[test]
fn a_claimed_create_keeps_its_key_until_a_definite_answer() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let now = 10_000;
    let first = due(1, "v1", None);
    let a1 = attempt(&first, &put, 11);
    let claimed = claim(&first, "c", &a1, now);
    let c1 = claimed.claim.clone().unwrap();
    assert_eq!(
        (c1.key.as_str(), c1.version.as_str(), c1.body_hash, c1.state),
        (a1.idempotency_key.as_str(), "v1", 11, ClaimState::Sending)
    );
    // A crash now: the next process finds the claim; the record moved to v2 meanwhile.
    let after_crash = due(1, "v2", Some(claimed));
    assert_eq!(action(&after_crash, &put, now), Action::Create);
    let a2 = attempt(&after_crash, &put, 22);
    assert_eq!(
        a2.idempotency_key, a1.idempotency_key,
        "the key stays pinned"
    );
    // Answers that leave it unknown, or say nothing was done this time, keep the pin.
    let mut row = after(&after_crash, &put, &a2, &no_answer(), now, POLICY, 0.5);
    for outcome in [
        Outcome::Retry {
            status: Some(503),
            error: "HTTP 503".into(),
            retry_after: None,
            transport: false,
            maybe_processed: true,
            failure: None,
        },
        Outcome::Retry {
            status: Some(429),
            error: "HTTP 429".into(),
            retry_after: None,
            transport: false,
            maybe_processed: false,
            failure: None,
        },
        Outcome::Failed {
            status: Some(400),
            error: "HTTP 400".into(),
            remote_id: None,
        },
        Outcome::Retry {
            status: Some(409),
            error: "HTTP 409".into(),
            retry_after: None,
            transport: false,
            maybe_processed: true,
            failure: None,
        },
    ] {
        let next = due(1, "v3", Some(row));
        let a = attempt(&next, &put, 33);
        assert_eq!(a.idempotency_key, a1.idempotency_key, "after {outcome:?}");
        row = after(&next, &put, &a, &outcome, now, POLICY, 0.5);
        let claim = row.claim.clone().expect("still claimed");
        assert_eq!(
            (claim.version.as_str(), claim.state),
            ("v1", ClaimState::Unsure)
        );
    }
    // Settled by a 2xx to a changed body: for a PUT collection the server may hold v1
    // (a replay) — recorded as such, so v3 follows as an update.
    let last = due(1, "v3", Some(row));
    let a = attempt(&last, &put, 33);
    let row = after(&last, &put, &a, &created(5), now, POLICY, 0.5);
    assert_eq!(row.claim, None);
    assert_eq!(row.version.as_deref(), Some("v1"));
    let later = due(1, "v3", Some(row));
    assert_eq!(action(&later, &put, now + 5_000), Action::Put(Key::Int(5)));
}

/// A claimed create whose kept body finally lands (a 201 after a hang) leaves the
/// server with the claimed version while the record has moved on: the row must stay
/// pending so that the latest state follows as an update — as success at the old
/// version it was found again only if the store's watermarks allowed, and an
/// `updated_at` below them never did (model check seed 741333263055).
#[test]
fn a_claimed_create_settled_at_its_older_version_is_followed_by_an_update() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let now = 10_000;
    let first = due(1, "v1", None);
    let unsure = after(
        &first,
        &put,
        &attempt(&first, &put, 11),
        &no_answer(),
        now,
        POLICY,
        0.5,
    );
    // The record is at v2 now; the retry carries the claim's kept body (v1).
    let retry = due(1, "v2", Some(unsure));
    let mut resent = attempt(&retry, &put, 11);
    resent.version = "v1".into();
    let row = after(&retry, &put, &resent, &created(8), now, POLICY, 0.5);
    assert_eq!(
        (row.status, row.version.as_deref(), row.claim.clone()),
        (Status::Pending, Some("v1"), None)
    );
    assert_eq!(row.next_attempt_at, Some(now + MIN_UPDATE_INTERVAL));
    assert_eq!(
        action(&due(1, "v2", Some(row)), &put, now + MIN_UPDATE_INTERVAL),
        Action::Put(Key::Int(8))
    );
    // Had it carried the latest state, it is simply delivered.
    let row = after(
        &retry,
        &put,
        &attempt(&retry, &put, 11),
        &created(8),
        now,
        POLICY,
        0.5,
    );
    assert_eq!((row.status, row.next_attempt_at), (Status::Success, None));
}

#[test]
fn a_422_to_a_changed_retry_of_a_claimed_create_means_the_server_has_it() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let now = 10_000;
    let first = due(1, "v1", None);
    let unsure = after(
        &first,
        &put,
        &attempt(&first, &put, 11),
        &no_answer(),
        now,
        POLICY,
        0.5,
    );
    let retry = due(1, "v2", Some(unsure.clone()));
    let reused = Outcome::Failed {
        status: Some(422),
        error: "HTTP 422: Idempotency-Key reused with another body".into(),
        remote_id: Some(Key::Int(8)),
    };
    let row = after(
        &retry,
        &put,
        &attempt(&retry, &put, 22),
        &reused,
        now,
        POLICY,
        0.5,
    );
    assert_eq!(
        (
            row.status,
            row.version.as_deref(),
            row.remote_id.clone(),
            row.claim.clone()
        ),
        (Status::Pending, Some("v1"), Some(Key::Int(8)), None),
        "the server holds v1: the row is pending until v2 follows"
    );
    assert_eq!(row.next_attempt_at, Some(now + MIN_UPDATE_INTERVAL));
    assert_eq!(
        action(&due(1, "v2", Some(row)), &put, now + 5_000),
        Action::Put(Key::Int(8)),
        "the latest state follows as an update, never as a second create"
    );
    // The same body refused: a genuine refusal, still claimed.
    let same = due(1, "v1", Some(unsure));
    let row = after(
        &same,
        &put,
        &attempt(&same, &put, 11),
        &reused,
        now,
        POLICY,
        0.5,
    );
    assert_eq!(row.status, Status::Failed);
    assert!(row.claim.is_some());
}

#[test]
fn a_definite_refusal_of_a_first_attempt_leaves_nothing_claimed() {
    let c = collection("updated_at = \"u\"\n");
    let first = due(1, "v1", None);
    for outcome in [
        Outcome::Failed {
            status: Some(301),
            error: "HTTP 301".into(),
            remote_id: None,
        },
        Outcome::Retry {
            status: None,
            error: "connection refused".into(),
            retry_after: None,
            transport: true,
            maybe_processed: false,
            failure: None,
        },
    ] {
        let row = after(
            &first,
            &c,
            &attempt(&first, &c, 1),
            &outcome,
            0,
            POLICY,
            0.5,
        );
        assert_eq!(row.claim, None, "{outcome:?}");
    }
    let row = after(
        &first,
        &c,
        &attempt(&first, &c, 1),
        &no_answer(),
        0,
        POLICY,
        0.5,
    );
    assert!(row.claim.is_some());
}

#[test]
fn with_updates_post_each_version_is_its_own_create() {
    let post = collection("updated_at = \"u\"\nupdates = \"post\"\n");
    let first = due(1, "v1", None);
    let row = after(
        &first,
        &post,
        &attempt(&first, &post, 1),
        &no_answer(),
        0,
        POLICY,
        0.5,
    );
    // Same version: its key is pinned; a new version is a create of its own.
    let same = due(1, "v1", Some(row.clone()));
    let newer = due(1, "v2", Some(row));
    let a_same = attempt(&same, &post, 1);
    let a_newer = attempt(&newer, &post, 2);
    assert_ne!(a_same.idempotency_key, a_newer.idempotency_key);
    assert!(a_newer.idempotency_key.contains(":v2~"), "{a_newer:?}");
}

#[test]
fn a_server_is_down_after_a_batch_of_bad_answers_and_up_after_one_good() {
    let now = 1_000;
    assert_eq!(health_after(Health::Up, 4, 3, None, now, 0.0), Health::Up);
    let down = health_after(Health::Up, 4, 4, None, now, 0.0);
    assert_eq!(
        down,
        Health::Down {
            failures: 1,
            until: now + 500
        }
    );
    // Longer each time, and never sooner than the server asked.
    let Health::Down { failures, until } = health_after(down, 1, 1, None, now, 1.0) else {
        panic!()
    };
    assert_eq!((failures, until), (2, now + 2_000));
    let Health::Down { until, .. } =
        health_after(down, 1, 1, Some(Duration::from_secs(30)), now, 0.0)
    else {
        panic!()
    };
    assert_eq!(until, now + 30_000);
    // Nothing sent: nothing learnt.
    assert_eq!(health_after(down, 0, 0, None, now, 0.0), down);
    assert_eq!(health_after(down, 2, 1, None, now, 0.0), Health::Up);
}

#[test]
fn a_loop_wakes_at_its_earliest_reason_but_not_before_a_probe_is_due() {
    let up = Health::Up;
    assert_eq!(next_wake(10_000, None, None, None, up), 10_000);
    assert_eq!(next_wake(10_000, Some(300), Some(500), Some(700), up), 300);
    assert_eq!(next_wake(10_000, None, Some(500), Some(200), up), 200);
    let down = Health::Down {
        failures: 3,
        until: 4_000,
    };
    assert_eq!(next_wake(10_000, Some(300), None, None, down), 4_000);
    // Nothing due before the next full pass: the probe still goes when the pause ends
    // (model check seed 1869673050880).
    assert_eq!(next_wake(10_000, None, None, None, down), 4_000);
}

#[test]
fn a_claim_whose_fate_is_unknown_keeps_its_body_until_a_deletion_frees_the_key() {
    let put = collection("updated_at = \"u\"\nupdates = \"put\"\n");
    let first = due(1, "v1", None);
    let mut a = attempt(&first, &put, 11);
    a.body = Some(b"{\"id\":1}".to_vec());
    let row = after(&first, &put, &a, &no_answer(), 0, POLICY, 0.5);
    let claim = row.claim.clone().unwrap();
    assert_eq!(claim.body.as_deref(), Some(&b"{\"id\":1}"[..]));
    // The record is deleted meanwhile: the row is forgotten, claim and all — the key
    // is free for a new record.
    let gone = Due {
        record: None,
        ..due(1, "", Some(row))
    };
    let triage = triage(vec![gone], &put, 5_000, POLICY);
    assert_eq!((triage.forget, triage.rows.len()), (vec![Key::Int(1)], 0));
    // A claimed create that then gets a definite answer stores nothing more.
    let ok = after(&first, &put, &a, &created(3), 0, POLICY, 0.5);
    assert_eq!(ok.claim, None);
}
