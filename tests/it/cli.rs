//! The `ferry` binary as users run it: config commands, records by hand, bad input.

use std::path::Path;

use ferry::config::Backend;
use serde_json::{json, Value};

use crate::support::{ferry_command, Fixture};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn config_check_accepts_the_shipped_example() {
    let out = ferry_command(
        &repo("config/ferry.example.toml"),
        &["config", "check"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("valid (sqlite backend, 3 collections"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("note: remote.url is not set"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_misspelt_key_exits_78_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo("config/ferry.example.toml")).unwrap();
    let broken = text.replacen(
        "#url = \"http://192.168.1.100:8000\"",
        "ulr = \"http://192.168.1.100:8000\"",
        1,
    );
    assert_ne!(text, broken);
    let line = broken.lines().position(|l| l.starts_with("ulr")).unwrap() + 1;
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, broken).unwrap();
    let out = ferry_command(&path, &["config", "check"], None);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&format!("ferry.toml:{line}:1")), "{err}");
    assert!(err.contains("unknown field `ulr`"), "{err}");
}

#[test]
fn a_missing_config_file_exits_78() {
    let out = ferry_command(
        Path::new("/nonexistent/ferry.toml"),
        &["config", "check"],
        None,
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("no config file here"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_seed_000_config_ini_selects_the_json_backend() {
    let path = repo("tests/fixtures/seed000_config.ini");
    let out = ferry_command(&path, &["config", "check"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(json backend, 2 collections: downloads, seeds)"),
        "{}",
        stdout(&out)
    );
    let out = ferry_command(&path, &["config", "show"], None);
    let shown = stdout(&out);
    assert!(shown.contains("backend = \"json\""), "{shown}");
    assert!(
        shown.contains("sqlite_path = \"/var/www/public/Plex-Service/data/plex_service.db\""),
        "{shown}"
    );
}

#[test]
fn config_show_never_prints_the_token() {
    let fx = Fixture::new(Backend::Sqlite);
    let token = fx.path("token");
    std::fs::write(&token, "s3cr3t-t0ken\n").unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replace("[remote]\n", "[remote]\ntoken_file = \"token\"\n");
    std::fs::write(&fx.config_path, text).unwrap();
    let out = fx.ferry(&["config", "show"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("never shown"), "{shown}");
}

fn put_get_list_round_trip(backend: Backend) {
    let fx = Fixture::new(backend);
    let record = json!({
        "id": 9_007_199_254_740_993_i64,
        "name": "Caméra entrée — 監視 🎥",
        "temperature": 21.375,
        "count": -9_223_372_036_854_775_807_i64
    });
    let out = fx.ferry(&["put", "events"], Some(record.to_string().as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "9007199254740993");

    let out = fx.ferry(&["get", "events", "9007199254740993"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(got, record);
    assert!(
        stdout(&out).contains("Caméra entrée — 監視 🎥"),
        "non-ASCII printed as is"
    );

    // A second record by --id; list prints both, one per line, in key order.
    let out = fx.ferry(
        &["put", "events", "--id", "5"],
        Some(br#"{"name": "second"}"#),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = fx.ferry(&["list", "events"], None);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![json!({"name": "second", "id": 5}), record]);
    let out = fx.ferry(&["list", "events", "--limit", "1"], None);
    assert_eq!(stdout(&out).lines().count(), 1);
}

#[test]
fn put_get_list_round_trip_sqlite() {
    put_get_list_round_trip(Backend::Sqlite);
}

#[test]
fn put_get_list_round_trip_json() {
    put_get_list_round_trip(Backend::Json);
}

#[test]
fn bad_records_get_clear_errors() {
    for backend in [Backend::Sqlite, Backend::Json] {
        let fx = Fixture::new(backend);
        let out = fx.ferry(&["put", "events"], Some(b"{\"id\": 1,\n \"x\": }"));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("record 1 is not valid JSON at line 2 column"),
            "{}",
            stderr(&out)
        );
        let out = fx.ferry(&["put", "events"], Some(br#"{"name": "no key"}"#));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("collection events: the record has no key field \"id\""),
            "{}",
            stderr(&out)
        );
        let out = fx.ferry(&["put", "events"], Some(b"[1, 2]"));
        assert!(
            stderr(&out).contains("is an array, not a JSON object"),
            "{}",
            stderr(&out)
        );
        let out = fx.ferry(&["put", "events", "--id", "2"], Some(br#"{"id": 3}"#));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let out = fx.ferry(&["put", "events"], Some(b""));
        assert_eq!(out.status.code(), Some(2));
        let out = fx.ferry(&["get", "events", "404"], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("no record 404 in collection events"),
            "{}",
            stderr(&out)
        );
        let out = fx.ferry(&["list", "nope"], None);
        assert!(
            stderr(&out).contains("collection \"nope\" is not in the config"),
            "{}",
            stderr(&out)
        );
        let out = fx.ferry(&["list", "events"], None);
        assert_eq!(stdout(&out), "", "nothing was written by the bad puts");
    }
}

#[test]
fn a_damaged_json_file_is_named_and_never_overwritten() {
    let fx = Fixture::new(Backend::Json);
    std::fs::create_dir_all(fx.path("state/json")).unwrap();
    let cases: [(&[u8], &str); 4] = [
        (
            b"{\n  \"1\": {\"id\": 1},\n  \"2\": {\"id\"",
            "events.json:3:",
        ),
        (
            b"[1, 2, 3]\n",
            "expected a JSON object keyed by record key, found an array",
        ),
        (
            b"{\"1\": 5}",
            "record \"1\": expected an object, found a number",
        ),
        (b"{\"1\": {\"id\": \"\xff\"}}", "events.json:1:"),
    ];
    for (content, expected) in cases {
        let file = fx.path("state/json/events.json");
        std::fs::write(&file, content).unwrap();
        let out = fx.ferry(&["put", "events"], Some(br#"{"id": 3}"#));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(err.contains("ferry check --repair"), "{err}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            content,
            "the damaged file is left as it was"
        );
    }
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let fx = Fixture::new(Backend::Sqlite);
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let content = b"this is not a database, it is a shopping list\n".repeat(100);
    std::fs::write(fx.path("state/ferry.db"), &content).unwrap();
    let out = fx.ferry(&["list", "events"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ferry.db"), "{err}");
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(fx.path("state/ferry.db")).unwrap(), content);
}

#[test]
fn usage_errors_exit_2() {
    let out = ferry_command(&repo("config/ferry.example.toml"), &["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
}
