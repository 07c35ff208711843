//! The database's shape: ferry's schema migrations (`migrations/*.sql`, recorded in
//! `ferry_schema`), and reading a collection's table — creating it if it is missing —
//! into a [`Table`]. Another program's table is read as it is: ferry never changes its
//! columns, and adds at most an index on `updated_at`.

use std::collections::HashMap;

use rusqlite::{params, Connection};

use super::table::{ident, json_path, tracking_probe, Layout, Table};
use super::SqliteStore;
use crate::config::Collection;
use crate::store::{now_ms, rfc3339, StoreError};

/// ferry's schema migrations, applied in order and recorded in `ferry_schema`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_sync_tracking",
        include_str!("../../../migrations/0001_sync_tracking.sql"),
    ),
    (
        2,
        "0002_claims",
        include_str!("../../../migrations/0002_claims.sql"),
    ),
    (
        3,
        "0003_migration_baseline",
        include_str!("../../../migrations/0003_migration_baseline.sql"),
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

/// What `PRAGMA table_info` says of a table.
#[derive(Default)]
struct Columns {
    /// In table order.
    names: Vec<String>,
    /// The declared type of each column ("" for none).
    types: HashMap<String, String>,
    /// The columns of the primary key.
    primary_key: Vec<String>,
}

/// The expressions that read a collection's fields from its table (`t`).
struct Fields {
    key_column: String,
    key_expr: String,
    probe_expr: String,
    order_expr: String,
    updated_expr: Option<String>,
    select_list: String,
}

impl Fields {
    /// The fields the collection names, found in the table's columns (a document
    /// table has every field); the error says which is missing.
    fn of(collection: &Collection, layout: Layout, columns: &Columns) -> Result<Fields, String> {
        let name = collection.name.as_str();
        let find_column = |field: &str, what: &str| -> Result<String, String> {
            columns
                .names
                .iter()
                .find(|c| c.eq_ignore_ascii_case(field))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "has no column {field:?} for collections[{name}].{what}; its columns are: {}",
                        columns.names.join(", ")
                    )
                })
        };
        let field_expr = |field: &str, what: &str| -> Result<String, String> {
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
                let declared = columns.types.get(&key_column).cloned().unwrap_or_default();
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
                .names
                .iter()
                .map(|c| format!("t.{}", ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Ok(Fields {
            key_column,
            key_expr,
            probe_expr,
            order_expr,
            updated_expr,
            select_list,
        })
    }
}

impl SqliteStore {
    /// Applies the migrations this database has not had yet, each in its own transaction.
    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
        let db = self.db().once();
        db.batch(
            "creating ferry_schema",
            "CREATE TABLE IF NOT EXISTS ferry_schema (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TEXT NOT NULL)",
        )?;
        let current: i64 = db.row(
            "reading the schema version",
            "SELECT COALESCE(MAX(version), 0) FROM ferry_schema",
            [],
            |r| r.get(0),
        )?;
        for &(version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
            let op = format!("applying migrations/{name}.sql");
            self.transaction(&op, |db| {
                let db = db.once();
                if version == 2 {
                    retype_adopted_tracking(db.conn()).map_err(|e| db.error(&op, e))?;
                }
                db.batch(&op, sql)?;
                db.execute(
                    &op,
                    "INSERT INTO ferry_schema (version, name, applied_at) VALUES (?1, ?2, ?3)",
                    params![version, name, rfc3339(now_ms())],
                )?;
                Ok(())
            })?;
            tracing::info!(path = %self.path.display(), migration = name, "applied schema migration");
        }
        Ok(())
    }

    /// Finds or creates the collection's table and works out how to read it.
    pub(super) fn prepare_table(&mut self, collection: &Collection) -> Result<Table, StoreError> {
        let name = collection.name.as_str();
        let table_name = self.find_or_create_table(collection)?;
        let (layout, created_by_ferry) = self.registered_layout(name)?;
        let columns = self.columns_of(&table_name)?;
        let fields =
            Fields::of(collection, layout, &columns).map_err(|message| StoreError::Schema {
                path: self.path.clone(),
                table: name.to_string(),
                collection: name.to_string(),
                message,
            })?;
        let quoted = ident(&table_name);
        // An error preparing it is the answer (a WITHOUT ROWID table).
        let has_rowid = self
            .conn
            .prepare(&format!("SELECT rowid FROM {quoted} LIMIT 0"))
            .is_ok();
        let key_column = &fields.key_column;
        let key_unique = layout == Layout::Document
            || (columns.primary_key.len() == 1
                && columns.primary_key[0].eq_ignore_ascii_case(key_column))
            || self.has_unique_index(&table_name, key_column)?;
        let read_only = (!key_unique).then(|| {
            format!(
                "table {table_name} has no PRIMARY KEY or UNIQUE index on its key column {key_column:?}, \
                 so ferry can read and deliver its rows but will not write to it"
            )
        });
        if let Some(expr) = &fields.updated_expr {
            self.ensure_index(&table_name, collection, expr, layout)?;
        }
        Ok(Table {
            collection: collection.clone(),
            name: quoted,
            layout,
            columns: columns.names,
            key_column: fields.key_column,
            key_expr: fields.key_expr,
            probe_expr: fields.probe_expr,
            order_expr: fields.order_expr,
            updated_expr: fields.updated_expr,
            select_list: fields.select_list,
            has_rowid,
            read_only,
            created_by_ferry,
        })
    }

    /// The collection's table as it is named in the database (names ignore case), made
    /// if there is none: a seed `000_…` table with that seed's columns, any other as a
    /// document table.
    fn find_or_create_table(&mut self, collection: &Collection) -> Result<String, StoreError> {
        let name = collection.name.as_str();
        let existing: Option<String> = self.db().once().optional_row(
            format_args!("looking up table {name}"),
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get(0),
        )?;
        if let Some(actual) = existing {
            return Ok(actual);
        }
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
        let op = format!("creating table {name}");
        self.transaction(&op, |db| {
            let db = db.once();
            db.batch(&op, &ddl)?;
            db.execute(
                &op,
                "INSERT OR REPLACE INTO ferry_collections (name, layout, created_by_ferry) VALUES (?1, ?2, 1)",
                params![name, layout],
            )
        })?;
        tracing::info!(table = name, layout, "created table for collection");
        Ok(name.to_string())
    }

    /// The layout `ferry_collections` records for a collection, and whether ferry made
    /// its table; a table met for the first time is recorded as another program's.
    fn registered_layout(&self, name: &str) -> Result<(Layout, bool), StoreError> {
        let registered: Option<(String, bool)> = self.db().once().optional_row(
            "reading ferry_collections",
            "SELECT layout, created_by_ferry FROM ferry_collections WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
        )?;
        let created_by_ferry = registered.as_ref().is_some_and(|(_, ours)| *ours);
        let layout = registered.map(|(layout, _)| layout);
        if layout.is_none() {
            self.db().once().execute(
                "writing ferry_collections",
                "INSERT INTO ferry_collections (name, layout, created_by_ferry) VALUES (?1, 'columns', 0)",
                [name],
            )?;
        }
        let layout = match layout.as_deref() {
            Some("document") => Layout::Document,
            _ => Layout::Columns,
        };
        Ok((layout, created_by_ferry))
    }

    /// A table's columns, their declared types and its primary key.
    fn columns_of(&self, table_name: &str) -> Result<Columns, StoreError> {
        let info: Vec<(String, i64, Option<String>)> = self.db().once().rows(
            format_args!("reading the columns of {table_name}"),
            &format!("PRAGMA table_info({})", ident(table_name)),
            [],
            |row| Ok((row.get(1)?, row.get(5)?, row.get(2).unwrap_or(None))),
        )?;
        let mut columns = Columns::default();
        for (column, pk, declared) in info {
            if pk > 0 {
                columns.primary_key.push(column.clone());
            }
            columns
                .types
                .insert(column.clone(), declared.unwrap_or_default());
            columns.names.push(column);
        }
        Ok(columns)
    }

    pub(super) fn has_unique_index(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let op = || format!("reading the indexes of {table}");
        let db = self.db().once();
        let names: Vec<String> = db.rows(
            op(),
            "SELECT il.name FROM pragma_index_list(?1) AS il WHERE il.\"unique\" = 1",
            [table],
            |r| r.get(0),
        )?;
        for index in names {
            let cols: Vec<String> = db
                .rows(
                    op(),
                    "SELECT name FROM pragma_index_info(?1)",
                    [&index],
                    |r| r.get::<_, Option<String>>(0),
                )?
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
    pub(super) fn ensure_index(
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
        self.db().batch(
            format_args!("creating index {index}"),
            &format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({target})",
                ident(&index),
                ident(table)
            ),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::config::Config;

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
