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
            files.push(dir.join(json::BASELINE_FILE));
            let reports: Vec<FileReport> = files
                .into_iter()
                .filter(|f| f.exists())
                .map(|f| check_json(&f, repair))
                .collect::<Result<_, _>>()?;
            if reports.iter().any(|r| r.recovered.is_some()) {
                forget_json_identity(dir)?;
            }
            Ok(reports)
        }
    }
}

/// A repaired store may have lost records: to the start-up migration it is a new store
/// (its baselines no longer say what it holds), so a record it lost is kept from the
/// other side rather than deleted there as well. The old baseline file is kept aside.
fn forget_json_identity(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(json::BASELINE_FILE);
    let _guard = json::lock(&path, true)?;
    if !path.exists() {
        return Ok(());
    }
    let aside = path.with_file_name(format!("{}.before-repair-{}", json::BASELINE_FILE, stamp()));
    std::fs::rename(&path, &aside).map_err(StoreError::io(
        &path,
        "setting the migration baseline aside",
    ))
}

fn check_json(path: &Path, repair: bool) -> Result<FileReport, StoreError> {
    // Writers hold this lock: a repair neither reads half a write nor loses one.
    let _guard = json::lock(path, repair)?;
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
        // sync_tracking.json and ferry_tombstones.json nest collection → rows: rows
        // are kept inside a cut collection. A record is kept whole or not at all.
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let nested = file_name == json::TRACKING_FILE || file_name == json::TOMBSTONES_FILE;
        let (kept, stopped) = salvage_object(&bytes, nested);
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

/// The entries of a JSON object that parse, in order, up to the first that does not;
/// with `nested`, inside an entry cut short that is itself an object (sync_tracking.json
/// holds one per collection), the entries that parse are kept too. Returns them and
/// where reading stopped.
fn salvage_object(bytes: &[u8], nested: bool) -> (Map<String, Value>, String) {
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
        pos = skip_ws(pos + 1);
        let mut values = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Value>();
        let Some(Ok(value)) = values.next() else {
            if nested && bytes.get(pos) == Some(&b'{') {
                let (inner, stopped) = salvage_object(&bytes[pos..], false);
                let count = inner.len();
                kept.insert(key.clone(), Value::Object(inner));
                return (
                    kept,
                    format!("entry {key:?} is cut off: {count} of its entries kept; {stopped}"),
                );
            }
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
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
             ORDER BY type = 'table' DESC",
        )
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(StoreError::sqlite(path, "reading the schema (the damage reaches it: nothing can be repaired)"))?;
    // The damaged file, attached read-only, for tables that can only be copied whole.
    let uri = format!("file:{}?mode=ro", path.display());
    let _ = fresh.execute("ATTACH DATABASE ?1 AS src", [&uri]);
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
    // AUTOINCREMENT counters, so the ids of lost rows are not given out again.
    let _ = fresh.execute_batch(
        "INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM src.sqlite_sequence \
          WHERE name IN (SELECT name FROM main.sqlite_master WHERE type = 'table')",
    );
    // Rows may now sit below ferry's watermarks: every table is read afresh.
    let _ = fresh.execute_batch(
        "UPDATE ferry_collections SET new_watermark = 0, new_watermark_key = NULL, changed_watermark = NULL",
    );
    // Rows may be lost: to the start-up migration this is a new store (its baselines no
    // longer say what it holds), so a record it lost is kept from the other side rather
    // than deleted there as well.
    let _ = fresh.execute_batch(
        "UPDATE ferry_meta SET value = 'sqlite-' || lower(hex(randomblob(16))) WHERE name = 'store_id'",
    );
    fresh
        .execute_batch("COMMIT")
        .map_err(StoreError::sqlite(&fresh_path, "finishing the copy"))?;
    let _ = fresh.execute_batch("DETACH DATABASE src");
    drop(fresh);
    drop(source);
    // Never a moment without a database at `path`: the damaged file gets a second
    // name first, its WAL is moved aside (it must not be applied to the new file),
    // then the repaired file replaces it atomically.
    let copy = path.with_file_name(format!(
        "{}.damaged-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        stamp()
    ));
    std::fs::hard_link(path, &copy)
        .or_else(|_| std::fs::copy(path, &copy).map(|_| ()))
        .map_err(StoreError::io(&copy, "keeping the damaged database"))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut kept = copy.as_os_str().to_owned();
        kept.push(suffix);
        let _ = std::fs::rename(&side, &kept);
    }
    std::fs::File::open(&fresh_path)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&fresh_path, path))
        .map_err(StoreError::io(
            path,
            "putting the repaired database in place",
        ))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok((
        copy,
        format!(
            "{total_kept} row(s) recovered, {total_lost} row(s) unreadable and lost\n    {}",
            lines.join("\n    ")
        ),
    ))
}

/// Copies the rows of `table` that can be read, by rowid. Around damage it reads one
/// row at a time, so no readable row is left behind; a long unreadable stretch is
/// crossed in growing steps. Returns rows kept, rows known lost, and a note.
fn copy_table(source: &Connection, fresh: &Connection, table: &str) -> (u64, u64, String) {
    use rusqlite::types::Value as SqlValue;
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let columns: Vec<String> = match source
        .prepare(&format!("PRAGMA table_info({quoted})"))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(1))?.collect())
    {
        Ok(columns) => columns,
        Err(err) => return (0, 0, format!(", unreadable ({err})")),
    };
    if source
        .prepare(&format!("SELECT rowid FROM {quoted} LIMIT 0"))
        .is_err()
    {
        // WITHOUT ROWID: copied whole, or not at all.
        let copied = fresh.execute(
            &format!("INSERT INTO main.{quoted} SELECT * FROM src.{quoted}"),
            [],
        );
        return match copied {
            Ok(n) => (n as u64, 0, String::new()),
            Err(err) => (0, 0, format!(", a WITHOUT ROWID table that could not be read whole ({err}): its rows are lost")),
        };
    }
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (0..=columns.len())
        .map(|_| "?")
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!("INSERT OR IGNORE INTO main.{quoted} (rowid, {list}) VALUES ({marks})");
    let batch =
        format!("SELECT rowid, {list} FROM {quoted} WHERE rowid > ?1 ORDER BY rowid LIMIT 256");
    let single = format!("SELECT rowid, {list} FROM {quoted} WHERE rowid = ?1");
    let width = columns.len() + 1;
    let max_rowid: i64 = source
        .query_row(&format!("SELECT MAX(rowid) FROM {quoted}"), [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .unwrap_or(i64::MAX);
    let read = |sql: &str, at: i64| -> rusqlite::Result<Vec<Vec<SqlValue>>> {
        source
            .prepare(sql)?
            .query_map([at], |r| (0..width).map(|i| r.get(i)).collect())?
            .collect()
    };
    let (mut kept, mut lost) = (0u64, 0u64);
    let mut damaged: Vec<(i64, i64)> = Vec::new();
    let keep = |rows: &[Vec<SqlValue>], kept: &mut u64| {
        for row in rows {
            if fresh
                .execute(&insert, rusqlite::params_from_iter(row.iter()))
                .is_ok()
            {
                *kept += 1;
            }
        }
    };
    let mut after: i64 = i64::MIN;
    let mut dark_windows = 0u32;
    loop {
        match read(&batch, after) {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                keep(&rows, &mut kept);
                dark_windows = 0;
                match rows.last().and_then(|r| r.first()) {
                    Some(SqlValue::Integer(id)) => after = *id,
                    _ => break,
                }
            }
            Err(_) => {
                // The next 256 rowids one by one: every readable row is kept.
                let start = after.max(0);
                let end = start.saturating_add(256).min(max_rowid);
                let mut readable = 0usize;
                for id in start.saturating_add(1)..=end {
                    match read(&single, id) {
                        Ok(rows) => {
                            readable += rows.len();
                            keep(&rows, &mut kept);
                        }
                        Err(_) => {
                            lost += 1;
                            match damaged.last_mut() {
                                Some((_, last)) if *last + 1 == id => *last = id,
                                _ => damaged.push((id, id)),
                            }
                        }
                    }
                }
                dark_windows = if readable == 0 { dark_windows + 1 } else { 0 };
                after = end;
                if dark_windows >= 64 {
                    // 16,384 rowids and nothing readable: cross the rest in steps.
                    let mut step = 1i64 << 14;
                    let from = after;
                    loop {
                        after = after.saturating_add(step);
                        if after >= max_rowid || read(&batch, after).is_ok() {
                            break;
                        }
                        step = step.saturating_mul(2);
                    }
                    damaged.push((from + 1, after.min(max_rowid)));
                    dark_windows = 0;
                }
                if after >= max_rowid {
                    break;
                }
            }
        }
    }
    let note = if damaged.is_empty() {
        String::new()
    } else {
        let ranges: Vec<String> = damaged
            .iter()
            .take(10)
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}..{b}")
                }
            })
            .collect();
        format!(
            ", {lost} unreadable (rowids {}{})",
            ranges.join(", "),
            if damaged.len() > 10 { ", …" } else { "" }
        )
    };
    (kept, lost, note)
}
