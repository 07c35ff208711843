//! `ferry migrate [--to sqlite|json] [--dry-run]`: the start-up migration, on demand.

use super::{CliError, Exit, Stdout};
use crate::config::{Backend, Config};
use crate::store::migrate;

pub fn migrate(config: &Config, to: Option<Backend>, dry_run: bool) -> Result<Exit, CliError> {
    let to = to.unwrap_or(config.storage.backend);
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
    Ok(Exit::Done)
}
