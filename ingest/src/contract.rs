//! Ingest's published HTTP contract as code: its route table and its error codes, the two
//! lists the OpenAPI document (`ingest/openapi.json`, served at `GET /openapi.json`) is checked
//! against. A handler answers only codes of [`Code`] or [`tally_http::Common`]; a request
//! outside [`ROUTES`] gets 404, or 405 with `Allow`.

use tally_http::{error_codes, Route};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Every operation ingest serves.
pub const ROUTES: &[Route] = &[
    Route::get("/healthz"),
    Route::get("/readyz"),
    Route::get("/metrics"),
    Route::get("/openapi.json"),
    Route::post("/increment"),
    Route::post("/increments"),
];

/// The OpenAPI 3.1 document, embedded at build time.
pub const OPENAPI: &str = include_str!("../openapi.json");

error_codes! {
    /// Ingest's own error codes (the shared ones are [`tally_http::Common`]).
    pub enum Code {
        Unauthorized = "unauthorized",
        RateLimited = "rate_limited",
        Overloaded = "overloaded",
        NotReady = "not_ready",
        BrokerTimeout = "broker_timeout",
        BrokerUnavailable = "broker_unavailable",
        ProducerClosed = "producer_closed",
        BodyTimeout = "body_timeout",
        BodyUnreadable = "body_unreadable",
        InvalidIdempotencyKey = "invalid_idempotency_key",
        MissingKey = "missing_key",
        MissingValue = "missing_value",
        EmptyKey = "empty_key",
        KeyTooLong = "key_too_long",
        ValueNotInteger = "value_not_integer",
        ValueOutOfRange = "value_out_of_range",
        UnknownParameter = "unknown_parameter",
        DuplicateParameter = "duplicate_parameter",
        InvalidUtf8 = "invalid_utf8",
        InvalidJson = "invalid_json",
        EmptyBatch = "empty_batch",
        BatchTooLong = "batch_too_long",
    }
}

/// `GET /openapi.json`.
pub fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(|| {
        warp::reply::with_status(
            warp::reply::with_header(OPENAPI, "content-type", "application/json"),
            StatusCode::OK,
        )
        .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_error_code_and_nothing_else() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let d = tally_http::contract::differences(
            &doc,
            ROUTES,
            &tally_http::contract::code_names(Code::ALL),
        );
        assert!(
            d.is_empty(),
            "ingest/openapi.json and the code differ:\n{}",
            d.join("\n")
        );
    }
}
