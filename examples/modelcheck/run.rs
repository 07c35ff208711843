//! One scenario, run: the server model, the other program's writes, the ferry
//! process and what happens to it, the drain, and the check. Everything that
//! happened goes into the history, for the report.

use ferry_devkit::notify::NotifySocket;
use std::collections::{BTreeMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::check::{self, Finding, Kind, Tally};
use crate::model::{next_stamp, Builder, CollModel, Content, Key, Rec};
use crate::rng::Rng;
use crate::scenario::{
    Backend, Clock, ConfigChange, Event, FerryConf, Scenario, SwitchHow, WriteOp,
};
use crate::server::{KillArm, ServerModel};
use crate::store::{self, Writer};
use crate::BoxError;

/// How long ferry gets to say READY=1 after a start or a reload.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// How long ferry gets to exit after SIGTERM (its grace is 10 s, plus the tracking
/// write).
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// How long a command (`retry`, `reset-tracking`, `stats`) may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);
/// How long `ferry run` gets, after the last write and with faults off, to deliver
/// everything: a second for the update throttle, retries capped at
/// `max_retry_delay`, a probe of a paused collection, and slack for a loaded machine.
const DRAIN_BUDGET: Duration = Duration::from_secs(10);
/// A key deleted and written again is a new record when ferry ran, ready, for at
/// least this long in between: it looks within about a second of another process's
/// write (README "Delivery"), so this leaves it twice that.
pub const SEEN_GONE_MS: u64 = 3000;

pub struct Options {
    pub ferry: PathBuf,
    /// Where to leave the run's folder (ferry's logs, the store) when it fails.
    pub keep: Option<PathBuf>,
}

/// What one run counted, for the table.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub writes: u64,
    pub process_events: u64,
    pub kill9: u64,
    pub kill_on_request: u64,
    pub term: u64,
    pub hup: u64,
    pub switches: u64,
    pub retries: u64,
    pub resets: u64,
    pub starts: u64,
    pub requests: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub incarnations: u64,
    /// Quiet gaps in the plan.
    pub quiet: u64,
    /// Keys written again after ferry ran through a gap since the delete (a row of
    /// their own required), and without (either outcome accepted).
    pub reused_seen: u64,
    pub reused_unseen: u64,
    pub tally: Tally,
}

pub struct Outcome {
    pub seed: u64,
    pub findings: Vec<Finding>,
    /// (ms since the start, what happened), the plan's events and the server's log
    /// merged.
    pub history: Vec<(u64, String)>,
    pub counts: Counts,
    pub took: Duration,
    /// `ferry stats --json` and `ferry diagnose` at the end, and ferry's log tail.
    pub notes: Vec<(String, String)>,
    /// The run's folder, kept when asked.
    pub kept: Option<PathBuf>,
}

impl Outcome {
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.findings.iter().map(|f| f.kind).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    pub fn failed(&self) -> bool {
        !self.findings.is_empty()
    }
}

struct Driver<'a> {
    sc: &'a Scenario,
    opts: &'a Options,
    dir: PathBuf,
    config: PathBuf,
    db: PathBuf,
    json_dir: PathBuf,
    notify: NotifySocket,
    server: ServerModel,
    kill: Arc<Mutex<KillArm>>,
    ferry: Option<Child>,
    backend: Backend,
    conf: FerryConf,
    colls: Vec<CollModel>,
    rng: Rng,
    /// The model's "now", seconds after 10:00:00.
    now: i64,
    writer: Writer,
    history: Vec<(u64, String)>,
    findings: Vec<Finding>,
    reported: HashSet<String>,
    counts: Counts,
    started: Instant,
    /// `reset-tracking` runs: collection, and the last request seq before it started
    /// and when it had ended.
    resets: Vec<(usize, u64, u64)>,
    /// A start failed for good: the rest of the plan is skipped.
    broken: bool,
    notes: Vec<(String, String)>,
    /// Since when `ferry run` has been up and ready (ms), if it is.
    ready_since: Option<u64>,
    /// Stretches in which it was up and ready, `(from, to)` ms.
    ready_spans: Vec<(u64, u64)>,
}

/// Runs `sc` with the events `keep` selects (all when `None`).
pub fn run(sc: &Scenario, keep: Option<&[bool]>, opts: &Options) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let root = tempfile::Builder::new().prefix("modelcheck-").tempdir()?;
    let dir = root.path().to_path_buf();
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("json"))?;
    let notify = NotifySocket::bind(dir.join("notify.sock"))?;
    let kill = Arc::new(Mutex::new(KillArm::default()));
    let sig_fields = sc
        .specs
        .iter()
        .map(|s| (s.endpoint().to_string(), s.sig_field()))
        .collect();
    let server = ServerModel::start(sc.faults.clone(), sig_fields, Arc::clone(&kill), started)?;
    let mut driver = Driver {
        sc,
        opts,
        config: dir.join("ferry.toml"),
        db: state.join("ferry.db"),
        json_dir: state.join("json"),
        writer: Writer::new(state.join("ferry.db"), state.join("json")),
        dir,
        notify,
        server,
        kill,
        ferry: None,
        backend: sc.backend,
        conf: sc.ferry.clone(),
        colls: sc.specs.iter().cloned().map(CollModel::new).collect(),
        rng: Rng::new(sc.seed ^ 0x5EED_0FC0_17E7),
        now: 0,
        history: Vec::new(),
        findings: Vec::new(),
        reported: HashSet::new(),
        counts: Counts::default(),
        started,
        resets: Vec::new(),
        broken: false,
        notes: Vec::new(),
        ready_since: None,
        ready_spans: Vec::new(),
    };
    let result = driver.go(keep);
    if let Err(err) = &result {
        driver.finding(
            Kind::Crash,
            format!("the run itself failed: {err}"),
            Vec::new(),
        );
    }
    driver.shutdown();
    let snapshot = driver.server.snapshot();
    driver.counts.requests = snapshot.seq;
    driver.counts.faults = snapshot.injected.clone();
    driver.counts.incarnations = driver
        .colls
        .iter()
        .map(|c| c.records.values().map(|r| u64::from(r.inc)).sum::<u64>())
        .sum();
    let mut history = std::mem::take(&mut driver.history);
    for r in &snapshot.log {
        history.push((
            r.at_ms,
            format!(
                "server #{}: {} {}{}{} → {}",
                r.seq,
                r.method,
                r.path,
                r.key
                    .as_ref()
                    .map_or(String::new(), |k| format!(" key={k}")),
                r.sig.as_ref().map_or(String::new(), |s| format!(" [{s}]")),
                r.outcome
            ),
        ));
    }
    history.sort_by_key(|(t, _)| *t);
    let mut notes = std::mem::take(&mut driver.notes);
    notes.push(("ferry's log (last lines)".into(), driver.log_tail(40)));
    let failed = !driver.findings.is_empty();
    let kept = match (&opts.keep, failed) {
        (Some(out), true) => {
            let target = out.join(format!("seed-{}-run", sc.seed));
            let _ = std::fs::remove_dir_all(&target);
            copy_dir(&driver.dir, &target)?;
            Some(target)
        }
        _ => None,
    };
    let outcome = Outcome {
        seed: sc.seed,
        findings: std::mem::take(&mut driver.findings),
        history,
        counts: driver.counts.clone(),
        took: started.elapsed(),
        notes,
        kept,
    };
    drop(driver);
    drop(root);
    Ok(outcome)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

impl Driver<'_> {
    fn note(&mut self, title: &str, text: String) {
        self.notes.push((title.to_string(), text));
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn say(&mut self, line: impl Into<String>) {
        let t = self.ms();
        self.history.push((t, line.into()));
    }

    fn finding(&mut self, kind: Kind, detail: impl Into<String>, records: Vec<String>) {
        let detail = detail.into();
        self.say(format!("FINDING {kind}: {detail}"));
        self.findings.push(Finding::new(kind, detail, records));
    }

    /// `ferry run` said READY=1 (after a start or a reload).
    fn ready_on(&mut self) {
        if self.ready_since.is_none() {
            self.ready_since = Some(self.ms());
        }
    }

    /// `ferry run` stops being ready at `at` (a signal sent, an exit seen).
    fn ready_off(&mut self, at: u64) {
        if let Some(since) = self.ready_since.take() {
            self.ready_spans.push((since, at.max(since)));
        }
    }

    /// The longest stretch within `from..to` in which `ferry run` was up and ready.
    fn ready_within(&self, from: u64, to: u64) -> u64 {
        let open = self.ready_since.map(|since| (since, to));
        self.ready_spans
            .iter()
            .copied()
            .chain(open)
            .map(|(a, b)| b.min(to).saturating_sub(a.max(from)))
            .max()
            .unwrap_or(0)
    }

    /// The first incarnation a record written now under `key_text` may be taken for
    /// (see [`Rec::first_inc`]), and a note for the history.
    fn first_inc(&mut self, c: usize, key_text: &str, inc: u32) -> (u32, String) {
        let Some(old) = self.colls[c].records.get(key_text).filter(|r| !r.live) else {
            return (inc, String::new());
        };
        let (old_first, deleted) = (old.first_inc, old.deleted_ms.unwrap_or(0));
        let now = self.ms();
        let ran = self.ready_within(deleted, now);
        if ran >= SEEN_GONE_MS {
            self.counts.reused_seen += 1;
            (
                inc,
                format!(" (ferry ran {:.1} s since the delete: a new record, a row of its own required)", ran as f64 / 1000.0),
            )
        } else {
            self.counts.reused_unseen += 1;
            (
                old_first,
                format!(
                    " ({} ms after the delete, ferry ready for {ran} ms of it: may be taken for i{} changed)",
                    now.saturating_sub(deleted),
                    inc - 1
                ),
            )
        }
    }

    fn go(&mut self, keep: Option<&[bool]>) -> Result<(), BoxError> {
        if self.sc.specs.iter().any(|s| s.foreign()) {
            store::create_foreign_tables(&self.db, &self.sc.specs)?;
        }
        self.write_config()?;
        self.say(format!("scenario {}: {}", self.sc.seed, self.sc.describe()));
        if !self.start("first start")? {
            return Ok(());
        }
        let plan_start = Instant::now();
        for (index, timed) in self.sc.events.iter().enumerate() {
            if keep.is_some_and(|k| !k.get(index).copied().unwrap_or(true)) {
                continue;
            }
            let due = plan_start + Duration::from_millis(timed.at_ms);
            while Instant::now() < due {
                self.watch()?;
                std::thread::sleep((due - Instant::now().min(due)).min(Duration::from_millis(5)));
            }
            self.watch()?;
            if self.broken {
                break;
            }
            if timed.event.is_write() {
                self.counts.writes += 1;
            } else {
                self.counts.process_events += 1;
                self.say(format!(
                    "event {index}: {}",
                    self.sc.event_text(&timed.event)
                ));
            }
            self.event(index, timed.event)?;
            if self.broken {
                break;
            }
        }
        if !self.broken {
            self.drain()?;
        }
        Ok(())
    }

    fn write_config(&self) -> Result<(), BoxError> {
        let c = &self.conf;
        let mut text = format!(
            "device_id = \"modelcheck\"\nlog_level = \"debug\"\nlog_target = \"stderr\"\n\n\
             [storage]\nbackend = \"{}\"\nsqlite_path = \"state/ferry.db\"\njson_dir = \"state/json\"\n\
             backups_dir = \"state/backups\"\nbackups_keep = 2\n\n\
             [remote]\nurl = \"{}\"\ntimeout = \"{}ms\"\nmax_concurrent = {}\n\n\
             [sync]\nmode = \"continuous\"\nmax_retry_delay = \"{}ms\"\nretry_failed_every = \"{}\"\nbatch_size = {}\n\n",
            self.backend.as_str(),
            self.server.url,
            c.timeout_ms,
            c.max_concurrent,
            c.max_retry_delay_ms,
            c.retry_failed_every,
            c.batch_size
        );
        for spec in &self.sc.specs {
            text.push_str(&spec.toml());
            text.push('\n');
        }
        // Replaced whole, so a reload never reads half a file.
        let tmp = self.dir.join("ferry.toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.opts.ferry);
        command.arg("--config").arg(&self.config).args(args);
        for name in [
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "RUST_LOG",
            "FERRY_LOG",
            "FERRY_CONFIG",
            "STATE_DIRECTORY",
            "LOCAL_DB_PATH",
            "BACKEND_URL",
            "SYNC_INTERVAL_MINUTES",
            "DEVICE_ID",
            "SYNC_MODE",
        ] {
            command.env_remove(name);
        }
        // Plain lines in the logs the reports quote.
        command.env("NO_COLOR", "1").stdin(Stdio::null());
        command
    }

    fn log_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("ferry-{n}.log"))
    }

    fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.log_path(self.counts.starts))
            .and_then(|mut f| f.read_to_string(&mut text));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Discards notifications already received.
    fn flush_notify(&mut self) {
        let _ = self.notify.forget();
    }

    /// Waits for READY=1, watching the child; false (with a finding) if it never came.
    fn wait_ready(&mut self, what: &str) -> Result<bool, BoxError> {
        let deadline = Instant::now() + READY_LIMIT;
        while Instant::now() < deadline {
            if self.notify.poll_ready()? {
                return Ok(true);
            }
            if let Some(code) = self.reap_if_exited()? {
                self.finding(
                    Kind::Crash,
                    format!(
                        "ferry run exited ({code}) before READY=1 ({what}); its log:\n{}",
                        self.log_tail(12)
                    ),
                    Vec::new(),
                );
                return Ok(false);
            }
            if self.ferry.is_none() {
                // The server model's kill -9 (armed before a reload): start again.
                return self.start(&format!("{what}, after the kill on a request"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.finding(
            Kind::Crash,
            format!(
                "no READY=1 within {READY_LIMIT:?} ({what}); its log:\n{}",
                self.log_tail(12)
            ),
            Vec::new(),
        );
        self.kill9_quiet();
        Ok(false)
    }

    /// Starts `ferry run` and waits for READY=1; then checks the store (a start-up
    /// migration may have changed it).
    fn start(&mut self, why: &str) -> Result<bool, BoxError> {
        self.spawn()?;
        if !self.wait_ready(why)? {
            self.broken = true;
            return Ok(false);
        }
        self.ready_on();
        self.say(format!("ferry ready (start {}: {why})", self.counts.starts));
        self.look_at_store(&format!("after start {} ({why})", self.counts.starts))?;
        Ok(true)
    }

    fn spawn(&mut self) -> Result<(), BoxError> {
        self.counts.starts += 1;
        let log = std::fs::File::create(self.log_path(self.counts.starts))?;
        self.flush_notify();
        let child = self
            .command(&["run"])
            .env("NOTIFY_SOCKET", self.dir.join("notify.sock"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.say(format!(
            "ferry run started (start {}, pid {}, {} backend)",
            self.counts.starts,
            child.id(),
            self.backend.as_str()
        ));
        self.ferry = Some(child);
        Ok(())
    }

    /// The child's exit, if it exited; it is reaped (under the kill arm's lock). A
    /// `kill -9` the server model fired on a request is expected: it is counted and
    /// said here, and comes back as `None` with the child gone.
    fn reap_if_exited(&mut self) -> Result<Option<String>, BoxError> {
        let Some(child) = self.ferry.as_mut() else {
            return Ok(None);
        };
        let mut arm = self.kill.lock().unwrap_or_else(|p| p.into_inner());
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        arm.pid = None;
        self.ferry = None;
        let code = describe_status(status);
        let fired_ms = arm.fired_ms.take();
        let now = self.started.elapsed().as_millis() as u64;
        if let Some(since) = self.ready_since.take() {
            let at = fired_ms.unwrap_or(now).min(now);
            self.ready_spans.push((since, at.max(since)));
        }
        if arm.fired && code == "signal 9" {
            arm.fired = false;
            drop(arm);
            self.counts.kill_on_request += 1;
            self.say("ferry killed (-9) by the server model on a request");
            return Ok(None);
        }
        Ok(Some(code))
    }

    /// Between events: a ferry that died is restarted; an unexpected death is a finding.
    fn watch(&mut self) -> Result<(), BoxError> {
        if self.ferry.is_none() || self.broken {
            return Ok(());
        }
        if let Some(code) = self.reap_if_exited()? {
            self.finding(
                Kind::Crash,
                format!(
                    "ferry run exited by itself ({code}); its log:\n{}",
                    self.log_tail(12)
                ),
                Vec::new(),
            );
        }
        if self.ferry.is_none() {
            self.start("after a kill")?;
        }
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.ferry.as_ref().map(|c| c.id() as i32)
    }

    fn disarm(&mut self) {
        let mut arm = self.kill.lock().unwrap_or_else(|p| p.into_inner());
        if arm.pid.take().is_some() {
            let t = self.started.elapsed().as_millis() as u64;
            self.history
                .push((t, "(the armed kill -9 on a request did not fire)".into()));
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill with the pid of our child, not reaped yet.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn kill9_quiet(&mut self) {
        self.disarm();
        self.ready_off(self.ms());
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.ferry.take() {
            let _ = child.wait();
            // Reaped here: a kill the model fired at it is spent.
            let mut arm = self.kill.lock().unwrap_or_else(|p| p.into_inner());
            arm.fired = false;
            arm.fired_ms = None;
        }
    }

    /// SIGTERM; ferry must exit 0 in time.
    fn stop(&mut self, why: &str) -> Result<(), BoxError> {
        self.disarm();
        if self.ferry.is_none() {
            return Ok(());
        }
        self.ready_off(self.ms());
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(code) = self.reap_if_exited()? {
                if code != "exit 0" {
                    self.finding(
                        Kind::Crash,
                        format!("after SIGTERM ({why}) ferry run ended with {code}, not exit 0; its log:\n{}", self.log_tail(12)),
                        Vec::new(),
                    );
                } else {
                    self.say(format!("ferry stopped (SIGTERM, {why}): exit 0"));
                }
                return Ok(());
            }
            if self.ferry.is_none() {
                // The server model's kill -9 came first.
                return Ok(());
            }
            if Instant::now() > deadline {
                self.finding(
                    Kind::Crash,
                    format!("ferry run did not exit within {STOP_LIMIT:?} of SIGTERM ({why}); its log:\n{}", self.log_tail(12)),
                    Vec::new(),
                );
                self.kill9_quiet();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a ferry command to its end (bounded); returns its exit code and output.
    fn ferry_command(&mut self, args: &[&str]) -> Result<(Option<i32>, String), BoxError> {
        self.ferry_command_within(args, COMMAND_LIMIT)
    }

    fn ferry_command_within(
        &mut self,
        args: &[&str],
        limit: Duration,
    ) -> Result<(Option<i32>, String), BoxError> {
        let mut child = self
            .command(args)
            // Only what goes wrong: the output is quoted in reports.
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + limit;
        loop {
            if child.try_wait()?.is_some() {
                let out = child.wait_with_output()?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return Ok((out.status.code(), text));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                return Ok((
                    None,
                    format!(
                        "did not finish within {limit:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A command that must exit 0.
    fn must(&mut self, args: &[&str]) -> Result<(), BoxError> {
        let (code, text) = self.ferry_command(args)?;
        let short = text.lines().next().unwrap_or("").to_string();
        if code == Some(0) {
            self.say(format!("ferry {}: exit 0: {short}", args.join(" ")));
        } else {
            self.finding(
                Kind::Crash,
                format!(
                    "ferry {} ended with {code:?}: {}",
                    args.join(" "),
                    text.trim()
                ),
                Vec::new(),
            );
        }
        Ok(())
    }

    fn event(&mut self, index: usize, event: Event) -> Result<(), BoxError> {
        match event {
            Event::Write { coll, op } => self.write(index, coll, op)?,
            Event::Kill9 => {
                self.counts.kill9 += 1;
                self.kill9_quiet();
                self.say("ferry killed (-9)");
                self.start("after kill -9")?;
            }
            Event::KillOnRequest { store_first } => {
                // A kill the model fired a moment ago is reaped (and ferry started
                // again) before the next is armed: arming over it would take the
                // dead child's pid and lose the mark that the kill was the model's.
                let deadline = Instant::now() + STOP_LIMIT;
                loop {
                    self.watch()?;
                    let fired = self.kill.lock().unwrap_or_else(|p| p.into_inner()).fired;
                    if !fired || self.broken || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let pid = self.pid();
                let mut arm = self.kill.lock().unwrap_or_else(|p| p.into_inner());
                if arm.fired {
                    // It fired between the look and the lock: the next event arms.
                    return Ok(());
                }
                arm.pid = pid;
                arm.store_first = store_first;
                arm.fired_ms = None;
            }
            Event::Term => {
                self.counts.term += 1;
                self.stop("SIGTERM event")?;
                self.start("after SIGTERM")?;
            }
            Event::Hup(change) => {
                self.counts.hup += 1;
                match change {
                    Some(ConfigChange::MaxConcurrent(n)) => self.conf.max_concurrent = n,
                    Some(ConfigChange::TimeoutMs(ms)) => self.conf.timeout_ms = ms,
                    None => {}
                }
                self.write_config()?;
                self.reload("SIGHUP")?;
            }
            Event::Switch(how) => {
                self.counts.switches += 1;
                let to = self.backend.other();
                self.say(format!(
                    "backend switch {} → {} ({how:?})",
                    self.backend.as_str(),
                    to.as_str()
                ));
                match how {
                    SwitchHow::Restart => {
                        self.stop("backend switch")?;
                        self.backend = to;
                        self.write_config()?;
                        self.start("backend switched")?;
                    }
                    SwitchHow::Hup => {
                        self.backend = to;
                        self.write_config()?;
                        self.reload("SIGHUP with a backend switch")?;
                    }
                    SwitchHow::KillDuringStart => {
                        self.stop("backend switch")?;
                        self.backend = to;
                        self.write_config()?;
                        self.spawn()?;
                        let wait = self.rng.range(0, 40);
                        std::thread::sleep(Duration::from_millis(wait));
                        self.kill9_quiet();
                        self.counts.kill9 += 1;
                        self.say(format!(
                            "ferry killed (-9) {wait} ms into its start-up (migration)"
                        ));
                        self.start("after a kill during start-up")?;
                    }
                }
                self.writer.close();
            }
            Event::Down => {
                self.counts.term += 1;
                self.stop("down for a while")?;
            }
            Event::Up => {
                if self.ferry.is_none() {
                    self.start("up again")?;
                }
            }
            Event::Quiet { .. } => self.counts.quiet += 1,
            Event::Retry => {
                self.counts.retries += 1;
                self.must(&["retry"])?;
            }
            Event::Reset { coll } => {
                self.counts.resets += 1;
                let before = self.server.seq();
                let name = self.sc.specs[coll].name();
                self.must(&["reset-tracking", "--collection", name, "--yes"])?;
                // A request that arrived while it ran may belong to either epoch.
                self.resets.push((coll, before, self.server.seq()));
            }
        }
        Ok(())
    }

    /// SIGHUP and wait for READY=1 again; a reload that went back to the old config
    /// (the log says so) is a finding, and the scenario stops.
    fn reload(&mut self, why: &str) -> Result<(), BoxError> {
        if self.ferry.is_none() {
            self.start(why)?;
            return Ok(());
        }
        self.flush_notify();
        self.ready_off(self.ms());
        self.signal(libc::SIGHUP);
        if !self.wait_ready(why)? {
            self.broken = true;
            return Ok(());
        }
        self.ready_on();
        let log = self.log_tail(400);
        // Since this SIGHUP: ferry says "reload failed, going back to the previous
        // config", then "reloaded" with the old one.
        let failed = log
            .lines()
            .rev()
            .take_while(|l| !l.contains("SIGHUP"))
            .find(|l| l.contains("reload failed") || l.contains("reload refused"));
        if let Some(line) = failed {
            self.finding(Kind::Crash, format!("{why}: {line}"), Vec::new());
            self.broken = true;
            return Ok(());
        }
        self.say(format!("ferry reloaded ({why})"));
        self.look_at_store(&format!("after {why}"))?;
        Ok(())
    }

    fn read_store(&self) -> Result<Vec<BTreeMap<String, Content>>, BoxError> {
        self.sc
            .specs
            .iter()
            .map(|spec| {
                store::read_records(
                    self.backend == Backend::Sqlite,
                    &self.db,
                    &self.json_dir,
                    spec,
                )
            })
            .collect()
    }

    fn look_at_store(&mut self, when: &str) -> Result<(), BoxError> {
        let store = self.read_store()?;
        let mut found = Vec::new();
        let mut tally = std::mem::take(&mut self.counts.tally);
        check::check_store(
            &self.colls,
            &store,
            when,
            &mut self.reported,
            &mut found,
            &mut tally,
        );
        self.counts.tally = tally;
        for f in found {
            self.say(format!("FINDING {}: {}", f.kind, f.detail));
            self.findings.push(f);
        }
        Ok(())
    }

    /// One write of the other program, to the active backend.
    fn write(&mut self, index: usize, c: usize, op: WriteOp) -> Result<(), BoxError> {
        self.now += self.rng.range(1, 3) as i64;
        let spec = self.colls[c].spec.clone();
        let name = spec.name();
        let sqlite = self.backend == Backend::Sqlite;
        match op {
            WriteOp::Insert {
                no_updated_at,
                extra_field,
            } => self.insert(index, c, no_updated_at, extra_field && !sqlite)?,
            WriteOp::Update {
                pick,
                clock,
                extra_field,
            } => {
                let live = self.colls[c].live_keys();
                if live.is_empty() {
                    self.say(format!(
                        "write {index}: {name}: update, but nothing is live"
                    ));
                    return Ok(());
                }
                let key_text = live[(pick % live.len() as u64) as usize].clone();
                let Some(old) = self.colls[c].records.get(&key_text).cloned() else {
                    return Ok(());
                };
                let (content, ver, stamp, how) = if clock == Clock::Respell && old.stamp.is_some() {
                    let stamp = next_stamp(old.stamp, clock, self.now, &mut self.rng);
                    let mut content = old.content.clone();
                    content.insert("updated_at".into(), json!(stamp.text()));
                    (
                        content,
                        old.ver,
                        Some(stamp),
                        format!("updated_at re-spelt {}", stamp.text()),
                    )
                } else {
                    let clock = if clock == Clock::Respell {
                        Clock::Forward
                    } else {
                        clock
                    };
                    let stamp = next_stamp(old.stamp, clock, self.now, &mut self.rng);
                    let uid = old.content.get("uid").cloned().or_else(|| {
                        (extra_field
                            && !sqlite
                            && spec.template == crate::scenario::Template::Downloads)
                            .then(|| json!(format!("u-{}", self.rng.below(100_000))))
                    });
                    let mut builder = Builder {
                        rng: &mut self.rng,
                        now: self.now,
                    };
                    let content = builder.content(
                        &self.colls[c],
                        &old.key,
                        old.inc,
                        old.ver + 1,
                        Some(stamp),
                        uid,
                    );
                    let how = match (old.stamp, clock) {
                        (None, _) => format!("first updated_at {}", stamp.text()),
                        (_, Clock::SameTick) => {
                            format!("content changed, updated_at kept as {}", stamp.text())
                        }
                        (_, Clock::Backwards) => {
                            format!("updated_at BACKWARDS to {}", stamp.text())
                        }
                        _ => format!("updated_at {}", stamp.text()),
                    };
                    (content, old.ver + 1, Some(stamp), how)
                };
                let present = if sqlite {
                    self.writer.sqlite_put(&spec, &old.key, &content, false)? > 0
                } else {
                    self.writer.json_put(&spec, &old.key, &content)?
                };
                self.say(format!(
                    "write {index}: {name}: update {} → i{} v{ver} ({how})",
                    old.key.text(),
                    old.inc
                ));
                if !present {
                    self.store_lost(&spec, &old.key, "updating it");
                }
                self.colls[c].commit(Rec {
                    content,
                    ver,
                    stamp,
                    ..old
                });
            }
            WriteOp::Delete { pick } => {
                let live = self.colls[c].live_keys();
                if live.is_empty() {
                    self.say(format!(
                        "write {index}: {name}: delete, but nothing is live"
                    ));
                    return Ok(());
                }
                let key_text = live[(pick % live.len() as u64) as usize].clone();
                self.delete(index, c, &key_text)?;
            }
            WriteOp::Recreate { pick } => {
                if spec.assigned_keys() {
                    // Seed 003's program inserts with a NULL key: a key comes back only
                    // when the newest row was deleted and the table has no
                    // AUTOINCREMENT. Delete the newest, insert.
                    let newest = self.colls[c]
                        .records
                        .values()
                        .filter(|r| r.live)
                        .filter_map(|r| match r.key {
                            Key::Int(i) => Some(i),
                            Key::Text(_) => None,
                        })
                        .max();
                    if let Some(newest) = newest {
                        self.delete(index, c, &newest.to_string())?;
                    }
                    self.insert(index, c, false, false)?;
                    return Ok(());
                }
                let dead = self.colls[c].dead_keys();
                if dead.is_empty() {
                    self.say(format!(
                        "write {index}: {name}: re-create, but nothing was deleted"
                    ));
                    return Ok(());
                }
                let key_text = dead[(pick % dead.len() as u64) as usize].clone();
                self.recreate(index, c, &key_text)?;
            }
            WriteOp::DeleteBeforeGap { pick } => {
                let live = self.colls[c].live_keys();
                let newest = self.colls[c]
                    .records
                    .values()
                    .filter(|r| r.live)
                    .filter_map(|r| match r.key {
                        Key::Int(i) => Some(i),
                        Key::Text(_) => None,
                    })
                    .max();
                let key_text = match newest {
                    Some(newest) if spec.assigned_keys() => newest.to_string(),
                    _ if live.is_empty() => {
                        self.say(format!(
                            "write {index}: {name}: delete before the gap, but nothing is live"
                        ));
                        return Ok(());
                    }
                    _ => live[(pick % live.len() as u64) as usize].clone(),
                };
                self.delete(index, c, &key_text)?;
            }
            WriteOp::RecreateAfterGap => {
                if spec.assigned_keys() {
                    // The store gives the key back where the table has no
                    // AUTOINCREMENT (the deleted row was the newest).
                    self.insert(index, c, false, false)?;
                    return Ok(());
                }
                match self.colls[c].last_deleted.clone() {
                    Some(key_text)
                        if self.colls[c]
                            .records
                            .get(&key_text)
                            .is_some_and(|r| !r.live) =>
                    {
                        self.recreate(index, c, &key_text)?;
                    }
                    _ => self.say(format!(
                        "write {index}: {name}: write the key deleted before the gap again, but it is live"
                    )),
                }
            }
        }
        Ok(())
    }

    /// A deleted key written again, with new content: its next incarnation.
    fn recreate(&mut self, index: usize, c: usize, key_text: &str) -> Result<(), BoxError> {
        let spec = self.colls[c].spec.clone();
        let name = spec.name();
        let sqlite = self.backend == Backend::Sqlite;
        let Some(old) = self.colls[c].records.get(key_text).cloned() else {
            return Ok(());
        };
        let inc = old.inc + 1;
        let stamp = spec
            .mutable()
            .then(|| next_stamp(None, Clock::Forward, self.now, &mut self.rng));
        let mut builder = Builder {
            rng: &mut self.rng,
            now: self.now,
        };
        let content = builder.content(&self.colls[c], &old.key, inc, 1, stamp, None);
        let existed = if sqlite {
            match self.writer.sqlite_put(&spec, &old.key, &content, true) {
                Ok(_) => false,
                // The row is still there: ferry brought it back.
                Err(_) => {
                    self.writer.sqlite_put(&spec, &old.key, &content, false)?;
                    true
                }
            }
        } else {
            self.writer.json_put(&spec, &old.key, &content)?
        };
        let (first_inc, note) = self.first_inc(c, key_text, inc);
        self.say(format!(
            "write {index}: {name}: re-create {} as i{inc} v1{note}",
            old.key.text()
        ));
        if existed {
            self.revived_at_write(&spec, &old.key);
        }
        self.colls[c].commit(Rec {
            key: old.key,
            inc,
            ver: 1,
            live: true,
            content,
            stamp,
            first_inc,
            deleted_ms: None,
        });
        Ok(())
    }

    fn insert(
        &mut self,
        index: usize,
        c: usize,
        no_updated_at: bool,
        extra_field: bool,
    ) -> Result<(), BoxError> {
        let spec = self.colls[c].spec.clone();
        let sqlite = self.backend == Backend::Sqlite;
        let stamp = (spec.mutable() && !no_updated_at)
            .then(|| next_stamp(None, Clock::Forward, self.now, &mut self.rng));
        let uid = (extra_field && spec.template == crate::scenario::Template::Downloads)
            .then(|| json!(format!("u-{}", self.rng.below(100_000))));
        let (key, content, inc) = if spec.assigned_keys() && sqlite {
            let coll = &self.colls[c];
            let mut builder = Builder {
                rng: &mut self.rng,
                now: self.now,
            };
            let mut inc_used = 1;
            let (key, content) = self.writer.sqlite_insert_assigned(&spec, &mut |id| {
                let key = Key::Int(id);
                inc_used = coll.next_inc(&key);
                builder.content(coll, &key, inc_used, 1, stamp, uid.clone())
            })?;
            (key, content, inc_used)
        } else {
            let key = if spec.assigned_keys() {
                Key::Int(self.colls[c].assigned_key())
            } else {
                self.colls[c].fresh_key()
            };
            let inc = self.colls[c].next_inc(&key);
            let mut builder = Builder {
                rng: &mut self.rng,
                now: self.now,
            };
            let content = builder.content(&self.colls[c], &key, inc, 1, stamp, uid);
            let existed = if sqlite {
                self.writer.sqlite_put(&spec, &key, &content, true)?;
                false
            } else {
                self.writer.json_put(&spec, &key, &content)?
            };
            if existed {
                self.revived_at_write(&spec, &key);
            }
            (key, content, inc)
        };
        if self.colls[c]
            .records
            .get(&key.text())
            .is_some_and(|r| r.live)
        {
            self.store_lost(&spec, &key, "the store gave its key to a new row");
        }
        let (first_inc, note) = self.first_inc(c, &key.text(), inc);
        self.say(format!(
            "write {index}: {}: insert {} as i{inc} v1{}{}{note}",
            spec.name(),
            key.text(),
            if stamp.is_none() && spec.mutable() {
                " WITHOUT updated_at"
            } else {
                ""
            },
            if content.contains_key("uid") {
                " with a field the seed table has no column for (uid)"
            } else {
                ""
            }
        ));
        self.colls[c].commit(Rec {
            key,
            inc,
            ver: 1,
            live: true,
            content,
            stamp,
            first_inc,
            deleted_ms: None,
        });
        Ok(())
    }

    fn delete(&mut self, index: usize, c: usize, key_text: &str) -> Result<(), BoxError> {
        let spec = self.colls[c].spec.clone();
        let Some(mut rec) = self.colls[c].records.get(key_text).cloned() else {
            return Ok(());
        };
        let present = if self.backend == Backend::Sqlite {
            self.writer.sqlite_delete(&spec, &rec.key)? > 0
        } else {
            self.writer.json_delete(&spec, &rec.key)?
        };
        self.say(format!(
            "write {index}: {}: delete {} (i{} v{})",
            spec.name(),
            key_text,
            rec.inc,
            rec.ver
        ));
        if !present {
            self.store_lost(&spec, &rec.key, "deleting it");
        }
        rec.live = false;
        rec.deleted_ms = Some(self.ms());
        self.colls[c].records.insert(key_text.to_string(), rec);
        self.colls[c].last_deleted = Some(key_text.to_string());
        Ok(())
    }

    fn store_lost(&mut self, spec: &crate::scenario::Spec, key: &Key, doing: &str) {
        let id = format!("{}/{}", spec.name(), key.text());
        if self.reported.insert(format!("gone:{id}")) {
            self.counts.tally.lost += 1;
            self.finding(
                Kind::Lost,
                format!(
                    "{} {} was gone from the store when the other program was {doing}",
                    spec.name(),
                    key.text()
                ),
                vec![id],
            );
        }
    }

    fn revived_at_write(&mut self, spec: &crate::scenario::Spec, key: &Key) {
        let id = format!("{}/{}", spec.name(), key.text());
        if self.reported.insert(format!("revived:{id}")) {
            self.counts.tally.revived += 1;
            self.finding(
                Kind::Revived,
                format!("{} {}: deleted by the other program, it was back in the store when the key was written again", spec.name(), key.text()),
                vec![id],
            );
        }
    }

    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    fn pending_by_stats(&mut self) -> Result<Option<u64>, BoxError> {
        let (code, text) = self.ferry_command(&["stats", "--json"])?;
        if code != Some(0) {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(value.pointer("/totals/pending").and_then(Value::as_u64))
    }

    /// Faults off, `ferry retry`, then `ferry run` must deliver everything within
    /// the budget; then the check.
    fn drain(&mut self) -> Result<(), BoxError> {
        self.disarm();
        self.server.set_faults(false);
        self.say("drain: the workload is over; faults off; ferry retry");
        if self.ferry.is_none() {
            self.start("for the drain")?;
        }
        self.must(&["retry"])?;
        let drain_start = Instant::now();
        let cpu_start = self.cpu_ticks();
        let mut converged = false;
        let mut settled = false;
        let mut retried_again = false;
        let mut next_stats = drain_start + Duration::from_millis(1500);
        while drain_start.elapsed() < DRAIN_BUDGET {
            self.watch()?;
            if self.broken {
                return Ok(());
            }
            let snapshot = self.server.snapshot();
            if check::missing(&self.colls, &snapshot.rows).is_empty() {
                converged = true;
                break;
            }
            if !retried_again && drain_start.elapsed() > Duration::from_millis(1500) {
                // A request decided before the faults went off may have failed a
                // record after the first retry.
                retried_again = true;
                self.must(&["retry"])?;
            }
            if Instant::now() >= next_stats {
                next_stats = Instant::now() + Duration::from_millis(500);
                let quiet = self
                    .server
                    .last_request_ms()
                    .is_none_or(|t| self.ms().saturating_sub(t) > 1000);
                if quiet && self.pending_by_stats()? == Some(0) {
                    // ferry holds nothing more to send: what is missing now, it
                    // believes delivered or failed.
                    settled = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let waited = drain_start.elapsed();
        let cpu_percent = match (cpu_start, self.cpu_ticks()) {
            (Some(a), Some(b)) => {
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                b.saturating_sub(a) as f64 / hz / waited.as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        let cpu = format!("{cpu_percent:.0} % CPU");
        self.say(format!(
            "drain: {} after {:.1} s of ferry run ({cpu})",
            if converged {
                "the server holds every live record in its latest state"
            } else if settled {
                "ferry has nothing pending, the server is quiet"
            } else {
                "NOT converged"
            },
            waited.as_secs_f64()
        ));
        // What ferry still holds back, before anything else runs.
        let (stuck_pending, stuck): (u64, Vec<String>) = if !converged && !settled {
            let tracking =
                store::read_tracking(self.backend == Backend::Sqlite, &self.db, &self.json_dir)?;
            let stuck = check::missing(&self.colls, &self.server.snapshot().rows)
                .iter()
                .filter(|m| {
                    tracking
                        .get(&(m.collection.clone(), m.key.clone()))
                        .is_none_or(|t| t.status != "success" && t.status != "failed")
                })
                .map(|m| format!("{}/{}", m.collection, m.key))
                .collect();
            (self.pending_by_stats()?.unwrap_or(0), stuck)
        } else {
            (0, Vec::new())
        };
        self.stop("end of the drain")?;
        let mut once_result = String::new();
        if !converged && !settled {
            // Would a full pass deliver what the daemon did not?
            self.must(&["retry"])?;
            let (code, text) =
                self.ferry_command_within(&["sync", "--once"], Duration::from_secs(8))?;
            let still: Vec<String> = check::missing(&self.colls, &self.server.snapshot().rows)
                .iter()
                .map(|m| format!("{}/{}", m.collection, m.key))
                .filter(|id| stuck.contains(id))
                .collect();
            once_result = format!(
                "; then `ferry sync --once` {} and {}{}",
                match code {
                    Some(code) => format!("exited {code}"),
                    None => "did not finish in 8 s".into(),
                },
                if still.is_empty() {
                    "delivered them".to_string()
                } else {
                    format!("{} of them were still missing", still.len())
                },
                text.lines()
                    .last()
                    .map_or(String::new(), |l| format!(" (it said: {l})"))
            );
            self.say(format!("drain: ferry sync --once: exit {code:?}"));
        }
        // The end state.
        self.writer.close();
        let store = self.read_store()?;
        let tracking =
            store::read_tracking(self.backend == Backend::Sqlite, &self.db, &self.json_dir)?;
        let snapshot = self.server.snapshot();
        let mut found = Vec::new();
        let mut tally = std::mem::take(&mut self.counts.tally);
        check::check_store(
            &self.colls,
            &store,
            "at the end",
            &mut self.reported,
            &mut found,
            &mut tally,
        );
        check::check_server(
            &check::Input {
                colls: &self.colls,
                rows: &snapshot.rows,
                log: &snapshot.log,
                tracking: &tracking,
                resets: &self.resets,
            },
            &mut found,
            &mut tally,
        );
        if tally.pending > 0 || stuck_pending > 0 || !stuck.is_empty() {
            let shown: Vec<String> = stuck.iter().take(8).cloned().collect();
            found.push(Finding::new(
                Kind::Stalled,
                format!(
                    "{} record(s) not delivered {:.0} s after the last write with faults off (ferry run {} meanwhile: {cpu}; ferry stats said {stuck_pending} pending){once_result}: {}{}",
                    stuck.len().max(stuck_pending as usize),
                    waited.as_secs_f64(),
                    if cpu_percent > 20.0 { "spinning" } else { "idle" },
                    shown.join(", "),
                    if stuck.len() > shown.len() { ", …" } else { "" }
                ),
                stuck,
            ));
        }
        self.counts.tally = tally;
        for f in found {
            self.say(format!("FINDING {}: {}", f.kind, f.detail));
            self.findings.push(f);
        }
        if !self.findings.is_empty() {
            let (_, stats) = self.ferry_command(&["stats", "--json"])?;
            self.note("ferry stats --json", stats);
            let (_, diagnose) = self.ferry_command(&["diagnose"])?;
            self.note("ferry diagnose", diagnose);
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        if self.ferry.is_some() {
            let _ = self.stop("end of the run");
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}
