//! The filters: which path and method reach which handler, with the query, the
//! forwarded-from header and the [`Api`] they read. Every rejection ends as the shared JSON
//! error shape, and every request passes the shared access log.

use warp::{Filter, Reply};

use super::forward::{SumRead, FORWARDED_FROM};
use super::{listing, offsets, probes, rejected, sums, top, Api};

pub fn routes(
    api: Api,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let status = crate::status::routes();
    let with = warp::any().map(move || api.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let sum = warp::path!("sums" / String)
        .and(warp::get())
        .and(warp::query::<sums::SumQuery>())
        .and(raw_query)
        .and(warp::header::optional::<String>(FORWARDED_FROM))
        .and(with.clone())
        .and_then(|k, q, raw, from: Option<String>, a| async move {
            let read = SumRead {
                raw_key: k,
                raw_query: raw,
                forwarded: from.is_some(),
            };
            sums::get_sum(read, q, a)
                .await
                .map_err(warp::reject::custom)
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
        .and_then(|a| async move { offsets::get_offsets(a).await.map_err(warp::reject::custom) });
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
        .and_then(|a| async move { probes::readyz(a).map_err(warp::reject::custom) });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with)
        .map(probes::render_metrics);
    let served = tally_http::healthz()
        .or(crate::contract::openapi())
        .unify()
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
        .unify();
    tally_http::contract::listed(crate::contract::ROUTES)
        .and(served)
        .recover(tally_http::recover)
        .unify()
        .with(tally_http::access_log())
}
