//! `make torture`: the real `ferry` binary through crashes, faults and bad input, with
//! one table at the end that shows what was written, delivered, lost and duplicated.
//!
//! torture [--quick] [--ferry PATH] [--kills N] [--only CASE]
//!
//! CASE: kill-loop, kill-migration, kill-backup, crash-snapshots, full-disk,
//! bad-input (the whole run when absent).
//!
//! Cases: `kill -9` of `ferry run` at random moments while this process keeps
//! writing records and the server fails 10–30 % of requests in every way it knows
//! (both backends); `kill -9` during a start-up migration and during `ferry backup`;
//! crash snapshots (ferry and the writer frozen at a random instant, the store files
//! copied, ferry started on the copy); a full disk (a small tmpfs); and bad input of
//! every kind. The server is `devkit/src/server.rs`, which honours Idempotency-Key:
//! "duplicated" counts records it stored twice (different keys for one record).

use ferry_devkit::server;

mod cases;

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_devkit::BoxError;

/// What the run saw, printed as the table.
#[derive(Default)]
pub struct Tally {
    /// Kills survived, by case.
    pub kills: BTreeMap<String, u64>,
    /// Faults the server injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Bad inputs tried: what, and what ferry did (or the failure).
    pub bad_inputs: Vec<(String, Result<String, String>)>,
    pub written: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Mutable records the server holds in an older state than the store.
    pub stale: u64,
    /// Checks that failed: any is a bug.
    pub failures: Vec<String>,
}

impl Tally {
    pub fn kill(&mut self, case: &str) {
        *self.kills.entry(case.to_string()).or_default() += 1;
    }

    pub fn faults_from(&mut self, server: &server::TestServer) {
        for (kind, n) in server.injected() {
            *self.faults.entry(kind).or_default() += n;
        }
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            println!("  FAILED: {what}");
            self.failures.push(what);
        }
    }
}

pub struct Run {
    pub ferry: PathBuf,
    pub root: tempfile::TempDir,
    pub quick: bool,
    pub kills: u64,
}

impl Run {
    pub fn dir(&self, name: &str) -> Result<PathBuf, BoxError> {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("torture: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, BoxError> {
    let mut quick = false;
    let mut ferry = None;
    let mut kills = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--ferry" => ferry = Some(PathBuf::from(args.next().ok_or("--ferry needs a path")?)),
            "--kills" => {
                kills = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .ok_or("--kills needs a number")?,
                )
            }
            "--only" => only = Some(args.next().ok_or("--only needs a case name")?),
            other => return Err(format!("unknown argument {other:?} (try --quick)").into()),
        }
    }
    let ferry = ferry_devkit::bin::beside_examples("ferry", ferry)?;
    let run = Run {
        ferry,
        root: tempfile::tempdir()?,
        quick,
        kills: kills.unwrap_or(if quick { 10 } else { 200 }),
    };
    println!(
        "ferry: {}{}",
        run.ferry.display(),
        if quick { " (--quick)" } else { "" }
    );
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let cases = [
        "kill-loop",
        "kill-migration",
        "kill-backup",
        "crash-snapshots",
        "full-disk",
        "bad-input",
    ];
    if let Some(case) = &only {
        if !cases.contains(&case.as_str()) {
            return Err(format!("--only {case:?}: the cases are {}", cases.join(", ")).into());
        }
    }
    let runs = |case: &str| only.as_deref().is_none_or(|o| o == case);
    if runs("kill-loop") {
        for backend in ["sqlite", "json"] {
            cases::kill_loop(&run, backend, &mut tally)?;
        }
    }
    if runs("kill-migration") {
        cases::kill_migration(&run, &mut tally)?;
    }
    if runs("kill-backup") {
        cases::kill_backup(&run, &mut tally)?;
    }
    if runs("crash-snapshots") {
        for backend in ["sqlite", "json"] {
            cases::crash_snapshots(&run, backend, &mut tally)?;
        }
    }
    if runs("full-disk") {
        cases::full_disk(&run, &mut tally)?;
    }
    if runs("bad-input") {
        cases::bad_input(&run, &mut tally)?;
    }
    print_table(&tally);
    println!(
        "(the whole run took {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let ok =
        tally.failures.is_empty() && tally.lost == 0 && tally.duplicated == 0 && tally.stale == 0;
    if !ok {
        println!("\nFAILED checks:");
        for failure in &tally.failures {
            println!("- {failure}");
        }
    }
    Ok(ok)
}

fn print_table(tally: &Tally) {
    println!();
    println!("| what | count |");
    println!("| --- | --- |");
    for (case, n) in &tally.kills {
        println!("| kills survived: {case} | {n} |");
    }
    for (kind, n) in &tally.faults {
        println!("| faults injected: {kind} | {n} |");
    }
    let tried = tally.bad_inputs.len();
    let handled = tally.bad_inputs.iter().filter(|(_, r)| r.is_ok()).count();
    println!("| bad inputs tried (handled with a clear error, nothing lost) | {tried} ({handled} handled) |");
    println!("| records written | {} |", tally.written);
    println!("| records delivered | {} |", tally.delivered);
    println!("| records lost | **{}** |", tally.lost);
    println!(
        "| records duplicated (at an idempotent server) | **{}** |",
        tally.duplicated
    );
    println!(
        "| mutable records not in their latest state | **{}** |",
        tally.stale
    );
    println!("| failed checks | {} |", tally.failures.len());
    println!();
    println!("Bad inputs:");
    for (what, result) in &tally.bad_inputs {
        match result {
            Ok(said) => println!("- ok: {what} → {said}"),
            Err(problem) => println!("- FAILED: {what} → {problem}"),
        }
    }
}
