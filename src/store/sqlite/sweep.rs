//! The sweep: a paced walk through a collection's table, a chunk at a time, that marks
//! in `sync_tracking` what the watermarks of `due.rs` cannot see, so that the retry
//! index hands it out. It writes marks only (pending, a version for a seed delivery, a
//! forgotten row of a record that is gone); it never hands out records itself.

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Row};
use serde_json::Value;

use super::db::{Db, Deferred};
use super::table::{ident, json_from_sql, key_to_sql, sql_text, Layout, Table};
use super::tracking::{tracking_from_row, TRACKING_COLUMNS, TRACKING_WIDTH};
use super::SqliteStore;
use crate::store::record::{self, Key};
use crate::store::{now_ms, rfc3339, DueQuery, Millis, Status, StoreError, Tracking};

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

/// A walk through a collection's table, a chunk at a time, comparing every row with
/// its tracking row. The watermarks find new rows and forward changes cheaply; a sweep
/// finds the rest — a row inserted below the rowid watermark, an `updated_at` that
/// went backwards or was never set, a key used again for another record. It runs
/// after ferry opens the store and after another process writes, paced so that a
/// large, busy table costs a few percent of a core; an idle store is never swept.
#[derive(Clone, Debug, Default)]
pub(super) struct Sweep {
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

impl SqliteStore {
    /// Before the reads of [`Store::due`](crate::store::Store::due): marks every
    /// collection for a sweep when another process wrote since the last look (or on
    /// the first), starts a round when one is wanted (and its rest is over) or on a
    /// full scan, and sweeps a chunk of it when one is due (all of it, unpaced). A
    /// peek never sweeps: it writes nothing.
    pub(super) fn sweep_if_wanted(
        &mut self,
        collection: &str,
        query: &DueQuery,
    ) -> Result<(), StoreError> {
        let version: i64 =
            self.db()
                .once()
                .row("reading data_version", "PRAGMA data_version", [], |r| {
                    r.get(0)
                })?;
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
        swept
    }

    /// When the collection's sweep wants to be called again: a round under way at its
    /// own pace, one wanted after its rest.
    pub(super) fn sweep_wakes_at(&self, collection: &str) -> Option<Millis> {
        self.sweeps.get(collection).and_then(|s| {
            if s.active {
                Some(s.next_at)
            } else if s.wanted {
                Some(s.rest_until)
            } else {
                None
            }
        })
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
        let op = format!("sweeping {collection} for records to deliver");
        let (watermark, _, changed_watermark) = self.watermarks(collection)?;
        loop {
            // The chunk moves a copy of the cursors, kept only once its marks are
            // committed: a chunk cut short (the other program holding the lock) is
            // read again next time, not skipped.
            let mut next = sweep.clone();
            let table = self.table(collection)?;
            let tx = self
                .conn
                .unchecked_transaction()
                .map_err(|e| self.db().error(&op, e))?;
            let db = Db::new(&tx, &self.path);
            db.batch(&op, "SAVEPOINT ferry_sweep")?;
            let mut marks = Self::sweep_rows(
                db,
                &op,
                table,
                query,
                (watermark, &changed_watermark),
                &mut next,
            )?;
            marks.extend(Self::sweep_gone(db, &op, table, &mut next)?);
            for (sql, values) in &marks {
                db.once()
                    .execute(&op, sql, rusqlite::params_from_iter(values.iter()))?;
            }
            db.batch(&op, "RELEASE ferry_sweep")?;
            tx.commit()
                .map_err(|e| StoreError::sqlite(&self.path, &op)(e))?;
            *sweep = next;
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
        db: Db<'_>,
        op: &str,
        table: &Table,
        query: &DueQuery,
        (watermark, changed_watermark): (i64, &SqlValue),
        sweep: &mut Sweep,
    ) -> Result<Vec<Deferred>, StoreError> {
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
        let now = rfc3339(now_ms());
        db.with_statement(op, &table.sweep_sql(sweep.cursor.is_none()), |stmt| {
            let mut cursor_rows = stmt.query(params![name, cursor, chunk, changed_watermark])?;
            while let Some(row) = cursor_rows.next()? {
                rows += 1;
                let mut swept = table.swept_from_row(name, row)?;
                // Above the watermark, new rows are the watermark's to find.
                let above_watermark = table.has_rowid
                    && matches!(swept.position, SqlValue::Integer(rowid) if rowid > watermark);
                last = Some(std::mem::replace(&mut swept.position, SqlValue::Null));
                marks.extend(mark(name, swept, above_watermark, query, &now));
            }
            Ok(())
        })?;
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
        db: Db<'_>,
        op: &str,
        table: &Table,
        sweep: &mut Sweep,
    ) -> Result<Vec<Deferred>, StoreError> {
        let mut marks = Vec::new();
        if sweep.gone_done {
            return Ok(marks);
        }
        let name = table.collection_name();
        let from = sweep.gone_cursor.unwrap_or(0);
        let (seen, last): (i64, Option<i64>) = db.row(
            op,
            "SELECT COUNT(*), MAX(id) FROM (SELECT id FROM sync_tracking
              WHERE id > ?2 AND table_name = ?1 ORDER BY id LIMIT ?3)",
            params![name, from, SWEEP_CHUNK],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let gone: Vec<i64> = db.rows(
            op,
            &format!(
                "SELECT s.id FROM sync_tracking AS s
                  WHERE s.table_name = ?1 AND s.id > ?2 AND s.id <= ?3
                    AND s.sync_status = 'success'
                    AND NOT EXISTS (SELECT 1 FROM {} AS t WHERE {} = s.local_id)",
                table.name, table.key_expr
            ),
            params![name, from, last.unwrap_or(from)],
            |r| r.get(0),
        )?;
        for id in gone {
            marks.push((
                "DELETE FROM sync_tracking WHERE id = ?1 AND sync_status = 'success'",
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
}

/// What a swept row calls for in `sync_tracking`, if anything: an untracked row
/// (below the watermark) becomes pending, as does a status ferry does not know; a
/// delivery without a version (the seed service's) is given the record's version; a
/// delivered row whose version or content moved becomes pending, unless the
/// changed-records query sees that move (it sends it, throttled to one update a
/// second).
fn mark(
    name: &str,
    swept: Swept,
    above_watermark: bool,
    query: &DueQuery,
    now: &str,
) -> Option<Deferred> {
    let key = key_to_sql(&swept.key?);
    let name = SqlValue::Text(name.to_string());
    match swept.tracking {
        None if above_watermark => None,
        None => Some((
            "INSERT INTO sync_tracking (table_name, local_id, sync_date, sync_status, next_attempt_at)
             VALUES (?1, ?2, ?3, 'pending', 0) ON CONFLICT (table_name, local_id) DO NOTHING",
            vec![name, key, SqlValue::Text(now.to_string())],
        )),
        Some(_) if !swept.status_known => Some((
            "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
              WHERE table_name = ?1 AND local_id = ?2",
            vec![name, key],
        )),
        Some(t) if t.status == Status::Success => match swept.version {
            Some((version, fingerprint)) if t.version.is_none() => Some((
                "UPDATE sync_tracking SET version = ?3, fingerprint = ?4
                  WHERE table_name = ?1 AND local_id = ?2 AND version IS NULL",
                vec![
                    name,
                    key,
                    SqlValue::Text(version),
                    SqlValue::Text(format!("{fingerprint:016x}")),
                ],
            )),
            Some((version, fingerprint))
                if query.include_changed
                    && t.differs_from(&version, fingerprint)
                    && !(swept.seen_by_index && t.version.as_deref() != Some(&version)) =>
            {
                Some((
                    "UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
                      WHERE table_name = ?1 AND local_id = ?2 AND sync_status = 'success'",
                    vec![name, key],
                ))
            }
            _ => None,
        },
        Some(_) => None,
    }
}

impl Table {
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
}
