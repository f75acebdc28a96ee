//! Ingest's published HTTP contract as code: its route table and its error codes, the two
//! lists the OpenAPI document (`ingest/openapi.json`, served at `GET /openapi.json`) is checked
//! against. A handler answers only codes of [`Code`] or [`tally_http::Common`]; a request
//! outside [`ROUTES`] gets 404, or 405 with `Allow`.

use tally_http::{error_codes, Route};
use warp::reply::Response;
use warp::{Filter, Rejection};

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

/// The document as this process serves it: with `--auth-token` the writes' bearer token is
/// required (`security` without its empty alternative), else optional as in the file.
pub fn served_document(auth_required: bool) -> String {
    if !auth_required {
        return OPENAPI.to_owned();
    }
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(|p| p.as_object_mut()) {
            for op in op.values_mut() {
                if let Some(security) = op.get_mut("security").and_then(|s| s.as_array_mut()) {
                    security.retain(|s| s.as_object().is_some_and(|o| !o.is_empty()));
                }
            }
        }
    }
    doc.to_string()
}

/// `GET /openapi.json`.
pub fn openapi(
    auth_required: bool,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    tally_http::contract::document(served_document(auth_required))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_error_code_and_nothing_else() {
        let codes = tally_http::contract::code_names(Code::ALL);
        if let Err(d) = tally_http::contract::check_document(OPENAPI, ROUTES, &codes) {
            panic!("ingest/openapi.json and the code differ:\n{d}");
        }
    }

    #[test]
    fn with_a_token_the_served_document_requires_it_for_writes() {
        let security = |doc: &str, path: &str| {
            let v: serde_json::Value = serde_json::from_str(doc).unwrap();
            v["paths"][path]["post"]["security"].clone()
        };
        let open = served_document(false);
        let closed = served_document(true);
        for path in ["/increment", "/increments"] {
            assert_eq!(
                security(&open, path),
                serde_json::json!([{"bearer": []}, {}])
            );
            assert_eq!(security(&closed, path), serde_json::json!([{"bearer": []}]));
        }
    }
}
