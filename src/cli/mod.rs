//! The command line (SPEC §7): argument definitions, and dispatch to one module per
//! command. Commands return an [`Exit`]; only `main` turns it into a process exit.

mod backup;
mod check;
mod config_cmd;
mod migrate_cmd;
mod records;
mod stats;
mod sync_cmd;
mod tracking_cmd;

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError, ProcessEnv};
use crate::daemon::{DaemonError, RunLockError};
use crate::store::StoreError;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Store-and-forward record daemon: keeps records in SQLite or JSON and delivers each one to an HTTP server exactly once in effect",
    propagate_version = true
)]
pub struct Cli {
    /// The config file [default: $FERRY_CONFIG, else /etc/ferry/ferry.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write records read from stdin (one JSON object, or several one after another)
    Put {
        /// The collection
        collection: String,
        /// The record's key, when the record does not carry its key field
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Print one record as JSON
    Get {
        collection: String,
        /// The record's key
        id: String,
    },
    /// Print a collection's records, one JSON object per line, in key order
    List {
        collection: String,
        /// Print at most this many records
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Start after this key
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// One delivery pass, then exit: 0 when everything is delivered, 75 when records
    /// remain pending or failed, 1 when another ferry delivers from the store (the
    /// message names its pid; --dry-run runs beside it)
    Sync {
        /// One pass, then exit (the only mode of this command; `ferry run` is the daemon)
        #[arg(long)]
        once: bool,
        /// List what would be sent, send nothing, record nothing
        #[arg(long)]
        dry_run: bool,
        /// Only this collection
        #[arg(long, value_name = "C")]
        collection: Option<String>,
    },
    /// The daemon: deliver records as `sync.mode` says until SIGTERM or SIGINT. Only
    /// one ferry delivers from a store: beside another, it exits 1, naming that one's pid
    Run,
    /// Per collection: records, synced, pending, failed, oldest pending, last success,
    /// bytes delivered; totals; what to do
    Stats {
        /// One line, for cron and motd
        #[arg(long)]
        compact: bool,
        /// A stable JSON document for scripts
        #[arg(long, conflicts_with = "compact")]
        json: bool,
    },
    /// Failed and stuck records grouped by cause, with the command that fixes each
    Diagnose,
    /// Failed and waiting records are tried again now
    Retry {
        #[arg(long, value_name = "C")]
        collection: Option<String>,
    },
    /// Forget every delivery of a collection: all its records are sent again
    ResetTracking {
        #[arg(long, value_name = "C")]
        collection: String,
        /// Do not ask
        #[arg(long)]
        yes: bool,
    },
    /// A consistent copy of the store while the daemon runs
    Backup {
        /// A new file (SQLite) or folder (JSON)
        dest: PathBuf,
    },
    /// Integrity check of the store; --repair copies what can be read into a fresh
    /// store and keeps the damaged one beside it (stop the daemon first: beside it,
    /// --repair exits 1)
    Check {
        #[arg(long)]
        repair: bool,
    },
    /// Bring a backend up to date from the other one (what start-up does); exits 1,
    /// naming its pid, while another ferry uses the store (--dry-run runs beside it)
    Migrate {
        /// The backend to bring up to date [default: storage.backend]
        #[arg(long, value_enum, value_name = "BACKEND")]
        to: Option<BackendArg>,
        /// Say what would be done, do nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate or print the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BackendArg {
    Sqlite,
    Json,
}

impl From<BackendArg> for crate::config::Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Sqlite => crate::config::Backend::Sqlite,
            BackendArg::Json => crate::config::Backend::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Check the config file and exit 0 if it is valid, 78 if not
    Check,
    /// Print the effective configuration (defaults and environment applied)
    Show,
}

/// How a command ended; each maps to an exit code (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Done,
    /// `sync --once` left records pending or failed.
    Incomplete,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Incomplete => 75,
        }
    }
}

/// A command that could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A config problem found after loading (a token file others can read, no URL).
    #[error("config error: {0}")]
    ConfigValue(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another ferry delivers from the store (exit 1, like any runtime error: trying
    /// again later, once it has stopped, may succeed).
    #[error(transparent)]
    RunLock(#[from] RunLockError),
    /// Arguments that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// Anything else that went wrong at run time.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::ConfigValue(_) => 78,
            CliError::Usage(_) => 2,
            CliError::Store(_) | CliError::RunLock(_) | CliError::Runtime(_) => 1,
        }
    }
}

pub fn run(cli: Cli) -> Result<Exit, CliError> {
    let path = config::config_path(cli.config.as_deref(), &ProcessEnv);
    let config = Config::load(&path, &ProcessEnv)?;
    crate::log::init(config.log_level, config.log_target);
    match cli.command {
        Command::Put { collection, id } => records::put(&config, &collection, id.as_deref()),
        Command::Get { collection, id } => records::get(&config, &collection, &id),
        Command::List {
            collection,
            limit,
            after,
        } => records::list(&config, &collection, limit, after.as_deref()),
        Command::Sync {
            once: _,
            dry_run,
            collection,
        } => sync_cmd::sync(config, dry_run, collection.as_deref()),
        Command::Run => sync_cmd::run(config),
        Command::Stats { compact, json } => stats::stats(&config, compact, json),
        Command::Diagnose => stats::diagnose(&config),
        Command::Retry { collection } => tracking_cmd::retry(&config, collection.as_deref()),
        Command::ResetTracking { collection, yes } => {
            tracking_cmd::reset_tracking(&config, &collection, yes)
        }
        Command::Backup { dest } => backup::backup(&config, &dest),
        Command::Check { repair } => check::check(&config, repair),
        Command::Migrate { to, dry_run } => {
            migrate_cmd::migrate(&config, to.map(Into::into), dry_run)
        }
        Command::Config {
            action: ConfigAction::Check,
        } => config_cmd::check(&config),
        Command::Config {
            action: ConfigAction::Show,
        } => config_cmd::show(&config),
    }
}

impl From<crate::sync::SyncError> for CliError {
    fn from(err: crate::sync::SyncError) -> Self {
        use crate::sync::SyncError;
        match err {
            SyncError::Config(message) => CliError::ConfigValue(message),
            SyncError::Store(err) => CliError::Store(err),
            SyncError::Internal(message) | SyncError::Damaged(message) => {
                CliError::Runtime(message)
            }
        }
    }
}

impl From<DaemonError> for CliError {
    fn from(err: DaemonError) -> Self {
        match err {
            DaemonError::Sync(err) => err.into(),
            DaemonError::RunLock(err) => CliError::RunLock(err),
        }
    }
}

/// Writes to stdout; a closed pipe (`ferry list | head`) ends the command quietly.
pub(crate) struct Stdout(std::io::BufWriter<std::io::StdoutLock<'static>>);

impl Stdout {
    pub fn new() -> Self {
        Stdout(std::io::BufWriter::new(std::io::stdout().lock()))
    }

    /// `Ok(false)` when the reader has gone away.
    pub fn line(&mut self, text: impl fmt::Display) -> Result<bool, CliError> {
        use std::io::Write;
        match writeln!(self.0, "{text}") {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(CliError::Runtime(format!("writing to stdout: {e}"))),
        }
    }

    pub fn finish(mut self) -> Result<(), CliError> {
        use std::io::Write;
        match self.0.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(CliError::Runtime(format!("writing to stdout: {e}")))
            }
            _ => Ok(()),
        }
    }
}
