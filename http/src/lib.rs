//! HTTP plumbing that ingest and the aggregator share: the one JSON error shape
//! (`{"error":{"code","message"}}`), turning every warp rejection into it, `/healthz`, and the
//! bearer-token check ([`auth`]) of ingest's writes and the aggregator's reads.
//! The published contract's two lists, routes and error codes, and the filter that answers
//! every request outside the route table, live in [`contract`].
//!
//! What must not live here: routes or handlers of a particular service, or anything about
//! records, sums or Kafka.

use std::convert::Infallible;

pub mod auth;
pub mod contract;

pub use contract::{Common, ErrorCode, Route};

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
    /// The methods a path supports, for the `Allow` header of a 405 (RFC 9110, 15.5.6).
    pub allow: Option<String>,
}

impl ApiError {
    /// An error with one of the service's listed codes (a literal string is not accepted, so
    /// every code a handler can answer is in the list the published document is checked
    /// against).
    pub fn new(status: StatusCode, code: impl ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.as_str(),
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(code: impl ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Common::Internal,
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
struct Body<'a, T: Serialize> {
    error: Inner<'a>,
    /// Fields beside `error` ([`ApiError::with_fields`]); `()` adds none.
    #[serde(flatten)]
    fields: T,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// The answer with `fields` (a struct or map) beside `error`, for an error that tells a
    /// client more than its message: `{"error":{"code","message"}, ...fields}`.
    pub fn with_fields<T: Serialize>(self, fields: T) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
            fields,
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
        if let Some(allow) = self.allow.and_then(|a| a.parse().ok()) {
            resp.headers_mut().insert(warp::http::header::ALLOW, allow);
        }
        resp
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.with_fields(())
    }
}

/// `/readyz`'s answer while the brokers refuse this process (a login, a certificate, an ACL):
/// 503 `kafka_access_refused` with the reason.
pub fn kafka_refused(why: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Common::KafkaAccessRefused,
        why,
    )
    .retry_after(5)
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
        return ApiError::new(StatusCode::NOT_FOUND, Common::NotFound, "no such route");
    }
    if let Some(e) = r.find::<rj::PayloadTooLarge>() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Common::BodyTooLarge,
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::UnsupportedMediaType>() {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Common::UnsupportedMediaType,
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::InvalidQuery>() {
        return ApiError::bad_request(Common::InvalidQuery, e.to_string());
    }
    if let Some(e) = r.find::<rj::InvalidHeader>() {
        return ApiError::bad_request(Common::InvalidHeader, e.to_string());
    }
    if let Some(e) = r.find::<rj::MissingHeader>() {
        return ApiError::bad_request(Common::MissingHeader, e.to_string());
    }
    if let Some(e) = r.find::<rj::LengthRequired>() {
        return ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            Common::LengthRequired,
            e.to_string(),
        );
    }
    if let Some(e) = r.find::<rj::MethodNotAllowed>() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Common::MethodNotAllowed,
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> serde_json::Value {
        let bytes = warp::hyper::body::to_bytes(r.into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_have_one_shape_with_or_without_more_fields() {
        let e = ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            contract::Common::InvalidQuery,
            "too late",
        )
        .retry_after(1);
        let plain = e.clone().into_response();
        assert_eq!(plain.headers()["retry-after"], "1");
        assert_eq!(
            body(plain).await,
            serde_json::json!({"error": {"code": "invalid_query", "message": "too late"}})
        );
        #[derive(Serialize)]
        struct Where {
            partition: i32,
            next_offset: Option<i64>,
        }
        let more = e.with_fields(Where {
            partition: 3,
            next_offset: None,
        });
        assert_eq!(more.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            body(more).await,
            serde_json::json!({"error": {"code": "invalid_query", "message": "too late"}, "partition": 3, "next_offset": null})
        );
    }
}
