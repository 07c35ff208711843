//! `make modelcheck`: a randomized, seeded model check of the real `ferry` binary.
//!
//! modelcheck [--ci] [--seed N [--events LIST] | --seeds A..B | --scenarios N | --time SECS]
//!            [--fixed FILE] [--jobs J] [--quick] [--ferry PATH] [--no-shrink]
//!            [--shrink-secs S] [--verbose] [--out DIR] [--plan]
//!
//! `--ci` is `--fixed examples/modelcheck/seeds.txt --time 170 --shrink-secs 30`, with
//! a minute of shrinking at most: the seeds that found bugs, then fresh ones, about
//! three minutes in all on two cores with the debug build. `--plan` prints the scenarios' plans without running them.
//!
//! Each seed names one scenario: 1–3 collections (append-only, seed 003's foreign
//! tables with and without AUTOINCREMENT and a BLOB, seed 000's `downloads`, mutable
//! documents with `updates` = put/post/ignore), a backend, ferry's config, the server's
//! faults, and a timed plan: the other program's inserts, updates (`updated_at`
//! forward, backwards, re-spelt, added later), deletes and re-created keys, and what
//! happens to `ferry run` (kill -9 at a moment or on a request, SIGTERM, SIGHUP with a
//! changed config, backend switches, `ferry retry`, `ferry reset-tracking`). After the
//! plan the faults stop and `ferry run` must deliver everything within seconds; then
//! the server's rows are checked against the model of the store, and the store
//! against the model. A failure prints its seed, what was found, and the command that
//! replays it; the first failure of each kind is shrunk (events taken out while it
//! keeps failing, time-bounded). The run ends with one table and exits non-zero on
//! any failure.

mod check;
mod model;
mod run;
mod scenario;
mod server;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use check::{Kind, KINDS};
use ferry_devkit::rng;
use run::{Options, Outcome};
use scenario::Scenario;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "modelcheck [--ci] [--seed N [--events LIST] | --seeds A..B | --scenarios N | --time SECS] \
[--fixed FILE] [--jobs J] [--quick] [--ferry PATH] [--no-shrink] [--shrink-secs S] [--verbose] [--out DIR] [--plan]";

/// The seeds that found bugs, which CI runs first (`--ci`).
const SEEDS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/modelcheck/seeds.txt");
/// `--ci`: fresh seeds for this long after the fixed ones (the deadline counts from
/// the start: about three minutes in all on two cores with the debug build).
const CI_SECS: u64 = 170;
/// `--ci`: the first failure of each kind is shrunk for at most this long, and all of
/// them for at most `CI_SHRINK_TOTAL_SECS`.
const CI_SHRINK_SECS: u64 = 30;
const CI_SHRINK_TOTAL_SECS: u64 = 60;

struct Args {
    seeds: Vec<u64>,
    fresh: Option<u64>,
    time: Option<Duration>,
    fixed: Option<PathBuf>,
    events: Option<String>,
    jobs: usize,
    quick: bool,
    ferry: Option<PathBuf>,
    shrink: bool,
    shrink_secs: u64,
    /// All the shrinking together, at most (`--ci`).
    shrink_total: Option<Duration>,
    verbose: bool,
    out: Option<PathBuf>,
    /// Print the scenarios' plans and exit (nothing runs).
    plan: bool,
}

/// `--ci`: the fixed seeds, then fresh ones until the time is up, shrinking briefly.
fn ci_defaults(args: &mut Args) {
    if args.fixed.is_none() {
        args.fixed = Some(PathBuf::from(SEEDS_FILE));
    }
    if args.time.is_none() && args.fresh.is_none() {
        args.time = Some(Duration::from_secs(CI_SECS));
    }
    args.shrink_secs = args.shrink_secs.min(CI_SHRINK_SECS);
    args.shrink_total = Some(Duration::from_secs(CI_SHRINK_TOTAL_SECS));
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        seeds: Vec::new(),
        fresh: None,
        time: None,
        fixed: None,
        events: None,
        jobs: 2,
        quick: false,
        ferry: None,
        shrink: true,
        shrink_secs: 90,
        shrink_total: None,
        verbose: false,
        out: None,
        plan: false,
    };
    let mut ci = false;
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, name: &str| -> Result<String, BoxError> {
        it.next()
            .ok_or_else(|| format!("{name} needs a value; usage: {USAGE}").into())
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => args.seeds.push(value(&mut it, "--seed")?.parse()?),
            "--seeds" => {
                let text = value(&mut it, "--seeds")?;
                let (a, b) = text
                    .split_once("..=")
                    .map(|(a, b)| (a, b, true))
                    .or_else(|| text.split_once("..").map(|(a, b)| (a, b, false)))
                    .map(|(a, b, inclusive)| -> Result<(u64, u64), BoxError> {
                        let a: u64 = a.parse()?;
                        let b: u64 = b.parse()?;
                        Ok((a, if inclusive { b + 1 } else { b }))
                    })
                    .ok_or("--seeds takes A..B")??;
                args.seeds.extend(a..b);
            }
            "--scenarios" => args.fresh = Some(value(&mut it, "--scenarios")?.parse()?),
            "--time" => args.time = Some(Duration::from_secs(value(&mut it, "--time")?.parse()?)),
            "--fixed" => args.fixed = Some(PathBuf::from(value(&mut it, "--fixed")?)),
            "--events" => args.events = Some(value(&mut it, "--events")?),
            "--jobs" => args.jobs = value(&mut it, "--jobs")?.parse::<usize>()?.max(1),
            "--quick" => args.quick = true,
            "--ferry" => args.ferry = Some(PathBuf::from(value(&mut it, "--ferry")?)),
            "--no-shrink" => args.shrink = false,
            "--shrink-secs" => args.shrink_secs = value(&mut it, "--shrink-secs")?.parse()?,
            "--verbose" => args.verbose = true,
            "--plan" => args.plan = true,
            "--ci" => ci = true,
            "--out" => args.out = Some(PathBuf::from(value(&mut it, "--out")?)),
            "--server" => {
                return Err(
                    "--server URL (checking an external server that keeps keys) is not \
                    implemented yet: see the TODO in examples/modelcheck/main.rs"
                        .into(),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; usage: {USAGE}").into()),
        }
    }
    if ci {
        ci_defaults(&mut args);
    }
    if args.events.is_some() && args.seeds.len() != 1 {
        return Err("--events goes with one --seed".into());
    }
    Ok(args)
}

// TODO(--server URL): check a real server that keeps keys (ferry-receiver, when it
// exists) instead of the model. The model's fault injection is then off, and the
// check needs the server's rows: the plan is to read them through a documented
// listing (`GET <endpoint>` answering every stored row with its id, as seed 003's API
// lists), and to count epochs by time instead of request numbers. The request log
// (redirects followed, keys reused) is only available from the model.

/// `0,3,7-9` → the events kept.
fn parse_events(text: &str, count: usize) -> Result<Vec<bool>, BoxError> {
    let mut keep = vec![false; count];
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>()?, b.parse::<usize>()?),
            None => (part.parse()?, part.parse()?),
        };
        for i in a..=b {
            *keep.get_mut(i).ok_or(format!(
                "event {i} is not in this scenario (it has {count})"
            ))? = true;
        }
    }
    Ok(keep)
}

fn format_events(keep: &[bool]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < keep.len() {
        if keep[i] {
            let start = i;
            while i + 1 < keep.len() && keep[i + 1] {
                i += 1;
            }
            parts.push(if start == i {
                start.to_string()
            } else {
                format!("{start}-{i}")
            });
        }
        i += 1;
    }
    parts.join(",")
}

fn read_fixed(path: &Path) -> Result<Vec<(u64, String)>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut seeds = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let (seed, comment) = line.split_once('#').unwrap_or((line, ""));
        let seed = seed.trim();
        if seed.is_empty() {
            continue;
        }
        let seed = seed
            .parse()
            .map_err(|_| format!("{}:{}: {seed:?} is not a seed", path.display(), n + 1))?;
        seeds.push((seed, comment.trim().to_string()));
    }
    Ok(seeds)
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("modelcheck: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool, BoxError> {
    let args = parse_args()?;
    let ferry = ferry_devkit::bin::beside_examples("ferry", args.ferry.clone())?;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        // target/<profile>/ → target/modelcheck/
        None => ferry_devkit::bin::binaries_dir()?
            .parent()
            .map(|target| target.join("modelcheck"))
            .ok_or("cannot tell where to write reports: pass --out DIR")?,
    };
    std::fs::create_dir_all(&out)?;

    let mut seeds: Vec<u64> = args.seeds.clone();
    let mut fixed_notes = BTreeMap::new();
    if let Some(path) = &args.fixed {
        for (seed, comment) in read_fixed(path)? {
            fixed_notes.insert(seed, comment);
            seeds.push(seed);
        }
    }
    if args.plan {
        for seed in &seeds {
            let scenario = Scenario::generate(*seed);
            println!("seed {seed}: {}", scenario.describe());
            for (i, timed) in scenario.events.iter().enumerate() {
                println!(
                    "  {i:>3}: {:>5} ms  {}",
                    timed.at_ms,
                    scenario.event_text(&timed.event)
                );
            }
        }
        return Ok(true);
    }
    let fresh_count = match (args.fresh, args.time, seeds.is_empty()) {
        (Some(n), _, _) => Some(n),
        (None, Some(_), _) => Some(u64::MAX),
        (None, None, true) => Some(if args.quick { 20 } else { 200 }),
        (None, None, false) => None,
    };
    // Fresh seeds are consecutive from a random base, so the range covered is one line.
    let fresh_base = fresh_count.map(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        scenario::BATCH_SEEDS
            | rng::Rng::new(nanos ^ u64::from(std::process::id())).next_u64() >> 21
    });
    let opts = Options {
        ferry: ferry.clone(),
        keep: Some(out.clone()),
    };
    let keep_events = match &args.events {
        Some(text) => Some(parse_events(
            text,
            Scenario::generate(seeds[0]).events.len(),
        )?),
        None => None,
    };
    println!(
        "modelcheck: ferry {}; {} job(s); reports in {}",
        ferry.display(),
        args.jobs,
        out.display()
    );

    let started = Instant::now();
    let queue = Arc::new(Mutex::new(seeds.iter().copied().collect::<VecDeque<u64>>()));
    let fresh_next = Arc::new(Mutex::new(0u64));
    let deadline = args.time.map(|t| started + t);
    let (tx, rx) = mpsc::channel::<(u64, Result<Outcome, String>)>();
    let opts = Arc::new(opts);
    let keep_events = Arc::new(keep_events);
    let mut workers = Vec::new();
    for _ in 0..args.jobs {
        let queue = Arc::clone(&queue);
        let fresh_next = Arc::clone(&fresh_next);
        let tx = tx.clone();
        let opts = Arc::clone(&opts);
        let keep_events = Arc::clone(&keep_events);
        workers.push(std::thread::spawn(move || loop {
            let seed = match queue.lock().ok().and_then(|mut q| q.pop_front()) {
                Some(seed) => seed,
                None => {
                    let (Some(base), Some(count)) = (fresh_base, fresh_count) else {
                        return;
                    };
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    let Ok(mut next) = fresh_next.lock() else {
                        return;
                    };
                    if *next >= count {
                        return;
                    }
                    *next += 1;
                    base + *next - 1
                }
            };
            let scenario = Scenario::generate(seed);
            let outcome =
                run::run(&scenario, keep_events.as_deref(), &opts).map_err(|e| e.to_string());
            if tx.send((seed, outcome)).is_err() {
                return;
            }
        }));
    }
    drop(tx);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut errors = Vec::new();
    for (seed, result) in rx {
        match result {
            Ok(outcome) => {
                report_one(
                    &outcome,
                    &out,
                    args.verbose || seeds.len() == 1,
                    fixed_notes.get(&seed),
                )?;
                outcomes.push(outcome);
            }
            Err(err) => {
                println!("ERROR seed {seed}: {err}");
                errors.push((seed, err));
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
    let run_time = started.elapsed();

    // Shrink the first failure of each kind, keeping that kind: a scenario that fails
    // in several ways gives one short history per way.
    let mut shrunk = Vec::new();
    if args.shrink && args.events.is_none() {
        let mut sorted: Vec<&Outcome> = outcomes.iter().filter(|o| o.failed()).collect();
        sorted.sort_by_key(|o| o.seed);
        let budget = Duration::from_secs(if args.quick {
            args.shrink_secs.min(30)
        } else {
            args.shrink_secs
        });
        let shrinking = Instant::now();
        for kind in KINDS {
            let budget = match args.shrink_total {
                Some(total) => budget.min(total.saturating_sub(shrinking.elapsed())),
                None => budget,
            };
            if let Some(outcome) = sorted.iter().find(|o| o.kinds().contains(&kind)) {
                if budget < Duration::from_secs(5) {
                    println!("no time left to shrink seed {} for {kind}", outcome.seed);
                    continue;
                }
                if let Some(result) = shrink(outcome, kind, &opts, budget, &out)? {
                    shrunk.push(result);
                }
            }
        }
    }

    print_table(
        &outcomes,
        &errors,
        &seeds,
        fresh_base.zip(fresh_count),
        run_time,
        &shrunk,
    );
    Ok(errors.is_empty() && outcomes.iter().all(|o| !o.failed()))
}

/// A failing outcome's report: a file with everything, a few lines on stdout.
fn report_one(
    outcome: &Outcome,
    out: &Path,
    full: bool,
    fixed: Option<&String>,
) -> Result<(), BoxError> {
    let kinds: Vec<String> = outcome.kinds().iter().map(ToString::to_string).collect();
    if !outcome.failed() {
        println!(
            "ok   seed {} ({:.1} s){}",
            outcome.seed,
            outcome.took.as_secs_f64(),
            fixed.map_or(String::new(), |c| format!("  [fixed: {c}]"))
        );
        if full {
            println!("  history:");
            for (t, line) in &outcome.history {
                println!("  {t:>6} ms  {line}");
            }
        }
        return Ok(());
    }
    let path = out.join(format!("seed-{}.txt", outcome.seed));
    write_report(outcome, &path, None)?;
    println!(
        "FAIL seed {} ({:.1} s): {}{}",
        outcome.seed,
        outcome.took.as_secs_f64(),
        kinds.join(", "),
        fixed.map_or(String::new(), |c| format!("  [fixed: {c}]"))
    );
    for finding in outcome
        .findings
        .iter()
        .take(if full { usize::MAX } else { 6 })
    {
        let first = finding.detail.lines().next().unwrap_or("");
        println!("  - {}: {first}", finding.kind);
        if !full {
            // The history of the first record it names, in a few lines.
            if let Some(record) = finding.records.first() {
                let (coll, key) = record.split_once('/').unwrap_or((record, ""));
                let needle = format!("{coll}: ");
                let sig = format!("[{coll}/{key}/");
                let lines: Vec<&(u64, String)> = outcome
                    .history
                    .iter()
                    .filter(|(_, l)| {
                        (l.contains(&needle) && l.split_whitespace().any(|w| w == key))
                            || l.contains(&sig)
                    })
                    .collect();
                for (t, line) in lines.iter().rev().take(12).rev() {
                    println!("      {t:>6} ms  {line}");
                }
            }
        }
    }
    if !full && outcome.findings.len() > 6 {
        println!("  - … {} more in the report", outcome.findings.len() - 6);
    }
    if full {
        println!("  history:");
        for (t, line) in &outcome.history {
            println!("  {:>6} ms  {line}", t);
        }
    }
    println!("  replay: modelcheck --seed {}", outcome.seed);
    println!("  report: {}", path.display());
    Ok(())
}

fn write_report(outcome: &Outcome, path: &Path, shrunk: Option<&str>) -> Result<(), BoxError> {
    let mut file = std::fs::File::create(path)?;
    let scenario = Scenario::generate(outcome.seed);
    writeln!(file, "seed {}: {}", outcome.seed, scenario.describe())?;
    if let Some(note) = shrunk {
        writeln!(file, "{note}")?;
    }
    writeln!(
        file,
        "took {:.1} s\n\nFindings:",
        outcome.took.as_secs_f64()
    )?;
    for finding in &outcome.findings {
        writeln!(file, "- {}: {}", finding.kind, finding.detail)?;
    }
    writeln!(file, "\nThe plan (event index: time, event):")?;
    for (i, timed) in scenario.events.iter().enumerate() {
        writeln!(
            file,
            "  {i:>3}: {:>5} ms  {}",
            timed.at_ms,
            scenario.event_text(&timed.event)
        )?;
    }
    writeln!(file, "\nWhat happened (ms since the start):")?;
    for (t, line) in &outcome.history {
        writeln!(file, "{t:>7}  {line}")?;
    }
    for (title, text) in &outcome.notes {
        writeln!(file, "\n== {title}\n{text}")?;
    }
    if let Some(kept) = &outcome.kept {
        writeln!(
            file,
            "\nThe run's folder (ferry's logs, config, store): {}",
            kept.display()
        )?;
    }
    Ok(())
}

struct Shrunk {
    seed: u64,
    from: usize,
    to: usize,
    keep: Vec<bool>,
    runs: u32,
    kind: Kind,
}

/// Takes events out while a failure of kind `wanted` persists, chunks first, then
/// one by one, until the budget is spent.
fn shrink(
    original: &Outcome,
    wanted: Kind,
    opts: &Options,
    budget: Duration,
    out: &Path,
) -> Result<Option<Shrunk>, BoxError> {
    let scenario = Scenario::generate(original.seed);
    let count = scenario.events.len();
    let started = Instant::now();
    // The shrinking runs keep their folder apart, so the original run's stays.
    let opts = &Options {
        ferry: opts.ferry.clone(),
        keep: opts
            .keep
            .as_ref()
            .map(|k| k.join(format!("shrunk-{wanted}"))),
    };
    let mut keep = vec![true; count];
    let mut best: Option<Outcome> = None;
    let mut runs = 0;
    let mut chunk = count.div_ceil(2).max(1);
    println!(
        "shrinking seed {} for {wanted} ({count} events; {} s at most)",
        original.seed,
        budget.as_secs(),
    );
    'outer: while chunk >= 1 {
        let mut progressed = false;
        let mut start = 0;
        while start < count {
            if started.elapsed() > budget {
                break 'outer;
            }
            let mut candidate = keep.clone();
            let mut changed = false;
            for slot in candidate.iter_mut().skip(start).take(chunk) {
                changed |= *slot;
                *slot = false;
            }
            start += chunk;
            if !changed {
                continue;
            }
            runs += 1;
            let outcome = run::run(&scenario, Some(&candidate), opts)?;
            if outcome.kinds().contains(&wanted) {
                keep = candidate;
                best = Some(outcome);
                progressed = true;
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2).max(1).min(chunk - 1).max(1);
        }
    }
    let kept = keep.iter().filter(|k| **k).count();
    let Some(best) = best else {
        println!(
            "  seed {}: no event could be taken out in {runs} run(s) ({:.0} s)",
            original.seed,
            started.elapsed().as_secs_f64()
        );
        return Ok(None);
    };
    let note = format!(
        "shrunk from {count} to {kept} events in {runs} runs ({:.0} s, time-bounded; timing varies between runs, so an event kept may not be needed)",
        started.elapsed().as_secs_f64()
    );
    let path = out.join(format!("seed-{}-shrunk-{wanted}.txt", original.seed));
    write_report(&best, &path, Some(&note))?;
    println!("SHRUNK seed {} ({wanted}): {note}", original.seed);
    for finding in &best.findings {
        println!(
            "  - {}: {}",
            finding.kind,
            finding.detail.lines().next().unwrap_or("")
        );
    }
    println!("  history:");
    for (t, line) in &best.history {
        println!("  {t:>6} ms  {line}");
    }
    println!(
        "  replay: modelcheck --seed {} --events {}",
        original.seed,
        format_events(&keep)
    );
    println!("  report: {}", path.display());
    Ok(Some(Shrunk {
        seed: original.seed,
        from: count,
        to: kept,
        keep,
        runs,
        kind: wanted,
    }))
}

fn print_table(
    outcomes: &[Outcome],
    errors: &[(u64, String)],
    listed: &[u64],
    fresh: Option<(u64, u64)>,
    took: Duration,
    shrunk: &[Shrunk],
) {
    let sum = |f: &dyn Fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for o in outcomes {
        for (kind, n) in &o.counts.faults {
            *faults.entry(kind).or_default() += n;
        }
    }
    let times: Vec<f64> = outcomes.iter().map(|o| o.took.as_secs_f64()).collect();
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let max = times.iter().copied().fold(0.0, f64::max);
    let mut fresh_seeds: Vec<u64> = outcomes
        .iter()
        .map(|o| o.seed)
        .filter(|s| !listed.contains(s))
        .collect();
    fresh_seeds.sort_unstable();
    let mut range = Vec::new();
    if let (Some((base, _)), Some(last)) = (fresh, fresh_seeds.last()) {
        range.push(format!("{base}..={last} (fresh)"));
    }
    if !listed.is_empty() {
        let mut listed = listed.to_vec();
        listed.sort_unstable();
        listed.dedup();
        range.push(if listed.len() > 6 {
            format!(
                "{} listed ({}…{})",
                listed.len(),
                listed[0],
                listed[listed.len() - 1]
            )
        } else {
            listed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        });
    }
    println!();
    println!("| what | count |");
    println!("| --- | --- |");
    println!(
        "| scenarios | {} ({} failed) |",
        outcomes.len(),
        outcomes.iter().filter(|o| o.failed()).count()
    );
    println!("| seeds | {} |", range.join("; "));
    println!(
        "| time per scenario | {mean:.1} s mean, {max:.1} s max ({:.0} s in all) |",
        took.as_secs_f64()
    );
    println!(
        "| events | {} ({} writes, {} process events) |",
        sum(&|o| o.counts.writes + o.counts.process_events),
        sum(&|o| o.counts.writes),
        sum(&|o| o.counts.process_events)
    );
    println!(
        "| kills: SIGKILL at a moment (incl. during start-up) | {} |",
        sum(&|o| o.counts.kill9)
    );
    println!(
        "| kills: SIGKILL on a request | {} |",
        sum(&|o| o.counts.kill_on_request)
    );
    println!("| SIGTERM + start | {} |", sum(&|o| o.counts.term));
    println!("| SIGHUP | {} |", sum(&|o| o.counts.hup));
    println!("| backend switches | {} |", sum(&|o| o.counts.switches));
    println!(
        "| ferry retry / reset-tracking | {} / {} |",
        sum(&|o| o.counts.retries),
        sum(&|o| o.counts.resets)
    );
    println!("| ferry starts | {} |", sum(&|o| o.counts.starts));
    println!(
        "| requests to the server | {} |",
        sum(&|o| o.counts.requests)
    );
    for (kind, n) in &faults {
        println!("| faults: {kind} | {n} |");
    }
    println!("| quiet gaps of seconds | {} |", sum(&|o| o.counts.quiet));
    println!(
        "| record incarnations written | {} |",
        sum(&|o| o.counts.incarnations)
    );
    println!(
        "| keys written again: after ferry ran through a gap (a row of their own required) / without (either outcome) | {} / {} |",
        sum(&|o| o.counts.reused_seen),
        sum(&|o| o.counts.reused_unseen)
    );
    println!("| records lost | **{}** |", sum(&|o| o.counts.tally.lost));
    println!(
        "| records duplicated (extra rows) | **{}** |",
        sum(&|o| o.counts.tally.duplicated)
    );
    println!("| records stale | **{}** |", sum(&|o| o.counts.tally.stale));
    println!(
        "| records revived | **{}** |",
        sum(&|o| o.counts.tally.revived)
    );
    println!(
        "| extra (content never in the store) | **{}** |",
        sum(&|o| o.counts.tally.extra)
    );
    println!(
        "| records undelivered with a reason (failed) | {} |",
        sum(&|o| o.counts.tally.excused)
    );
    println!(
        "| changed retries of a claimed create, answered 422 (accepted) | {} |",
        sum(&|o| o.counts.tally.changed_claim_retries)
    );
    for kind in KINDS {
        let seeds: Vec<u64> = outcomes
            .iter()
            .filter(|o| o.kinds().contains(&kind))
            .map(|o| o.seed)
            .collect();
        let shown: Vec<String> = seeds.iter().take(6).map(ToString::to_string).collect();
        println!(
            "| failures: {kind} | {}{} |",
            seeds.len(),
            if seeds.is_empty() {
                String::new()
            } else {
                format!(
                    " (seeds {}{})",
                    shown.join(", "),
                    if seeds.len() > 6 { ", …" } else { "" }
                )
            }
        );
    }
    if !errors.is_empty() {
        println!("| runs that could not be carried out | {} |", errors.len());
    }
    for s in shrunk {
        println!(
            "| shrunk: {} (seed {}) | {} → {} events in {} runs: --seed {} --events {} |",
            s.kind,
            s.seed,
            s.from,
            s.to,
            s.runs,
            s.seed,
            format_events(&s.keep)
        );
    }
}
