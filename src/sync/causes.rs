//! Why records were not delivered, in groups an operator can act on, each with the fix
//! (`ferry diagnose`, and the recommendations of `ferry stats`). Pure: it reads the
//! tracking rows' `last_http_status` and `error_message` as the engine writes them.

use crate::config::Config;
use crate::store::Tracking;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    Redirect,
    NoRemoteId,
    InProgress,
    Auth,
    NotFound,
    TooLarge,
    Payload,
    RateLimited,
    ServerError,
    Timeout,
    Refused,
    Dns,
    Tls,
    Other,
}

impl Cause {
    pub fn of(row: &Tracking) -> Cause {
        if let Some(cause) = row.error_cause.as_deref().and_then(Cause::from_code) {
            return cause;
        }
        // Rows written before ferry recorded a cause (and the seed service's): read
        // from the status and the message.
        let message = row
            .error_message
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        match row.last_http_status {
            Some(300..=399) => Cause::Redirect,
            Some(409) => Cause::InProgress,
            Some(401 | 403) => Cause::Auth,
            Some(404) => Cause::NotFound,
            Some(413) => Cause::TooLarge,
            Some(429) => Cause::RateLimited,
            Some(500..=599) => Cause::ServerError,
            Some(400..=499) => Cause::Payload,
            _ if message.starts_with("timeout") => Cause::Timeout,
            _ if message.starts_with("connection refused")
                || message.starts_with("connection error")
                || message.contains("inaccessible")
                || message.contains("unreachable") =>
            {
                Cause::Refused
            }
            _ if message.starts_with("dns") => Cause::Dns,
            _ if message.starts_with("tls") => Cause::Tls,
            _ => Cause::Other,
        }
    }

    /// The cause a recorded code names ([`Tracking::error_cause`]).
    fn from_code(code: &str) -> Option<Cause> {
        use super::transport::FailureKind;
        if code == super::plan::NO_REMOTE_ID {
            return Some(Cause::NoRemoteId);
        }
        Some(match FailureKind::from_code(code)? {
            FailureKind::Timeout => Cause::Timeout,
            FailureKind::Refused | FailureKind::Connection => Cause::Refused,
            FailureKind::Dns => Cause::Dns,
            FailureKind::Tls => Cause::Tls,
            FailureKind::Request => Cause::Other,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Cause::Redirect => {
                "HTTP 3xx (remote.url or an endpoint redirects; ferry does not follow redirects)"
            }
            Cause::NoRemoteId => {
                "updates cannot be PUT (the server's answer to the create had no id)"
            }
            Cause::InProgress => {
                "HTTP 409 (the server is still processing an earlier request with the same Idempotency-Key)"
            }
            Cause::Auth => "HTTP 401/403 (the server refuses ferry's credentials)",
            Cause::NotFound => "HTTP 404 (no such endpoint)",
            Cause::TooLarge => "HTTP 413 (record too large for the server)",
            Cause::Payload => "HTTP 400/422 and other 4xx (the server rejects the record)",
            Cause::RateLimited => "HTTP 429 (the server asks to slow down)",
            Cause::ServerError => "HTTP 5xx (the server fails)",
            Cause::Timeout => "timeout (no answer in time)",
            Cause::Refused => "connection refused or lost (nothing answers)",
            Cause::Dns => "DNS (the server's name does not resolve)",
            Cause::Tls => "TLS (certificate or handshake)",
            Cause::Other => "other",
        }
    }

    /// What to do, with the exact command (for one collection, or all of them).
    pub fn fix(self, config: &Config, collection: Option<&str>) -> String {
        let retry = collection.map_or_else(
            || "`ferry retry`".to_string(),
            |c| format!("`ferry retry --collection {c}`"),
        );
        let collection = collection.unwrap_or("C");
        let file = config.source.display();
        let url = config
            .remote
            .url
            .as_ref()
            .map_or("(remote.url is not set)", |u| u.as_str());
        let token = config.remote.token_file.as_ref().map_or_else(
            || format!("remote.token_file in {file} (none is set)"),
            |t| t.display().to_string(),
        );
        match self {
            Cause::Redirect => format!(
                "set remote.url in {file} (now {url}) or collections[{collection}].endpoint to the address the redirect names (below), then {retry}"
            ),
            Cause::NoRemoteId => format!(
                "set collections[{collection}].remote_id in {file} to the JSON pointer of the id in the server's answer (like \"/id\" or \"/data/id\"), or updates = \"post\", then {retry}"
            ),
            Cause::InProgress => {
                "nothing: ferry asks again with the same key, and the server answers once it is done".to_string()
            }
            Cause::Auth => format!("check {token} (one line, mode 600), then `ferry retry`"),
            Cause::NotFound => format!(
                "check collections[{collection}].endpoint in {file} against the server's API, then {retry}"
            ),
            Cause::TooLarge => format!(
                "raise the server's body size limit (or drop large fields), then {retry}"
            ),
            Cause::Payload => format!(
                "see the server's message below; fix the records (`ferry get {collection} ID`) or the server, then {retry}"
            ),
            Cause::RateLimited => format!(
                "lower remote.max_concurrent in {file} (`sudo systemctl reload ferry`); ferry honours Retry-After and retries by itself"
            ),
            Cause::ServerError => "look at the server's logs; ferry retries by itself with backoff".to_string(),
            Cause::Timeout => format!(
                "check the network to {url}, or raise remote.timeout in {file}; ferry retries by itself"
            ),
            Cause::Refused => format!("check that the server runs and answers at {url} (`curl -v {url}`); ferry retries by itself"),
            Cause::Dns => format!("check the host name in remote.url ({url}) and the board's DNS (`resolvectl query`)"),
            Cause::Tls => format!(
                "for a private certificate authority set remote.ca_file in {file}; check the board's clock (`timedatectl`)"
            ),
            Cause::Other => "read the error below; once fixed, `ferry retry`".to_string(),
        }
    }
}

/// "5 s", "3 min", "2 h", "4 d" since an RFC 3339 / seed date, if it reads as one.
pub fn age(since: &str, now: crate::store::Millis) -> String {
    let Some(then) = crate::store::time::parse_timestamp(since) else {
        return "?".into();
    };
    let secs = (now - then).max(0) / 1000;
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Key;

    fn row(status: Option<u16>, message: &str) -> Tracking {
        let mut row = Tracking::new("c", Key::Int(1), 0);
        row.last_http_status = status;
        row.error_message = Some(message.into());
        row
    }

    #[test]
    fn causes_come_from_the_status_or_the_error() {
        assert_eq!(Cause::of(&row(Some(401), "HTTP 401")), Cause::Auth);
        assert_eq!(
            Cause::of(&row(Some(301), "HTTP 301: remote.url redirects to /a/")),
            Cause::Redirect
        );
        assert_eq!(Cause::of(&row(Some(409), "HTTP 409")), Cause::InProgress);
        let mut coded = row(None, "whatever the words");
        coded.error_cause = Some("no_remote_id".into());
        assert_eq!(Cause::of(&coded), Cause::NoRemoteId);
        coded.error_cause = Some("dns".into());
        assert_eq!(Cause::of(&coded), Cause::Dns);
        assert_eq!(Cause::of(&row(Some(422), "HTTP 422: x")), Cause::Payload);
        assert_eq!(Cause::of(&row(Some(503), "HTTP 503")), Cause::ServerError);
        assert_eq!(
            Cause::of(&row(None, "timeout: no answer within 10s")),
            Cause::Timeout
        );
        assert_eq!(
            Cause::of(&row(None, "connection refused: ...")),
            Cause::Refused
        );
        assert_eq!(
            Cause::of(&row(None, "Serveur inaccessible")),
            Cause::Refused,
            "the seed's words"
        );
        assert_eq!(Cause::of(&row(None, "DNS: failed to lookup")), Cause::Dns);
        assert_eq!(
            Cause::of(&row(None, "TLS: invalid certificate")),
            Cause::Tls
        );
        assert_eq!(age("1970-01-01T00:00:00Z", 7_200_000), "2 h");
    }
}
