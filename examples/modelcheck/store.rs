//! The other program's side of the store, written here from the user contract rather
//! than with ferry's store code, so ferry's protocol is tested, not trusted: SQLite
//! through plain SQL on the tables (ferry's document tables are `(key, record JSON)`,
//! the others columns), JSON through the lock protocol (exclusive `flock` on
//! `<file>.lock`, read the object, change it, write a temp file, fsync, rename, fsync
//! the folder). And the readers the check uses at the end: the records, and ferry's
//! tracking of them.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::model::{Content, Key};
use crate::scenario::{Spec, Template};
use crate::BoxError;

/// The longest the writer waits for a lock before it calls the store stuck.
const LOCK_LIMIT: Duration = Duration::from_secs(10);

/// The columns of the tables kept as columns, key first.
pub fn columns(template: Template) -> &'static [&'static str] {
    match template {
        Template::Evenement => &["id_evenement", "date", "capteur", "type", "valeur"],
        Template::Media => &["id_media", "date", "nom", "video_data"],
        Template::Downloads => &[
            "id",
            "torrent_name",
            "status",
            "progress",
            "downloaded_size",
            "updated_at",
        ],
        Template::Events | Template::Jobs => &[],
    }
}

/// Seed 003's tables, as the other program creates them before ferry starts.
pub fn create_foreign_tables(db: &Path, specs: &[Spec]) -> Result<(), BoxError> {
    let conn = Connection::open(db)?;
    for spec in specs {
        let auto = if spec.autoincrement {
            " AUTOINCREMENT"
        } else {
            ""
        };
        let ddl = match spec.template {
            Template::Evenement => format!(
                "CREATE TABLE evenement (id_evenement INTEGER PRIMARY KEY{auto}, date TEXT, capteur TEXT, type TEXT, valeur REAL)"
            ),
            Template::Media => format!(
                "CREATE TABLE media (id_media INTEGER PRIMARY KEY{auto}, date TEXT, nom TEXT, video_data BLOB)"
            ),
            _ => continue,
        };
        conn.execute_batch(&ddl)?;
    }
    Ok(())
}

fn to_sql(value: Option<&Value>) -> Sql {
    match value {
        None | Some(Value::Null) => Sql::Null,
        Some(Value::Bool(b)) => Sql::Integer(i64::from(*b)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(0.0)),
        },
        Some(Value::String(s)) => Sql::Text(s.clone()),
        Some(Value::Object(tagged)) if tagged.len() == 1 => {
            match tagged.get("$base64").and_then(Value::as_str) {
                Some(text) => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_or(Sql::Null, Sql::Blob),
                None => Sql::Text(Value::Object(tagged.clone()).to_string()),
            }
        }
        Some(other) => Sql::Text(other.to_string()),
    }
}

fn key_sql(key: &Key) -> Sql {
    match key {
        Key::Int(i) => Sql::Integer(*i),
        Key::Text(s) => Sql::Text(s.clone()),
    }
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            json!({"$base64": base64::engine::general_purpose::STANDARD.encode(b)})
        }
    }
}

/// The other program.
pub struct Writer {
    pub db: PathBuf,
    pub json_dir: PathBuf,
    conn: Option<Connection>,
}

impl Writer {
    pub fn new(db: PathBuf, json_dir: PathBuf) -> Writer {
        Writer {
            db,
            json_dir,
            conn: None,
        }
    }

    fn conn(&mut self) -> Result<&Connection, BoxError> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.db)?;
            conn.busy_timeout(LOCK_LIMIT)?;
            self.conn = Some(conn);
        }
        self.conn.as_ref().ok_or_else(|| "no connection".into())
    }

    /// Writes a record (a new row when `insert`, else the existing one) to SQLite.
    pub fn sqlite_put(
        &mut self,
        spec: &Spec,
        key: &Key,
        content: &Content,
        insert: bool,
    ) -> Result<usize, BoxError> {
        let table = spec.name();
        let conn = self.conn()?;
        if spec.columns() {
            let cols = columns(spec.template);
            let mut values: Vec<Sql> = vec![key_sql(key)];
            values.extend(cols[1..].iter().map(|c| to_sql(content.get(*c))));
            if insert {
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                Ok(conn.execute(
                    &format!(
                        "INSERT INTO {table} ({}) VALUES ({})",
                        cols.join(", "),
                        marks.join(", ")
                    ),
                    rusqlite::params_from_iter(values),
                )?)
            } else {
                let sets: Vec<String> = cols[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 2))
                    .collect();
                Ok(conn.execute(
                    &format!(
                        "UPDATE {table} SET {} WHERE {} = ?1",
                        sets.join(", "),
                        cols[0]
                    ),
                    rusqlite::params_from_iter(values),
                )?)
            }
        } else {
            let record = Value::Object(content.clone()).to_string();
            let sql = if insert {
                format!("INSERT INTO {table} (key, record) VALUES (?1, ?2)")
            } else {
                format!("UPDATE {table} SET record = ?2 WHERE key = ?1")
            };
            Ok(conn.execute(&sql, rusqlite::params![key_sql(key), record])?)
        }
    }

    /// A new row of a foreign table with the key SQLite assigns (`INTEGER PRIMARY
    /// KEY`), its content made once the key is known; one transaction.
    pub fn sqlite_insert_assigned(
        &mut self,
        spec: &Spec,
        make: &mut dyn FnMut(i64) -> Content,
    ) -> Result<(Key, Content), BoxError> {
        let table = spec.name();
        let cols = columns(spec.template);
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            &format!("INSERT INTO {table} ({}) VALUES (NULL)", cols[0]),
            [],
        )?;
        let id = tx.last_insert_rowid();
        let content = make(id);
        let sets: Vec<String> = cols[1..]
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect();
        let mut values: Vec<Sql> = vec![Sql::Integer(id)];
        values.extend(cols[1..].iter().map(|c| to_sql(content.get(*c))));
        tx.execute(
            &format!(
                "UPDATE {table} SET {} WHERE {} = ?1",
                sets.join(", "),
                cols[0]
            ),
            rusqlite::params_from_iter(values),
        )?;
        tx.commit()?;
        Ok((Key::Int(id), content))
    }

    /// Deletes a row; says how many went.
    pub fn sqlite_delete(&mut self, spec: &Spec, key: &Key) -> Result<usize, BoxError> {
        let table = spec.name();
        let column = if spec.columns() {
            columns(spec.template)[0]
        } else {
            "key"
        };
        Ok(self.conn()?.execute(
            &format!("DELETE FROM {table} WHERE {column} = ?1"),
            [key_sql(key)],
        )?)
    }

    /// Writes a record to its JSON file; says whether the key was there before.
    pub fn json_put(&self, spec: &Spec, key: &Key, content: &Content) -> Result<bool, BoxError> {
        let content = content.clone();
        let mut existed = false;
        json_modify(&self.json_dir, spec.name(), |object| {
            existed = object.insert(key.text(), Value::Object(content)).is_some();
        })?;
        Ok(existed)
    }

    /// Removes a record from its JSON file; says whether it was there.
    pub fn json_delete(&self, spec: &Spec, key: &Key) -> Result<bool, BoxError> {
        let mut existed = false;
        json_modify(&self.json_dir, spec.name(), |object| {
            existed = object.remove(&key.text()).is_some();
        })?;
        Ok(existed)
    }

    /// Closes the SQLite connection (before the end-of-run reads, and so a backend
    /// switch starts from a fresh one).
    pub fn close(&mut self) {
        self.conn = None;
    }
}

/// Takes `flock` on `<dir>/<name>.json.lock`, bounded.
fn lock(dir: &Path, name: &str, exclusive: bool) -> Result<File, BoxError> {
    let path = dir.join(format!("{name}.json.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let started = Instant::now();
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_LIMIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(format!("{} stayed locked for {LOCK_LIMIT:?}", path.display()).into())
            }
            Err(fs::TryLockError::Error(err)) => return Err(err.into()),
        }
    }
}

fn read_object(path: &Path) -> Result<Map<String, Value>, BoxError> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        Ok(bytes) => match serde_json::from_slice(&bytes)? {
            Value::Object(map) => Ok(map),
            _ => Err(format!("{} is not a JSON object", path.display()).into()),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(err) => Err(err.into()),
    }
}

/// Read, change, replace atomically, under the exclusive lock.
fn json_modify(
    dir: &Path,
    name: &str,
    change: impl FnOnce(&mut Map<String, Value>),
) -> Result<(), BoxError> {
    fs::create_dir_all(dir)?;
    let _lock = lock(dir, name, true)?;
    let path = dir.join(format!("{name}.json"));
    let mut object = read_object(&path)?;
    change(&mut object);
    let tmp = dir.join(format!(
        ".{name}.json.modelcheck-{}.tmp",
        std::process::id()
    ));
    {
        let mut file = File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut file, &Value::Object(object))?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A collection's records as the store holds them, by key text.
pub fn read_records(
    backend_sqlite: bool,
    db: &Path,
    json_dir: &Path,
    spec: &Spec,
) -> Result<BTreeMap<String, Content>, BoxError> {
    let mut out = BTreeMap::new();
    if backend_sqlite {
        if !db.exists() {
            return Ok(out);
        }
        let conn = Connection::open(db)?;
        conn.busy_timeout(LOCK_LIMIT)?;
        let table = spec.name();
        let exists: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(out);
        }
        // What the table is, read from it: ferry's document table has exactly the
        // columns `key` and `record`.
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}"))?;
        let names: Vec<String> = statement.column_names().map(|s| s.to_string()).collect();
        let document = names == ["key", "record"];
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            if document {
                let key = match from_sql(row.get_ref(0)?) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let text: String = row.get(1)?;
                let record = match serde_json::from_str(&text)? {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                out.insert(key, record);
            } else {
                let mut record = Map::new();
                for (i, name) in names.iter().enumerate() {
                    let value = from_sql(row.get_ref(i)?);
                    if !value.is_null() {
                        record.insert(name.clone(), value);
                    }
                }
                let key = match record.get(spec.key_field()) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => continue,
                };
                out.insert(key, record);
            }
        }
    } else {
        let path = json_dir.join(format!("{}.json", spec.name()));
        if !path.exists() {
            return Ok(out);
        }
        let _lock = lock(json_dir, spec.name(), false)?;
        for (key, value) in read_object(&path)? {
            if let Value::Object(map) = value {
                out.insert(key, map);
            }
        }
    }
    Ok(out)
}

/// One record's tracking row, as much as the check needs.
#[derive(Clone, Debug, Default)]
pub struct Track {
    pub status: String,
    pub error: Option<String>,
    pub remote_id: Option<String>,
    pub version: Option<String>,
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// ferry's tracking, by (collection, key text).
pub fn read_tracking(
    backend_sqlite: bool,
    db: &Path,
    json_dir: &Path,
) -> Result<HashMap<(String, String), Track>, BoxError> {
    let mut out = HashMap::new();
    if backend_sqlite {
        if !db.exists() {
            return Ok(out);
        }
        let conn = Connection::open(db)?;
        conn.busy_timeout(LOCK_LIMIT)?;
        let mut statement = conn.prepare(
            "SELECT table_name, local_id, remote_id, sync_status, error_message, version FROM sync_tracking",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let values: Vec<Value> = (0..6)
                .map(|i| row.get_ref(i).map(from_sql))
                .collect::<Result<_, _>>()?;
            out.insert(
                (
                    text_of(&values[0]).unwrap_or_default(),
                    text_of(&values[1]).unwrap_or_default(),
                ),
                Track {
                    remote_id: text_of(&values[2]),
                    status: text_of(&values[3]).unwrap_or_default(),
                    error: text_of(&values[4]),
                    version: text_of(&values[5]),
                },
            );
        }
    } else {
        let path = json_dir.join("sync_tracking.json");
        if !path.exists() {
            return Ok(out);
        }
        let _lock = lock(json_dir, "sync_tracking", false)?;
        for (collection, rows) in read_object(&path)? {
            let Value::Object(rows) = rows else { continue };
            for (key, row) in rows {
                let field = |name: &str| row.get(name).and_then(text_of);
                out.insert(
                    (collection.clone(), key.clone()),
                    Track {
                        status: field("status").unwrap_or_default(),
                        error: field("error_message"),
                        remote_id: field("remote_id"),
                        version: field("version"),
                    },
                );
            }
        }
    }
    Ok(out)
}
