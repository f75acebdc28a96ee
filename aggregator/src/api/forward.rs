//! Forwarding a read of one key to the member that owns the key's partition (a database per
//! aggregator): the read goes there as it arrived, query and all, marked with the member it
//! came from; a forwarded read is always answered locally, so a stale view of the group can
//! never bounce it between members. Answers carry the URL of the member whose database
//! answered. The reads over many keys use the same client to gather ([`super::gather`]).

use crate::contract::Code;
use std::time::Duration;

use tally_http::ApiError;
use warp::http::StatusCode;
use warp::reply::Response;

use super::Api;

/// Header on a forwarded read: the member it came from. A forwarded read is always answered
/// locally, so a stale view of the group can never bounce a read between members.
pub const FORWARDED_FROM: &str = "tally-forwarded-from";
/// Header on every answer to `GET /sums/{key}`: the URL of the member whose database answered.
pub const SERVED_BY: &str = "tally-served-by";

/// Forwarding of reads to the owner of a key's partition (a database per aggregator).
#[derive(Clone)]
pub struct Forward {
    pub(super) url: String,
    pub(super) peers: crate::peers::Peers,
    pub(super) client: reqwest::Client,
}

impl Forward {
    pub fn new(
        url: String,
        peers: crate::peers::Peers,
        read_token: Option<&tally_http::auth::Bearer>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .default_headers(crate::read_auth::forwarding_headers(read_token)?)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Forward { url, peers, client })
    }
}

/// A `GET /sums/{key}` as it arrived, for forwarding it unchanged.
pub(super) struct SumRead {
    pub(super) raw_key: String,
    pub(super) raw_query: String,
    pub(super) forwarded: bool,
}

/// Where a read of `key` is answered: `Ok(None)` here, `Ok(Some(answer))` by the owner.
pub(super) async fn to_owner(
    api: &Api,
    key: &str,
    read: &SumRead,
) -> Result<Option<Response>, ApiError> {
    let Some(f) = api.forward.as_ref().filter(|_| !read.forwarded) else {
        return Ok(None);
    };
    let table = f.peers.table();
    let Some(partitions) = table.partitions else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::OwnerUnknown,
            "the group's members have not been read yet",
        )
        .retry_after(1));
    };
    let p = tally_pipeline::partition::partition_for(key.as_bytes(), partitions);
    if api.progress.borrow().owned.contains(&p) {
        return Ok(None);
    }
    let owner = match table.owners.get(&p) {
        Some(owner) if *owner == f.url => return Ok(None),
        Some(owner) => owner,
        None => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::OwnerUnknown,
                format!("partition {p} has no owner in the group now (a rebalance is under way)"),
            )
            .retry_after(1))
        }
    };
    let mut url = format!("{owner}/sums/{}", read.raw_key);
    if !read.raw_query.is_empty() {
        url = format!("{url}?{}", read.raw_query);
    }
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(%owner, partition = p, error = %e, "cannot forward a read to its owner");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::OwnerUnreachable,
            format!("the owner of partition {p} did not answer"),
        )
        .retry_after(1)
    };
    let answer = f
        .client
        .get(url)
        .header(FORWARDED_FROM, &f.url)
        .timeout(api.limits.max_wait + Duration::from_secs(5))
        .send()
        .await
        .map_err(unreachable)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).map_err(ApiError::internal)?;
    let body = answer.bytes().await.map_err(unreachable)?;
    let mut reply = Response::new(body.to_vec().into());
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert("content-type", "application/json".parse().expect("valid"));
    if let Ok(v) = owner.parse() {
        headers.insert(SERVED_BY, v);
    }
    Ok(Some(reply))
}
