//! Storage: one trait, two backends (embedded SQLite, PostgreSQL), one conformance
//! suite (`tests/it/conformance.rs`) run on both.
//!
//! Each collection is a table named as the collection, one row per record: `id` (the
//! remote id ferry is given), `device`, `key` (unique together), `version`,
//! `version_order` (see `version.rs`), `record` (JSON; JSONB on PostgreSQL),
//! `received_at` and `updated_at`. The receiver's own tables start with
//! `ferry_receiver_`: the schema version, the collections, and the Idempotency-Keys
//! with their answers. A write, its key and the keys it supersedes are committed in
//! one transaction, so a receiver killed at any point has either done all of it or
//! none.
//!
//! A backend never decides what a write does: it fetches the facts `plan::decide`
//! needs, and carries out its decision.

use std::future::Future;

use serde_json::Value;

use crate::config::{Config, Database, Terminal};
use crate::plan::{Answer, Member};

pub mod postgres;
pub mod sqlite;

/// The receiver's schema version; `ferry_receiver_schema` holds what a database has.
/// Migrations are numbered and applied in order at start (`sqlite.rs`, `postgres.rs`).
pub const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite database {path}: {op}: {source}")]
    Sqlite {
        path: String,
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("PostgreSQL {url}: {op}: {message}")]
    Postgres {
        url: String,
        op: &'static str,
        /// tokio-postgres says only "db error"; this is the server's own message.
        message: String,
    },
    #[error("PostgreSQL {url}: no connection ({message}); check that the server runs and `database` in the config")]
    Pool { url: String, message: String },
    #[error("the database {url} has schema version {found}, newer than this ferry-receiver knows ({known}); upgrade ferry-receiver")]
    TooNew { url: String, found: i64, known: i64 },
    #[error("{0}")]
    Other(String),
}

/// A stored record, as `GET /api/<collection>` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: i64,
    pub device: String,
    pub key: Option<String>,
    pub version: Option<String>,
    pub record: Value,
    pub received_at: String,
    pub updated_at: String,
}

impl Row {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "device": self.device,
            "key": self.key,
            "version": self.version,
            "received_at": self.received_at,
            "updated_at": self.updated_at,
            "record": self.record,
        })
    }
}

/// Records per collection and device, for `ferry-receiver stats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub schema_version: i64,
    pub keys_kept: i64,
    /// (collection, device, records, last updated_at)
    pub records: Vec<(String, String, i64, String)>,
}

/// The storage contract. Every method is one transaction (or none).
pub trait Storage: Send + Sync + 'static {
    /// Carries out `members` (all of `collection`) in one transaction and answers each,
    /// in order. The caller has made sure no two members share a record or a key, and
    /// that no other write of theirs runs in this process; across processes the
    /// backend makes sure of it (PostgreSQL: an advisory lock per record, and a `409`
    /// answer when another receiver holds it).
    fn apply(
        &self,
        collection: &str,
        terminal: Option<Terminal>,
        members: Vec<Member>,
    ) -> impl Future<Output = Result<Vec<Answer>, StoreError>> + Send;

    fn get(
        &self,
        collection: &str,
        id: i64,
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send;

    /// Rows with `id > after`, by id, at most `limit`, of one device if given.
    fn list(
        &self,
        collection: &str,
        device: Option<String>,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// A round trip to the database.
    fn health(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;

    /// Forgets Idempotency-Keys older than `days`; how many.
    fn prune_keys(&self, days: u32) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The backend chosen once at start-up.
pub enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Backend {
    /// Opens the configured database and brings its schema up to date.
    pub async fn open(config: &Config) -> Result<Backend, StoreError> {
        match &config.database {
            Database::Sqlite(path) => Ok(Backend::Sqlite(sqlite::SqliteStore::open(path).await?)),
            Database::Postgres(url) => Ok(Backend::Postgres(
                postgres::PgStore::open(url, config.pool_size).await?,
            )),
        }
    }
}

impl Storage for Backend {
    async fn apply(
        &self,
        collection: &str,
        terminal: Option<Terminal>,
        members: Vec<Member>,
    ) -> Result<Vec<Answer>, StoreError> {
        match self {
            Backend::Sqlite(s) => s.apply(collection, terminal, members).await,
            Backend::Postgres(s) => s.apply(collection, terminal, members).await,
        }
    }

    async fn get(&self, collection: &str, id: i64) -> Result<Option<Row>, StoreError> {
        match self {
            Backend::Sqlite(s) => s.get(collection, id).await,
            Backend::Postgres(s) => s.get(collection, id).await,
        }
    }

    async fn list(
        &self,
        collection: &str,
        device: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        match self {
            Backend::Sqlite(s) => s.list(collection, device, after, limit).await,
            Backend::Postgres(s) => s.list(collection, device, after, limit).await,
        }
    }

    async fn health(&self) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite(s) => s.health().await,
            Backend::Postgres(s) => s.health().await,
        }
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        match self {
            Backend::Sqlite(s) => s.stats().await,
            Backend::Postgres(s) => s.stats().await,
        }
    }

    async fn prune_keys(&self, days: u32) -> Result<u64, StoreError> {
        match self {
            Backend::Sqlite(s) => s.prune_keys(days).await,
            Backend::Postgres(s) => s.prune_keys(days).await,
        }
    }
}

/// What PostgreSQL said: the server's message (with its SQLSTATE), or the client's
/// error and its causes.
pub fn pg_message(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The collection's table name, quoted (the name is checked: `config::check_collection_name`).
pub fn table(collection: &str) -> String {
    format!("\"{collection}\"")
}

/// The value of the terminal field in a stored record's JSON text.
pub fn terminal_value(record_text: &str, terminal: Option<&Terminal>) -> Option<Value> {
    let terminal = terminal?;
    let record: Value = serde_json::from_str(record_text).ok()?;
    record.get(&terminal.field).cloned()
}
