//! `ferry config check` and `ferry config show`.

use super::{CliError, Exit, Stdout};
use crate::config::Config;

pub fn check(config: &Config) -> Result<Exit, CliError> {
    // The files the config names, read as `ferry run` will (the token's mode, the
    // certificates), reported with the key that names them.
    config.remote.check_files()?;
    let mut out = Stdout::new();
    out.line(format_args!(
        "{}: valid ({} backend, {} collection{}: {})",
        config.source.display(),
        config.storage.backend.as_str(),
        config.collections.len(),
        if config.collections.len() == 1 {
            ""
        } else {
            "s"
        },
        config
            .collections
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    if config.remote.url.is_none() {
        out.line("note: remote.url is not set: records are stored but not delivered")?;
    }
    out.finish()?;
    Ok(Exit::Done)
}

pub fn show(config: &Config) -> Result<Exit, CliError> {
    let mut out = Stdout::new();
    out.line(format_args!(
        "# effective configuration of {} (defaults and environment applied)",
        config.source.display()
    ))?;
    if let Some(token_file) = &config.remote.token_file {
        out.line(format_args!(
            "# the bearer token is read from {} and never shown",
            token_file.display()
        ))?;
    }
    out.line(config.to_toml().trim_end())?;
    out.finish()?;
    Ok(Exit::Done)
}
