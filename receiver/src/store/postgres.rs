//! The PostgreSQL backend, for fleets: several receivers on one database, none of them
//! keeping state of its own.
//!
//! tokio-postgres with a deadpool pool. A write is one transaction: advisory locks on
//! its records (`pg_try_advisory_xact_lock`: a record another receiver is writing right
//! now is answered `409`, as the IETF draft answers a key in progress), the facts
//! `plan::decide` needs in two queries, then the rows and the keys in bulk statements
//! over arrays (`unnest`), so a batch of 200 records costs a handful of round trips.
//! The locks go with the transaction: a receiver killed mid-write holds nothing.
//!
//! Identities and keys are compared byte for byte (`COLLATE "C"`): a locale's collation
//! costs a `strcoll` per comparison and orders nothing anyone needs here.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use super::{pg_message, table, Row, Stats, Storage, StoreError, SCHEMA_VERSION};
use crate::config::Terminal;
use crate::plan::{self, Answer, Decision, Existing, Member, Op, StoredKey};

/// Members per transaction. Each holds one advisory lock until commit, and the lock
/// table is shared (`max_locks_per_transaction` × `max_connections`, 6,400 by
/// default): 16 connections × 256 stays well inside it.
const CHUNK: usize = 256;

/// The advisory lock that serializes schema changes between receivers starting at once.
const SCHEMA_LOCK: i64 = 0x6665_7272_7972_6376; // "ferryrcv"

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE ferry_receiver_collections (
        name TEXT PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE ferry_receiver_keys (
        idempotency_key TEXT COLLATE \"C\" PRIMARY KEY,
        collection TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        answer TEXT NOT NULL,
        record_id BIGINT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    -- BRIN: keys arrive in time order, so a block range index finds the old ones for
    -- the hourly prune at a fraction of a B-tree's cost per insert.
    CREATE INDEX ferry_receiver_keys_created ON ferry_receiver_keys USING brin (created_at);",
)];

/// UTC with milliseconds, as the SQLite backend writes its times.
fn time_text(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

pub struct PgStore {
    /// The URL without its password, for messages.
    url: String,
    pool: Pool,
    known: Mutex<HashSet<String>>,
}

impl PgStore {
    pub async fn open(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        let shown = crate::config::Database::Postgres(url.to_string()).to_string();
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|source| StoreError::Postgres {
                url: shown.clone(),
                op: "read the URL",
                message: pg_message(&source),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("ferry-receiver");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|err| StoreError::Pool {
                url: shown.clone(),
                message: err.to_string(),
            })?;
        let store = PgStore {
            url: shown,
            pool,
            known: Mutex::new(HashSet::new()),
        };
        store.migrate().await?;
        store.warm(pool_size).await;
        Ok(store)
    }

    /// Opens the pool's connections now rather than on the first requests: a
    /// connection costs a TCP or socket handshake and SCRAM authentication (deliberately
    /// slow), which would otherwise land on the first answers after a start.
    async fn warm(&self, pool_size: usize) {
        let mut clients = Vec::with_capacity(pool_size);
        for _ in 0..pool_size {
            match self.pool.get().await {
                Ok(client) => clients.push(client),
                Err(err) => {
                    tracing::warn!("{}: opening the connection pool: {err}", self.url);
                    break;
                }
            }
        }
    }

    fn err(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |source| StoreError::Postgres {
            url: self.url.clone(),
            op,
            message: pg_message(&source),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| StoreError::Pool {
            url: self.url.clone(),
            message: err.to_string(),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(self.err("begin the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(self.err("lock the schema"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ferry_receiver_schema (version BIGINT NOT NULL)",
        )
        .await
        .map_err(self.err("create ferry_receiver_schema"))?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM ferry_receiver_schema",
                &[],
            )
            .await
            .map_err(self.err("read the schema version"))?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                url: self.url.clone(),
                found: current,
                known: SCHEMA_VERSION,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(self.err("apply a migration"))?;
            tx.execute("DELETE FROM ferry_receiver_schema", &[])
                .await
                .map_err(self.err("record the schema version"))?;
            tx.execute(
                "INSERT INTO ferry_receiver_schema (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(self.err("record the schema version"))?;
            if current > 0 {
                tracing::info!("{}: schema migrated to version {version}", self.url);
            }
        }
        let names: Vec<String> = tx
            .query("SELECT name FROM ferry_receiver_collections", &[])
            .await
            .map_err(self.err("list the collections"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit()
            .await
            .map_err(self.err("commit the migration"))?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names);
        Ok(())
    }

    /// Creates the collection's table if need be, in a transaction of its own (DDL
    /// under the schema lock, so receivers creating it at once do not collide).
    async fn ensure_table(&self, collection: &str) -> Result<(), StoreError> {
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(collection)
        {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(self.err("begin creating a table"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(self.err("lock the schema"))?;
        let t = table(collection);
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                device TEXT COLLATE \"C\" NOT NULL,
                key TEXT COLLATE \"C\",
                version TEXT,
                version_order TEXT COLLATE \"C\" NOT NULL DEFAULT '',
                record JSONB NOT NULL,
                received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (device, key)
            )"
        ))
        .await
        .map_err(self.err("create a collection's table"))?;
        tx.execute(
            "INSERT INTO ferry_receiver_collections (name) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&collection],
        )
        .await
        .map_err(self.err("record a collection"))?;
        tx.commit().await.map_err(self.err("commit a new table"))?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_string());
        Ok(())
    }

    async fn table_exists(&self, collection: &str) -> Result<bool, StoreError> {
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(collection)
        {
            return Ok(true);
        }
        let client = self.client().await?;
        let found = client
            .query_opt(
                "SELECT 1 FROM ferry_receiver_collections WHERE name = $1",
                &[&collection],
            )
            .await
            .map_err(self.err("look a collection up"))?
            .is_some();
        if found {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(collection.to_string());
        }
        Ok(found)
    }

    async fn apply_chunk(
        &self,
        collection: &str,
        terminal: Option<&Terminal>,
        members: &[Member],
    ) -> Result<Vec<Answer>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(self.err("begin a write"))?;
        let answers = write_chunk(&tx, collection, terminal, members)
            .await
            .map_err(self.err("write records"))?;
        tx.commit().await.map_err(self.err("commit records"))?;
        Ok(answers)
    }
}

/// The advisory lock of a member: its record, else its key, else the row it updates.
pub fn lock_of(collection: &str, member: &Member) -> Option<i64> {
    let text = match (member.identity(), &member.idempotency_key, member.op) {
        (Some((device, key)), _, _) => format!("{collection}\0r\0{device}\0{key}"),
        (None, Some(k), _) => format!("{collection}\0k\0{k}"),
        (None, None, Op::Update(id)) => format!("{collection}\0i\0{id}"),
        (None, None, Op::Create) => return None,
    };
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    Some(i64::from_be_bytes(bytes))
}

async fn write_chunk(
    tx: &Transaction<'_>,
    collection: &str,
    terminal: Option<&Terminal>,
    members: &[Member],
) -> Result<Vec<Answer>, tokio_postgres::Error> {
    let t = table(collection);

    // 1. The records' locks: a member whose record another receiver writes now is 409.
    let locks: Vec<Option<i64>> = members.iter().map(|m| lock_of(collection, m)).collect();
    let wanted: Vec<i64> = locks.iter().flatten().copied().collect();
    let got: Vec<bool> = if wanted.is_empty() {
        Vec::new()
    } else {
        let lock = tx
            .prepare_cached(
                "SELECT pg_try_advisory_xact_lock(h) FROM unnest($1::int8[]) WITH ORDINALITY AS u(h, i) ORDER BY i",
            )
            .await?;
        tx.query(&lock, &[&wanted])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let mut got = got.into_iter();
    let locked: Vec<bool> = locks
        .iter()
        .map(|l| l.is_none() || got.next().unwrap_or(false))
        .collect();

    // 2. The facts: stored keys, rows by record, rows by id.
    let keys: Vec<&str> = members
        .iter()
        .zip(&locked)
        .filter(|(_, ok)| **ok)
        .filter_map(|(m, _)| m.idempotency_key.as_deref())
        .collect();
    let mut devices = Vec::new();
    let mut record_keys = Vec::new();
    let mut ids = Vec::new();
    for (m, ok) in members.iter().zip(&locked) {
        if !ok {
            continue;
        }
        if let Some((device, key)) = m.identity() {
            devices.push(device);
            record_keys.push(key);
        }
        if let Op::Update(id) = m.op {
            ids.push(id);
        }
    }
    let terminal_field = terminal.map(|t| t.field.as_str());
    let keys_sql = tx
        .prepare_cached(
            "SELECT idempotency_key, fingerprint, status, answer, record_id
             FROM ferry_receiver_keys WHERE idempotency_key = ANY($1)",
        )
        .await?;
    let rows_sql = tx
        .prepare_cached(&format!(
            "SELECT t.id, t.device, t.key, t.version_order, (t.record -> $3::text)::text
             FROM {t} t JOIN unnest($1::text[], $2::text[]) AS u(d, k) ON t.device = u.d AND t.key = u.k
             UNION ALL
             SELECT t.id, t.device, t.key, t.version_order, (t.record -> $3::text)::text
             FROM {t} t WHERE t.id = ANY($4)"
        ))
        .await?;
    // Both reads in one round trip (tokio-postgres pipelines concurrent queries).
    let no_rows = Vec::new();
    let (key_rows, found_rows) = tokio::try_join!(
        async {
            if keys.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&keys_sql, &[&keys]).await
            }
        },
        async {
            if devices.is_empty() && ids.is_empty() {
                Ok(no_rows)
            } else {
                tx.query(&rows_sql, &[&devices, &record_keys, &terminal_field, &ids])
                    .await
            }
        }
    )?;
    let mut stored: HashMap<String, StoredKey> = HashMap::new();
    for r in key_rows {
        let status: i32 = r.get(2);
        stored.insert(
            r.get(0),
            StoredKey {
                fingerprint: r.get(1),
                status: u16::try_from(status).unwrap_or(500),
                answer: r.get(3),
                record_id: r.get(4),
            },
        );
    }
    let mut by_identity: HashMap<(String, String), Existing> = HashMap::new();
    let mut by_id: HashMap<i64, Existing> = HashMap::new();
    for r in found_rows {
        let value: Option<String> = r.get(4);
        let existing = Existing {
            id: r.get(0),
            device: r.get(1),
            key: r.get(2),
            order: r.get(3),
            terminal_value: value.and_then(|v| serde_json::from_str::<Value>(&v).ok()),
        };
        if let Some(key) = &existing.key {
            by_identity.insert((existing.device.clone(), key.clone()), existing.clone());
        }
        by_id.insert(existing.id, existing);
    }

    // 3. Decide.
    let decisions: Vec<Option<Decision>> = members
        .iter()
        .zip(&locked)
        .map(|(m, ok)| {
            ok.then(|| {
                let identity = m
                    .identity()
                    .and_then(|(d, k)| by_identity.get(&(d.to_string(), k.to_string())));
                let row = match m.op {
                    Op::Update(id) => by_id.get(&id),
                    Op::Create => None,
                };
                let key = m.idempotency_key.as_ref().and_then(|k| stored.get(k));
                plan::decide(m, key, identity, row, terminal)
            })
        })
        .collect();

    // 4. Inserts and updates. Keyed inserts and the updates go in one statement each,
    //    sent together; keyless inserts (no identity to match a returned id by) one
    //    at a time.
    let mut inserted: HashMap<usize, i64> = HashMap::new();
    let mut ins = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ins_index: HashMap<(String, String), usize> = HashMap::new();
    let mut upd = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (m, d)) in members.iter().zip(&decisions).enumerate() {
        match d {
            Some(Decision::Insert) => match m.identity() {
                Some((device, key)) => {
                    ins.0.push(device);
                    ins.1.push(key);
                    ins.2.push(m.version.as_deref());
                    ins.3.push(m.order.as_str());
                    ins.4.push(m.record_text.as_str());
                    ins_index.insert((device.to_string(), key.to_string()), i);
                }
                None => {
                    let one = tx
                        .prepare_cached(&format!(
                            "INSERT INTO {t} (device, key, version, version_order, record)
                             VALUES ($1, NULL, $2, $3, $4::text::jsonb) RETURNING id"
                        ))
                        .await?;
                    let r = tx
                        .query_one(&one, &[&m.device, &m.version, &m.order, &m.record_text])
                        .await?;
                    inserted.insert(i, r.get(0));
                }
            },
            Some(Decision::Update { id }) => {
                upd.0.push(*id);
                upd.1.push(m.version.as_deref());
                upd.2.push(m.order.as_str());
                upd.3.push(m.record_text.as_str());
            }
            _ => {}
        }
    }
    let insert_sql = tx
        .prepare_cached(&format!(
            "INSERT INTO {t} (device, key, version, version_order, record)
             SELECT d, k, v, o, r::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(d, k, v, o, r)
             RETURNING id, device, key"
        ))
        .await?;
    let update_sql = tx
        .prepare_cached(&format!(
            "UPDATE {t} SET version = u.v, version_order = u.o, record = u.r::jsonb, updated_at = now()
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) AS u(id, v, o, r)
             WHERE {t}.id = u.id"
        ))
        .await?;
    let (new_rows, _) = tokio::try_join!(
        async {
            if ins.0.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&insert_sql, &[&ins.0, &ins.1, &ins.2, &ins.3, &ins.4])
                    .await
            }
        },
        async {
            if upd.0.is_empty() {
                Ok(0)
            } else {
                tx.execute(&update_sql, &[&upd.0, &upd.1, &upd.2, &upd.3])
                    .await
            }
        }
    )?;
    for r in new_rows {
        let id: i64 = r.get(0);
        let device: String = r.get(1);
        let key: String = r.get(2);
        if let Some(i) = ins_index.get(&(device, key)) {
            inserted.insert(*i, id);
        }
    }

    // 5. The answers, and the keys of what was processed.
    let mut answers = Vec::with_capacity(members.len());
    let mut kept = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::<Option<i64>>::new(),
    );
    for (i, (m, d)) in members.iter().zip(&decisions).enumerate() {
        let Some(d) = d else {
            answers.push(Answer::in_progress());
            continue;
        };
        let answer = Answer::of(d, inserted.get(&i).copied());
        if answer.keeps_key() {
            let id = answer.id();
            if let Some(key) = &m.idempotency_key {
                kept.0.push(key.clone());
                kept.1.push(m.fingerprint.clone());
                kept.2.push(i32::from(answer.status));
                kept.3.push(answer.body.to_string());
                kept.4.push(id);
            }
            for s in &m.superseded {
                kept.0.push(s.idempotency_key.clone());
                kept.1.push(s.fingerprint.clone());
                kept.2.push(200);
                kept.3.push(serde_json::json!({ "id": id }).to_string());
                kept.4.push(id);
            }
        }
        answers.push(answer);
    }
    if !kept.0.is_empty() {
        let keep_sql = tx
            .prepare_cached(
                "INSERT INTO ferry_receiver_keys (idempotency_key, collection, fingerprint, status, answer, record_id)
                 SELECT k, $6, f, s, a, r FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::int8[]) AS u(k, f, s, a, r)
                 ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .await?;
        tx.execute(
            &keep_sql,
            &[&kept.0, &kept.1, &kept.2, &kept.3, &kept.4, &collection],
        )
        .await?;
    }
    Ok(answers)
}

fn row(r: &tokio_postgres::Row) -> Row {
    let record: String = r.get(4);
    Row {
        id: r.get(0),
        device: r.get(1),
        key: r.get(2),
        version: r.get(3),
        record: serde_json::from_str(&record).unwrap_or(Value::String(record)),
        received_at: r.get(5),
        updated_at: r.get(6),
    }
}

fn row_columns() -> String {
    format!(
        "id, device, key, version, record::text, {}, {}",
        time_text("received_at"),
        time_text("updated_at")
    )
}

impl Storage for PgStore {
    async fn apply(
        &self,
        collection: &str,
        terminal: Option<Terminal>,
        members: Vec<Member>,
    ) -> Result<Vec<Answer>, StoreError> {
        self.ensure_table(collection).await?;
        let mut answers = Vec::with_capacity(members.len());
        for chunk in members.chunks(CHUNK) {
            answers.extend(
                self.apply_chunk(collection, terminal.as_ref(), chunk)
                    .await?,
            );
        }
        Ok(answers)
    }

    async fn get(&self, collection: &str, id: i64) -> Result<Option<Row>, StoreError> {
        if !self.table_exists(collection).await? {
            return Ok(None);
        }
        let client = self.client().await?;
        let found = client
            .query_opt(
                &format!(
                    "SELECT {} FROM {} WHERE id = $1",
                    row_columns(),
                    table(collection)
                ),
                &[&id],
            )
            .await
            .map_err(self.err("read a record"))?;
        Ok(found.as_ref().map(row))
    }

    async fn list(
        &self,
        collection: &str,
        device: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        if !self.table_exists(collection).await? {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM {} WHERE id > $1 AND ($2::text IS NULL OR device = $2)
                     ORDER BY id LIMIT $3",
                    row_columns(),
                    table(collection)
                ),
                &[&after, &device, &limit],
            )
            .await
            .map_err(self.err("list records"))?;
        Ok(rows.iter().map(row).collect())
    }

    async fn health(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .query_one("SELECT COUNT(*) FROM ferry_receiver_schema", &[])
            .await
            .map_err(self.err("check the database"))?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let client = self.client().await?;
        let schema_version: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM ferry_receiver_schema",
                &[],
            )
            .await
            .map_err(self.err("read statistics"))?
            .get(0);
        let keys_kept: i64 = client
            .query_one("SELECT COUNT(*) FROM ferry_receiver_keys", &[])
            .await
            .map_err(self.err("read statistics"))?
            .get(0);
        let names: Vec<String> = client
            .query(
                "SELECT name FROM ferry_receiver_collections ORDER BY name",
                &[],
            )
            .await
            .map_err(self.err("read statistics"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut records = Vec::new();
        for name in names {
            for r in client
                .query(
                    &format!(
                        "SELECT device, COUNT(*), {} FROM {} GROUP BY device ORDER BY device",
                        time_text("MAX(updated_at)"),
                        table(&name)
                    ),
                    &[],
                )
                .await
                .map_err(self.err("read statistics"))?
            {
                records.push((name.clone(), r.get(0), r.get(1), r.get(2)));
            }
        }
        Ok(Stats {
            schema_version,
            keys_kept,
            records,
        })
    }

    async fn prune_keys(&self, days: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        client
            .execute(
                "DELETE FROM ferry_receiver_keys WHERE created_at < now() - make_interval(days => $1)",
                &[&days],
            )
            .await
            .map_err(self.err("forget old Idempotency-Keys"))
    }
}
