//! `GET /top?limit=N`: the keys with the largest sums, largest first (the status page shows
//! them). With a database per member each owner ranks the keys of the partitions it owns
//! ([`super::gather`]); a key lives in one partition, so the first N of the merged rankings are
//! the group's first N.

use crate::contract::Code;
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tally_http::ApiError;
use warp::reply::Response;

use super::gather;
use super::Api;

/// Keys `/top` lists when no `limit` is given, and the most it lists.
pub const DEFAULT_TOP: usize = 10;
pub const MAX_TOP: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct TopKey {
    key: String,
    sum: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopBody {
    keys: Vec<TopKey>,
}

pub(super) async fn get_top(
    query: HashMap<String, String>,
    forwarded: bool,
    api: Api,
) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_TOP,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    Code::InvalidLimit,
                    format!("limit must be an integer from 1 to {MAX_TOP}, got '{raw}'"),
                )
            })?,
    };
    let query = [("limit", limit.to_string())];
    let read = |owned| local(&api, limit, owned);
    gather::answer(&api, forwarded, "/top", &query, read, |bodies| {
        merge(bodies, limit)
    })
    .await
}

/// The first `limit` keys of the owners' rankings, largest sums first (ties by key).
fn merge(bodies: Vec<TopBody>, limit: usize) -> TopBody {
    let mut keys: Vec<TopKey> = bodies.into_iter().flat_map(|b| b.keys).collect();
    keys.sort_by(|a, b| b.sum.cmp(&a.sum).then_with(|| a.key.cmp(&b.key)));
    keys.truncate(limit);
    TopBody { keys }
}

async fn local(api: &Api, limit: usize, owned: Option<BTreeSet<i32>>) -> Result<TopBody, ApiError> {
    let keys = api
        .reader
        .read(move |s| s.top_keys_of(limit, owned.as_ref()))
        .await?;
    let keys = keys
        .into_iter()
        .map(|(key, sum)| TopKey { key, sum })
        .collect();
    Ok(TopBody { keys })
}
