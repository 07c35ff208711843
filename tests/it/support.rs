//! Shared test fixtures: a temp folder with a config, a store of either backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry::config::{Backend, Config};
use ferry::store::{self, Record, Store};
use serde_json::Value;

/// The config every store test uses: one mutable collection with blobs, one append-only.
pub const COLLECTIONS: &str = r#"
[[collections]]
name = "items"
key = "id"
order_by = "rank"
updated_at = "updated_at"
blob_fields = ["data"]
endpoint = "/api/items"

[[collections]]
name = "events"
key = "id"
endpoint = "/api/events"
"#;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
}

impl Fixture {
    pub fn new(backend: Backend) -> Fixture {
        Self::with_collections(backend, COLLECTIONS)
    }

    pub fn with_collections(backend: Backend, collections: &str) -> Fixture {
        Self::with_config(
            backend,
            "[remote]\nurl = \"http://127.0.0.1:9\"\n",
            collections,
        )
    }

    /// A fixture whose config has `tables` ([remote], [sync] …) before the collections.
    pub fn with_config(backend: Backend, tables: &str, collections: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("ferry.toml");
        let text = format!(
            "device_id = \"test-device\"\n[storage]\nbackend = \"{}\"\nsqlite_path = \"state/ferry.db\"\n\
             json_dir = \"state/json\"\nbackups_dir = \"state/backups\"\n{tables}\n{collections}",
            backend.as_str()
        );
        std::fs::write(&config_path, text).expect("write config");
        let config = Config::load(&config_path, &[("STATE_DIRECTORY", "")]).expect("config loads");
        Fixture {
            dir,
            config_path,
            config,
        }
    }

    pub fn open(&self) -> Box<dyn Store> {
        store::open(&self.config).expect("store opens")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Runs the real `ferry` binary with this fixture's config.
    pub fn ferry(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        ferry_command(&self.config_path, args, stdin)
    }
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

pub fn ferry_command(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(ferry_bin());
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("FERRY_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("FERRY_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("ferry starts");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        // ferry may stop before reading it all (it refuses a damaged store first).
        if let Err(err) = pipe.write_all(input) {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe,
                "writing ferry's stdin: {err}"
            );
        }
    }
    child.wait_with_output().expect("ferry finishes")
}

pub fn record(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Folds a SQLite database's WAL into its file, as a clean close does, so that the
/// file alone holds every page.
pub fn checkpoint(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open for a checkpoint");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

/// Overwrites `pages` 4 KiB pages in the middle of a file with `byte`: damage such as
/// a failing SD card leaves.
pub fn overwrite_middle_pages(file: &Path, pages: usize, byte: u8) {
    let mut bytes = std::fs::read(file).expect("read the file to damage");
    let middle = bytes.len() / 2 / 4096 * 4096;
    let end = (middle + pages * 4096).min(bytes.len());
    bytes[middle..end].fill(byte);
    std::fs::write(file, &bytes).expect("write the damaged file");
}
