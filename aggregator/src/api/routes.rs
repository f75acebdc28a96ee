//! The filters: which path and method reach which handler, with the query, the
//! forwarded-from header and the [`Api`] they read. Every rejection ends as the shared JSON
//! error shape, and every request passes the shared access log.

use std::collections::HashMap;
use std::convert::Infallible;

use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::forward::{SumRead, FORWARDED_FROM};
use super::{listing, offsets, probes, rejected, sums, top, Api};

pub fn routes(api: Api) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let served = tally_http::healthz()
        .or(crate::contract::openapi())
        .unify()
        .or(sum(api.clone()))
        .unify()
        .or(many_keys(api.clone()))
        .unify()
        .or(operations(api))
        .unify()
        .or(crate::status::routes())
        .unify();
    tally_http::contract::listed(crate::contract::ROUTES)
        .and(served)
        .recover(tally_http::recover)
        .unify()
        .with(tally_http::access_log())
}

/// `GET /sums/{key}`, kept as it arrived (raw key and query) so it can be forwarded unchanged.
fn sum(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path!("sums" / String)
        .and(warp::get())
        .and(warp::query::<sums::SumQuery>())
        .and(raw_query)
        .and(forwarded())
        .and(with(api))
        .and_then(|raw_key, q, raw_query, forwarded, a| async move {
            let read = SumRead {
                raw_key,
                raw_query,
                forwarded,
            };
            sums::get_sum(read, q, a)
                .await
                .map_err(warp::reject::custom)
        })
}

/// The reads over many keys, gathered from every owner with a database per member:
/// `GET /sums?prefix=`, `GET /rejected`, `GET /top`.
fn many_keys(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let list = warp::path!("sums")
        .and(warp::get())
        .and(warp::query::<listing::ListQuery>())
        .and(forwarded())
        .and(with(api.clone()))
        .and_then(|q, forwarded, a| async move {
            listing::list_sums(q, forwarded, a)
                .await
                .map_err(warp::reject::custom)
        });
    let rejected = warp::path!("rejected")
        .and(warp::get())
        .and(warp::query::<rejected::RejectedQuery>())
        .and(forwarded())
        .and(with(api.clone()))
        .and_then(|q, forwarded, a| async move {
            rejected::get_rejected(q, forwarded, a)
                .await
                .map_err(warp::reject::custom)
        });
    let top = warp::path!("top")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(forwarded())
        .and(with(api))
        .and_then(|q, forwarded, a| async move {
            top::get_top(q, forwarded, a)
                .await
                .map_err(warp::reject::custom)
        });
    list.or(rejected).unify().or(top).unify()
}

/// What this process says of itself: `GET /offsets`, `GET /readyz`, `GET /metrics`.
fn operations(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let offsets = warp::path!("offsets")
        .and(warp::get())
        .and(with(api.clone()))
        .and_then(|a| async move { offsets::get_offsets(a).await.map_err(warp::reject::custom) });
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(api.clone()))
        .and_then(|a| async move { probes::readyz(a).map_err(warp::reject::custom) });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with(api))
        .map(probes::render_metrics);
    offsets.or(readyz).unify().or(metrics).unify()
}

/// The [`Api`] every handler reads.
fn with(api: Api) -> impl Filter<Extract = (Api,), Error = Infallible> + Clone {
    warp::any().map(move || api.clone())
}

/// Whether the request was forwarded by another member (it carries [`FORWARDED_FROM`]).
fn forwarded() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    warp::header::optional::<String>(FORWARDED_FROM).map(|from: Option<String>| from.is_some())
}
