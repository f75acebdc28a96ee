//! HTTP plumbing that ingest and the aggregator share: the one JSON error shape
//! (`{"error":{"code","message"}}`), turning every warp rejection into it, `/healthz`, and the
//! bearer-token check ([`auth`]) of ingest's writes and the aggregator's reads.
//!
//! What must not live here: routes or handlers of a particular service, or anything about
//! records, sums or Kafka.

pub mod auth;

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// An error answer: an HTTP status and a stable machine-readable code with a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message.to_string(),
        )
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut resp = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(warp::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// `/readyz`'s answer while the brokers refuse this process (a login, a certificate, an ACL):
/// 503 `kafka_access_refused` with the reason.
pub fn kafka_refused(why: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kafka_access_refused", why).retry_after(5)
}

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// Turns any rejection into the JSON error shape. Use as the last `.recover(...)`.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(error_for(&rejection).into_response())
}

fn error_for(r: &Rejection) -> ApiError {
    use warp::reject as rj;
    if let Some(e) = r.find::<ApiError>() {
        return e.clone();
    }
    if r.is_not_found() {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    if let Some(e) = r.find::<rj::PayloadTooLarge>() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::UnsupportedMediaType>() {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::InvalidQuery>() {
        return ApiError::bad_request("invalid_query", e.to_string());
    }
    if let Some(e) = r.find::<rj::InvalidHeader>() {
        return ApiError::bad_request("invalid_header", e.to_string());
    }
    if let Some(e) = r.find::<rj::MissingHeader>() {
        return ApiError::bad_request("missing_header", e.to_string());
    }
    if let Some(e) = r.find::<rj::LengthRequired>() {
        return ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::MethodNotAllowed>() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            e.to_string(),
        );
    }
    tracing::warn!(?r, "unhandled rejection");
    ApiError::internal(format!("{r:?}"))
}

/// `GET /healthz`: 200 while the process serves HTTP.
pub fn healthz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

/// The access log both services use, in place of `warp::trace::request()`, whose line for every
/// 5xx is an ERROR: a 503 while the broker is away, or under back-pressure, is the service
/// working as documented, and its cause is logged where it happens (a broker timeout, the
/// broker outage itself). Every request is a debug line; only a 500, a bug, is an ERROR.
pub fn access_log() -> warp::log::Log<impl Fn(warp::log::Info<'_>) + Copy> {
    warp::log::custom(|info| {
        let (method, path, status) = (info.method(), info.path(), info.status());
        let elapsed_ms = info.elapsed().as_millis() as u64;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%method, path, status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::debug!(%method, path, status = status.as_u16(), elapsed_ms, "request");
        }
    })
}
