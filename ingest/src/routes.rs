//! Filters: paths, methods, headers and the size- and time-capped body; they hand validated
//! inputs to [`crate::handlers`]. Every rejection becomes the shared JSON error shape.
//!
//! Writes pass [`Guards::admit`] before their body is read: the bearer token (401), the
//! per-client rate limit (429) and the in-flight bound (503), in that order. `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json` are open. Only the operations of
//! [`crate::contract::ROUTES`] are answered (404, or 405 with `Allow`, otherwise).

use crate::contract::Code;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::TryStreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tally_http::{json, ApiError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::handlers::{self, validate_idempotency_key, State};
use crate::telemetry;

/// The peer address of a connection, put in each request's extensions by the server (warp's
/// own remote address is not available when serving through hyper directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What a write must get past before its body is read.
pub struct Guards {
    /// The write token; `None`: no auth.
    authorization: Option<tally_http::auth::Bearer>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    pub max_body: u64,
    pub body_timeout: Duration,
}

impl Guards {
    pub fn new(
        auth_token: &str,
        rate_per_second: u32,
        burst: u32,
        max_in_flight: usize,
        max_body: u64,
        body_timeout: Duration,
    ) -> Guards {
        let limiter = NonZeroU32::new(rate_per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Guards {
            authorization: tally_http::auth::Bearer::new(
                auth_token,
                "send the header Authorization: Bearer <token>",
            ),
            limiter,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            max_body,
            body_timeout,
        }
    }

    /// Auth, then rate limit, then a slot among the in-flight requests (held until the answer).
    pub fn admit(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Some(bearer) = &self.authorization {
            bearer.check(headers)?;
        }
        if let Some(limiter) = &self.limiter {
            let ip = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            if let Err(not_until) = limiter.check_key(&ip) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::RateLimited,
                    format!("too many requests from {ip}; retry after the Retry-After delay"),
                )
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
            }
        }
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Overloaded,
                format!(
                    "{} requests are in flight, the most allowed",
                    self.max_in_flight
                ),
            )
            .retry_after(1)
        })
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Forgets clients not seen lately, so the rate limiter's memory stays bounded.
    pub fn forget_idle_clients(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Caches the answer of `/readyz` for a second, so probes do not hammer the broker.
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

const READY_CACHE: Duration = Duration::from_secs(1);
const METADATA_TIMEOUT: Duration = Duration::from_millis(1500);

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn check(&self, state: &Arc<State>) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last {
            if at.elapsed() < READY_CACHE {
                return ready;
            }
        }
        let s = state.clone();
        // fetch_metadata blocks: off the async threads.
        let ready = tokio::task::spawn_blocking(move || s.appender.has_metadata(METADATA_TIMEOUT))
            .await
            .unwrap_or(false);
        *last = Some((Instant::now(), ready));
        ready
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

pub fn routes(
    state: Arc<State>,
    guards: Arc<Guards>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let auth_required = guards.authorization.is_some();
    let with_state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let content_type = warp::header::optional::<String>("content-type");
    let admit = admit(guards.clone());
    let body = body(guards.max_body, guards.body_timeout);

    let increment = warp::path!("increment")
        .and(warp::post())
        .and(admit.clone())
        .and(query)
        .and(content_type)
        .and(idempotency_key())
        .and(body.clone())
        .and(with_state.clone())
        .and_then(|permit: OwnedSemaphorePermit, q, ct, ik, b, s| async move {
            let r = handlers::increment(q, ct, ik, b, s).await;
            drop(permit);
            r.map_err(warp::reject::custom)
        });
    let increments = warp::path!("increments")
        .and(warp::post())
        .and(admit)
        .and(content_type)
        .and(idempotency_key())
        .and(body)
        .and(with_state.clone())
        .and_then(|permit: OwnedSemaphorePermit, ct, ik, b, s| async move {
            let r = handlers::increments(ct, ik, b, s).await;
            drop(permit);
            r.map_err(warp::reject::custom)
        });
    let readiness = Arc::new(Readiness::new());
    let probe = readiness.clone();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state.clone())
        .then(move |s: Arc<State>| {
            let readiness = readiness.clone();
            async move {
                if let Some(why) = tally_pipeline::kafka_access::current() {
                    return tally_http::kafka_refused(why).into_response();
                }
                if readiness.check(&s).await {
                    json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
                } else {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Code::NotReady,
                        "the producer has no broker metadata for the topic",
                    )
                    .retry_after(1)
                    .into_response()
                }
            }
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state)
        .then(move |s: Arc<State>| {
            let (probe, guards) = (probe.clone(), guards.clone());
            async move {
                let reachable = probe.check(&s).await;
                render_metrics(&s, &guards, reachable)
            }
        });
    let served = tally_http::healthz()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(crate::contract::openapi(auth_required))
        .unify()
        .or(increment)
        .unify()
        .or(increments)
        .unify();
    tally_http::contract::listed(crate::contract::ROUTES)
        .and(served)
        .recover(tally_http::recover)
        .unify()
        .with(warp::log::custom(|info| {
            telemetry::count_request(info.path(), info.status())
        }))
        .with(tally_http::access_log())
}

/// Renders `/metrics`, with the gauges sampled now: queue depth, requests in flight, whether a
/// broker answered the readiness probe (the one `/readyz` uses, cached alike), and the
/// acknowledged log ends.
fn render_metrics(state: &State, guards: &Guards, broker_reachable: bool) -> Response {
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(state.appender.queue_depth() as f64);
    metrics::gauge!(telemetry::IN_FLIGHT).set(guards.in_flight() as f64);
    metrics::gauge!(telemetry::BROKER_REACHABLE).set(if broker_reachable { 1.0 } else { 0.0 });
    state.appender.publish_ends();
    let text = telemetry::handle().render();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}

fn admit(
    guards: Arc<Guards>,
) -> impl Filter<Extract = (OwnedSemaphorePermit,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::addr::remote())
        .and_then(
            move |headers: HeaderMap, ext: Option<ClientAddr>, remote: Option<SocketAddr>| {
                let guards = guards.clone();
                async move {
                    let client = ext.map(|c| c.0).or(remote).map(|a| a.ip());
                    guards.admit(&headers, client).map_err(warp::reject::custom)
                }
            },
        )
}

/// The validated `Idempotency-Key` header, if sent.
fn idempotency_key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(|headers: HeaderMap| async move {
        match headers.get("idempotency-key") {
            None => Ok(None),
            Some(v) => validate_idempotency_key(v.as_bytes())
                .map(|k| Some(k.to_owned()))
                .map_err(warp::reject::custom),
        }
    })
}

/// The request body, at most `limit` bytes whether or not a Content-Length is sent, read
/// within `timeout` (408 after: a slow client cannot hold its slot forever).
fn body(
    limit: u64,
    timeout: Duration,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len, stream| async move {
            match tokio::time::timeout(timeout, collect(len, stream, limit)).await {
                Ok(r) => r,
                Err(_) => Err(warp::reject::custom(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    Code::BodyTimeout,
                    format!(
                        "the body was not received within {} ms",
                        timeout.as_millis()
                    ),
                ))),
            }
        })
}

async fn collect<S, B>(len: Option<u64>, stream: S, limit: u64) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if len.is_some_and(|l| l > limit) {
        return Err(warp::reject::custom(too_large(limit)));
    }
    let mut stream = Box::pin(stream);
    let mut buf = BytesMut::new();
    while let Some(mut chunk) = stream.try_next().await.map_err(|e| {
        warp::reject::custom(ApiError::bad_request(
            Code::BodyUnreadable,
            format!("cannot read the request body: {e}"),
        ))
    })? {
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(too_large(limit)));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            let n = c.len();
            buf.extend_from_slice(c);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        tally_http::Common::BodyTooLarge,
        format!("the body is larger than {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert("authorization", a.parse().unwrap());
        }
        h
    }

    fn code(r: Result<OwnedSemaphorePermit, ApiError>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.code)
    }

    #[test]
    fn auth_then_rate_then_in_flight() {
        let g = Guards::new("s3cret", 0, 0, 2, 1024, Duration::from_secs(1));
        assert_eq!(code(g.admit(&headers(None), None)), "unauthorized");
        assert_eq!(
            code(g.admit(&headers(Some("Bearer nope")), None)),
            "unauthorized"
        );
        assert_eq!(
            code(g.admit(&headers(Some("s3cret")), None)),
            "unauthorized"
        );
        let a = g.admit(&headers(Some("Bearer s3cret")), None).unwrap();
        let _b = g.admit(&headers(Some("Bearer s3cret")), None).unwrap();
        assert_eq!(g.in_flight(), 2);
        let full = g.admit(&headers(Some("Bearer s3cret")), None).unwrap_err();
        assert_eq!((full.code, full.retry_after), ("overloaded", Some(1)));
        drop(a);
        assert_eq!(code(g.admit(&headers(Some("Bearer s3cret")), None)), "ok");
    }

    #[test]
    fn rate_limit_is_per_client() {
        let g = Guards::new("", 1, 2, 100, 1024, Duration::from_secs(1));
        let one = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let two = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let h = headers(None);
        assert_eq!(code(g.admit(&h, one)), "ok");
        assert_eq!(code(g.admit(&h, one)), "ok");
        let e = g.admit(&h, one).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retry_after.is_some_and(|s| s >= 1));
        assert_eq!(code(g.admit(&h, two)), "ok");
    }
}
