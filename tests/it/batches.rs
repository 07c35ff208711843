//! Batches (issue 16, `docs/PROTOCOL.md` §3): many records a request, each with its own
//! key and result, within the limits, a 413 split, a lost answer retried without a
//! second copy, gzip on the wire.

use ferry::config::Backend;
use ferry::store::{Key, Status};
use serde_json::json;

use crate::server::{Fault, Faults, TestServer};
use crate::support::{record, Fixture};
use crate::sync::{fixture, statuses};

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Json];

fn events(limits: &str) -> String {
    format!(
        "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\n\
         endpoint = \"/api/evenements\"\nbatch_endpoint = \"/api/evenements/batch\"\n{limits}\n"
    )
}

fn put_events(fx: &Fixture, ids: std::ops::Range<i64>) {
    let mut store = fx.open();
    let batch = ids
        .map(|i| {
            record(json!({"id_evenement": i, "date": format!("2026-12-01 10:{:02}:{:02}", i / 60 % 60, i % 60),
                          "capteur": "PIR-salon", "type": "mouvement", "valeur": i % 100}))
        })
        .collect();
    store.put_many("evenement", batch).unwrap();
}

fn id_server(faults: Faults) -> TestServer {
    TestServer::start(Faults {
        key_fields: vec!["id_evenement".into()],
        ..faults
    })
}

/// `sync --once` until it has nothing left (bounded).
fn deliver(fx: &Fixture) {
    for _ in 0..20 {
        fx.ferry(&["retry"], None);
        if fx.ferry(&["sync", "--once"], None).status.code() == Some(0) {
            return;
        }
    }
    panic!("not delivered after 20 passes");
}

#[test]
fn batches_keep_to_their_limits_and_every_record_arrives_once() {
    for backend in BACKENDS {
        let server = id_server(Faults::default());
        let fx = fixture(
            backend,
            &server,
            "",
            "",
            &events("batch_max_records = 100\nbatch_max_bytes = \"16KiB\""),
        );
        put_events(&fx, 0..1000);
        assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
        assert_eq!(server.keys("/api/evenements").len(), 1000, "{backend:?}");
        assert_eq!(server.duplicates(), 0);
        let batches = server.batches();
        assert!(
            batches.len() >= 10,
            "{backend:?}: {} batches",
            batches.len()
        );
        for (members, bytes, _) in &batches {
            assert!(*members <= 100, "{backend:?}: {members} members");
            assert!(*bytes <= 16 * 1024, "{backend:?}: {bytes} bytes");
        }
        assert_eq!(statuses(&fx, "evenement"), (1000, 0, 0));
    }
}

#[test]
fn one_refused_record_neither_fails_nor_resends_the_others() {
    for backend in BACKENDS {
        let server = id_server(Faults {
            per_key: [("7".to_string(), Fault::Status(422))].into(),
            ..Faults::default()
        });
        let fx = fixture(backend, &server, "", "", &events(""));
        put_events(&fx, 0..20);
        assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(75));
        assert_eq!(server.keys("/api/evenements").len(), 19);
        assert_eq!(statuses(&fx, "evenement"), (19, 0, 1), "{backend:?}");
        let row = fx
            .open()
            .tracking("evenement", &Key::Int(7))
            .unwrap()
            .unwrap();
        assert_eq!(row.status, Status::Failed);
        assert!(
            row.error_message
                .unwrap_or_default()
                .contains("injected 422"),
            "{backend:?}"
        );
        // The others are not sent again.
        server.set(|f| f.per_key.clear());
        fx.ferry(&["retry"], None);
        assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
        assert_eq!(server.stored().len(), 20, "{backend:?}");
    }
}

#[test]
fn lost_answers_to_batches_store_nothing_twice() {
    for backend in BACKENDS {
        let server = id_server(Faults {
            rate: 0.4,
            kinds: vec![Fault::LostAck, Fault::Status(503), Fault::Close],
            ..Faults::default()
        });
        let fx = fixture(
            backend,
            &server,
            "timeout = \"2s\"",
            "max_retry_delay = \"200ms\"",
            &events("batch_max_records = 25"),
        );
        put_events(&fx, 0..300);
        deliver(&fx);
        assert!(
            server.injected().get("LostAck").copied().unwrap_or(0) > 0,
            "{backend:?}: no answer was lost"
        );
        assert_eq!(server.keys("/api/evenements").len(), 300, "{backend:?}");
        assert_eq!(server.duplicates(), 0, "{backend:?}");
    }
}

#[test]
fn a_413_splits_the_batch_until_the_culprit_stands_alone() {
    for backend in BACKENDS {
        let server = id_server(Faults {
            max_body: Some(6_000),
            ..Faults::default()
        });
        let fx = fixture(
            backend,
            &server,
            "",
            "",
            &events("batch_max_bytes = \"64KiB\""),
        );
        put_events(&fx, 0..200);
        // One record the server will never take, even alone.
        fx.open()
            .put(
                "evenement",
                record(json!({"id_evenement": 500, "date": "2026-12-01 11:00:00", "note": "x".repeat(10_000)})),
            )
            .unwrap();
        assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(75));
        assert_eq!(server.keys("/api/evenements").len(), 200, "{backend:?}");
        let row = fx
            .open()
            .tracking("evenement", &Key::Int(500))
            .unwrap()
            .unwrap();
        assert_eq!(row.status, Status::Failed, "{backend:?}");
        assert!(
            row.error_message
                .unwrap_or_default()
                .starts_with("HTTP 413"),
            "{backend:?}"
        );
        assert!(server.batches().iter().any(|(_, bytes, _)| *bytes > 6_000));
    }
}

#[test]
fn gzip_bodies_are_decoded_by_the_server_and_much_smaller() {
    let server = id_server(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "compression = \"gzip\"",
        "",
        &events(""),
    );
    put_events(&fx, 0..500);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    assert_eq!(server.keys("/api/evenements").len(), 500);
    let (json, wire) = server
        .batches()
        .iter()
        .fold((0, 0), |(j, w), (_, bytes, wire)| (j + bytes, w + wire));
    eprintln!("{json} bytes of JSON, {wire} on the wire");
    assert!(wire * 10 < json * 3, "{wire} of {json}");
    // Single-record mode compresses too.
    let server = id_server(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "compression = \"gzip\"",
        "",
        "[[collections]]\nname = \"events\"\nendpoint = \"/api/events\"\n",
    );
    fx.open()
        .put(
            "events",
            record(json!({"id": 1, "text": "abc ".repeat(100)})),
        )
        .unwrap();
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    assert_eq!(server.stored()[0].body["text"], json!("abc ".repeat(100)));
}

#[test]
fn adaptive_concurrency_fills_a_slow_link_within_max_concurrent() {
    // Every answer takes 30 ms: one request at a time would take 9 s for 300 records.
    let server = id_server(Faults {
        delay: std::time::Duration::from_millis(30),
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "max_concurrent = 12\nconcurrency = \"adaptive\"",
        "",
        "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\nendpoint = \"/api/evenements\"\n",
    );
    put_events(&fx, 0..300);
    let started = std::time::Instant::now();
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    let took = started.elapsed();
    let peak = server.peak_in_flight();
    eprintln!("300 records in {took:?}, at most {peak} in flight");
    assert_eq!(server.keys("/api/evenements").len(), 300);
    assert!(peak > 4, "the limit grew: {peak}");
    assert!(peak <= 12, "never above max_concurrent: {peak}");
}
