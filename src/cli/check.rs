//! `ferry check [--repair]`.

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::store::{self, repair};

pub fn check(config: &Config, repair_it: bool) -> Result<Exit, CliError> {
    if repair_it {
        if let Some(pid) = store::running_daemon(config) {
            return Err(CliError::Usage(format!(
                "ferry is running on this store (pid {pid}): stop it first (`sudo systemctl stop ferry`), then repair"
            )));
        }
    }
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
        // A repaired store was not cleanly shut down by definition: drop the marker so
        // the next start does not refuse the repaired copy for the old damage.
        let _ = std::fs::remove_file(store::running_marker(config));
    }
    out.finish()?;
    if damaged {
        return Err(CliError::Runtime(
            "the store failed its integrity check (details above)".into(),
        ));
    }
    Ok(Exit::Done)
}
