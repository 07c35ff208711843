//! Finding work: the reads of [`Store::due`](crate::store::Store::due). Retries come
//! from the `(table_name, sync_status, next_attempt_at)` index on `sync_tracking`; new
//! records from above the rowid watermark (every row at or below it has a tracking
//! row); changed records from the `updated_at` index, from the `updated_at` watermark
//! up. So finding work costs what there is to send, not the size of the table.
//!
//! All the reads of one call share a read snapshot; watermark moves are collected and
//! written after it ends, and not at all for a peek. Every query here is driven by an
//! index, a key or the rowid range (a test below checks the plans); walking the table
//! is the sweep's job (`sweep.rs`), paced. Nothing here decides what is sent: records
//! are handed out with their tracking rows, and the engine decides.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, OptionalExtension, Row};

use super::db::Deferred;
use super::table::{compare_sql, key_from_sql, key_to_sql, sql_from_json, sql_text, Table};
use super::tracking::{tracking_from_row, TRACKING_COLUMNS};
use super::SqliteStore;
use crate::store::record::{self, Key};
use crate::store::{Due, DueQuery, Found, StoreError};

/// The operation of one of the reads that find work, as its errors name it.
fn finding(what: &str, collection: &str) -> String {
    format!("finding {what} records of {collection}")
}

/// Untracked rows read per batch, in batches: a batch is the first `limit` of a
/// window this many times bigger, taken in insertion order and sorted by `order_by`.
const NEW_RECORDS_WINDOW: i64 = 4;

impl SqliteStore {
    /// [`Store::due`](crate::store::Store::due): a sweep step if one is wanted, then
    /// the reads in one read snapshot — a row another process commits meanwhile is
    /// seen by all of them or by none, so a watermark never passes a row that was not
    /// read — then the watermark moves they call for (none for a peek).
    pub(super) fn find_due(
        &mut self,
        collection: &str,
        query: &DueQuery,
    ) -> Result<Vec<Due>, StoreError> {
        let op = || format!("finding records of {collection} to deliver");
        // A column added since (a new field) is read from now on.
        self.refresh_tables()?;
        self.table(collection)?;
        self.sweep_if_wanted(collection, query)?;
        let db = self.db();
        db.batch(op(), "BEGIN")?;
        let mut updates = Vec::new();
        let result = self.due_in_snapshot(collection, query, &mut updates);
        if query.peek {
            updates.clear();
        }
        let ended = db.batch(op(), if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        let due = result?;
        ended?;
        for (sql, values) in updates {
            db.once()
                .execute(op(), sql, rusqlite::params_from_iter(values.iter()))?;
        }
        Ok(due)
    }

    /// The reads of [`Store::due`], all in the caller's read snapshot; watermark
    /// changes are collected in `updates`, written once the snapshot ends.
    fn due_in_snapshot(
        &self,
        collection: &str,
        query: &DueQuery,
        updates: &mut Vec<Deferred>,
    ) -> Result<Vec<Due>, StoreError> {
        let table = self.table(collection)?;
        let mut due = self.due_retries(table, query)?;
        let (new_watermark, new_watermark_key, changed_watermark) =
            self.watermarks(table.collection_name())?;
        due.extend(self.due_new(table, query, (new_watermark, new_watermark_key), updates)?);
        if query.include_changed && table.updated_expr.is_some() {
            due.extend(self.due_changed(table, query, changed_watermark, updates)?);
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
        Ok(crate::store::compose_due(
            due,
            query.limit,
            table.collection.order_by().as_str(),
        ))
    }

    /// Retries that are due, found through the tracking index.
    fn due_retries(&self, table: &Table, query: &DueQuery) -> Result<Vec<Due>, StoreError> {
        let name = table.collection_name();
        let keys: Vec<SqlValue> = self.db().rows(
            finding("retry", name),
            "SELECT local_id FROM sync_tracking WHERE table_name = ?1
               AND sync_status IN ('pending', 'failed') AND next_attempt_at <= ?2
             ORDER BY next_attempt_at LIMIT ?3",
            params![name, query.now, query.limit as i64],
            |r| r.get(0),
        )?;
        self.due_by_key(table, &keys, Found::Retry)
    }

    /// Records never tried: only rows above the rowid watermark are read. A backlog
    /// bigger than the window goes out window by window, in insertion order; within a
    /// window, in order_by order. Records with blobs are big: they are read a batch
    /// at a time, in order_by order.
    fn due_new(
        &self,
        table: &Table,
        query: &DueQuery,
        (stored, stored_key): (i64, Option<Key>),
        updates: &mut Vec<Deferred>,
    ) -> Result<Vec<Due>, StoreError> {
        let name = table.collection_name();
        let limit = query.limit as i64;
        let watermark = self.new_records_from(table, query, stored, &stored_key)?;
        let windowed = table.has_rowid && table.collection.blob_fields.is_empty();
        let window = if windowed {
            limit.saturating_mul(NEW_RECORDS_WINDOW)
        } else {
            limit
        };
        let fresh: Vec<(i64, Due)> = self.db().some_rows(
            finding("new", name),
            &table.new_records_sql(windowed),
            params![name, watermark, window],
            |row| {
                let rowid: i64 = row.get(0)?;
                Ok(table
                    .due_from_row(name, row, Found::New)?
                    .map(|d| (rowid, d)))
            },
        )?;
        if table.has_rowid && (windowed || (fresh.len() as i64) < limit) {
            // Every row between the watermark and the first untracked one is tracked
            // (read in rowid order, or all of them read): move the watermark up to
            // the row just below it (to the last row when nothing is untracked).
            // After a full scan this may move it down, to untracked rows found below
            // it (tracking deleted, a key reused).
            let below = fresh
                .iter()
                .map(|(rowid, _)| *rowid)
                .min()
                .unwrap_or(i64::MAX);
            let (mark, key) = self
                .db()
                .optional_row(
                    finding("new", name),
                    &format!(
                        "SELECT t.rowid, {} FROM {} AS t WHERE t.rowid < ?1 ORDER BY t.rowid DESC LIMIT 1",
                        table.key_expr, table.name
                    ),
                    [below],
                    |r| Ok((r.get(0)?, key_from_sql(r.get_ref(1)?))),
                )?
                .unwrap_or((0, None));
            if mark != stored || key != stored_key {
                updates.push((
                    "UPDATE ferry_collections SET new_watermark = ?2, new_watermark_key = ?3 WHERE name = ?1",
                    vec![
                        SqlValue::Text(name.to_string()),
                        SqlValue::Integer(mark),
                        key.as_ref().map_or(SqlValue::Null, key_to_sql),
                    ],
                ));
            }
        } else if table.has_rowid && query.full_scan && stored > 0 {
            // A full scan found a whole batch of untracked rows: some may lie below the
            // watermark (tracking deleted, a key reused). Read from 0 until they are
            // all tracked, not just at the next full scan.
            updates.push((
                "UPDATE ferry_collections SET new_watermark = 0, new_watermark_key = NULL WHERE name = ?1",
                vec![SqlValue::Text(name.to_string())],
            ));
        }
        Ok(fresh.into_iter().map(|(_, d)| d).collect())
    }

    /// The rowid new records are read from: the stored watermark, or 0 on a full
    /// scan, without rowids, or when the row at the watermark is no longer the one it
    /// was (if it was deleted, a new row may have taken a rowid below the watermark).
    fn new_records_from(
        &self,
        table: &Table,
        query: &DueQuery,
        stored: i64,
        stored_key: &Option<Key>,
    ) -> Result<i64, StoreError> {
        if query.full_scan || !table.has_rowid {
            return Ok(0);
        }
        if stored <= 0 {
            return Ok(stored);
        }
        let name = table.collection_name();
        let at: Option<Option<Key>> = self.db().optional_row(
            finding("new", name),
            &format!(
                "SELECT {} FROM {} AS t WHERE t.rowid = ?1",
                table.key_expr, table.name
            ),
            [stored],
            |r| Ok(key_from_sql(r.get_ref(0)?)),
        )?;
        if at.flatten() != *stored_key {
            tracing::debug!(collection = %name, watermark = stored, "watermark row changed; reading the whole table once");
            return Ok(0);
        }
        Ok(stored)
    }

    /// Delivered records whose version moved, found through the `updated_at` index
    /// from the watermark `stored` up (from the start on a full scan). Once every
    /// change from there up was seen, the watermark moves to the oldest one still
    /// undelivered, or to the newest value in the table.
    fn due_changed(
        &self,
        table: &Table,
        query: &DueQuery,
        stored: SqlValue,
        updates: &mut Vec<Deferred>,
    ) -> Result<Vec<Due>, StoreError> {
        let Some(updated) = &table.updated_expr else {
            return Ok(Vec::new());
        };
        let name = table.collection_name();
        let limit = query.limit as i64;
        let from = if query.full_scan {
            SqlValue::Null
        } else {
            stored
        };
        let changed: Vec<Due> = self.db().some_rows(
            finding("changed", name),
            &table.changed_records_sql(from == SqlValue::Null),
            params![name, from, limit],
            |row| table.due_from_row(name, row, Found::Changed),
        )?;
        if (changed.len() as i64) < limit {
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
                None => self.db().row(
                    finding("changed", name),
                    &format!("SELECT MAX({updated}) FROM {} AS t", table.name),
                    [],
                    |r| r.get::<_, SqlValue>(0),
                )?,
            };
            if next != from {
                updates.push((
                    "UPDATE ferry_collections SET changed_watermark = ?2 WHERE name = ?1",
                    vec![SqlValue::Text(name.to_string()), next],
                ));
            }
        }
        Ok(changed)
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
        let db = self.db();
        let op = || format!("reading records of {name} to deliver");
        let mut due = Vec::new();
        if keys.is_empty() {
            return Ok(due);
        }
        let sql = table.due_sql(&format!("{} = ?2", table.key_expr), "");
        let mut orphans = Vec::new();
        db.with_statement(op(), &sql, |stmt| {
            for key in keys {
                match stmt
                    .query_row(params![name, key], |row| {
                        table.due_from_row(name, row, found)
                    })
                    .optional()?
                {
                    Some(Some(d)) => due.push(d),
                    _ => orphans.push(key.clone()),
                }
            }
            Ok(())
        })?;
        // Tracked records deleted since: handed back without a record.
        for key in orphans {
            let row = db
                .optional_row(
                    op(),
                    &format!(
                        "SELECT {TRACKING_COLUMNS} FROM sync_tracking AS s \
                         WHERE s.table_name = ?1 AND s.local_id = ?2"
                    ),
                    params![name, key],
                    |r| tracking_from_row(name, r, 0),
                )?
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

    /// The watermarks stored for a collection.
    pub(super) fn watermarks(
        &self,
        collection: &str,
    ) -> Result<(i64, Option<Key>, SqlValue), StoreError> {
        self.db()
            .once()
            .optional_row(
                "reading watermarks",
                "SELECT new_watermark, new_watermark_key, changed_watermark FROM ferry_collections WHERE name = ?1",
                [collection],
                |r| Ok((r.get::<_, i64>(0)?, key_from_sql(r.get_ref(1)?), r.get::<_, SqlValue>(2)?)),
            )
            .map(|w| w.unwrap_or((0, None, SqlValue::Null)))
    }
}

impl Table {
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
}

#[cfg(test)]
mod tests {
    use super::super::*;
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
}
