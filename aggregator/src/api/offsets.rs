//! `GET /offsets`: each partition's committed next offset in this process's database, with the
//! log end and lag of the partitions it owns.

use serde::Serialize;
use tally_http::{json, ApiError};
use warp::http::StatusCode;
use warp::reply::Response;

use super::Api;

#[derive(Serialize)]
struct PartitionOffset {
    partition: i32,
    /// Whether this process owns the partition now. With a database per member, the others
    /// are partitions it owned before or follows as a standby: its database's view, not the
    /// group's.
    owned: bool,
    next_offset: i64,
    /// High watermark as last seen by this process's consumer; `null` unless it owns the
    /// partition and has seen it.
    log_end: Option<i64>,
    lag: Option<i64>,
}

#[derive(Serialize)]
struct OffsetsBody {
    partitions: Vec<PartitionOffset>,
    /// Sum of the known lags; `null` when none is known.
    total_lag: Option<i64>,
}

pub(super) async fn get_offsets(api: Api) -> Result<Response, ApiError> {
    let mut offsets = api.reader.read(|s| s.stored_offsets()).await?;
    let progress = api.progress.borrow().clone();
    // An owned partition with nothing committed yet is at offset 0.
    for p in &progress.owned {
        offsets.entry(*p).or_insert(0);
    }
    let partitions: Vec<PartitionOffset> = offsets
        .into_iter()
        .map(|(partition, next_offset)| PartitionOffset {
            partition,
            owned: progress.owned.contains(&partition),
            next_offset,
            log_end: progress.log_end.get(&partition).copied(),
            lag: progress.lag(partition, Some(next_offset)),
        })
        .collect();
    let lags: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
    let total_lag = (!lags.is_empty()).then(|| lags.iter().sum());
    Ok(json(
        StatusCode::OK,
        &OffsetsBody {
            partitions,
            total_lag,
        },
    ))
}
