//! How ferry reads and writes one collection's table: its layout ([`Table`]), the SQL
//! built from it, and the conversions of values between SQLite and JSON.
//!
//! A value keeps what it is: a BLOB becomes bytes, text that is not UTF-8 becomes
//! bytes rather than being mangled, an integer beyond 64 bits keeps its digits. This
//! file builds statements and converts values; it never runs a statement. SQL that
//! one concern alone uses is built beside it (`due.rs`, `sweep.rs`, `write.rs`).

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Row;
use serde_json::{Map, Value};

use crate::config::Collection;
use crate::store::record::{self, Key, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// ferry's own table: `key`, `record` (JSON text).
    Document,
    /// Columns are fields (another program's table, or a seed schema).
    Columns,
}

/// How to read and write one collection's table.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) collection: Collection,
    /// The table's name, quoted.
    pub(super) name: String,
    pub(super) layout: Layout,
    /// Column names (Columns layout), in table order.
    pub(super) columns: Vec<String>,
    /// The key column's actual name (case as declared).
    pub(super) key_column: String,
    pub(super) key_expr: String,
    /// The key as `sync_tracking.local_id` stores it, written so that the join can
    /// use the `(table_name, local_id)` index (see `tracking_probe`).
    pub(super) probe_expr: String,
    pub(super) order_expr: String,
    pub(super) updated_expr: Option<String>,
    /// What `SELECT` lists to rebuild a record.
    pub(super) select_list: String,
    pub(super) has_rowid: bool,

    /// Why ferry may not write to this table, if it may not.
    pub(super) read_only: Option<String>,
    /// ferry made this table (`ferry_collections.created_by_ferry`): a field without a
    /// column gets one. Another program's table keeps its columns.
    pub(super) created_by_ferry: bool,
}

pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal of a JSON path to a top-level field.
pub(super) fn json_path(field: &str) -> String {
    format!("'$.\"{}\"'", field.replace('\'', "''"))
}

/// The expression that turns a key column's value into what `sync_tracking.local_id`
/// holds for it (`Key::parse`: an integer when the text is exactly an integer's
/// spelling). It carries no column affinity, so SQLite compares it to the untyped
/// `local_id` as is and can look it up in the `(table_name, local_id)` index.
pub(super) fn tracking_probe(key_expr: &str, declared: &str) -> String {
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

pub(super) fn key_to_sql(key: &Key) -> SqlValue {
    match key {
        Key::Int(i) => SqlValue::Integer(*i),
        Key::Text(s) => SqlValue::Text(s.clone()),
    }
}

pub(super) fn key_from_sql(value: ValueRef<'_>) -> Option<Key> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(Key::Int(i)),
        ValueRef::Real(f) => Some(Key::Text(f.to_string())),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(Key::parse(&String::from_utf8_lossy(t))),
    }
}

/// A value as SQLite's `CAST(x AS TEXT)` spells it; `None` for NULL.
pub(super) fn sql_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
    }
}

pub(super) fn json_from_sql(value: ValueRef<'_>) -> Value {
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

pub(super) fn sql_from_json(value: &Value) -> Result<SqlValue, String> {
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
    pub(super) fn record_from_row(&self, row: &Row<'_>, offset: usize) -> rusqlite::Result<Record> {
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

    pub(super) fn blob_field_names(&self) -> Vec<&str> {
        self.collection
            .blob_fields
            .iter()
            .map(|f| f.as_str())
            .collect()
    }

    /// `CAST(updated_at AS TEXT)`, or NULL for collections without one.
    pub(super) fn version_sql(&self) -> String {
        self.updated_expr
            .as_deref()
            .map_or("NULL".to_string(), |e| format!("CAST({e} AS TEXT)"))
    }

    pub(super) fn is_blob_field(&self, column: &str) -> bool {
        self.collection
            .blob_fields
            .iter()
            .any(|f| f.as_str().eq_ignore_ascii_case(column))
    }

    pub(super) fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} WHERE {} = ?1",
            self.name,
            self.key_expr.replacen("t.", "", 1)
        )
    }

    pub(super) fn select_width(&self) -> usize {
        match self.layout {
            Layout::Document => 2,
            Layout::Columns => self.columns.len(),
        }
    }

    pub(super) fn key_from_row(
        &self,
        row: &Row<'_>,
        offset: usize,
    ) -> rusqlite::Result<Option<Key>> {
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

    pub(super) fn collection_name(&self) -> &str {
        self.collection.name.as_str()
    }
}

/// SQLite's ordering of values (null < numbers < text < blob).
pub(super) fn compare_sql(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
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
