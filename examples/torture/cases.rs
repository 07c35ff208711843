//! The torture cases. Each one drives the ferry binary, counts into the `Tally`, and
//! records a failed check rather than stopping, so one run shows everything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::config::{Config, ProcessEnv};
use ferry::store::{self, Key, Record, Status, Tracking};
use serde_json::json;

use crate::server::{every_fault, Fault, Faults, TestServer};
use crate::{Run, Tally};
use ferry_devkit::harness::{spawn_ferry, BoxError, Ferry};
use ferry_devkit::rng::Rng;

const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n\
     [[collections]]\nname = \"jobs\"\nkey = \"id\"\nupdated_at = \"updated_at\"\n\
     endpoint = \"/api/jobs\"\nupdates = \"put\"\n";

/// How many download jobs a kill loop's writer keeps moving.
const JOBS: u64 = 40;

/// Writes `dir/ferry.toml` for `backend`, with the state beside it.
fn config(
    dir: &Path,
    backend: &str,
    url: &str,
    remote: &str,
    sync: &str,
) -> Result<PathBuf, BoxError> {
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"torture\"\nlog_level = \"info\"\n\
             [storage]\nbackend = \"{backend}\"\nsqlite_path = \"state/ferry.db\"\njson_dir = \"state/json\"\nbackups_dir = \"state/backups\"\n\
             [remote]\nurl = \"{url}\"\ntimeout = \"1s\"\nmax_concurrent = 4\n{remote}\n\
             [sync]\nmax_retry_delay = \"2s\"\n{sync}\n{EVENTS}"
        ),
    )?;
    std::fs::create_dir_all(dir.join("state"))?;
    Ok(path)
}

fn load(path: &Path) -> Result<Config, BoxError> {
    Ok(Config::load(path, &ProcessEnv)?)
}

fn record(i: u64) -> Result<Record, BoxError> {
    Ok(serde_json::from_value(json!({
        "id": i, "date": format!("2026-11-22T10:{:02}:{:02}Z", i / 60 % 60, i % 60),
        "sensor": format!("capteur-{}", i % 7), "value": i % 1000,
    }))?)
}

/// Runs a ferry command to its end (bounded: killed after `limit`).
fn ferry(run: &Run, config: &Path, args: &[&str], limit: Duration) -> Result<Output, BoxError> {
    let mut child = Command::new(&run.ferry)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            return Err(format!(
                "ferry {args:?} did not finish within {limit:?}; it said:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Delivers everything still undelivered: `retry` (no waiting out backoff) then
/// `sync --once`, until it exits 0.
fn deliver_rest(run: &Run, config: &Path) -> Result<bool, BoxError> {
    for _ in 0..10 {
        ferry(run, config, &["retry"], Duration::from_secs(60))?;
        let out = ferry(run, config, &["sync", "--once"], Duration::from_secs(300))?;
        if out.status.code() == Some(0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A download job as the writer leaves it at `step`: its progress moves, and so does
/// its `updated_at`.
fn job(id: u64, step: u64) -> Result<Record, BoxError> {
    Ok(serde_json::from_value(json!({
        "id": format!("job-{id}"), "progress": step % 101,
        "updated_at": format!("2026-11-22T10:00:00.000Z#{step:09}"),
    }))?)
}

/// Checks the jobs: each on the server once (per the PUTs it got), in the state the
/// store holds now.
fn account_jobs(
    tally: &mut Tally,
    server: &TestServer,
    config: &Path,
    case: &str,
) -> Result<(), BoxError> {
    let mut store = store::open(&load(config)?)?;
    let jobs = store.list("jobs", None, 100_000)?;
    let rows = server.rows("/api/jobs");
    let (mut lost, mut duplicated, mut stale) = (0u64, 0u64, 0u64);
    for job in &jobs {
        let id = job.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let held: Vec<_> = rows.iter().filter(|(key, _)| key == id).collect();
        match held.as_slice() {
            [] => lost += 1,
            [(_, body)] if body.get("progress") == job.get("progress") => {}
            [_] => stale += 1,
            _ => duplicated += held.len() as u64 - 1,
        }
    }
    println!(
        "  {case}: {} jobs, {lost} lost, {duplicated} duplicated, {stale} not in their latest state",
        jobs.len()
    );
    tally.written += jobs.len() as u64;
    tally.delivered += jobs.len() as u64 - lost;
    tally.lost += lost;
    tally.duplicated += duplicated;
    tally.stale += stale;
    Ok(())
}

/// Counts what the server has of ids `0..written`.
fn account(tally: &mut Tally, server: &TestServer, written: u64, case: &str) {
    let keys = server.keys("/api/events");
    let lost = (0..written)
        .filter(|i| !keys.contains(&i.to_string()))
        .count() as u64;
    let duplicated = server.duplicates() as u64;
    println!(
        "  {case}: {written} written, {} delivered, {lost} lost, {duplicated} duplicated",
        keys.len()
    );
    tally.written += written;
    tally.delivered += keys.len() as u64;
    tally.lost += lost;
    tally.duplicated += duplicated;
    tally.faults_from(server);
}

/// Another program writing records while ferry runs: SQLite rows by SQL, or JSON
/// records through the JSON files' lock protocol. `gate` pauses it (crash snapshots).
struct Writer {
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    gate: Arc<Mutex<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Writer {
    /// `jobs`: move download jobs too.
    fn start(config: &Path, backend: &str, first: u64, jobs: bool) -> Result<Writer, BoxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first));
        let gate = Arc::new(Mutex::new(()));
        let config = load(config)?;
        let sqlite = backend == "sqlite";
        let (stop2, next2, gate2) = (Arc::clone(&stop), Arc::clone(&next), Arc::clone(&gate));
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let mut jitter = Rng::new(first + 7);
            let mut step = 0u64;
            let conn = if sqlite {
                let conn = rusqlite::Connection::open(&config.storage.sqlite_path)
                    .map_err(|e| e.to_string())?;
                conn.busy_timeout(Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                Some(conn)
            } else {
                None
            };
            let mut json_store = if sqlite {
                None
            } else {
                Some(store::open(&config).map_err(|e| e.to_string())?)
            };
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(jitter.range(5, 30)));
                let _paused = gate2.lock().map_err(|_| "gate poisoned")?;
                let from = next2.load(Ordering::Relaxed);
                let count = jitter.range(1, 6);
                // Now and then, download jobs move on instead: mutable records,
                // their progress changing while ferry is killed around them.
                step += 1;
                let moved: Vec<Record> = if jobs && step.is_multiple_of(2) {
                    (0..jitter.range(1, 4))
                        .map(|_| job(jitter.range(0, JOBS), step))
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?
                } else {
                    Vec::new()
                };
                let written = if let Some(conn) = &conn {
                    (|| -> Result<(), BoxError> {
                        let tx = conn.unchecked_transaction()?;
                        for i in from..from + count {
                            tx.execute(
                                "INSERT INTO events (key, record) VALUES (?1, ?2)",
                                rusqlite::params![i as i64, serde_json::to_string(&record(i)?)?],
                            )?;
                        }
                        for job in &moved {
                            tx.execute(
                                "INSERT INTO jobs (key, record) VALUES (?1, ?2)
                                 ON CONFLICT (key) DO UPDATE SET record = excluded.record",
                                rusqlite::params![
                                    job.get("id").and_then(|v| v.as_str()),
                                    serde_json::to_string(job)?
                                ],
                            )?;
                        }
                        tx.commit()?;
                        Ok(())
                    })()
                } else if let Some(store) = json_store.as_mut() {
                    (|| -> Result<(), BoxError> {
                        let records = (from..from + count)
                            .map(record)
                            .collect::<Result<Vec<_>, _>>()?;
                        store.put_many("events", records)?;
                        if !moved.is_empty() {
                            store.put_many("jobs", moved.clone())?;
                        }
                        Ok(())
                    })()
                } else {
                    Ok(())
                };
                match written {
                    Ok(()) => next2.store(from + count, Ordering::Relaxed),
                    // A full disk: this write did not happen; the writer tries later.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            Ok(())
        });
        Ok(Writer {
            stop,
            next,
            gate,
            thread: Some(thread),
        })
    }

    /// Stops the writer; returns the ids written: `first..returned`.
    fn finish(mut self) -> Result<u64, BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| "the writer panicked")??;
        }
        Ok(self.next.load(Ordering::Relaxed))
    }
}

/// `kill -9` of `ferry run` at random moments while records are written and the
/// server fails 10–30 % of requests in every way it knows.
pub fn kill_loop(run: &Run, backend: &str, tally: &mut Tally) -> Result<(), BoxError> {
    println!("kill -9 of `ferry run`, {backend}: {} kills", run.kills);
    let dir = run.dir(&format!("kill-{backend}"))?;
    let server = TestServer::start(Faults {
        rate: 0.2,
        kinds: every_fault(),
        hang_for: Duration::from_secs(2),
        ..Faults::default()
    });
    let config = config(&dir, backend, &server.url, "", "mode = \"continuous\"")?;
    drop(store::open(&load(&config)?)?);
    let writer = Writer::start(&config, backend, 0, true)?;
    let mut jitter = Rng::new(backend.len() as u64 * 31);
    for k in 0..run.kills {
        if k % 10 == 0 {
            let rate = jitter.range(10, 31) as f64 / 100.0;
            server.set(|f| f.rate = rate);
        }
        let child = spawn_ferry(&run.ferry, &config, &["run"], &[], &dir.join("ferry.log"))?;
        std::thread::sleep(Duration::from_millis(jitter.range(30, 500)));
        child.signal(libc::SIGKILL);
        child.wait()?;
        tally.kill(&format!(
            "`ferry run` ({backend}), while writing, 10–30 % faults"
        ));
    }
    let written = writer.finish()?;
    server.set(|f| f.rate = 0.0);
    let done = deliver_rest(run, &config)?;
    tally.check(
        done,
        format!("{backend}: everything delivered after the kills"),
    );
    account(tally, &server, written, &format!("kill loop, {backend}"));
    account_jobs(
        tally,
        &server,
        &config,
        &format!("kill loop, {backend}, jobs"),
    )?;
    Ok(())
}

/// `kill -9` during a start-up migration (JSON → SQLite), repeatedly on the same
/// half-migrated state; then one start to the end; every record and tracking row
/// must be there.
pub fn kill_migration(run: &Run, tally: &mut Tally) -> Result<(), BoxError> {
    let count: u64 = if run.quick { 2_000 } else { 20_000 };
    let kills = if run.quick { 3 } else { 30 };
    println!("kill -9 during the start-up migration of {count} records: {kills} kills");
    let dir = run.dir("kill-migration")?;
    let json_config = config(&dir, "json", "http://127.0.0.1:9", "", "")?;
    {
        let mut json_store = store::open(&load(&json_config)?)?;
        json_store.put_many(
            "events",
            (0..count).map(record).collect::<Result<Vec<_>, _>>()?,
        )?;
        let tracking: Vec<Tracking> = (0..count)
            .step_by(2)
            .map(|i| {
                let mut row = Tracking::new("events", Key::Int(i as i64), 1_700_000_000_000);
                row.status = Status::Success;
                row.remote_id = Some(Key::Int(i as i64 + 1));
                row
            })
            .collect();
        json_store.write_tracking(&tracking)?;
    }
    let sqlite_config = config(&dir, "sqlite", "http://127.0.0.1:9", "", "")?;
    let mut jitter = Rng::new(99);
    let upper = if run.quick { 300 } else { 1500 };
    for _ in 0..kills {
        let child = spawn_ferry(
            &run.ferry,
            &sqlite_config,
            &["run"],
            &[],
            &dir.join("ferry.log"),
        )?;
        std::thread::sleep(Duration::from_millis(jitter.range(5, upper)));
        child.signal(libc::SIGKILL);
        child.wait()?;
        tally.kill("start-up migration JSON → SQLite");
    }
    let out = ferry(run, &sqlite_config, &["migrate"], Duration::from_secs(120))?;
    tally.check(
        out.status.success(),
        format!(
            "migrate after the kills: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let mut json_config = load(&sqlite_config)?;
    json_config.storage.backend = ferry::config::Backend::Json;
    let mut json_store = store::open(&json_config)?;
    let mut sqlite_store = store::open(&load(&sqlite_config)?)?;
    let mut missing = 0;
    for i in 0..count {
        let key = Key::Int(i as i64);
        if json_store.get("events", &key)? != sqlite_store.get("events", &key)? {
            missing += 1;
        }
    }
    let delivered = sqlite_store.summary("events")?.counts.success;
    tally.check(
        missing == 0,
        format!("migration: {missing} of {count} records differ after the kills"),
    );
    tally.check(
        delivered == count.div_ceil(2),
        format!(
            "migration: {delivered} tracking rows say delivered, {} expected",
            count.div_ceil(2)
        ),
    );
    tally.lost += missing;
    println!("  {count} records, {missing} lost or changed, {delivered} delivered rows kept");
    Ok(())
}

/// `kill -9` during `ferry backup`: the store stays sound, and a backup file that
/// exists is whole.
pub fn kill_backup(run: &Run, tally: &mut Tally) -> Result<(), BoxError> {
    let count: u64 = if run.quick { 10_000 } else { 200_000 };
    let kills = if run.quick { 3 } else { 30 };
    println!("kill -9 during `ferry backup` of {count} records: {kills} kills");
    let dir = run.dir("kill-backup")?;
    let config = config(&dir, "sqlite", "http://127.0.0.1:9", "", "")?;
    drop(store::open(&load(&config)?)?);
    {
        let conn = rusqlite::Connection::open(dir.join("state/ferry.db"))?;
        conn.execute_batch("BEGIN")?;
        for i in 0..count {
            conn.execute(
                "INSERT INTO events (key, record) VALUES (?1, ?2)",
                rusqlite::params![i as i64, serde_json::to_string(&record(i)?)?],
            )?;
        }
        conn.execute_batch("COMMIT")?;
    }
    let backups = run.dir("kill-backup/copies")?;
    let started = Instant::now();
    let out = ferry(
        run,
        &config,
        &["backup", &backups.join("whole.db").to_string_lossy()],
        Duration::from_secs(120),
    )?;
    tally.check(out.status.success(), "an uninterrupted backup");
    let whole = started.elapsed().as_millis() as u64;
    let mut jitter = Rng::new(5);
    for k in 0..kills {
        let dest = backups.join(format!("b{k}.db"));
        let child = spawn_ferry(
            &run.ferry,
            &config,
            &["backup", &dest.to_string_lossy()],
            &[],
            &dir.join("ferry.log"),
        )?;
        std::thread::sleep(Duration::from_millis(jitter.range(1, whole.max(2))));
        child.signal(libc::SIGKILL);
        child.wait()?;
        tally.kill("`ferry backup`");
    }
    let out = ferry(run, &config, &["check"], Duration::from_secs(120))?;
    tally.check(
        out.status.success(),
        format!(
            "the store after backups were killed: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    );
    // Each backup removes what killed ones left; one more leaves none.
    let out = ferry(
        run,
        &config,
        &["backup", &backups.join("last.db").to_string_lossy()],
        Duration::from_secs(120),
    )?;
    tally.check(out.status.success(), "a backup after the killed ones");
    let (mut whole_files, mut notes, mut leftovers) = (0, 0, Vec::new());
    for entry in std::fs::read_dir(&backups)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".db.txt") {
            notes += 1;
            continue;
        }
        if !name.ends_with(".db") || name.starts_with('.') {
            leftovers.push(name);
            continue;
        }
        let sound = rusqlite::Connection::open(&path).and_then(|c| {
            let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            let rows: i64 = c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
            Ok(check == "ok" && rows == count as i64)
        });
        tally.check(matches!(sound, Ok(true)), format!("backup {name} is whole"));
        whole_files += 1;
    }
    tally.check(
        leftovers.is_empty(),
        format!("killed backups left files behind: {leftovers:?}"),
    );
    println!(
        "  {whole_files} backup files, all checked whole, {notes} notes; {} files left by killed backups",
        leftovers.len()
    );
    Ok(())
}

/// Crash snapshots: ferry (SIGSTOP) and the writer (its gate) frozen at a random
/// instant while records flow through a faulty server; the store's files copied as
/// they are, as a crash would leave them; then ferry started on each copy against
/// the same idempotent server.
pub fn crash_snapshots(run: &Run, backend: &str, tally: &mut Tally) -> Result<(), BoxError> {
    let snapshots = if run.quick { 3 } else { 20 };
    println!("crash snapshots, {backend}: {snapshots}");
    let dir = run.dir(&format!("snapshot-{backend}"))?;
    let server = TestServer::start(Faults {
        rate: 0.2,
        kinds: every_fault(),
        hang_for: Duration::from_secs(2),
        ..Faults::default()
    });
    let config = config(&dir, backend, &server.url, "", "mode = \"continuous\"")?;
    drop(store::open(&load(&config)?)?);
    let writer = Writer::start(&config, backend, 0, false)?;
    let child = spawn_ferry(&run.ferry, &config, &["run"], &[], &dir.join("ferry.log"))?;
    let mut jitter = Rng::new(77);
    let mut copies = Vec::new();
    for s in 0..snapshots {
        std::thread::sleep(Duration::from_millis(jitter.range(100, 700)));
        let gate = Arc::clone(&writer.gate);
        let paused = gate.lock().map_err(|_| "gate poisoned")?;
        child.signal(libc::SIGSTOP);
        let copy = run.dir(&format!("snapshot-{backend}/copy{s}"))?;
        copy_tree(&dir.join("state"), &copy.join("state"))?;
        child.signal(libc::SIGCONT);
        drop(paused);
        config_copy(&config, &copy)?;
        copies.push(copy);
    }
    child.signal(libc::SIGKILL);
    child.wait()?;
    let written = writer.finish()?;
    server.set(|f| f.rate = 0.0);
    let done = deliver_rest(run, &config)?;
    tally.check(
        done,
        format!("{backend}: the original store delivered everything"),
    );
    for copy in &copies {
        let config = copy.join("ferry.toml");
        let check = ferry(run, &config, &["check"], Duration::from_secs(60))?;
        tally.check(
            check.status.success(),
            format!(
                "{}: the crash copy opens and checks sound: {}",
                copy.display(),
                String::from_utf8_lossy(&check.stderr)
            ),
        );
        let done = deliver_rest(run, &config)?;
        tally.check(
            done,
            format!("{}: ferry on the crash copy delivers", copy.display()),
        );
        tally.kill(&format!("crash snapshot ({backend})"));
    }
    account(
        tally,
        &server,
        written,
        &format!("crash snapshots, {backend}"),
    );
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn config_copy(config: &Path, copy: &Path) -> Result<(), BoxError> {
    std::fs::copy(config, copy.join("ferry.toml"))?;
    Ok(())
}

/// The store on a small tmpfs that fills up: ferry says so, keeps running, loses
/// nothing, and carries on when space returns.
pub fn full_disk(run: &Run, tally: &mut Tally) -> Result<(), BoxError> {
    for backend in ["sqlite", "json"] {
        println!("full disk, {backend}");
        let dir = run.dir(&format!("full-{backend}"))?;
        let mount = dir.join("state");
        std::fs::create_dir_all(&mount)?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&mount)
            .status();
        if !matches!(mounted, Ok(s) if s.success()) {
            tally.check(
                false,
                "full disk: cannot mount a tmpfs here (needs root); case not run",
            );
            return Ok(());
        }
        let result = full_disk_on(run, backend, &dir, tally);
        let _ = Command::new("umount").arg(&mount).status();
        result?;
    }
    Ok(())
}

fn full_disk_on(run: &Run, backend: &str, dir: &Path, tally: &mut Tally) -> Result<(), BoxError> {
    let server = TestServer::start(Faults {
        delay: Duration::from_millis(5),
        ..Faults::default()
    });
    let config = config(dir, backend, &server.url, "", "mode = \"continuous\"")?;
    drop(store::open(&load(&config)?)?);
    let writer = Writer::start(&config, backend, 0, false)?;
    let log = dir.join("ferry.log");
    let child = spawn_ferry(&run.ferry, &config, &["run"], &[], &log)?;
    std::thread::sleep(Duration::from_secs(1));
    // ferry learns that the disk is full only when it writes: when it had delivered
    // everything before the disk filled (the writer's inserts fail from then on), it
    // had nothing to write and nothing to say, and this check failed now and then.
    // So records are left waiting: the server refuses them from just before the
    // fill until space returns, and each of ferry's retries writes its tracking.
    server.set(|f| {
        f.rate = 1.0;
        f.kinds = vec![Fault::Status(503)];
    });
    std::thread::sleep(Duration::from_millis(300));
    // Fill the file system.
    let filler = dir.join("state/filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler)?;
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    std::thread::sleep(Duration::from_secs(if run.quick { 3 } else { 8 }));
    let alive = child.child.id() > 0
        && std::fs::read_to_string(format!("/proc/{}/stat", child.pid()))
            .is_ok_and(|s| !s.contains(") Z"));
    tally.check(
        alive,
        format!("{backend}: ferry keeps running on a full disk"),
    );
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    // What the user must read: the disk is full, where, and that nothing was lost.
    let says_full = |l: &&str| {
        l.contains("the disk is full")
            && l.contains("nothing was lost")
            && l.contains(&*dir.join("state").to_string_lossy())
    };
    let clear = said.lines().any(|l| says_full(&l));
    tally.check(
        clear,
        format!(
            "{backend}: ferry says the disk is full; its log:\n{}",
            Ferry::log_tail(&log)
        ),
    );
    if let Some(line) = said.lines().find(says_full) {
        println!("  ferry said: {}", line.trim());
    }
    std::fs::remove_file(&filler)?;
    server.set(|f| f.rate = 0.0);
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.finish()?;
    let caught_up = server.wait_for(Duration::from_secs(60), |s| {
        s.keys("/api/events").len() as u64 >= written
    });
    tally.check(
        caught_up,
        format!("{backend}: ferry carries on when space returns"),
    );
    child.signal(libc::SIGTERM);
    let ended = child.wait()?;
    tally.check(
        ended.code == Some(0),
        format!("{backend}: ferry stops cleanly after the full disk"),
    );
    account(tally, &server, written, &format!("full disk, {backend}"));
    tally.kill(&format!("full disk ({backend}): ran through it"));
    Ok(())
}

/// One bad input: `check` says whether ferry handled it; its text goes in the table.
fn bad(tally: &mut Tally, what: &str, result: Result<String, String>) {
    if let Err(problem) = &result {
        println!("  FAILED: {what}: {problem}");
    }
    tally.bad_inputs.push((what.to_string(), result));
}

/// The first line of what ferry said on stderr.
fn said(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("ferry:"))
        .or_else(|| text.lines().last())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// ferry refused with an exit code other than 0, a message naming `needle`, and
/// `file` unchanged.
fn refused(out: &Output, needle: &str, file: &Path, before: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let after = std::fs::read(file).map_err(|e| e.to_string())?;
    if out.status.success() {
        return Err(format!("accepted (exit 0): {text}"));
    }
    if !text.contains(needle) {
        return Err(format!("the message does not name {needle:?}: {text}"));
    }
    if after != before {
        return Err("the file was changed".into());
    }
    Ok(format!("exit {:?}: {}", out.status.code(), said(out)))
}

pub fn bad_input(run: &Run, tally: &mut Tally) -> Result<(), BoxError> {
    println!("bad input");
    let limit = Duration::from_secs(60);
    // Damaged JSON collection files.
    let json_cases: [(&str, &[u8]); 4] = [
        (
            "a truncated JSON collection file",
            b"{\"1\": {\"id\": 1, \"value\": 3}, \"2\": {\"id\": 2, \"val",
        ),
        (
            "a JSON collection file that is not an object",
            b"[1, 2, 3]\n",
        ),
        (
            "invalid UTF-8 in a JSON collection file",
            b"{\"1\": {\"id\": 1, \"name\": \"caf\xe9\xff\"}}\n",
        ),
        (
            "a record whose key is not its own in a JSON collection file",
            b"{\"1\": {\"id\": 2, \"value\": 3}}\n",
        ),
    ];
    for (n, (what, bytes)) in json_cases.iter().enumerate() {
        let dir = run.dir(&format!("bad-json-{n}"))?;
        let config = config(&dir, "json", "http://127.0.0.1:9", "", "")?;
        let file = dir.join("state/json/events.json");
        std::fs::create_dir_all(dir.join("state/json"))?;
        std::fs::write(&file, bytes)?;
        let out = ferry(run, &config, &["sync", "--once"], limit)?;
        bad(tally, what, refused(&out, "events.json", &file, bytes));
    }
    // A file that is not a database.
    {
        let dir = run.dir("bad-sqlite")?;
        let config = config(&dir, "sqlite", "http://127.0.0.1:9", "", "")?;
        let file = dir.join("state/ferry.db");
        let bytes = b"these are the holiday photos, not a database\n".repeat(200);
        std::fs::write(&file, &bytes)?;
        let out = ferry(run, &config, &["sync", "--once"], limit)?;
        bad(
            tally,
            "a store file that is not an SQLite database",
            refused(&out, "ferry.db", &file, &bytes),
        );
    }
    // Records: no key; 50 MiB.
    {
        let server = TestServer::start(Faults {
            max_body: Some(8 << 20),
            ..Faults::default()
        });
        let dir = run.dir("bad-records")?;
        let config = config(&dir, "sqlite", &server.url, "", "")?;
        let put = |input: &[u8]| -> Result<Output, BoxError> {
            use std::io::Write;
            let mut child = Command::new(&run.ferry)
                .arg("--config")
                .arg(&config)
                .args(["put", "events"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(input)?;
            }
            Ok(child.wait_with_output()?)
        };
        let out = put(b"{\"name\": \"no key here\"}\n")?;
        bad(
            tally,
            "a record without its key (ferry put)",
            if out.status.success() {
                Err("accepted".into())
            } else if said(&out).contains("id") {
                Ok(format!("exit {:?}: {}", out.status.code(), said(&out)))
            } else {
                Err(format!("unclear: {}", said(&out)))
            },
        );
        let big = format!("{{\"id\": 1, \"blob\": \"{}\"}}\n", "x".repeat(50 << 20));
        let out = put(big.as_bytes())?;
        let small = put(b"{\"id\": 2, \"value\": 1}\n")?;
        let sync = ferry(run, &config, &["sync", "--once"], limit)?;
        let stats = ferry(run, &config, &["diagnose"], limit)?;
        let kept = store::open(&load(&config)?)?
            .get("events", &Key::Int(1))?
            .is_some();
        let delivered_small = server.keys("/api/events").contains("2");
        bad(
            tally,
            "a 50 MiB record (the server takes 8 MiB at most)",
            if !out.status.success() || !small.status.success() {
                Err(format!("put failed: {}", said(&out)))
            } else if !kept {
                Err("the big record is gone from the store".into())
            } else if !delivered_small {
                Err("the small record was held back".into())
            } else if sync.status.code() != Some(75) {
                Err(format!(
                    "sync --once ended {:?}, expected 75",
                    sync.status.code()
                ))
            } else {
                Ok(format!(
                    "stored, the others delivered, it is failed: {}",
                    String::from_utf8_lossy(&stats.stdout)
                        .lines()
                        .find(|l| l.contains("413"))
                        .unwrap_or("(no 413 line in diagnose)")
                        .trim()
                ))
            },
        );
    }
    // Configs with mistakes: each is exit 78 with file:line.
    let configs: [(&str, &str); 9] = [
        ("an unknown key", "[storage]\nbakend = \"json\"\n"),
        ("a wrong type", "[remote]\nmax_concurrent = \"four\"\n"),
        ("a bad duration", "[remote]\ntimeout = \"ten seconds\"\n"),
        ("a bad URL", "[remote]\nurl = \"192.168.1.100:8000\"\n"),
        ("an unknown backend", "[storage]\nbackend = \"postgres\"\n"),
        ("a collection without endpoint", "[[collections]]\nname = \"events\"\n"),
        ("two collections with one name", "[[collections]]\nname = \"a\"\nendpoint = \"/a\"\n[[collections]]\nname = \"a\"\nendpoint = \"/b\"\n"),
        ("broken TOML", "[storage\nbackend = \"json\"\n"),
        ("an unknown section", "[remotes]\nurl = \"http://x\"\n"),
    ];
    for (n, (what, text)) in configs.iter().enumerate() {
        let dir = run.dir(&format!("bad-config-{n}"))?;
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text)?;
        let out = ferry(run, &path, &["config", "check"], limit)?;
        let message = said(&out);
        bad(
            tally,
            &format!("a config with {what}"),
            if out.status.code() != Some(78) {
                Err(format!(
                    "exit {:?}, expected 78: {message}",
                    out.status.code()
                ))
            } else if !message.contains("ferry.toml:") {
                Err(format!("no file:line: {message}"))
            } else {
                Ok(message)
            },
        );
    }
    // Hostile servers: a pass ends in bounded time and memory, the record stays
    // pending, and is delivered once the server behaves.
    for (what, fault) in [
        ("a server that answers garbage", Fault::Garbage),
        ("a redirect loop", Fault::Redirect),
        ("a 10 GB response body", Fault::HugeBody),
        ("a server that trickles one byte a second", Fault::Trickle),
    ] {
        let server = TestServer::start(Faults {
            rate: 1.0,
            kinds: vec![fault.clone()],
            ..Faults::default()
        });
        let dir = run.dir(&format!("hostile-{}", what.len()))?;
        let config = config(&dir, "sqlite", &server.url, "", "")?;
        store::open(&load(&config)?)?.put("events", record(1)?)?;
        let started = Instant::now();
        let child = spawn_ferry(
            &run.ferry,
            &config,
            &["sync", "--once"],
            &[],
            &dir.join("ferry.log"),
        )?;
        let ended = child.wait()?;
        let took = started.elapsed();
        let log = Ferry::log_tail(&dir.join("ferry.log"));
        server.set(|f| f.rate = 0.0);
        let healed = deliver_rest(run, &config)?;
        let once = server.keys("/api/events").contains("1") && server.duplicates() == 0;
        let peak = ended.peak_rss_kib / 1024;
        tally.faults_from(&server);
        // The huge answer comes with a 201: the server took the record.
        let expected = if fault == Fault::HugeBody { 0 } else { 75 };
        bad(
            tally,
            what,
            if ended.code != Some(expected) {
                Err(format!(
                    "sync --once ended {:?}, expected {expected}: {log}",
                    ended.code
                ))
            } else if took > Duration::from_secs(30) || peak > 64 {
                Err(format!("took {took:?}, peak RSS {peak} MiB"))
            } else if !(healed && once) {
                Err("not delivered exactly once after the server healed".into())
            } else {
                let line = log
                    .lines()
                    .rev()
                    .find(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("retry"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Ok(format!(
                    "{} after {:.1} s, peak RSS {peak} MiB, delivered once; ferry said: {line}",
                    if expected == 0 {
                        "delivered"
                    } else {
                        "pending"
                    },
                    took.as_secs_f64()
                ))
            },
        );
    }
    Ok(())
}
