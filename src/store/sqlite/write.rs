//! Writes: records (checked, all of them, before anything is written), deletions and
//! their tombstones, ferry's own write mark, and the migration baseline. Each runs
//! inside a transaction the caller holds; nothing here commits.

use rusqlite::params;
use rusqlite::types::Value as SqlValue;

use super::db::Db;
use super::table::{ident, key_to_sql, sql_from_json, Layout, Table};
use super::SqliteStore;
use crate::store::record::{Key, Record};
use crate::store::{check_bytes, key_for_write, now_ms, Baseline, StoreError};

impl SqliteStore {
    /// The statements that write `records` (replace semantics), all checked before
    /// anything is written: a bad record fails the call with nothing written. A field
    /// without a column gets one (`added_columns`) in a table ferry made; another
    /// program's table keeps its columns, and the record is refused with what to do.
    pub(super) fn record_writes(
        &self,
        collection: &str,
        records: &[Record],
    ) -> Result<RecordWrites, StoreError> {
        let table = self.table(collection)?;
        if let Some(reason) = &table.read_only {
            return Err(StoreError::InvalidRecord {
                collection: table.collection_name().to_string(),
                key: None,
                message: reason.clone(),
            });
        }
        // Build every row first: a bad record fails the call before anything is written.
        let mut rows: Vec<(Key, Vec<String>, Vec<SqlValue>)> = Vec::with_capacity(records.len());
        // Columns to add, in the order first met; SQLite's column names ignore case.
        let mut added: Vec<String> = Vec::new();
        for record in records {
            check_bytes(&table.collection, record)?;
            let key = key_for_write(&table.collection, record)?;
            let (columns, values) = match table.layout {
                Layout::Document => {
                    let json = serde_json::to_string(record)
                        .map_err(|e| invalid(table, &key, e.to_string()))?;
                    (Vec::new(), vec![key_to_sql(&key), SqlValue::Text(json)])
                }
                Layout::Columns => self.column_values(table, &key, record, &mut added)?,
            };
            rows.push((key, columns, values));
        }
        // Every statement lists the columns the batch adds (set to their default when
        // a record leaves them out).
        let writes = rows
            .into_iter()
            .map(|(key, columns, values)| RecordWrite {
                sql: table.upsert_sql(&columns, &added),
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

    /// A record's fields as the columns they go to and their values. A field without
    /// a column gets one in a table ferry made (the seed 000 `downloads`, say, grows
    /// with the records put into it; pushed to `added`), and is refused in another
    /// program's table, with what to do.
    fn column_values(
        &self,
        table: &Table,
        key: &Key,
        record: &Record,
        added: &mut Vec<String>,
    ) -> Result<(Vec<String>, Vec<SqlValue>), StoreError> {
        let mut columns = Vec::with_capacity(record.len());
        let mut values = Vec::with_capacity(record.len());
        for (field, value) in record {
            let known = table
                .columns
                .iter()
                .chain(added.iter())
                .find(|c| c.eq_ignore_ascii_case(field));
            let column = match known {
                Some(column) => column.clone(),
                // Absent and null are the same field: a null needs no column.
                None if value.is_null() => continue,
                None if table.created_by_ferry => {
                    added.push(field.clone());
                    field.clone()
                }
                None => {
                    return Err(invalid(table, key, format!(
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
                sql_from_json(value)
                    .map_err(|m| invalid(table, key, format!("field {field:?}: {m}")))?,
            );
        }
        Ok((columns, values))
    }
}

impl Table {
    /// The statement that writes one record, given the columns it has values for;
    /// `added`: the columns the batch adds to the table. Replace semantics: columns
    /// the record leaves out go back to their default.
    fn upsert_sql(&self, columns: &[String], added: &[String]) -> String {
        match self.layout {
            Layout::Document => format!(
                "INSERT INTO {} (key, record) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET record = excluded.record",
                self.name
            ),
            Layout::Columns => {
                let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
                let marks = (1..=columns.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let updates: Vec<String> = self
                    .columns
                    .iter()
                    .chain(added)
                    .filter(|c| *c != &self.key_column)
                    .map(|c| format!("{0} = excluded.{0}", ident(c)))
                    .collect();
                let action = if updates.is_empty() {
                    "NOTHING".to_string()
                } else {
                    format!("UPDATE SET {}", updates.join(", "))
                };
                format!(
                    "INSERT INTO {} ({list}) VALUES ({marks}) ON CONFLICT ({}) DO {action}",
                    self.name,
                    ident(&self.key_column)
                )
            }
        }
    }
}

/// A record refused, with why.
fn invalid(table: &Table, key: &Key, message: String) -> StoreError {
    StoreError::InvalidRecord {
        collection: table.collection_name().to_string(),
        key: Some(key.to_string()),
        message,
    }
}

/// One record's write: its key, and the statement with its values.
pub(super) struct RecordWrite {
    key: Key,
    sql: String,
    values: Vec<SqlValue>,
}

/// The writes of a batch of records: the columns a table ferry made gains first (in
/// the same transaction, so a failed write leaves the table as it was), then the rows.
pub(super) struct RecordWrites {
    pub(super) add_columns: Vec<String>,
    pub(super) writes: Vec<RecordWrite>,
}

pub(super) fn exec_record_writes(
    db: Db<'_>,
    collection: &str,
    batch: &RecordWrites,
) -> Result<(), StoreError> {
    for alter in &batch.add_columns {
        db.batch(
            format_args!("adding a column for a new field of {collection} ({alter})"),
            alter,
        )?;
    }
    // A record written again is no longer deleted; most collections have no
    // tombstone at all, and then there is nothing to clear.
    let has_tombstones: bool = db.row(
        format_args!("reading tombstones of {collection}"),
        "SELECT EXISTS (SELECT 1 FROM ferry_tombstones WHERE collection = ?1)",
        [collection],
        |r| r.get(0),
    )?;
    for write in &batch.writes {
        let op = || format!("writing record {} of {collection}", write.key);
        db.execute(
            op(),
            &write.sql,
            rusqlite::params_from_iter(write.values.iter()),
        )?;
        if !has_tombstones {
            continue;
        }
        db.execute(
            op(),
            "DELETE FROM ferry_tombstones WHERE collection = ?1 AND key = ?2",
            params![collection, key_to_sql(&write.key)],
        )?;
    }
    Ok(())
}

/// Deletes a record and leaves its tombstone; `false` if there was no such record.
pub(super) fn exec_delete(
    db: Db<'_>,
    delete_sql: &str,
    collection: &str,
    key: &Key,
) -> Result<bool, StoreError> {
    let op = || format!("deleting record {key} of {collection}");
    let removed = db.execute(op(), delete_sql, [key_to_sql(key)])?;
    if removed > 0 {
        db.once().execute(
            op(),
            "INSERT OR REPLACE INTO ferry_tombstones (collection, key, deleted_at) VALUES (?1, ?2, ?3)",
            params![collection, key_to_sql(key), now_ms()],
        )?;
    }
    Ok(removed > 0)
}

/// Replaces the migration baseline kept for a collection.
pub(super) fn exec_baseline(
    db: Db<'_>,
    collection: &str,
    baseline: &Baseline,
) -> Result<(), StoreError> {
    let op = || format!("keeping the migration baseline of {collection}");
    db.once().execute(
        op(),
        "DELETE FROM ferry_baseline WHERE collection = ?1",
        [collection],
    )?;
    let fp = |v: Option<u64>| v.map(|v| v as i64);
    db.with_statement(
        op(),
        "INSERT INTO ferry_baseline (collection, key, source_fp, target_fp) VALUES (?1, ?2, ?3, ?4)",
        |insert| {
            for (key, (source, target)) in &baseline.records {
                insert.execute(params![
                    collection,
                    key_to_sql(key),
                    fp(*source),
                    fp(*target)
                ])?;
            }
            Ok(())
        },
    )?;
    db.once().execute(
        op(),
        "INSERT OR REPLACE INTO ferry_baseline_meta (collection, generation, source_id, target_id, source_mark)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            collection,
            i64::try_from(baseline.generation).unwrap_or(i64::MAX),
            baseline.source_id,
            baseline.target_id,
            baseline.source_mark
        ],
    )?;
    Ok(())
}

/// ferry's own mark of its last write to a collection (for the start-up migration).
pub(super) fn exec_mark(db: Db<'_>, collection: &str) -> Result<(), StoreError> {
    db.once()
        .execute(
            format_args!("marking {collection} as written"),
            "UPDATE ferry_collections SET last_write_ms = ?2 WHERE name = ?1",
            params![collection, now_ms()],
        )
        .map(|_| ())
}
