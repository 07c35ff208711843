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
//!
//! This file owns the connection: [`SqliteStore`], opening it, and its [`Store`] impl.
//! The rest of the backend lives beside it:
//! - `db.rs`: `Db`, through which every statement runs, so every error names the
//!   database and the operation;
//! - `schema.rs`: ferry's schema migrations; reading (or creating) a collection's table;
//! - `table.rs`: a table's layout, the SQL built from it, values between SQLite and JSON;
//! - `write.rs`: records, deletions and tombstones, the write mark, the baseline;
//! - `tracking.rs`: `sync_tracking` rows, read and written;
//! - `due.rs`: finding work (retries, new and changed records, the watermarks);
//! - `sweep.rs`: the paced sweep that finds what the watermarks cannot see.
//!
//! The backend never talks to the network and never decides what is sent: it hands out
//! what is due and records what the engine reports. No statement runs except through
//! `Db` (the few that cannot say why where they run).

mod db;
mod due;
mod schema;
mod sweep;
mod table;
mod tracking;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::record::{Key, Record};
use super::time::parse_timestamp;
use super::{
    atomic, find, key_for_write, now_ms, Baseline, Counts, Due, DueQuery, Merge, Millis, Status,
    Store, StoreError, Summary, Tombstone, Tracking,
};
use crate::config::{Backend, Collection};
use db::Db;
use sweep::Sweep;
use table::{key_from_sql, key_to_sql, Table};
use tracking::{exec_tracking, tracking_from_row, TRACKING_COLUMNS};
use write::{exec_baseline, exec_delete, exec_mark, exec_record_writes};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

impl SqliteStore {
    pub fn open(path: &Path, collections: &[Collection]) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(StoreError::io(dir, "creating the database folder"))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(StoreError::sqlite(path, "opening"))?;
        let db = Db::new(&conn, path).once();
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db.error("setting the busy timeout", e))?;
        // WAL lets readers (ferry stats, other programs) work while ferry writes; FULL
        // makes each commit durable, and commits are batched so that costs little.
        let mode: String = db.row("switching to WAL", "PRAGMA journal_mode = WAL", [], |r| {
            r.get(0)
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL journaling");
        }
        db.batch(
            "setting pragmas",
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
        )?;
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

    /// Runs statements on the store's connection (see [`Db`]).
    fn db(&self) -> Db<'_> {
        Db::new(&self.conn, &self.path)
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
        self.db().once().row(
            "reading the schema version",
            "PRAGMA schema_version",
            [],
            |r| r.get(0),
        )
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

    /// Runs `f` in one IMMEDIATE transaction: all of it is written, or none.
    fn transaction<R>(
        &mut self,
        op: impl Display,
        f: impl FnOnce(Db<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::sqlite(&self.path, op.to_string()))?;
        let db = Db::new(&tx, &self.path);
        let result = f(db)?;
        tx.commit()
            .map_err(|e| StoreError::sqlite(&self.path, op.to_string())(e))?;
        Ok(result)
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
        self.transaction(format_args!("writing records of {collection}"), |db| {
            exec_record_writes(db, collection, &writes)?;
            exec_mark(db, collection)
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
        self.db().optional_row(
            format_args!("reading record {key} of {collection}"),
            &sql,
            [key_to_sql(key)],
            |row| table.record_from_row(row, 0),
        )
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
        self.db().rows(
            format_args!("listing records of {collection}"),
            &sql,
            params![after, limit as i64],
            |row| table.record_from_row(row, 0),
        )
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
            format_args!("deleting record {key} of {collection}"),
            |db| {
                let removed = exec_delete(db, &delete_sql, collection, key)?;
                if removed {
                    exec_mark(db, collection)?;
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
        self.db().some_rows(
            format_args!("reading tombstones of {collection}"),
            &sql,
            [collection],
            |r| {
                Ok(key_from_sql(r.get_ref(0)?).map(|key| Tombstone {
                    key,
                    deleted_at: r.get(1).unwrap_or(0),
                }))
            },
        )
    }

    fn due(&mut self, collection: &str, query: &DueQuery) -> Result<Vec<Due>, StoreError> {
        self.find_due(collection, query)
    }

    fn tracking(&mut self, collection: &str, key: &Key) -> Result<Option<Tracking>, StoreError> {
        self.table(collection)?;
        self.db()
            .optional_row(
                format_args!("reading tracking of {collection} record {key}"),
                &format!(
                    "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s \
                     WHERE s.table_name = ?1 AND s.local_id = ?2"
                ),
                params![collection, key_to_sql(key)],
                |r| tracking_from_row(collection, r, 0),
            )
            .map(Option::flatten)
    }

    fn tracking_page(
        &mut self,
        collection: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Tracking>, StoreError> {
        self.table(collection)?;
        let after = after.map_or(SqlValue::Null, key_to_sql);
        self.db().some_rows(
            format_args!("reading tracking of {collection}"),
            &format!(
                "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1
                   AND (?2 IS NULL OR s.local_id > ?2) ORDER BY s.local_id LIMIT ?3"
            ),
            params![collection, after, limit as i64],
            |r| tracking_from_row(collection, r, 0),
        )
    }

    fn write_tracking(&mut self, rows: &[Tracking]) -> Result<(), StoreError> {
        for row in rows {
            self.table(&row.collection)?;
        }
        self.transaction(format_args!("writing {} tracking rows", rows.len()), |db| {
            exec_tracking(db, rows)
        })
    }

    fn delete_tracking(&mut self, collection: &str, keys: &[Key]) -> Result<(), StoreError> {
        self.table(collection)?;
        self.transaction(format_args!("forgetting tracking of {collection}"), |db| {
            for key in keys {
                db.execute(
                    format_args!("forgetting tracking of {collection} record {key}"),
                    "DELETE FROM sync_tracking WHERE table_name = ?1 AND local_id = ?2",
                    params![collection, key_to_sql(key)],
                )?;
            }
            Ok(())
        })
    }

    fn apply_merge(&mut self, collection: &str, merge: &Merge) -> Result<(), StoreError> {
        self.refresh_tables()?;
        let writes = self.record_writes(collection, &merge.upserts)?;
        let delete_sql = self.table(collection)?.delete_sql();
        self.transaction(format_args!("migrating {collection}"), |db| {
            for key in &merge.untrack {
                db.execute(
                    format_args!("forgetting tracking of {collection} record {key}"),
                    "DELETE FROM sync_tracking WHERE table_name = ?1 AND local_id = ?2",
                    params![collection, key_to_sql(key)],
                )?;
            }
            exec_tracking(db, &merge.tracking)?;
            exec_record_writes(db, collection, &writes)?;
            for key in &merge.deletes {
                exec_delete(db, &delete_sql, collection, key)?;
            }
            if let Some(baseline) = &merge.baseline {
                exec_baseline(db, collection, baseline)?;
            }
            if merge.writes_data() {
                exec_mark(db, collection)?;
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
        self.db().once().optional_row(
            "reading ferry_meta",
            "SELECT value FROM ferry_meta WHERE name = 'store_id'",
            [],
            |r| r.get(0),
        )
    }

    fn baseline(&mut self, collection: &str) -> Result<Option<Baseline>, StoreError> {
        self.table(collection)?;
        let op = || format!("reading the migration baseline of {collection}");
        let meta: Option<(i64, String, String, String)> = self.db().once().optional_row(
            op(),
            "SELECT generation, source_id, target_id, source_mark FROM ferry_baseline_meta
              WHERE collection = ?1",
            [collection],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let Some((generation, source_id, target_id, source_mark)) = meta else {
            return Ok(None);
        };
        // Fingerprints are u64 kept bit for bit in SQLite's i64.
        let fp = |v: Option<i64>| v.map(|v| v as u64);
        let records: BTreeMap<Key, (Option<u64>, Option<u64>)> = self
            .db()
            .some_rows(
                op(),
                "SELECT key, source_fp, target_fp FROM ferry_baseline WHERE collection = ?1",
                [collection],
                |r| {
                    let pair = (fp(r.get(1)?), fp(r.get(2)?));
                    Ok(key_from_sql(r.get_ref(0)?).map(|key| (key, pair)))
                },
            )?
            .into_iter()
            .collect();
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
            self.db().row(op(), sql, params, |r| {
                (0..r.as_ref().column_count())
                    .map(|i| r.get::<_, SqlValue>(i).map(|v| format!("{v:?}")))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|parts| parts.join(","))
            })
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
        let exact: Vec<(String, i64)> = self.db().rows(
            format_args!("counting deliveries of {collection}"),
            &format!(
                "SELECT s.sync_status, COUNT(*) FROM {} AS t CROSS JOIN sync_tracking AS s
                   ON s.table_name = ?1 AND s.local_id = {} GROUP BY s.sync_status",
                table.name, table.probe_expr
            ),
            [collection],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
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
        let rows: Vec<(String, i64, Option<String>, Option<String>)> = self.db().rows(
            format_args!("summarising {collection}"),
            "SELECT sync_status, COALESCE(SUM(bytes_sent), 0), MIN(sync_date), MAX(sync_date)
               FROM sync_tracking WHERE table_name = ?1 GROUP BY sync_status",
            [collection],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
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
        self.db().some_rows(
            format_args!("reading failed records of {collection}"),
            &format!(
                "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s WHERE s.table_name = ?1
                   AND s.sync_status IN ('failed', 'pending') AND (s.attempts > 0 OR s.error_message IS NOT NULL)
                 ORDER BY s.sync_date LIMIT ?2"
            ),
            params![collection, limit as i64],
            |r| tracking_from_row(collection, r, 0),
        )
    }

    fn retry_now(&mut self, collection: &str) -> Result<u64, StoreError> {
        self.table(collection)?;
        let op = || format!("retrying {collection}");
        self.transaction(op(), |db| {
            db.once()
                .execute(
                    op(),
                    "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
                      WHERE table_name = ?1 AND sync_status IN ('failed', 'pending')",
                    [collection],
                )
                .map(|n| n as u64)
        })
    }

    fn reset_tracking(&mut self, collection: &str) -> Result<u64, StoreError> {
        self.table(collection)?;
        let op = || format!("forgetting the deliveries of {collection}");
        self.transaction(op(), |db| {
            let db = db.once();
            let removed = db.execute(
                op(),
                "DELETE FROM sync_tracking WHERE table_name = ?1",
                [collection],
            )?;
            // Every row is untracked again: the watermarks start over.
            db.execute(
                op(),
                "UPDATE ferry_collections SET new_watermark = 0, new_watermark_key = NULL,
                    changed_watermark = NULL WHERE name = ?1",
                [collection],
            )?;
            Ok(removed as u64)
        })
    }

    fn quick_check(&mut self) -> Result<Option<String>, StoreError> {
        // Not through `Db`: an error here may be the check's answer.
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
            Err(err) => return Err(self.db().error("checking integrity", err)),
        };
        Ok(match rows.as_slice() {
            [only] if only == "ok" => None,
            problems => Some(problems.join("; ")),
        })
    }

    fn counts(&mut self, collection: &str) -> Result<Counts, StoreError> {
        let table = self.table(collection)?;
        let op = || format!("counting records of {collection}");
        let records: i64 = self.db().row(
            op(),
            &format!("SELECT COUNT(*) FROM {}", table.name),
            [],
            |r| r.get(0),
        )?;
        let mut counts = Counts {
            records: records.max(0) as u64,
            ..Counts::default()
        };
        let by_status: Vec<(String, i64)> = self.db().rows(
            op(),
            "SELECT sync_status, COUNT(*) FROM sync_tracking WHERE table_name = ?1 GROUP BY sync_status",
            [collection],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
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
            let at: Option<i64> = self.db().row(
                format_args!("reading retry times of {collection}"),
                "SELECT MIN(next_attempt_at) FROM sync_tracking WHERE table_name = ?1 AND sync_status = ?2",
                params![collection, status],
                |r| r.get(0),
            )?;
            earliest = earliest.into_iter().chain(at).min();
        }
        // A sweep under way goes on at its own pace; one wanted, after its rest.
        let sweep_at = self.sweep_wakes_at(collection);
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
        let version: i64 =
            self.db()
                .once()
                .row("reading data_version", "PRAGMA data_version", [], |r| {
                    r.get(0)
                })?;
        Ok(version as u64)
    }

    fn last_written(&mut self, collection: &str) -> Result<Option<Millis>, StoreError> {
        let table = self.table(collection)?;
        let ferry_mark: Option<i64> = self
            .db()
            .once()
            .optional_row(
                "reading ferry_collections",
                "SELECT last_write_ms FROM ferry_collections WHERE name = ?1",
                [collection],
                |r| r.get(0),
            )?
            .flatten();
        let newest = match &table.updated_expr {
            Some(expr) => self.db().row(
                format_args!("reading MAX(updated_at) of {collection}"),
                &format!("SELECT MAX({expr}) FROM {} AS t", table.name),
                [],
                |r| r.get::<_, SqlValue>(0),
            )?,
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
        // Not through `Db`: the error names the file being written, not the database.
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
