//! The aggregator's published HTTP contract as code: its route table and its error codes, the
//! two lists the OpenAPI document (`aggregator/openapi.json`, served at `GET /openapi.json`) is
//! checked against. A handler answers only codes of [`Code`] or [`tally_http::Common`]; a
//! request outside [`ROUTES`] gets 404, or 405 with `Allow`.

use tally_http::{error_codes, Route};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Every operation the aggregator serves.
pub const ROUTES: &[Route] = &[
    Route::get("/"),
    Route::get("/status.js"),
    Route::get("/status.css"),
    Route::get("/healthz"),
    Route::get("/readyz"),
    Route::get("/metrics"),
    Route::get("/openapi.json"),
    Route::get("/sums"),
    Route::get("/sums/{key}"),
    Route::get("/offsets"),
    Route::get("/rejected"),
    Route::get("/top"),
];

/// The OpenAPI 3.1 document, embedded at build time.
pub const OPENAPI: &str = include_str!("../openapi.json");

error_codes! {
    /// The aggregator's own error codes (the shared ones are [`tally_http::Common`]).
    pub enum Code {
        InvalidKey = "invalid_key",
        InvalidLimit = "invalid_limit",
        InvalidPosition = "invalid_position",
        KeyNotFound = "key_not_found",
        OffsetNotReached = "offset_not_reached",
        NotReady = "not_ready",
        PartitionStopped = "partition_stopped",
        TopicRecreated = "topic_recreated",
        OwnerUnknown = "owner_unknown",
        OwnerUnreachable = "owner_unreachable",
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
            "aggregator/openapi.json and the code differ:\n{}",
            d.join("\n")
        );
    }
}
