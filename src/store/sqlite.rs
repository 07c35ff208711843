//! The SQLite backend (SPEC §4): one table per collection, `sync_tracking` for delivery
//! tracking, and ferry's own `ferry_*` tables.
//!
//! A table another program created is read as it is: columns become fields, BLOBs
//! become bytes, text that is not UTF-8 becomes bytes rather than being mangled. ferry
//! never changes its columns; it may add an index on the `updated_at` column so that
//! finding changed records does not read the whole table. A missing table is created:
//! the seed `000_…` `downloads` and `seeds` with exactly that seed's columns (a table
//! ferry made gains an untyped column for a field a record brings), any other as a
//! document table (`key`, `record` holding the record as JSON), which round-trips every
//! JSON value exactly. `ferry_meta` holds the store's identity, `ferry_baseline*` the
//! start-up migration's baseline (see `migrate.rs`).
//!
//! Finding work stays cheap as a table grows: every row at or below a rowid watermark
//! has a tracking row, so new records are read from above it; retries come from an
//! index on `sync_tracking`; changed records from an index on `updated_at`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde_json::{Map, Value};

use super::record::{self, Key, Record};
use super::time::parse_timestamp;
use super::{
    atomic, find, key_for_write, now_ms, Baseline, Claim, ClaimState, Counts, Due, DueQuery, Found,
    Merge, Millis, Status, Store, StoreError, Summary, Tombstone, Tracking,
};
use crate::config::{Backend, Collection};

/// ferry's schema migrations, applied in order and recorded in `ferry_schema`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_sync_tracking",
        include_str!("../../migrations/0001_sync_tracking.sql"),
    ),
    (
        2,
        "0002_claims",
        include_str!("../../migrations/0002_claims.sql"),
    ),
    (
        3,
        "0003_migration_baseline",
        include_str!("../../migrations/0003_migration_baseline.sql"),
    ),
];

/// The seed `000_…` tables, created with exactly that seed's columns.
const SEED_000_TABLES: &[(&str, &str)] = &[
    (
        "downloads",
        "CREATE TABLE downloads (
    id TEXT PRIMARY KEY,
    torrent_name TEXT,
    torrent_path TEXT,
    save_path TEXT,
    username TEXT,
    status TEXT,
    progress REAL,
    total_size INTEGER,
    downloaded_size INTEGER,
    upload_rate REAL,
    download_rate REAL,
    peers INTEGER,
    created_at TIMESTAMP,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    updated_at TIMESTAMP
)",
    ),
    (
        "seeds",
        "CREATE TABLE seeds (
    id TEXT PRIMARY KEY,
    torrent_name TEXT,
    torrent_path TEXT,
    data_path TEXT,
    username TEXT,
    status TEXT,
    uploaded_size INTEGER,
    upload_rate REAL,
    peers INTEGER,
    created_at TIMESTAMP,
    stopped_at TIMESTAMP,
    updated_at TIMESTAMP
)",
    ),
];

/// Untracked rows read per batch, in batches: a batch is the first `limit` of a
/// window this many times bigger, taken in insertion order and sorted by `order_by`.
const NEW_RECORDS_WINDOW: i64 = 4;
/// Rows a sweep reads per chunk (a quarter of it for collections with BLOBs, whose
/// other columns are read, their BLOBs only measured).
const SWEEP_CHUNK: i64 = 2_000;
/// A paced sweep rests at least this long between two chunks (ms) …
const SWEEP_PAUSE: Millis = 200;
/// … and at least this many times as long as the chunk took: a sweep of a large,
/// busy table takes a few percent of a core, not a whole one.
const SWEEP_DUTY: Millis = 20;
/// After a round over a table of more than one chunk, the next round waits this long
/// (ms), however busy the other program keeps the store: its cost stays bounded, and
/// what only a sweep finds is found within about this long.
const SWEEP_REST: Millis = 30_000;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const TRACKING_COLUMNS: &str = "s.local_id, s.remote_id, s.sync_date, s.sync_status, \
     s.error_message, s.attempts, s.next_attempt_at, s.version, s.last_http_status, s.bytes_sent, \
     s.claim_key, s.claim_version, s.claim_body_hash, s.claim_state, s.created, s.fingerprint, \
     s.claim_body, s.claim_fingerprint";
/// How many columns `TRACKING_COLUMNS` lists.
const TRACKING_WIDTH: usize = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// ferry's own table: `key`, `record` (JSON text).
    Document,
    /// Columns are fields (another program's table, or a seed schema).
    Columns,
}

/// How to read and write one collection's table.
#[derive(Debug)]
struct Table {
    collection: Collection,
    /// The table's name, quoted.
    name: String,
    layout: Layout,
    /// Column names (Columns layout), in table order.
    columns: Vec<String>,
    /// The key column's actual name (case as declared).
    key_column: String,
    key_expr: String,
    /// The key as `sync_tracking.local_id` stores it, written so that the join can
    /// use the `(table_name, local_id)` index (see `tracking_probe`).
    probe_expr: String,
    order_expr: String,
    updated_expr: Option<String>,
    /// What `SELECT` lists to rebuild a record.
    select_list: String,
    has_rowid: bool,

    /// Why ferry may not write to this table, if it may not.
    read_only: Option<String>,
    /// ferry made this table (`ferry_collections.created_by_ferry`): a field without a
    /// column gets one. Another program's table keeps its columns.
    created_by_ferry: bool,
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    collections: Vec<Collection>,
    tables: HashMap<String, Table>,
    /// `PRAGMA schema_version` when `tables` was read: a column added since (by another
    /// ferry process, or by hand) makes the tables be read again before they are used.
    schema_version: i64,
    /// A sweep per collection (see [`Sweep`]).
    sweeps: HashMap<String, Sweep>,
    /// `PRAGMA data_version` when last looked at: it moves when another connection
    /// commits, and then every collection is swept.
    data_version: Option<i64>,
}

/// A walk through a collection's table, a chunk at a time, comparing every row with
/// its tracking row. The watermarks find new rows and forward changes cheaply; a sweep
/// finds the rest — a row inserted below the rowid watermark, an `updated_at` that
/// went backwards or was never set, a key used again for another record. It runs
/// after ferry opens the store and after another process writes, paced so that a
/// large, busy table costs a few percent of a core; an idle store is never swept.
#[derive(Debug, Default)]
struct Sweep {
    active: bool,
    /// Another process wrote since this round began: go round once more.
    wanted: bool,
    /// Where the rows side's next chunk starts (a rowid, or a key without rowids).
    cursor: Option<SqlValue>,
    rows_done: bool,
    /// Where the tracking side's next chunk starts (`sync_tracking.id`).
    gone_cursor: Option<i64>,
    gone_done: bool,
    /// Chunks read this round.
    chunks: u32,
    /// A paced sweep's next chunk is not read before this time.
    next_at: Millis,
    /// A round over a large table is not followed by another before this time.
    rest_until: Millis,
}

impl Sweep {
    fn start(&mut self) {
        *self = Sweep {
            active: true,
            rest_until: self.rest_until,
            ..Sweep::default()
        };
    }
}

/// One row as a sweep reads it.
struct Swept {
    position: SqlValue,
    key: Option<Key>,
    /// Computed only for a row delivered before: its version and fingerprint now.
    version: Option<(String, u64)>,
    tracking: Option<Tracking>,
    /// The tracking row's status is one ferry knows.
    status_known: bool,
    /// The changed-records query sees this row's `updated_at` move.
    seen_by_index: bool,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal of a JSON path to a top-level field.
fn json_path(field: &str) -> String {
    format!("'$.\"{}\"'", field.replace('\'', "''"))
}

impl SqliteStore {
    pub fn open(path: &Path, collections: &[Collection]) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(StoreError::io(dir, "creating the database folder"))?;
        }
        let err = |op: &str| StoreError::sqlite(path, op.to_string());
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting the busy timeout"))?;
        // WAL lets readers (ferry stats, other programs) work while ferry writes; FULL
        // makes each commit durable, and commits are batched so that costs little.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err("switching to WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL journaling");
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
            .map_err(err("setting pragmas"))?;
        let mut store = SqliteStore {
            path: path.to_path_buf(),
            conn,
            collections: collections.to_vec(),
            tables: HashMap::new(),
            schema_version: 0,
            sweeps: HashMap::new(),
            data_version: None,
        };
        store.migrate()?;
        store.prepare_tables()?;
        Ok(store)
    }

    /// Reads every collection's table (creating missing ones) and remembers the schema
    /// version they were read at.
    fn prepare_tables(&mut self) -> Result<(), StoreError> {
        for collection in self.collections.clone() {
            let table = self.prepare_table(&collection)?;
            self.tables
                .insert(collection.name.as_str().to_string(), table);
        }
        self.schema_version = self.read_schema_version()?;
        Ok(())
    }

    fn read_schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))
    }

    /// Reads the tables again if their columns may have changed since (a column ferry
    /// added from another process, or one added by hand), so that a record is read and
    /// written with every column it has.
    fn refresh_tables(&mut self) -> Result<(), StoreError> {
        if self.read_schema_version()? != self.schema_version {
            self.prepare_tables()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
        StoreError::sqlite(self.path.clone(), op.into())
    }

    /// Applies the migrations this database has not had yet, each in its own transaction.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |op: String| StoreError::sqlite(&path, op);
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS ferry_schema (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TEXT NOT NULL)",
            )
            .map_err(err("creating ferry_schema".into()))?;
        let current: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM ferry_schema",
                [],
                |r| r.get(0),
            )
            .map_err(err("reading the schema version".into()))?;
        for &(version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
            let op = || format!("applying migrations/{name}.sql");
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(op()))?;
            if version == 2 {
                retype_adopted_tracking(&tx).map_err(err(op()))?;
            }
            tx.execute_batch(sql).map_err(err(op()))?;
            tx.execute(
                "INSERT INTO ferry_schema (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, super::rfc3339(now_ms())],
            )
            .map_err(err(op()))?;
            tx.commit().map_err(err(op()))?;
            tracing::info!(path = %path.display(), migration = name, "applied schema migration");
        }
        Ok(())
    }

    /// Finds or creates the collection's table and works out how to read it.
    fn prepare_table(&mut self, collection: &Collection) -> Result<Table, StoreError> {
        let name = collection.name.as_str();
        let schema_err = |message: String| StoreError::Schema {
            path: self.path.clone(),
            table: name.to_string(),
            collection: name.to_string(),
            message,
        };
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err(format!("looking up table {name}")))?;
        let table_name = match existing {
            Some(actual) => actual,
            None => {
                let seed = SEED_000_TABLES
                    .iter()
                    .find(|(seed, _)| *seed == name && collection.key.as_str() == "id");
                let (ddl, layout) = match seed {
                    Some((_, ddl)) => (ddl.to_string(), "columns"),
                    None => (
                        format!(
                            "CREATE TABLE {} (key PRIMARY KEY NOT NULL, record TEXT NOT NULL CHECK (json_valid(record)))",
                            ident(name)
                        ),
                        "document",
                    ),
                };
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(StoreError::sqlite(
                        &self.path,
                        format!("creating table {name}"),
                    ))?;
                tx.execute_batch(&ddl)
                    .and_then(|()| {
                        tx.execute(
                            "INSERT OR REPLACE INTO ferry_collections (name, layout, created_by_ferry) VALUES (?1, ?2, 1)",
                            params![name, layout],
                        )
                    })
                    .and_then(|_| tx.commit())
                    .map_err(StoreError::sqlite(&self.path, format!("creating table {name}")))?;
                tracing::info!(table = name, layout, "created table for collection");
                name.to_string()
            }
        };
        let registered: Option<(String, bool)> = self
            .conn
            .query_row(
                "SELECT layout, created_by_ferry FROM ferry_collections WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()
            .map_err(self.err("reading ferry_collections"))?;
        let created_by_ferry = registered.as_ref().is_some_and(|(_, ours)| *ours);
        let layout = registered.map(|(layout, _)| layout);
        if layout.is_none() {
            self.conn
                .execute(
                    "INSERT INTO ferry_collections (name, layout, created_by_ferry) VALUES (?1, 'columns', 0)",
                    [name],
                )
                .map_err(self.err("writing ferry_collections"))?;
        }
        let layout = match layout.as_deref() {
            Some("document") => Layout::Document,
            _ => Layout::Columns,
        };

        // Columns, primary key and unique single-column indexes.
        let quoted = ident(&table_name);
        let mut types: HashMap<String, String> = HashMap::new();
        let mut columns = Vec::new();
        let mut pk_columns = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA table_info({quoted})"))
                .map_err(self.err(format!("reading the columns of {table_name}")))?;
            let mut rows = stmt
                .query([])
                .map_err(self.err(format!("reading the columns of {table_name}")))?;
            while let Some(row) = rows
                .next()
                .map_err(StoreError::sqlite(&self.path, "reading columns"))?
            {
                let column: String = row
                    .get(1)
                    .map_err(StoreError::sqlite(&self.path, "reading columns"))?;
                let pk: i64 = row
                    .get(5)
                    .map_err(StoreError::sqlite(&self.path, "reading columns"))?;
                if pk > 0 {
                    pk_columns.push(column.clone());
                }
                let declared: Option<String> = row.get(2).unwrap_or(None);
                types.insert(column.clone(), declared.unwrap_or_default());
                columns.push(column);
            }
        }
        let find_column = |field: &str, what: &str| -> Result<String, StoreError> {
            columns
                .iter()
                .find(|c| c.eq_ignore_ascii_case(field))
                .cloned()
                .ok_or_else(|| {
                    schema_err(format!(
                        "has no column {field:?} for collections[{name}].{what}; its columns are: {}",
                        columns.join(", ")
                    ))
                })
        };
        let field_expr = |field: &str, what: &str| -> Result<String, StoreError> {
            Ok(match layout {
                Layout::Document => format!("json_extract(t.record, {})", json_path(field)),
                Layout::Columns => format!("t.{}", ident(&find_column(field, what)?)),
            })
        };
        let (key_column, key_expr) = match layout {
            Layout::Document => ("key".to_string(), "t.key".to_string()),
            Layout::Columns => {
                let column = find_column(collection.key.as_str(), "key")?;
                let expr = format!("t.{}", ident(&column));
                (column, expr)
            }
        };
        let probe_expr = match layout {
            Layout::Document => key_expr.clone(),
            Layout::Columns => {
                let declared = types.get(&key_column).cloned().unwrap_or_default();
                tracking_probe(&key_expr, &declared)
            }
        };

        let order_expr = if collection.order_by() == &collection.key {
            key_expr.clone()
        } else {
            field_expr(collection.order_by().as_str(), "order_by")?
        };
        let updated_expr = match &collection.updated_at {
            Some(field) => Some(field_expr(field.as_str(), "updated_at")?),
            None => None,
        };
        if layout == Layout::Columns {
            for field in &collection.blob_fields {
                find_column(field.as_str(), "blob_fields")?;
            }
        }
        let select_list = match layout {
            Layout::Document => "t.key, t.record".to_string(),
            Layout::Columns => columns
                .iter()
                .map(|c| format!("t.{}", ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let has_rowid = self
            .conn
            .prepare(&format!("SELECT rowid FROM {quoted} LIMIT 0"))
            .is_ok();

        let key_unique = layout == Layout::Document
            || (pk_columns.len() == 1 && pk_columns[0].eq_ignore_ascii_case(&key_column))
            || self.has_unique_index(&table_name, &key_column)?;
        let read_only = (!key_unique).then(|| {
            format!(
                "table {table_name} has no PRIMARY KEY or UNIQUE index on its key column {key_column:?}, \
                 so ferry can read and deliver its rows but will not write to it"
            )
        });

        if let Some(expr) = &updated_expr {
            self.ensure_index(&table_name, collection, expr, layout)?;
        }
        Ok(Table {
            collection: collection.clone(),
            name: quoted,
            layout,
            columns,
            key_column,
            key_expr,
            probe_expr,
            order_expr,
            updated_expr,
            select_list,
            has_rowid,

            read_only,
            created_by_ferry,
        })
    }

    fn has_unique_index(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let op = || format!("reading the indexes of {table}");
        let mut stmt = self
            .conn
            .prepare("SELECT il.name FROM pragma_index_list(?1) AS il WHERE il.\"unique\" = 1")
            .map_err(self.err(op()))?;
        let names: Vec<String> = stmt
            .query_map([table], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(self.err(op()))?;
        for index in names {
            let cols: Vec<String> = self
                .conn
                .prepare("SELECT name FROM pragma_index_info(?1)")
                .and_then(|mut s| {
                    s.query_map([&index], |r| r.get::<_, Option<String>>(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(self.err(op()))?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect();
            if cols.len() == 1 && cols[0].eq_ignore_ascii_case(column) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An index on the `updated_at` field, so changed records are found without reading
    /// the table. It adds no column and changes no data.
    fn ensure_index(
        &self,
        table: &str,
        collection: &Collection,
        expr: &str,
        layout: Layout,
    ) -> Result<(), StoreError> {
        let index = format!("ferry_{}_updated_at", collection.name.as_str());
        let target = match layout {
            Layout::Document => expr.replacen("t.record", "record", 1),
            Layout::Columns => expr.trim_start_matches("t.").to_string(),
        };
        self.conn
            .execute_batch(&format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({target})",
                ident(&index),
                ident(table)
            ))
            .map_err(self.err(format!("creating index {index}")))
    }

    /// Runs `f` in one IMMEDIATE transaction: all of it is written, or none.
    fn transaction<R>(
        &mut self,
        op: &str,
        f: impl FnOnce(&Connection, &Path) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::sqlite(&path, op))?;
        let result = f(&tx, &path)?;
        tx.commit().map_err(StoreError::sqlite(&path, op))?;
        Ok(result)
    }

    /// The statements that write `records` (replace semantics), all checked before
    /// anything is written: a bad record fails the call with nothing written. A field
    /// without a column gets one (`added_columns`) in a table ferry made; another
    /// program's table keeps its columns, and the record is refused with what to do.
    fn record_writes(
        &self,
        collection: &str,
        records: &[Record],
    ) -> Result<RecordWrites, StoreError> {
        let table = self.table(collection)?;
        let name = table.collection_name().to_string();
        if let Some(reason) = &table.read_only {
            return Err(StoreError::InvalidRecord {
                collection: name,
                key: None,
                message: reason.clone(),
            });
        }
        // Build every row first: a bad record fails the call before anything is written.
        let invalid = |key: Option<&Key>, message: String| StoreError::InvalidRecord {
            collection: name.clone(),
            key: key.map(Key::to_string),
            message,
        };
        let mut rows: Vec<(Key, Vec<String>, Vec<SqlValue>)> = Vec::with_capacity(records.len());
        // Columns to add, in the order first met; SQLite's column names ignore case.
        let mut added: Vec<String> = Vec::new();
        for record in records {
            super::check_bytes(&table.collection, record)?;
            let key = key_for_write(&table.collection, record)?;
            match table.layout {
                Layout::Document => {
                    let json = serde_json::to_string(record)
                        .map_err(|e| invalid(Some(&key), e.to_string()))?;
                    rows.push((
                        key.clone(),
                        Vec::new(),
                        vec![key_to_sql(&key), SqlValue::Text(json)],
                    ));
                }
                Layout::Columns => {
                    let mut columns = Vec::with_capacity(record.len());
                    let mut values = Vec::with_capacity(record.len());
                    for (field, value) in record {
                        let known = table
                            .columns
                            .iter()
                            .chain(&added)
                            .find(|c| c.eq_ignore_ascii_case(field));
                        let column = match known {
                            Some(column) => column.clone(),
                            // Absent and null are the same field: a null needs no column.
                            None if value.is_null() => continue,
                            // ferry's own table (the seed 000 `downloads`, say) grows
                            // with the records put into it.
                            None if table.created_by_ferry => {
                                added.push(field.clone());
                                field.clone()
                            }
                            None => {
                                return Err(invalid(Some(&key), format!(
                                    "field {field:?} has no column in table {} of {}, a table another program \
                                     made (ferry does not change its columns; its columns are: {}). To keep the \
                                     field, add the column — sqlite3 {} 'ALTER TABLE {} ADD COLUMN {}' — and try \
                                     again; or leave the field out of the record",
                                    table.name,
                                    self.path.display(),
                                    table.columns.join(", "),
                                    self.path.display(),
                                    table.name,
                                    ident(field),
                                )));
                            }
                        };
                        columns.push(column);
                        values.push(
                            sql_from_json(value).map_err(|m| {
                                invalid(Some(&key), format!("field {field:?}: {m}"))
                            })?,
                        );
                    }
                    rows.push((key, columns, values));
                }
            }
        }
        let statement = |columns: &[String]| -> String {
            match table.layout {
                Layout::Document => format!(
                    "INSERT INTO {} (key, record) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET record = excluded.record",
                    table.name
                ),
                Layout::Columns => {
                    let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
                    let marks = (1..=columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                    // Replace semantics: columns the record leaves out go back to their default.
                    let updates: Vec<String> = table
                        .columns
                        .iter()
                        .chain(&added)
                        .filter(|c| *c != &table.key_column)
                        .map(|c| format!("{0} = excluded.{0}", ident(c)))
                        .collect();
                    let action = if updates.is_empty() {
                        "NOTHING".to_string()
                    } else {
                        format!("UPDATE SET {}", updates.join(", "))
                    };
                    format!(
                        "INSERT INTO {} ({list}) VALUES ({marks}) ON CONFLICT ({}) DO {action}",
                        table.name,
                        ident(&table.key_column)
                    )
                }
            }
        };
        let writes = rows
            .into_iter()
            .map(|(key, columns, values)| RecordWrite {
                sql: statement(&columns),
                key,
                values,
            })
            .collect();
        Ok(RecordWrites {
            add_columns: added
                .iter()
                .map(|c| format!("ALTER TABLE {} ADD COLUMN {}", table.name, ident(c)))
                .collect(),
            writes,
        })
    }

    /// The reads of [`Store::due`], all in the caller's read snapshot; watermark
    /// changes are collected in `updates`, written once the snapshot ends.
    fn due_in_snapshot(
        &self,
        collection: &str,
        query: &DueQuery,
        updates: &mut Vec<(&'static str, Vec<SqlValue>)>,
    ) -> Result<Vec<Due>, StoreError> {
        let table = self.table(collection)?;
        let name = table.collection_name().to_string();
        let path = self.path.clone();
        let op = |what: &str| format!("finding {what} records of {name}");
        let limit = query.limit as i64;
        let mut due: Vec<Due> = Vec::new();
        let row_to_due = |row: &Row<'_>, found: Found| table.due_from_row(&name, row, found);

        // 1. Retries that are due, found through the tracking index.
        let retry_keys: Vec<SqlValue> = self
            .conn
            .prepare_cached(
                "SELECT local_id FROM sync_tracking WHERE table_name = ?1
                   AND sync_status IN ('pending', 'failed') AND next_attempt_at <= ?2
                 ORDER BY next_attempt_at LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![name, query.now, limit], |r| r.get(0))?
                    .collect()
            })
            .map_err(StoreError::sqlite(&path, op("retry")))?;
        due.extend(self.due_by_key(table, &retry_keys, Found::Retry)?);

        // 2. Records never tried: only rows above the watermark are read.
        let (mut watermark, watermark_key, changed_watermark) = self.watermarks(&name)?;
        let watermark_stored = watermark;
        if query.full_scan || !table.has_rowid {
            watermark = 0;
        } else if watermark > 0 {
            // The row at the watermark must still be the one it was; if it was deleted,
            // a new row may have taken a rowid below the watermark, so read from 0.
            let at: Option<Option<Key>> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {} FROM {} AS t WHERE t.rowid = ?1",
                    table.key_expr, table.name
                ))
                .and_then(|mut s| {
                    s.query_row([watermark], |r| Ok(key_from_sql(r.get_ref(0)?)))
                        .optional()
                })
                .map_err(StoreError::sqlite(&path, op("new")))?;
            if at.flatten() != watermark_key {
                tracing::debug!(collection = %name, watermark, "watermark row changed; reading the whole table once");
                watermark = 0;
            }
        }
        // A backlog bigger than the window goes out window by window, in insertion
        // order; within a window, in order_by order. Records with blobs are big: they
        // are read a batch at a time, in order_by order.
        let windowed = table.has_rowid && table.collection.blob_fields.is_empty();
        let sql = table.new_records_sql(windowed);
        let window = if windowed {
            limit.saturating_mul(NEW_RECORDS_WINDOW)
        } else {
            limit
        };
        let fresh: Vec<(i64, Due)> = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params![name, watermark, window], |row| {
                    Ok((row.get::<_, i64>(0)?, row_to_due(row, Found::New)?))
                })?
                .filter_map(|r| r.map(|(rowid, d)| d.map(|d| (rowid, d))).transpose())
                .collect()
            })
            .map_err(StoreError::sqlite(&path, op("new")))?;
        if table.has_rowid && (windowed || (fresh.len() as i64) < limit) {
            // Every row between the watermark and the first untracked one is tracked
            // (read in rowid order, or all of them read):
            // move the watermark up to the row just below it (to the last row when
            // nothing is untracked). After a full scan this may move it down, to
            // untracked rows found below it (tracking deleted, a key reused).
            let below = fresh
                .iter()
                .map(|(rowid, _)| *rowid)
                .min()
                .unwrap_or(i64::MAX);
            let new: Option<(i64, Option<Key>)> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT t.rowid, {} FROM {} AS t WHERE t.rowid < ?1 ORDER BY t.rowid DESC LIMIT 1",
                    table.key_expr, table.name
                ))
                .and_then(|mut s| s.query_row([below], |r| Ok((r.get(0)?, key_from_sql(r.get_ref(1)?)))).optional())
                .map_err(StoreError::sqlite(&path, op("new")))?;
            let (new_mark, new_key) = new.unwrap_or((0, None));
            if new_mark != watermark_stored || new_key != watermark_key {
                updates.push((
                    "UPDATE ferry_collections SET new_watermark = ?2, new_watermark_key = ?3 WHERE name = ?1",
                    vec![
                        SqlValue::Text(name.clone()),
                        SqlValue::Integer(new_mark),
                        new_key.as_ref().map_or(SqlValue::Null, key_to_sql),
                    ],
                ));
            }
        } else if table.has_rowid && query.full_scan && watermark_stored > 0 {
            // A full scan found a whole batch of untracked rows: some may lie below the
            // watermark (tracking deleted, a key reused). Read from 0 until they are
            // all tracked, not just at the next full scan.
            updates.push((
                "UPDATE ferry_collections SET new_watermark = 0, new_watermark_key = NULL WHERE name = ?1",
                vec![SqlValue::Text(name.clone())],
            ));
        }
        due.extend(fresh.into_iter().map(|(_, d)| d));

        // 3. Delivered records whose version moved, found through the updated_at index.
        if let (true, Some(updated)) = (query.include_changed, table.updated_expr.as_deref()) {
            let from = if query.full_scan {
                SqlValue::Null
            } else {
                changed_watermark
            };
            let sql = table.changed_records_sql(from == SqlValue::Null);
            let changed: Vec<Due> = self
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(params![name, from, limit], |row| {
                        row_to_due(row, Found::Changed)
                    })?
                    .filter_map(Result::transpose)
                    .collect()
                })
                .map_err(StoreError::sqlite(&path, op("changed")))?;
            if (changed.len() as i64) < limit {
                // Seen every change from `from` up: next time, start at the oldest one
                // still undelivered, or at the newest value in the table.
                let oldest_pending = changed
                    .iter()
                    .filter_map(|d| {
                        d.record
                            .as_ref()?
                            .get(table.collection.updated_at.as_ref()?.as_str())
                    })
                    .filter_map(|v| sql_from_json(v).ok())
                    .min_by(compare_sql);
                let next = match oldest_pending {
                    Some(v) => v,
                    None => self
                        .conn
                        .prepare_cached(&format!("SELECT MAX({updated}) FROM {} AS t", table.name))
                        .and_then(|mut s| s.query_row([], |r| r.get::<_, SqlValue>(0)))
                        .map_err(StoreError::sqlite(&path, op("changed")))?,
                };
                if next != from {
                    updates.push((
                        "UPDATE ferry_collections SET changed_watermark = ?2 WHERE name = ?1",
                        vec![SqlValue::Text(name.clone()), next],
                    ));
                }
            }
            due.extend(changed);
        }

        // One entry per key: a retry before a new record before a changed one.
        let mut seen = std::collections::HashSet::new();
        due.retain(|d| seen.insert(d.key.clone()));
        // Drop what is delivered in the state it has now (the SQL compares updated_at;
        // the content is compared here).
        due.retain(|d| {
            d.found != Found::Changed
                || d.tracking
                    .as_ref()
                    .is_none_or(|t| t.differs_from(&d.version, d.fingerprint))
        });
        Ok(super::compose_due(
            due,
            query.limit,
            table.collection.order_by().as_str(),
        ))
    }

    /// The full rows of `keys` as due records (`Found` as given); a tracked record
    /// deleted since comes without its record.
    fn due_by_key(
        &self,
        table: &Table,
        keys: &[SqlValue],
        found: Found,
    ) -> Result<Vec<Due>, StoreError> {
        let name = table.collection_name();
        let path = &self.path;
        let op = || format!("reading records of {name} to deliver");
        let mut due = Vec::new();
        if keys.is_empty() {
            return Ok(due);
        }
        let sql = table.due_sql(&format!("{} = ?2", table.key_expr), "");
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(StoreError::sqlite(path, op()))?;
        let mut orphans = Vec::new();
        for key in keys {
            match stmt
                .query_row(params![name, key], |row| {
                    table.due_from_row(name, row, found)
                })
                .optional()
            {
                Ok(Some(Some(d))) => due.push(d),
                Ok(_) => orphans.push(key.clone()),
                Err(e) => return Err(StoreError::sqlite(path, op())(e)),
            }
        }
        drop(stmt);
        // Tracked records deleted since: handed back without a record.
        for key in orphans {
            let row = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1 AND s.local_id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![name, key], |r| tracking_from_row(name, r, 0)).optional())
                .map_err(StoreError::sqlite(path, op()))?
                .flatten();
            if let Some(row) = row {
                due.push(Due {
                    key: row.key.clone(),
                    record: None,
                    version: String::new(),
                    fingerprint: 0,
                    tracking: Some(row),
                    found,
                });
            }
        }
        Ok(due)
    }

    /// Sweeps a collection, a chunk now (`pace`) or to the end, marking in
    /// `sync_tracking` what the watermarks cannot see, so that the retry index hands it
    /// out: an untracked row below the rowid watermark becomes pending; a delivered row
    /// whose version or content moved becomes pending (an update is due); a status
    /// ferry does not know becomes pending; a delivery the seed service recorded
    /// without a version is given the record's version now (so a later change shows).
    /// And the tracking side: a tracked record that is gone frees its key (its row is
    /// forgotten; a record written later under it is a new record), unless a create of
    /// it may still be unconfirmed. Each chunk is read and marked in one short write
    /// transaction.
    fn sweep(
        &mut self,
        collection: &str,
        query: &DueQuery,
        sweep: &mut Sweep,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let path = self.path.clone();
        let op = format!("sweeping {collection} for records to deliver");
        let (watermark, _, changed_watermark) = self.watermarks(collection)?;
        loop {
            let table = self.table(collection)?;
            let tx = self
                .conn
                .unchecked_transaction()
                .map_err(StoreError::sqlite(&path, op.clone()))?;
            tx.execute_batch("SAVEPOINT ferry_sweep")
                .map_err(StoreError::sqlite(&path, op.clone()))?;
            let marks = Self::sweep_rows(&tx, table, query, (watermark, &changed_watermark), sweep)
                .and_then(|mut marks| {
                    marks.extend(Self::sweep_gone(&tx, table, sweep)?);
                    Ok(marks)
                })
                .map_err(StoreError::sqlite(&path, op.clone()))?;
            for (sql, values) in &marks {
                tx.execute(sql, rusqlite::params_from_iter(values.iter()))
                    .map_err(StoreError::sqlite(&path, op.clone()))?;
            }
            tx.execute_batch("RELEASE ferry_sweep")
                .map_err(StoreError::sqlite(&path, op.clone()))?;
            tx.commit().map_err(StoreError::sqlite(&path, op.clone()))?;
            sweep.chunks += 1;
            if sweep.cursor.is_none() && sweep.gone_cursor.is_none() {
                // Round: over. A large table rests before the next round, however
                // busy the other program keeps it.
                sweep.active = false;
                sweep.rest_until = if sweep.chunks > 1 {
                    query.now.saturating_add(SWEEP_REST)
                } else {
                    query.now
                };
                sweep.chunks = 0;
                break;
            }
            if query.pace {
                break;
            }
        }
        let spent = started.elapsed().as_millis() as Millis;
        sweep.next_at = query
            .now
            .saturating_add((spent * SWEEP_DUTY).max(SWEEP_PAUSE));
        Ok(())
    }

    /// The rows side of a sweep chunk: the marks it calls for. Moves the cursor; `None`
    /// when the table's end was reached.
    fn sweep_rows(
        conn: &Connection,
        table: &Table,
        query: &DueQuery,
        (watermark, changed_watermark): (i64, &SqlValue),
        sweep: &mut Sweep,
    ) -> rusqlite::Result<Vec<(&'static str, Vec<SqlValue>)>> {
        let mut marks = Vec::new();
        if sweep.rows_done {
            return Ok(marks);
        }
        let name = table.collection_name();
        let chunk = if table.collection.blob_fields.is_empty() {
            SWEEP_CHUNK
        } else {
            SWEEP_CHUNK / 4
        };
        let cursor = sweep.cursor.clone().unwrap_or(SqlValue::Null);
        let mut last: Option<SqlValue> = None;
        let mut rows = 0i64;
        let now = super::rfc3339(now_ms());
        let mut stmt = conn.prepare_cached(&table.sweep_sql(sweep.cursor.is_none()))?;
        let mut cursor_rows = stmt.query(params![name, cursor, chunk, changed_watermark])?;
        while let Some(row) = cursor_rows.next()? {
            rows += 1;
            let swept = table.swept_from_row(name, row)?;
            let above_watermark = table.has_rowid
                && matches!(swept.position, SqlValue::Integer(rowid) if rowid > watermark);
            last = Some(swept.position);
            let Some(key) = swept.key else { continue };
            let key = key_to_sql(&key);
            match swept.tracking {
                // Above the watermark, new rows are the watermark's to find.
                None if above_watermark => {}
                None => marks.push((
                    "INSERT INTO sync_tracking (table_name, local_id, sync_date, sync_status, next_attempt_at)
                     VALUES (?1, ?2, ?3, 'pending', 0) ON CONFLICT (table_name, local_id) DO NOTHING",
                    vec![SqlValue::Text(name.to_string()), key, SqlValue::Text(now.clone())],
                )),
                Some(_) if !swept.status_known => marks.push((
                    "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
                      WHERE table_name = ?1 AND local_id = ?2",
                    vec![SqlValue::Text(name.to_string()), key],
                )),
                Some(t) if t.status == Status::Success => match swept.version {
                    Some((version, fingerprint)) if t.version.is_none() => marks.push((
                        "UPDATE sync_tracking SET version = ?3, fingerprint = ?4
                          WHERE table_name = ?1 AND local_id = ?2 AND version IS NULL",
                        vec![
                            SqlValue::Text(name.to_string()),
                            key,
                            SqlValue::Text(version),
                            SqlValue::Text(format!("{fingerprint:016x}")),
                        ],
                    )),
                    // A move of updated_at the changed-records query sees is its to
                    // send (throttled to one update a second); the rest is marked.
                    Some((version, fingerprint))
                        if query.include_changed
                            && t.differs_from(&version, fingerprint)
                            && !(swept.seen_by_index && t.version.as_deref() != Some(&version)) =>
                    {
                        marks.push((
                            "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
                              WHERE table_name = ?1 AND local_id = ?2 AND sync_status = 'success'",
                            vec![SqlValue::Text(name.to_string()), key],
                        ))
                    }
                    _ => {}
                },
                Some(_) => {}
            }
        }
        if rows < chunk {
            sweep.rows_done = true;
            sweep.cursor = None;
        } else {
            sweep.cursor = last;
        }
        Ok(marks)
    }

    /// The tracking side of a sweep chunk: rows of records that are gone, forgotten
    /// unless a create may be unconfirmed. Moves its cursor; `None` at the end.
    fn sweep_gone(
        conn: &Connection,
        table: &Table,
        sweep: &mut Sweep,
    ) -> rusqlite::Result<Vec<(&'static str, Vec<SqlValue>)>> {
        let mut marks = Vec::new();
        if sweep.gone_done {
            return Ok(marks);
        }
        let name = table.collection_name();
        let from = sweep.gone_cursor.unwrap_or(0);
        let (seen, last): (i64, Option<i64>) = conn
            .prepare_cached(
                "SELECT COUNT(*), MAX(id) FROM (SELECT id FROM sync_tracking
                  WHERE id > ?2 AND table_name = ?1 ORDER BY id LIMIT ?3)",
            )?
            .query_row(params![name, from, SWEEP_CHUNK], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let gone: Vec<i64> = conn
            .prepare_cached(&format!(
                "SELECT s.id FROM sync_tracking AS s
                  WHERE s.table_name = ?1 AND s.id > ?2 AND s.id <= ?3 AND s.claim_key IS NULL
                    AND s.sync_status = 'success'
                    AND NOT EXISTS (SELECT 1 FROM {} AS t WHERE {} = s.local_id)",
                table.name, table.key_expr
            ))?
            .query_map(params![name, from, last.unwrap_or(from)], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in gone {
            marks.push((
                "DELETE FROM sync_tracking WHERE id = ?1 AND claim_key IS NULL",
                vec![SqlValue::Integer(id)],
            ));
        }
        if seen < SWEEP_CHUNK {
            sweep.gone_done = true;
            sweep.gone_cursor = None;
        } else {
            sweep.gone_cursor = last;
        }
        Ok(marks)
    }

    fn table(&self, collection: &str) -> Result<&Table, StoreError> {
        find(&self.collections, collection)?;
        self.tables
            .get(collection)
            .ok_or_else(|| StoreError::UnknownCollection {
                name: collection.to_string(),
                known: self.tables.keys().cloned().collect(),
            })
    }

    /// The watermarks stored for a collection.
    fn watermarks(&self, collection: &str) -> Result<(i64, Option<Key>, SqlValue), StoreError> {
        self.conn
            .query_row(
                "SELECT new_watermark, new_watermark_key, changed_watermark FROM ferry_collections WHERE name = ?1",
                [collection],
                |r| Ok((r.get::<_, i64>(0)?, key_from_sql(r.get_ref(1)?), r.get::<_, SqlValue>(2)?)),
            )
            .optional()
            .map_err(self.err("reading watermarks"))
            .map(|w| w.unwrap_or((0, None, SqlValue::Null)))
    }
}

/// One record's write: its key, and the statement with its values.
struct RecordWrite {
    key: Key,
    sql: String,
    values: Vec<SqlValue>,
}

/// The writes of a batch of records: the columns a table ferry made gains first (in
/// the same transaction, so a failed write leaves the table as it was), then the rows.
struct RecordWrites {
    add_columns: Vec<String>,
    writes: Vec<RecordWrite>,
}

fn exec_record_writes(
    conn: &Connection,
    path: &Path,
    collection: &str,
    batch: &RecordWrites,
) -> Result<(), StoreError> {
    for alter in &batch.add_columns {
        conn.execute_batch(alter).map_err(StoreError::sqlite(
            path,
            format!("adding a column for a new field of {collection} ({alter})"),
        ))?;
    }
    let writes = &batch.writes;
    // A record written again is no longer deleted; most collections have no
    // tombstone at all, and then there is nothing to clear.
    let has_tombstones: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM ferry_tombstones WHERE collection = ?1)")
        .and_then(|mut s| s.query_row([collection], |r| r.get(0)))
        .map_err(StoreError::sqlite(
            path,
            format!("reading tombstones of {collection}"),
        ))?;
    for write in writes {
        conn.prepare_cached(&write.sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(write.values.iter())))
            .map_err(|e| {
                StoreError::sqlite(
                    path,
                    format!("writing record {} of {collection}", write.key),
                )(e)
            })?;
        if !has_tombstones {
            continue;
        }
        conn.prepare_cached("DELETE FROM ferry_tombstones WHERE collection = ?1 AND key = ?2")
            .and_then(|mut s| s.execute(params![collection, key_to_sql(&write.key)]))
            .map_err(|e| {
                StoreError::sqlite(
                    path,
                    format!("writing record {} of {collection}", write.key),
                )(e)
            })?;
    }
    Ok(())
}

/// Deletes a record and leaves its tombstone; `false` if there was no such record.
fn exec_delete(
    conn: &Connection,
    path: &Path,
    delete_sql: &str,
    collection: &str,
    key: &Key,
) -> Result<bool, StoreError> {
    let op = || format!("deleting record {key} of {collection}");
    let removed = conn
        .prepare_cached(delete_sql)
        .and_then(|mut s| s.execute([key_to_sql(key)]))
        .map_err(StoreError::sqlite(path, op()))?;
    if removed > 0 {
        conn.execute(
            "INSERT OR REPLACE INTO ferry_tombstones (collection, key, deleted_at) VALUES (?1, ?2, ?3)",
            params![collection, key_to_sql(key), now_ms()],
        )
        .map_err(StoreError::sqlite(path, op()))?;
    }
    Ok(removed > 0)
}

/// Replaces the migration baseline kept for a collection.
fn exec_baseline(
    conn: &Connection,
    path: &Path,
    collection: &str,
    baseline: &Baseline,
) -> Result<(), StoreError> {
    let op = || format!("keeping the migration baseline of {collection}");
    let err = StoreError::sqlite;
    conn.execute(
        "DELETE FROM ferry_baseline WHERE collection = ?1",
        [collection],
    )
    .map_err(err(path, op()))?;
    let fp = |v: Option<u64>| v.map(|v| v as i64);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO ferry_baseline (collection, key, source_fp, target_fp) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(err(path, op()))?;
    for (key, (source, target)) in &baseline.records {
        insert
            .execute(params![
                collection,
                key_to_sql(key),
                fp(*source),
                fp(*target)
            ])
            .map_err(err(path, op()))?;
    }
    conn.execute(
        "INSERT OR REPLACE INTO ferry_baseline_meta (collection, generation, source_id, target_id, source_mark)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            collection,
            i64::try_from(baseline.generation).unwrap_or(i64::MAX),
            baseline.source_id,
            baseline.target_id,
            baseline.source_mark
        ],
    )
    .map_err(err(path, op()))?;
    Ok(())
}

/// ferry's own mark of its last write to a collection (for the start-up migration).
fn exec_mark(conn: &Connection, path: &Path, collection: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE ferry_collections SET last_write_ms = ?2 WHERE name = ?1",
        params![collection, now_ms()],
    )
    .map(|_| ())
    .map_err(StoreError::sqlite(
        path,
        format!("marking {collection} as written"),
    ))
}

fn exec_tracking(conn: &Connection, path: &Path, rows: &[Tracking]) -> Result<(), StoreError> {
    let op = || format!("writing {} tracking rows", rows.len());
    let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status,
                        error_message, attempts, next_attempt_at, version, last_http_status, bytes_sent,
                        claim_key, claim_version, claim_body_hash, claim_state, created, fingerprint,
                        claim_body, claim_fingerprint)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                        ?17, ?18, ?19)
                     ON CONFLICT (table_name, local_id) DO UPDATE SET
                        remote_id = excluded.remote_id, sync_date = excluded.sync_date,
                        sync_status = excluded.sync_status, error_message = excluded.error_message,
                        attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
                        version = excluded.version, last_http_status = excluded.last_http_status,
                        bytes_sent = excluded.bytes_sent, claim_key = excluded.claim_key,
                        claim_version = excluded.claim_version,
                        claim_body_hash = excluded.claim_body_hash, claim_state = excluded.claim_state,
                        created = excluded.created, fingerprint = excluded.fingerprint,
                        claim_body = excluded.claim_body,
                        claim_fingerprint = excluded.claim_fingerprint",
                )
                .map_err(StoreError::sqlite(path, op()))?;
    for row in rows {
        // Rows still to be tried are due at 0 ("now") rather than NULL, so the
        // retry index finds them.
        let next = match (row.status, row.next_attempt_at) {
            (Status::Success, at) => at,
            (_, at) => Some(at.unwrap_or(0)),
        };
        stmt.execute(params![
            row.collection,
            key_to_sql(&row.key),
            row.remote_id.as_ref().map_or(SqlValue::Null, key_to_sql),
            row.sync_date,
            row.status.as_str(),
            row.error_message,
            row.attempts,
            next,
            row.version,
            row.last_http_status,
            i64::try_from(row.bytes_sent).unwrap_or(i64::MAX),
            row.claim.as_ref().map(|c| c.key.as_str()),
            row.claim.as_ref().map(|c| c.version.as_str()),
            row.claim.as_ref().map(|c| format!("{:016x}", c.body_hash)),
            row.claim.as_ref().map(|c| c.state.as_str()),
            row.created,
            row.fingerprint.map(|f| format!("{f:016x}")),
            row.claim.as_ref().and_then(|c| c.body.as_deref()),
            row.claim
                .as_ref()
                .map(|c| format!("{:016x}", c.fingerprint)),
        ])
        .map_err(|e| {
            StoreError::sqlite(
                path,
                format!("writing tracking of {} record {}", row.collection, row.key),
            )(e)
        })?;
    }

    Ok(())
}

/// A `sync_tracking` adopted from the seed sync service declares `local_id` and
/// `remote_id` INTEGER, and SQLite's integer affinity turns a text key such as `'007'`
/// into 7 — another record. Such a table is rebuilt with the columns untyped, as ferry
/// creates them; its rows (integers) and their ids are kept.
fn retype_adopted_tracking(tx: &Connection) -> rusqlite::Result<()> {
    let columns: Vec<(String, String)> = tx
        .prepare("SELECT name, type FROM pragma_table_info('sync_tracking') ORDER BY cid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let typed = |name: &str| {
        columns
            .iter()
            .any(|(c, t)| c.eq_ignore_ascii_case(name) && !t.is_empty())
    };
    if !typed("local_id") && !typed("remote_id") {
        return Ok(());
    }
    // Columns other than ferry's and the seed's are kept too, untyped.
    let known = [
        "id",
        "table_name",
        "local_id",
        "remote_id",
        "sync_date",
        "sync_status",
        "error_message",
        "attempts",
        "next_attempt_at",
        "version",
        "last_http_status",
        "bytes_sent",
    ];
    let extra: Vec<&String> = columns
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !known.iter().any(|k| k.eq_ignore_ascii_case(c)))
        .collect();
    let mut ddl = String::from(
        "CREATE TABLE ferry_sync_tracking_retyped (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            table_name TEXT NOT NULL,
            local_id NOT NULL,
            remote_id,
            sync_date TEXT NOT NULL,
            sync_status TEXT NOT NULL,
            error_message TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            version TEXT,
            last_http_status INTEGER,
            bytes_sent INTEGER NOT NULL DEFAULT 0",
    );
    for column in &extra {
        ddl.push_str(&format!(",\n            {}", ident(column)));
    }
    ddl.push_str(",\n            UNIQUE (table_name, local_id))");
    let list = known
        .iter()
        .map(|c| c.to_string())
        .chain(extra.iter().map(|c| ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    tx.execute_batch(&format!(
        "{ddl};
         INSERT INTO ferry_sync_tracking_retyped ({list}) SELECT {list} FROM sync_tracking;
         DROP TABLE sync_tracking;
         ALTER TABLE ferry_sync_tracking_retyped RENAME TO sync_tracking;
         CREATE INDEX IF NOT EXISTS ferry_sync_tracking_due
             ON sync_tracking (table_name, sync_status, next_attempt_at);"
    ))?;
    tracing::info!("sync_tracking: local_id and remote_id no longer typed INTEGER, so text keys such as '007' stay text");
    Ok(())
}

/// The expression that turns a key column's value into what `sync_tracking.local_id`
/// holds for it (`Key::parse`: an integer when the text is exactly an integer's
/// spelling). It carries no column affinity, so SQLite compares it to the untyped
/// `local_id` as is and can look it up in the `(table_name, local_id)` index.
fn tracking_probe(key_expr: &str, declared: &str) -> String {
    if declared.to_ascii_uppercase().contains("INT") {
        // An INTEGER column holds integers (text only where it is not one).
        format!("+{key_expr}")
    } else {
        format!(
            "(CASE WHEN CAST(CAST({key_expr} AS INTEGER) AS TEXT) = {key_expr} \
             THEN CAST({key_expr} AS INTEGER) ELSE {key_expr} END)"
        )
    }
}

fn key_to_sql(key: &Key) -> SqlValue {
    match key {
        Key::Int(i) => SqlValue::Integer(*i),
        Key::Text(s) => SqlValue::Text(s.clone()),
    }
}

fn key_from_sql(value: ValueRef<'_>) -> Option<Key> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(Key::Int(i)),
        ValueRef::Real(f) => Some(Key::Text(f.to_string())),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(Key::parse(&String::from_utf8_lossy(t))),
    }
}

/// A value as SQLite's `CAST(x AS TEXT)` spells it; `None` for NULL.
fn sql_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
    }
}

fn json_from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::String(s.to_string()),
            // Not UTF-8: keep the exact bytes rather than mangle them.
            Err(_) => record::bytes_value(t),
        },
        ValueRef::Blob(b) => record::bytes_value(b),
    }
}

fn sql_from_json(value: &Value) -> Result<SqlValue, String> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => SqlValue::Integer(i),
            (None, _) if n.as_u64().is_some() => SqlValue::Text(n.to_string()),
            (None, Some(f)) if !n.to_string().contains(['.', 'e', 'E']) => {
                // An integer beyond 64 bits: keep its digits.
                let _ = f;
                SqlValue::Text(n.to_string())
            }
            (None, Some(f)) => SqlValue::Real(f),
            (None, None) => SqlValue::Text(n.to_string()),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        other => match record::decode_bytes(other) {
            Some(bytes) => SqlValue::Blob(bytes?),
            None => SqlValue::Text(other.to_string()),
        },
    })
}

impl Table {
    /// Rebuilds a record from the columns `select_list` produced, starting at `offset`.
    fn record_from_row(&self, row: &Row<'_>, offset: usize) -> rusqlite::Result<Record> {
        match self.layout {
            Layout::Document => {
                let text: String = row.get(offset + 1)?;
                serde_json::from_str::<Record>(&text).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        offset + 1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            }
            Layout::Columns => {
                let mut record = Map::with_capacity(self.columns.len());
                for (i, column) in self.columns.iter().enumerate() {
                    record.insert(column.clone(), json_from_sql(row.get_ref(offset + i)?));
                }
                Ok(record)
            }
        }
    }

    /// The due-record query: rowid, record columns, version, tracking columns, for the
    /// rows matching `condition`, then `tail` (ORDER BY / LIMIT).
    fn due_sql(&self, condition: &str, tail: &str) -> String {
        self.due_sql_join("LEFT JOIN", condition, tail)
    }

    /// `join`: LEFT JOIN, or CROSS JOIN to make SQLite read the collection's table
    /// first (by its own index) rather than every delivered tracking row.
    fn due_sql_join(&self, join: &str, condition: &str, tail: &str) -> String {
        let version = self.version_sql();
        let rowid = if self.has_rowid { "t.rowid" } else { "0" };
        format!(
            "SELECT {rowid}, {}, {version}, {TRACKING_COLUMNS} FROM {} AS t \
             {join} sync_tracking AS s ON s.table_name = ?1 AND s.local_id = {} \
             WHERE {condition} {tail}",
            self.select_list, self.name, self.probe_expr
        )
    }

    /// Records never tried, above the rowid watermark (?2), at most ?3. `windowed`:
    /// the first ?3 in rowid order (insertion order), so the rowid range drives the
    /// query and a backlog costs each batch a window, not the whole backlog; the
    /// caller sorts the window by `order_by`. Otherwise (no rowid, or records with
    /// blobs, which are read a batch at a time): the first ?3 by `order_by` among all
    /// untracked rows (the `+` keeps the planner from walking an index in ORDER BY
    /// order, which would read every row).
    fn new_records_sql(&self, windowed: bool) -> String {
        let above = if self.has_rowid {
            "t.rowid > ?2"
        } else {
            "?2 IS NOT NULL"
        };
        let order = if windowed {
            "ORDER BY t.rowid LIMIT ?3".to_string()
        } else {
            format!("ORDER BY +{}, +{} LIMIT ?3", self.order_expr, self.key_expr)
        };
        self.due_sql(&format!("{above} AND s.local_id IS NULL"), &order)
    }

    /// Delivered records whose version moved, from `updated_at` ?2 up (read through the
    /// `updated_at` index), or all of them when `from_start`.
    fn changed_records_sql(&self, from_start: bool) -> String {
        let updated = self.updated_expr.as_deref().unwrap_or("NULL");
        let version = format!("CAST({updated} AS TEXT)");
        // A row without updated_at is versioned by its content: the sweep's to see.
        let range = if from_start {
            format!("?2 IS NULL AND {updated} IS NOT NULL")
        } else {
            format!("{updated} >= ?2")
        };
        // A success row without a version (written by the seed service) is delivered
        // at whatever version it has: only a later change makes it due.
        self.due_sql_join(
            "CROSS JOIN",
            &format!(
                "{range} AND s.sync_status = 'success' AND s.version IS NOT NULL AND s.version IS NOT {version}"
            ),
            &format!("ORDER BY +{}, +{} LIMIT ?3", self.order_expr, self.key_expr),
        )
    }

    /// A due record from a row laid out as `due_sql` selects it: rowid, record
    /// columns, `updated_at` as text, tracking columns.
    fn due_from_row(
        &self,
        collection: &str,
        row: &Row<'_>,
        found: Found,
    ) -> rusqlite::Result<Option<Due>> {
        let Some(key) = self.key_from_row(row, 1)? else {
            return Ok(None);
        };
        let record = self.record_from_row(row, 1)?;
        let width = self.select_width();
        // SQLite's own text of `updated_at`, the same text the changed-records query
        // compares with, so the two can never disagree; without one, the content.
        let fingerprint = record::fingerprint(&record, &self.blob_field_names());
        let version = match sql_text(row.get_ref(1 + width)?) {
            Some(text) => text,
            None => record::fingerprint_version(fingerprint),
        };
        let tracking = tracking_from_row(collection, row, 2 + width)?;
        Ok(Some(Due {
            key,
            record: Some(record),
            version,
            fingerprint,
            tracking,
            found,
        }))
    }

    fn blob_field_names(&self) -> Vec<&str> {
        self.collection
            .blob_fields
            .iter()
            .map(|f| f.as_str())
            .collect()
    }

    /// `CAST(updated_at AS TEXT)`, or NULL for collections without one.
    fn version_sql(&self) -> String {
        self.updated_expr
            .as_deref()
            .map_or("NULL".to_string(), |e| format!("CAST({e} AS TEXT)"))
    }

    /// A sweep's chunk: the rows after the cursor (?2; the first chunk has none) in
    /// rowid order (key order without rowids), at most ?3, BLOB columns measured
    /// rather than read, each with its tracking row.
    fn sweep_sql(&self, first: bool) -> String {
        let position = if self.has_rowid {
            "t.rowid".to_string()
        } else {
            self.key_expr.clone()
        };
        let select = match self.layout {
            Layout::Document => "t.key, t.record".to_string(),
            Layout::Columns => self
                .columns
                .iter()
                .map(|c| {
                    if self.is_blob_field(c) {
                        format!("octet_length(t.{})", ident(c))
                    } else {
                        format!("t.{}", ident(c))
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let after = if first {
            "?2 IS NULL".to_string()
        } else {
            format!("{position} > ?2")
        };
        // Last: whether the changed-records query (from the watermark ?4) sees the
        // row's updated_at move, in which case that query sends it, throttled.
        let seen_by_index = match &self.updated_expr {
            Some(updated) => format!("({updated} IS NOT NULL AND (?4 IS NULL OR {updated} >= ?4))"),
            // (?4 named all the same: the statement always takes four parameters.)
            None => "(?4 IS NULL AND 0)".to_string(),
        };
        format!(
            "SELECT {position}, {select}, {}, {TRACKING_COLUMNS}, {seen_by_index} FROM {} AS t \
             LEFT JOIN sync_tracking AS s ON s.table_name = ?1 AND s.local_id = {} \
             WHERE {after} ORDER BY {position} LIMIT ?3",
            self.version_sql(),
            self.name,
            self.probe_expr
        )
    }

    fn is_blob_field(&self, column: &str) -> bool {
        self.collection
            .blob_fields
            .iter()
            .any(|f| f.as_str().eq_ignore_ascii_case(column))
    }

    /// A row as `sweep_sql` selects it.
    fn swept_from_row(&self, collection: &str, row: &Row<'_>) -> rusqlite::Result<Swept> {
        let position: SqlValue = row.get(0)?;
        let key = self.key_from_row(row, 1)?;
        let width = self.select_width();
        let offset = 2 + width;
        let tracking = tracking_from_row(collection, row, offset)?;
        let status_known = match row.get_ref(offset + 3)? {
            ValueRef::Null => true,
            other => sql_text(other).is_some_and(|s| Status::parse(&s).is_some()),
        };
        let delivered = tracking
            .as_ref()
            .is_some_and(|t| t.status == Status::Success);
        let version = if delivered {
            Some(self.swept_version(row)?)
        } else {
            None
        };
        let seen_by_index = row
            .get::<_, Option<i64>>(offset + TRACKING_WIDTH)?
            .is_some_and(|n| n != 0);
        Ok(Swept {
            position,
            key,
            version,
            tracking,
            status_known,
            seen_by_index,
        })
    }

    /// The version and content fingerprint of a row as `sweep_sql` selects it (its
    /// BLOBs by their length).
    fn swept_version(&self, row: &Row<'_>) -> rusqlite::Result<(String, u64)> {
        let width = self.select_width();
        let fingerprint = match self.layout {
            Layout::Document => {
                record::fingerprint(&self.record_from_row(row, 1)?, &self.blob_field_names())
            }
            Layout::Columns => {
                let mut values: Vec<(&str, Option<u64>, Value)> =
                    Vec::with_capacity(self.columns.len());
                for (i, column) in self.columns.iter().enumerate() {
                    let value = row.get_ref(1 + i)?;
                    values.push(if self.is_blob_field(column) {
                        let length = match value {
                            ValueRef::Integer(n) => u64::try_from(n).ok(),
                            _ => None,
                        };
                        (column.as_str(), length, Value::Null)
                    } else {
                        (column.as_str(), None, json_from_sql(value))
                    });
                }
                record::fingerprint_fields(values.iter().map(|(column, length, value)| {
                    let part = match length {
                        Some(length) => record::Part::Length(*length),
                        None => record::Part::Value(value),
                    };
                    (*column, part)
                }))
            }
        };
        let version = match sql_text(row.get_ref(1 + width)?) {
            Some(text) => text,
            None => record::fingerprint_version(fingerprint),
        };
        Ok((version, fingerprint))
    }

    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} WHERE {} = ?1",
            self.name,
            self.key_expr.replacen("t.", "", 1)
        )
    }

    fn select_width(&self) -> usize {
        match self.layout {
            Layout::Document => 2,
            Layout::Columns => self.columns.len(),
        }
    }

    fn key_from_row(&self, row: &Row<'_>, offset: usize) -> rusqlite::Result<Option<Key>> {
        let index = match self.layout {
            Layout::Document => offset,
            Layout::Columns => {
                offset
                    + self
                        .columns
                        .iter()
                        .position(|c| c == &self.key_column)
                        .unwrap_or(0)
            }
        };
        Ok(key_from_sql(row.get_ref(index)?))
    }

    fn collection_name(&self) -> &str {
        self.collection.name.as_str()
    }
}

fn tracking_from_row(
    collection: &str,
    row: &Row<'_>,
    offset: usize,
) -> rusqlite::Result<Option<Tracking>> {
    let Some(key) = key_from_sql(row.get_ref(offset)?) else {
        return Ok(None);
    };
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match row.get_ref(offset + i)? {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(f) => Some(f.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        })
    };
    let status = text(3)?;
    Ok(Some(Tracking {
        collection: collection.to_string(),
        key,
        remote_id: key_from_sql(row.get_ref(offset + 1)?),
        sync_date: text(2)?.unwrap_or_default(),
        // An unknown status (hand-edited) is tried again rather than ignored.
        status: status
            .as_deref()
            .and_then(Status::parse)
            .unwrap_or(Status::Pending),
        error_message: text(4)?,
        attempts: row
            .get::<_, Option<i64>>(offset + 5)?
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        next_attempt_at: row.get::<_, Option<i64>>(offset + 6)?.filter(|&at| at != 0),
        version: text(7)?,
        last_http_status: row
            .get::<_, Option<i64>>(offset + 8)?
            .and_then(|n| u16::try_from(n).ok()),
        bytes_sent: row
            .get::<_, Option<i64>>(offset + 9)?
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        claim: match text(10)? {
            Some(key) => Some(Claim {
                key,
                version: text(11)?.unwrap_or_default(),
                fingerprint: text(17)?
                    .and_then(|h| u64::from_str_radix(&h, 16).ok())
                    .unwrap_or(0),
                body_hash: text(12)?
                    .and_then(|h| u64::from_str_radix(&h, 16).ok())
                    .unwrap_or(0),
                state: ClaimState::parse(text(13)?.as_deref().unwrap_or("")),
                body: match row.get_ref(offset + 16)? {
                    ValueRef::Blob(b) => Some(b.to_vec()),
                    _ => None,
                },
            }),
            None => None,
        },
        created: row
            .get::<_, Option<i64>>(offset + 14)?
            .is_some_and(|n| n != 0),
        fingerprint: text(15)?.and_then(|h| u64::from_str_radix(&h, 16).ok()),
    }))
}

impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn put(&mut self, collection: &str, record: Record) -> Result<Key, StoreError> {
        let table = self.table(collection)?;
        let key = key_for_write(&table.collection, &record)?;
        self.put_many(collection, vec![record])?;
        Ok(key)
    }

    fn put_many(&mut self, collection: &str, records: Vec<Record>) -> Result<(), StoreError> {
        self.refresh_tables()?;
        let writes = self.record_writes(collection, &records)?;
        self.transaction(&format!("writing records of {collection}"), |conn, path| {
            exec_record_writes(conn, path, collection, &writes)?;
            exec_mark(conn, path, collection)
        })?;
        if !writes.add_columns.is_empty() {
            self.prepare_tables()?;
        }
        Ok(())
    }

    fn get(&mut self, collection: &str, key: &Key) -> Result<Option<Record>, StoreError> {
        self.refresh_tables()?;
        let table = self.table(collection)?;
        let sql = format!(
            "SELECT {} FROM {} AS t WHERE {} = ?1",
            table.select_list, table.name, table.key_expr
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row([key_to_sql(key)], |row| table.record_from_row(row, 0))
                    .optional()
            })
            .map_err(StoreError::sqlite(
                &self.path,
                format!("reading record {key} of {collection}"),
            ))
    }

    fn list(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.refresh_tables()?;
        let table = self.table(collection)?;
        let sql = format!(
            "SELECT {} FROM {} AS t WHERE ?1 IS NULL OR {} > ?1 ORDER BY {2} LIMIT ?2",
            table.select_list, table.name, table.key_expr
        );
        let after = after.map_or(SqlValue::Null, key_to_sql);
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params![after, limit as i64], |row| {
                    table.record_from_row(row, 0)
                })?
                .collect()
            })
            .map_err(StoreError::sqlite(
                &self.path,
                format!("listing records of {collection}"),
            ))
    }

    fn delete(&mut self, collection: &str, key: &Key) -> Result<bool, StoreError> {
        let table = self.table(collection)?;
        if let Some(reason) = &table.read_only {
            return Err(StoreError::InvalidRecord {
                collection: collection.to_string(),
                key: Some(key.to_string()),
                message: reason.clone(),
            });
        }
        let delete_sql = table.delete_sql();
        self.transaction(
            &format!("deleting record {key} of {collection}"),
            |conn, path| {
                let removed = exec_delete(conn, path, &delete_sql, collection, key)?;
                if removed {
                    exec_mark(conn, path, collection)?;
                }
                Ok(removed)
            },
        )
    }

    fn tombstones(&mut self, collection: &str) -> Result<Vec<Tombstone>, StoreError> {
        let table = self.table(collection)?;
        // A tombstone counts only while the record is absent.
        let sql = format!(
            "SELECT d.key, d.deleted_at FROM ferry_tombstones AS d
              WHERE d.collection = ?1 AND NOT EXISTS (SELECT 1 FROM {} AS t WHERE {} = d.key)
              ORDER BY d.key",
            table.name, table.key_expr
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map([collection], |r| {
                    Ok(key_from_sql(r.get_ref(0)?).map(|key| Tombstone {
                        key,
                        deleted_at: r.get(1).unwrap_or(0),
                    }))
                })?
                .filter_map(Result::transpose)
                .collect()
            })
            .map_err(StoreError::sqlite(
                &self.path,
                format!("reading tombstones of {collection}"),
            ))
    }

    fn due(&mut self, collection: &str, query: &DueQuery) -> Result<Vec<Due>, StoreError> {
        // One read snapshot for every query of the call: a row another process commits
        // meanwhile is seen by all of them or by none, so a watermark never passes a
        // row that was not read.
        let path = self.path.clone();
        let op = || format!("finding records of {collection} to deliver");
        // A column added since (a new field) is read from now on.
        self.refresh_tables()?;
        self.table(collection)?;
        // Another process wrote since the last look (or this is the first): sweep.
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(StoreError::sqlite(&path, "reading data_version"))?;
        if self.data_version != Some(version) {
            self.data_version = Some(version);
            for collection in &self.collections {
                self.sweeps
                    .entry(collection.name.as_str().to_string())
                    .or_default()
                    .wanted = true;
            }
        }
        let mut sweep = self.sweeps.remove(collection).unwrap_or_default();
        if !sweep.active && (query.full_scan || (sweep.wanted && query.now >= sweep.rest_until)) {
            // The periodic safety net (and a one-shot pass) sweeps whatever the rest.
            sweep.start();
        }
        let swept = if sweep.active && !query.peek && (!query.pace || query.now >= sweep.next_at) {
            self.sweep(collection, query, &mut sweep)
        } else {
            Ok(())
        };
        self.sweeps.insert(collection.to_string(), sweep);
        swept?;
        self.conn
            .execute_batch("BEGIN")
            .map_err(StoreError::sqlite(&path, op()))?;
        let mut updates = Vec::new();
        let result = self.due_in_snapshot(collection, query, &mut updates);
        if query.peek {
            updates.clear();
        }
        let ended = self
            .conn
            .execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        let due = result?;
        ended.map_err(StoreError::sqlite(&path, op()))?;
        for (sql, values) in updates {
            self.conn
                .execute(sql, rusqlite::params_from_iter(values.iter()))
                .map_err(StoreError::sqlite(&path, op()))?;
        }
        Ok(due)
    }
    fn tracking(&mut self, collection: &str, key: &Key) -> Result<Option<Tracking>, StoreError> {
        self.table(collection)?;
        self.conn
            .prepare_cached(&format!(
                "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1 AND s.local_id = ?2"
            ))
            .and_then(|mut s| s.query_row(params![collection, key_to_sql(key)], |r| tracking_from_row(collection, r, 0)).optional())
            .map(Option::flatten)
            .map_err(StoreError::sqlite(&self.path, format!("reading tracking of {collection} record {key}")))
    }

    fn tracking_page(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Tracking>, StoreError> {
        self.table(collection)?;
        let after = after.map_or(SqlValue::Null, key_to_sql);
        self.conn
            .prepare_cached(&format!(
                "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1
                   AND (?2 IS NULL OR s.local_id > ?2) ORDER BY s.local_id LIMIT ?3"
            ))
            .and_then(|mut s| {
                s.query_map(params![collection, after, limit as i64], |r| {
                    tracking_from_row(collection, r, 0)
                })?
                .filter_map(Result::transpose)
                .collect()
            })
            .map_err(StoreError::sqlite(
                &self.path,
                format!("reading tracking of {collection}"),
            ))
    }

    fn write_tracking(&mut self, rows: &[Tracking]) -> Result<(), StoreError> {
        for row in rows {
            self.table(&row.collection)?;
        }
        self.transaction(
            &format!("writing {} tracking rows", rows.len()),
            |conn, path| exec_tracking(conn, path, rows),
        )
    }

    fn delete_tracking(&mut self, collection: &str, keys: &[Key]) -> Result<(), StoreError> {
        self.table(collection)?;
        self.transaction(
            &format!("forgetting tracking of {collection}"),
            |conn, path| {
                for key in keys {
                    conn.prepare_cached(
                        "DELETE FROM sync_tracking WHERE table_name = ?1 AND local_id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![collection, key_to_sql(key)]))
                    .map_err(|e| {
                        StoreError::sqlite(
                            path,
                            format!("forgetting tracking of {collection} record {key}"),
                        )(e)
                    })?;
                }
                Ok(())
            },
        )
    }

    fn apply_merge(&mut self, collection: &str, merge: &Merge) -> Result<(), StoreError> {
        self.refresh_tables()?;
        let writes = self.record_writes(collection, &merge.upserts)?;
        let delete_sql = self.table(collection)?.delete_sql();
        self.transaction(&format!("migrating {collection}"), |conn, path| {
            exec_tracking(conn, path, &merge.tracking)?;
            exec_record_writes(conn, path, collection, &writes)?;
            for key in &merge.deletes {
                exec_delete(conn, path, &delete_sql, collection, key)?;
            }
            if let Some(baseline) = &merge.baseline {
                exec_baseline(conn, path, collection, baseline)?;
            }
            if merge.writes_data() {
                exec_mark(conn, path, collection)?;
            }
            Ok(())
        })?;
        if !writes.add_columns.is_empty() {
            self.prepare_tables()?;
        }
        Ok(())
    }

    fn store_id(&mut self, _create: bool) -> Result<Option<String>, StoreError> {
        // Made by schema migration 2, when the database was first opened.
        self.conn
            .query_row(
                "SELECT value FROM ferry_meta WHERE name = 'store_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("reading ferry_meta"))
    }

    fn baseline(&mut self, collection: &str) -> Result<Option<Baseline>, StoreError> {
        self.table(collection)?;
        let op = || format!("reading the migration baseline of {collection}");
        let meta: Option<(i64, String, String, String)> = self
            .conn
            .query_row(
                "SELECT generation, source_id, target_id, source_mark FROM ferry_baseline_meta
                  WHERE collection = ?1",
                [collection],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(StoreError::sqlite(&self.path, op()))?;
        let Some((generation, source_id, target_id, source_mark)) = meta else {
            return Ok(None);
        };
        // Fingerprints are u64 kept bit for bit in SQLite's i64.
        let fp = |v: Option<i64>| v.map(|v| v as u64);
        let records: BTreeMap<Key, (Option<u64>, Option<u64>)> = self
            .conn
            .prepare_cached(
                "SELECT key, source_fp, target_fp FROM ferry_baseline WHERE collection = ?1",
            )
            .and_then(|mut s| {
                s.query_map([collection], |r| {
                    let pair = (fp(r.get(1)?), fp(r.get(2)?));
                    Ok(key_from_sql(r.get_ref(0)?).map(|key| (key, pair)))
                })?
                .filter_map(Result::transpose)
                .collect()
            })
            .map_err(StoreError::sqlite(&self.path, op()))?;
        Ok(Some(Baseline {
            generation: u64::try_from(generation).unwrap_or(0),
            source_id,
            target_id,
            source_mark,
            records,
        }))
    }

    fn change_mark(&mut self, collection: &str) -> Result<String, StoreError> {
        let table = self.table(collection)?;
        let op = || format!("reading the change mark of {collection}");
        let one = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<String, StoreError> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| {
                    s.query_row(params, |r| {
                        (0..r.as_ref().column_count())
                            .map(|i| r.get::<_, SqlValue>(i).map(|v| format!("{v:?}")))
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                })
                .map(|parts| parts.join(","))
                .map_err(StoreError::sqlite(&self.path, op()))
        };
        // Each MAX alone in its query, so that SQLite reads it from an index end.
        let mut parts = vec![one(&format!("SELECT COUNT(*) FROM {}", table.name), &[])?];
        if table.has_rowid {
            parts.push(one(&format!("SELECT MAX(rowid) FROM {}", table.name), &[])?);
        }
        if let Some(updated) = &table.updated_expr {
            parts.push(one(
                &format!("SELECT MAX({updated}) FROM {} AS t", table.name),
                &[],
            )?);
        }
        parts.push(one(
            "SELECT MAX(last_write_ms) FROM ferry_collections WHERE name = ?1",
            &[&collection],
        )?);
        parts.push(one(
            "SELECT COUNT(*), MAX(deleted_at) FROM ferry_tombstones WHERE collection = ?1",
            &[&collection],
        )?);
        parts.push(one(
            "SELECT COUNT(*), MAX(sync_date), MAX(id) FROM sync_tracking WHERE table_name = ?1",
            &[&collection],
        )?);
        Ok(parts.join(";"))
    }

    fn summary(&mut self, collection: &str) -> Result<Summary, StoreError> {
        let mut counts = self.counts(collection)?;
        // Exact counts for `stats`: only tracking rows whose record still exists (rows
        // of records deleted since stay, so a later record under the same key is not
        // sent twice). One pass over the table with an index lookup per row.
        let table = self.table(collection)?;
        let exact: Vec<(String, i64)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT s.sync_status, COUNT(*) FROM {} AS t CROSS JOIN sync_tracking AS s
                   ON s.table_name = ?1 AND s.local_id = {} GROUP BY s.sync_status",
                table.name, table.probe_expr
            ))
            .and_then(|mut s| {
                s.query_map([collection], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(StoreError::sqlite(
                &self.path,
                format!("counting deliveries of {collection}"),
            ))?;
        counts.success = 0;
        counts.failed = 0;
        for (status, n) in exact {
            match Status::parse(&status) {
                Some(Status::Success) => counts.success = n.max(0) as u64,
                Some(Status::Failed) => counts.failed = n.max(0) as u64,
                _ => {}
            }
        }
        counts.pending = counts
            .records
            .saturating_sub(counts.success + counts.failed);
        let op = || format!("summarising {collection}");
        let rows: Vec<(String, i64, Option<String>, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT sync_status, COALESCE(SUM(bytes_sent), 0), MIN(sync_date), MAX(sync_date)
                   FROM sync_tracking WHERE table_name = ?1 GROUP BY sync_status",
            )
            .and_then(|mut s| {
                s.query_map([collection], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(StoreError::sqlite(&self.path, op()))?;
        let mut summary = Summary {
            counts,
            ..Summary::default()
        };
        for (status, bytes, oldest, newest) in rows {
            summary.bytes_delivered += bytes.max(0) as u64;
            match Status::parse(&status) {
                Some(Status::Success) => summary.last_success = newest,
                _ => {
                    if oldest.is_some()
                        && (summary.oldest_pending.is_none() || oldest < summary.oldest_pending)
                    {
                        summary.oldest_pending = oldest;
                    }
                }
            }
        }
        Ok(summary)
    }

    fn troubled(&mut self, collection: &str, limit: usize) -> Result<Vec<Tracking>, StoreError> {
        self.table(collection)?;
        self.conn
            .prepare_cached(&format!(
                "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1
                   AND s.sync_status IN ('failed', 'pending') AND (s.attempts > 0 OR s.error_message IS NOT NULL)
                 ORDER BY s.sync_date LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![collection, limit as i64], |r| tracking_from_row(collection, r, 0))?
                    .filter_map(Result::transpose)
                    .collect()
            })
            .map_err(StoreError::sqlite(&self.path, format!("reading failed records of {collection}")))
    }

    fn retry_now(&mut self, collection: &str) -> Result<u64, StoreError> {
        self.table(collection)?;
        self.transaction(&format!("retrying {collection}"), |conn, path| {
            conn.execute(
                "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
                  WHERE table_name = ?1 AND sync_status IN ('failed', 'pending')",
                [collection],
            )
            .map(|n| n as u64)
            .map_err(StoreError::sqlite(path, format!("retrying {collection}")))
        })
    }

    fn reset_tracking(&mut self, collection: &str) -> Result<u64, StoreError> {
        self.table(collection)?;
        self.transaction(
            &format!("forgetting the deliveries of {collection}"),
            |conn, path| {
                let op = || format!("forgetting the deliveries of {collection}");
                let removed = conn
                    .execute(
                        "DELETE FROM sync_tracking WHERE table_name = ?1",
                        [collection],
                    )
                    .map_err(StoreError::sqlite(path, op()))?;
                // Every row is untracked again: the watermarks start over.
                conn.execute(
                    "UPDATE ferry_collections SET new_watermark = 0, new_watermark_key = NULL,
                        changed_watermark = NULL WHERE name = ?1",
                    [collection],
                )
                .map_err(StoreError::sqlite(path, op()))?;
                Ok(removed as u64)
            },
        )
    }

    fn quick_check(&mut self) -> Result<Option<String>, StoreError> {
        let checked: rusqlite::Result<Vec<String>> = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
        let rows = match checked {
            Ok(rows) => rows,
            // Too damaged for the check itself to finish: that is its answer.
            Err(err)
                if matches!(
                    err.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
                ) =>
            {
                vec![err.to_string()]
            }
            Err(err) => return Err(StoreError::sqlite(&self.path, "checking integrity")(err)),
        };
        Ok(match rows.as_slice() {
            [only] if only == "ok" => None,
            problems => Some(problems.join("; ")),
        })
    }

    fn counts(&mut self, collection: &str) -> Result<Counts, StoreError> {
        let table = self.table(collection)?;
        let op = || format!("counting records of {collection}");
        let records: i64 = self
            .conn
            .prepare_cached(&format!("SELECT COUNT(*) FROM {}", table.name))
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(StoreError::sqlite(&self.path, op()))?;
        let mut counts = Counts {
            records: records.max(0) as u64,
            ..Counts::default()
        };
        let by_status: Vec<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT sync_status, COUNT(*) FROM sync_tracking WHERE table_name = ?1 GROUP BY sync_status",
            )
            .and_then(|mut s| s.query_map([collection], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(StoreError::sqlite(&self.path, op()))?;
        for (status, n) in by_status {
            match Status::parse(&status) {
                Some(Status::Success) => counts.success = n.max(0) as u64,
                Some(Status::Failed) => counts.failed = n.max(0) as u64,
                _ => {}
            }
        }
        // Rows of deleted records are counted here too (cheaply, from the index); no
        // more can be delivered than there are records.
        counts.success = counts.success.min(counts.records);
        counts.failed = counts.failed.min(counts.records - counts.success);
        counts.pending = counts
            .records
            .saturating_sub(counts.success + counts.failed);
        Ok(counts)
    }

    fn next_attempt_at(&mut self, collection: &str) -> Result<Option<Millis>, StoreError> {
        self.table(collection)?;
        // One index probe per status; MIN over the pair would read a range.
        let mut earliest: Option<Millis> = None;
        for status in ["pending", "failed"] {
            let at: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT MIN(next_attempt_at) FROM sync_tracking WHERE table_name = ?1 AND sync_status = ?2",
                )
                .and_then(|mut s| s.query_row(params![collection, status], |r| r.get(0)))
                .map_err(StoreError::sqlite(&self.path, format!("reading retry times of {collection}")))?;
            earliest = earliest.into_iter().chain(at).min();
        }
        // A sweep under way goes on at its own pace; one wanted, after its rest.
        let sweep_at = self.sweeps.get(collection).and_then(|s| {
            if s.active {
                Some(s.next_at)
            } else if s.wanted {
                Some(s.rest_until)
            } else {
                None
            }
        });
        Ok(earliest.into_iter().chain(sweep_at).min())
    }

    fn release_memory(&mut self) {
        // Best effort: a failure only means the cache stays.
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        vec![if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        }]
    }

    fn change_token(&mut self) -> Result<u64, StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(StoreError::sqlite(&self.path, "reading data_version"))?;
        Ok(version as u64)
    }

    fn last_written(&mut self, collection: &str) -> Result<Option<Millis>, StoreError> {
        let table = self.table(collection)?;
        let ferry_mark: Option<i64> = self
            .conn
            .query_row(
                "SELECT last_write_ms FROM ferry_collections WHERE name = ?1",
                [collection],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite(&self.path, "reading ferry_collections"))?
            .flatten();
        let newest = match &table.updated_expr {
            Some(expr) => self
                .conn
                .prepare_cached(&format!("SELECT MAX({expr}) FROM {} AS t", table.name))
                .and_then(|mut s| s.query_row([], |r| r.get::<_, SqlValue>(0)))
                .map_err(StoreError::sqlite(
                    &self.path,
                    format!("reading MAX(updated_at) of {collection}"),
                ))?,
            None => SqlValue::Null,
        };
        let newest = match newest {
            SqlValue::Integer(i) => parse_timestamp(&i.to_string()),
            SqlValue::Real(f) => parse_timestamp(&(f as i64).to_string()),
            SqlValue::Text(t) => parse_timestamp(&t),
            _ => None,
        };
        // A time in the future is a local time read as UTC (or a wrong clock): it says
        // no more than "now".
        let newest = newest.map(|t| t.min(now_ms()));
        Ok(ferry_mark.into_iter().chain(newest).max())
    }

    fn backup(&mut self, dest: &Path) -> Result<(), StoreError> {
        // VACUUM INTO writes one consistent snapshot in a single statement (the
        // stepwise online backup starts over whenever another connection commits, and
        // may never finish while the daemon writes); it goes to a temp file, then an
        // atomic rename: a reader of `dest` never sees half a backup. A temp is named
        // with its pid: what killed backups left is removed here.
        let folder = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        atomic::remove_dead_temps(folder);
        let temp = atomic::backup_temp(dest);
        let journal = {
            let mut name = temp.clone().into_os_string();
            name.push("-journal");
            std::path::PathBuf::from(name)
        };
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&journal);
        let target = temp.to_string_lossy().into_owned();
        let result = self
            .conn
            .execute("VACUUM INTO ?1", [&target])
            .map(|_| ())
            .map_err(StoreError::sqlite(&temp, "taking a backup (VACUUM INTO)"))
            .and_then(|()| {
                std::fs::File::open(&temp)
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(&temp, dest))
                    .and_then(|()| std::fs::File::open(folder)?.sync_all())
                    .map_err(StoreError::io(dest, "finishing the backup"))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(&journal);
        }
        result
    }
}

/// SQLite's ordering of values (null < numbers < text < blob).
fn compare_sql(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn class(v: &SqlValue) -> u8 {
        match v {
            SqlValue::Null => 0,
            SqlValue::Integer(_) | SqlValue::Real(_) => 1,
            SqlValue::Text(_) => 2,
            SqlValue::Blob(_) => 3,
        }
    }
    match (a, b) {
        (SqlValue::Integer(x), SqlValue::Integer(y)) => x.cmp(y),
        (SqlValue::Integer(_) | SqlValue::Real(_), SqlValue::Integer(_) | SqlValue::Real(_)) => {
            let f = |v: &SqlValue| match v {
                SqlValue::Integer(i) => *i as f64,
                SqlValue::Real(r) => *r,
                _ => 0.0,
            };
            f(a).partial_cmp(&f(b)).unwrap_or(Ordering::Equal)
        }
        (SqlValue::Text(x), SqlValue::Text(y)) => x.cmp(y),
        (SqlValue::Blob(x), SqlValue::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn store(dir: &tempfile::TempDir, collections: &str) -> SqliteStore {
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, collections).unwrap();
        let config = Config::load(&path, &[("STATE_DIRECTORY", "")]).unwrap();
        SqliteStore::open(&dir.path().join("ferry.db"), &config.collections).unwrap()
    }

    fn plan(store: &SqliteStore, sql: &str) -> String {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let values: [SqlValue; 3] = [
            SqlValue::Text("c".into()),
            SqlValue::Integer(0),
            SqlValue::Integer(10),
        ];
        let count = stmt.parameter_count();
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(&values[..count]), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("\n")
    }

    /// Finding work must never read the whole collection table: each query is driven
    /// by the rowid watermark, the key, or the updated_at index.
    #[test]
    fn finding_work_never_scans_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(
            &dir,
            "[[collections]]\nname = \"c\"\nendpoint = \"/c\"\norder_by = \"at\"\nupdated_at = \"at\"\n\
             [[collections]]\nname = \"downloads\"\nendpoint = \"/d\"\nupdated_at = \"updated_at\"\n",
        );
        store
            .conn
            .execute_batch("CREATE TABLE other (id INTEGER PRIMARY KEY, at TEXT, v BLOB)")
            .unwrap();
        for name in ["c", "downloads"] {
            let table = &store.tables[name];
            for sql in [
                table.new_records_sql(true),
                table.new_records_sql(false),
                table.changed_records_sql(false),
                table.due_sql(&format!("{} = ?2", table.key_expr), ""),
            ] {
                let plan = plan(&store, &sql);
                assert!(!plan.contains("SCAN t"), "{name}: {sql}\n{plan}");
                assert!(!plan.contains("SCAN s"), "{name}: {sql}\n{plan}");
                assert!(
                    plan.contains("local_id=?"),
                    "tracking found by key: {name}: {sql}\n{plan}"
                );
            }
        }
        // And the same for a table another program created.
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[[collections]]\nname = \"other\"\nendpoint = \"/o\"\norder_by = \"at\"\nupdated_at = \"at\"\n").unwrap();
        let config = Config::load(&path, &[("STATE_DIRECTORY", "")]).unwrap();
        store = SqliteStore::open(&dir.path().join("ferry.db"), &config.collections).unwrap();
        let table = &store.tables["other"];
        for sql in [
            table.new_records_sql(true),
            table.new_records_sql(false),
            table.changed_records_sql(false),
        ] {
            let plan = plan(&store, &sql);
            assert!(!plan.contains("SCAN t"), "other: {sql}\n{plan}");
            assert!(!plan.contains("SCAN s"), "other: {sql}\n{plan}");
            assert!(
                plan.contains("local_id=?"),
                "tracking found by key: other: {sql}\n{plan}"
            );
        }
    }

    #[test]
    fn tracking_width_counts_the_tracking_columns() {
        assert_eq!(TRACKING_COLUMNS.split(',').count(), TRACKING_WIDTH);
    }

    #[test]
    fn a_seed_003_sync_tracking_is_adopted_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ferry.db");
        {
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch(
                "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, capteur TEXT);
                 CREATE TABLE sync_tracking (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, local_id INTEGER NOT NULL,
                    remote_id INTEGER, sync_date TEXT NOT NULL, sync_status TEXT NOT NULL, error_message TEXT,
                    UNIQUE(table_name, local_id));
                 INSERT INTO evenement (date, capteur) VALUES ('2025-12-18T17:30:00', 'PIR'), ('2025-12-18T17:35:00', 'PIR'),
                    ('2025-12-18T17:40:00', 'PIR');
                 INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status, error_message) VALUES
                    ('evenement', 1, 123, '2025-12-18 17:30:00.000000', 'success', NULL),
                    ('evenement', 3, NULL, '2025-12-18 17:40:00.000000', 'failed', 'Serveur inaccessible');",
            )
            .unwrap();
        }
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[[collections]]\nname = \"evenement\"\nkey = \"id_evenement\"\norder_by = \"date\"\nendpoint = \"/api/evenements\"\n",
        )
        .unwrap();
        let config = Config::load(&path, &[("STATE_DIRECTORY", "")]).unwrap();
        let mut store = SqliteStore::open(&db, &config.collections).unwrap();
        let row = store.tracking("evenement", &Key::Int(1)).unwrap().unwrap();
        assert_eq!(row.status, Status::Success);
        assert_eq!(row.remote_id, Some(Key::Int(123)));
        assert_eq!(row.sync_date, "2025-12-18 17:30:00.000000");
        let query = DueQuery {
            now: 0,
            limit: 10,
            include_changed: true,
            full_scan: false,
            pace: false,
            peek: false,
        };
        let due = store.due("evenement", &query).unwrap();
        let keys: Vec<String> = due.iter().map(|d| d.key.to_string()).collect();
        // 1 was delivered by the seed service; 3 failed there and is retried; 2 is new.
        assert_eq!(keys, ["2", "3"]);
        assert_eq!(
            due[1].tracking.as_ref().map(|t| t.status),
            Some(Status::Failed)
        );
        // The other program's table kept its columns.
        let columns: Vec<String> = store
            .conn
            .prepare("SELECT name FROM pragma_table_info('evenement')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(columns, ["id_evenement", "date", "capteur"]);
    }
}
