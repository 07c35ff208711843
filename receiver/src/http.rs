//! The HTTP contract (docs/PROTOCOL.md), on axum:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /api/<collection>` | `201 {"id": n}` (seed 003), `200 {"id": n}` when the record was here |
//! | `PUT /api/<collection>/<id>` | `200 {"id": n}` |
//! | `POST /api/<collection>/batch` | `200 {"results": [...]}` (PROTOCOL.md §3) |
//! | `GET /api/<collection>[?after=ID&limit=N&device=D]` | the stored rows, by id |
//! | `GET /api/<collection>/<id>` | one stored row |
//! | `GET /health` | `200`, or `503` with the reason |
//! | `GET /metrics` | Prometheus text |
//!
//! Bodies may be gzip-compressed (`Content-Encoding: gzip`; another encoding is 415).
//! With a tokens file, `/api/` needs `Authorization: Bearer <token>`, and a device may
//! only write (and read) its own records.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::check_collection_name;
use crate::plan::{compact_json, Answer, Member, Op};
use crate::service::Service;
use crate::store::Storage;
use crate::version::parse_idempotency_key;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The most rows one `GET /api/<collection>` lists.
pub const MAX_LIST: usize = 10_000;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/{collection}", post(create).get(list))
        .route("/api/{collection}/batch", post(batch))
        .route("/api/{collection}/{id}", get(get_one).put(update))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every request by route and status, with its time.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = match (
        request.method().as_str(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    ) {
        ("POST", Some("/api/{collection}")) => "create",
        ("PUT", Some("/api/{collection}/{id}")) => "update",
        ("POST", Some("/api/{collection}/batch")) => "batch",
        ("GET", Some("/api/{collection}")) => "list",
        ("GET", Some("/api/{collection}/{id}")) => "get",
        ("GET", Some("/health")) => "health",
        ("GET", Some("/metrics")) => "metrics",
        _ => "other",
    };
    let response = next.run(request).await;
    state
        .service
        .metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: u16, message: impl Into<String>) -> Response {
    json_response(status, &json!({ "error": message.into() }))
}

fn answer_response(answer: &Answer) -> Response {
    let mut response = json_response(answer.status, &answer.body);
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn not_found() -> Response {
    error(
        404,
        "no such endpoint: the receiver answers /api/<collection>, /api/<collection>/<id>, /api/<collection>/batch, /health and /metrics",
    )
}

async fn health(State(state): State<AppState>) -> Response {
    match state.service.store().health().await {
        Ok(()) => json_response(200, &json!({ "status": "ok" })),
        Err(err) => json_response(
            503,
            &json!({ "status": "unavailable", "reason": err.to_string() }),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.service.metrics.render(),
    )
        .into_response()
}

/// The device the bearer token names; `Ok(None)` without a tokens file.
#[allow(clippy::result_large_err)]
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    collection: &str,
) -> Result<Option<String>, Response> {
    let settings = state.service.settings();
    let Some(tokens) = &settings.tokens else {
        return Ok(None);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented.and_then(|t| tokens.device(t)) {
        Some(device) => Ok(Some(device.to_string())),
        None => {
            state.service.metrics.rejection(collection, "auth");
            let mut response = error(
                401,
                if presented.is_some() {
                    "the bearer token is not known here; check remote.token_file on the box and the receiver's tokens file"
                } else {
                    "this receiver needs `Authorization: Bearer <token>`; set remote.token_file on the box"
                },
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(response)
        }
    }
}

#[allow(clippy::result_large_err)]
fn check_collection(collection: &str) -> Result<(), Response> {
    check_collection_name(collection)
        .map_err(|message| error(404, format!("no collection {collection:?} here: {message}")))
}

/// The body, gunzipped if need be, as UTF-8 text.
#[allow(clippy::result_large_err)]
fn read_body(state: &AppState, headers: &HeaderMap, body: Bytes) -> Result<String, Response> {
    // Content-Type is not checked: a body that parses as JSON is taken (curl and some
    // clients send form types for JSON); one that does not is a 400 that says so.
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let bytes: Vec<u8> = match encoding.as_str() {
        "identity" | "" => body.into(),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            let limit = state.max_body_bytes as u64;
            let mut reader = flate2::read::GzDecoder::new(&body[..]).take(limit + 1);
            if let Err(err) = reader.read_to_end(&mut out) {
                return Err(error(
                    400,
                    format!("the gzip body cannot be decompressed: {err}"),
                ));
            }
            if out.len() as u64 > limit {
                return Err(error(
                    413,
                    format!(
                        "the body is larger than {limit} bytes once decompressed (max_body_bytes)"
                    ),
                ));
            }
            out
        }
        other => {
            return Err(error(
                415,
                format!("Content-Encoding {other:?} is not supported: send gzip or no compression"),
            ))
        }
    };
    String::from_utf8(bytes).map_err(|_| error(400, "the body is not UTF-8 text (JSON is)"))
}

/// Who writes: the record's identity from the Idempotency-Key, checked against the token.
struct Identity {
    device: String,
    key: Option<String>,
    version: Option<String>,
    idempotency_key: Option<String>,
}

#[allow(clippy::result_large_err)]
fn identity(
    headers: &HeaderMap,
    token_device: Option<&str>,
    record: &Value,
) -> Result<Identity, Response> {
    let idempotency_key = match headers.get(IDEMPOTENCY_HEADER) {
        Some(v) => match v.to_str() {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            _ => {
                return Err(error(
                    400,
                    "the Idempotency-Key header is not printable ASCII",
                ))
            }
        },
        None => None,
    };
    let parts = idempotency_key.as_deref().and_then(parse_idempotency_key);
    let claimed = parts.as_ref().map(|p| p.device.clone()).or_else(|| {
        record
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let device = match (token_device, claimed) {
        (Some(token), Some(claimed)) if token != claimed => {
            return Err(error(
                403,
                format!(
                "this token belongs to device {token:?}, but the request writes for {claimed:?}"
            ),
            ))
        }
        (Some(token), _) => token.to_string(),
        (None, Some(claimed)) => claimed,
        (None, None) => String::new(),
    };
    Ok(Identity {
        device,
        key: parts.as_ref().map(|p| p.key.clone()),
        version: parts.and_then(|p| p.version),
        idempotency_key,
    })
}

async fn create(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    single(state, collection, Op::Create, headers, body).await
}

async fn update(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(404, format!("no record {id:?} here: ids are integers"));
    };
    single(state, collection, Op::Update(id), headers, body).await
}

/// What every write goes through first, single or batch: a known collection, the
/// caller's token (the device it names, if tokens are on), the body as text
/// (decompressed, within the size limit).
#[allow(clippy::result_large_err)]
fn admit(
    state: &AppState,
    collection: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Option<String>, String), Response> {
    check_collection(collection)?;
    let token_device = authenticate(state, headers, collection)?;
    let text = read_body(state, headers, body)?;
    Ok((token_device, text))
}

async fn single(
    state: AppState,
    collection: String,
    op: Op,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token_device, text) = match admit(&state, &collection, &headers, body) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let record: Value = match serde_json::from_str(&text) {
        Ok(record) => record,
        Err(err) => return error(400, format!("the body is not valid JSON: {err}")),
    };
    let who = match identity(&headers, token_device.as_deref(), &record) {
        Ok(who) => who,
        Err(response) => return response,
    };
    let member = Member::from_text(
        &collection,
        op,
        who.device,
        who.key,
        who.version,
        who.idempotency_key,
        compact_json(&text),
    );
    let answers = state.service.write(&collection, vec![member]).await;
    match answers.first() {
        Some(answer) => answer_response(answer),
        None => error(500, "no answer"),
    }
}

async fn batch(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token_device, text) = match admit(&state, &collection, &headers, body) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let members = match batch_members(&state, &collection, token_device.as_deref(), &text) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let keys: Vec<Option<String>> = members.iter().map(|m| m.idempotency_key.clone()).collect();
    let answers = state.service.write(&collection, members).await;
    json_text_response(200, results_json(&keys, &answers))
}

/// `{"results": [...]}`, written out directly (a batch answers thousands of members).
fn results_json(keys: &[Option<String>], answers: &[Answer]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(16 + keys.len() * 96);
    out.push_str("{\"results\":[");
    for (i, (key, answer)) in keys.iter().zip(answers).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"idempotency_key\":");
        out.push_str(&Value::from(key.clone()).to_string());
        let _ = write!(out, ",\"status\":{}", answer.status);
        if let Value::Object(fields) = &answer.body {
            for (name, value) in fields {
                let _ = write!(out, ",{}:{value}", Value::from(name.as_str()));
            }
        }
        if answer.replayed {
            out.push_str(",\"replayed\":true");
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

fn json_text_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A batch as sent (PROTOCOL.md §3). Records stay the text they came in.
#[derive(Deserialize)]
struct BatchBody<'a> {
    device_id: Option<String>,
    #[serde(borrow)]
    records: Option<Vec<BatchItem<'a>>>,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    op: Option<String>,
    #[serde(borrow)]
    remote_id: Option<&'a RawValue>,
    idempotency_key: Option<String>,
    version: Option<String>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

/// A string or a number, as text.
fn scalar_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(text.to_string())
    } else {
        None
    }
}

/// The members of a batch (PROTOCOL.md §3), or the answer to a malformed one.
#[allow(clippy::result_large_err)]
fn batch_members(
    state: &AppState,
    collection: &str,
    token_device: Option<&str>,
    text: &str,
) -> Result<Vec<Member>, Response> {
    let request: BatchBody<'_> = serde_json::from_str(text).map_err(|err| {
        error(
            400,
            format!("not a batch ({err}); a batch is {{\"device_id\", \"collection\", \"records\": [...]}}"),
        )
    })?;
    let device = match request.device_id {
        Some(d) if !d.is_empty() => d,
        _ => {
            return Err(error(
                400,
                "the batch needs \"device_id\", a non-empty string",
            ))
        }
    };
    if let Some(token) = token_device {
        if token != device {
            state.service.metrics.rejection(collection, "auth");
            return Err(error(
                403,
                format!("this token belongs to device {token:?}, but the batch is from {device:?}"),
            ));
        }
    }
    let Some(records) = request.records else {
        return Err(error(400, "the batch needs \"records\", an array"));
    };
    if records.len() > state.max_batch_records {
        state.service.metrics.rejection(collection, "too_large");
        return Err(error(
            413,
            format!(
                "the batch has {} records; this receiver takes at most {} (max_batch_records): split it",
                records.len(),
                state.max_batch_records
            ),
        ));
    }
    let mut members = Vec::with_capacity(records.len());
    for (i, item) in records.into_iter().enumerate() {
        let idempotency_key = match item.idempotency_key {
            Some(k) if !k.is_empty() => k,
            _ => {
                return Err(error(
                    400,
                    format!("records[{i}] needs \"idempotency_key\": results are matched by it"),
                ))
            }
        };
        let key = match item.key.and_then(scalar_text) {
            Some(k) if !k.is_empty() => k,
            _ => {
                return Err(error(
                    400,
                    format!("records[{i}] needs \"key\", a string or a number"),
                ))
            }
        };
        let op = match item.op.as_deref() {
            Some("create") | None => Op::Create,
            Some("update") => match item
                .remote_id
                .and_then(scalar_text)
                .and_then(|id| id.parse::<i64>().ok())
            {
                Some(id) => Op::Update(id),
                None => {
                    return Err(error(
                        400,
                        format!("records[{i}] is an update without an integer \"remote_id\""),
                    ))
                }
            },
            Some(other) => {
                return Err(error(
                    400,
                    format!("records[{i}].op is {other:?}; expected \"create\" or \"update\""),
                ))
            }
        };
        let version = match item.version {
            Some(v) if !v.is_empty() => Some(v),
            _ => parse_idempotency_key(&idempotency_key).and_then(|p| p.version),
        };
        let record_text = item
            .record
            .map_or_else(|| "null".to_string(), |r| compact_json(r.get()));
        members.push(Member::from_text(
            collection,
            op,
            device.clone(),
            Some(key),
            version,
            Some(idempotency_key),
            record_text,
        ));
    }
    Ok(members)
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<i64>,
    limit: Option<usize>,
    device: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = check_collection(&collection) {
        return response;
    }
    let token_device = match authenticate(&state, &headers, &collection) {
        Ok(device) => device,
        Err(response) => return response,
    };
    let device = token_device.or(query.device);
    let limit = query.limit.unwrap_or(1000).clamp(1, MAX_LIST);
    match state
        .service
        .store()
        .list(&collection, device, query.after.unwrap_or(0), limit)
        .await
    {
        Ok(rows) => json_response(
            200,
            &Value::Array(rows.iter().map(|r| r.to_json()).collect()),
        ),
        Err(err) => error(503, format!("the database is unavailable: {err}")),
    }
}

async fn get_one(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = check_collection(&collection) {
        return response;
    }
    let token_device = match authenticate(&state, &headers, &collection) {
        Ok(device) => device,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else {
        return error(404, format!("no record {id:?} here: ids are integers"));
    };
    match state.service.store().get(&collection, id).await {
        Ok(Some(row)) if token_device.as_deref().is_none_or(|d| d == row.device) => {
            json_response(200, &row.to_json())
        }
        Ok(_) => error(404, format!("no record {id} in {collection}")),
        Err(err) => error(503, format!("the database is unavailable: {err}")),
    }
}
