//! What the engine sends its requests through. The engine is handed a transport
//! rather than building one, so a test can give it another; [`super::client::Client`]
//! (reqwest) is ferry's.

use std::future::Future;
use std::pin::Pin;

use reqwest::Method;

use super::body::JsonBody;

/// A request to make: for one record, or a batch of them.
pub struct Request {
    pub method: Method,
    /// The path after the base URL (`/api/media`, `/api/downloads/17`).
    pub path: String,
    pub body: JsonBody,
    pub idempotency_key: String,
    /// `Content-Encoding` of the body (`gzip`), when it is compressed.
    pub encoding: Option<&'static str>,
    /// How much of the answer is read, at most: enough for an id or an error message
    /// (a record), or for every member's result (a batch).
    pub answer_limit: usize,
}

/// What came back.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A status line, its headers, and the start of the body.
    Answer {
        status: u16,
        headers: AnswerHeaders,
        body: Vec<u8>,
    },
    /// No answer.
    Failure {
        kind: FailureKind,
        /// What happened, in words, for the log and `ferry diagnose`.
        error: String,
        /// The request may have reached the server and been acted on (not when the
        /// connection could not even be made).
        maybe_processed: bool,
    },
}

/// What an answer carried besides its status and body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerHeaders {
    pub retry_after: Option<String>,
    pub location: Option<String>,
    /// `Idempotent-Replayed: true`.
    pub replayed: bool,
}

/// Why there was no answer: what `ferry diagnose` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Timeout,
    Refused,
    Dns,
    Tls,
    /// The connection broke (reset, closed) or something else below HTTP.
    Connection,
    /// The request could not even be built (a bug, or a body that cannot be sent).
    Request,
}

impl FailureKind {
    /// The stable name it is recorded under (`sync_tracking.error_cause`).
    pub fn code(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Dns => "dns",
            FailureKind::Tls => "tls",
            FailureKind::Connection => "connection",
            FailureKind::Request => "request",
        }
    }

    pub fn from_code(code: &str) -> Option<FailureKind> {
        [
            FailureKind::Timeout,
            FailureKind::Refused,
            FailureKind::Dns,
            FailureKind::Tls,
            FailureKind::Connection,
            FailureKind::Request,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

pub type Sending<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

pub trait Transport: Send + Sync {
    /// Makes one request and says what came back; never fails otherwise (no answer
    /// is a [`Reply`] too).
    fn send(&self, request: Request) -> Sending<'_>;
}
