//! Driving whole `ferry` processes (the benchmark's and the torture run's tools): the
//! receiver on its own thread, a plain load generator to measure the receiver's
//! ceiling, the ferry child process (spawned, signalled, reaped with its peak RSS,
//! READY=1 read from a real NOTIFY_SOCKET, sampled through /proc), and stores built
//! with SQL as another program would build them.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::receiver;

pub use crate::BoxError;

/// Starts the loopback receiver on a thread of its own (its own single-threaded
/// runtime, like `examples/receiver.rs`). It stops by itself after `idle` without a
/// connection. Returns its base URL.
pub fn start_receiver(
    idle: Duration,
    on_request: Option<receiver::OnRequest>,
) -> Result<String, BoxError> {
    start_delayed_receiver(idle, on_request, Duration::ZERO)
}

/// [`start_receiver`], whose answers each take `delay` (a WAN link).
pub fn start_delayed_receiver(
    idle: Duration,
    on_request: Option<receiver::OnRequest>,
    delay: Duration,
) -> Result<String, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    let _ = receiver::serve(listener, idle, on_request, delay).await;
                }
            });
        })?;
    Ok(url)
}

/// The receiver's ceiling: requests per second that `connections` kept-alive
/// connections of a minimal client (one thread, no HTTP library) get answered in
/// `run_for`, each sending a ~300-byte JSON POST like ferry's and reading the answer.
pub fn ceiling(url: &str, connections: usize, run_for: Duration) -> Result<f64, BoxError> {
    let addr = url.trim_start_matches("http://").to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answered = runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + run_for;
        let mut tasks = Vec::new();
        for c in 0..connections {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(&addr).await?;
                socket.set_nodelay(true)?;
                let mut answered = 0u64;
                let mut buffer = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                while tokio::time::Instant::now() < deadline {
                    let body = small_record(c as u64 * 1_000_000_000 + answered);
                    let request = format!(
                        "POST /ceiling HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                         idempotency-key: bench-{c}-{answered}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(request.as_bytes()).await?;
                    // The answer: a head, then content-length bytes.
                    loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buffer.len() >= end + 4 + length {
                                buffer.drain(..end + 4 + length);
                                break;
                            }
                        }
                        let n = socket.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(io::Error::other("the receiver closed the connection"));
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    answered += 1;
                }
                Ok::<u64, io::Error>(answered)
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.map_err(io::Error::other)??;
        }
        Ok::<u64, io::Error>(total)
    })?;
    Ok(answered as f64 / run_for.as_secs_f64())
}

/// A small record (~300 bytes of JSON), the shape of figure 1's.
pub fn small_record(i: u64) -> String {
    format!(
        r#"{{"id":{i},"date":"2026-11-22T{:02}:{:02}:{:02}Z","sensor":"capteur-{}","kind":"motion","room":"salon","value":{},"battery":87,"note":"porte d'entrée ouverte, détection confirmée par la caméra 2, enregistrement de 30 secondes","firmware":"2.4.1","rssi":-61}}"#,
        i / 3600 % 24,
        i / 60 % 60,
        i % 60,
        i % 17,
        i % 1000
    )
}

/// A ferry child process.
pub struct Ferry {
    pub child: Child,
    pub log: PathBuf,
}

/// Starts `ferry --config CONFIG ARGS…` with its output in `log`, and `env` added.
pub fn spawn_ferry(
    bin: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    log: &Path,
) -> Result<Ferry, BoxError> {
    let out = std::fs::File::create(log)?;
    let mut command = Command::new(bin);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(Ferry {
        child: command.spawn()?,
        log: log.to_path_buf(),
    })
}

/// How a reaped child ended, with its peak resident set.
pub struct Ended {
    pub code: Option<i32>,
    pub peak_rss_kib: u64,
}

impl Ferry {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a pid this process spawned and has not reaped yet.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the child, watching its peak resident set (VmHWM) every 20 ms until it
    /// ends. (The rusage of wait4 would not do: a child spawned by vfork counts the
    /// parent's pages in its ru_maxrss.)
    pub fn wait(self) -> Result<Ended, BoxError> {
        let mut peak = 0;
        loop {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) {
                if let Some(hwm) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak = peak.max(hwm);
                }
            }
            let mut status = 0;
            // SAFETY: a valid pointer to a local; the pid is our unreaped child.
            let reaped = unsafe { libc::waitpid(self.pid(), &mut status, libc::WNOHANG) };
            if reaped < 0 {
                return Err(io::Error::last_os_error().into());
            }
            if reaped > 0 {
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                return Ok(Ended {
                    code,
                    peak_rss_kib: peak,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the child's log, for an error message.
    pub fn log_tail(log: &Path) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Runs ferry to its end; an exit other than 0 is an error that shows its log.
pub fn run_ferry(
    bin: &Path,
    config: &Path,
    args: &[&str],
    log: &Path,
) -> Result<(Duration, Ended), BoxError> {
    let started = Instant::now();
    let ferry = spawn_ferry(bin, config, args, &[], log)?;
    let ended = ferry.wait()?;
    let took = started.elapsed();
    if ended.code != Some(0) {
        return Err(format!(
            "ferry {args:?} ended with {:?}; its log ({}):\n{}",
            ended.code,
            log.display(),
            Ferry::log_tail(log)
        )
        .into());
    }
    Ok((took, ended))
}

pub use crate::notify::NotifySocket;

/// What /proc says about a process at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// User plus system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Context switches of its live threads, voluntary and not: each is a wake-up.
    pub switches: u64,
    pub rss_kib: u64,
    pub threads: u64,
}

pub fn sample(pid: i32) -> Result<ProcSample, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("cannot read /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task_status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in task_status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(ProcSample {
        cpu_ticks: utime + stime,
        switches,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    })
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A folder for one figure: a ferry config in it, the store beside it.
pub struct Site {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Site {
    /// `collections` is TOML for the [[collections]] tables; `sync` for [sync].
    pub fn new(
        root: &Path,
        name: &str,
        url: &str,
        max_concurrent: usize,
        sync: &str,
        collections: &str,
    ) -> Result<Site, BoxError> {
        let remote = format!("max_concurrent = {max_concurrent}");
        Site::with_remote(root, name, url, &remote, sync, collections)
    }

    /// A site whose `[remote]` section has `remote` after its `url` (TOML lines).
    pub fn with_remote(
        root: &Path,
        name: &str,
        url: &str,
        remote: &str,
        sync: &str,
        collections: &str,
    ) -> Result<Site, BoxError> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "device_id = \"bench\"\nlog_level = \"warn\"\n\
                 [storage]\nsqlite_path = \"ferry.db\"\njson_dir = \"json\"\nbackups_dir = \"backups\"\n\
                 [remote]\nurl = \"{url}\"\n{remote}\n\
                 [sync]\n{sync}\n{collections}"
            ),
        )?;
        Ok(Site { dir, config })
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("ferry.db")
    }

    pub fn load(&self) -> Result<ferry::config::Config, BoxError> {
        Ok(ferry::config::Config::load(
            &self.config,
            &ferry::config::ProcessEnv,
        )?)
    }
}

pub const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n";

/// Fills `events` (ferry's document table, created by opening the store) with
/// `count` small records from `first` on, through SQL, as another program would;
/// with `delivered`, each has a success row in `sync_tracking` too.
pub fn fill_events(site: &Site, first: u64, count: u64, delivered: bool) -> Result<(), BoxError> {
    drop(ferry::store::open(&site.load()?)?);
    let conn = rusqlite::Connection::open(site.db())?;
    conn.execute_batch("PRAGMA synchronous = OFF; BEGIN;")?;
    {
        let mut record = conn.prepare("INSERT INTO events (key, record) VALUES (?1, ?2)")?;
        let mut tracking = conn.prepare(
            "INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status, attempts, bytes_sent)
             VALUES ('events', ?1, ?1, '2026-11-22T10:00:00.000Z', 'success', 1, 300)",
        )?;
        for i in first..first + count {
            record.execute(rusqlite::params![i as i64, small_record(i)])?;
            if delivered {
                tracking.execute([i as i64])?;
            }
        }
    }
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Arrival times of records at the receiver, by their `id` field.
pub type Arrivals = Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>;

pub fn record_arrivals(arrivals: &Arrivals) -> receiver::OnRequest {
    let arrivals = Arc::clone(arrivals);
    Arc::new(move |_, _, body| {
        let now = Instant::now();
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_u64()));
        if let (Some(id), Ok(mut map)) = (id, arrivals.lock()) {
            map.entry(id).or_insert(now);
        }
    })
}
