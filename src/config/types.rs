//! Validated config values. Each checks itself while being deserialized, so a bad value
//! is reported by the TOML parser at its own line and column.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, String> {
                $check(text).map(|()| $name(text.to_string()))
            }

            /// For values ferry itself supplies (defaults), which are known to be valid.
            #[allow(dead_code)] // not every type has a default
            pub(crate) fn new_unchecked(text: &str) -> Self {
                debug_assert!($check(text).is_ok(), "{text:?}");
                $name(text.to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// A collection's name: its SQLite table and JSON file stem.
    CollectionName,
    check_collection_name
);
checked_string!(
    /// The name of a field of a record (a SQLite column).
    FieldName,
    check_field_name
);
checked_string!(
    /// A path relative to `remote.url`, starting with `/`.
    Endpoint,
    check_endpoint
);
checked_string!(
    /// A JSON pointer (RFC 6901) into the server's answer, like `/id` or `/data/id`.
    JsonPointer,
    check_json_pointer
);
checked_string!(
    /// An HTTP header name, or empty to send no such header.
    HeaderName,
    check_header_name
);
checked_string!(
    /// The server's base URL (`http://` or `https://`).
    RemoteUrl,
    check_url
);

fn check_collection_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(format!(
            "expected a name of letters, digits, '_' and '-' that starts with a letter, \
             at most 64 characters (got {name:?}); it names a SQLite table and a JSON file"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "sync_tracking" || lower.starts_with("ferry_") || lower.starts_with("sqlite_") {
        return Err(format!(
            "{name:?} is reserved for ferry's own tables (sync_tracking, ferry_*, sqlite_*); pick another name"
        ));
    }
    Ok(())
}

fn check_field_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') || name.len() > 128 {
        return Err(format!(
            "expected a field name of 1 to 128 characters (got {name:?})"
        ));
    }
    Ok(())
}

fn check_endpoint(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "expected a path relative to remote.url that starts with '/', like \"/api/events\" (got {path:?})"
        ));
    }
    Ok(())
}

fn check_json_pointer(pointer: &str) -> Result<(), String> {
    if !(pointer.is_empty() || pointer.starts_with('/')) {
        return Err(format!(
            "expected a JSON pointer such as \"/id\" or \"/data/id\" (got {pointer:?})"
        ));
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    // RFC 9110 token characters.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return Err(format!(
            "expected an HTTP header name like \"Idempotency-Key\", or \"\" to send none (got {name:?})"
        ));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !url.chars().any(|c| c.is_whitespace()) => Ok(()),
        _ => Err(format!(
            "expected a base URL such as \"http://192.168.1.100:8000\" (got {url:?})"
        )),
    }
}

fn bounded<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: u32,
    max: u32,
    what: &str,
) -> Result<u32, D::Error> {
    let value = i64::deserialize(deserializer)?;
    if value < i64::from(min) || value > i64::from(max) {
        return Err(serde::de::Error::custom(format!(
            "expected {what} from {min} to {max} (got {value})"
        )));
    }
    Ok(value as u32)
}

pub(super) fn max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 256, "a number of requests in flight")
}

pub(super) fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 10_000, "a number of records")
}

pub(super) fn backups_keep<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 1_000, "a number of backups")
}

pub(super) fn batch_max_records<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 10_000, "a number of records")
}
