//! Logging: journald under systemd (`JOURNAL_STREAM`) or when the config asks, else
//! lines on stderr. `RUST_LOG` overrides the config's `log_level`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogTarget;

pub fn init(level: &str, target: LogTarget) {
    let filter = || match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let journal = if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("ferry-receiver".into()),
            ),
            Err(err) => {
                eprintln!("ferry-receiver: journald is not reachable ({err}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
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
