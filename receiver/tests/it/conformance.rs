//! The storage conformance suite: the same checks on SQLite and on PostgreSQL, through
//! the `Storage` trait alone.

use ferry_receiver::config::{Config, Terminal};
use ferry_receiver::plan::{Effect, Superseded};
use ferry_receiver::store::{Backend, Storage, StoreError};
use serde_json::json;

use crate::on_both;
use crate::support::{member, Db, Kind, Op};

fn terminal() -> Option<Terminal> {
    Some(Terminal {
        field: "status".into(),
        values: vec!["completed".into(), "failed".into()],
    })
}

async fn apply_one(
    store: &Backend,
    m: ferry_receiver::plan::Member,
) -> ferry_receiver::plan::Answer {
    let mut answers = store
        .apply("things", terminal(), vec![m])
        .await
        .expect("apply");
    answers.pop().expect("one answer")
}

async fn create_replay_and_key_reuse(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let first = apply_one(
        &store,
        member(Op::Create, "box", "k1", "v1", json!({"a": 1})),
    )
    .await;
    assert_eq!((first.status, first.effect), (201, Effect::Created));
    let id = first.id().expect("an id");
    let again = apply_one(
        &store,
        member(Op::Create, "box", "k1", "v1", json!({"a": 1})),
    )
    .await;
    assert_eq!(again.status, 201);
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    let other = apply_one(
        &store,
        member(Op::Create, "box", "k1", "v1", json!({"a": 2})),
    )
    .await;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["id"], json!(id));
    let rows = store.list("things", None, 0, 100).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record, json!({"a": 1}));
}
on_both!(create_replay_and_key_reuse);

async fn one_row_per_device_and_key(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let a = apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "k",
            "2026-01-01T00:00:00Z~00000001",
            json!({"n": 1}),
        ),
    )
    .await;
    let b = apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "k",
            "2026-01-01T00:00:01Z~00000002",
            json!({"n": 2}),
        ),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!((b.status, b.effect), (200, Effect::Updated));
    assert_eq!(a.id(), b.id());
    let other_box = apply_one(
        &store,
        member(
            Op::Create,
            "box2",
            "k",
            "2026-01-01T00:00:00Z~00000001",
            json!({"n": 1}),
        ),
    )
    .await;
    assert_eq!(other_box.status, 201);
    assert_ne!(other_box.id(), a.id());
    let rows = store.list("things", None, 0, 100).await.expect("list");
    assert_eq!(rows.len(), 2);
    let mine = store
        .list("things", Some("box".into()), 0, 100)
        .await
        .expect("list");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].record, json!({"n": 2}));
    assert_eq!(mine[0].key.as_deref(), Some("k"));
    assert_eq!(
        mine[0].version.as_deref(),
        Some("2026-01-01T00:00:01Z~00000002")
    );
}
on_both!(one_row_per_device_and_key);

async fn an_older_version_never_overwrites(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let id = apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "k",
            "2026-01-01T10:00:00Z~00000001",
            json!({"s": 1}),
        ),
    )
    .await
    .id()
    .expect("id");
    let newer = apply_one(
        &store,
        member(
            Op::Update(id),
            "box",
            "k",
            "2026-01-01T10:00:05Z~00000003",
            json!({"s": 3}),
        ),
    )
    .await;
    assert_eq!(newer.effect, Effect::Updated);
    // An older state arriving late (a retry, another batch), spelt another way.
    let older = apply_one(
        &store,
        member(
            Op::Update(id),
            "box",
            "k",
            "2026-01-01 11:00:02+01:00~00000002",
            json!({"s": 2}),
        ),
    )
    .await;
    assert_eq!((older.status, older.effect), (200, Effect::IgnoredOlder));
    assert_eq!(older.id(), Some(id));
    let row = store.get("things", id).await.expect("get").expect("row");
    assert_eq!(row.record, json!({"s": 3}));
    // Unix seconds and milliseconds compare as times too.
    let s = apply_one(
        &store,
        member(Op::Create, "box", "u", "1700000000", json!({"t": "s"})),
    )
    .await;
    let ms = apply_one(
        &store,
        member(Op::Create, "box", "u", "1699999999000", json!({"t": "ms"})),
    )
    .await;
    assert_eq!(s.status, 201);
    assert_eq!(ms.effect, Effect::IgnoredOlder);
    // Versions without a time (fingerprints): the last to arrive is kept.
    apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "f",
            "fp-0000000000000002",
            json!({"f": 2}),
        ),
    )
    .await;
    let last = apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "f",
            "fp-0000000000000001",
            json!({"f": 1}),
        ),
    )
    .await;
    assert_eq!(last.effect, Effect::Updated);
}
on_both!(an_older_version_never_overwrites);

async fn no_update_after_a_terminal_state(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let id = apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "job",
            "2026-01-01T00:00:01Z~00000001",
            json!({"status": "running"}),
        ),
    )
    .await
    .id()
    .expect("id");
    let done = apply_one(
        &store,
        member(
            Op::Update(id),
            "box",
            "job",
            "2026-01-01T00:00:02Z~00000002",
            json!({"status": "completed"}),
        ),
    )
    .await;
    assert_eq!(done.effect, Effect::Updated);
    let late = apply_one(
        &store,
        member(
            Op::Update(id),
            "box",
            "job",
            "2026-01-01T00:00:03Z~00000003",
            json!({"status": "running", "progress": 50}),
        ),
    )
    .await;
    assert_eq!((late.status, late.effect), (200, Effect::IgnoredTerminal));
    let row = store.get("things", id).await.expect("get").expect("row");
    assert_eq!(row.record, json!({"status": "completed"}));
}
on_both!(no_update_after_a_terminal_state);

async fn updates_by_remote_id(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let id = apply_one(
        &store,
        member(Op::Create, "box", "a", "v1", json!({"x": 1})),
    )
    .await
    .id()
    .expect("id");
    let unknown = apply_one(
        &store,
        member(Op::Update(id + 100), "box", "zzz", "v1", json!({"x": 1})),
    )
    .await;
    assert_eq!(unknown.status, 404);
    let foreign = apply_one(
        &store,
        member(Op::Update(id), "box", "b", "v2", json!({"x": 2})),
    )
    .await;
    assert_eq!(foreign.status, 400);
    // An unknown id, but the record is here: that row is written.
    let moved = apply_one(
        &store,
        member(Op::Update(id + 100), "box", "a", "v2", json!({"x": 2})),
    )
    .await;
    assert_eq!((moved.status, moved.id()), (200, Some(id)));
    // A refused request leaves its key unused.
    let retry = apply_one(
        &store,
        member(Op::Update(id + 100), "box", "zzz", "v1", json!({"x": 1})),
    )
    .await;
    assert_eq!(retry.status, 404);
    assert!(!retry.replayed);
}
on_both!(updates_by_remote_id);

async fn keyless_records_are_each_new(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let plain = |n: i64| {
        ferry_receiver::plan::Member::new(
            "things",
            Op::Create,
            "box".into(),
            None,
            None,
            None,
            json!({"n": n}),
        )
    };
    let answers = store
        .apply("things", None, vec![plain(1), plain(1), plain(2)])
        .await
        .expect("apply");
    let ids: Vec<_> = answers.iter().map(|a| (a.status, a.id())).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|(s, id)| *s == 201 && id.is_some()));
    assert_eq!(
        store.list("things", None, 0, 10).await.expect("list").len(),
        3
    );
}
on_both!(keyless_records_are_each_new);

async fn a_batch_answers_each_member_in_order(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    // More members than one PostgreSQL transaction takes (256).
    let members: Vec<_> = (0..600)
        .map(|i| member(Op::Create, "box", &format!("r{i}"), "v1", json!({"i": i})))
        .collect();
    let answers = store
        .apply("things", None, members.clone())
        .await
        .expect("apply");
    assert_eq!(answers.len(), 600);
    assert!(answers.iter().all(|a| a.status == 201));
    let rows = store.list("things", None, 0, 10_000).await.expect("list");
    assert_eq!(rows.len(), 600);
    for (m, a) in members.iter().zip(&answers) {
        let row = store
            .get("things", a.id().expect("id"))
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row.key, m.key);
    }
    // The same batch again: every answer replayed.
    let again = store.apply("things", None, members).await.expect("apply");
    assert!(again
        .iter()
        .zip(&answers)
        .all(|(b, a)| b.replayed && b.body == a.body));
    // A mixed batch: replay, new, older, refused.
    let mixed = vec![
        member(Op::Create, "box", "r0", "v1", json!({"i": 0})),
        member(Op::Create, "box", "new", "v1", json!({"i": -1})),
        member(
            Op::Update(answers[1].id().expect("id")),
            "box",
            "r1",
            "v0",
            json!({"i": "old"}),
        ),
        member(Op::Update(999_999), "box", "nobody", "v1", json!({})),
    ];
    let got: Vec<u16> = store
        .apply("things", None, mixed)
        .await
        .expect("apply")
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(got, vec![201, 201, 200, 404]);
}
on_both!(a_batch_answers_each_member_in_order);

async fn superseded_keys_are_kept_with_the_write(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    let early = member(
        Op::Create,
        "box",
        "p",
        "2026-01-01T00:00:01Z~00000001",
        json!({"progress": 1}),
    );
    let mut late = member(
        Op::Create,
        "box",
        "p",
        "2026-01-01T00:00:02Z~00000002",
        json!({"progress": 2}),
    );
    late.superseded.push(Superseded {
        idempotency_key: early.idempotency_key.clone().expect("key"),
        fingerprint: early.fingerprint.clone(),
    });
    let written = apply_one(&store, late).await;
    assert_eq!(written.status, 201);
    let replay = apply_one(&store, early).await;
    assert!(replay.replayed);
    assert_eq!((replay.status, replay.id()), (200, written.id()));
    let row = store
        .get("things", written.id().expect("id"))
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.record, json!({"progress": 2}));
}
on_both!(superseded_keys_are_kept_with_the_write);

async fn state_survives_a_reopen_and_migrations_run_once(kind: Kind) {
    let db = Db::of(kind).await;
    let id = {
        let store = db.open().await;
        apply_one(
            &store,
            member(Op::Create, "box", "k", "v1", json!({"a": 1})),
        )
        .await
        .id()
    };
    let store = db.open().await;
    let replay = apply_one(
        &store,
        member(Op::Create, "box", "k", "v1", json!({"a": 1})),
    )
    .await;
    assert!(replay.replayed);
    assert_eq!(replay.id(), id);
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.schema_version, ferry_receiver::store::SCHEMA_VERSION);
    assert_eq!(stats.keys_kept, 1);
    assert_eq!(stats.records.len(), 1);
    assert_eq!(
        (
            stats.records[0].0.as_str(),
            stats.records[0].1.as_str(),
            stats.records[0].2
        ),
        ("things", "box", 1)
    );
    store.health().await.expect("healthy");
    assert_eq!(store.prune_keys(30).await.expect("prune"), 0);
    assert_eq!(store.prune_keys(0).await.expect("prune"), 1);
    // A database from a newer receiver is refused, not damaged.
    db.side_sql("UPDATE ferry_receiver_schema SET version = 99")
        .await;
    match Backend::open(&db.config()).await {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(other) => panic!("expected TooNew, got {other}"),
        Ok(_) => panic!("expected TooNew, the store opened"),
    }
}
on_both!(state_survives_a_reopen_and_migrations_run_once);

async fn the_tables_people_query(kind: Kind) {
    let db = Db::of(kind).await;
    let store = db.open().await;
    apply_one(
        &store,
        member(
            Op::Create,
            "box",
            "k",
            "v1",
            json!({"temp": 21.5, "room": "salon"}),
        ),
    )
    .await;
    // One table per collection, the record as JSON (JSONB on PostgreSQL).
    match &db.database {
        ferry_receiver::config::Database::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).expect("open");
            let (room, device): (String, String) = conn
                .query_row(
                    "SELECT json_extract(record, '$.room'), device FROM things WHERE key = 'k'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("query");
            assert_eq!((room.as_str(), device.as_str()), ("salon", "box"));
        }
        ferry_receiver::config::Database::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT record ->> 'room', device, pg_typeof(record)::text FROM things WHERE key = 'k'",
                    &[],
                )
                .await
                .expect("query");
            let (room, device, kind): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                (room.as_str(), device.as_str(), kind.as_str()),
                ("salon", "box", "jsonb")
            );
        }
    }
}
on_both!(the_tables_people_query);

/// PostgreSQL only: a record another receiver is writing right now (its advisory lock
/// held) is answered 409, and written once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_record_in_progress_elsewhere_is_409() {
    crate::support::bounded(async {
        let db = Db::postgres().await;
        let store = db.open().await;
        let m = member(Op::Create, "box", "busy", "v1", json!({"a": 1}));
        let lock = ferry_receiver::store::postgres::lock_of("things", &m).expect("a lock");
        let ferry_receiver::config::Database::Postgres(url) = &db.database else {
            unreachable!()
        };
        let (mut other, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let tx = other.transaction().await.expect("begin");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
            .await
            .expect("lock");
        let busy = apply_one(&store, m.clone()).await;
        assert_eq!((busy.status, busy.effect), (409, Effect::InProgress));
        tx.commit().await.expect("commit");
        let done = apply_one(&store, m).await;
        assert_eq!(done.status, 201);
        assert!(!done.replayed);
    })
    .await
}

#[test]
fn the_example_config_names_sqlite_by_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("receiver.example.toml");
    let config = Config::load(&path).expect("parses");
    assert_eq!(config.database.kind(), "sqlite");
}
