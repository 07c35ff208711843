//! `ferry check [--repair]`: integrity checks that read the store's files directly (a
//! damaged store may not open), and a repair that copies every readable row or record
//! into a fresh store, keeps the damaged one beside it under a clear name, and says
//! what was recovered and what was lost.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value};

use super::{atomic, json, now_ms, rfc3339, StoreError};
use crate::config::{Backend, Config};

/// What a check or a repair found in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    /// `None`: sound.
    pub problem: Option<String>,
    /// After a repair: what was kept, and where the damaged file went.
    pub recovered: Option<String>,
    pub damaged_copy: Option<PathBuf>,
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "{}: ok", self.path.display())?,
            Some(problem) => write!(f, "{}: DAMAGED: {problem}", self.path.display())?,
        }
        if let Some(recovered) = &self.recovered {
            write!(f, "\n  repaired: {recovered}")?;
        }
        if let Some(copy) = &self.damaged_copy {
            write!(f, "\n  the damaged file is kept as {}", copy.display())?;
        }
        Ok(())
    }
}

fn stamp() -> String {
    rfc3339(now_ms()).replace(':', "-")
}

/// Checks (and with `repair`, repairs) the configured backend's files.
pub fn check(config: &Config, repair: bool) -> Result<Vec<FileReport>, StoreError> {
    match config.storage.backend {
        Backend::Sqlite => Ok(vec![check_sqlite(&config.storage.sqlite_path, repair)?]),
        Backend::Json => {
            let dir = &config.storage.json_dir;
            let mut files: Vec<PathBuf> = config
                .collections
                .iter()
                .map(|c| dir.join(c.json_file_name()))
                .collect();
            files.push(dir.join(json::TRACKING_FILE));
            files.push(dir.join(json::TOMBSTONES_FILE));
            files
                .into_iter()
                .filter(|f| f.exists())
                .map(|f| check_json(&f, repair))
                .collect()
        }
    }
}

fn check_json(path: &Path, repair: bool) -> Result<FileReport, StoreError> {
    let bytes = std::fs::read(path).map_err(StoreError::io(path, "reading"))?;
    let problem = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(_)) => None,
        Ok(other) => Some(format!(
            "expected a JSON object, found {}",
            super::record::type_name(&other)
        )),
        Err(err) => Some(format!(
            "not valid JSON at line {} column {}: {err}",
            err.line(),
            err.column()
        )),
    };
    let mut report = FileReport {
        path: path.to_path_buf(),
        problem,
        recovered: None,
        damaged_copy: None,
    };
    if repair && report.problem.is_some() {
        let (kept, stopped) = salvage_object(&bytes);
        let copy = path.with_file_name(format!(
            "{}.damaged-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            stamp()
        ));
        std::fs::copy(path, &copy).map_err(StoreError::io(&copy, "keeping the damaged file"))?;
        let count = kept.len();
        atomic::replace(path, |out| {
            serde_json::to_writer_pretty(&mut *out, &kept).map_err(std::io::Error::from)?;
            out.write_all(b"\n")
        })
        .map_err(StoreError::io(path, "writing the repaired file"))?;
        report.recovered = Some(format!(
            "{count} entr{} kept; {stopped}",
            if count == 1 { "y" } else { "ies" }
        ));
        report.damaged_copy = Some(copy);
    }
    Ok(report)
}

/// The entries of a JSON object that parse, in order, up to the first that does not.
/// Returns them and where reading stopped.
fn salvage_object(bytes: &[u8]) -> (Map<String, Value>, String) {
    let mut kept = Map::new();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut pos = skip_ws(0);
    if bytes.get(pos) != Some(&b'{') {
        return (
            kept,
            "the file does not start with '{': nothing could be read".into(),
        );
    }
    pos += 1;
    loop {
        pos = skip_ws(pos);
        match bytes.get(pos) {
            Some(b'}') => return (kept, "the rest of the file was unreadable".into()),
            Some(b',') => {
                pos += 1;
                continue;
            }
            None => {
                return (
                    kept,
                    format!("the file ends early, at byte {pos}: everything after is lost"),
                )
            }
            _ => {}
        }
        let mut keys = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<String>();
        let Some(Ok(key)) = keys.next() else {
            return (
                kept,
                format!("unreadable from byte {pos}: everything after is lost"),
            );
        };
        pos += keys.byte_offset();
        pos = skip_ws(pos);
        if bytes.get(pos) != Some(&b':') {
            return (
                kept,
                format!("unreadable from byte {pos}: everything after is lost"),
            );
        }
        pos += 1;
        let mut values = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Value>();
        let Some(Ok(value)) = values.next() else {
            return (kept, format!("entry {key:?} (byte {pos}) is cut off or damaged: it and everything after are lost"));
        };
        pos += values.byte_offset();
        kept.insert(key, value);
    }
}

/// Opens a SQLite file for checking without changing it.
fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StoreError::sqlite(path, "opening for a check"))
}

fn integrity(conn: &Connection) -> String {
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA integrity_check(20)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => "ok".into(),
        Ok(rows) => rows.join("; "),
        Err(err) => err.to_string(),
    }
}

fn check_sqlite(path: &Path, repair: bool) -> Result<FileReport, StoreError> {
    if !path.exists() {
        return Ok(FileReport {
            path: path.to_path_buf(),
            problem: None,
            recovered: Some("no database yet".into()),
            damaged_copy: None,
        });
    }
    let verdict = integrity(&open_read_only(path)?);
    let mut report = FileReport {
        path: path.to_path_buf(),
        problem: (verdict != "ok").then_some(verdict),
        recovered: None,
        damaged_copy: None,
    };
    if repair && report.problem.is_some() {
        let (copy, summary) = repair_sqlite(path)?;
        report.recovered = Some(summary);
        report.damaged_copy = Some(copy);
    }
    Ok(report)
}

/// Copies every readable row of every table into a fresh database, then puts it in
/// the damaged one's place; the damaged one is kept beside it.
fn repair_sqlite(path: &Path) -> Result<(PathBuf, String), StoreError> {
    let source = open_read_only(path)?;
    let fresh_path = path.with_file_name(format!(
        "{}.repairing",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&fresh_path);
    let fresh = Connection::open(&fresh_path).map_err(StoreError::sqlite(
        &fresh_path,
        "creating the repaired database",
    ))?;
    let schema: Vec<(String, String, String)> = source
        .prepare("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table' DESC")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(StoreError::sqlite(path, "reading the schema (the damage reaches it: nothing can be repaired)"))?;
    let mut lines = Vec::new();
    let (mut total_kept, mut total_lost) = (0u64, 0u64);
    fresh
        .execute_batch("BEGIN")
        .map_err(StoreError::sqlite(&fresh_path, "starting the copy"))?;
    for (kind, name, sql) in &schema {
        if let Err(err) = fresh.execute_batch(sql) {
            lines.push(format!("{kind} {name}: cannot be recreated ({err})"));
            continue;
        }
        if kind != "table" {
            continue;
        }
        let (kept, lost, note) = copy_table(&source, &fresh, name);
        total_kept += kept;
        total_lost += lost;
        lines.push(format!("table {name}: {kept} row(s) recovered{note}"));
    }
    fresh
        .execute_batch("COMMIT")
        .map_err(StoreError::sqlite(&fresh_path, "finishing the copy"))?;
    drop(fresh);
    drop(source);
    let copy = path.with_file_name(format!(
        "{}.damaged-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        stamp()
    ));
    std::fs::rename(path, &copy).map_err(StoreError::io(&copy, "keeping the damaged database"))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut kept = copy.as_os_str().to_owned();
        kept.push(suffix);
        let _ = std::fs::rename(&side, &kept);
    }
    std::fs::rename(&fresh_path, path).map_err(StoreError::io(
        path,
        "putting the repaired database in place",
    ))?;
    Ok((
        copy,
        format!(
            "{total_kept} row(s) recovered, {total_lost} row(s) unreadable and lost\n    {}",
            lines.join("\n    ")
        ),
    ))
}

/// Copies the rows of `table` that can be read, by rowid, stepping over damaged
/// ranges. Returns rows kept, rows known lost, and a note.
fn copy_table(source: &Connection, fresh: &Connection, table: &str) -> (u64, u64, String) {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let columns: Vec<String> = match source
        .prepare(&format!("PRAGMA table_info({quoted})"))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(1))?.collect())
    {
        Ok(columns) => columns,
        Err(err) => return (0, 0, format!(", unreadable ({err})")),
    };
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (0..=columns.len())
        .map(|_| "?")
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!("INSERT OR IGNORE INTO {quoted} (rowid, {list}) VALUES ({marks})");
    let select =
        format!("SELECT rowid, {list} FROM {quoted} WHERE rowid > ?1 ORDER BY rowid LIMIT 256");
    let max_rowid: i64 = source
        .query_row(&format!("SELECT MAX(rowid) FROM {quoted}"), [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .unwrap_or(0);
    let (mut kept, mut skipped_ranges) = (0u64, Vec::new());
    let mut after = i64::MIN;
    loop {
        let page: rusqlite::Result<Vec<Vec<rusqlite::types::Value>>> =
            source.prepare(&select).and_then(|mut s| {
                s.query_map([after], |r| (0..=columns.len()).map(|i| r.get(i)).collect())?
                    .collect()
            });
        match page {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                for row in &rows {
                    if fresh
                        .execute(&insert, rusqlite::params_from_iter(row.iter()))
                        .is_ok()
                    {
                        kept += 1;
                    }
                }
                after = match rows.last().and_then(|r| r.first()) {
                    Some(rusqlite::types::Value::Integer(id)) => *id,
                    _ => break,
                };
            }
            Err(_) => {
                // Damaged here: step over it, a little further each time.
                let mut step = 1i64;
                let start = after;
                loop {
                    let probe = after.saturating_add(step);
                    if after != i64::MIN && probe > max_rowid.max(after) {
                        after = i64::MAX;
                        break;
                    }
                    let ok = source
                        .prepare(&select)
                        .and_then(|mut s| {
                            s.query_map([probe], |_| Ok(()))?
                                .collect::<rusqlite::Result<Vec<()>>>()
                        })
                        .is_ok();
                    if ok {
                        skipped_ranges.push((start, probe));
                        after = probe;
                        break;
                    }
                    if after == i64::MIN {
                        after = 0;
                        continue;
                    }
                    step = step.saturating_mul(2);
                }
                if after == i64::MAX {
                    skipped_ranges.push((start, max_rowid));
                    break;
                }
            }
        }
    }
    let lost: u64 = skipped_ranges
        .iter()
        .map(|(a, b)| (b - a.max(&0)).max(0) as u64)
        .sum();
    let note = if skipped_ranges.is_empty() {
        String::new()
    } else {
        format!(
            ", about {lost} lost in unreadable rowid range(s) {}",
            skipped_ranges
                .iter()
                .map(|(a, b)| format!("{}..{b}", a.max(&0)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    (kept, lost, note)
}
