//! `make fleet`: many simulated boxes pushing into two ferry-receivers on one
//! PostgreSQL, speaking the contract (docs/PROTOCOL.md) with lost answers.
//!
//! fleet [--quick] [--seconds S] [--boxes N] [--batch B] [--lost P] [--pool N] [--only RUN]
//!       [--receiver PATH]
//!
//! PostgreSQL comes from FERRY_TEST_POSTGRES or libpq's PG* variables (`make fleet`
//! runs it inside `pg_virtualenv`); a fresh database is made for the run. Two release
//! receivers are started on loopback port 0 with one config; each box sends to one of
//! them, and a request whose answer is "lost" (the client drops it, at rate P) is sent
//! again, same key and body, to the *other* receiver, as a load balancer would.
//!
//! Four runs: batched and single-record at full speed, then each paced at half the
//! issue's target rate (15,000 and 1,500 records/s) to read the answer times. Each
//! prints records/s stored (over the whole run), p50/p99 answer time (of the requests
//! sent after the first second: that one holds the table's creation and each
//! connection's first statements), and what the database holds:
//! duplicates stored (rows beyond one per device and key), records missing, records
//! whose stored state is not the last one acknowledged. Every loop is bounded in time;
//! the receivers are stopped at the end (and killed if the run fails).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_devkit::rng::Rng;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    seconds: u64,
    boxes: usize,
    batch: usize,
    lost: f64,
    pool: usize,
    /// Only the runs whose name starts with this.
    only: Option<String>,
    receiver: PathBuf,
}

fn args() -> Result<Args, BoxError> {
    let default_receiver = ferry_devkit::bin::binaries_dir()?.join("ferry-receiver");
    let mut a = Args {
        seconds: 10,
        boxes: 200,
        batch: 200,
        lost: 0.10,
        pool: 8,
        only: None,
        receiver: default_receiver,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => {
                a.seconds = 2;
                a.boxes = 20;
            }
            "--seconds" => a.seconds = value()?.parse()?,
            "--boxes" => a.boxes = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--lost" => a.lost = value()?.parse()?,
            "--pool" => a.pool = value()?.parse()?,
            "--only" => a.only = Some(value()?),
            "--receiver" => a.receiver = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(a)
}

fn admin_url() -> Result<String, BoxError> {
    Ok(ferry_devkit::postgres::url_from_env().ok_or(
        "no PostgreSQL: set FERRY_TEST_POSTGRES or PGHOST, or run inside pg_virtualenv (make fleet does)",
    )?)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[start..].find('/') {
        Some(i) => &base[..start + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// A receiver process; killed when dropped.
struct Receiver {
    child: std::process::Child,
    url: String,
}

impl Receiver {
    fn start(
        binary: &PathBuf,
        config: &PathBuf,
        dir: &std::path::Path,
        n: usize,
    ) -> Result<Receiver, BoxError> {
        let addr = dir.join(format!("addr{n}"));
        let log = std::fs::File::create(dir.join(format!("receiver{n}.log")))?;
        let child = std::process::Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("run")
            .arg("--addr-file")
            .arg(&addr)
            .stderr(log)
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot start {}: {err} (make fleet builds it)",
                    binary.display()
                )
            })?;
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&addr) {
                if text.ends_with('\n') {
                    break text.trim().to_string();
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "receiver {n} did not start; see {}",
                    dir.join(format!("receiver{n}.log")).display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Receiver { child, url })
    }

    /// Resident memory now, and its peak, in KiB.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    requests: AtomicU64,
    lost: AtomicU64,
    retries: AtomicU64,
    acknowledged: AtomicU64,
    /// (device, key) → the last state acknowledged (its `seq`).
    expected: Mutex<HashMap<(String, String), u64>>,
}

#[derive(serde::Deserialize)]
struct Res {
    #[serde(default)]
    status: u16,
    id: Option<i64>,
}

#[derive(serde::Deserialize)]
struct Results {
    results: Vec<Res>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Batch,
    Single,
}

struct Run {
    name: &'static str,
    mode: Mode,
    /// Records per second for the whole fleet; `None`: as fast as it goes.
    rate: Option<f64>,
}

/// One box's life: new records, and updates of its earlier ones (1 in 10).
#[allow(clippy::too_many_arguments)] // a benchmark's knobs, passed once per box
async fn one_box(
    n: usize,
    mode: Mode,
    collection: String,
    urls: Arc<Vec<String>>,
    client: reqwest::Client,
    started: Instant,
    until: Instant,
    per_request_interval: Option<Duration>,
    batch: usize,
    lost: f64,
    tally: Arc<Tally>,
) {
    let device = format!("box-{n:04}");
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
    let mut known: Vec<(String, i64)> = Vec::new();
    let mut seq: u64 = 0;
    let mut next_key: u64 = 0;
    let mut ticker = per_request_interval.map(|d| {
        let mut t = tokio::time::interval_at(
            tokio::time::Instant::now() + d.mul_f64((n % 97) as f64 / 97.0),
            d,
        );
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let home = n % urls.len();
    let warm = started + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let count = if mode == Mode::Batch { batch } else { 1 };
        // (key, remote id if an update, seq, record)
        let mut members: Vec<(String, Option<i64>, u64, String)> = Vec::with_capacity(count);
        for _ in 0..count {
            seq += 1;
            let update = !known.is_empty() && rng.chance(0.1);
            let (key, remote) = if update {
                let (k, id) = known[rng.below(known.len() as u64) as usize].clone();
                (k, Some(id))
            } else {
                next_key += 1;
                (format!("r{next_key}"), None)
            };
            if members.iter().any(|(k, _, _, _)| *k == key) {
                continue;
            }
            let record = format!(
                "{{\"id\":\"{key}\",\"device_id\":\"{device}\",\"seq\":{seq},\"status\":\"running\",\"progress\":{},\"sensor\":{{\"temp\":20.5,\"humidity\":41}},\"note\":\"fleet benchmark record\"}}",
                seq % 100
            );
            members.push((key, remote, seq, record));
        }
        let version = |seq: u64| (1_700_000_000_000u64 + seq).to_string();
        let ikey = |key: &str, seq: u64| format!("{device}:{collection}:{key}:{}", version(seq));
        let mut attempt = 0usize;
        loop {
            if Instant::now() > until + Duration::from_secs(30) {
                return;
            }
            // A lost answer is retried at the other receiver.
            let url = &urls[(home + attempt) % urls.len()];
            // Bodies written out as text: the simulator shares the machine with what it
            // measures, so it spends as little as it can.
            let request = match mode {
                Mode::Batch => {
                    let mut body = String::with_capacity(members.len() * 300 + 64);
                    let _ = write!(
                        body,
                        "{{\"device_id\":\"{device}\",\"collection\":\"fleet\",\"records\":["
                    );
                    for (i, (key, remote, s, record)) in members.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        let op = match remote {
                            Some(id) => format!("\"op\":\"update\",\"remote_id\":{id}"),
                            None => "\"op\":\"create\"".to_string(),
                        };
                        let _ = write!(
                            body,
                            "{{\"key\":\"{key}\",{op},\"idempotency_key\":\"{}\",\"version\":\"{}\",\"record\":{record}}}",
                            ikey(key, *s),
                            version(*s)
                        );
                    }
                    body.push_str("]}");
                    client
                        .post(format!("{url}/api/{collection}/batch"))
                        .header("content-type", "application/json")
                        .header(
                            "idempotency-key",
                            format!("{device}:{collection}:batch:{seq:016x}"),
                        )
                        .body(body)
                }
                Mode::Single => {
                    let (key, remote, s, record) = &members[0];
                    let target = match remote {
                        Some(id) => client.put(format!("{url}/api/{collection}/{id}")),
                        None => client.post(format!("{url}/api/{collection}")),
                    };
                    target
                        .header("content-type", "application/json")
                        .header("idempotency-key", ikey(key, *s))
                        .body(record.clone())
                }
            };
            let sent = Instant::now();
            let result = request.send().await;
            let (status, body) = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    (status, text)
                }
                Err(_) => (0, String::new()),
            };
            let took = sent.elapsed();
            tally.requests.fetch_add(1, Ordering::Relaxed);
            // Answer times from the second second on: the first holds the table's
            // creation and each connection's first statements.
            if sent >= warm {
                if let Ok(mut l) = tally.latencies_us.lock() {
                    l.push(took.as_micros() as u64);
                }
            }
            attempt += 1;
            if status != 0 && rng.chance(lost) {
                tally.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let results: Vec<(u16, Option<i64>)> = match mode {
                Mode::Batch if status == 200 => serde_json::from_str::<Results>(&body)
                    .map(|r| r.results.into_iter().map(|r| (r.status, r.id)).collect())
                    .unwrap_or_default(),
                Mode::Single if status != 0 => {
                    let id = serde_json::from_str::<Res>(&body).ok().and_then(|r| r.id);
                    vec![(status, id)]
                }
                _ => Vec::new(),
            };
            if results.len() != members.len() {
                if std::env::var_os("FLEET_DEBUG").is_some() {
                    eprintln!(
                        "{device}: {status} {}",
                        body.chars().take(300).collect::<String>()
                    );
                }
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            // Members not acknowledged (409: in progress at the other receiver) go again.
            let mut again = Vec::new();
            for ((key, remote, s, record), (status, id)) in members.into_iter().zip(results) {
                if (200..300).contains(&status) {
                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut e) = tally.expected.lock() {
                        e.insert((device.clone(), key.clone()), s);
                    }
                    if remote.is_none() {
                        if let Some(id) = id {
                            known.push((key, id));
                        }
                    }
                } else {
                    if std::env::var_os("FLEET_DEBUG").is_some() {
                        eprintln!("{device}: member {status}");
                    }
                    again.push((key, remote, s, record));
                }
            }
            if again.is_empty() {
                break;
            }
            tally.retries.fetch_add(1, Ordering::Relaxed);
            members = again;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Figures {
    name: &'static str,
    stored: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    lost: u64,
    duplicates: i64,
    missing: u64,
    stale: u64,
}

async fn run_one(
    run: &Run,
    args: &Args,
    urls: Arc<Vec<String>>,
    db: &tokio_postgres::Client,
    client: &reqwest::Client,
) -> Result<Figures, BoxError> {
    let collection = format!(
        "fleet_{}",
        run.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let tally = Arc::new(Tally::default());
    let boxes = if run.mode == Mode::Single {
        args.boxes * 3 / 2
    } else {
        args.boxes
    };
    let per_request = run.rate.map(|rate| {
        let records = if run.mode == Mode::Batch {
            args.batch
        } else {
            1
        };
        Duration::from_secs_f64(records as f64 * boxes as f64 / rate)
    });
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for n in 0..boxes {
        tasks.push(tokio::spawn(one_box(
            n,
            run.mode,
            collection.clone(),
            Arc::clone(&urls),
            client.clone(),
            started,
            until,
            per_request,
            args.batch,
            args.lost,
            Arc::clone(&tally),
        )));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows = db
        .query_one(
            &format!("SELECT COUNT(*), COUNT(DISTINCT (device, key)) FROM \"{collection}\""),
            &[],
        )
        .await?;
    let (count, distinct): (i64, i64) = (rows.get(0), rows.get(1));
    let stored_state: HashMap<(String, String), u64> = db
        .query(
            &format!("SELECT device, key, (record->>'seq')::bigint FROM \"{collection}\""),
            &[],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as u64))
        .collect();
    let expected = tally.expected.lock().map(|e| e.clone()).unwrap_or_default();
    let mut missing = 0;
    let mut stale = 0;
    for (id, seq) in &expected {
        match stored_state.get(id) {
            None => missing += 1,
            // A newer state than the last acknowledged may be stored (its answer was
            // lost and the run ended); an older one never.
            Some(s) if s < seq => stale += 1,
            Some(_) => {}
        }
    }
    let mut lat = tally
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    let writes = tally.acknowledged.load(Ordering::Relaxed);
    Ok(Figures {
        name: run.name,
        stored: writes,
        per_sec: writes as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        requests: tally.requests.load(Ordering::Relaxed),
        lost: tally.lost.load(Ordering::Relaxed),
        duplicates: count - distinct,
        missing,
        stale,
    })
}

async fn main_async(args: Args) -> Result<bool, BoxError> {
    let admin = admin_url()?;
    let (admin_client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .map_err(|err| format!("PostgreSQL at {admin} is not reachable: {err}"))?;
    tokio::spawn(connection);
    let name = format!("ferry_fleet_{}", std::process::id());
    admin_client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = with_database(&admin, &name);
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("receiver.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\ndatabase = \"{url}\"\nlog_level = \"warn\"\nlog_target = \"stderr\"\npool_size = {}\n", args.pool),
    )?;
    let receivers = vec![
        Receiver::start(&args.receiver, &config, dir.path(), 0)?,
        Receiver::start(&args.receiver, &config, dir.path(), 1)?,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle: Vec<(u64, u64)> = receivers.iter().map(Receiver::rss).collect();
    let urls = Arc::new(receivers.iter().map(|r| r.url.clone()).collect::<Vec<_>>());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2048)
        .build()?;

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let server_version: String = db.query_one("SHOW server_version", &[]).await?.get(0);
    println!(
        "fleet: {} boxes ({} for single-record runs), batches of {}, {:.0} % answers lost, {} s per run",
        args.boxes,
        args.boxes * 3 / 2,
        args.batch,
        args.lost * 100.0,
        args.seconds
    );
    println!("machine: {cpus} CPUs ({model}), PostgreSQL {server_version}, two receivers + the fleet + PostgreSQL on this machine");
    let runs = [
        Run {
            name: "batched",
            mode: Mode::Batch,
            rate: None,
        },
        Run {
            name: "single",
            mode: Mode::Single,
            rate: None,
        },
        Run {
            name: "batched at 15000/s",
            mode: Mode::Batch,
            rate: Some(15_000.0),
        },
        Run {
            name: "single at 1500/s",
            mode: Mode::Single,
            rate: Some(1_500.0),
        },
    ];
    let mut all = Vec::new();
    for run in runs.iter().filter(|r| {
        args.only
            .as_ref()
            .is_none_or(|o| r.name.starts_with(o.as_str()))
    }) {
        let figures = run_one(run, &args, Arc::clone(&urls), &db, &client).await?;
        println!(
            "  {:<20} {:>9.0} records/s   p50 {:>7.1} ms   p99 {:>7.1} ms   duplicates {}   missing {}   stale {}",
            figures.name, figures.per_sec, figures.p50_ms, figures.p99_ms, figures.duplicates, figures.missing, figures.stale
        );
        all.push(figures);
    }
    let after: Vec<(u64, u64)> = receivers.iter().map(Receiver::rss).collect();
    println!();
    println!("| run | records/s stored | p50 answer | p99 answer | requests (answers lost) | duplicates stored | missing | stale |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for f in &all {
        println!(
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {} ({}) | {} | {} | {} |",
            f.name,
            f.per_sec,
            f.p50_ms,
            f.p99_ms,
            f.requests,
            f.lost,
            f.duplicates,
            f.missing,
            f.stale
        );
    }
    println!();
    for (i, ((rss, _), (_, peak))) in idle.iter().zip(&after).enumerate() {
        println!(
            "receiver {i}: idle RSS {:.1} MiB, peak RSS under load {:.1} MiB",
            *rss as f64 / 1024.0,
            *peak as f64 / 1024.0
        );
    }
    let total: u64 = all.iter().map(|f| f.stored).sum();
    println!("{total} records acknowledged in all");
    for r in receivers {
        r.stop();
    }
    drop(db);
    let _ = admin_client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await;
    Ok(all
        .iter()
        .all(|f| f.duplicates == 0 && f.missing == 0 && f.stale == 0))
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("fleet: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("fleet: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fleet: FAILED: a record was duplicated, lost or left stale");
            std::process::ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("fleet: {err}");
            std::process::ExitCode::from(1)
        }
    }
}
