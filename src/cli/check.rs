//! `ferry check [--repair]`.

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::daemon::RunLock;
use crate::store::repair;

pub fn check(config: &Config, repair_it: bool) -> Result<Exit, CliError> {
    // A repair replaces the store under whoever uses it: it refuses beside a daemon.
    let mut lock = if repair_it {
        Some(RunLock::acquire(
            config,
            config.storage.backend,
            "check --repair",
        )?)
    } else {
        None
    };
    let reports = repair::check(config, repair_it)?;
    let mut out = Stdout::new();
    let mut damaged = false;
    for report in &reports {
        out.line(report)?;
        damaged |= report.problem.is_some() && report.recovered.is_none();
    }
    if reports.is_empty() {
        out.line("no store files yet: nothing to check")?;
    }
    if damaged {
        out.line("the store is damaged: `ferry check --repair` recovers what can be read (stop ferry first)")?;
    } else if repair_it
        && reports
            .iter()
            .any(|r| r.recovered.is_some() && r.problem.is_some())
    {
        // The repaired copy is sound: the next start need not check it again for the
        // unclean stop that damaged the old one.
        if let Some(lock) = lock.as_mut() {
            lock.mark_stopped()?;
        }
    }
    out.finish()?;
    if damaged {
        return Err(CliError::Runtime(
            "the store failed its integrity check (details above)".into(),
        ));
    }
    Ok(Exit::Done)
}
