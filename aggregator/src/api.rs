//! The aggregator's HTTP API: sums (one key, with optional read-your-writes waiting, or a
//! listing by prefix), offsets with lag, quarantined records, readiness and Prometheus metrics.
//! Filters here, handlers below them; every error is the shared JSON error shape.
//!
//! With a database per aggregator ([`Forward`]), `GET /sums/{key}` is answered by the owner of
//! the key's partition: another member forwards it there (the owner is read from the group,
//! [`crate::peers`]), query and all, so read-your-writes tokens work through any member; a
//! listing by prefix is gathered from every owner ([`listing`]).
//!
//! Read-your-writes: `GET /sums/{key}?min_offset=P:O` answers once partition P's committed next
//! offset is above O. It waits on the consumer's watch channel ([`crate::progress`]) when this
//! process owns P; when another process sharing the database owns P, the channel says nothing
//! about P, so it checks SQLite every [`FOREIGN_POLL`] instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tally_http::{json, ApiError};
use tally_pipeline::store::Store;
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::progress::ProgressRx;

mod gather;
mod listing;
mod rejected;
mod top;

/// How often a read waiting on a partition another process owns checks SQLite.
pub const FOREIGN_POLL: Duration = Duration::from_millis(50);
/// How often a read waiting on an owned partition checks SQLite anyway (ownership may move).
const OWNED_RECHECK: Duration = Duration::from_secs(1);
/// `wait_ms` when `min_offset` is given without it.
const DEFAULT_WAIT: Duration = Duration::from_millis(1000);
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// A read-only use of its own SQLite connection (WAL lets it read while the consumer writes).
#[derive(Clone)]
pub struct Reader(Arc<Mutex<Store>>);

impl Reader {
    pub fn new(store: Store) -> Self {
        Reader(Arc::new(Mutex::new(store)))
    }

    /// Runs a read on the blocking pool: SQLite calls block, and must not stall the runtime.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> tally_pipeline::store::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let store = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&store)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }
}

/// Bounds the API applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest `wait_ms` honoured; longer asks are capped.
    pub max_wait: Duration,
    /// `/readyz` fails while the owned partitions' total lag is above this.
    pub ready_max_lag: i64,
}

/// Header on a forwarded read: the member it came from. A forwarded read is always answered
/// locally, so a stale view of the group can never bounce a read between members.
pub const FORWARDED_FROM: &str = "tally-forwarded-from";
/// Header on every answer to `GET /sums/{key}`: the URL of the member whose database answered.
pub const SERVED_BY: &str = "tally-served-by";

/// Forwarding of reads to the owner of a key's partition (a database per aggregator).
#[derive(Clone)]
pub struct Forward {
    url: String,
    peers: crate::peers::Peers,
    client: reqwest::Client,
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

/// Everything the handlers read.
#[derive(Clone)]
pub struct Api {
    reader: Reader,
    progress: ProgressRx,
    metrics: PrometheusHandle,
    limits: Limits,
    forward: Option<Forward>,
}

impl Api {
    pub fn new(
        reader: Reader,
        progress: ProgressRx,
        metrics: PrometheusHandle,
        limits: Limits,
    ) -> Self {
        Api {
            reader,
            progress,
            metrics,
            limits,
            forward: None,
        }
    }

    /// Answers reads of keys other members own by forwarding them (`None`: all locally).
    pub fn forwarding(mut self, forward: Option<Forward>) -> Self {
        self.forward = forward;
        self
    }
}

pub fn routes(
    api: Api,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let status = crate::status::routes();
    let with = warp::any().map(move || api.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let sum = warp::path!("sums" / String)
        .and(warp::get())
        .and(warp::query::<SumQuery>())
        .and(raw_query)
        .and(warp::header::optional::<String>(FORWARDED_FROM))
        .and(with.clone())
        .and_then(|k, q, raw, from: Option<String>, a| async move {
            let read = SumRead {
                raw_key: k,
                raw_query: raw,
                forwarded: from.is_some(),
            };
            get_sum(read, q, a).await.map_err(warp::reject::custom)
        });
    let list = warp::path!("sums")
        .and(warp::get())
        .and(warp::query::<listing::ListQuery>())
        .and(warp::header::optional::<String>(FORWARDED_FROM))
        .and(with.clone())
        .and_then(|q, from: Option<String>, a| async move {
            listing::list_sums(q, from.is_some(), a)
                .await
                .map_err(warp::reject::custom)
        });
    let offsets = warp::path!("offsets")
        .and(warp::get())
        .and(with.clone())
        .and_then(|a| async move { get_offsets(a).await.map_err(warp::reject::custom) });
    let rejected = warp::path!("rejected")
        .and(warp::get())
        .and(warp::query::<rejected::RejectedQuery>())
        .and(warp::header::optional::<String>(FORWARDED_FROM))
        .and(with.clone())
        .and_then(|q, from: Option<String>, a| async move {
            rejected::get_rejected(q, from.is_some(), a)
                .await
                .map_err(warp::reject::custom)
        });
    let top = warp::path!("top")
        .and(warp::get())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::header::optional::<String>(FORWARDED_FROM))
        .and(with.clone())
        .and_then(|q, from: Option<String>, a| async move {
            top::get_top(q, from.is_some(), a)
                .await
                .map_err(warp::reject::custom)
        });
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with.clone())
        .and_then(|a| async move { readyz(a).map_err(warp::reject::custom) });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with)
        .map(render_metrics);
    tally_http::healthz()
        .or(sum)
        .unify()
        .or(list)
        .unify()
        .or(offsets)
        .unify()
        .or(rejected)
        .unify()
        .or(top)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(status)
        .unify()
        .recover(tally_http::recover)
        .unify()
        .with(tally_http::access_log())
}

/// `P:O`, a partition and an offset, as in `min_offset` and `after`.
fn position(name: &'static str, s: &str) -> Result<(i32, i64), ApiError> {
    s.split_once(':')
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_position",
                format!("{name} must be PARTITION:OFFSET (two integers), got '{s}'"),
            )
        })
}

#[derive(Debug, Deserialize)]
struct SumQuery {
    min_offset: Option<String>,
    wait_ms: Option<u64>,
}

#[derive(Serialize)]
struct SumBody {
    key: String,
    sum: i64,
}

#[derive(Serialize)]
struct NotReached<'a> {
    error: ErrorInner<'a>,
    partition: i32,
    /// The committed next offset when the wait ended (`null`: nothing committed).
    next_offset: Option<i64>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
}

/// A `GET /sums/{key}` as it arrived, for forwarding it unchanged.
struct SumRead {
    raw_key: String,
    raw_query: String,
    forwarded: bool,
}

/// Where a read of `key` is answered: `Ok(None)` here, `Ok(Some(answer))` by the owner.
async fn route(api: &Api, key: &str, read: &SumRead) -> Result<Option<Response>, ApiError> {
    let Some(f) = api.forward.as_ref().filter(|_| !read.forwarded) else {
        return Ok(None);
    };
    let table = f.peers.table();
    let Some(partitions) = table.partitions else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unknown",
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
                "owner_unknown",
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
            "owner_unreachable",
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

async fn get_sum(read: SumRead, q: SumQuery, api: Api) -> Result<Response, ApiError> {
    let key = percent_encoding::percent_decode_str(&read.raw_key)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request("invalid_key", "key is not valid percent-encoded utf-8")
        })?
        .into_owned();
    if let Some(answer) = route(&api, &key, &read).await? {
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
            let body = NotReached {
                error: ErrorInner {
                    code: "offset_not_reached",
                    message: &message,
                },
                partition,
                next_offset: current,
            };
            return Ok(json(StatusCode::GATEWAY_TIMEOUT, &body));
        }
    }
    let k = key.clone();
    let mut reply = match api.reader.read(move |s| s.key_sum(&k)).await? {
        Some(sum) => json(StatusCode::OK, &SumBody { key, sum }),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "key_not_found",
                format!("no increment for key '{key}' has been folded"),
            ))
        }
    };
    if let Some(url) = api.forward.as_ref().and_then(|f| f.url.parse().ok()) {
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

async fn get_offsets(api: Api) -> Result<Response, ApiError> {
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

/// 200 once this process is in the group, none of its partitions is stopped (the log does not
/// cover its stored offset) and the lag of the partitions it owns is known and at most the
/// bound; 503 otherwise (`partition_stopped` names topic, partitions and offsets;
/// `topic_recreated` names both topic ids).
fn readyz(api: Api) -> Result<Response, ApiError> {
    let progress = api.progress.borrow().clone();
    let not_ready = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m);
    if let Some(why) = tally_pipeline::kafka_access::current() {
        return Err(tally_http::kafka_refused(why));
    }
    if let Some(why) = progress.refused {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "topic_recreated",
            why,
        ));
    }
    if !progress.joined {
        return Err(not_ready("not in the consumer group yet".into()));
    }
    if !progress.stopped.is_empty() {
        let why: Vec<&str> = progress.stopped.values().map(String::as_str).collect();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "partition_stopped",
            why.join("; "),
        ));
    }
    match progress.owned_lag() {
        None => Err(not_ready(
            "the log end of an owned partition is not known yet".into(),
        )),
        Some(lag) if lag > api.limits.ready_max_lag => Err(not_ready(format!(
            "lag {lag} is above the bound {}",
            api.limits.ready_max_lag
        ))),
        Some(lag) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "lag": lag}),
        )),
    }
}

fn render_metrics(api: Api) -> Response {
    api.metrics.run_upkeep();
    warp::reply::with_header(
        api.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{self, Progress, ProgressTx};
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn api_with(keys: &[(&str, i64)], max_lag: i64) -> (Api, ProgressTx) {
        let mut s = Store::in_memory("t").unwrap();
        let mut b = crate::test_support::batch_of(keys);
        b.fold(keys.len() as i64, None, Some(b"\x07junk"), |_| {
            Ok::<_, std::convert::Infallible>(0)
        })
        .unwrap();
        s.apply([(2, &b)]).unwrap();
        let (tx, rx) = progress::channel();
        let limits = Limits {
            max_wait: Duration::from_millis(300),
            ready_max_lag: max_lag,
        };
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        (Api::new(Reader::new(s), rx, metrics, limits), tx)
    }

    async fn get(api: &Api, path: &str) -> (u16, serde_json::Value) {
        let r = warp::test::request()
            .path(path)
            .reply(&routes(api.clone()))
            .await;
        let v = serde_json::from_slice(r.body()).unwrap_or(serde_json::Value::Null);
        (r.status().as_u16(), v)
    }

    #[tokio::test]
    async fn top_lists_the_largest_sums_first_and_checks_its_limit() {
        let (api, _tx) = api_with(&[("a", 3), ("b", 9), ("c", -1), ("a", 2)], 0);
        let api = routes(api);
        let r = warp::test::request().path("/top?limit=2").reply(&api).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.body(),
            r#"{"keys":[{"key":"b","sum":9},{"key":"a","sum":5}]}"#
        );
        let r = warp::test::request().path("/top").reply(&api).await;
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 3);
        for bad in ["0", "-1", "x", "1001"] {
            let r = warp::test::request()
                .path(&format!("/top?limit={bad}"))
                .reply(&api)
                .await;
            assert_eq!(r.status(), 400, "limit={bad}");
            let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_limit");
        }
    }

    #[tokio::test]
    async fn sums_are_served_with_percent_decoded_keys() {
        let (api, _tx) = api_with(&[("a/b c", 5), ("x", -2)], 0);
        let routes = routes(api.clone());
        let r = warp::test::request()
            .path("/sums/a%2Fb%20c")
            .reply(&routes)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), r#"{"key":"a/b c","sum":5}"#);
        let (s, v) = get(&api, "/sums/nope").await;
        assert_eq!(s, 404);
        assert_eq!(v["error"]["code"], "key_not_found");
        assert_eq!(get(&api, "/sums/%FF").await.0, 400);
        let r = warp::test::request()
            .method("POST")
            .path("/offsets")
            .reply(&routes)
            .await;
        assert_eq!(r.status(), 405);
    }

    #[tokio::test]
    async fn offsets_carry_log_end_and_lag_of_owned_partitions() {
        let (api, tx) = api_with(&[("a", 1), ("b", 2)], 0);
        let (_, v) = get(&api, "/offsets").await;
        assert_eq!(
            v,
            serde_json::json!({"partitions":[{"partition":2,"owned":false,"next_offset":3,"log_end":null,"lag":null}],"total_lag":null})
        );
        tx.send_modify(|p| {
            p.owned.extend([2, 5]);
            p.log_end.extend([(2, 10), (5, 4)]);
        });
        let (_, v) = get(&api, "/offsets").await;
        assert_eq!(v["partitions"][0]["lag"], 7);
        assert_eq!(v["partitions"][0]["owned"], true);
        assert_eq!(v["partitions"][0]["log_end"], 10);
        assert_eq!(v["partitions"][1]["partition"], 5);
        assert_eq!(v["partitions"][1]["next_offset"], 0);
        assert_eq!(v["total_lag"], 7 + 4);
    }

    #[tokio::test]
    async fn read_your_writes_waits_for_the_watch_and_times_out_with_the_offset() {
        let (api, tx) = api_with(&[("a", 1)], 0);
        // Already past: answers at once.
        let (s, v) = get(&api, "/sums/a?min_offset=2:1&wait_ms=0").await;
        assert_eq!((s, v["sum"].as_i64()), (200, Some(1)));
        // Not reached: 504 with the committed offset, after the capped wait.
        let started = std::time::Instant::now();
        let (s, v) = get(&api, "/sums/a?min_offset=2:5&wait_ms=100000").await;
        assert_eq!(s, 504, "{v}");
        assert_eq!(v["error"]["code"], "offset_not_reached");
        assert_eq!(v["next_offset"], 2);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Published by the consumer while waiting: answered.
        tx.send_modify(|p| {
            p.owned.insert(2);
        });
        let waiter = tokio::spawn({
            let api = api.clone();
            async move { get(&api, "/sums/a?min_offset=2:5&wait_ms=250").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_modify(|p: &mut Progress| {
            p.committed.insert(2, 6);
        });
        assert_eq!(waiter.await.unwrap().0, 200);
        for bad in ["x", "1", "1:x", ":3"] {
            let (s, v) = get(&api, &format!("/sums/a?min_offset={bad}")).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some("invalid_position"))
            );
        }
    }

    #[tokio::test]
    async fn sums_list_by_prefix_with_paging() {
        let (api, _tx) = api_with(&[("p:1", 1), ("p:2", 2), ("p:3", 3), ("q", 4)], 0);
        let (_, v) = get(&api, "/sums?prefix=p%3A&limit=2").await;
        assert_eq!(
            v,
            serde_json::json!({"sums":[{"key":"p:1","sum":1},{"key":"p:2","sum":2}],"next_after":"p:2"})
        );
        let (_, v) = get(&api, "/sums?prefix=p%3A&limit=2&after=p%3A2").await;
        assert_eq!(
            v,
            serde_json::json!({"sums":[{"key":"p:3","sum":3}],"next_after":null})
        );
        assert_eq!(
            get(&api, "/sums").await.1["sums"].as_array().unwrap().len(),
            4
        );
        assert_eq!(get(&api, "/sums?limit=0").await.0, 400);
        assert_eq!(get(&api, "/sums?limit=x").await.0, 400);
    }

    #[tokio::test]
    async fn rejected_records_are_listed_with_their_bytes() {
        let (api, _tx) = api_with(&[("a", 1)], 0);
        let (s, v) = get(&api, "/rejected").await;
        assert_eq!(s, 200);
        assert_eq!(v["count"], 1);
        let r = &v["records"][0];
        assert_eq!(
            (r["partition"].as_i64(), r["offset"].as_i64()),
            (Some(2), Some(1))
        );
        assert!(r["reason"].as_str().unwrap().starts_with("missing_key"));
        assert_eq!(r["key_base64"], serde_json::Value::Null);
        assert_eq!(r["value_base64"], "B2p1bms=");
        let (_, v) = get(&api, "/rejected?after=2:1").await;
        assert_eq!(
            (v["count"].as_i64(), v["records"].as_array().unwrap().len()),
            (Some(1), 0)
        );
        assert_eq!(get(&api, "/rejected?after=nope").await.0, 400);
    }

    #[tokio::test]
    async fn readyz_follows_the_lag_bound() {
        let (api, tx) = api_with(&[("a", 1)], 5);
        assert_eq!(get(&api, "/readyz").await.0, 503);
        tx.send_modify(|p| {
            p.joined = true;
            p.owned.insert(2);
            p.committed.insert(2, 2);
        });
        let (s, v) = get(&api, "/readyz").await;
        assert_eq!(s, 503, "log end unknown: {v}");
        tx.send_modify(|p| {
            p.log_end.insert(2, 10);
        });
        let (s, v) = get(&api, "/readyz").await;
        assert_eq!((s, v["error"]["code"].as_str()), (503, Some("not_ready")));
        tx.send_modify(|p| {
            p.committed.insert(2, 6);
        });
        assert_eq!(get(&api, "/readyz").await.0, 200);
        tx.send_modify(|p| {
            p.stopped
                .insert(2, "topic t partition 2: the log starts at offset 9".into());
        });
        let (s, v) = get(&api, "/readyz").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (503, Some("partition_stopped"))
        );
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partition 2: the log starts at offset 9"));
        let r = warp::test::request()
            .path("/metrics")
            .reply(&routes(api))
            .await;
        assert_eq!(r.status(), 200);
    }
}
