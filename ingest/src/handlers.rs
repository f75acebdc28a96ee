//! Request handlers: plain async functions from validated inputs to responses.

use crate::contract::Code;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tally_http::{json, ApiError};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::parse::{parse_form, parse_json, parse_ndjson, Increment, JsonBody};
use crate::producer::{Appender, Landed};

pub struct State {
    pub appender: Appender,
    pub max_batch: usize,
    /// Longest counter key accepted (at most the record format's
    /// [`tally_pipeline::record::MAX_KEY_BYTES`]).
    pub max_key_bytes: usize,
}

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Checks an `Idempotency-Key` header: 1 to 128 printable ASCII characters.
pub fn validate_idempotency_key(key: &[u8]) -> Result<&str, ApiError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !key.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(ApiError::bad_request(
            Code::InvalidIdempotencyKey,
            format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} printable ascii characters"
            ),
        ));
    }
    Ok(std::str::from_utf8(key).expect("printable ascii is utf-8"))
}

/// Applies the configured key limit, which may be below the record format's.
fn check_keys(incs: &[Increment], max: usize) -> Result<(), ApiError> {
    match incs.iter().position(|i| i.key.len() > max) {
        Some(i) => Err(ApiError::bad_request(
            Code::KeyTooLong,
            format!(
                "item {i}: key is {} bytes; at most {max} are allowed",
                incs[i].key.len()
            ),
        )),
        None => Ok(()),
    }
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

/// The media type without parameters, lowercased.
fn essence(content_type: &Option<String>) -> Option<String> {
    content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn unsupported(got: Option<&str>, want: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        tally_http::Common::UnsupportedMediaType,
        format!(
            "content type {} is not accepted here; send {want}",
            got.unwrap_or("(none)")
        ),
    )
}

#[derive(Serialize)]
struct One {
    partition: i32,
    offset: i64,
}

#[derive(Serialize)]
struct Batch {
    accepted: usize,
    offsets: BTreeMap<String, i64>,
}

/// `POST /increment`: `key=K&value=V` in a form body or in the query string.
pub async fn increment(
    query: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: Bytes,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    if !body.is_empty() && essence(&content_type).as_deref() != Some(FORM) {
        return Err(unsupported(essence(&content_type).as_deref(), FORM));
    }
    let inc = parse_form(&[query.as_bytes(), &body])?;
    append_one(&state, inc, idempotency_key.as_deref()).await
}

async fn append_one(
    state: &State,
    inc: Increment,
    idempotency_key: Option<&str>,
) -> Result<Response, ApiError> {
    let incs = std::slice::from_ref(&inc);
    check_keys(incs, state.max_key_bytes)?;
    let landed = state.appender.append(incs, idempotency_key).await?;
    Ok(one(landed[0]))
}

fn one(l: Landed) -> Response {
    json(
        StatusCode::OK,
        &One {
            partition: l.partition,
            offset: l.offset,
        },
    )
}

/// `POST /increments`: one JSON object, a JSON array of them, or NDJSON lines.
pub async fn increments(
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: Bytes,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    let incs = match essence(&content_type).as_deref() {
        Some(JSON) => match parse_json(&body, state.max_batch)? {
            JsonBody::One(inc) => return append_one(&state, inc, idempotency_key.as_deref()).await,
            JsonBody::Many(incs) => incs,
        },
        Some(NDJSON) => parse_ndjson(&body, state.max_batch)?,
        other => {
            return Err(unsupported(
                other,
                "application/json or application/x-ndjson",
            ))
        }
    };
    check_keys(&incs, state.max_key_bytes)?;
    let landed = state
        .appender
        .append(&incs, idempotency_key.as_deref())
        .await?;
    let mut offsets = BTreeMap::new();
    for l in &landed {
        let max = offsets.entry(l.partition.to_string()).or_insert(l.offset);
        *max = (*max).max(l.offset);
    }
    Ok(json(
        StatusCode::OK,
        &Batch {
            accepted: landed.len(),
            offsets,
        },
    ))
}
