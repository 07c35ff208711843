//! `ferry stats [--compact] [--json]` and `ferry diagnose`: what was delivered, what
//! was not and why, and the command that fixes it. They read the store briefly, so
//! they can run while the daemon delivers.

use std::collections::BTreeMap;

use serde_json::json;

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::store::{self, now_ms, Store, Summary, Tracking};
use crate::sync::causes::{age, Cause};

/// `diagnose` reads at most this many failed or stuck records per collection.
const DIAGNOSE_LIMIT: usize = 100_000;
const EXAMPLES: usize = 3;

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

/// The collection the rows share, if they all belong to one (the fix then names it).
fn one_collection(rows: &[Tracking]) -> Option<&str> {
    let first = rows.first()?.collection.as_str();
    rows.iter().all(|r| r.collection == first).then_some(first)
}

/// Failed and stuck records of every collection, grouped by cause.
fn troubles(
    config: &Config,
    store: &mut dyn Store,
) -> Result<BTreeMap<Cause, Vec<Tracking>>, CliError> {
    let mut groups: BTreeMap<Cause, Vec<Tracking>> = BTreeMap::new();
    for collection in &config.collections {
        for row in store.troubled(collection.name.as_str(), DIAGNOSE_LIMIT)? {
            groups.entry(Cause::of(&row)).or_default().push(row);
        }
    }
    Ok(groups)
}

/// One line per cause: "3 failed with HTTP 401/403 … → check /etc/ferry/token, then `ferry retry`".
fn recommendations(
    config: &Config,
    groups: &BTreeMap<Cause, Vec<Tracking>>,
    totals: &Summary,
) -> Vec<String> {
    let mut out: Vec<String> = groups
        .iter()
        .map(|(cause, rows)| {
            let failed = rows
                .iter()
                .filter(|r| r.status == store::Status::Failed)
                .count();
            let waiting = rows.len() - failed;
            let what = match (failed, waiting) {
                (0, w) => format!("{w} waiting to be retried"),
                (f, 0) => format!("{f} failed"),
                (f, w) => format!("{f} failed and {w} waiting"),
            };
            format!(
                "{what} with {} → {}",
                cause.label(),
                cause.fix(config, one_collection(rows))
            )
        })
        .collect();
    if out.is_empty() && totals.counts.pending > 0 {
        out.push(format!(
            "{} record(s) not sent yet: the daemon sends them at its next pass (is it running? `systemctl status ferry`)",
            totals.counts.pending
        ));
    }
    if out.is_empty() {
        out.push("everything is delivered; nothing to do".into());
    }
    out
}

pub fn stats(config: &Config, compact: bool, as_json: bool) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let mut per: Vec<(String, Summary)> = Vec::new();
    let mut total = Summary::default();
    for collection in &config.collections {
        let s = store.summary(collection.name.as_str())?;
        total.counts.records += s.counts.records;
        total.counts.success += s.counts.success;
        total.counts.pending += s.counts.pending;
        total.counts.failed += s.counts.failed;
        total.bytes_delivered += s.bytes_delivered;
        if s.last_success > total.last_success {
            total.last_success = s.last_success.clone();
        }
        if s.oldest_pending.is_some()
            && (total.oldest_pending.is_none() || s.oldest_pending < total.oldest_pending)
        {
            total.oldest_pending = s.oldest_pending.clone();
        }
        per.push((collection.name.as_str().to_string(), s));
    }
    let groups = troubles(config, store.as_mut())?;
    let advice = recommendations(config, &groups, &total);
    let mut out = Stdout::new();
    let c = &total.counts;
    if as_json {
        // A stable shape for scripts: documented in the README, `"version": 1`.
        let entry = |name: &str, s: &Summary| {
            json!({
                "name": name,
                "records": s.counts.records,
                "synced": s.counts.success,
                "synced_percent": (percent(s.counts.success, s.counts.records) * 10.0).round() / 10.0,
                "pending": s.counts.pending,
                "failed": s.counts.failed,
                "oldest_pending": s.oldest_pending,
                "last_success": s.last_success,
                "bytes_delivered": s.bytes_delivered,
            })
        };
        let document = json!({
            "version": 1,
            "backend": config.storage.backend.as_str(),
            "collections": per.iter().map(|(n, s)| entry(n, s)).collect::<Vec<_>>(),
            "totals": entry("total", &total),
            "recommendations": advice,
        });
        out.line(serde_json::to_string_pretty(&document).unwrap_or_default())?;
    } else if compact {
        out.line(format_args!(
            "ferry: {} records · {} synced ({:.1}%) · {} pending · {} failed · last success {}",
            c.records,
            c.success,
            percent(c.success, c.records),
            c.pending,
            c.failed,
            total.last_success.as_deref().unwrap_or("never")
        ))?;
    } else {
        out.line(format_args!(
            "{:<16} {:>9} {:>18} {:>9} {:>8}  {:<24}  {:<24}  {:>10}",
            "collection",
            "records",
            "synced",
            "pending",
            "failed",
            "oldest pending",
            "last success",
            "delivered"
        ))?;
        for (name, s) in per
            .iter()
            .chain([(String::from("total"), total.clone())].iter())
        {
            out.line(format_args!(
                "{:<16} {:>9} {:>18} {:>9} {:>8}  {:<24}  {:<24}  {:>10}",
                name,
                s.counts.records,
                format!(
                    "{} ({:.1}%)",
                    s.counts.success,
                    percent(s.counts.success, s.counts.records)
                ),
                s.counts.pending,
                s.counts.failed,
                s.oldest_pending.as_deref().unwrap_or("-"),
                s.last_success.as_deref().unwrap_or("-"),
                bytes(s.bytes_delivered)
            ))?;
        }
        out.line("")?;
        out.line("recommendations:")?;
        for line in &advice {
            out.line(format_args!("  - {line}"))?;
        }
    }
    out.finish()?;
    Ok(Exit::Done)
}

pub fn diagnose(config: &Config) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let groups = troubles(config, store.as_mut())?;
    let mut out = Stdout::new();
    let total: usize = groups.values().map(Vec::len).sum();
    if total == 0 {
        out.line("no failed or stuck record: nothing to diagnose")?;
        out.finish()?;
        return Ok(Exit::Done);
    }
    let now = now_ms();
    out.line(format_args!(
        "{total} record(s) tried and not delivered, by cause:"
    ))?;
    for (cause, rows) in &groups {
        out.line("")?;
        out.line(format_args!("{} — {} record(s)", cause.label(), rows.len()))?;
        for row in rows.iter().take(EXAMPLES) {
            out.line(format_args!(
                "  {} {}  {} {} ago, {} attempt(s): {}",
                row.collection,
                row.key,
                row.status.as_str(),
                age(&row.sync_date, now),
                row.attempts,
                row.error_message.as_deref().unwrap_or("-")
            ))?;
        }
        if rows.len() > EXAMPLES {
            out.line(format_args!("  … and {} more", rows.len() - EXAMPLES))?;
        }
        out.line(format_args!(
            "  fix: {}",
            cause.fix(config, one_collection(rows))
        ))?;
    }
    out.finish()?;
    Ok(Exit::Done)
}
