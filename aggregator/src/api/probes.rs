//! What monitoring asks: `GET /readyz` (in the group, nothing stopped, lag within the bound)
//! and `GET /metrics` (Prometheus text).

use crate::contract::Code;
use tally_http::{json, ApiError};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::Api;

/// 200 once this process is in the group, none of its partitions is stopped (the log does not
/// cover its stored offset) and the lag of the partitions it owns is known and at most the
/// bound; 503 otherwise (`partition_stopped` names topic, partitions and offsets;
/// `topic_recreated` names both topic ids). A mixed group ([`crate::peers::mixed`]) is said in
/// the 200 body (`mixed_databases`) and does not make the member unready: it still answers
/// the reads of the partitions its database holds, and refuses the others by name.
pub(super) fn readyz(api: Api) -> Result<Response, ApiError> {
    let progress = api.progress.borrow().clone();
    let not_ready = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::NotReady, m);
    if let Some(why) = tally_pipeline::kafka_access::current() {
        return Err(tally_http::kafka_refused(why));
    }
    if let Some(why) = progress.refused {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::TopicRecreated,
            why,
        ));
    }
    if !progress.joined {
        return Err(not_ready("not in the consumer group yet".into()));
    }
    if !progress.stopped.is_empty() {
        let why: Vec<&str> = progress.stopped.values().map(String::as_str).collect();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::PartitionStopped,
            why.join("; "),
        ));
    }
    match progress.owned_lag() {
        None => Err(not_ready(
            "the log end of an owned partition is not known yet".into(),
        )),
        Some(lag) if lag > api.limits.ready_max_lag => Err(not_ready(format!(
            "lag {lag} is above the bound {}",
            api.limits.ready_max_lag
        ))),
        Some(lag) => {
            let mut body = serde_json::json!({"status": "ready", "lag": lag});
            // A mixed group leaves this member ready: it answers its own partitions.
            if let Some(why) = api.forward.as_ref().and_then(|f| f.peers.table().mixed) {
                body["mixed_databases"] = why.into();
            }
            Ok(json(StatusCode::OK, &body))
        }
    }
}

pub(super) fn render_metrics(api: Api) -> Response {
    api.metrics.run_upkeep();
    warp::reply::with_header(
        api.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}
