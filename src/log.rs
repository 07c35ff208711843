//! Logging set-up: human-readable lines on stderr at the configured level, which
//! `FERRY_LOG` (through the config) and `RUST_LOG` override.

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

pub fn init(level: LogLevel) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level.as_str()))
        }
        _ => EnvFilter::new(level.as_str()),
    };
    // Tests and embedders may have installed a subscriber already; keep theirs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
