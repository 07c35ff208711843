//! The receiver's configuration: `/etc/ferry-receiver/receiver.toml` (SPEC §9).
//!
//! One source of truth: serde structs with `deny_unknown_fields`, defaults as named
//! constants, every problem reported with the file, line and column, the key and what
//! was expected. The loader never writes a file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/ferry-receiver/receiver.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
pub const DEFAULT_DATABASE: &str = "sqlite:///var/lib/ferry-receiver/receiver.db";
/// PostgreSQL connections per receiver. Two receivers with 8 each stay far below
/// PostgreSQL's default `max_connections` (100).
pub const DEFAULT_POOL_SIZE: usize = 8;
/// The largest request body, after gzip decompression.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The most members a batch may have; more is answered 413 (ferry splits it).
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 5000;
/// How long an Idempotency-Key's answer is kept. A retry after that is still not a
/// duplicate (records are unique per device and key); it just gets a fresh answer.
pub const DEFAULT_KEEP_KEYS_DAYS: u32 = 30;
/// Longest collection name: a PostgreSQL identifier has at most 63 bytes.
pub const MAX_COLLECTION_NAME: usize = 48;
/// Table names the receiver keeps for itself.
pub const RESERVED_PREFIX: &str = "ferry_receiver";

/// Where a problem was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    WholeFile(PathBuf),
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub origin: Origin,
    /// `database`, `collections[downloads].bounds`, when known.
    pub key: Option<String>,
    pub message: String,
}

/// Everything wrong with a configuration; the process exits 78 (`EX_CONFIG`) on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                origin: Origin::WholeFile(path.to_path_buf()),
                key: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}: ", path.display())?
            }
            Origin::WholeFile(path) => write!(f, "{}: ", path.display())?,
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "config error: {problem}")?;
        }
        Ok(())
    }
}

/// The database URL; its Debug and Display hide a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A libpq-style URL (`postgres://user:pass@host/db?host=/run/postgresql`).
    Postgres(String),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Database::Postgres(url) => f.write_str(&mask_password(url)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Database {
    pub fn parse(text: &str) -> Result<Database, String> {
        if let Some(rest) = text.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err("expected sqlite:///absolute/path/receiver.db".into());
            }
            return Ok(Database::Sqlite(PathBuf::from(rest)));
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            if rest.is_empty() {
                return Err("expected sqlite:///absolute/path/receiver.db".into());
            }
            return Ok(Database::Sqlite(PathBuf::from(rest)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            text.parse::<tokio_postgres::Config>()
                .map_err(|err| format!("not a PostgreSQL URL ({err})"))?;
            return Ok(Database::Postgres(text.to_string()));
        }
        Err(format!(
            "expected \"sqlite:///path/receiver.db\" or \"postgres://user@host/database\" (got {:?})",
            mask_password(text)
        ))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgresql",
        }
    }
}

/// A JSON type a field may be required to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Number => "a number",
            FieldType::Integer => "an integer",
            FieldType::Boolean => "true or false",
            FieldType::Object => "an object",
            FieldType::Array => "an array",
        }
    }
}

/// A status field and the values after which a record takes no more updates.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    pub field: String,
    pub values: Vec<String>,
}

/// The rules of one collection (seed 004's server rules).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionRules {
    pub name: String,
    /// Fields every record must have (not null).
    #[serde(default)]
    pub required: Vec<String>,
    /// The JSON type of a field, when present.
    #[serde(default)]
    pub types: BTreeMap<String, FieldType>,
    /// `progress = [0, 100]`: a number within the bounds, inclusive, when present.
    #[serde(default)]
    pub bounds: BTreeMap<String, [f64; 2]>,
    #[serde(default)]
    pub terminal: Option<Terminal>,
    /// Writes per second per record; updates in between are coalesced, the latest
    /// state written at the next slot.
    #[serde(default)]
    pub max_update_rate: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    #[default]
    Auto,
    Journald,
    Stderr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_database")]
    database: String,
    #[serde(default)]
    tokens_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_max_batch_records")]
    max_batch_records: usize,
    #[serde(default = "default_keep_keys_days")]
    keep_keys_days: u32,
    #[serde(default = "default_log_level")]
    log_level: String,
    #[serde(default)]
    log_target: LogTarget,
    #[serde(default)]
    collections: Vec<CollectionRules>,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_database() -> String {
    DEFAULT_DATABASE.to_string()
}
fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_batch_records() -> usize {
    DEFAULT_MAX_BATCH_RECORDS
}
fn default_keep_keys_days() -> u32 {
    DEFAULT_KEEP_KEYS_DAYS
}
fn default_log_level() -> String {
    "info".to_string()
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages), if any.
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub database: Database,
    pub tokens_file: Option<PathBuf>,
    pub pool_size: usize,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    pub keep_keys_days: u32,
    pub log_level: String,
    pub log_target: LogTarget,
    pub collections: Vec<CollectionRules>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::whole_file(
                path,
                format!("cannot read the config ({err}); pass another with --config PATH"),
            )
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |offset: usize| {
            let (line, column) = line_column(text, offset);
            Origin::File {
                path: path.to_path_buf(),
                line,
                column,
            }
        };
        let document = toml::de::DeTable::parse(text)
            .ok()
            .map(|t| toml::de::DeValue::Table(t.into_inner()));
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let (origin, key) = match err.span() {
                Some(span) => (
                    at(span.start),
                    document.as_ref().and_then(|doc| key_at(doc, span.start)),
                ),
                None => (Origin::WholeFile(path.to_path_buf()), None),
            };
            ConfigError {
                problems: vec![ConfigProblem {
                    origin,
                    key,
                    message: err.message().trim().to_string(),
                }],
            }
        })?;
        // Where a top-level key, or a key of collections[i], is in the file.
        let locate = |index: Option<usize>, field: &str| -> Origin {
            let Some(doc) = document.as_ref() else {
                return Origin::WholeFile(path.to_path_buf());
            };
            let table = match index {
                None => Some((doc, 0)),
                Some(i) => doc
                    .get("collections")
                    .and_then(|c| c.get_ref().get(i))
                    .map(|c| (c.get_ref(), c.span().start)),
            };
            match table {
                Some((table, start)) => at(table.get(field).map_or(start, |v| v.span().start)),
                None => Origin::WholeFile(path.to_path_buf()),
            }
        };
        let mut problems = Vec::new();
        let mut problem = |origin: Origin, key: String, message: String| {
            problems.push(ConfigProblem {
                origin,
                key: Some(key),
                message,
            })
        };

        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    locate(None, "listen"),
                    "listen".into(),
                    format!(
                        "expected an address and port such as \"127.0.0.1:8000\" or \"[::]:8000\" (got {:?})",
                        raw.listen
                    ),
                );
                None
            }
        };
        let database = match Database::parse(&raw.database) {
            Ok(db) => Some(db),
            Err(message) => {
                problem(locate(None, "database"), "database".into(), message);
                None
            }
        };
        if raw.pool_size == 0 || raw.pool_size > 256 {
            problem(
                locate(None, "pool_size"),
                "pool_size".into(),
                format!("must be between 1 and 256 (got {})", raw.pool_size),
            );
        }
        if raw.max_body_bytes < 1024 {
            problem(
                locate(None, "max_body_bytes"),
                "max_body_bytes".into(),
                format!("must be at least 1024 (got {})", raw.max_body_bytes),
            );
        }
        if raw.max_batch_records == 0 {
            problem(
                locate(None, "max_batch_records"),
                "max_batch_records".into(),
                "must be at least 1 (got 0)".into(),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&raw.log_level).is_err() {
            problem(
                locate(None, "log_level"),
                "log_level".into(),
                format!(
                    "expected error, warn, info, debug or trace (got {:?})",
                    raw.log_level
                ),
            );
        }
        for (i, rules) in raw.collections.iter().enumerate() {
            let key = |field: &str| format!("collections[{}].{field}", rules.name);
            if let Err(message) = check_collection_name(&rules.name) {
                problem(locate(Some(i), "name"), key("name"), message);
            }
            if raw.collections[..i].iter().any(|c| c.name == rules.name) {
                problem(
                    locate(Some(i), "name"),
                    key("name"),
                    format!(
                        "collection {:?} has rules twice; merge them into one [[collections]]",
                        rules.name
                    ),
                );
            }
            for (field, [low, high]) in &rules.bounds {
                if low.partial_cmp(high) != Some(std::cmp::Ordering::Less) && low != high {
                    problem(
                        locate(Some(i), "bounds"),
                        key(&format!("bounds.{field}")),
                        format!("expected [low, high] with low <= high (got [{low}, {high}])"),
                    );
                }
                if let Some(t) = rules.types.get(field) {
                    if !matches!(t, FieldType::Number | FieldType::Integer) {
                        problem(
                            locate(Some(i), "types"),
                            key(&format!("types.{field}")),
                            format!(
                                "has bounds, so it must be a number or an integer, not {}",
                                t.name()
                            ),
                        );
                    }
                }
            }
            if let Some(terminal) = &rules.terminal {
                if terminal.field.is_empty() || terminal.values.is_empty() {
                    problem(
                        locate(Some(i), "terminal"),
                        key("terminal"),
                        "expected { field = \"status\", values = [\"completed\", \"failed\"] } with a field and at least one value".into(),
                    );
                }
            }
            if let Some(rate) = rules.max_update_rate {
                if !(rate > 0.0 && rate <= 1000.0) {
                    problem(
                        locate(Some(i), "max_update_rate"),
                        key("max_update_rate"),
                        format!("expected writes per second per record, above 0 and at most 1000 (got {rate})"),
                    );
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let (Some(listen), Some(database)) = (listen, database) else {
            return Err(ConfigError::whole_file(path, "invalid configuration"));
        };
        let tokens_file = raw.tokens_file.map(|p| match path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        });
        Ok(Config {
            path: Some(path.to_path_buf()),
            listen,
            database,
            tokens_file,
            pool_size: raw.pool_size,
            max_body_bytes: raw.max_body_bytes,
            max_batch_records: raw.max_batch_records,
            keep_keys_days: raw.keep_keys_days,
            log_level: raw.log_level,
            log_target: raw.log_target,
            collections: raw.collections,
        })
    }

    /// The rules for `collection`, if the config has any.
    pub fn rules(&self, collection: &str) -> Option<&CollectionRules> {
        self.collections.iter().find(|c| c.name == collection)
    }

    /// A config for tests and tools: every default, this database, this address.
    pub fn with_database(database: Database, listen: SocketAddr) -> Config {
        Config {
            path: None,
            listen,
            database,
            tokens_file: None,
            pool_size: DEFAULT_POOL_SIZE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            keep_keys_days: DEFAULT_KEEP_KEYS_DAYS,
            log_level: default_log_level(),
            log_target: LogTarget::Stderr,
            collections: Vec::new(),
        }
    }
}

/// A collection name becomes a table name on both databases, as is: lower-case ASCII
/// letters, digits, `_` and `-` (SQLite's table names ignore case and PostgreSQL's
/// quoted ones do not, so upper case would make the two storages disagree).
pub fn check_collection_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_COLLECTION_NAME {
        return Err(format!(
            "a collection name has 1 to {MAX_COLLECTION_NAME} characters (got {} in {name:?})",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "a collection name is lower-case letters, digits, _ and - (got {name:?})"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) || name.starts_with("pg_") || name.starts_with("sqlite_") {
        return Err(format!(
            "{name:?} is reserved (names starting with {RESERVED_PREFIX}, pg_ or sqlite_ are the database's or the receiver's own)"
        ));
    }
    Ok(())
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted path of the innermost key whose name or value holds byte `offset`.
fn key_at(value: &toml::de::DeValue<'_>, offset: usize) -> Option<String> {
    use toml::de::DeValue;
    match value {
        DeValue::Table(table) => table.iter().find_map(|(k, v)| {
            let name = k.get_ref();
            match key_at(v.get_ref(), offset) {
                Some(inner) if inner.starts_with('[') => Some(format!("{name}{inner}")),
                Some(inner) => Some(format!("{name}.{inner}")),
                None if k.span().contains(&offset) || v.span().contains(&offset) => {
                    Some(name.to_string())
                }
                None => None,
            }
        }),
        DeValue::Array(array) => {
            array
                .iter()
                .enumerate()
                .find_map(|(i, v)| match key_at(v.get_ref(), offset) {
                    Some(inner) => Some(format!("[{i}].{inner}")),
                    None if v.span().contains(&offset) => Some(format!("[{i}]")),
                    None => None,
                })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ferry-receiver/receiver.toml"), text)
    }

    #[test]
    fn the_spec_example_parses() {
        let config = parse(
            r#"
listen = "127.0.0.1:8000"
database = "sqlite:///var/lib/ferry-receiver/receiver.db"
tokens_file = "/etc/ferry-receiver/tokens"

[[collections]]
name = "downloads"
required = ["id", "status"]
bounds = { progress = [0, 100] }
terminal = { field = "status", values = ["completed", "failed"] }
max_update_rate = 4
"#,
        )
        .expect("the SPEC §9 example is valid");
        assert_eq!(
            config.database,
            Database::Sqlite("/var/lib/ferry-receiver/receiver.db".into())
        );
        let rules = config.rules("downloads").expect("rules");
        assert_eq!(rules.bounds["progress"], [0.0, 100.0]);
        assert_eq!(rules.max_update_rate, Some(4.0));
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_line_and_column() {
        let err = parse(
            "listen = \"127.0.0.1:8000\"\n\n[[collections]]\nname = \"a\"\nrequird = [\"x\"]\n",
        )
        .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("receiver.toml:5:1"), "{text}");
        assert!(text.contains("requird"), "{text}");
    }

    #[test]
    fn a_bad_value_names_its_key_and_place() {
        let err = parse("listen = \"nowhere\"\ndatabase = \"mysql://x\"\n").expect_err("bad");
        let text = err.to_string();
        assert!(text.contains("receiver.toml:1:10: listen:"), "{text}");
        assert!(text.contains("receiver.toml:2:12: database:"), "{text}");
    }

    #[test]
    fn the_postgres_password_is_never_shown() {
        let db = Database::parse("postgres://ferry:s3cret@db.example/ferry").expect("url");
        assert_eq!(db.to_string(), "postgres://ferry:***@db.example/ferry");
        assert_eq!(format!("{db:?}"), "postgres://ferry:***@db.example/ferry");
    }

    #[test]
    fn the_spec_postgres_url_names_the_local_socket() {
        let Database::Postgres(url) =
            Database::parse("postgres://ferry@/ferry?host=/run/postgresql").expect("url")
        else {
            panic!("not PostgreSQL")
        };
        let config: tokio_postgres::Config = url.parse().expect("parses");
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Unix("/run/postgresql".into())]
        );
        assert_eq!(config.get_dbname(), Some("ferry"));
        assert_eq!(config.get_user(), Some("ferry"));
    }

    #[test]
    fn collection_names_are_table_names() {
        assert!(check_collection_name("evenements").is_ok());
        assert!(check_collection_name("sensor-events_2").is_ok());
        assert!(check_collection_name("Media").is_err());
        assert!(check_collection_name("a;drop").is_err());
        assert!(check_collection_name("ferry_receiver_keys").is_err());
        assert!(check_collection_name("").is_err());
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("receiver.example.toml");
        let config = Config::load(&path).expect("the shipped example parses");
        assert!(config.rules("downloads").is_some());
    }
}
