//! Reads no one database can answer when each member has its own: the member asked sends the
//! same query to every owner in the group (itself included, without a round trip); each
//! answers from its own database for the partitions it owns now and says which those are
//! ([`Owned`]). If the answers do not cover every partition (a rebalance moved one meanwhile,
//! or a partition has no owner), the read is refused with 503 and `Retry-After`, never
//! answered incomplete. The caller merges the answers.

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

fn unavailable(code: &'static str, message: String) -> ApiError {
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
            "owner_unknown",
            "the group's members have not been read yet".into(),
        ));
    };
    let mut owners = BTreeSet::new();
    for p in 0..partitions {
        let Some(o) = table.owners.get(&p) else {
            return Err(unavailable(
                "owner_unknown",
                format!("partition {p} has no owner in the group now (a rebalance is under way)"),
            ));
        };
        owners.insert(o.clone());
    }
    let mut covered = BTreeSet::new();
    let mut answers = Vec::with_capacity(owners.len());
    for owner in owners {
        let answer = if owner == f.url {
            let mine = owned(api);
            Owned {
                body: local(mine.clone()).await?,
                partitions: mine.into_iter().collect(),
            }
        } else {
            ask(f, &owner, path, query).await?
        };
        covered.extend(answer.partitions);
        answers.push(answer.body);
    }
    if let Some(p) = (0..partitions).find(|p| !covered.contains(p)) {
        return Err(unavailable(
            "owner_unknown",
            format!("partition {p} moved while the answer was gathered; retry"),
        ));
    }
    Ok(answers)
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
            "owner_unreachable",
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
