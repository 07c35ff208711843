//! Logging set-up. Under systemd (`JOURNAL_STREAM` set) or when the config asks for
//! it, events go to journald with their fields as journal fields (`COLLECTION=`,
//! `LOCAL_ID=`, `REMOTE_ID=`, `HTTP_STATUS=`); otherwise human-readable lines go to
//! stderr. The level is `log_level`, which `FERRY_LOG` (through the config) and
//! `RUST_LOG` override.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogLevel, LogTarget};

pub fn init(level: LogLevel, target: LogTarget) {
    let filter = || match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level.as_str()))
        }
        _ => EnvFilter::new(level.as_str()),
    };
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let journal = if want_journal {
        match tracing_journald::layer() {
            // Field names as they are (COLLECTION=, not FCOLLECTION=).
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("ferry".into()),
            ),
            Err(err) => {
                eprintln!("ferry: journald is not reachable ({err}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    // Tests and embedders may have installed a subscriber already; keep theirs.
    let _ = match journal {
        Some(layer) => tracing_subscriber::registry()
            .with(layer.with_filter(filter()))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_filter(filter()),
            )
            .try_init(),
    };
}
