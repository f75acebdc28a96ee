//! `GET /sums/{key}?min_offset=P:O&wait_ms=`: the sum of one key, answered here or by the
//! owner of its partition ([`super::forward`]).
//!
//! Read-your-writes: with `min_offset=P:O` the answer waits until partition P's committed next
//! offset is above O. It waits on the consumer's watch channel ([`crate::progress`]) when this
//! process owns P; when another process sharing the database owns P, the channel says nothing
//! about P, so it checks SQLite every [`FOREIGN_POLL`] instead. A wait that ends first is a 504
//! carrying the committed next offset.

use crate::contract::Code;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_http::{json, ApiError};
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::reply::Response;

use super::forward::{self, SumRead, SERVED_BY};
use super::{position, Api};

/// How often a read waiting on a partition another process owns checks SQLite.
pub const FOREIGN_POLL: Duration = Duration::from_millis(50);
/// How often a read waiting on an owned partition checks SQLite anyway (ownership may move).
const OWNED_RECHECK: Duration = Duration::from_secs(1);
/// `wait_ms` when `min_offset` is given without it.
const DEFAULT_WAIT: Duration = Duration::from_millis(1000);

#[derive(Debug, Deserialize)]
pub(super) struct SumQuery {
    min_offset: Option<String>,
    wait_ms: Option<u64>,
}

#[derive(Serialize)]
struct SumBody {
    key: String,
    sum: i64,
}

/// What a read-your-writes wait that ended first says beside the error.
#[derive(Serialize)]
struct NotReached {
    partition: i32,
    /// The committed next offset when the wait ended (`null`: nothing committed).
    next_offset: Option<i64>,
}

pub(super) async fn get_sum(read: SumRead, q: SumQuery, api: Api) -> Result<Response, ApiError> {
    let key = percent_encoding::percent_decode_str(&read.raw_key)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(Code::InvalidKey, "key is not valid percent-encoded utf-8")
        })?
        .into_owned();
    if let Some(answer) = forward::to_owner(&api, &key, &read).await? {
        return Ok(answer);
    }
    if let Some(min) = &q.min_offset {
        let (partition, offset) = position("min_offset", min)?;
        let wait = q
            .wait_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis)
            .min(api.limits.max_wait);
        if let Err(current) = wait_past(&api, partition, offset, wait).await? {
            let message = format!(
                "partition {partition} has not committed past offset {offset} within {} ms",
                wait.as_millis()
            );
            let error = ApiError::new(StatusCode::GATEWAY_TIMEOUT, Code::OffsetNotReached, message);
            return Ok(error.with_fields(NotReached {
                partition,
                next_offset: current,
            }));
        }
    }
    let k = key.clone();
    let mut reply = match api.reader.read(move |s| s.key_sum(&k)).await? {
        Some(sum) => json(StatusCode::OK, &SumBody { key, sum }),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                Code::KeyNotFound,
                format!("no increment for key '{key}' has been folded"),
            ))
        }
    };
    if let Some(url) = api
        .forward
        .as_ref()
        .and_then(|f| f.me.url.as_ref()?.parse().ok())
    {
        reply.headers_mut().insert(SERVED_BY, url);
    }
    Ok(reply)
}

/// Waits until `partition`'s committed next offset is above `offset`, at most `wait`.
/// `Ok(Err(current))` when it was not reached in time, with the committed next offset then.
async fn wait_past(
    api: &Api,
    partition: i32,
    offset: i64,
    wait: Duration,
) -> Result<Result<(), Option<i64>>, ApiError> {
    let deadline = Instant::now() + wait;
    let mut rx = api.progress.clone();
    let mut check_store = true;
    let mut current = None;
    loop {
        let (owned, published) = {
            let pr = rx.borrow_and_update();
            (
                pr.owned.contains(&partition),
                pr.committed.get(&partition).copied(),
            )
        };
        if published.is_some_and(|n| n > offset) {
            return Ok(Ok(()));
        }
        if owned {
            current = published.or(current);
        }
        if check_store || !owned {
            current = api.reader.read(move |s| s.stored_offset(partition)).await?;
            if current.is_some_and(|n| n > offset) {
                return Ok(Ok(()));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Err(current));
        }
        let tick = if owned { OWNED_RECHECK } else { FOREIGN_POLL };
        let until = deadline.min(now + tick);
        tokio::select! {
            changed = rx.changed() => {
                check_store = false;
                if changed.is_err() {
                    // The consumer is gone: only SQLite can tell.
                    tokio::time::sleep_until(until).await;
                    check_store = true;
                }
            }
            _ = tokio::time::sleep_until(until) => check_store = true,
        }
    }
}
