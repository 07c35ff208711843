//! The configuration: one set of serde structs for both spellings (TOML, and INI via
//! [`ini`]), defaults as named functions, validation that names file:line:column and
//! the key, and environment overrides (SPEC §2, §3). The loader reads; it never writes.

mod duration;
mod env;
mod error;
mod ini;
mod secrets;
mod size;
mod types;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use duration::{parse as parse_duration, HumanDuration};
pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, ConfigProblem, Origin};
pub use secrets::Token;
pub use size::{parse as parse_size, ByteSize};
pub use types::{CollectionName, Endpoint, FieldName, HeaderName, JsonPointer, RemoteUrl};

/// The config file read when neither `--config` nor `FERRY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ferry/ferry.toml";
/// Where state lives unless systemd's `STATE_DIRECTORY` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sent with every record and part of every idempotency key.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub log_level: LogLevel,
    /// Where logs go: `auto` (journald when run by systemd, else stderr), `journald`,
    /// or `stderr`.
    #[serde(default)]
    pub log_target: LogTarget,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub remote: Remote,
    #[serde(default)]
    pub sync: Sync,
    #[serde(default)]
    pub collections: Vec<Collection>,
    /// The file this config was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// When the daemon runs the store's quick integrity check before READY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckOnStart {
    /// After a crash or power cut only (ferry did not stop cleanly): costs nothing on
    /// ordinary starts, seconds on a large store after a crash.
    #[default]
    Unclean,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    #[default]
    Auto,
    Journald,
    Stderr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Json,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Json => "json",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default = "default_sqlite_path")]
    pub sqlite_path: PathBuf,
    #[serde(default = "default_json_dir")]
    pub json_dir: PathBuf,
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// When `ferry run` checks the store's integrity before READY.
    #[serde(default)]
    pub check_on_start: CheckOnStart,
    #[serde(default = "default_backups_dir")]
    pub backups_dir: PathBuf,
    #[serde(
        default = "default_backups_keep",
        deserialize_with = "types::backups_keep"
    )]
    pub backups_keep: u32,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::default(),
            sqlite_path: default_sqlite_path(),
            json_dir: default_json_dir(),
            migrate_on_start: true,
            check_on_start: CheckOnStart::default(),
            backups_dir: default_backups_dir(),
            backups_keep: default_backups_keep(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// Base URL; endpoints are relative to it. Needed to deliver, not to store.
    #[serde(default)]
    pub url: Option<RemoteUrl>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(
        default = "default_max_concurrent",
        deserialize_with = "types::max_concurrent"
    )]
    pub max_concurrent: u32,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `""` turns the header off.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: HeaderName,
    /// Request bodies compressed (`Content-Encoding`), or not.
    #[serde(default)]
    pub compression: Compression,
    /// `fixed`: `max_concurrent` requests in flight; `adaptive`: as many as the link
    /// carries without slowing down, found as it goes, up to `max_concurrent`.
    #[serde(default)]
    pub concurrency: Concurrency,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    #[default]
    Fixed,
    Adaptive,
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            url: None,
            token_file: None,
            timeout: default_timeout(),
            max_concurrent: default_max_concurrent(),
            ca_file: None,
            idempotency_header: default_idempotency_header(),
            compression: Compression::default(),
            concurrency: Concurrency::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Once,
    Periodic,
    #[default]
    Continuous,
}

impl SyncMode {
    fn parse(text: &str) -> Option<SyncMode> {
        match text {
            "once" => Some(SyncMode::Once),
            "periodic" => Some(SyncMode::Periodic),
            "continuous" => Some(SyncMode::Continuous),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    #[serde(default)]
    pub mode: SyncMode,
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_retry_failed_every")]
    pub retry_failed_every: HumanDuration,
    #[serde(default = "default_batch_size", deserialize_with = "types::batch_size")]
    pub batch_size: u32,
    /// The longest a record waits between two tries (exponential backoff stops here).
    #[serde(default = "default_max_retry_delay")]
    pub max_retry_delay: HumanDuration,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            mode: SyncMode::default(),
            interval: default_interval(),
            retry_failed_every: default_retry_failed_every(),
            batch_size: default_batch_size(),
            max_retry_delay: default_max_retry_delay(),
        }
    }
}

/// What an already-delivered record gets when its `updated_at` moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Updates {
    Ignore,
    Post,
    Put,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// SQLite table and JSON file stem.
    pub name: CollectionName,
    /// The field that identifies a record.
    #[serde(default = "default_key")]
    pub key: FieldName,
    /// Push order; the key when absent.
    #[serde(default)]
    pub order_by: Option<FieldName>,
    pub endpoint: Endpoint,
    #[serde(default = "default_remote_id")]
    pub remote_id: JsonPointer,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub blob_fields: Vec<FieldName>,
    /// The change-detection field; absent for append-only data.
    #[serde(default)]
    pub updated_at: Option<FieldName>,
    /// `put` by default when `updated_at` is set.
    #[serde(default)]
    pub updates: Option<Updates>,
    /// The JSON backend's file name in `json_dir`; `<name>.json` by default.
    #[serde(default)]
    pub json_file: Option<String>,
    /// Where batches of this collection's records go (`docs/PROTOCOL.md` §3); without
    /// it, one record a request.
    #[serde(default)]
    pub batch_endpoint: Option<Endpoint>,
    /// Records in one batch, at most.
    #[serde(
        default = "default_batch_max_records",
        deserialize_with = "types::batch_max_records"
    )]
    pub batch_max_records: u32,
    /// Bytes of JSON in one batch before compression, at most (a record larger than
    /// this goes alone).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: ByteSize,
}

impl Collection {
    pub fn order_by(&self) -> &FieldName {
        self.order_by.as_ref().unwrap_or(&self.key)
    }

    pub fn updates(&self) -> Updates {
        match (self.updates, &self.updated_at) {
            (Some(updates), _) => updates,
            (None, Some(_)) => Updates::Put,
            (None, None) => Updates::Ignore,
        }
    }

    /// Whether a delivered record that changed is sent again (as an update, `updates`
    /// put or post). An append-only collection ignores changes: a record written
    /// again under a delivered key is a new record only once ferry has seen the first
    /// one gone (its tracking is then forgotten).
    pub fn sends_changes(&self) -> bool {
        self.updates() != Updates::Ignore
    }

    pub fn json_file_name(&self) -> String {
        self.json_file
            .clone()
            .unwrap_or_else(|| format!("{}.json", self.name.as_str()))
    }

    /// The seed `000_…` collections a `[BDD]` section implies (SPEC §3).
    fn seed_000(name: &str, order_by: &str) -> Collection {
        Collection {
            name: CollectionName::new_unchecked(name),
            key: FieldName::new_unchecked("id"),
            order_by: Some(FieldName::new_unchecked(order_by)),
            endpoint: Endpoint::new_unchecked(&format!("/api/{name}")),
            remote_id: default_remote_id(),
            extra: serde_json::Map::new(),
            blob_fields: Vec::new(),
            updated_at: Some(FieldName::new_unchecked("updated_at")),
            updates: None,
            json_file: Some(format!("active_{name}.json")),
            batch_endpoint: None,
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_state_dir() -> PathBuf {
    ProcessEnv.state_dir()
}
fn default_sqlite_path() -> PathBuf {
    default_state_dir().join("ferry.db")
}
fn default_json_dir() -> PathBuf {
    default_state_dir().join("json")
}
fn default_backups_dir() -> PathBuf {
    default_state_dir().join("backups")
}
fn default_backups_keep() -> u32 {
    5
}
fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_concurrent() -> u32 {
    4
}
fn default_idempotency_header() -> HeaderName {
    HeaderName::new_unchecked("Idempotency-Key")
}
fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_retry_failed_every() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_max_retry_delay() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_batch_size() -> u32 {
    250
}
fn default_batch_max_records() -> u32 {
    500
}
fn default_batch_max_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_key() -> FieldName {
    FieldName::new_unchecked("id")
}
fn default_remote_id() -> JsonPointer {
    JsonPointer::new_unchecked("/id")
}

/// The config file to read: `--config`, else `FERRY_CONFIG`, else the default path.
pub fn config_path(flag: Option<&Path>, env: &dyn Env) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match env.var("FERRY_CONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Config {
    /// Reads, validates and completes the config at `path` (TOML, or INI by extension),
    /// then applies the environment overrides.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            let what = match err.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "no config file here ({err}); create it from config/ferry.example.toml, \
                     or name another one with --config or FERRY_CONFIG"
                ),
                std::io::ErrorKind::InvalidData => {
                    "the file is not valid UTF-8 text; save it as UTF-8".to_string()
                }
                _ => format!("cannot read the config file: {err}"),
            };
            ConfigError::whole_file(path, what)
        })?;
        let is_ini = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("ini"));
        let mut config = if is_ini {
            let translated = ini::translate(path, &text)?;
            let mut config = parse_toml(path, &translated.toml, &|offset| {
                translated.ini_position(offset)
            })?;
            if translated.has_bdd_section {
                for (name, order_by) in [("downloads", "created_at"), ("seeds", "created_at")] {
                    if !config.collections.iter().any(|c| c.name.as_str() == name) {
                        config
                            .collections
                            .push(Collection::seed_000(name, order_by));
                    }
                }
            }
            config
        } else {
            parse_toml(path, &text, &|offset| error::line_column(&text, offset))?
        };
        config.source = path.to_path_buf();
        config.resolve_paths();
        config.apply_env(env)?;
        if config.device_id.is_none() {
            config.device_id = Some(host_name());
        }
        Ok(config)
    }

    pub fn device_id(&self) -> &str {
        self.device_id.as_deref().unwrap_or("ferry")
    }

    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.collections.iter().find(|c| c.name.as_str() == name)
    }

    /// A relative path in the file is relative to the file's folder (SPEC §1).
    fn resolve_paths(&mut self) {
        let base = self
            .source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.storage.sqlite_path);
        resolve(&mut self.storage.json_dir);
        resolve(&mut self.storage.backups_dir);
        if let Some(path) = self.remote.token_file.as_mut() {
            resolve(path);
        }
        if let Some(path) = self.remote.ca_file.as_mut() {
            resolve(path);
        }
    }

    /// Environment overrides, applied over the file (SPEC §2), including the names the
    /// seed `003_…` service used so its unit files keep working.
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |var: &str, key: &str, message: String| {
            problems.push(ConfigProblem {
                origin: Origin::Env(var.to_string()),
                key: Some(key.to_string()),
                message,
            })
        };
        if let Some(level) = env.var("FERRY_LOG") {
            match serde_json::from_value::<LogLevel>(serde_json::Value::String(level.clone())) {
                Ok(level) => self.log_level = level,
                Err(_) => problem(
                    "FERRY_LOG",
                    "log_level",
                    format!("expected one of error, warn, info, debug, trace (got {level:?})"),
                ),
            }
        }
        if let Some(path) = env.var("LOCAL_DB_PATH") {
            if path.is_empty() {
                problem("LOCAL_DB_PATH", "storage.sqlite_path", "is empty".into());
            } else {
                self.storage.sqlite_path = env.absolute(Path::new(&path));
            }
        }
        if let Some(url) = env.var("BACKEND_URL") {
            match RemoteUrl::parse(&url) {
                Ok(url) => self.remote.url = Some(url),
                Err(message) => problem("BACKEND_URL", "remote.url", message),
            }
        }
        if let Some(minutes) = env.var("SYNC_INTERVAL_MINUTES") {
            match minutes.trim().parse::<u64>() {
                Ok(m) if m > 0 && m < u64::MAX / 60 => {
                    self.sync.interval = HumanDuration::from_secs(m * 60)
                }
                _ => problem(
                    "SYNC_INTERVAL_MINUTES",
                    "sync.interval",
                    format!(
                        "expected a whole number of minutes greater than zero (got {minutes:?})"
                    ),
                ),
            }
        }
        if let Some(device) = env.var("DEVICE_ID") {
            if device.trim().is_empty() {
                problem("DEVICE_ID", "device_id", "is empty".into());
            } else {
                self.device_id = Some(device);
            }
        }
        if let Some(mode) = env.var("SYNC_MODE") {
            match SyncMode::parse(mode.trim()) {
                Some(mode) => self.sync.mode = mode,
                None => problem(
                    "SYNC_MODE",
                    "sync.mode",
                    format!("expected once, periodic or continuous (got {mode:?})"),
                ),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The effective config as TOML, as `ferry config show` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// Parses TOML text into a [`Config`] and runs the cross-field checks; `position` maps
/// a byte offset in `text` to the line and column the user should look at.
fn parse_toml(
    path: &Path,
    text: &str,
    position: &dyn Fn(usize) -> (usize, usize),
) -> Result<Config, ConfigError> {
    let at = |offset: usize| {
        let (line, column) = position(offset);
        Origin::File {
            path: path.to_path_buf(),
            line,
            column,
        }
    };
    let document = toml::de::DeTable::parse(text)
        .ok()
        .map(|t| toml::de::DeValue::Table(t.into_inner()));
    let config: Config = toml::from_str(text).map_err(|err| {
        let (origin, key) = match err.span() {
            Some(span) => (
                at(span.start),
                document.as_ref().and_then(|doc| key_at(doc, span.start)),
            ),
            None => (Origin::WholeFile(path.to_path_buf()), None),
        };
        ConfigError::single(ConfigProblem {
            origin,
            key,
            message: err
                .message()
                .trim()
                .replace("expected i64", "expected an integer")
                .replace("wanted string or table", "expected a string"),
        })
    })?;

    let locate = |index: usize, field: &str| -> Origin {
        document
            .as_ref()
            .and_then(|doc| doc.get("collections"))
            .and_then(|collections| collections.get_ref().get(index))
            .map(|collection| {
                collection
                    .get_ref()
                    .get(field)
                    .map_or(collection.span().start, |value| value.span().start)
            })
            .map_or_else(|| Origin::WholeFile(path.to_path_buf()), at)
    };
    let mut problems = Vec::new();
    for (index, collection) in config.collections.iter().enumerate() {
        let key = |field: &str| Some(format!("collections[{}].{field}", collection.name.as_str()));
        if let Some(first) = config.collections[..index].iter().position(|c| {
            c.name
                .as_str()
                .eq_ignore_ascii_case(collection.name.as_str())
        }) {
            let (line, _) = match locate(first, "name") {
                Origin::File { line, column, .. } => (line, column),
                _ => (0, 0),
            };
            problems.push(ConfigProblem {
                origin: locate(index, "name"),
                key: key("name"),
                message: format!(
                    "collection {:?} is declared twice (first at line {line}); give each collection its own name",
                    collection.name.as_str()
                ),
            });
        }
        if collection.blob_fields.iter().any(|f| f == &collection.key) {
            problems.push(ConfigProblem {
                origin: locate(index, "blob_fields"),
                key: key("blob_fields"),
                message: format!(
                    "the key field {:?} cannot be a blob field",
                    collection.key.as_str()
                ),
            });
        }
        if collection.updates.is_some_and(|u| u != Updates::Ignore)
            && collection.updated_at.is_none()
        {
            problems.push(ConfigProblem {
                origin: locate(index, "updates"),
                key: key("updates"),
                message: "needs `updated_at`, the field that changes when a record does; \
                          set it, or remove `updates` for append-only data"
                    .to_string(),
            });
        }
        if let Some(file) = &collection.json_file {
            if file.is_empty()
                || file.contains('/')
                || file.starts_with('.')
                || !file.ends_with(".json")
            {
                problems.push(ConfigProblem {
                    origin: locate(index, "json_file"),
                    key: key("json_file"),
                    message: format!(
                        "expected a plain file name ending in .json inside storage.json_dir (got {file:?})"
                    ),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

/// The dotted path of the innermost key whose name or value holds byte `offset`:
/// `remote.timeout`, `collections[1].name`. A table's span need not cover its body
/// (a `[remote]` header), so every branch is searched.
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

fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "ferry".to_string())
}

#[cfg(test)]
mod tests;
