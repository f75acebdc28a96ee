//! `GET /sums?prefix=&after=&limit=`: sums by key prefix, in key order, in pages.
//!
//! With one shared database the page is read from it. With a database per member
//! ([`super::Forward`]) no database holds every partition's current sums, so the listing is
//! gathered: the member asked sends the same query to every owner in the group (itself
//! included); each answers from its own database for the partitions it owns now, and says which
//! those are. The pages are merged in key order. If the owners' answers do not cover every
//! partition (a rebalance moved one meanwhile, or a partition has no owner), the listing is
//! refused with 503 and `Retry-After` instead of being returned incomplete.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_http::{json, ApiError};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Api, Forward, DEFAULT_LIST_LIMIT, FORWARDED_FROM, MAX_LIST_LIMIT};

/// How long a member waits for another's page.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    sum: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Page {
    sums: Vec<Entry>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<String>,
    /// In a member's answer to another member: the partitions it answered for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partitions: Option<Vec<i32>>,
}

pub(super) async fn list_sums(
    q: ListQuery,
    forwarded: bool,
    api: Api,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let prefix = q.prefix.unwrap_or_default();
    let page = match &api.forward {
        None => local(&api, prefix, q.after, limit, None).await?,
        Some(_) if forwarded => {
            let owned = api.progress.borrow().owned.clone();
            local(&api, prefix, q.after, limit, Some(owned)).await?
        }
        Some(f) => gather(&api, f, prefix, q.after, limit).await?,
    };
    Ok(json(StatusCode::OK, &page))
}

/// A page from this member's database: every partition in it, or only `owned`.
async fn local(
    api: &Api,
    prefix: String,
    after: Option<String>,
    limit: usize,
    owned: Option<BTreeSet<i32>>,
) -> Result<Page, ApiError> {
    let only = owned.clone();
    let rows = api
        .reader
        .read(move |s| {
            s.list_sums_of(&prefix, after.as_deref(), limit, |p| {
                only.as_ref().is_none_or(|o| o.contains(&p))
            })
        })
        .await?;
    let next_after = (rows.len() == limit).then(|| rows[rows.len() - 1].0.clone());
    Ok(Page {
        sums: rows
            .into_iter()
            .map(|(key, sum)| Entry { key, sum })
            .collect(),
        next_after,
        partitions: owned.map(|o| o.into_iter().collect()),
    })
}

fn unavailable(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
}

/// The page merged from every owner's page of the same query.
async fn gather(
    api: &Api,
    f: &Forward,
    prefix: String,
    after: Option<String>,
    limit: usize,
) -> Result<Page, ApiError> {
    let table = f.peers.table();
    let Some(partitions) = table.partitions else {
        return Err(unavailable(
            "owner_unknown",
            "the group's members have not been read yet".into(),
        ));
    };
    let mut owners = BTreeSet::new();
    for p in 0..partitions {
        match table.owners.get(&p) {
            Some(o) => owners.insert(o.clone()),
            None => {
                return Err(unavailable(
                    "owner_unknown",
                    format!(
                        "partition {p} has no owner in the group now (a rebalance is under way)"
                    ),
                ))
            }
        };
    }
    let mut pages = Vec::with_capacity(owners.len());
    for owner in owners {
        let page = if owner == f.url {
            let owned = api.progress.borrow().owned.clone();
            local(api, prefix.clone(), after.clone(), limit, Some(owned)).await?
        } else {
            peer_page(f, &owner, &prefix, after.as_deref(), limit).await?
        };
        pages.push(page);
    }
    let covered: BTreeSet<i32> = pages
        .iter()
        .flat_map(|p| p.partitions.iter().flatten().copied())
        .collect();
    if let Some(p) = (0..partitions).find(|p| !covered.contains(p)) {
        return Err(unavailable(
            "owner_unknown",
            format!("partition {p} moved while the listing was gathered; retry"),
        ));
    }
    let more = pages.iter().any(|p| p.next_after.is_some());
    let mut sums: Vec<Entry> = pages.into_iter().flat_map(|p| p.sums).collect();
    sums.sort_by(|a, b| a.key.cmp(&b.key));
    // A key lives in one partition, so one owner; were it in two (a topic written with another
    // partitioner), both rows are added, as one database adds them.
    sums.dedup_by(|later, first| {
        let same = later.key == first.key;
        if same {
            first.sum = first.sum.saturating_add(later.sum);
        }
        same
    });
    let cut = sums.len() > limit;
    sums.truncate(limit);
    let next_after = (cut || more)
        .then(|| sums.last().map(|e| e.key.clone()))
        .flatten();
    Ok(Page {
        sums,
        next_after,
        partitions: None,
    })
}

async fn peer_page(
    f: &Forward,
    owner: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, ApiError> {
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(%owner, error = %e, "cannot gather a listing page from a member");
        unavailable(
            "owner_unreachable",
            format!("the member at {owner} did not answer"),
        )
    };
    let mut query = vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
    if let Some(a) = after {
        query.push(("after", a.to_owned()));
    }
    f.client
        .get(format!("{owner}/sums"))
        .query(&query)
        .header(FORWARDED_FROM, &f.url)
        .timeout(PEER_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(unreachable)?
        .json::<Page>()
        .await
        .map_err(unreachable)
}
