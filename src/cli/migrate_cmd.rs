//! `ferry migrate [--to sqlite|json] [--dry-run]`: the start-up migration, on demand.

use super::{CliError, Exit, Stdout};
use crate::config::{Backend, Config};
use crate::daemon::RunLock;
use crate::store::migrate;

pub fn migrate(config: &Config, to: Option<Backend>, dry_run: bool) -> Result<Exit, CliError> {
    let to = to.unwrap_or(config.storage.backend);
    // A migration rewrites the store a daemon delivers from (or, with --to, the other
    // one, which a reload or a restart would then read): it waits for no daemon, it
    // refuses beside one. The store this config delivers from is locked first, then the
    // one written. A dry run writes nothing and needs neither.
    let mut locks = Vec::new();
    if !dry_run {
        locks.push(RunLock::acquire(config, config.storage.backend, "migrate")?);
        if to != config.storage.backend {
            locks.push(RunLock::acquire(config, to, "migrate")?);
        }
    }
    let reports = migrate::migrate(config, to, dry_run)?;
    let mut out = Stdout::new();
    if reports.is_empty() {
        out.line(format_args!(
            "nothing to migrate: the {} store is up to date",
            to.as_str()
        ))?;
    }
    for report in &reports {
        out.line(format_args!(
            "{}{report}",
            if dry_run { "would do: " } else { "" }
        ))?;
    }
    out.finish()?;
    drop(locks);
    Ok(Exit::Done)
}
