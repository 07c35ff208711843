//! What the engine sends its requests through. The engine is handed a transport
//! rather than building one, so a test can give it another; [`super::client::Client`]
//! (reqwest) is ferry's.

use std::future::Future;
use std::pin::Pin;

use reqwest::Method;

use super::body::JsonBody;
use super::plan::Outcome;

/// A request to make for one record.
pub struct Request {
    pub method: Method,
    /// The path after the base URL (`/api/media`, `/api/downloads/17`).
    pub path: String,
    pub body: JsonBody,
    pub idempotency_key: String,
    /// Where the server's id for the record is in its answer (a JSON pointer).
    pub remote_id_pointer: String,
}

pub type Sending<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

pub trait Transport: Send + Sync {
    /// Makes one request and says what came of it; never fails otherwise (no answer
    /// is an [`Outcome`] too).
    fn send(&self, request: Request) -> Sending<'_>;
}
