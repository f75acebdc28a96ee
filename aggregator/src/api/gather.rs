//! Reads no one database can answer when each member has its own: the member asked sends the
//! same query to every owner in the group (itself included, without a round trip); each
//! answers from its own database for the partitions it owns now and says which those are
//! ([`Owned`]). If the answers do not cover every partition exactly once (a rebalance moved one
//! meanwhile, or a partition has no owner), the read is refused with 503 and `Retry-After`, never
//! answered incomplete or with a partition counted twice. The caller merges the answers.

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

/// Answers `GET {path}?{query}`, a read over many keys. `local` reads this member's database:
/// all of it (`None`) when the database is shared (no forwarding); the partitions it owns when
/// another member gathers (the answer then lists them); else every owner's answer, this
/// member's included, goes to `merge`.
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
    if forwarded {
        let mine = owned(api);
        let body = local(Some(mine.clone())).await?;
        let partitions = mine.into_iter().collect();
        return Ok(json(StatusCode::OK, &Owned { body, partitions }));
    }
    let answers = from_owners(api, f, path, query, |o| local(Some(o))).await?;
    Ok(json(StatusCode::OK, &merge(answers)))
}

/// Every owner's answer to `GET {path}?{query}`; `local` answers for this member's partitions.
async fn from_owners<T, Fut>(
    api: &Api,
    f: &Forward,
    path: &str,
    query: &[(&str, String)],
    local: impl Fn(BTreeSet<i32>) -> Fut,
) -> Result<Vec<T>, ApiError>
where
    T: DeserializeOwned,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let table = f.peers.table();
    let Some(partitions) = table.partitions else {
        return Err(unavailable(
            Code::OwnerUnknown,
            "the group's members have not been read yet".into(),
        ));
    };
    let mut owners = BTreeSet::new();
    for p in 0..partitions {
        let Some(o) = table.owners.get(&p) else {
            return Err(unavailable(
                Code::OwnerUnknown,
                format!("partition {p} has no owner in the group now (a rebalance is under way)"),
            ));
        };
        owners.insert(o.clone());
    }
    // Every owner is asked at once; this member answers for itself without a round trip.
    let local = &local;
    let asked = owners.iter().map(|owner| async move {
        if *owner == f.url {
            let mine = owned(api);
            Ok(Owned {
                body: local(mine.clone()).await?,
                partitions: mine.into_iter().collect(),
            })
        } else {
            ask(f, owner, path, query).await
        }
    });
    let owned_answers = futures::future::try_join_all(asked).await?;
    let answers = covering(partitions, owned_answers)?;
    Ok(answers)
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
        .header(FORWARDED_FROM, &f.url)
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
