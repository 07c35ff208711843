//! `ferry retry` and `ferry reset-tracking`: changing what ferry will send.

use std::io::{BufRead, IsTerminal, Write};

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::store;

fn collections<'a>(config: &'a Config, only: Option<&'a str>) -> Result<Vec<&'a str>, CliError> {
    let all: Vec<&str> = config.collections.iter().map(|c| c.name.as_str()).collect();
    match only {
        None => Ok(all),
        Some(name) if all.contains(&name) => Ok(vec![name]),
        Some(name) => Err(CliError::Usage(format!(
            "collection {name:?} is not in the config (it has: {})",
            all.join(", ")
        ))),
    }
}

pub fn retry(config: &Config, only: Option<&str>) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let mut out = Stdout::new();
    let mut total = 0;
    for name in collections(config, only)? {
        let n = store.retry_now(name)?;
        if n > 0 {
            out.line(format_args!(
                "{name}: {n} record(s) will be tried again now"
            ))?;
        }
        total += n;
    }
    if total == 0 {
        out.line("nothing to retry: no failed or waiting record")?;
    } else {
        out.line("the running daemon picks them up at once (continuous mode) or at its next pass")?;
    }
    out.finish()?;
    Ok(Exit::Done)
}

pub fn reset_tracking(config: &Config, collection: &str, yes: bool) -> Result<Exit, CliError> {
    collections(config, Some(collection))?;
    let mut store = store::open(config)?;
    let counts = store.counts(collection)?;
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(CliError::Usage(format!(
                "this forgets every delivery of {collection} ({} record(s) will be sent again); \
                 add --yes to do it without a question",
                counts.records
            )));
        }
        eprint!(
            "This forgets every delivery of collection {collection}: all {} record(s) will be sent again \
             ({} marked delivered now). Type yes to go on: ",
            counts.records, counts.success
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::Runtime(format!("reading the answer: {e}")))?;
        if answer.trim() != "yes" {
            return Err(CliError::Usage("not confirmed: nothing was changed".into()));
        }
    }
    let removed = store.reset_tracking(collection)?;
    // The other backend's tracking too, or the next start-up migration would bring the
    // forgotten deliveries back.
    let other = match config.storage.backend {
        crate::config::Backend::Sqlite => crate::config::Backend::Json,
        crate::config::Backend::Json => crate::config::Backend::Sqlite,
    };
    if store::migrate::exists(config, other) {
        store::open_backend(config, other)?.reset_tracking(collection)?;
    }
    let mut out = Stdout::new();
    out.line(format_args!(
        "{collection}: {removed} delivery record(s) forgotten; all {} record(s) will be sent again",
        counts.records
    ))?;
    out.finish()?;
    Ok(Exit::Done)
}
