//! The HTTP side of delivery: one reused client (keep-alive connections, rustls with
//! the system's roots plus `ca_file`), the bearer token, and turning a request's
//! result into an [`Outcome`]. Only the start of an answer is read, whatever its size.

use std::time::Duration;

use reqwest::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER,
};

use super::transport::{AnswerHeaders, FailureKind, Reply, Request, Sending, Transport};
use super::SyncError;
use crate::config::{ConfigError, Remote, Token};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
    idempotency_header: Option<HeaderName>,
    timeout: Duration,
}

impl Client {
    pub fn new(remote: &Remote, max_concurrent: usize) -> Result<Client, SyncError> {
        let Some(url) = &remote.url else {
            return Err(SyncError::Config(
                "remote.url is not set: set it to the server's base URL (like \"http://192.168.1.100:8000\") to deliver records".into(),
            ));
        };
        // reqwest is built without a default crypto provider; ring is ferry's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .timeout(remote.timeout.get())
            .connect_timeout(remote.timeout.get().min(Duration::from_secs(10)))
            .pool_max_idle_per_host(max_concurrent)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect is an answer to record (`failed`, naming the target), never a
            // detour: following one turns a POST into a GET (301, 302) or sends the
            // record where nobody configured it to go (SPEC §5).
            .redirect(reqwest::redirect::Policy::none());
        for pem in remote.ca_certificates().map_err(config_error)? {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SyncError::Config(format!("remote.ca_file: not a PEM certificate: {e}"))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| SyncError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let token = remote.token().map_err(config_error)?;
        let idempotency_header = match remote.idempotency_header.as_str() {
            "" => None,
            name => Some(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| SyncError::Config(format!("remote.idempotency_header: {e}")))?,
            ),
        };
        Ok(Client {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            token,
            idempotency_header,
            timeout: remote.timeout.get(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Makes one request and says what came back.
    pub async fn request(&self, request: Request) -> Reply {
        let bytes = request.body.len() as u64;
        let mut builder = self
            .http
            .request(request.method, format!("{}{}", self.base, request.path))
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, bytes)
            .body(request.body.into_body());
        if let Some(encoding) = request.encoding {
            builder = builder.header(CONTENT_ENCODING, encoding);
        }
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token.expose());
        }
        if let Some(name) = &self.idempotency_header {
            if let Ok(value) = HeaderValue::from_str(&request.idempotency_key) {
                builder = builder.header(name.clone(), value);
            }
        }
        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(err) => return self.failure(&err),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let headers = AnswerHeaders {
            retry_after: header(RETRY_AFTER.as_str()),
            location: header(LOCATION.as_str()),
            replayed: header("idempotent-replayed").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        };
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = request.answer_limit - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= request.answer_limit {
                        break; // the rest is never read; the connection is dropped
                    }
                }
                Ok(None) => break,
                // The status line arrived: the server's verdict stands, whatever
                // happened to the rest of the answer.
                Err(_) => break,
            }
        }
        Reply::Answer {
            status,
            headers,
            body,
        }
    }

    /// No answer: why, in a kind `ferry diagnose` groups by, and words.
    fn failure(&self, err: &reqwest::Error) -> Reply {
        let text = chain(err);
        if err.is_builder() {
            return Reply::Failure {
                kind: FailureKind::Request,
                error: format!("the request cannot be built: {text}"),
                maybe_processed: false,
            };
        }
        let lower = text.to_ascii_lowercase();
        // Failing to connect means nothing was sent; any later failure (a timeout
        // waiting for the answer, a connection reset) may come after the server
        // acted on the request.
        let connecting = err.is_connect();
        let (kind, error) = if err.is_timeout() && !connecting {
            (
                FailureKind::Timeout,
                format!("timeout: no answer within {:?}", self.timeout),
            )
        } else if err.is_timeout() {
            (
                FailureKind::Timeout,
                format!("timeout: could not connect within {:?}", self.timeout),
            )
        } else if io_kind(err) == Some(std::io::ErrorKind::ConnectionRefused)
            || lower.contains("connection refused")
        {
            (FailureKind::Refused, format!("connection refused: {text}"))
        } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
            (FailureKind::Dns, format!("DNS: {text}"))
        } else if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
        {
            (FailureKind::Tls, format!("TLS: {text}"))
        } else {
            (FailureKind::Connection, format!("connection error: {text}"))
        };
        Reply::Failure {
            kind,
            error,
            maybe_processed: !connecting,
        }
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn io_kind(err: &dyn std::error::Error) -> Option<std::io::ErrorKind> {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

impl Transport for Client {
    fn send(&self, request: Request) -> Sending<'_> {
        Box::pin(self.request(request))
    }
}

/// A config problem met while setting up the client, as the sync error that ends a
/// start with exit 78.
fn config_error(err: ConfigError) -> SyncError {
    SyncError::Config(
        err.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}
