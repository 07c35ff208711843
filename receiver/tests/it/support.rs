//! What the tests share: a database of either kind (a SQLite file in a temporary
//! folder; a fresh database on the PostgreSQL server the environment names), the
//! receiver in-process on loopback port 0, the real binary, and an HTTP client.
//!
//! PostgreSQL is found through `FERRY_TEST_POSTGRES` (a URL) or libpq's variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`), as `pg_virtualenv`
//! exports them. Without one, every PostgreSQL test fails and says how to get one:
//! a storage that was not tested must not look as if it passed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_receiver::config::{CollectionRules, Config, Database};
use ferry_receiver::daemon;
use ferry_receiver::store::Backend;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use ferry_receiver::plan::{Member, Op};

/// Every test is bounded by this.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A database for one test.
pub struct Db {
    pub database: Database,
    pub dir: tempfile::TempDir,
}

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    ferry_devkit::postgres::url_from_env().unwrap_or_else(|| {
        panic!(
            "\n\n*** NO POSTGRESQL FOR THE TESTS ***\n\
             The PostgreSQL half of the storage suite cannot run: neither FERRY_TEST_POSTGRES \
             (a postgres:// URL) nor PGHOST is set.\n\
             Run the tests inside a throwaway cluster: `pg_virtualenv cargo nextest run -p ferry-receiver` \
             (Debian: apt-get install postgresql), or set FERRY_TEST_POSTGRES.\n"
        )
    })
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl Db {
    pub async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("receiver.db");
        Db {
            database: Database::Sqlite(path),
            dir,
        }
    }

    /// A new, empty database on the test server (they live as long as the cluster).
    pub async fn postgres() -> Db {
        let admin = postgres_admin_url();
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| {
                panic!("\n\n*** POSTGRESQL IS NOT REACHABLE at {admin}: {err} ***\n")
            });
        tokio::spawn(connection);
        let name = format!(
            "ferry_test_{}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed),
            Instant::now().elapsed().subsec_nanos()
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE for a test");
        let url = replace_database(&admin, &name);
        Db {
            database: Database::Postgres(url),
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    pub async fn of(kind: Kind) -> Db {
        match kind {
            Kind::Sqlite => Db::sqlite().await,
            Kind::Postgres => Db::postgres().await,
        }
    }

    pub fn config(&self) -> Config {
        Config::with_database(
            self.database.clone(),
            "127.0.0.1:0".parse().expect("address"),
        )
    }

    pub async fn open(&self) -> Backend {
        Backend::open(&self.config())
            .await
            .expect("the store opens")
    }

    /// A config file for the real binary.
    pub fn config_file(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("receiver.toml");
        let database = match &self.database {
            Database::Sqlite(p) => format!("sqlite://{}", p.display()),
            Database::Postgres(url) => url.clone(),
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"{database}\"\nlog_target = \"stderr\"\n{extra}\n"
        );
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// Runs SQL on the database from the side (another connection).
    pub async fn side_sql(&self, sql: &str) {
        match &self.database {
            Database::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open");
                conn.execute_batch(sql).expect("side SQL");
            }
            Database::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(connection);
                client.batch_execute(sql).await.expect("side SQL");
            }
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Runs a test body on both storages.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::support::bounded(super::$name($crate::support::Kind::Sqlite)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::support::bounded(super::$name($crate::support::Kind::Postgres)).await
            }
        }
    };
}

pub async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished within its time limit");
}

/// A member as ferry would send it.
pub fn member(op: Op, device: &str, key: &str, version: &str, record: Value) -> Member {
    Member::new(
        "things",
        op,
        device.into(),
        Some(key.into()),
        Some(version.into()),
        Some(format!("{device}:things:{key}:{version}")),
        record,
    )
}

/// The receiver in-process, stopped when dropped.
pub struct Server {
    pub url: String,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    // Kept open: the receiver takes reloads from it until it stops.
    _reload: mpsc::Sender<Config>,
}

impl Server {
    pub async fn start(kind: Kind, rules: Vec<CollectionRules>) -> Server {
        Server::start_with(Db::of(kind).await, |config| config.collections = rules).await
    }

    pub async fn start_with(db: Db, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = db.config();
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel::<SocketAddr>();
        let (reload, reloads) = mpsc::channel(2);
        tokio::spawn(async move {
            let options = daemon::Options {
                addr_file: None,
                bound: Some(bound_tx),
            };
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(err) = daemon::run(config, options, shutdown, reloads).await {
                panic!("the receiver failed: {err}");
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), bound_rx)
            .await
            .expect("the receiver listens within 20 s")
            .expect("the receiver started");
        Server {
            url: format!("http://{addr}"),
            db,
            stop: Some(stop),
            _reload: reload,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// An answer: status, body as JSON, whether it was a replay.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
    pub headers: reqwest::header::HeaderMap,
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        replayed,
        headers,
    }
}

/// `POST /api/<collection>` with ferry's Idempotency-Key.
pub async fn post(
    client: &reqwest::Client,
    server: &str,
    collection: &str,
    key: Option<&str>,
    body: &Value,
) -> Reply {
    let mut request = client
        .post(format!("{server}/api/{collection}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    send(request).await
}

pub async fn put(
    client: &reqwest::Client,
    server: &str,
    collection: &str,
    id: i64,
    key: Option<&str>,
    body: &Value,
) -> Reply {
    let mut request = client
        .put(format!("{server}/api/{collection}/{id}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    send(request).await
}

/// Every stored row of a collection.
pub async fn rows(client: &reqwest::Client, server: &str, collection: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let reply = send(client.get(format!(
            "{server}/api/{collection}?after={after}&limit=10000"
        )))
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let Value::Array(page) = reply.body else {
            panic!("a list")
        };
        if page.is_empty() {
            return out;
        }
        after = page.last().and_then(|r| r["id"].as_i64()).expect("an id");
        out.extend(page);
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// ferry's key: `<device>:<collection>:<key>:<version>`, percent-encoded parts.
pub fn key(device: &str, collection: &str, record: &str, version: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "{}:{}:{}:{}",
        enc(device),
        enc(collection),
        enc(record),
        enc(version)
    )
}

/// The real binary, with its stderr in a file; killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
}

impl Process {
    pub fn start(config: &Path, dir: &Path, tag: &str) -> Process {
        let addr_file = dir.join(format!("addr-{tag}"));
        let _ = std::fs::remove_file(&addr_file);
        let log = dir.join(format!("receiver-{tag}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-receiver"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .arg("--addr-file")
            .arg(&addr_file)
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ferry-receiver");
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if text.ends_with('\n') {
                    break text.trim().to_string();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "ferry-receiver did not listen within 20 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Process { child, url }
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for the exit (bounded), returns the code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
