//! One conformance suite for every backend: each test below runs against SQLite and
//! against JSON (see the `conformance!` list at the end).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;
use ferry::store::record::bytes_value;
use ferry::store::{Due, DueQuery, Key, Status, StoreError, Tracking};
use serde_json::json;

use crate::support::{ferry_bin, record, Fixture};

fn query(now: i64) -> DueQuery {
    DueQuery {
        now,
        limit: 1000,
        include_changed: true,
        full_scan: false,
        pace: false,
        peek: false,
    }
}

fn keys(due: &[Due]) -> Vec<String> {
    due.iter().map(|d| d.key.to_string()).collect()
}

fn success(collection: &str, key: Key, version: Option<String>) -> Tracking {
    let mut row = Tracking::new(collection, key, 1_000);
    row.status = Status::Success;
    row.version = version;
    row.remote_id = Some(Key::Int(7));
    row.attempts = 1;
    row.last_http_status = Some(201);
    row
}

fn round_trips_every_json_type(backend: Backend) {
    let fx = Fixture::new(backend);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let original = record(json!({
        "id": "r1",
        "rank": 1,
        "null": null,
        "yes": true,
        "no": false,
        "zero": 0,
        "negative": -1,
        "i64_max": i64::MAX,
        "i64_min": i64::MIN,
        "u64_max": u64::MAX,
        "float": 0.1,
        "huge_float": 1e300,
        "negative_float": -2.5,
        "text": "née à Zürich — 漢字 🚀",
        "empty": "",
        "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0}",
        "array": [1, "two", [3], {"four": 4}, null],
        "object": {"nested": {"deep": [true, false]}},
        "data": bytes_value(&all_bytes),
        "updated_at": "2026-11-22T10:00:00Z"
    }));
    // A larger-than-64-bit integer, kept digit for digit.
    let mut original = original;
    original.insert(
        "bigint".into(),
        serde_json::from_str("123456789012345678901234567890").unwrap(),
    );
    let mut store = fx.open();
    let key = store.put("items", original.clone()).unwrap();
    assert_eq!(key, Key::Text("r1".into()));
    assert_eq!(store.get("items", &key).unwrap().as_ref(), Some(&original));
    drop(store);
    // And again from disk, through a fresh store.
    let mut store = fx.open();
    let back = store.get("items", &key).unwrap().expect("record persisted");
    assert_eq!(back, original);
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(&original).unwrap(),
        "same bytes when serialised"
    );
}

fn updates_replace_the_record(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store
        .put(
            "items",
            record(json!({"id": 1, "rank": 1, "v": "old", "extra": 1})),
        )
        .unwrap();
    store
        .put("items", record(json!({"id": 1, "rank": 1, "v": "new"})))
        .unwrap();
    let got = store.get("items", &Key::Int(1)).unwrap().unwrap();
    assert_eq!(got, record(json!({"id": 1, "rank": 1, "v": "new"})));
    assert_eq!(store.list("items", None, 10).unwrap().len(), 1);
}

fn integer_and_string_keys_name_one_record(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store
        .put("events", record(json!({"id": 42, "v": 1})))
        .unwrap();
    store
        .put("events", record(json!({"id": "42", "v": 2})))
        .unwrap();
    store
        .put("events", record(json!({"id": "042", "v": 3})))
        .unwrap();
    let all = store.list("events", None, 10).unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        store.get("events", &Key::Int(42)).unwrap().unwrap()["v"],
        json!(2)
    );
    assert_eq!(
        store.get("events", &Key::parse("042")).unwrap().unwrap()["v"],
        json!(3)
    );
}

fn bad_records_are_refused_and_nothing_is_written(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    let err = store
        .put("events", record(json!({"name": "no key"})))
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRecord { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("collection events: the record has no key field \"id\""),
        "{err}"
    );
    for bad_key in [json!(1.5), json!(""), json!([1]), json!(true)] {
        let err = store
            .put("events", record(json!({"id": bad_key})))
            .unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
    }
    let err = store
        .put(
            "items",
            record(json!({"id": 1, "data": {"$base64": "%%%"}})),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("field \"data\": bad base64"),
        "{err}"
    );
    let err = store.put("nope", record(json!({"id": 1}))).unwrap_err();
    assert!(
        err.to_string()
            .contains("collection \"nope\" is not in the config (it has: items, events)"),
        "{err}"
    );
    // A batch with one bad record writes none of them.
    let batch = vec![record(json!({"id": 1})), record(json!({"no": "key"}))];
    assert!(store.put_many("events", batch).is_err());
    assert!(store.list("events", None, 10).unwrap().is_empty());
}

fn deletes_leave_tombstones(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store.put("events", record(json!({"id": 1}))).unwrap();
    store.put("events", record(json!({"id": 2}))).unwrap();
    assert!(store.delete("events", &Key::Int(1)).unwrap());
    assert!(!store.delete("events", &Key::Int(1)).unwrap());
    assert_eq!(store.get("events", &Key::Int(1)).unwrap(), None);
    let tombstones = store.tombstones("events").unwrap();
    assert_eq!(tombstones.len(), 1);
    assert_eq!(tombstones[0].key, Key::Int(1));
    // Writing the record again takes the tombstone away.
    store.put("events", record(json!({"id": 1}))).unwrap();
    assert!(store.tombstones("events").unwrap().is_empty());
}

fn list_pages_in_key_order(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    for id in [json!(10), json!(2), json!("b"), json!(-5), json!("a")] {
        store.put("events", record(json!({"id": id}))).unwrap();
    }
    let ids = |records: Vec<ferry::store::Record>| -> Vec<String> {
        records.iter().map(|r| r["id"].to_string()).collect()
    };
    assert_eq!(
        ids(store.list("events", None, 10).unwrap()),
        ["-5", "2", "10", "\"a\"", "\"b\""]
    );
    assert_eq!(
        ids(store.list("events", Some(&Key::Int(2)), 2).unwrap()),
        ["10", "\"a\""]
    );
    assert_eq!(
        ids(store.list("events", Some(&Key::parse("b")), 2).unwrap()),
        Vec::<String>::new()
    );
}

fn due_comes_in_order_by_order_with_a_limit(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    let ranks = [5, 3, 9, 1, 7, 3];
    let batch = ranks
        .iter()
        .enumerate()
        .map(|(i, rank)| record(json!({"id": format!("k{i}"), "rank": rank, "updated_at": "t1"})))
        .collect();
    store.put_many("items", batch).unwrap();
    let due = store.due("items", &query(0)).unwrap();
    assert_eq!(keys(&due), ["k3", "k1", "k5", "k0", "k4", "k2"]);
    assert!(due
        .iter()
        .all(|d| d.tracking.is_none() && d.version == "t1"));
    let first_two = store
        .due(
            "items",
            &DueQuery {
                limit: 2,
                ..query(0)
            },
        )
        .unwrap();
    assert_eq!(keys(&first_two), ["k3", "k1"]);
}

fn tracking_transitions(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store
        .put(
            "items",
            record(json!({"id": "a", "rank": 1, "updated_at": "v1"})),
        )
        .unwrap();
    store
        .put(
            "items",
            record(json!({"id": "b", "rank": 2, "updated_at": "v1"})),
        )
        .unwrap();
    let a = Key::parse("a");

    // pending, backing off until t=5000
    let mut row = Tracking::new("items", a.clone(), 1_000);
    row.attempts = 1;
    row.version = Some("v1".into());
    row.next_attempt_at = Some(5_000);
    row.last_http_status = Some(503);
    store.write_tracking(&[row.clone()]).unwrap();
    assert_eq!(store.tracking("items", &a).unwrap().as_ref(), Some(&row));
    assert_eq!(keys(&store.due("items", &query(4_999)).unwrap()), ["b"]);
    assert_eq!(
        keys(&store.due("items", &query(5_000)).unwrap()),
        ["a", "b"]
    );

    // failed (a 4xx), tried again at t=9000
    row.status = Status::Failed;
    row.error_message = Some("HTTP 422: bad field".into());
    row.last_http_status = Some(422);
    row.next_attempt_at = Some(9_000);
    store.write_tracking(&[row.clone()]).unwrap();
    assert_eq!(store.tracking("items", &a).unwrap().as_ref(), Some(&row));
    assert_eq!(keys(&store.due("items", &query(8_000)).unwrap()), ["b"]);
    assert_eq!(
        keys(&store.due("items", &query(9_000)).unwrap()),
        ["a", "b"]
    );

    // back to pending (ferry retry), due now
    row.status = Status::Pending;
    row.next_attempt_at = None;
    store.write_tracking(&[row.clone()]).unwrap();
    assert_eq!(store.tracking("items", &a).unwrap().as_ref(), Some(&row));

    // success: no longer due, in one transaction with b's success
    let done_a = success("items", a.clone(), Some("v1".into()));
    let done_b = success("items", Key::parse("b"), Some("v1".into()));
    store.write_tracking(&[done_a.clone(), done_b]).unwrap();
    assert_eq!(store.tracking("items", &a).unwrap().as_ref(), Some(&done_a));
    assert!(store.due("items", &query(10_000)).unwrap().is_empty());

    // the record changes: due again as a change, unless changes are not asked for
    store
        .put(
            "items",
            record(json!({"id": "a", "rank": 1, "updated_at": "v2"})),
        )
        .unwrap();
    let due = store.due("items", &query(10_000)).unwrap();
    assert_eq!(keys(&due), ["a"]);
    assert_eq!(due[0].version, "v2");
    assert_eq!(
        due[0].tracking.as_ref().map(|t| t.status),
        Some(Status::Success)
    );
    let no_changes = DueQuery {
        include_changed: false,
        ..query(10_000)
    };
    assert!(store.due("items", &no_changes).unwrap().is_empty());

    // tracking persists and pages in key order
    drop(store);
    let mut store = fx.open();
    assert_eq!(store.tracking("items", &a).unwrap().as_ref(), Some(&done_a));
    let page = store.tracking_page("items", None, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].key, a);
    let rest = store.tracking_page("items", Some(&a), 10).unwrap();
    assert_eq!(
        rest.iter().map(|t| t.key.to_string()).collect::<Vec<_>>(),
        ["b"]
    );
}

fn a_deleted_record_with_pending_delivery_is_handed_back(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store.put("events", record(json!({"id": 1}))).unwrap();
    store
        .write_tracking(&[Tracking::new("events", Key::Int(1), 0)])
        .unwrap();
    store.delete("events", &Key::Int(1)).unwrap();
    let due = store.due("events", &query(1)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].key, Key::Int(1));
    assert!(due[0].record.is_none());
    assert_eq!(
        due[0].tracking.as_ref().map(|t| t.status),
        Some(Status::Pending)
    );
}

fn delivered_records_are_not_due_and_new_ones_are(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    let batch = (1..=300).map(|i| record(json!({"id": i}))).collect();
    store.put_many("events", batch).unwrap();
    let mut delivered = 0;
    loop {
        let due = store
            .due(
                "events",
                &DueQuery {
                    limit: 64,
                    ..query(0)
                },
            )
            .unwrap();
        if due.is_empty() {
            break;
        }
        let rows: Vec<_> = due
            .iter()
            .map(|d| success("events", d.key.clone(), None))
            .collect();
        delivered += rows.len();
        store.write_tracking(&rows).unwrap();
    }
    assert_eq!(delivered, 300);
    assert!(store.due("events", &query(0)).unwrap().is_empty());
    store.put("events", record(json!({"id": 301}))).unwrap();
    assert_eq!(keys(&store.due("events", &query(0)).unwrap()), ["301"]);
    store
        .write_tracking(&[success("events", Key::Int(301), None)])
        .unwrap();
    // The newest row goes and a new one takes its place (SQLite may reuse the rowid).
    store.delete("events", &Key::Int(301)).unwrap();
    store.put("events", record(json!({"id": 302}))).unwrap();
    assert_eq!(keys(&store.due("events", &query(0)).unwrap()), ["302"]);
    // A full scan finds nothing more than the incremental reads did.
    let full = store
        .due(
            "events",
            &DueQuery {
                full_scan: true,
                ..query(0)
            },
        )
        .unwrap();
    assert_eq!(keys(&full), ["302"]);
}

fn last_written_moves_forward(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    assert_eq!(store.last_written("events").unwrap(), None);
    let before = ferry::store::now_ms();
    store.put("events", record(json!({"id": 1}))).unwrap();
    let first = store.last_written("events").unwrap().expect("written");
    assert!(first >= before - 2_000, "{first} vs {before}");
    std::thread::sleep(Duration::from_millis(20));
    store.put("events", record(json!({"id": 2}))).unwrap();
    assert!(store.last_written("events").unwrap().unwrap() >= first);
}

fn backup_is_a_store_with_the_same_content(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store
        .put(
            "items",
            record(json!({"id": "x", "rank": 1, "data": bytes_value(b"\x00\xff")})),
        )
        .unwrap();
    store
        .write_tracking(&[success("items", Key::parse("x"), None)])
        .unwrap();
    let dest = match backend {
        Backend::Sqlite => fx.path("backup.db"),
        Backend::Json => fx.path("backup-json"),
    };
    store.backup(&dest).unwrap();
    let mut config = fx.config.clone();
    config.storage.sqlite_path = fx.path("backup.db");
    config.storage.json_dir = fx.path("backup-json");
    let mut copy = ferry::store::open(&config).unwrap();
    assert_eq!(
        copy.get("items", &Key::parse("x")).unwrap(),
        store.get("items", &Key::parse("x")).unwrap()
    );
    assert_eq!(
        copy.tracking("items", &Key::parse("x")).unwrap(),
        store.tracking("items", &Key::parse("x")).unwrap()
    );
}

/// Two processes putting records into one collection at the same time lose none.
fn concurrent_writers_lose_nothing(backend: Backend) {
    let fx = Fixture::new(backend);
    fx.open(); // create the store once, before the writers race
    const PER_WRITER: usize = 40;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let config = fx.config_path.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    let body = format!("{{\"id\": \"w{w}-{i}\", \"writer\": {w}}}");
                    let out = crate::support::ferry_command(
                        &config,
                        &["put", "events"],
                        Some(body.as_bytes()),
                    );
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let mut store = fx.open();
    assert_eq!(
        store.list("events", None, 1000).unwrap().len(),
        2 * PER_WRITER
    );
}

/// A writer killed with SIGKILL in the middle of its writes leaves a readable store
/// holding whole records only.
fn a_killed_writer_leaves_a_readable_store(backend: Backend) {
    let fx = Fixture::new(backend);
    fx.open();
    let filler = "x".repeat(20_000);
    let mut seed: u64 = 0x5eed;
    for round in 0..8 {
        let mut input = String::new();
        for i in 0..400 {
            input.push_str(&format!(
                "{{\"id\": \"r{round}-{i}\", \"rank\": {i}, \"fill\": \"{filler}\"}}\n"
            ));
        }
        let mut child = Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .args(["put", "items"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("writer starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        });
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(30 + (seed >> 33) % 120));
        child.kill().expect("SIGKILL"); // std's kill() sends SIGKILL
        let _ = child.wait();
        let _ = feeder.join();

        let mut store = fx.open();
        let records = store
            .list("items", None, 100_000)
            .expect("store readable after SIGKILL");
        eprintln!(
            "{backend:?}: round {round}: {} whole records after SIGKILL",
            records.len()
        );
        for r in &records {
            assert_eq!(
                r["fill"].as_str().map(str::len),
                Some(filler.len()),
                "whole records only"
            );
        }
    }
    if backend == Backend::Json {
        // No temp file is left for long: the next writer removes what a killed one left.
        let mut store = fx.open();
        store
            .put("items", record(json!({"id": "last", "rank": 0})))
            .unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(fx.path("state/json"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".items.json.tmp-")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// Many keys: finding work after everything is delivered reads no delivered record.
fn finding_work_scales(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    let n = 5_000;
    store
        .put_many("events", (0..n).map(|i| record(json!({"id": i}))).collect())
        .unwrap();
    let rows: Vec<_> = (0..n)
        .map(|i| success("events", Key::Int(i), None))
        .collect();
    store.write_tracking(&rows).unwrap();
    // The first call sets the watermark; later idle calls start above it.
    for pass in ["first", "idle"] {
        let started = Instant::now();
        assert!(store.due("events", &query(0)).unwrap().is_empty());
        // Not a timing assertion (see `make bench`); printed for the curious.
        eprintln!(
            "{backend:?}: {pass} due() over {n} delivered records took {:?}",
            started.elapsed()
        );
    }
}

fn counts_follow_tracking(backend: Backend) {
    let fx = Fixture::new(backend);
    let mut store = fx.open();
    store
        .put_many(
            "events",
            (1..=6).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let mut failed = Tracking::new("events", Key::Int(3), 0);
    failed.status = Status::Failed;
    let retrying = Tracking::new("events", Key::Int(4), 0);
    store
        .write_tracking(&[
            success("events", Key::Int(1), None),
            success("events", Key::Int(2), None),
            failed,
            retrying,
        ])
        .unwrap();
    let counts = store.counts("events").unwrap();
    assert_eq!(
        (
            counts.records,
            counts.success,
            counts.failed,
            counts.pending
        ),
        (6, 2, 1, 3)
    );
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $test() { super::$test(ferry::config::Backend::Sqlite) } )*
        }
        mod json {
            $( #[test] fn $test() { super::$test(ferry::config::Backend::Json) } )*
        }
    };
}

conformance!(
    round_trips_every_json_type,
    updates_replace_the_record,
    integer_and_string_keys_name_one_record,
    bad_records_are_refused_and_nothing_is_written,
    deletes_leave_tombstones,
    list_pages_in_key_order,
    due_comes_in_order_by_order_with_a_limit,
    tracking_transitions,
    a_deleted_record_with_pending_delivery_is_handed_back,
    delivered_records_are_not_due_and_new_ones_are,
    last_written_moves_forward,
    backup_is_a_store_with_the_same_content,
    concurrent_writers_lose_nothing,
    a_killed_writer_leaves_a_readable_store,
    finding_work_scales,
    counts_follow_tracking,
);
