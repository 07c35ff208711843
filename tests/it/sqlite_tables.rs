//! Tables another program created (the seed sync service's `surveillance.db`): read as
//! they are, never reshaped.

use ferry::config::Backend;
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::support::Fixture;

const SURVEILLANCE: &str = r#"
[[collections]]
name = "evenement"
key = "id_evenement"
order_by = "date"
endpoint = "/api/evenements"

[[collections]]
name = "media"
key = "id_media"
endpoint = "/api/media"
blob_fields = ["video_data"]
"#;

/// The seed's database, as its programs left it.
fn seed_database(fx: &Fixture) -> Connection {
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let conn = Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT NOT NULL, capteur_id INTEGER);
         CREATE TABLE media (id_media INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, numero_camera INTEGER, video_data BLOB);
         INSERT INTO evenement (date, capteur_id) VALUES ('2025-12-18T17:30:00.123456', 1);",
    )
    .unwrap();
    let clip: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    conn.execute(
        "INSERT INTO media (date, numero_camera, video_data) VALUES ('2025-12-18T17:30:05', 1, ?1)",
        [&clip],
    )
    .unwrap();
    // Text that is not UTF-8, as a careless writer can leave it.
    conn.execute(
        "INSERT INTO evenement (date, capteur_id) VALUES (CAST(X'32303235FF' AS TEXT), 2)",
        [],
    )
    .unwrap();
    conn
}

fn get(fx: &Fixture, collection: &str, id: &str) -> Value {
    let out = fx.ferry(&["get", collection, id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn columns(conn: &Connection, table: &str) -> Vec<String> {
    conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn columns_become_fields_and_blobs_bytes() {
    let fx = Fixture::with_collections(Backend::Sqlite, SURVEILLANCE);
    let conn = seed_database(&fx);
    let clip: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let media = get(&fx, "media", "1");
    assert_eq!(media["id_media"], json!(1));
    assert_eq!(media["numero_camera"], json!(1));
    assert_eq!(
        media["video_data"],
        ferry::store::record::bytes_value(&clip)
    );
    let event = get(&fx, "evenement", "1");
    assert_eq!(
        event,
        json!({"id_evenement": 1, "date": "2025-12-18T17:30:00.123456", "capteur_id": 1})
    );
    // Not UTF-8: handed over as its exact bytes, not mangled.
    let bad = get(&fx, "evenement", "2");
    assert_eq!(bad["date"], ferry::store::record::bytes_value(b"2025\xff"));
    assert_eq!(
        columns(&conn, "evenement"),
        ["id_evenement", "date", "capteur_id"]
    );
    assert_eq!(
        columns(&conn, "media"),
        ["id_media", "date", "numero_camera", "video_data"]
    );
}

#[test]
fn writes_fit_the_other_programs_columns_or_are_refused() {
    let fx = Fixture::with_collections(Backend::Sqlite, SURVEILLANCE);
    let conn = seed_database(&fx);
    let record = json!({"id_media": 7, "date": "2026-01-01", "video_data": ferry::store::record::bytes_value(b"\x00\x01")});
    let out = fx.ferry(&["put", "media"], Some(record.to_string().as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (kind, len): (String, i64) = conn
        .query_row(
            "SELECT typeof(video_data), length(video_data) FROM media WHERE id_media = 7",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), len),
        ("blob", 2),
        "the other program reads a BLOB back"
    );

    let out = fx.ferry(
        &["put", "media"],
        Some(br#"{"id_media": 8, "resolution": "1080p"}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collection media, record 8: field \"resolution\" has no column"),
        "{err}"
    );
    assert!(
        err.contains("id_media, date, numero_camera, video_data"),
        "{err}"
    );
    // It says what to do: add the column (the exact command), or leave the field out.
    assert!(
        err.contains("ALTER TABLE \"media\" ADD COLUMN \"resolution\"")
            && err.contains("leave the field out"),
        "{err}"
    );
    assert_eq!(
        columns(&conn, "media"),
        ["id_media", "date", "numero_camera", "video_data"]
    );
}

#[test]
fn a_table_without_a_unique_key_is_read_but_not_written() {
    let fx = Fixture::with_collections(
        Backend::Sqlite,
        "[[collections]]\nname = \"readings\"\nkey = \"sensor\"\nendpoint = \"/r\"\n",
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let conn = Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.execute_batch("CREATE TABLE readings (sensor TEXT, value REAL); INSERT INTO readings VALUES ('t1', 20.5);")
        .unwrap();
    assert_eq!(
        get(&fx, "readings", "t1"),
        json!({"sensor": "t1", "value": 20.5})
    );
    let out = fx.ferry(
        &["put", "readings"],
        Some(br#"{"sensor": "t2", "value": 1.0}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PRIMARY KEY or UNIQUE index"));
}

#[test]
fn a_key_that_is_not_a_column_is_named_with_the_columns() {
    let fx = Fixture::with_collections(
        Backend::Sqlite,
        "[[collections]]\nname = \"evenement\"\nkey = \"id\"\nendpoint = \"/e\"\n",
    );
    seed_database(&fx);
    let out = fx.ferry(&["list", "evenement"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("table \"evenement\" (collection evenement): has no column \"id\" for collections[evenement].key; its columns are: id_evenement, date, capteur_id"),
        "{err}"
    );
}

fn deliver_all(
    store: &mut dyn ferry::store::Store,
    collection: &str,
    full_scan_first: bool,
) -> Vec<usize> {
    use ferry::store::{DueQuery, Status, Tracking};
    let mut batches = Vec::new();
    let mut full_scan = full_scan_first;
    loop {
        let query = DueQuery {
            now: 0,
            limit: 250,
            include_changed: false,
            full_scan,
            pace: false,
            peek: false,
        };
        full_scan = false;
        let due = store.due(collection, &query).unwrap();
        if due.is_empty() {
            return batches;
        }
        batches.push(due.len());
        let rows: Vec<_> = due
            .iter()
            .map(|d| {
                let mut row = Tracking::new(collection, d.key.clone(), 0);
                row.status = Status::Success;
                row
            })
            .collect();
        store.write_tracking(&rows).unwrap();
        assert!(batches.len() < 100, "bounded");
    }
}

#[test]
fn a_without_rowid_table_delivers_its_rows() {
    let fx = Fixture::with_collections(
        Backend::Sqlite,
        "[[collections]]\nname = \"readings\"\nkey = \"sensor\"\nendpoint = \"/r\"\n",
    );
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let conn = Connection::open(fx.path("state/ferry.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE readings (sensor TEXT PRIMARY KEY, value REAL) WITHOUT ROWID;
         INSERT INTO readings VALUES ('t1', 20.5), ('t2', 21.0);",
    )
    .unwrap();
    let mut store = fx.open();
    assert_eq!(deliver_all(store.as_mut(), "readings", false), [2]);
    conn.execute("INSERT INTO readings VALUES ('t3', 19.0)", [])
        .unwrap();
    assert_eq!(deliver_all(store.as_mut(), "readings", false), [1]);
}

/// The seed service's documented way to send everything again is
/// `DELETE FROM sync_tracking`; the rows below the watermark must then go out at the
/// next passes, not one batch per full scan.
#[test]
fn deleting_sync_tracking_by_hand_sends_everything_again_promptly() {
    let fx = Fixture::with_collections(Backend::Sqlite, SURVEILLANCE);
    let conn = seed_database(&fx);
    for i in 0..600 {
        conn.execute(
            "INSERT INTO evenement (date, capteur_id) VALUES (?1, 1)",
            [format!("2026-01-01T00:{:02}:{:02}", i / 60, i % 60)],
        )
        .unwrap();
    }
    let mut store = fx.open();
    assert_eq!(
        deliver_all(store.as_mut(), "evenement", true),
        [250, 250, 102]
    );
    conn.execute("DELETE FROM sync_tracking", []).unwrap();
    // A start-up (full scan) finds them, and the passes after it carry on.
    assert_eq!(
        deliver_all(store.as_mut(), "evenement", true),
        [250, 250, 102]
    );
}

/// The seed 000 `downloads` table that ferry made (with exactly the seed's columns)
/// gains a column for a field the seed schema lacks, in the write's own transaction;
/// the field round-trips. Another ferry process sees the column at its next read.
#[test]
fn a_table_ferry_made_gains_a_column_for_a_new_field() {
    let downloads = "[[collections]]\nname = \"downloads\"\nkey = \"id\"\nupdated_at = \"updated_at\"\nendpoint = \"/d\"\n";
    let fx = Fixture::with_collections(Backend::Sqlite, downloads);
    let mut other_process = fx.open();
    let out = fx.ferry(
        &["put", "downloads"],
        Some(br#"{"id": "a1", "torrent_name": "film.mkv", "uid": "u-42", "tries": 3, "tags": ["x"], "none": null}"#),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = Connection::open(fx.path("state/ferry.db")).unwrap();
    let cols = columns(&conn, "downloads");
    assert_eq!(cols.len(), 16 + 3, "{cols:?}");
    assert_eq!(
        &cols[16..],
        ["uid", "tries", "tags"],
        "a null needs no column"
    );
    let got = get(&fx, "downloads", "a1");
    assert_eq!(got["uid"], json!("u-42"));
    assert_eq!(got["tries"], json!(3));
    assert_eq!(
        other_process
            .get("downloads", &ferry::store::Key::parse("a1"))
            .unwrap()
            .map(|r| r["uid"].clone()),
        Some(json!("u-42"))
    );
    // A write that fails leaves the table as it was: the column comes with the write.
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON downloads WHEN NEW.id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END;",
    )
    .unwrap();
    let records = vec![
        ferry::store::Record::from_iter([
            ("id".to_string(), json!("ok")),
            ("extra1".to_string(), json!(1)),
        ]),
        ferry::store::Record::from_iter([
            ("id".to_string(), json!("boom")),
            ("extra2".to_string(), json!(2)),
        ]),
    ];
    assert!(other_process.put_many("downloads", records).is_err());
    assert_eq!(columns(&conn, "downloads"), cols);
    assert_eq!(
        other_process
            .get("downloads", &ferry::store::Key::parse("ok"))
            .unwrap(),
        None
    );
}
