//! The aggregator's published HTTP contract as code: its route table and its error codes, the
//! two lists the OpenAPI document (`aggregator/openapi.json`, served at `GET /openapi.json`) is
//! checked against. A handler answers only codes of [`Code`] or [`tally_http::Common`]; a
//! request outside [`ROUTES`] gets 404, or 405 with `Allow`.

use tally_http::{error_codes, Route};
use warp::reply::Response;
use warp::{Filter, Rejection};

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
        OwnerNotShared = "owner_not_shared",
    }
}

/// `GET /openapi.json`.
pub fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    tally_http::contract::document(OPENAPI.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_error_code_and_nothing_else() {
        let codes = tally_http::contract::code_names(Code::ALL);
        if let Err(d) = tally_http::contract::check_document(OPENAPI, ROUTES, &codes) {
            panic!("aggregator/openapi.json and the code differ:\n{d}");
        }
    }
}
