//! The read token (`--read-token`, `TALLY_READ_TOKEN`): sums, listings, offsets, `/top` and
//! `/rejected` are billing and usage data, so with a token set every request needs
//! `Authorization: Bearer TOKEN` ([`tally_http::auth::Bearer`], the check ingest's write token
//! uses too), except the probes and scrapes (`/healthz`, `/readyz`, `/metrics`), the published
//! document (`/openapi.json`) and the status page's own files (`/`, `/status.js`,
//! `/status.css`: code without data; the page asks for the token and sends it with each read
//! it makes). Members send it with the reads they forward or
//! gather ([`forwarding_headers`]).
//!
//! The guard is one filter ([`guard`]) put in front of every route where the server is made.

use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use tally_http::auth::Bearer;

/// What a refused read is told.
pub const HINT: &str = "reads need the header Authorization: Bearer <read token> (the \
                        aggregator's --read-token)";

/// Paths open without the token.
const OPEN: [&str; 7] = [
    "/healthz",
    "/openapi.json",
    "/readyz",
    "/metrics",
    "/",
    "/status.js",
    "/status.css",
];

/// The read token's check, from the flag's value (`None` when empty: reads are open).
pub fn bearer(token: &str) -> Option<Bearer> {
    Bearer::new(token, HINT)
}

/// Answers 401 to a request that needs the token and lacks it; rejects (passes the request on
/// to the routes) otherwise. Put first: `guard(token).or(routes)`.
pub fn guard(
    token: Option<Bearer>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and_then(move |path: warp::path::FullPath, headers: HeaderMap| {
            let refusal = match &token {
                Some(b) if !OPEN.contains(&path.as_str()) => b.check(&headers).err(),
                _ => None,
            };
            async move {
                match refusal {
                    Some(e) => Ok(e.into_response()),
                    None => Err(warp::reject::not_found()),
                }
            }
        })
}

/// Headers a member sends with every read it forwards or gathers: the token, when one is set.
pub fn forwarding_headers(token: Option<&Bearer>) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(b) = token {
        let mut v = reqwest::header::HeaderValue::from_bytes(b.header_value())?;
        v.set_sensitive(true);
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(
        token: Option<Bearer>,
    ) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
        let inner = warp::any().and_then(|| async { Ok::<_, Rejection>("data") });
        guard(token).or(inner).recover(tally_http::recover)
    }

    async fn status(token: Option<Bearer>, path: &str, auth: Option<&str>) -> u16 {
        let mut req = warp::test::request().path(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.reply(&routes(token)).await.status().as_u16()
    }

    #[tokio::test]
    async fn reads_need_the_token_and_probes_do_not() {
        let t = || bearer("r3ad");
        for path in [
            "/sums/a",
            "/sums?prefix=a",
            "/offsets",
            "/top",
            "/rejected",
            "/status.js/x",
        ] {
            assert_eq!(status(t(), path, None).await, 401, "{path}");
            assert_eq!(status(t(), path, Some("Bearer wrong")).await, 401, "{path}");
            assert_eq!(status(t(), path, Some("Bearer r3ad")).await, 200, "{path}");
            assert_eq!(
                status(None, path, None).await,
                200,
                "{path} without a token set"
            );
        }
        for path in OPEN {
            assert_eq!(status(t(), path, None).await, 200, "{path}");
        }
        let r = warp::test::request()
            .path("/sums/a")
            .reply(&routes(t()))
            .await;
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }

    #[test]
    fn forwarded_reads_carry_the_token_marked_sensitive() {
        let b = bearer("r3ad").unwrap();
        let h = forwarding_headers(Some(&b)).unwrap();
        assert_eq!(h["authorization"], "Bearer r3ad");
        assert!(h["authorization"].is_sensitive());
        assert!(forwarding_headers(None).unwrap().is_empty());
    }
}
