//! The operator commands against stores in known states, on both backends.

use std::time::Duration;

use ferry::config::Backend;
use ferry::store::{Key, Status, Tracking};
use serde_json::{json, Value};

use crate::server::{Faults, TestServer};
use crate::support::{record, Fixture};

const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n";

/// Ten records: 1–6 delivered, 7 refused with 401, 8 refused with 422, 9 waiting after
/// timeouts, 10 never tried.
fn known_state(backend: Backend, server: &TestServer) -> Fixture {
    let fx = Fixture::with_config(
        backend,
        &format!(
            "[remote]\nurl = \"{}\"\ntoken_file = \"token\"\n",
            server.url
        ),
        EVENTS,
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(fx.path("token"), "t0ken\n").unwrap();
        std::fs::set_permissions(fx.path("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut store = fx.open();
    store
        .put_many(
            "events",
            (1..=10).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let mut rows = Vec::new();
    for i in 1..=6 {
        let mut row = Tracking::new("events", Key::Int(i), 1_763_800_000_000 + i * 1000);
        row.status = Status::Success;
        row.bytes_sent = 100;
        row.attempts = 1;
        row.remote_id = Some(Key::Int(100 + i));
        rows.push(row);
    }
    let failed = |key: i64, status: u16, message: &str| {
        let mut row = Tracking::new("events", Key::Int(key), 1_763_700_000_000);
        row.status = Status::Failed;
        row.attempts = 1;
        row.last_http_status = Some(status);
        row.error_message = Some(message.into());
        row.next_attempt_at = Some(i64::MAX / 2);
        row
    };
    rows.push(failed(7, 401, "HTTP 401: {\"error\": \"bad token\"}"));
    rows.push(failed(
        8,
        422,
        "HTTP 422: {\"error\": \"capteur is required\"}",
    ));
    let mut waiting = Tracking::new("events", Key::Int(9), 1_763_600_000_000);
    waiting.attempts = 2;
    waiting.error_message = Some("timeout: no answer within 10s".into());
    waiting.next_attempt_at = Some(i64::MAX / 2);
    rows.push(waiting);
    store.write_tracking(&rows).unwrap();
    fx
}

fn run(fx: &Fixture, args: &[&str]) -> (Option<i32>, String, String) {
    let out = fx.ferry(args, None);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn stats_and_diagnose(backend: Backend) {
    let server = TestServer::start(Faults::default());
    let fx = known_state(backend, &server);
    let (code, text, err) = run(&fx, &["stats"]);
    assert_eq!(code, Some(0), "{err}");
    let events = text
        .lines()
        .find(|l| l.starts_with("events"))
        .unwrap_or_default();
    let columns: Vec<&str> = events.split_whitespace().collect();
    assert_eq!(
        &columns[..6],
        ["events", "10", "6", "(60.0%)", "2", "2"],
        "{text}"
    );
    assert!(events.contains("600 B"), "{text}");
    assert!(
        text.contains(
            "1 failed with HTTP 401/403 (the server refuses ferry's credentials) → check "
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} (one line, mode 600)",
            fx.path("token").display()
        )),
        "{text}"
    );
    assert!(text.contains("then `ferry retry`"), "{text}");
    assert!(text.contains("1 failed with HTTP 400/422"), "{text}");
    assert!(text.contains("`ferry retry --collection events`"), "{text}");
    assert!(
        text.contains("1 waiting to be retried with timeout"),
        "{text}"
    );

    let (_, compact, _) = run(&fx, &["stats", "--compact"]);
    assert_eq!(compact.lines().count(), 1, "{compact}");
    assert!(
        compact.starts_with(
            "ferry: 10 records · 6 synced (60.0%) · 2 pending · 2 failed · last success "
        ),
        "{compact}"
    );

    let (_, json_text, _) = run(&fx, &["stats", "--json"]);
    let doc: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(doc["version"], json!(1));
    let events = &doc["collections"][0];
    assert_eq!(events["name"], json!("events"));
    assert_eq!(
        (
            events["records"].clone(),
            events["synced"].clone(),
            events["failed"].clone()
        ),
        (json!(10), json!(6), json!(2))
    );
    assert_eq!(events["synced_percent"], json!(60.0));
    assert_eq!(events["bytes_delivered"], json!(600));
    assert_eq!(doc["totals"]["pending"], json!(2));
    assert!(
        doc["recommendations"]
            .as_array()
            .is_some_and(|r| r.len() == 3),
        "{doc}"
    );

    let (code, text, _) = run(&fx, &["diagnose"]);
    assert_eq!(code, Some(0));
    assert!(
        text.starts_with("3 record(s) tried and not delivered, by cause:"),
        "{text}"
    );
    assert!(
        text.contains("HTTP 401/403 (the server refuses ferry's credentials) — 1 record(s)"),
        "{text}"
    );
    assert!(text.contains("  events 7  failed "), "{text}");
    assert!(
        text.contains("HTTP 401: {\"error\": \"bad token\"}"),
        "{text}"
    );
    assert!(
        text.contains("timeout (no answer in time) — 1 record(s)"),
        "{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("fix: "))
            .count()
            == 3,
        "{text}"
    );
}

fn retry_then_sync(backend: Backend) {
    let server = TestServer::start(Faults::default());
    let fx = known_state(backend, &server);
    assert_eq!(
        run(&fx, &["sync", "--once"]).0,
        Some(75),
        "7, 8, 9 are not due yet"
    );
    assert_eq!(server.keys("/api/events").len(), 1, "only 10 was sent");
    let (code, text, _) = run(&fx, &["retry"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("events: 3 record(s) will be tried again now"),
        "{text}"
    );
    assert_eq!(run(&fx, &["sync", "--once"]).0, Some(0));
    assert_eq!(server.keys("/api/events").len(), 4);
    let (_, text, _) = run(&fx, &["retry", "--collection", "events"]);
    assert!(text.contains("nothing to retry"), "{text}");
}

fn reset_tracking_sends_everything_again(backend: Backend) {
    let server = TestServer::start(Faults::default());
    let fx = known_state(backend, &server);
    let (code, _, err) = run(&fx, &["reset-tracking", "--collection", "events"]);
    assert_eq!(code, Some(2), "asks first; no terminal, no --yes: refused");
    assert!(err.contains("add --yes"), "{err}");
    let (code, text, _) = run(&fx, &["reset-tracking", "--collection", "events", "--yes"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains(
            "events: 9 delivery record(s) forgotten; all 10 record(s) will be sent again"
        ),
        "{text}"
    );
    assert_eq!(run(&fx, &["sync", "--once"]).0, Some(0));
    assert_eq!(server.keys("/api/events").len(), 10, "all sent again");
}

fn backup_is_a_sound_store(backend: Backend) {
    let server = TestServer::start(Faults::default());
    let fx = known_state(backend, &server);
    let dest = match backend {
        Backend::Sqlite => fx.path("copy.db"),
        Backend::Json => fx.path("copy"),
    };
    let (code, text, err) = run(&fx, &["backup", dest.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("events: 10, 6, 2, 2"), "{text}");
    let mut config = fx.config.clone();
    config.storage.sqlite_path = fx.path("copy.db");
    config.storage.json_dir = fx.path("copy");
    let mut copy = ferry::store::open(&config).unwrap();
    assert_eq!(copy.quick_check().unwrap(), None);
    assert_eq!(copy.counts("events").unwrap().success, 6);
    if backend == Backend::Sqlite {
        assert!(
            run(&fx, &["backup", dest.to_str().unwrap()]).0 == Some(2),
            "never overwrites"
        );
    }
}

macro_rules! both {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[test] fn $test() { super::$test(ferry::config::Backend::Sqlite) } )* }
        mod json { $( #[test] fn $test() { super::$test(ferry::config::Backend::Json) } )* }
    };
}

both!(
    stats_and_diagnose,
    retry_then_sync,
    reset_tracking_sends_everything_again,
    backup_is_a_sound_store
);

/// A backup taken while `ferry run` delivers is a sound store holding every record
/// committed before it began.
#[test]
fn a_backup_during_delivery_holds_every_record_committed_before_it() {
    let server = TestServer::start(Faults {
        delay: Duration::from_millis(5),
        ..Faults::default()
    });
    let fx = Fixture::with_config(
        Backend::Sqlite,
        &format!("[remote]\nurl = \"{}\"\n", server.url),
        EVENTS,
    );
    fx.open()
        .put_many(
            "events",
            (0..3_000)
                .map(|i| record(json!({"id": i, "v": "x".repeat(200)})))
                .collect(),
        )
        .unwrap();
    let mut daemon = std::process::Command::new(crate::support::ferry_bin())
        .arg("--config")
        .arg(&fx.config_path)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Past the first batch (250 records, one tracking commit), before the end.
    assert!(
        server.wait_for(Duration::from_secs(30), |s| s.requests() > 700),
        "delivering"
    );
    let (code, _, err) = run(&fx, &["backup", fx.path("during.db").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    unsafe {
        libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM);
    }
    daemon.wait().unwrap();
    let mut config = fx.config.clone();
    config.storage.sqlite_path = fx.path("during.db");
    let mut copy = ferry::store::open(&config).unwrap();
    assert_eq!(copy.quick_check().unwrap(), None, "sound");
    let counts = copy.counts("events").unwrap();
    eprintln!("backup taken mid-push: {counts:?}");
    assert_eq!(
        counts.records, 3_000,
        "every record committed before the backup"
    );
    assert!(
        counts.success > 0 && counts.success < 3_000,
        "taken mid-push: {counts:?}"
    );
}

#[test]
fn check_finds_overwritten_pages_and_repair_recovers_the_intact_rows() {
    let server = TestServer::start(Faults::default());
    let fx = Fixture::with_config(
        Backend::Sqlite,
        &format!("[remote]\nurl = \"{}\"\n", server.url),
        EVENTS,
    );
    let filler = "z".repeat(300);
    fx.open()
        .put_many(
            "events",
            (0..4_000)
                .map(|i| record(json!({"id": i, "fill": filler})))
                .collect(),
        )
        .unwrap();
    let db = fx.path("state/ferry.db");
    let identity = fx.open().store_id(false).unwrap();
    assert!(identity.is_some());
    crate::support::checkpoint(&db);
    assert_eq!(run(&fx, &["check"]).0, Some(0), "sound at first");
    crate::support::overwrite_middle_pages(&db, 6, 0x5A);

    let (code, text, _) = run(&fx, &["check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("ferry.db: DAMAGED:"), "{text}");
    assert!(text.contains("ferry check --repair"), "{text}");

    let (code, text, err) = run(&fx, &["check", "--repair"]);
    assert_eq!(code, Some(0), "{text}{err}");
    eprintln!("{text}");
    assert!(text.contains("repaired:"), "{text}");
    assert!(text.contains("the damaged file is kept as"), "{text}");
    let kept: Vec<_> = std::fs::read_dir(fx.path("state"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ferry.db.damaged-")
        })
        .collect();
    assert!(!kept.is_empty(), "the damaged database is kept beside");
    assert_eq!(
        run(&fx, &["check"]).0,
        Some(0),
        "the repaired store is sound"
    );
    let recovered = fx.open().counts("events").unwrap().records;
    // Rows were lost: the start-up migration must not read the repaired store
    // against a baseline that says what it held before (and delete those rows on the
    // other side too).
    let repaired = fx.open().store_id(false).unwrap();
    assert!(
        repaired.is_some() && repaired != identity,
        "a new store identity"
    );
    eprintln!("recovered {recovered} of 4000 rows");
    assert!(
        (3_900..4_000).contains(&recovered),
        "most rows recovered: {recovered}"
    );
}

#[test]
fn check_names_a_truncated_json_file_and_repair_keeps_what_parses() {
    let fx = Fixture::with_collections(Backend::Json, EVENTS);
    fx.open()
        .put_many(
            "events",
            (0..50)
                .map(|i| record(json!({"id": i, "v": "é"})))
                .collect(),
        )
        .unwrap();
    assert!(fx.open().store_id(true).unwrap().is_some());
    let file = fx.path("state/json/events.json");
    let bytes = std::fs::read(&file).unwrap();
    let cut = bytes.len() * 2 / 3;
    std::fs::write(&file, &bytes[..cut]).unwrap();
    let (code, text, _) = run(&fx, &["check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("events.json: DAMAGED: not valid JSON at line"),
        "{text}"
    );
    let (code, text, _) = run(&fx, &["check", "--repair"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("entries kept;") && text.contains("cut off or damaged"),
        "{text}"
    );
    let records = fx.open().list("events", None, 100).unwrap();
    eprintln!("kept {} of 50 records", records.len());
    assert!((30..50).contains(&records.len()), "{}", records.len());
    assert!(
        records.iter().all(|r| r["v"] == json!("é")),
        "whole records only"
    );
    assert_eq!(
        fx.open().store_id(false).unwrap(),
        None,
        "records were lost: a new store to the migration"
    );
    assert_eq!(run(&fx, &["check"]).0, Some(0));
}

/// Delivered records deleted and new ones written: stats counts the records there are.
#[test]
fn stats_counts_only_records_that_exist() {
    let server = TestServer::start(Faults::default());
    let fx = Fixture::with_config(
        Backend::Sqlite,
        &format!("[remote]\nurl = \"{}\"\n", server.url),
        EVENTS,
    );
    fx.open()
        .put_many(
            "events",
            (1..=4).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    assert_eq!(run(&fx, &["sync", "--once"]).0, Some(0));
    let mut store = fx.open();
    for i in 1..=4 {
        store.delete("events", &Key::Int(i)).unwrap();
    }
    store
        .put_many(
            "events",
            (5..=8).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    drop(store);
    let (_, compact, _) = run(&fx, &["stats", "--compact"]);
    assert!(
        compact.starts_with("ferry: 4 records · 0 synced (0.0%) · 4 pending · 0 failed"),
        "{compact}"
    );
}

/// sync_tracking.json holds one object per collection: a cut inside it keeps the rows
/// before the cut, so repaired tracking does not send everything again.
#[test]
fn repair_keeps_the_tracking_rows_before_a_cut() {
    let fx = Fixture::with_collections(Backend::Json, EVENTS);
    let mut store = fx.open();
    store
        .put_many(
            "events",
            (0..1_000).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let rows: Vec<_> = (0..1_000)
        .map(|i| {
            let mut row = Tracking::new("events", Key::Int(i), 0);
            row.status = Status::Success;
            row
        })
        .collect();
    store.write_tracking(&rows).unwrap();
    drop(store);
    let file = fx.path("state/json/sync_tracking.json");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let (code, text, _) = run(&fx, &["check", "--repair"]);
    assert_eq!(code, Some(0), "{text}");
    let kept = fx.open().counts("events").unwrap().success;
    eprintln!("{text}\nkept {kept} of 1000 tracking rows");
    assert!(kept >= 990, "{kept}");
}
