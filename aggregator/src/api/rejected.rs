//! `GET /rejected?after=P:O&limit=`: quarantined records in (partition, offset) order, in
//! pages, with their count. With one shared database they are read from it; with a database per
//! member each owner answers for its partitions ([`super::gather`]): a member's database may
//! also hold records of partitions it once owned or follows as a standby, which its owner's
//! database holds too.

use crate::contract::Code;
use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tally_http::ApiError;
use tally_pipeline::store::RejectedRow;
use warp::reply::Response;

use super::gather;
use super::{position, Api, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

#[derive(Debug, Deserialize)]
pub(super) struct RejectedQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RejectedRecord {
    partition: i32,
    offset: i64,
    reason: String,
    /// The raw record key and value, base64 (standard alphabet); `null` when absent.
    key_base64: Option<String>,
    value_base64: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RejectedBody {
    /// All quarantined records of the topic, not only this page.
    count: u64,
    records: Vec<RejectedRecord>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<String>,
}

pub(super) async fn get_rejected(
    q: RejectedQuery,
    forwarded: bool,
    api: Api,
) -> Result<Response, ApiError> {
    let after = q
        .after
        .as_deref()
        .map(|a| position("after", a))
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            Code::InvalidLimit,
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let mut query = vec![("limit", limit.to_string())];
    query.extend(q.after.map(|a| ("after", a)));
    let read = |owned| local(&api, after, limit, owned);
    gather::answer(&api, forwarded, "/rejected", &query, read, |bodies| {
        merge(bodies, limit)
    })
    .await
}

/// A page from this member's database: every partition in it, or only `owned`.
async fn local(
    api: &Api,
    after: Option<(i32, i64)>,
    limit: usize,
    owned: Option<BTreeSet<i32>>,
) -> Result<RejectedBody, ApiError> {
    let (count, rows) = api
        .reader
        .read(move |s| {
            let include = |p: i32| owned.as_ref().is_none_or(|o| o.contains(&p));
            let count = s
                .rejected_counts()?
                .into_iter()
                .filter(|(p, _)| include(*p))
                .map(|(_, n)| n)
                .sum();
            Ok((count, s.rejected_of(after, limit, include)?))
        })
        .await?;
    let next_after = (rows.len() == limit).then(|| {
        let last = &rows[rows.len() - 1];
        format!("{}:{}", last.partition, last.offset)
    });
    let b64 = |b: Option<Vec<u8>>| b.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
    let records = rows
        .into_iter()
        .map(|r: RejectedRow| RejectedRecord {
            partition: r.partition,
            offset: r.offset,
            reason: r.reason,
            key_base64: b64(r.key),
            value_base64: b64(r.value),
        })
        .collect();
    Ok(RejectedBody {
        count,
        records,
        next_after,
    })
}

/// Counts added; the first `limit` records in (partition, offset) order; another page follows
/// when one owner had more or the merge was cut.
fn merge(bodies: Vec<RejectedBody>, limit: usize) -> RejectedBody {
    let more = bodies.iter().any(|b| b.next_after.is_some());
    let count = bodies.iter().map(|b| b.count).sum();
    let mut records: Vec<RejectedRecord> = bodies.into_iter().flat_map(|b| b.records).collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    let cut = records.len() > limit;
    records.truncate(limit);
    let next_after = (cut || more)
        .then(|| {
            records
                .last()
                .map(|r| format!("{}:{}", r.partition, r.offset))
        })
        .flatten();
    RejectedBody {
        count,
        records,
        next_after,
    }
}
