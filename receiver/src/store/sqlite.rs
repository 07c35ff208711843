//! The embedded SQLite backend: one file, nothing to set up (a home server).
//!
//! One connection behind a mutex, used from tokio's blocking threads: SQLite has one
//! writer at a time anyway. WAL and `synchronous = FULL`: an answered write survives
//! a `kill -9` and a power cut.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use super::{table, terminal_value, Row, Stats, Storage, StoreError, SCHEMA_VERSION};
use crate::config::Terminal;
use crate::plan::{self, Answer, Decision, Existing, Member, Op, StoredKey};

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// The receiver's own tables, by schema version.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE ferry_receiver_collections (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE ferry_receiver_keys (
        idempotency_key TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        answer TEXT NOT NULL,
        record_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX ferry_receiver_keys_created ON ferry_receiver_keys (created_at);",
)];

pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Collections whose table exists.
    known: Arc<Mutex<HashSet<String>>>,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let p = path.clone();
        let (conn, known) = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|err| StoreError::Other(format!("opening {}: {err}", path.display())))??;
        Ok(SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            known: Arc::new(Mutex::new(known)),
        })
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection, &Mutex<HashSet<String>>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        let known = Arc::clone(&self.known);
        let path = self.path.display().to_string();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock left no transaction open (rusqlite rolls
            // back on drop), so the connection is still good.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn, &known).map_err(|source| StoreError::Sqlite {
                path: p,
                op,
                source,
            })
        })
        .await
        .map_err(|err| StoreError::Other(format!("SQLite database {path}: {op}: {err}")))?
    }
}

fn open_blocking(path: &Path) -> Result<(Connection, HashSet<String>), StoreError> {
    let err = |op: &'static str| {
        let path = path.display().to_string();
        move |source| StoreError::Sqlite { path, op, source }
    };
    let mut conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err("set busy_timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err("set WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err("set synchronous"))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err("begin the migration"))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS ferry_receiver_schema (version INTEGER NOT NULL)")
        .map_err(err("create ferry_receiver_schema"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM ferry_receiver_schema",
            [],
            |r| r.get(0),
        )
        .map_err(err("read the schema version"))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            url: format!("sqlite://{}", path.display()),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql).map_err(err("apply a migration"))?;
        tx.execute("DELETE FROM ferry_receiver_schema", [])
            .map_err(err("record the schema version"))?;
        tx.execute(
            "INSERT INTO ferry_receiver_schema (version) VALUES (?1)",
            [version],
        )
        .map_err(err("record the schema version"))?;
        if current > 0 {
            tracing::info!(
                "SQLite database {}: schema migrated to version {version}",
                path.display()
            );
        }
    }
    let known = {
        let mut stmt = tx
            .prepare("SELECT name FROM ferry_receiver_collections")
            .map_err(err("list the collections"))?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err("list the collections"))?
            .collect::<rusqlite::Result<HashSet<String>>>()
            .map_err(err("list the collections"))?;
        names
    };
    tx.commit().map_err(err("commit the migration"))?;
    Ok((conn, known))
}

fn ensure_table(
    tx: &Transaction<'_>,
    known: &Mutex<HashSet<String>>,
    collection: &str,
) -> rusqlite::Result<()> {
    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
    if known.contains(collection) {
        return Ok(());
    }
    let t = table(collection);
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device TEXT NOT NULL,
            key TEXT,
            version TEXT,
            version_order TEXT NOT NULL DEFAULT '',
            record TEXT NOT NULL,
            received_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (device, key)
        );"
    ))?;
    tx.execute(
        &format!("INSERT OR IGNORE INTO ferry_receiver_collections (name, created_at) VALUES (?1, {NOW})"),
        [collection],
    )?;
    // Remembered only once the transaction commits would be exact; a rollback leaves
    // the name here and the next write's CREATE ... IF NOT EXISTS is skipped, so the
    // caller forgets it on error (see apply).
    known.insert(collection.to_string());
    Ok(())
}

fn existing(
    tx: &Transaction<'_>,
    collection: &str,
    terminal: Option<&Terminal>,
    by: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Option<Existing>> {
    let sql = format!(
        "SELECT id, device, key, version_order, {} FROM {} WHERE {by}",
        if terminal.is_some() { "record" } else { "NULL" },
        table(collection)
    );
    tx.prepare_cached(&sql)?
        .query_row(args, |r| {
            let record: Option<String> = r.get(4)?;
            Ok(Existing {
                id: r.get(0)?,
                device: r.get(1)?,
                key: r.get(2)?,
                order: r.get(3)?,
                terminal_value: record.and_then(|text: String| terminal_value(&text, terminal)),
            })
        })
        .optional()
}

fn apply_one(
    tx: &Transaction<'_>,
    collection: &str,
    terminal: Option<&Terminal>,
    member: &Member,
) -> rusqlite::Result<Answer> {
    let stored = match &member.idempotency_key {
        Some(key) => tx
            .prepare_cached(
                "SELECT fingerprint, status, answer, record_id FROM ferry_receiver_keys WHERE idempotency_key = ?1",
            )?
            .query_row([key], |r| {
                Ok(StoredKey {
                    fingerprint: r.get(0)?,
                    status: r.get(1)?,
                    answer: r.get(2)?,
                    record_id: r.get(3)?,
                })
            })
            .optional()?,
        None => None,
    };
    let by_identity = match member.identity() {
        Some((device, key)) if stored.is_none() => existing(
            tx,
            collection,
            terminal,
            "device = ?1 AND key = ?2",
            &[&device, &key],
        )?,
        _ => None,
    };
    let by_id = match member.op {
        Op::Update(id) if stored.is_none() => {
            existing(tx, collection, terminal, "id = ?1", &[&id])?
        }
        _ => None,
    };
    let decision = plan::decide(
        member,
        stored.as_ref(),
        by_identity.as_ref(),
        by_id.as_ref(),
        terminal,
    );
    let t = table(collection);
    let inserted = match &decision {
        Decision::Insert => {
            tx.prepare_cached(&format!(
                "INSERT INTO {t} (device, key, version, version_order, record, received_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, {NOW}, {NOW})"
            ))?
            .execute(params![
                member.device,
                member.key,
                member.version,
                member.order,
                member.record_text
            ])?;
            Some(tx.last_insert_rowid())
        }
        Decision::Update { id } => {
            tx.prepare_cached(&format!(
                "UPDATE {t} SET version = ?1, version_order = ?2, record = ?3, updated_at = {NOW} WHERE id = ?4"
            ))?
            .execute(params![member.version, member.order, member.record_text, id])?;
            None
        }
        _ => None,
    };
    let answer = Answer::of(&decision, inserted);
    if answer.keeps_key() {
        let mut keep = tx.prepare_cached(&format!(
            "INSERT INTO ferry_receiver_keys
                 (idempotency_key, collection, fingerprint, status, answer, record_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW})
             ON CONFLICT (idempotency_key) DO NOTHING"
        ))?;
        let id = answer.id();
        if let Some(key) = &member.idempotency_key {
            keep.execute(params![
                key,
                collection,
                member.fingerprint,
                answer.status,
                answer.body.to_string(),
                id
            ])?;
        }
        for s in &member.superseded {
            keep.execute(params![
                s.idempotency_key,
                collection,
                s.fingerprint,
                200,
                serde_json::json!({ "id": id }).to_string(),
                id
            ])?;
        }
    }
    Ok(answer)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let record: String = r.get(4)?;
    Ok(Row {
        id: r.get(0)?,
        device: r.get(1)?,
        key: r.get(2)?,
        version: r.get(3)?,
        record: serde_json::from_str(&record).unwrap_or(Value::String(record)),
        received_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

const ROW_COLUMNS: &str = "id, device, key, version, record, received_at, updated_at";

fn table_exists(conn: &Connection, collection: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM ferry_receiver_collections WHERE name = ?1")?
        .exists([collection])
}

impl Storage for SqliteStore {
    async fn apply(
        &self,
        collection: &str,
        terminal: Option<Terminal>,
        members: Vec<Member>,
    ) -> Result<Vec<Answer>, StoreError> {
        let collection = collection.to_string();
        self.with("write records", move |conn, known| {
            let result = (|| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                ensure_table(&tx, known, &collection)?;
                let answers = members
                    .iter()
                    .map(|m| apply_one(&tx, &collection, terminal.as_ref(), m))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                tx.commit()?;
                Ok(answers)
            })();
            if result.is_err() {
                known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&collection);
            }
            result
        })
        .await
    }

    async fn get(&self, collection: &str, id: i64) -> Result<Option<Row>, StoreError> {
        let collection = collection.to_string();
        self.with("read a record", move |conn, _| {
            if !table_exists(conn, &collection)? {
                return Ok(None);
            }
            conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM {} WHERE id = ?1",
                table(&collection)
            ))?
            .query_row([id], row)
            .optional()
        })
        .await
    }

    async fn list(
        &self,
        collection: &str,
        device: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let collection = collection.to_string();
        self.with("list records", move |conn, _| {
            if !table_exists(conn, &collection)? {
                return Ok(Vec::new());
            }
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM {} WHERE id > ?1 AND (?2 IS NULL OR device = ?2)
                 ORDER BY id LIMIT ?3",
                table(&collection)
            ))?;
            let rows = stmt
                .query_map(params![after, device, limit], row)?
                .collect::<rusqlite::Result<Vec<_>>>();
            rows
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.with("check the database", |conn, _| {
            conn.query_row("SELECT COUNT(*) FROM ferry_receiver_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|_| ())
        })
        .await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.with("read statistics", |conn, _| {
            let schema_version = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM ferry_receiver_schema",
                [],
                |r| r.get(0),
            )?;
            let keys_kept =
                conn.query_row("SELECT COUNT(*) FROM ferry_receiver_keys", [], |r| r.get(0))?;
            let names = conn
                .prepare("SELECT name FROM ferry_receiver_collections ORDER BY name")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut records = Vec::new();
            for name in names {
                let mut stmt = conn.prepare(&format!(
                    "SELECT device, COUNT(*), MAX(updated_at) FROM {} GROUP BY device ORDER BY device",
                    table(&name)
                ))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((name.clone(), r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                records.extend(rows);
            }
            Ok(Stats {
                schema_version,
                keys_kept,
                records,
            })
        })
        .await
    }

    async fn prune_keys(&self, days: u32) -> Result<u64, StoreError> {
        self.with("forget old Idempotency-Keys", move |conn, _| {
            let n = conn.execute(
                "DELETE FROM ferry_receiver_keys
                 WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
                [format!("-{days} days")],
            )?;
            Ok(n as u64)
        })
        .await
    }
}
