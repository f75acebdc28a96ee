//! Where a read of one key is answered, as [`crate::read_route::decide`] says: here, refused,
//! or forwarded to the member that owns the key's partition on another database: the read goes
//! there as it arrived, query and all, marked with the member it came from; a forwarded read is
//! never forwarded again, so a stale view of the group can never bounce it between members.
//! Answers carry the URL of the member whose database answered. The reads over many keys use
//! the same client to gather ([`super::gather`]).

use crate::contract::Code;
use std::time::Duration;

use tally_http::ApiError;
use warp::http::StatusCode;
use warp::reply::Response;

use super::Api;

/// Header on a forwarded read: the member it came from. A forwarded read is never forwarded
/// again, so a stale view of the group can never bounce a read between members.
pub const FORWARDED_FROM: &str = "tally-forwarded-from";
/// Header on every answer to `GET /sums/{key}`: the URL of the member whose database answered.
pub const SERVED_BY: &str = "tally-served-by";

/// `FORWARDED_FROM` of a member that advertises no URL.
const UNADVERTISED: &str = "unadvertised";

/// What the read path knows of the group ([`crate::read_route`]), and the client that forwards
/// reads to owners on other databases.
#[derive(Clone)]
pub struct Forward {
    pub(super) me: crate::peers::Member,
    pub(super) peers: crate::peers::Peers,
    pub(super) client: reqwest::Client,
}

impl Forward {
    pub fn new(
        me: crate::peers::Member,
        peers: crate::peers::Peers,
        read_token: Option<&tally_http::auth::Bearer>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .default_headers(crate::read_auth::forwarding_headers(read_token)?)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Forward { me, peers, client })
    }

    /// How this member names itself on the reads it forwards.
    pub(super) fn from(&self) -> &str {
        self.me.url.as_deref().unwrap_or(UNADVERTISED)
    }
}

/// A `GET /sums/{key}` as it arrived, for forwarding it unchanged.
pub(super) struct SumRead {
    pub(super) raw_key: String,
    pub(super) raw_query: String,
    pub(super) forwarded: bool,
}

/// Where a read of `key` is answered ([`crate::read_route::decide`]): `Ok(None)` here,
/// `Ok(Some(answer))` by the owner.
pub(super) async fn to_owner(
    api: &Api,
    key: &str,
    read: &SumRead,
) -> Result<Option<Response>, ApiError> {
    use crate::read_route::{decide, partition_of, Route};
    let Some(f) = api.forward.as_ref() else {
        return Ok(None);
    };
    let table = f.peers.table();
    let owned = api.progress.borrow().owned.clone();
    let p = partition_of(&table, key).map_err(|why| why.error())?;
    let owner = match decide(&f.me, &owned, &table, p, read.forwarded) {
        Route::Owner | Route::Shared => return Ok(None),
        Route::Forward(url) => url,
        Route::Refuse(why) => return Err(why.error()),
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
        .header(FORWARDED_FROM, f.from())
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
