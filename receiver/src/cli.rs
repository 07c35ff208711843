//! The command line: `ferry-receiver [--config PATH] run | stats | config check |
//! token new DEVICE`. Each command returns an [`Exit`]; `main` turns it into the
//! process's exit code.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_PATH};
use crate::store::{Backend, Storage};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-receiver",
    version,
    about = "The server side of ferry: an idempotent HTTP receiver on SQLite or PostgreSQL",
    long_about = "ferry-receiver stores the records ferry boxes send (docs/PROTOCOL.md): one row per \
                  device and key, Idempotency-Keys kept as the IETF draft says, older versions never \
                  written over newer ones, per-collection rules from its config."
)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "FERRY_RECEIVER_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve until SIGTERM or SIGINT; SIGHUP reloads the rules and the tokens.
    Run {
        /// Write `http://<address>` here once listening (useful with `listen = "127.0.0.1:0"`).
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Records by collection and device, and the Idempotency-Keys kept.
    Stats,
    /// Check the config (and the tokens file).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Per-device bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and the tokens file; exit 78 with every problem if invalid.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for DEVICE, add its hash to tokens_file, print the token once.
    New { device: String },
}

/// How a command ended.
#[derive(Debug)]
pub enum Exit {
    Ok,
    /// A runtime failure (database unreachable, port taken): 1.
    Failed(String),
    /// The config is wrong: 78 (EX_CONFIG), which the unit does not restart on.
    Config(String),
}

impl Exit {
    pub fn code(&self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed(_) => 1,
            Exit::Config(_) => 78,
        }
    }
}

impl From<ConfigError> for Exit {
    fn from(err: ConfigError) -> Exit {
        Exit::Config(err.to_string())
    }
}

pub fn load(path: &Path) -> Result<Config, Exit> {
    Config::load(path).map_err(Exit::from)
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|err| Exit::Failed(format!("cannot start the runtime: {err}")))
}

pub fn config_check(path: &Path) -> Exit {
    let config = match load(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match crate::daemon::settings(&config) {
        Ok(settings) => {
            println!("{}: ok", path.display());
            println!("listen: {}", config.listen);
            println!("database: {} ({})", config.database, config.database.kind());
            match (&config.tokens_file, &settings.tokens) {
                (Some(file), Some(tokens)) => {
                    println!("tokens: {} device(s) in {}", tokens.len(), file.display())
                }
                _ => {
                    println!("tokens: none (any client may write; set tokens_file to require them)")
                }
            }
            for rules in &config.collections {
                println!("collection {}: rules set", rules.name);
            }
            Exit::Ok
        }
        Err(err) => Exit::Config(format!("config error: {err}")),
    }
}

pub fn stats(path: &Path) -> Exit {
    let config = match load(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let result = runtime.block_on(async {
        let store = Backend::open(&config).await?;
        store.stats().await
    });
    match result {
        Ok(stats) => {
            println!(
                "database: {} (schema version {})",
                config.database, stats.schema_version
            );
            println!("idempotency keys kept: {}", stats.keys_kept);
            if stats.records.is_empty() {
                println!("no records yet");
            } else {
                println!(
                    "{:<24} {:<28} {:>10}  last updated",
                    "collection", "device", "records"
                );
                for (collection, device, count, last) in &stats.records {
                    println!("{collection:<24} {device:<28} {count:>10}  {last}");
                }
            }
            Exit::Ok
        }
        Err(err) => Exit::Failed(err.to_string()),
    }
}

pub fn token_new(path: &Path, device: &str) -> Exit {
    let config = match load(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let Some(file) = &config.tokens_file else {
        return Exit::Config(format!(
            "{}: tokens_file is not set; set it (e.g. tokens_file = \"/etc/ferry-receiver/tokens\") first",
            path.display()
        ));
    };
    if device.is_empty() || device.chars().any(char::is_whitespace) {
        return Exit::Failed(format!(
            "{device:?} is not a device id: no spaces, not empty"
        ));
    }
    let token = match crate::tokens::generate() {
        Ok(token) => token,
        Err(err) => return Exit::Failed(format!("cannot read /dev/urandom: {err}")),
    };
    if let Err(err) = crate::tokens::append(file, device, &token) {
        return Exit::Failed(err.to_string());
    }
    eprintln!(
        "added a token for {device} to {} (only its hash); put this in the box's remote.token_file, \
         then `systemctl reload ferry-receiver`:",
        file.display()
    );
    println!("{token}");
    Exit::Ok
}

/// `ferry-receiver run`: the daemon, with SIGTERM/SIGINT to stop and SIGHUP to reload.
pub fn run(path: &Path, addr_file: Option<PathBuf>) -> Exit {
    let config = match load(path) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    crate::log::init(&config.log_level, config.log_target);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let path = path.to_path_buf();
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return Exit::Failed("cannot install the signal handlers".into());
        };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Config::load(&path) {
                    Ok(config) => {
                        let _ = tx.send(config).await;
                    }
                    Err(err) => tracing::error!("reload refused, the running config stays:\n{err}"),
                }
            }
        });
        match crate::daemon::run(
            config,
            crate::daemon::Options {
                addr_file,
                bound: None,
            },
            shutdown,
            rx,
        )
        .await
        {
            Ok(()) => Exit::Ok,
            Err(err) if err.is_config() => Exit::Config(err.to_string()),
            Err(err) => Exit::Failed(err.to_string()),
        }
    })
}

pub fn dispatch(cli: Cli) -> Exit {
    match cli.command {
        Command::Run { addr_file } => run(&cli.config, addr_file),
        Command::Stats => stats(&cli.config),
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(&cli.config),
        Command::Token {
            command: TokenCommand::New { device },
        } => token_new(&cli.config, &device),
    }
}
