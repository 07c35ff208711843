//! Delivery through a server that fails (issue: the sync engine). Each test names the
//! guarantee it shows.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::config::Backend;
use ferry::store::{self, Key, Status};
use ferry::sync::{Engine, SharedStore};
use serde_json::json;

use crate::server::{every_fault, Fault, Faults, TestServer};
use crate::support::{ferry_bin, record, Fixture};

const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n";

pub(crate) fn tables(server: &TestServer, remote: &str, sync: &str) -> String {
    format!(
        "[remote]\nurl = \"{}\"\n{remote}\n[sync]\n{sync}\n",
        server.url
    )
}

pub(crate) fn fixture(
    backend: Backend,
    server: &TestServer,
    remote: &str,
    sync: &str,
    collections: &str,
) -> Fixture {
    Fixture::with_config(backend, &tables(server, remote, sync), collections)
}

fn put_events(fx: &Fixture, ids: std::ops::Range<i64>) {
    let mut store = fx.open();
    let batch: Vec<_> = ids
        .map(|i| record(json!({"id": i, "kind": "sensor", "value": i * 3})))
        .collect();
    for chunk in batch.chunks(1000) {
        store.put_many("events", chunk.to_vec()).unwrap();
    }
}

/// Counts tracking rows by status.
pub(crate) fn statuses(fx: &Fixture, collection: &str) -> (usize, usize, usize) {
    let mut store = fx.open();
    let (mut success, mut pending, mut failed) = (0, 0, 0);
    let mut after: Option<Key> = None;
    loop {
        let page = store
            .tracking_page(collection, after.as_ref(), 1000)
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for row in &page {
            match row.status {
                Status::Success => success += 1,
                Status::Pending => pending += 1,
                Status::Failed => failed += 1,
            }
        }
    }
    (success, pending, failed)
}

/// Runs the engine in-process until `done` holds at the server (or `limit` passes),
/// then stops it as SIGTERM would.
fn run_engine_until(
    fx: &Fixture,
    server: &TestServer,
    limit: Duration,
    done: impl Fn(&TestServer) -> bool,
) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SharedStore::new(store::open(&fx.config).unwrap());
    let engine = Arc::new(Engine::new(fx.config.clone(), store).unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    runtime.block_on(async {
        let running = tokio::spawn({
            let engine = Arc::clone(&engine);
            async move { engine.run(stop_rx).await }
        });
        let start = Instant::now();
        let mut reached = false;
        while start.elapsed() < limit {
            if done(server) {
                reached = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), running)
            .await
            .expect("the engine stops within the grace period")
            .unwrap()
            .unwrap();
        reached
    })
}

fn delivered_all(fx_count: usize) -> impl Fn(&TestServer) -> bool {
    move |s| s.keys("/api/events").len() >= fx_count
}

fn five_thousand_through_a_server_failing_every_way(backend: Backend, count: i64) {
    let server = TestServer::start(Faults {
        rate: 0.3,
        kinds: every_fault(),
        hang_for: Duration::from_secs(2),
        ..Faults::default()
    });
    let fx = fixture(
        backend,
        &server,
        "timeout = \"500ms\"\nmax_concurrent = 16",
        "max_retry_delay = \"2s\"",
        EVENTS,
    );
    put_events(&fx, 0..count);
    let started = Instant::now();
    // Until the server has every record and tracking says so for every one.
    let reached = run_engine_until(&fx, &server, Duration::from_secs(240), |s| {
        s.keys("/api/events").len() >= count as usize && statuses(&fx, "events").0 == count as usize
    });
    let keys = server.keys("/api/events");
    eprintln!(
        "{backend:?}: {} records in {:?} through {} requests",
        keys.len(),
        started.elapsed(),
        server.requests()
    );
    assert!(reached, "only {} of {count} arrived", keys.len());
    assert_eq!(keys.len(), count as usize);
    assert_eq!(
        server.duplicates(),
        0,
        "idempotency keys kept every record single"
    );
    assert_eq!(
        statuses(&fx, "events"),
        (count as usize, 0, 0),
        "tracking says success for all"
    );
}

#[test]
fn five_thousand_records_through_a_server_failing_30_percent_arrive_once() {
    five_thousand_through_a_server_failing_every_way(Backend::Sqlite, 5_000);
}

#[test]
fn json_backend_records_through_a_failing_server_arrive_once() {
    five_thousand_through_a_server_failing_every_way(Backend::Json, 1_000);
}

#[test]
fn a_server_that_is_down_is_probed_gently_and_nothing_is_marked_failed() {
    let server = TestServer::start(Faults {
        down: true,
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "timeout = \"1s\"\nmax_concurrent = 4",
        "max_retry_delay = \"2s\"",
        EVENTS,
    );
    put_events(&fx, 0..300);
    // Down for six seconds.
    run_engine_until(&fx, &server, Duration::from_secs(6), |_| false);
    let attempts = server.refused_while_down();
    eprintln!("requests while down for 6 s: {attempts}");
    assert!(attempts >= 1, "ferry tried");
    assert!(
        attempts <= 20,
        "no request storm: {attempts} requests in 6 s"
    );
    let (_, _, failed) = statuses(&fx, "events");
    assert_eq!(failed, 0, "nothing is failed because the network is down");
    // Back up: everything goes through.
    server.set(|f| f.down = false);
    let reached = run_engine_until(&fx, &server, Duration::from_secs(90), delivered_all(300));
    assert!(
        reached,
        "{} of 300 after the server came back",
        server.keys("/api/events").len()
    );
    assert_eq!(server.duplicates(), 0);
    assert_eq!(statuses(&fx, "events"), (300, 0, 0));
}

pub(crate) fn spawn_run(fx: &Fixture) -> Child {
    Command::new(ferry_bin())
        .arg("--config")
        .arg(&fx.config_path)
        .arg("run")
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry run starts")
}

pub(crate) fn terminate(child: &mut Child) -> (Option<i32>, Duration) {
    let started = Instant::now();
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("ferry exits");
    (status.code(), started.elapsed())
}

#[test]
fn twenty_kill_9s_during_a_push_lose_and_duplicate_nothing() {
    let server = TestServer::start(Faults {
        rate: 0.1,
        kinds: vec![Fault::LostAck, Fault::Status(503), Fault::Close],
        delay: Duration::from_millis(2),
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "timeout = \"2s\"\nmax_concurrent = 4",
        "max_retry_delay = \"1s\"",
        EVENTS,
    );
    put_events(&fx, 0..5_000);
    let mut seed: u64 = 0xC0FFEE;
    let mut arrived_at_kills = Vec::new();
    for _ in 0..20 {
        let mut child = spawn_run(&fx);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 250));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        arrived_at_kills.push(server.keys("/api/events").len());
    }
    eprintln!("records at the server after each kill -9: {arrived_at_kills:?}");
    assert!(
        arrived_at_kills[0] < 5_000,
        "the kills came during the push"
    );
    let mut child = spawn_run(&fx);
    let reached = server.wait_for(Duration::from_secs(120), |s| {
        s.keys("/api/events").len() == 5_000
    });
    let (code, _) = terminate(&mut child);
    assert!(
        reached,
        "{} of 5000 arrived",
        server.keys("/api/events").len()
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        server.duplicates(),
        0,
        "no record stored twice at an idempotent server"
    );
    let (success, pending, failed) = statuses(&fx, "events");
    assert_eq!(failed, 0);
    assert_eq!(success + pending, 5_000);
}

#[test]
fn sigterm_during_a_push_exits_0_within_10_s_and_loses_nothing() {
    let server = TestServer::start(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "timeout = \"5s\"\nmax_concurrent = 4",
        "",
        EVENTS,
    );
    put_events(&fx, 0..100);
    let mut child = spawn_run(&fx);
    assert!(
        server.wait_for(Duration::from_secs(20), |s| s.requests() >= 8),
        "the push started"
    );
    let (code, took) = terminate(&mut child);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let before = server.keys("/api/events").len();
    assert!(before < 100, "stopped mid-push ({before} delivered)");
    let (success, _, failed) = statuses(&fx, "events");
    assert_eq!(failed, 0);
    assert!(
        success >= before.saturating_sub(4),
        "answers received before the stop were recorded"
    );
    let mut child = spawn_run(&fx);
    assert!(
        server.wait_for(Duration::from_secs(60), |s| s.keys("/api/events").len()
            == 100)
    );
    terminate(&mut child);
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn a_400_on_one_record_does_not_hold_back_the_others() {
    let server = TestServer::start(Faults {
        per_key: [("13".to_string(), Fault::Status(400))]
            .into_iter()
            .collect(),
        ..Faults::default()
    });
    let fx = fixture(Backend::Sqlite, &server, "", "", EVENTS);
    put_events(&fx, 0..50);
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(
        out.status.code(),
        Some(75),
        "a failed record remains: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = server.keys("/api/events");
    assert_eq!(keys.len(), 49);
    assert!(!keys.contains("13"));
    let row = fx
        .open()
        .tracking("events", &Key::Int(13))
        .unwrap()
        .unwrap();
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.last_http_status, Some(400));
    assert_eq!(
        row.error_message.as_deref(),
        Some("HTTP 400: {\"error\": \"injected 400 for record 13\"}")
    );
    // Once the server accepts it, a second pass delivers it and exits 0.
    server.set(|f| f.per_key.clear());
    let mut store = fx.open();
    let mut reset = row.clone();
    reset.status = Status::Pending;
    reset.next_attempt_at = None;
    store.write_tracking(&[reset]).unwrap();
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.keys("/api/events").len(), 50);
}

#[test]
fn a_record_over_the_servers_limit_fails_clearly_and_the_others_go_on() {
    let server = TestServer::start(Faults {
        max_body: Some(4_000),
        ..Faults::default()
    });
    let fx = fixture(Backend::Json, &server, "", "", EVENTS);
    put_events(&fx, 0..10);
    fx.open()
        .put(
            "events",
            record(json!({"id": 99, "blob": "x".repeat(10_000)})),
        )
        .unwrap();
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(server.keys("/api/events").len(), 10);
    let row = fx
        .open()
        .tracking("events", &Key::Int(99))
        .unwrap()
        .unwrap();
    assert_eq!(row.status, Status::Failed);
    let message = row.error_message.unwrap();
    assert!(message.starts_with("HTTP 413: the record ("), "{message}");
    assert!(
        message.contains("larger than the server accepts"),
        "{message}"
    );
}

#[test]
fn the_seed_003_database_drops_in_and_its_deliveries_are_never_repeated() {
    let server = TestServer::start(Faults {
        key_fields: vec!["id_evenement".into(), "id_media".into()],
        ..Faults::default()
    });
    let collections = "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\n\
        endpoint = \"/api/evenements\"\nextra = { source = \"sync_service\" }\n\
        [[collections]]\nname = \"media\"\nkey = \"id_media\"\nendpoint = \"/api/media\"\nblob_fields = [\"video_data\"]\n\
        extra = { source = \"sync_service\" }\n";
    let fx = fixture(Backend::Sqlite, &server, "", "", collections);
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let clip: Vec<u8> = (0..=255u8).cycle().take(512 * 1024).collect();
    {
        let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT NOT NULL, capteur_id INTEGER);
             CREATE TABLE media (id_media INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, capteur_id INTEGER, numero_camera INTEGER, video_data BLOB);
             CREATE TABLE sync_tracking (
                id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, local_id INTEGER NOT NULL,
                remote_id INTEGER, sync_date TEXT NOT NULL, sync_status TEXT NOT NULL, error_message TEXT,
                UNIQUE(table_name, local_id));
             INSERT INTO evenement (date, capteur_id) VALUES
                ('2025-12-18T17:30:00', 1), ('2025-12-18T17:35:00', 1), ('2025-12-18T17:40:00', 2),
                ('2025-12-18T17:45:00', 2), ('2025-12-18T17:50:00', 1);
             INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status, error_message) VALUES
                ('evenement', 1, 123, '2025-12-18 17:30:00.100000', 'success', NULL),
                ('evenement', 2, 124, '2025-12-18 17:35:00.100000', 'success', NULL),
                ('evenement', 3, NULL, '2025-12-18 17:40:00.100000', 'failed', 'Serveur inaccessible'),
                ('media', 1, 58, '2025-12-18 17:30:05.000000', 'success', NULL);",
        )
        .unwrap();
        for _ in 0..2 {
            conn.execute(
                "INSERT INTO media (date, capteur_id, numero_camera, video_data) VALUES ('2025-12-18T17:30:05', 4, 1, ?1)",
                [&clip],
            )
            .unwrap();
        }
    }
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: HashSet<_> = server
        .stored()
        .iter()
        .map(|s| format!("{} {}", s.path, s.key))
        .collect();
    let expected: HashSet<_> = [
        "/api/evenements 3",
        "/api/evenements 4",
        "/api/evenements 5",
        "/api/media 2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        sent, expected,
        "what the seed marked success was not sent again"
    );
    let media = server
        .stored()
        .into_iter()
        .find(|s| s.path == "/api/media")
        .unwrap();
    use base64::Engine as _;
    assert_eq!(
        media.body["video_data"],
        json!(base64::engine::general_purpose::STANDARD.encode(&clip))
    );
    assert_eq!(media.body["source"], json!("sync_service"));
    assert_eq!(media.body["device_id"], json!("test-device"));
    assert_eq!(media.body["numero_camera"], json!(1));
    // Another pass sends nothing more.
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(server.stored().len(), 4);
}

#[test]
fn continuous_mode_delivers_another_processs_insert_within_about_a_second() {
    let server = TestServer::start(Faults {
        key_fields: vec!["id_evenement".into()],
        ..Faults::default()
    });
    let collections = "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\nendpoint = \"/api/evenements\"\n";
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "mode = \"continuous\"",
        collections,
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT NOT NULL, capteur_id INTEGER);",
    )
    .unwrap();
    let mut child = spawn_run(&fx);
    std::thread::sleep(Duration::from_millis(1500)); // started and idle
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let inserted = Instant::now();
        conn.execute(
            "INSERT INTO evenement (date, capteur_id) VALUES (?1, 1)",
            [format!("2026-01-01T00:00:0{i}")],
        )
        .unwrap();
        let arrived = server.wait_for(Duration::from_secs(10), |s| {
            s.keys("/api/evenements").contains(&i.to_string())
        });
        assert!(arrived, "row {i} did not arrive");
        latencies.push(inserted.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, _) = terminate(&mut child);
    assert_eq!(code, Some(0));
    eprintln!("insert → server latencies: {latencies:?}");
    let worst = latencies.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(3), "worst latency {worst:?}");
}

/// The seed sync service's `evenement` table (another program's, AUTOINCREMENT), a
/// server that refuses every request until told otherwise, and a store whose
/// collection pauses after one refusal and does not look again for an hour unless
/// something wakes it.
fn seed_events_with_the_server_down() -> (TestServer, Fixture, rusqlite::Connection) {
    let server = TestServer::start(Faults {
        down: true,
        key_fields: vec!["id_evenement".into()],
        ..Faults::default()
    });
    let collections = "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\nendpoint = \"/api/evenements\"\n";
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "timeout = \"1s\"",
        "mode = \"continuous\"\nmax_retry_delay = \"2s\"\nretry_failed_every = \"1h\"",
        collections,
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT NOT NULL, capteur_id INTEGER);",
    )
    .unwrap();
    (server, fx, conn)
}

#[test]
fn records_written_while_the_server_was_down_go_out_once_the_probe_is_answered() {
    // Model check seed 17039800358983: the probe's 2xx ended the drain, and rows written
    // during the pause (no tracking row, their change notices spent while paused) waited
    // for the next full pass — an hour by default.
    let (server, fx, conn) = seed_events_with_the_server_down();
    let insert = |i: u32| {
        conn.execute(
            "INSERT INTO evenement (date, capteur_id) VALUES (?1, 1)",
            [format!("2026-01-01T00:00:{i:02}")],
        )
        .unwrap();
    };
    let mut child = spawn_run(&fx);
    insert(1);
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.refused_while_down() >= 1),
        "ferry tried the server"
    );
    // Paused: these are seen, and wait.
    for i in 2..=20 {
        insert(i);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    server.set(|f| f.down = false);
    let arrived = server.wait_for(Duration::from_secs(15), |s| {
        s.keys("/api/evenements").len() == 20
    });
    let (code, _) = terminate(&mut child);
    assert!(
        arrived,
        "{} of 20 arrived within 15 s of the server's return",
        server.keys("/api/evenements").len()
    );
    assert_eq!(code, Some(0));
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn records_whose_tracking_was_reset_during_a_pause_go_out_once_the_server_is_back() {
    // Model check seed 1869673050880: a 409 paused the collection, then
    // `reset-tracking` forgot the one row that was to be retried. With no row left to
    // fall due, the lane slept until the next full pass (an hour) instead of probing
    // when the pause ended.
    let (server, fx, conn) = seed_events_with_the_server_down();
    for i in 1..=5 {
        conn.execute(
            "INSERT INTO evenement (date, capteur_id) VALUES (?1, 1)",
            [format!("2026-01-01T00:00:{i:02}")],
        )
        .unwrap();
    }
    let mut child = spawn_run(&fx);
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.refused_while_down() >= 1),
        "ferry tried the server"
    );
    let reset = fx.ferry(
        &["reset-tracking", "--collection", "evenement", "--yes"],
        None,
    );
    assert!(reset.status.success(), "{reset:?}");
    server.set(|f| f.down = false);
    let arrived = server.wait_for(Duration::from_secs(15), |s| {
        s.keys("/api/evenements").len() == 5
    });
    let (code, _) = terminate(&mut child);
    assert!(
        arrived,
        "{} of 5 arrived within 15 s of the server's return",
        server.keys("/api/evenements").len()
    );
    assert_eq!(code, Some(0));
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn continuous_mode_sees_json_files_another_process_replaces() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Json, &server, "", "mode = \"continuous\"", EVENTS);
    fx.open();
    let mut child = spawn_run(&fx);
    std::thread::sleep(Duration::from_millis(1000));
    let inserted = Instant::now();
    let out = fx.ferry(
        &["put", "events"],
        Some(br#"{"id": "from-another-process"}"#),
    );
    assert!(out.status.success());
    let arrived = server.wait_for(Duration::from_secs(10), |s| {
        s.keys("/api/events").contains("from-another-process")
    });
    let latency = inserted.elapsed();
    terminate(&mut child);
    assert!(arrived);
    eprintln!("JSON put → server latency: {latency:?}");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
}

#[test]
fn updates_are_put_with_the_latest_state_at_most_about_once_a_second() {
    let server = TestServer::start(Faults::default());
    let collections = "[[collections]]\nname = \"downloads\"\nkey = \"id\"\nupdated_at = \"updated_at\"\nendpoint = \"/api/downloads\"\nupdates = \"put\"\n";
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "mode = \"continuous\"",
        collections,
    );
    let mut store = fx.open();
    store
        .put(
            "downloads",
            record(json!({"id": "dl-1", "progress": 0.0, "updated_at": "2026-01-01T00:00:00.000"})),
        )
        .unwrap();
    drop(store);
    let mut child = spawn_run(&fx);
    assert!(server.wait_for(Duration::from_secs(10), |s| !s.stored().is_empty()));
    // Progress moves 20 times a second for 3 seconds, from another process.
    let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    for step in 1..=60 {
        let record = json!({"id": "dl-1", "progress": step as f64 / 60.0 * 100.0,
                            "updated_at": format!("2026-01-01T00:00:{:02}.{:03}", step / 20, (step % 20) * 50)});
        conn.execute(
            "UPDATE downloads SET progress = ?1, updated_at = ?2 WHERE id = 'dl-1'",
            rusqlite::params![record["progress"].as_f64(), record["updated_at"].as_str()],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = server.wait_for(Duration::from_secs(10), |s| {
        s.stored()
            .last()
            .is_some_and(|r| r.body["progress"] == json!(100.0))
    });
    terminate(&mut child);
    assert!(last, "the final state arrived");
    let stored = server.stored();
    let puts: Vec<_> = stored.iter().filter(|s| s.method == "PUT").collect();
    eprintln!("{} PUTs for 60 changes in 3 s", puts.len());
    let paths: Vec<_> = puts.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.iter().all(|p| *p == "/api/downloads/1"),
        "PUT to the remote id: {paths:?}"
    );
    assert!(
        puts.len() >= 2 && puts.len() <= 6,
        "about once a second: {} PUTs",
        puts.len()
    );
    for pair in puts.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(900),
            "too close: {:?}",
            pair[1].at - pair[0].at
        );
    }
}

#[test]
fn a_token_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "token_file = \"token\"",
        "",
        EVENTS,
    );
    let token = fx.path("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    put_events(&fx, 0..3);
    // `ferry config check` says it first, with the key that names the file.
    let check = fx.ferry(&["config", "check"], None);
    assert_eq!(check.status.code(), Some(78));
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("remote.token_file:") && said.contains("can be read by other users"),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "{said}");
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can be read by other users (mode 644)"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(server.requests(), 0);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let stored = server.stored();
    assert_eq!(stored.len(), 3);
    assert!(stored
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer s3cret-token")));
    assert!(stored.iter().all(|s| s
        .idempotency_key
        .as_deref()
        .is_some_and(|k| k.starts_with("test-device:events:"))));
}

#[test]
fn dry_run_lists_and_sends_nothing() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Sqlite, &server, "", "", EVENTS);
    put_events(&fx, 0..3);
    let out = fx.ferry(&["sync", "--once", "--dry-run"], None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    // An append-only record's version is a fingerprint of its content.
    assert!(
        text.contains("events POST /api/events (key 0, Idempotency-Key test-device:events:0:fp-"),
        "{text}"
    );
    assert!(text.contains("3 record(s) would be sent"), "{text}");
    assert_eq!(server.requests(), 0);
    assert_eq!(statuses(&fx, "events"), (0, 0, 0));
}

#[test]
fn periodic_mode_passes_every_interval() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        Backend::Sqlite,
        &server,
        "",
        "mode = \"periodic\"\ninterval = \"1s\"",
        EVENTS,
    );
    put_events(&fx, 0..3);
    let mut child = spawn_run(&fx);
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.keys("/api/events").len()
            == 3),
        "first pass"
    );
    let out = fx.ferry(&["put", "events"], Some(br#"{"id": 100}"#));
    assert!(out.status.success());
    let put_at = Instant::now();
    let arrived = server.wait_for(Duration::from_secs(10), |s| {
        s.keys("/api/events").contains("100")
    });
    let waited = put_at.elapsed();
    terminate(&mut child);
    assert!(arrived);
    assert!(
        waited < Duration::from_secs(3),
        "next pass within the interval: {waited:?}"
    );
}

#[test]
fn delivery_settings_that_cannot_work_exit_78() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(Backend::Sqlite, &server, "ca_file = \"ca.pem\"", "", EVENTS);
    std::fs::write(fx.path("ca.pem"), "not a certificate\n").unwrap();
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("remote.ca_file:") && err.contains("ca.pem"),
        "{err}"
    );

    // `ferry run` without remote.url waits for it instead (tests/it/systemd.rs).
    let fx = Fixture::with_config(Backend::Sqlite, "", EVENTS);
    let out = fx.ferry(&["sync", "--once"], None);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("remote.url is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_record_deleted_while_pending_and_written_again_is_delivered() {
    // A 503: the server may have stored it. Deleted meanwhile, its row is forgotten:
    // nothing is left to deliver while it is gone. Written again as it was, it is the
    // same version and goes out under the same key, so the server keeps one.
    let server = TestServer::start(Faults {
        per_key: [("7".to_string(), Fault::Status(503))]
            .into_iter()
            .collect(),
        ..Faults::default()
    });
    let fx = fixture(Backend::Sqlite, &server, "", "", EVENTS);
    put_events(&fx, 7..8);
    assert_eq!(
        fx.ferry(&["sync", "--once"], None).status.code(),
        Some(75),
        "7 is pending"
    );
    let claimed = fx.open().tracking("events", &Key::Int(7)).unwrap().unwrap();
    let key = claimed.claim.clone().expect("claimed").key;
    fx.open().delete("events", &Key::Int(7)).unwrap();
    let mut row = claimed;
    row.next_attempt_at = None;
    fx.open().write_tracking(&[row]).unwrap();
    assert_eq!(
        fx.ferry(&["sync", "--once"], None).status.code(),
        Some(0),
        "nothing left once it is gone"
    );
    assert_eq!(fx.open().tracking("events", &Key::Int(7)).unwrap(), None);
    server.set(|f| f.per_key.clear());
    put_events(&fx, 7..8);
    fx.ferry(&["retry"], None);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    let sent: Vec<_> = server
        .stored()
        .into_iter()
        .filter(|s| s.key == "7")
        .collect();
    assert_eq!(sent.len(), 1, "written again: delivered once");
    assert_eq!(sent[0].idempotency_key.as_deref(), Some(key.as_str()));

    // Written again with other content after the gap: a new record, sent as it is now
    // (the first one's claimed body must not go out in its place — model check seed
    // 741333262939).
    server.set(|f| {
        f.per_key.insert("9".to_string(), Fault::Status(503));
    });
    put_events(&fx, 9..10);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(75));
    fx.open().delete("events", &Key::Int(9)).unwrap();
    fx.ferry(&["retry"], None);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    server.set(|f| f.per_key.clear());
    fx.open()
        .put(
            "events",
            record(json!({"id": 9, "kind": "door", "value": 1})),
        )
        .unwrap();
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    let sent: Vec<_> = server
        .stored()
        .into_iter()
        .filter(|s| s.key == "9")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body["kind"], json!("door"));

    // A definite refusal (400) stores nothing: deleted, the key is free at once.
    let server = TestServer::start(Faults {
        per_key: [("8".to_string(), Fault::Status(400))]
            .into_iter()
            .collect(),
        ..Faults::default()
    });
    let fx = fixture(Backend::Sqlite, &server, "", "", EVENTS);
    put_events(&fx, 8..9);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(75));
    fx.open().delete("events", &Key::Int(8)).unwrap();
    fx.ferry(&["retry"], None);
    assert_eq!(fx.ferry(&["sync", "--once"], None).status.code(), Some(0));
    assert_eq!(fx.open().tracking("events", &Key::Int(8)).unwrap(), None);
}
