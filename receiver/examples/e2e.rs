//! `make receiver-e2e`: the real `ferry` delivering to the real `ferry-receiver`, with
//! `kill -9` of both while records are written and updated, on SQLite and on
//! PostgreSQL. At the end the receiver must hold every record of ferry's store, once,
//! in its latest state, and nothing else.
//!
//! e2e [--records N] [--kills K] [--only sqlite|postgres] [--bin-dir DIR]
//!
//! The binaries are taken next to this program (`target/<profile>/`); `make
//! receiver-e2e` builds them. PostgreSQL as for the tests (FERRY_TEST_POSTGRES or PG*,
//! `pg_virtualenv`); without it the PostgreSQL half fails and says so. Every wait is
//! bounded; the processes are killed at the end.
//!
//! This is not the randomized model check (`examples/modelcheck`, whose `--server`
//! is still a TODO): one fixed scenario, checked against ferry's own store.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    records: usize,
    kills: usize,
    only: Option<String>,
    bin_dir: PathBuf,
}

fn args() -> Result<Args, BoxError> {
    let bin_dir = ferry_devkit::bin::binaries_dir()?;
    let mut a = Args {
        records: 300,
        kills: 6,
        only: None,
        bin_dir,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--records" => a.records = value()?.parse()?,
            "--kills" => a.kills = value()?.parse()?,
            "--only" => a.only = Some(value()?),
            "--bin-dir" => a.bin_dir = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(a)
}

fn postgres_url() -> Result<String, BoxError> {
    Ok(ferry_devkit::postgres::url_from_env().ok_or(
        "no PostgreSQL: set PGHOST or FERRY_TEST_POSTGRES, or run in pg_virtualenv (make receiver-e2e does)",
    )?)
}

/// A child process, killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    dir: PathBuf,
    ferry: PathBuf,
    receiver: PathBuf,
    ferry_config: PathBuf,
    receiver_config: PathBuf,
    url: String,
}

impl World {
    fn start_receiver(&self, n: usize) -> Result<Proc, BoxError> {
        let log = std::fs::File::create(self.dir.join(format!("receiver-{n}.log")))?;
        let child = Command::new(&self.receiver)
            .arg("--config")
            .arg(&self.receiver_config)
            .arg("run")
            .stderr(log)
            .spawn()?;
        let started = Instant::now();
        // Up when /health answers.
        while started.elapsed() < Duration::from_secs(20) {
            if http_get(&self.url, "/health").is_ok_and(|(s, _)| s == 200) {
                return Ok(Proc(child));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        Err(format!(
            "the receiver did not come up; see {}",
            self.dir.join(format!("receiver-{n}.log")).display()
        )
        .into())
    }

    fn start_ferry(&self, n: usize) -> Result<Proc, BoxError> {
        let log = std::fs::File::create(self.dir.join(format!("ferry-{n}.log")))?;
        Ok(Proc(
            Command::new(&self.ferry)
                .arg("--config")
                .arg(&self.ferry_config)
                .arg("run")
                .stderr(log)
                .stdout(Stdio::null())
                .spawn()?,
        ))
    }

    fn put(&self, records: &[String]) -> Result<(), BoxError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut child = Command::new(&self.ferry)
            .arg("--config")
            .arg(&self.ferry_config)
            .args(["put", "downloads"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(stdin) = child.stdin.as_mut() {
            for r in records {
                writeln!(stdin, "{r}")?;
            }
        }
        drop(child.stdin.take());
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("ferry put exited {status}").into());
        }
        Ok(())
    }

    fn store(&self) -> Result<BTreeMap<String, Value>, BoxError> {
        let out = Command::new(&self.ferry)
            .arg("--config")
            .arg(&self.ferry_config)
            .args(["list", "downloads"])
            .output()?;
        if !out.status.success() {
            return Err(format!("ferry list: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let mut records = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line)?;
            let key = v["id"].as_str().unwrap_or_default().to_string();
            records.insert(key, v);
        }
        Ok(records)
    }

    fn server(&self) -> Result<Vec<Value>, BoxError> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (status, body) = http_get(
                &self.url,
                &format!("/api/downloads?after={after}&limit=10000"),
            )?;
            if status != 200 {
                return Err(format!("GET /api/downloads answered {status}").into());
            }
            let page: Vec<Value> = serde_json::from_str(&body)?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = last["id"].as_i64().unwrap_or(i64::MAX);
            out.extend(page);
        }
    }
}

/// A bare HTTP/1.1 GET (no client library needed for two endpoints).
fn http_get(url: &str, path: &str) -> Result<(u16, String), BoxError> {
    use std::io::Read as _;
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // The receiver answers small bodies with Content-Length, large ones chunked.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn record(key: usize, version: usize) -> String {
    let status = if version >= 5 {
        "completed"
    } else {
        "downloading"
    };
    format!(
        "{{\"id\": \"dl-{key}\", \"torrent_name\": \"file-{key}.iso\", \"status\": \"{status}\", \"progress\": {}, \"created_at\": \"2026-11-22 09:00:00\", \"updated_at\": \"2026-11-22 09:{:02}:{:02}\"}}",
        (version * 20).min(100),
        10 + version,
        key % 60
    )
}

fn one(kind: &str, args: &Args) -> Result<Vec<String>, BoxError> {
    let dir = tempfile::Builder::new().prefix("receiver-e2e-").tempdir()?;
    let database = match kind {
        "sqlite" => format!("sqlite://{}", dir.path().join("receiver.db").display()),
        _ => {
            let admin = postgres_url()?;
            let name = format!("ferry_e2e_{}", std::process::id());
            let out = Command::new("psql")
                .arg(&admin)
                .args(["-c", &format!("CREATE DATABASE {name}")])
                .output()?;
            if !out.status.success() {
                return Err(
                    format!("CREATE DATABASE: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
            }
            let (base, _) = admin.rsplit_once('/').ok_or("a URL with a database")?;
            format!("{base}/{name}")
        }
    };
    // A fixed port, so that ferry finds the receiver again after it is restarted.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let receiver_config = dir.path().join("receiver.toml");
    std::fs::write(
        &receiver_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"{database}\"\nlog_target = \"stderr\"\n"
        ),
    )?;
    let ferry_config = dir.path().join("ferry.toml");
    std::fs::write(
        &ferry_config,
        format!(
            "device_id = \"e2e-box\"\n\n[storage]\nbackend = \"sqlite\"\nsqlite_path = \"{}\"\n\n[remote]\nurl = \"{url}\"\ntimeout = \"3s\"\n\n[sync]\nmode = \"continuous\"\nmax_retry_delay = \"1s\"\n\n[[collections]]\nname = \"downloads\"\nkey = \"id\"\norder_by = \"created_at\"\nupdated_at = \"updated_at\"\nendpoint = \"/api/downloads\"\nupdates = \"put\"\n",
            dir.path().join("ferry.db").display()
        ),
    )?;
    let world = World {
        dir: dir.path().to_path_buf(),
        ferry: args.bin_dir.join("ferry"),
        receiver: args.bin_dir.join("ferry-receiver"),
        ferry_config,
        receiver_config,
        url,
    };
    let mut receiver = Some(world.start_receiver(0)?);
    // The store is made (and migrated) by a first `ferry put` before `ferry run` starts:
    // the two starting at once on a fresh store both migrated it, and one failed
    // ("duplicate column name: attempts"; reported to ferry's lead).
    world.put(&[record(args.records + 1, 1)])?;
    let mut ferry = Some(world.start_ferry(0)?);
    let mut kills = Vec::new();
    // The plan: rounds of new records and updates of earlier ones (up to 6 versions
    // each); between rounds, kill -9 one side or the other and start it again.
    let rounds = 4 * args.kills.max(1);
    let per_round = (2 * args.records).div_ceil(rounds).max(2);
    let mut version = vec![0usize; args.records];
    let mut next_new = 0;
    for round in 0..rounds {
        let mut batch = Vec::new();
        for i in 0..per_round {
            let key = if i % 2 == 0 && next_new < args.records {
                next_new += 1;
                next_new - 1
            } else if next_new > 0 {
                (round * 31 + i * 17) % next_new
            } else {
                continue;
            };
            if version[key] < 6 {
                version[key] += 1;
                batch.push(record(key, version[key]));
            }
        }
        world.put(&batch)?;
        std::thread::sleep(Duration::from_millis(150));
        if round % 4 == 1 && kills.len() < args.kills {
            if kills.len() % 2 == 0 {
                if let Some(p) = ferry.take() {
                    p.kill9();
                }
                ferry = Some(world.start_ferry(round)?);
                kills.push("ferry");
            } else {
                if let Some(p) = receiver.take() {
                    p.kill9();
                }
                receiver = Some(world.start_receiver(round)?);
                kills.push("receiver");
            }
        }
    }
    // Every record written at least once.
    let mut rest = Vec::new();
    for (k, v) in version.iter_mut().enumerate() {
        if *v == 0 {
            *v = 1;
            rest.push(record(k, 1));
        }
    }
    world.put(&rest)?;

    // Drain: ferry delivers everything within 60 s.
    let started = Instant::now();
    let mut problems;
    loop {
        let store = world.store()?;
        let rows = world.server()?;
        problems = compare(&store, &rows);
        if problems.is_empty() || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let updates: usize = version.iter().map(|v| v.saturating_sub(1)).sum();
    println!(
        "  {kind}: {} records, {updates} updates, {} kill -9 ({}), {}",
        args.records,
        kills.len(),
        kills.join(", "),
        if problems.is_empty() {
            "server state equals store state".to_string()
        } else {
            format!("{} problem(s)", problems.len())
        }
    );
    drop(ferry);
    drop(receiver);
    if !problems.is_empty() {
        // Keep the logs for a look.
        let kept = dir.keep();
        problems.push(format!("logs and state kept in {}", kept.display()));
    }
    Ok(problems)
}

/// The receiver's rows against ferry's store: one row per record, holding its fields.
fn compare(store: &BTreeMap<String, Value>, rows: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        let key = row["key"].as_str().unwrap_or("").to_string();
        *seen.entry(key.clone()).or_default() += 1;
        match store.get(&key) {
            None => problems.push(format!(
                "row {} ({key}) is no record of the store",
                row["id"]
            )),
            Some(expected) => {
                if let Value::Object(fields) = expected {
                    for (name, value) in fields {
                        if row["record"].get(name) != Some(value) {
                            problems.push(format!(
                                "{key}: {name} is {} on the server, {value} in the store",
                                row["record"]
                                    .get(name)
                                    .map_or("absent".to_string(), Value::to_string)
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
    for (key, n) in &seen {
        if *n > 1 {
            problems.push(format!("{key} stored {n} times"));
        }
    }
    for key in store.keys() {
        if !seen.contains_key(key) {
            problems.push(format!("{key} is not on the server"));
        }
    }
    problems
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("e2e: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    println!("e2e: ferry → ferry-receiver, kill -9 of both while records are written");
    let (mut passed, mut failed) = (0, 0);
    for kind in ["sqlite", "postgres"] {
        if args.only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        match one(kind, &args) {
            Ok(problems) if problems.is_empty() => passed += 1,
            Ok(problems) => {
                failed += 1;
                for p in problems.iter().take(20) {
                    println!("    {p}");
                }
            }
            Err(err) => {
                failed += 1;
                println!("  {kind}: the run failed: {err}");
            }
        }
    }
    println!("e2e: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
