//! Reads over many keys (listings, `/top`, `/rejected`, and so the status page), answered where
//! [`crate::read_route::plan`] says: from this member's database alone when it holds every
//! partition (one shared file), refused when an owner is on another database without a URL,
//! else gathered: the member asked sends the same query to every owner on another database,
//! and answers for the partitions its own database holds without a round trip; each says which
//! partitions it answered for ([`Owned`]). If the answers do not cover every partition exactly
//! once (a rebalance moved one meanwhile), the read is refused with 503 and `Retry-After`,
//! never answered incomplete or with a partition counted twice. The caller merges the answers.

use crate::contract::Code;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_http::{json, ApiError};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Api, Forward, FORWARDED_FROM};
use crate::read_route::{plan, Plan};

/// How long a member waits for another's answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// A member's answer for the partitions it owns, as it sends it to the member gathering.
#[derive(Debug, Serialize, Deserialize)]
struct Owned<T> {
    #[serde(flatten)]
    body: T,
    partitions: Vec<i32>,
}

fn unavailable(code: Code, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
}

/// The partitions this member owns now.
fn owned(api: &Api) -> BTreeSet<i32> {
    api.progress.borrow().owned.clone()
}

/// Answers `GET {path}?{query}`, a read over many keys, where [`crate::read_route::plan`]
/// says. `local` reads this member's database: all of it (`None`) when it holds every
/// partition; the partitions it owns when another member gathers (the answer then lists
/// them); else the partitions it holds, and every other owner's answer is asked for, all going
/// to `merge`.
pub(super) async fn answer<T, Fut>(
    api: &Api,
    forwarded: bool,
    path: &str,
    query: &[(&str, String)],
    local: impl Fn(Option<BTreeSet<i32>>) -> Fut,
    merge: impl FnOnce(Vec<T>) -> T,
) -> Result<Response, ApiError>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let Some(f) = &api.forward else {
        return Ok(json(StatusCode::OK, &local(None).await?));
    };
    let table = f.peers.table();
    let plan = plan(&f.me, &owned(api), &table, forwarded).map_err(|why| why.error())?;
    let (mine, remote) = match plan {
        Plan::Everything => return Ok(json(StatusCode::OK, &local(None).await?)),
        Plan::Gather { local, remote } => (local, remote),
    };
    if forwarded {
        let body = local(Some(mine.clone())).await?;
        let partitions = mine.into_iter().collect();
        return Ok(json(StatusCode::OK, &Owned { body, partitions }));
    }
    let Some(partitions) = table.partitions else {
        return Err(crate::read_route::Refusal::GroupUnread.error());
    };
    // Every owner is asked at once; this member answers for its partitions without a round
    // trip.
    let local = &local;
    let mine = &mine;
    let here = async move {
        Ok(Owned {
            body: local(Some(mine.clone())).await?,
            partitions: mine.iter().copied().collect(),
        })
    };
    let asked = remote.iter().map(|owner| ask(f, owner, path, query));
    let (here, there) =
        futures::future::try_join(here, futures::future::try_join_all(asked)).await?;
    let mut answers = vec![here];
    answers.extend(there);
    Ok(json(StatusCode::OK, &merge(covering(partitions, answers)?)))
}

/// The answers' bodies if they cover each of `partitions` exactly once. A partition claimed
/// by two answers moved between them, and both hold its keys: merging them would count those
/// keys twice, so the read is refused like a partition claimed by none.
fn covering<T>(partitions: i32, answers: Vec<Owned<T>>) -> Result<Vec<T>, ApiError> {
    let mut covered = BTreeSet::new();
    let mut bodies = Vec::with_capacity(answers.len());
    for answer in answers {
        for p in answer.partitions {
            if !covered.insert(p) {
                return Err(unavailable(
                    Code::OwnerUnknown,
                    format!("partition {p} moved while the answer was gathered; retry"),
                ));
            }
        }
        bodies.push(answer.body);
    }
    if let Some(p) = (0..partitions).find(|p| !covered.contains(p)) {
        return Err(unavailable(
            Code::OwnerUnknown,
            format!("partition {p} moved while the answer was gathered; retry"),
        ));
    }
    Ok(bodies)
}

async fn ask<T: DeserializeOwned>(
    f: &Forward,
    owner: &str,
    path: &str,
    query: &[(&str, String)],
) -> Result<Owned<T>, ApiError> {
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(%owner, path, error = %e, "cannot gather an answer from a member");
        unavailable(
            Code::OwnerUnreachable,
            format!("the member at {owner} did not answer"),
        )
    };
    f.client
        .get(format!("{owner}{path}"))
        .query(query)
        .header(FORWARDED_FROM, f.from())
        .timeout(PEER_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(unreachable)?
        .json::<Owned<T>>()
        .await
        .map_err(unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(partitions: &[i32]) -> Owned<()> {
        Owned {
            body: (),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn answers_must_cover_each_partition_once() {
        assert!(covering(4, vec![answer(&[0, 2]), answer(&[1, 3])]).is_ok());
        // A partition no answer claims: a gap.
        let gap = covering(4, vec![answer(&[0, 2]), answer(&[1])]).unwrap_err();
        assert_eq!(gap.status, StatusCode::SERVICE_UNAVAILABLE);
        // A partition two answers claim: it moved between them, and its keys would count twice.
        let twice = covering(4, vec![answer(&[0, 1, 2]), answer(&[2, 3])]).unwrap_err();
        assert_eq!(twice.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
