//! The start-up migration between the JSON and SQLite backends: nothing lost, nothing
//! sent again.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry::config::{Backend, Config};
use ferry::store::migrate::migrate;
use ferry::store::record::bytes_value;
use ferry::store::{self, Key, Status, Store, Tracking};
use serde_json::json;

use crate::server::{Faults, TestServer};
use crate::support::{ferry_bin, record, Fixture};

/// A collection ferry creates itself in SQLite (a document table). (A collection
/// named `downloads` would get the seed Plex service's exact columns.)
const JOBS: &str = "[[collections]]\nname = \"jobs\"\nkey = \"id\"\nupdated_at = \"updated_at\"\n\
    endpoint = \"/api/jobs\"\nblob_fields = [\"torrent\"]\n";

fn with_backend(config: &Config, backend: Backend) -> Config {
    let mut config = config.clone();
    config.storage.backend = backend;
    config
}

/// Every record (as its JSON text) and every tracking row of a collection.
fn snapshot(
    store: &mut dyn Store,
    collection: &str,
) -> (BTreeMap<Key, String>, BTreeMap<Key, Tracking>) {
    let records = store
        .list(collection, None, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                Key::from_value(&r["id"]).unwrap(),
                serde_json::to_string(&r).unwrap(),
            )
        })
        .collect();
    let tracking = store
        .tracking_page(collection, None, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|t| (t.key.clone(), t))
        .collect();
    (records, tracking)
}

fn fill(store: &mut dyn Store, count: usize) {
    let records: Vec<_> = (0..count)
        .map(|i| {
            record(json!({
                "id": format!("dl-{i:05}"),
                "name": format!("tëst {i} 🚀"),
                "progress": i as f64 / 7.0,
                "size": 9_007_199_254_740_993_i64 - i as i64,
                "torrent": bytes_value(&[i as u8, 0, 255, (i >> 8) as u8]),
                "tags": ["a", i, null],
                "updated_at": format!("2026-01-01T00:00:{:02}.{:03}Z", i % 60, i % 1000)
            }))
        })
        .collect();
    store.put_many("jobs", records).unwrap();
    let tracking: Vec<_> = (0..count)
        .step_by(2)
        .map(|i| {
            let mut row = Tracking::new(
                "jobs",
                Key::parse(&format!("dl-{i:05}")),
                1_700_000_000_000 + i as i64,
            );
            match i % 3 {
                0 => {
                    row.status = Status::Success;
                    row.remote_id = Some(Key::Int(i as i64 + 1000));
                    row.last_http_status = Some(201);
                    row.bytes_sent = 300 + i as u64;
                }
                1 => {
                    row.next_attempt_at = Some(1_800_000_000_000);
                    row.error_message = Some("HTTP 503: busy".into());
                    row.last_http_status = Some(503);
                }
                _ => {
                    row.status = Status::Failed;
                    row.error_message = Some("HTTP 422: ça ne va pas".into());
                    row.next_attempt_at = Some(1_800_000_000_000);
                }
            }
            row.attempts = (i % 5) as u32;
            row.version = Some(format!("2026-01-01T00:00:{:02}.{:03}Z", i % 60, i % 1000));
            row
        })
        .collect();
    store.write_tracking(&tracking).unwrap();
}

#[test]
fn ten_thousand_records_go_json_to_sqlite_to_json_byte_for_byte() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let mut json_store = fx.open();
    fill(json_store.as_mut(), 10_000);
    let original = snapshot(json_store.as_mut(), "jobs");
    drop(json_store);

    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    let reports = migrate(&sqlite, Backend::Sqlite, false).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].migrated, 10_000);
    assert_eq!(reports[0].tracking, 5_000);
    assert_eq!(
        snapshot(store::open(&sqlite).unwrap().as_mut(), "jobs"),
        original
    );

    // The JSON side goes away entirely and is rebuilt from SQLite.
    std::fs::remove_dir_all(&fx.config.storage.json_dir).unwrap();
    std::fs::create_dir_all(&fx.config.storage.json_dir).unwrap();
    let reports = migrate(&fx.config, Backend::Json, false).unwrap();
    assert_eq!(reports[0].to_string(), "migration sqlite→json: 10000 jobs migrated (0 updated, 0 kept newer), 5000 tracking rows moved");
    assert_eq!(snapshot(fx.open().as_mut(), "jobs"), original);
    // A second start migrates nothing.
    assert!(migrate(&fx.config, Backend::Json, false)
        .unwrap()
        .is_empty());
    assert!(migrate(&sqlite, Backend::Sqlite, false).unwrap().is_empty());
}

fn download(id: &str, updated_at: &str) -> ferry::store::Record {
    record(json!({"id": id, "updated_at": updated_at, "v": updated_at}))
}

#[test]
fn both_sides_edited_the_newer_record_wins_and_nothing_is_lost() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let mut json_store = fx.open();
    for id in ["a", "b", "c"] {
        json_store
            .put("jobs", download(id, "2026-01-01T10:00:00Z"))
            .unwrap();
    }
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    migrate(&sqlite, Backend::Sqlite, false).unwrap();
    let mut sqlite_store = store::open(&sqlite).unwrap();
    // Edited on the SQLite side...
    sqlite_store
        .put("jobs", download("a", "2026-01-01T12:00:00Z"))
        .unwrap();
    sqlite_store
        .put("jobs", download("e", "2026-01-01T12:00:00Z"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // ...and later on the JSON side, which ends up written last.
    json_store
        .put("jobs", download("b", "2026-01-01T11:00:00Z"))
        .unwrap();
    json_store
        .put("jobs", download("d", "2026-01-01T11:00:00Z"))
        .unwrap();
    drop((json_store, sqlite_store));

    let reports = migrate(&sqlite, Backend::Sqlite, false).unwrap();
    assert_eq!(
        reports[0].to_string(),
        "migration json→sqlite: 2 jobs migrated (1 updated, 1 kept newer)"
    );
    let mut sqlite_store = store::open(&sqlite).unwrap();
    let version = |s: &mut dyn Store, id: &str| {
        s.get("jobs", &Key::parse(id))
            .unwrap()
            .map(|r| r["v"].clone())
    };
    assert_eq!(
        version(sqlite_store.as_mut(), "a"),
        Some(json!("2026-01-01T12:00:00Z")),
        "newer on SQLite: kept"
    );
    assert_eq!(
        version(sqlite_store.as_mut(), "b"),
        Some(json!("2026-01-01T11:00:00Z")),
        "newer on JSON: taken"
    );
    assert_eq!(
        version(sqlite_store.as_mut(), "c"),
        Some(json!("2026-01-01T10:00:00Z"))
    );
    assert!(
        version(sqlite_store.as_mut(), "d").is_some(),
        "only on JSON: kept"
    );
    assert!(
        version(sqlite_store.as_mut(), "e").is_some(),
        "only on SQLite: kept"
    );
}

#[test]
fn a_deletion_on_the_active_side_survives_a_migration_from_the_older_side() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let mut json_store = fx.open();
    for id in ["a", "b"] {
        json_store
            .put("jobs", download(id, "2026-01-01T10:00:00Z"))
            .unwrap();
    }
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    migrate(&sqlite, Backend::Sqlite, false).unwrap();
    store::open(&sqlite)
        .unwrap()
        .delete("jobs", &Key::parse("a"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // The JSON side is touched afterwards, so it is the newer side, and still has "a".
    json_store
        .put("jobs", download("c", "2026-01-01T10:00:00Z"))
        .unwrap();
    drop(json_store);
    let reports = migrate(&sqlite, Backend::Sqlite, false).unwrap();
    assert_eq!(reports[0].migrated, 1, "{reports:?}");
    let mut sqlite_store = store::open(&sqlite).unwrap();
    assert_eq!(
        sqlite_store.get("jobs", &Key::parse("a")).unwrap(),
        None,
        "not revived"
    );
    assert!(sqlite_store
        .get("jobs", &Key::parse("c"))
        .unwrap()
        .is_some());
}

#[test]
fn switching_back_and_forth_with_edits_converges_to_the_newest_state() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..6 {
        let (config, backend) = if round % 2 == 0 {
            (&fx.config, Backend::Json)
        } else {
            (&sqlite, Backend::Sqlite)
        };
        migrate(config, backend, false).unwrap();
        let mut active = store::open(config).unwrap();
        for i in 0..5 {
            let id = format!("k{}", (round + i) % 7);
            let stamp = format!("2026-01-01T00:{round:02}:{i:02}Z");
            active.put("jobs", download(&id, &stamp)).unwrap();
            expected.insert(id, stamp);
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    for (config, backend) in [(&fx.config, Backend::Json), (&sqlite, Backend::Sqlite)] {
        migrate(config, backend, false).unwrap();
        let mut active = store::open(config).unwrap();
        let got: BTreeMap<String, String> = active
            .list("jobs", None, 100)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["v"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{backend:?}");
    }
}

#[test]
fn kill_9_during_migrate_20_times_ends_like_an_uninterrupted_migration() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    fill(fx.open().as_mut(), 20_000);
    // The reference: the same JSON migrated without interruption, elsewhere.
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = with_backend(&fx.config, Backend::Sqlite);
    reference.storage.sqlite_path = reference_dir.path().join("reference.db");
    reference.storage.backups_dir = reference_dir.path().join("backups");
    migrate(&reference, Backend::Sqlite, false).unwrap();
    let expected = snapshot(store::open(&reference).unwrap().as_mut(), "jobs");

    let mut seed: u64 = 0xDEC0DE;
    let mut killed = 0;
    for _ in 0..20 {
        let mut child = Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .args(["migrate", "--to", "sqlite"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 400));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        child.kill().ok();
        child.wait().unwrap();
    }
    eprintln!("{killed} of 20 runs were killed before they finished");
    assert!(killed >= 5, "the kills came during migrations");
    let out = Command::new(ferry_bin())
        .arg("--config")
        .arg(&fx.config_path)
        .args(["migrate", "--to", "sqlite"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    assert_eq!(
        snapshot(store::open(&sqlite).unwrap().as_mut(), "jobs"),
        expected
    );
    // Backups were kept to backups_keep.
    let backups = std::fs::read_dir(&fx.config.storage.backups_dir)
        .unwrap()
        .count();
    assert!(
        backups <= fx.config.storage.backups_keep as usize,
        "{backups} backups"
    );
}

#[test]
fn deliveries_made_on_one_backend_are_not_repeated_on_the_other() {
    let server = TestServer::start(Faults::default());
    let tables = format!("[remote]\nurl = \"{}\"\n", server.url);
    let fx = Fixture::with_config(Backend::Json, &tables, JOBS);
    let mut json_store = fx.open();
    for i in 0..20 {
        json_store
            .put("jobs", download(&format!("j{i}"), "2026-01-01T10:00:00Z"))
            .unwrap();
    }
    drop(json_store);
    let sync = |config: &std::path::Path| {
        let out = crate::support::ferry_command(config, &["sync", "--once"], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sync(&fx.config_path);
    assert_eq!(server.requests(), 20);

    // Switch to SQLite: the start-up migration brings records and tracking over.
    let text = std::fs::read_to_string(&fx.config_path)
        .unwrap()
        .replace("backend = \"json\"", "backend = \"sqlite\"");
    std::fs::write(&fx.config_path, &text).unwrap();
    sync(&fx.config_path);
    assert_eq!(
        server.requests(),
        20,
        "nothing sent again after switching to SQLite"
    );
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    store::open(&sqlite)
        .unwrap()
        .put("jobs", download("s1", "2026-01-02T10:00:00Z"))
        .unwrap();
    sync(&fx.config_path);
    assert_eq!(server.requests(), 21);

    // And back to JSON.
    std::fs::write(
        &fx.config_path,
        text.replace("backend = \"sqlite\"", "backend = \"json\""),
    )
    .unwrap();
    sync(&fx.config_path);
    assert_eq!(
        server.requests(),
        21,
        "nothing sent again after switching back to JSON"
    );
    assert_eq!(server.duplicates(), 0);
}

/// A key deleted and written again on one backend (ferry saw the gap) names a new
/// record: switching back, the other backend's tracking of the first record must not
/// pass for the second's — the second goes out as a create of its own. (Model check
/// seed 741333262831: the old row survived the merge and the new record was lost.)
#[test]
fn a_key_written_again_on_one_side_is_a_new_record_on_the_other() {
    let server = TestServer::start(Faults::default());
    let tables = format!("[remote]\nurl = \"{}\"\n", server.url);
    let fx = Fixture::with_config(Backend::Json, &tables, JOBS);
    fx.open()
        .put("jobs", download("j1", "2026-01-01T10:00:00Z"))
        .unwrap();
    let sync = || {
        let out = crate::support::ferry_command(&fx.config_path, &["sync", "--once"], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sync();
    let json_text = std::fs::read_to_string(&fx.config_path).unwrap();
    let sqlite_text = json_text.replace("backend = \"json\"", "backend = \"sqlite\"");
    std::fs::write(&fx.config_path, &sqlite_text).unwrap();
    sync();
    assert_eq!(server.requests(), 1, "nothing sent again on switching");

    // On SQLite: deleted, ferry sees it gone, then written again with other content.
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    store::open(&sqlite)
        .unwrap()
        .delete("jobs", &Key::Text("j1".into()))
        .unwrap();
    sync();
    let mut again = download("j1", "2026-01-02T10:00:00Z");
    again.insert("name".into(), json!("the second j1"));
    store::open(&sqlite).unwrap().put("jobs", again).unwrap();

    // Back to JSON before it is sent: the JSON side still knows the first j1's delivery.
    std::fs::write(&fx.config_path, &json_text).unwrap();
    sync();
    let sent: Vec<_> = server
        .stored()
        .into_iter()
        .filter(|s| s.key == "j1")
        .collect();
    assert_eq!(
        sent.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(),
        ["POST", "POST"],
        "the second j1 is a create of its own"
    );
    assert_eq!(sent[1].body["name"], json!("the second j1"));
    let row = fx
        .open()
        .tracking("jobs", &Key::Text("j1".into()))
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.status, row.remote_id.map(|id| id.to_string())),
        (Status::Success, Some(sent[1].id.clone())),
    );
}

#[test]
fn the_seed_000_service_switching_to_sqlite_keeps_its_json_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let json_dir = dir.path().join("tmp");
    std::fs::create_dir_all(&json_dir).unwrap();
    // The seed service's JSON file of active downloads.
    std::fs::write(
        json_dir.join("active_downloads.json"),
        r#"{"a1": {"id": "a1", "torrent_name": "film.mkv", "status": "downloading", "progress": 42.5,
                    "created_at": "2026-02-10 09:00:00", "updated_at": "2026-02-10 09:05:00"},
            "a2": {"id": "a2", "torrent_name": "série.mkv", "status": "completed", "progress": 100.0,
                    "created_at": "2026-02-10 08:00:00", "updated_at": "2026-02-10 08:30:00"},
            "a3": {"torrent_name": "sans id", "status": "stopped", "progress": 3.0,
                    "created_at": "2026-02-10 07:00:00", "updated_at": "2026-02-10 07:10:00"}}"#,
    )
    .unwrap();
    let ini = dir.path().join("config.ini");
    std::fs::write(
        &ini,
        format!(
            "[BDD]\nsql = true  # true pour SQLite, false pour JSON\ndb_path = {}/plex_service.db\n[storage]\njson_dir = {}\nbackups_dir = {}/backups\n",
            dir.path().display(),
            json_dir.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(ferry_bin())
        .arg("--config")
        .arg(&ini)
        .args(["migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("migration json→sqlite: 3 downloads migrated (0 updated, 0 kept newer)"),
        "{text}"
    );
    let out = Command::new(ferry_bin())
        .arg("--config")
        .arg(&ini)
        .args(["get", "downloads", "a3"])
        .output()
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["torrent_name"], json!("sans id"));
    assert_eq!(
        got["id"],
        json!("a3"),
        "the key filled in from the JSON entry"
    );
    // The seed's downloads table, with exactly the seed's columns.
    let conn = rusqlite::Connection::open(dir.path().join("plex_service.db")).unwrap();
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('downloads')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(columns.len(), 16);
    let out = Command::new(ferry_bin())
        .arg("--config")
        .arg(&ini)
        .args(["migrate"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to migrate"),
        "a second start migrates nothing"
    );
}

#[test]
fn migrate_dry_run_says_what_it_would_do_and_does_nothing() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    fx.open()
        .put("jobs", download("a", "2026-01-01T10:00:00Z"))
        .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&["migrate", "--to", "sqlite", "--dry-run"]);
    assert!(
        text.contains("would do: migration json→sqlite: 1 jobs migrated (0 updated, 0 kept newer)"),
        "{text}"
    );
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    assert!(
        store::open(&sqlite)
            .unwrap()
            .list("jobs", None, 10)
            .unwrap()
            .is_empty(),
        "nothing written"
    );
    assert!(run(&["migrate", "--to", "sqlite"]).contains("1 jobs migrated"));
}

/// Seed programs write local times; read as UTC, a UTC+2 time looks two hours ahead.
/// A record written on the other side must still come over.
#[test]
fn records_on_one_side_only_come_over_whatever_the_times_say() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    let future = ferry::store::rfc3339(ferry::store::now_ms() + 2 * 3_600_000);
    store::open(&sqlite)
        .unwrap()
        .put("jobs", download("a", &future))
        .unwrap();
    migrate(&fx.config, Backend::Json, false).unwrap();
    fx.open()
        .put("jobs", download("b", "2026-01-01T10:00:00Z"))
        .unwrap();
    let reports = migrate(&sqlite, Backend::Sqlite, false).unwrap();
    assert_eq!(reports[0].migrated, 1, "{reports:?}");
    assert!(store::open(&sqlite)
        .unwrap()
        .get("jobs", &Key::parse("b"))
        .unwrap()
        .is_some());
}

/// Append-only data has no versions: a deletion made on one side after the other side's
/// last write is carried over, not undone.
#[test]
fn a_deletion_on_append_only_data_survives_the_round_trip() {
    let events = "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/e\"\n";
    let fx = Fixture::with_collections(Backend::Json, events);
    fx.open()
        .put_many(
            "events",
            (1..=3).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    migrate(&sqlite, Backend::Sqlite, false).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store::open(&sqlite)
        .unwrap()
        .delete("events", &Key::Int(1))
        .unwrap();
    let reports = migrate(&fx.config, Backend::Json, false).unwrap();
    assert_eq!(reports[0].deleted, 1, "{reports:?}");
    assert_eq!(
        fx.open().get("events", &Key::Int(1)).unwrap(),
        None,
        "stays deleted"
    );
    assert!(fx.open().get("events", &Key::Int(2)).unwrap().is_some());
}

/// `ferry reset-tracking` means every record is sent again: the other backend's old
/// tracking must not bring the deliveries back at the next start.
#[test]
fn reset_tracking_is_not_undone_by_the_next_start() {
    let fx = Fixture::with_collections(Backend::Json, JOBS);
    let mut json_store = fx.open();
    json_store
        .put("jobs", download("a", "2026-01-01T10:00:00Z"))
        .unwrap();
    let mut row = Tracking::new("jobs", Key::parse("a"), 1_700_000_000_000);
    row.status = Status::Success;
    json_store.write_tracking(&[row]).unwrap();
    drop(json_store);
    let text = std::fs::read_to_string(&fx.config_path)
        .unwrap()
        .replace("backend = \"json\"", "backend = \"sqlite\"");
    std::fs::write(&fx.config_path, &text).unwrap();
    let run = |args: &[&str]| {
        Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["migrate"]).status.success());
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    assert!(store::open(&sqlite)
        .unwrap()
        .tracking("jobs", &Key::parse("a"))
        .unwrap()
        .is_some());
    assert!(run(&["reset-tracking", "--collection", "jobs", "--yes"])
        .status
        .success());
    assert!(run(&["migrate"]).status.success());
    assert_eq!(
        store::open(&sqlite)
            .unwrap()
            .tracking("jobs", &Key::parse("a"))
            .unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------
// Issue 14: the migration is a three-way merge against what both sides last agreed on.

/// The seed 000 service's downloads, with its file name, in a Fixture.
const DOWNLOADS: &str =
    "[[collections]]\nname = \"downloads\"\nkey = \"id\"\nupdated_at = \"updated_at\"\n\
    endpoint = \"/api/downloads\"\njson_file = \"active_downloads.json\"\n";

fn job(id: &str, status: &str, updated_at: &str) -> ferry::store::Record {
    record(
        json!({"id": id, "torrent_name": format!("{id}.mkv"), "status": status,
        "progress": 50.0, "updated_at": updated_at}),
    )
}

/// Keys and `status` of every download in a store.
fn statuses(config: &Config) -> BTreeMap<String, String> {
    store::open(config)
        .unwrap()
        .list("downloads", None, 1000)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Deletes records the way another program does, without ferry: the seed 000 service
/// rewrites its JSON file; a SQLite client runs DELETE.
fn delete_behind_ferrys_back(config: &Config, backend: Backend, ids: &[&str]) {
    match backend {
        Backend::Json => {
            let path = config.storage.json_dir.join("active_downloads.json");
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for id in ids {
                assert!(object.remove(*id).is_some(), "{id} was there");
            }
            std::fs::write(&path, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
        }
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(&config.storage.sqlite_path).unwrap();
            for id in ids {
                assert_eq!(
                    conn.execute("DELETE FROM downloads WHERE id = ?1", [id])
                        .unwrap(),
                    1
                );
            }
        }
    }
}

/// Seed 000: the service removes finished downloads from the store in use; the other
/// store still has them from before. No start of ferry brings them back — not a plain
/// restart, nor one after the other side was written (a new download there comes
/// over, the deleted ones do not). Both ways round.
#[test]
fn records_another_program_deleted_are_not_brought_back_by_the_next_starts() {
    for active in [Backend::Json, Backend::Sqlite] {
        let inactive = other_backend(active);
        let fx = Fixture::with_collections(active, DOWNLOADS);
        let here = with_backend(&fx.config, active);
        let there = with_backend(&fx.config, inactive);
        let mut old = store::open(&there).unwrap();
        for id in ["d1", "d2", "d3"] {
            old.put("downloads", job(id, "downloading", "2026-02-10T09:00:00Z"))
                .unwrap();
        }
        drop(old);
        // First start on the store in use: everything comes over.
        let reports = migrate(&here, active, false).unwrap();
        assert_eq!(reports[0].migrated, 3, "{active:?}: {reports:?}");
        // The service finishes d1 and d2 and removes them.
        delete_behind_ferrys_back(&here, active, &["d1", "d2"]);
        for _ in 0..3 {
            assert_eq!(migrate(&here, active, false).unwrap(), vec![], "{active:?}");
        }
        // The other side is written (a new download there): it is looked at, and
        // only what is new there comes over.
        std::thread::sleep(Duration::from_millis(20));
        store::open(&there)
            .unwrap()
            .put(
                "downloads",
                job("d4", "downloading", "2026-02-10T10:00:00Z"),
            )
            .unwrap();
        let reports = migrate(&here, active, false).unwrap();
        assert_eq!(reports.len(), 1, "{active:?}: {reports:?}");
        assert_eq!(
            (reports[0].migrated, reports[0].kept_deleted),
            (1, 2),
            "{active:?}: {reports:?}"
        );
        assert_eq!(
            statuses(&here).into_keys().collect::<Vec<_>>(),
            ["d3", "d4"],
            "{active:?}: d1 and d2 stay deleted"
        );
        assert_eq!(migrate(&here, active, false).unwrap(), vec![], "{active:?}");
    }
}

fn other_backend(backend: Backend) -> Backend {
    match backend {
        Backend::Json => Backend::Sqlite,
        Backend::Sqlite => Backend::Json,
    }
}

/// The same through the real binary, as systemd starts it: `ferry migrate` (what
/// every start runs) with its dry run saying what the real run then does.
#[test]
fn the_seed_000_service_deleting_finished_downloads_with_ferry_migrate() {
    let fx = Fixture::with_collections(Backend::Json, DOWNLOADS);
    let sqlite = with_backend(&fx.config, Backend::Sqlite);
    let mut old = store::open(&sqlite).unwrap();
    for id in ["d1", "d2"] {
        old.put("downloads", job(id, "completed", "2026-02-10T09:00:00Z"))
            .unwrap();
    }
    drop(old);
    let run = |args: &[&str]| {
        let out = fx.ferry(args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = run(&["migrate", "--dry-run"]);
    let real = run(&["migrate"]);
    assert_eq!(dry.replace("would do: ", ""), real);
    assert!(
        real.contains("migration sqlite→json: 2 downloads migrated (0 updated, 0 kept newer)"),
        "{real}"
    );
    delete_behind_ferrys_back(&fx.config, Backend::Json, &["d1"]);
    for _ in 0..2 {
        let dry = run(&["migrate", "--dry-run"]);
        let real = run(&["migrate"]);
        assert_eq!(dry.replace("would do: ", ""), real);
        assert!(real.contains("nothing to migrate"), "{real}");
    }
    assert_eq!(statuses(&fx.config).into_keys().collect::<Vec<_>>(), ["d2"]);
}

/// Backend switches back and forth, with edits, new records and deletions (through
/// ferry and behind its back) on both sides in between: after each switch the store
/// in use holds exactly what the user made, and a second start changes nothing.
#[test]
fn switching_back_and_forth_carries_edits_and_deletions_both_ways() {
    let fx = Fixture::with_collections(Backend::Json, DOWNLOADS);
    let json_side = fx.config.clone();
    let sqlite_side = with_backend(&fx.config, Backend::Sqlite);
    let expect = |config: &Config, backend: Backend, want: &[(&str, &str)]| {
        migrate(config, backend, false).unwrap();
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(statuses(config), want, "{backend:?}");
        assert_eq!(
            migrate(config, backend, false).unwrap(),
            vec![],
            "{backend:?}: a second start migrates nothing"
        );
    };
    let mut json_store = store::open(&json_side).unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        json_store
            .put("downloads", job(id, "v1", "2026-02-10T09:00:00Z"))
            .unwrap();
    }
    drop(json_store);

    // JSON → SQLite: everything comes over.
    expect(
        &sqlite_side,
        Backend::Sqlite,
        &[
            ("a", "v1"),
            ("b", "v1"),
            ("c", "v1"),
            ("d", "v1"),
            ("e", "v1"),
        ],
    );
    let mut s = store::open(&sqlite_side).unwrap();
    s.put("downloads", job("a", "v2", "2026-02-10T10:00:00Z"))
        .unwrap();
    s.delete("downloads", &Key::parse("b")).unwrap();
    s.put("downloads", job("f", "v1", "2026-02-10T10:00:00Z"))
        .unwrap();
    drop(s);
    delete_behind_ferrys_back(&sqlite_side, Backend::Sqlite, &["c"]);

    // SQLite → JSON: the edit, the new record and both deletions come over.
    expect(
        &json_side,
        Backend::Json,
        &[("a", "v2"), ("d", "v1"), ("e", "v1"), ("f", "v1")],
    );
    let mut j = store::open(&json_side).unwrap();
    j.put("downloads", job("e", "v2", "2026-02-10T11:00:00Z"))
        .unwrap();
    j.put("downloads", job("g", "v1", "2026-02-10T11:00:00Z"))
        .unwrap();
    drop(j);
    delete_behind_ferrys_back(&json_side, Backend::Json, &["d"]);

    // JSON → SQLite: likewise, and b and c (deleted on both) stay deleted.
    expect(
        &sqlite_side,
        Backend::Sqlite,
        &[("a", "v2"), ("e", "v2"), ("f", "v1"), ("g", "v1")],
    );
    // While SQLite is in use: an edit there, and the JSON side written by another
    // program: an older edit of the same record, a new record, a deletion.
    let mut s = store::open(&sqlite_side).unwrap();
    s.put("downloads", job("a", "v3", "2026-02-10T13:00:00Z"))
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(20));
    let mut j = store::open(&json_side).unwrap();
    j.put("downloads", job("a", "v2-there", "2026-02-10T12:00:00Z"))
        .unwrap();
    j.put("downloads", job("h", "v1", "2026-02-10T12:00:00Z"))
        .unwrap();
    drop(j);
    delete_behind_ferrys_back(&json_side, Backend::Json, &["f"]);
    let reports = migrate(&sqlite_side, Backend::Sqlite, false).unwrap();
    assert_eq!(
        reports[0].to_string(),
        "migration json→sqlite: 1 downloads migrated (0 updated, 1 kept newer), 1 deleted"
    );
    expect(
        &sqlite_side,
        Backend::Sqlite,
        &[("a", "v3"), ("e", "v2"), ("g", "v1"), ("h", "v1")],
    );

    // And back to JSON: the JSON side catches up on what it lost to SQLite (a's v3).
    expect(
        &json_side,
        Backend::Json,
        &[("a", "v3"), ("e", "v2"), ("g", "v1"), ("h", "v1")],
    );
}

/// Whole-side times decide only whether to look: a record changed on the inactive
/// side comes over even when the active side was written after it.
#[test]
fn a_change_on_the_other_side_wins_even_when_this_side_was_written_later() {
    for active in [Backend::Sqlite, Backend::Json] {
        let fx = Fixture::with_collections(other_backend(active), DOWNLOADS);
        let there = fx.config.clone();
        let here = with_backend(&fx.config, active);
        let mut old = store::open(&there).unwrap();
        for id in ["a", "b"] {
            old.put("downloads", job(id, "v1", "2026-02-10T09:00:00Z"))
                .unwrap();
        }
        drop(old);
        migrate(&here, active, false).unwrap();
        // The other side edits a; then the side in use writes b, later in wall time.
        store::open(&there)
            .unwrap()
            .put("downloads", job("a", "v2", "2026-02-10T10:00:00Z"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        store::open(&here)
            .unwrap()
            .put("downloads", job("b", "v2", "2026-02-10T10:00:00Z"))
            .unwrap();
        let reports = migrate(&here, active, false).unwrap();
        assert_eq!(reports.len(), 1, "{active:?}: {reports:?}");
        assert_eq!(
            statuses(&here),
            BTreeMap::from([("a".into(), "v2".into()), ("b".into(), "v2".into())]),
            "{active:?}"
        );
    }
}

/// Seed programs write local time without a zone. With TZ=Europe/Paris a JSON record
/// stamped `17:30` (16:30 UTC) is older than a SQLite one stamped `16:45Z`; read as
/// UTC it would look newer and overwrite it. The same files under TZ=UTC: the JSON
/// record is newer, and wins.
#[test]
fn a_local_time_without_a_zone_is_read_in_the_machines_time_zone() {
    for (tz, winner) in [("Europe/Paris", "sqlite"), ("UTC", "json")] {
        let fx = Fixture::with_collections(Backend::Sqlite, DOWNLOADS);
        let json_side = with_backend(&fx.config, Backend::Json);
        fx.open()
            .put("downloads", job("x", "sqlite", "2026-02-10T16:45:00Z"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        store::open(&json_side)
            .unwrap()
            .put("downloads", job("x", "json", "2026-02-10 17:30:00"))
            .unwrap();
        let out = Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .arg("migrate")
            .env("TZ", tz)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            statuses(&fx.config)["x"],
            winner,
            "TZ={tz}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Seed 000's JSON records carry fields its SQLite schema lacks (`uid`): switching the
/// service to SQLite brings them over whole, into the `downloads` table ferry makes.
#[test]
fn the_seed_000_service_switching_to_sqlite_keeps_fields_its_schema_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let json_dir = dir.path().join("tmp");
    std::fs::create_dir_all(&json_dir).unwrap();
    std::fs::write(
        json_dir.join("active_downloads.json"),
        r#"{"a1": {"id": "a1", "torrent_name": "film.mkv", "status": "downloading", "progress": 42.5,
                    "uid": "u-1001", "hash": "9f86d081", "updated_at": "2026-02-10 09:05:00"}}"#,
    )
    .unwrap();
    let ini = dir.path().join("config.ini");
    std::fs::write(
        &ini,
        format!(
            "[BDD]\nsql = true\ndb_path = {}/plex_service.db\n[storage]\njson_dir = {}\nbackups_dir = {}/backups\n",
            dir.path().display(),
            json_dir.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let ferry = |args: &[&str]| crate::support::ferry_command(&ini, args, None);
    let out = ferry(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ferry(&["get", "downloads", "a1"]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&got["uid"], &got["hash"]),
        (&json!("u-1001"), &json!("9f86d081"))
    );
    assert_eq!(got["progress"], json!(42.5));
    assert!(String::from_utf8_lossy(&ferry(&["migrate"]).stdout).contains("nothing to migrate"));
}
