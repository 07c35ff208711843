//! Nothing lost, nothing sent twice, every change delivered — on every path (issue 14).
//! Each test is a path on which ferry lost, doubled or held back a record before; it
//! runs the real binary, on both backends where the path exists on both.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;
use ferry::store::{Key, Status};
use serde_json::{json, Value};

use crate::server::{Fault, Faults, TestServer};
use crate::support::{ferry_bin, record, Fixture};
use crate::sync::{fixture, spawn_run, statuses, terminate};

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Json];

const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n";

/// Download jobs: mutable, their updates PUT to the server's id.
const JOBS: &str = "[[collections]]\nname = \"jobs\"\nkey = \"id\"\nupdated_at = \"updated_at\"\n\
                    endpoint = \"/api/jobs\"\nupdates = \"put\"\n";

fn sync_once(fx: &Fixture) -> Output {
    fx.ferry(&["sync", "--once"], None)
}

/// `ferry sync --once`, killed if it has not finished within `limit` (`None` then).
fn sync_once_within(fx: &Fixture, limit: Duration) -> Option<Output> {
    let mut child = Command::new(ferry_bin())
        .arg("--config")
        .arg(&fx.config_path)
        .args(["sync", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn put(fx: &Fixture, collection: &str, value: Value) {
    fx.open().put(collection, record(value)).expect("put");
}

fn job(id: &str, progress: u32, updated_at: Option<&str>) -> Value {
    let mut job = json!({"id": id, "progress": progress});
    if let Some(at) = updated_at {
        job["updated_at"] = json!(at);
    }
    job
}

/// The server's rows of a record (by key), as PUTs left them.
fn rows_of(server: &TestServer, path: &str, key: &str) -> Vec<Value> {
    server
        .rows(path)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, body)| body)
        .collect()
}

/// A change must wait out the one-update-a-second throttle before a pass sends it.
fn past_the_update_throttle() {
    std::thread::sleep(Duration::from_millis(1_100));
}

#[test]
fn a_redirect_is_failed_naming_its_target_and_never_followed() {
    for backend in BACKENDS {
        for status in [301, 302, 307, 308] {
            let server = TestServer::start(Faults {
                rate: 1.0,
                kinds: vec![Fault::Moved(status)],
                ..Faults::default()
            });
            let fx = fixture(backend, &server, "", "", EVENTS);
            for i in 0..20 {
                put(&fx, "events", json!({"id": i, "v": i}));
            }
            let out = sync_once(&fx);
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(75), "{backend:?} {status}: {said}");
            assert!(
                said.starts_with("0 delivered"),
                "{backend:?} {status}: {said}"
            );
            assert_eq!(server.gets(), 0, "{backend:?} {status}: no GET was sent");
            assert!(
                server.stored().is_empty(),
                "{backend:?} {status}: nothing was sent to the redirect's target"
            );
            assert_eq!(statuses(&fx, "events"), (0, 0, 20), "{backend:?} {status}");
            let row = fx.open().tracking("events", &Key::Int(3)).unwrap().unwrap();
            let error = row.error_message.unwrap_or_default();
            assert!(
                error.starts_with(&format!(
                    "HTTP {status}: remote.url redirects to /api/events/"
                )),
                "{error}"
            );
        }
    }
}

#[test]
fn several_collections_with_one_request_in_flight_all_deliver() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults::default());
        let collections: String = ["a", "b", "c"]
            .iter()
            .map(|c| format!("[[collections]]\nname = \"{c}\"\nendpoint = \"/api/{c}\"\n"))
            .collect();
        let fx = fixture(backend, &server, "max_concurrent = 1", "", &collections);
        let mut store = fx.open();
        for c in ["a", "b", "c"] {
            let records = (0..50).map(|i| record(json!({"id": i}))).collect();
            store.put_many(c, records).unwrap();
        }
        drop(store);
        let out = sync_once_within(&fx, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{backend:?}: sync --once stalled"));
        assert_eq!(out.status.code(), Some(0), "{backend:?}");
        for c in ["a", "b", "c"] {
            assert_eq!(
                server.keys(&format!("/api/{c}")).len(),
                50,
                "{backend:?} {c}"
            );
        }
    }
}

#[test]
fn a_record_first_delivered_without_updated_at_gets_its_updates() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults::default());
        let fx = fixture(backend, &server, "", "", JOBS);
        put(&fx, "jobs", job("j1", 0, None));
        assert_eq!(sync_once(&fx).status.code(), Some(0), "{backend:?}");
        put(&fx, "jobs", job("j1", 100, Some("2026-12-01T10:00:00Z")));
        past_the_update_throttle();
        assert_eq!(sync_once(&fx).status.code(), Some(0), "{backend:?}");
        let rows = rows_of(&server, "/api/jobs", "j1");
        assert_eq!(rows.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(
            rows[0]["progress"],
            json!(100),
            "{backend:?}: the update arrived"
        );
    }
}

/// The crash of issue 14's case 5, made exact: the server stores a job's first POST
/// and ferry is killed while it waits for the answer; the job then changes.
fn crash_while_a_create_is_unanswered(backend: Backend, strict: bool) -> (TestServer, Fixture) {
    let server = TestServer::start(Faults {
        per_key: [("j1".to_string(), Fault::StoreThenHang)].into(),
        hang_for: Duration::from_secs(30),
        strict_idempotency: strict,
        ..Faults::default()
    });
    let fx = fixture(backend, &server, "timeout = \"20s\"", "", JOBS);
    put(&fx, "jobs", job("j1", 10, Some("2026-12-01T10:00:00Z")));
    let mut child = spawn_run(&fx);
    let arrived = server.wait_for(Duration::from_secs(10), |s| !s.stored().is_empty());
    // kill -9 while the answer is awaited.
    let _ = child.kill();
    let _ = child.wait();
    assert!(arrived, "{backend:?}: the first POST arrived");
    server.set(|f| f.per_key.clear());
    put(&fx, "jobs", job("j1", 60, Some("2026-12-01T10:00:05Z")));
    (server, fx)
}

#[test]
fn a_create_unanswered_at_a_crash_is_retried_under_its_key_when_the_record_changed() {
    for backend in BACKENDS {
        let (server, fx) = crash_while_a_create_is_unanswered(backend, false);
        // The server answers the retry from its memory of the key (it holds v1);
        // the latest state follows as an update.
        sync_once(&fx);
        past_the_update_throttle();
        assert_eq!(sync_once(&fx).status.code(), Some(0), "{backend:?}");
        assert_eq!(server.duplicates(), 0, "{backend:?}: stored once");
        let rows = rows_of(&server, "/api/jobs", "j1");
        assert_eq!(rows.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(rows[0]["progress"], json!(60), "{backend:?}: latest state");
    }
}

#[test]
fn a_422_for_a_reused_key_settles_the_create_and_the_change_follows_as_an_update() {
    for backend in BACKENDS {
        let (server, fx) = crash_while_a_create_is_unanswered(backend, true);
        // The retry carries v2 under v1's key: a server that keeps keys as the IETF
        // draft says answers 422, naming what the key created.
        sync_once(&fx);
        past_the_update_throttle();
        assert_eq!(sync_once(&fx).status.code(), Some(0), "{backend:?}");
        assert_eq!(server.duplicates(), 0, "{backend:?}: stored once");
        let rows = rows_of(&server, "/api/jobs", "j1");
        assert_eq!(rows.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(rows[0]["progress"], json!(60), "{backend:?}: latest state");
        let row = fx
            .open()
            .tracking("jobs", &Key::parse("j1"))
            .unwrap()
            .unwrap();
        assert_eq!(row.status, Status::Success);
        assert_eq!(row.claim, None);
    }
}

#[test]
fn the_key_of_an_unanswered_create_stays_pinned_through_later_answers() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults {
            per_key: [("j1".to_string(), Fault::LostAck)].into(),
            ..Faults::default()
        });
        let fx = fixture(backend, &server, "", "", JOBS);
        put(&fx, "jobs", job("j1", 0, Some("2026-12-01T10:00:00Z")));
        sync_once(&fx); // stored, answer lost
        for (step, fault) in [Fault::Status(503), Fault::Status(429), Fault::Status(400)]
            .into_iter()
            .enumerate()
        {
            server.set(|f| {
                f.per_key.insert("j1".into(), fault.clone());
            });
            let at = format!("2026-12-01T10:00:0{}Z", step + 1);
            put(&fx, "jobs", job("j1", 10 * (step as u32 + 1), Some(&at)));
            assert_eq!(fx.ferry(&["retry"], None).status.code(), Some(0));
            sync_once(&fx);
        }
        server.set(|f| f.per_key.clear());
        put(&fx, "jobs", job("j1", 100, Some("2026-12-01T10:00:09Z")));
        fx.ferry(&["retry"], None);
        sync_once(&fx);
        past_the_update_throttle();
        assert_eq!(sync_once(&fx).status.code(), Some(0), "{backend:?}");
        assert_eq!(server.duplicates(), 0, "{backend:?}: stored once");
        let rows = rows_of(&server, "/api/jobs", "j1");
        assert_eq!(rows.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(rows[0]["progress"], json!(100), "{backend:?}");
    }
}

#[test]
fn a_409_is_tried_again_soon_not_failed() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults {
            per_key: [("1".to_string(), Fault::Status(409))].into(),
            ..Faults::default()
        });
        let fx = fixture(backend, &server, "", "", EVENTS);
        put(&fx, "events", json!({"id": 1}));
        assert_eq!(sync_once(&fx).status.code(), Some(75));
        let row = fx.open().tracking("events", &Key::Int(1)).unwrap().unwrap();
        assert_eq!(row.status, Status::Pending, "{backend:?}");
        assert!(row.next_attempt_at.unwrap_or(0) < ferry::store::now_ms() + 10_000);
        assert!(
            row.claim.is_some(),
            "{backend:?}: the key may still be in use"
        );
    }
}

/// Seed 003's setting: a server that names records by `id_evenement`, a collection
/// on the `evenement` table, and that table made by the other program with `sql`
/// (the schema and its first rows) before ferry first opens the store.
fn seed_003_events(sql: &str) -> (TestServer, Fixture, rusqlite::Connection) {
    let server = TestServer::start(Faults {
        key_fields: vec!["id_evenement".into()],
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "",
        "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\nendpoint = \"/api/evenements\"\n",
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute_batch(sql).unwrap();
    (server, fx, db)
}

#[test]
fn a_key_used_again_after_its_record_was_deleted_is_a_new_record() {
    // Seed 003's events table without AUTOINCREMENT: purge the delivered rows and the
    // next event takes id 1 again.
    let (server, fx, db) = seed_003_events(
        "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY, date TEXT, capteur TEXT);
         INSERT INTO evenement (date, capteur) VALUES ('2026-12-01 10:00', 'PIR'), ('2026-12-01 10:05', 'PIR');",
    );
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    // The delivered rows are purged; ferry looks (its key is free), then the next
    // event takes id 1.
    db.execute_batch("DELETE FROM evenement;").unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    db.execute_batch("INSERT INTO evenement (date, capteur) VALUES ('2026-12-02 08:00', 'porte');")
        .unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    let stored = server.stored();
    let ones: Vec<_> = stored.iter().filter(|s| s.key == "1").collect();
    assert_eq!(ones.len(), 2, "the new event 1 was sent: {ones:?}");
    assert_eq!(ones[1].body["capteur"], json!("porte"));
    assert_ne!(
        ones[0].idempotency_key, ones[1].idempotency_key,
        "not answered from the old record's key"
    );

    // The JSON store: a record deleted and written again with other content.
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Json, &server, "", "", EVENTS);
    put(&fx, "events", json!({"id": 1, "what": "first"}));
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    fx.open().delete("events", &Key::Int(1)).unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    put(&fx, "events", json!({"id": 1, "what": "second"}));
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    let whats: Vec<Value> = server
        .stored()
        .iter()
        .map(|s| s.body["what"].clone())
        .collect();
    assert_eq!(whats, [json!("first"), json!("second")]);
}

#[test]
fn records_that_keep_changing_do_not_crowd_out_new_ones() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults::default());
        let fx = fixture(backend, &server, "", "batch_size = 4", JOBS);
        // Twice as many busy jobs as a batch holds.
        for i in 0..8 {
            put(
                &fx,
                "jobs",
                job(&format!("a{i}"), 0, Some("2026-12-01T10:00:00.000Z")),
            );
        }
        assert_eq!(sync_once(&fx).status.code(), Some(0));
        let mut child = spawn_run(&fx);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = std::sync::Arc::clone(&stop);
            let config = fx.config.clone();
            std::thread::spawn(move || {
                let mut store = ferry::store::open(&config).unwrap();
                let mut step = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    step += 1;
                    let at = format!("2026-12-01T10:00:00.000Z+{step:08}");
                    let busy = (0..8)
                        .map(|i| record(job(&format!("a{i}"), step, Some(&at))))
                        .collect();
                    store.put_many("jobs", busy).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(1_500));
        put(&fx, "jobs", job("zz", 0, Some("2026-12-01T11:00:00.000Z")));
        let arrived = server.wait_for(Duration::from_secs(5), |s| {
            !rows_of(s, "/api/jobs", "zz").is_empty()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        terminate(&mut child);
        assert!(
            arrived,
            "{backend:?}: the new job went out while the others kept changing"
        );
    }
}

#[test]
fn a_row_inserted_below_the_watermark_goes_out_within_seconds() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "",
        "[[collections]]\nname = \"readings\"\nkey = \"id\"\nendpoint = \"/api/readings\"\n",
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL);
         INSERT INTO readings VALUES (10, 1.0), (11, 1.5), (12, 2.0);",
    )
    .unwrap();
    let mut child = spawn_run(&fx);
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.keys("/api/readings").len()
            == 3)
    );
    // A reading that arrived late, from another sensor's buffer: a lower id.
    db.execute("INSERT INTO readings VALUES (5, 0.5)", [])
        .unwrap();
    let arrived = server.wait_for(Duration::from_secs(5), |s| {
        s.keys("/api/readings").contains("5")
    });
    terminate(&mut child);
    assert!(arrived, "the row below the watermark went out");
}

#[test]
fn an_updated_at_that_goes_backwards_goes_out_within_seconds() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Sqlite, &server, "", "", JOBS);
    put(&fx, "jobs", job("j1", 0, Some("2026-06-01T00:00:00Z")));
    let mut child = spawn_run(&fx);
    assert!(server.wait_for(Duration::from_secs(10), |s| !s.stored().is_empty()));
    past_the_update_throttle();
    // The Pi lost its clock: the next write's time is earlier than the last.
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute(
        "UPDATE jobs SET record = json_set(record, '$.progress', 50, '$.updated_at', '2026-05-01T00:00:00Z') WHERE key = 'j1'",
        [],
    )
    .unwrap();
    let arrived = server.wait_for(Duration::from_secs(5), |s| {
        rows_of(s, "/api/jobs", "j1")
            .first()
            .is_some_and(|r| r["progress"] == json!(50))
    });
    terminate(&mut child);
    assert!(arrived, "the change went out");
}

#[test]
fn a_sweep_cut_short_by_a_lock_goes_over_the_same_rows_again() {
    // Model check seed 2622202277458: the other program held the database's write
    // lock while a sweep marked a chunk; the chunk's marks were rolled back but its
    // cursor had moved on, so a change only the sweep sees (here an `updated_at`
    // that went backwards) waited for the next full pass.
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Sqlite, &server, "", "", JOBS);
    put(&fx, "jobs", job("j1", 0, Some("2026-06-01T00:00:00Z")));
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    let mut store = fx.open();
    let query = |full_scan| ferry::store::DueQuery {
        now: ferry::store::now_ms(),
        limit: 100,
        include_changed: true,
        full_scan,
        pace: false,
        peek: false,
    };
    assert!(store.due("jobs", &query(false)).unwrap().is_empty());
    let other = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    other
        .execute(
            "UPDATE jobs SET record = json_set(record, '$.progress', 50, '$.updated_at', '2026-05-01T00:00:00Z') WHERE key = 'j1'",
            [],
        )
        .unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked = store.due("jobs", &query(false));
    assert!(locked.is_err(), "the sweep could not write: {locked:?}");
    other.execute_batch("ROLLBACK").unwrap();
    let due = store.due("jobs", &query(false)).unwrap();
    assert_eq!(
        due.iter().map(|d| d.key.to_string()).collect::<Vec<_>>(),
        ["j1"],
        "the change is due once the lock is gone, before any full pass"
    );
}

#[test]
fn an_update_without_a_remote_id_is_refused_clearly_not_posted_again() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults {
            no_remote_id: true,
            ..Faults::default()
        });
        let fx = fixture(backend, &server, "", "", JOBS);
        put(&fx, "jobs", job("j1", 0, Some("2026-12-01T10:00:00Z")));
        assert_eq!(sync_once(&fx).status.code(), Some(0));
        put(&fx, "jobs", job("j1", 50, Some("2026-12-01T10:00:05Z")));
        past_the_update_throttle();
        assert_eq!(sync_once(&fx).status.code(), Some(75), "{backend:?}");
        fx.ferry(&["retry"], None);
        sync_once(&fx);
        assert_eq!(server.stored().len(), 1, "{backend:?}: no second POST");
        let row = fx
            .open()
            .tracking("jobs", &Key::parse("j1"))
            .unwrap()
            .unwrap();
        assert_eq!(row.status, Status::Failed, "{backend:?}");
        let error = row.error_message.unwrap_or_default();
        assert!(error.contains("collections[jobs].remote_id"), "{error}");
        let diagnose = fx.ferry(&["diagnose"], None);
        let said = String::from_utf8_lossy(&diagnose.stdout);
        assert!(said.contains("j1"), "{said}");
    }
}

#[test]
fn a_key_that_is_not_a_valid_header_value_still_carries_an_idempotency_key() {
    for backend in BACKENDS {
        let server = TestServer::start(Faults::default());
        let fx = fixture(backend, &server, "", "", EVENTS);
        put(&fx, "events", json!({"id": "capteur-é:1", "v": 1}));
        assert_eq!(sync_once(&fx).status.code(), Some(0));
        let stored = server.stored();
        let key = stored[0].idempotency_key.clone().unwrap_or_default();
        assert!(
            key.starts_with("test-device:events:capteur-%C3%A9%3A1:fp-"),
            "{backend:?}: {key:?}"
        );
    }
}

/// A seed 003 database: its `sync_tracking` declares `local_id INTEGER`.
fn seed_003_tracking(fx: &Fixture, rows: &str) -> rusqlite::Connection {
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE sync_tracking (
            id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, local_id INTEGER NOT NULL,
            remote_id INTEGER, sync_date TEXT NOT NULL, sync_status TEXT NOT NULL, error_message TEXT,
            UNIQUE(table_name, local_id));
         {rows}"
    ))
    .unwrap();
    db
}

#[test]
fn an_adopted_sync_tracking_keeps_text_keys_that_look_like_numbers() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "",
        "[[collections]]\nname = \"tags\"\nkey = \"id\"\nendpoint = \"/api/tags\"\n",
    );
    seed_003_tracking(&fx, "");
    put(&fx, "tags", json!({"id": "007", "name": "bond"}));
    put(&fx, "tags", json!({"id": 7, "name": "seven"}));
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    let mut keys: Vec<String> = server.stored().iter().map(|s| s.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["007", "7"], "each sent once");
    assert_eq!(statuses(&fx, "tags"), (2, 0, 0), "a tracking row each");
    let mut store = fx.open();
    let bond = store.tracking("tags", &Key::parse("007")).unwrap().unwrap();
    assert_eq!(bond.key, Key::Text("007".into()));
}

#[test]
fn a_status_ferry_does_not_know_is_tried_again() {
    let server = TestServer::start(Faults {
        key_fields: vec!["id_evenement".into()],
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "",
        "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\nendpoint = \"/api/evenements\"\n",
    );
    let db = seed_003_tracking(
        &fx,
        "INSERT INTO sync_tracking (table_name, local_id, sync_date, sync_status)
            VALUES ('evenement', 1, '2025-12-18 17:30:00', 'en_cours');",
    );
    db.execute_batch(
        "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT);
         INSERT INTO evenement (date) VALUES ('2025-12-18 17:29:00');",
    )
    .unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    assert_eq!(server.keys("/api/evenements").len(), 1);
    // And a status written later by another program (the old service's tools) too.
    db.execute_batch(
        "INSERT INTO evenement (date) VALUES ('2025-12-18 17:31:00');
         INSERT INTO sync_tracking (table_name, local_id, sync_date, sync_status)
            VALUES ('evenement', 2, '2025-12-18 17:31:00', 'erreur');",
    )
    .unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    assert_eq!(server.keys("/api/evenements").len(), 2);
}

#[test]
fn an_edited_event_in_a_table_whose_keys_are_never_reused_is_not_sent_again() {
    // Seed 003's table: AUTOINCREMENT, so a changed row is an edit, not a new event;
    // an append-only collection ignores edits.
    let (server, fx, db) = seed_003_events(
        "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, capteur TEXT);
         INSERT INTO evenement (date, capteur) VALUES ('2026-12-01 10:00', 'PIR');",
    );
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    db.execute(
        "UPDATE evenement SET capteur = 'PIR-2' WHERE id_evenement = 1",
        [],
    )
    .unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    assert_eq!(
        server.stored().len(),
        1,
        "the edit was not sent as a new event"
    );
}

#[test]
fn a_column_added_to_an_append_only_table_sends_nothing_again() {
    // Every row's content changes at once; none is a new record.
    let (server, fx, db) = seed_003_events(
        "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY, date TEXT, capteur TEXT);
         INSERT INTO evenement (date, capteur) VALUES ('2026-12-01 10:00', 'PIR'), ('2026-12-01 10:05', 'PIR');",
    );
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    db.execute_batch("ALTER TABLE evenement ADD COLUMN salle TEXT DEFAULT 'cuisine';")
        .unwrap();
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    assert_eq!(server.stored().len(), 2, "nothing sent again");
}

#[test]
fn hundreds_of_changes_only_a_sweep_sees_all_go_out_promptly() {
    // updated_at stepped back for 600 delivered jobs (a clock set right): more than a
    // batch, all of it behind the changed-records watermark.
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Sqlite, &server, "", "", JOBS);
    let mut store = fx.open();
    let jobs = (0..600)
        .map(|i| record(job(&format!("j{i:03}"), 0, Some("2026-06-01T00:00:00Z"))))
        .collect();
    store.put_many("jobs", jobs).unwrap();
    drop(store);
    assert_eq!(sync_once(&fx).status.code(), Some(0));
    let mut child = spawn_run(&fx);
    std::thread::sleep(Duration::from_millis(1_500));
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute(
        "UPDATE jobs SET record = json_set(record, '$.progress', 50, '$.updated_at', '2026-05-01T00:00:00Z')",
        [],
    )
    .unwrap();
    let all = server.wait_for(Duration::from_secs(15), |s| {
        s.stored().iter().filter(|r| r.method == "PUT").count() >= 600
    });
    terminate(&mut child);
    let puts = server.stored().iter().filter(|r| r.method == "PUT").count();
    assert!(all, "{puts} of 600 updates went out");
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn a_change_within_one_second_of_updated_at_goes_out() {
    // Seed 000's downloads keep updated_at to the second; progress moves faster.
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "",
        "[[collections]]\nname = \"downloads\"\nkey = \"id\"\nupdated_at = \"updated_at\"\nendpoint = \"/api/downloads\"\nupdates = \"put\"\n",
    );
    put(
        &fx,
        "downloads",
        json!({"id": "dl-1", "status": "downloading", "progress": 50.0, "updated_at": "2026-12-01 10:00:01"}),
    );
    let mut child = spawn_run(&fx);
    assert!(server.wait_for(Duration::from_secs(10), |s| !s.stored().is_empty()));
    past_the_update_throttle();
    let db = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    db.execute(
        "UPDATE downloads SET progress = 100.0, status = 'completed' WHERE id = 'dl-1'",
        [],
    )
    .unwrap();
    let arrived = server.wait_for(Duration::from_secs(5), |s| {
        rows_of(s, "/api/downloads", "dl-1")
            .first()
            .is_some_and(|r| r["status"] == json!("completed"))
    });
    terminate(&mut child);
    assert!(arrived, "the final state went out");
}

#[test]
fn a_paused_collection_whose_probe_finds_a_deleted_record_goes_on_probing() {
    // The server fails j1 (500: it may have stored it), the collection pauses; j1 is
    // then deleted and j3 written. The probe after the pause takes j1's row first —
    // nothing to send — and must look again, not sleep until the next write.
    for backend in BACKENDS {
        let server = TestServer::start(Faults {
            per_key: [("j1".to_string(), Fault::Status(500))].into(),
            ..Faults::default()
        });
        let fx = fixture(backend, &server, "", "", JOBS);
        put(&fx, "jobs", job("j1", 0, Some("2026-12-01T10:00:00Z")));
        let mut child = spawn_run(&fx);
        assert!(server.wait_for(Duration::from_secs(10), |s| s.requests() > 0));
        server.set(|f| f.per_key.clear());
        let mut store = fx.open();
        store.delete("jobs", &Key::parse("j1")).unwrap();
        store
            .put("jobs", record(job("j3", 0, Some("2026-12-01T10:00:01Z"))))
            .unwrap();
        drop(store);
        let arrived = server.wait_for(Duration::from_secs(8), |s| {
            !rows_of(s, "/api/jobs", "j3").is_empty()
        });
        terminate(&mut child);
        assert!(arrived, "{backend:?}: j3 went out after the pause");
    }
}
