//! The status page and the read it needs beyond the API's: `GET /` serves a self-refreshing
//! HTML page (plain HTML, CSS and JavaScript under `aggregator/static/`, embedded at build
//! time: no build step, no files to deploy) that samples `/offsets`, `/rejected` and `/top`
//! every two seconds; `GET /top?limit=N` lists the keys with the largest sums.
//!
//! What must not live here: anything that writes. The page only reads what the API serves.

use std::collections::HashMap;

use serde::Serialize;
use tally_http::{json, ApiError};
use warp::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::api::Reader;

const INDEX_HTML: &str = include_str!("../static/status.html");
const STATUS_JS: &str = include_str!("../static/status.js");
const STATUS_CSS: &str = include_str!("../static/status.css");

/// Keys `/top` lists when no `limit` is given, and the most it lists.
pub const DEFAULT_TOP: usize = 10;
pub const MAX_TOP: usize = 1000;

/// `GET /`, `GET /status.js`, `GET /status.css` and `GET /top`.
pub fn routes(reader: Reader) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("status.js")
        .and(warp::get())
        .map(|| asset(STATUS_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("status.css")
        .and(warp::get())
        .map(|| asset(STATUS_CSS, "text/css; charset=utf-8"));
    let top = warp::path!("top")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::any().map(move || reader.clone()))
        .and_then(|q, r| async move { get_top(q, r).await.map_err(warp::reject::custom) });
    index.or(js).unify().or(css).unify().or(top).unify()
}

/// An embedded file. Revalidated on every load so a new binary's page is picked up at once;
/// the policy allows only this origin (the page has no inline script or style).
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
    h.insert(CACHE_CONTROL, "no-cache".parse().expect("valid header"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        "default-src 'self'".parse().expect("valid header"),
    );
    r
}

#[derive(Serialize)]
struct TopKey {
    key: String,
    sum: i64,
}

#[derive(Serialize)]
struct TopBody {
    keys: Vec<TopKey>,
}

async fn get_top(query: HashMap<String, String>, reader: Reader) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_TOP,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_TOP}, got '{raw}'"),
                )
            })?,
    };
    let keys = reader.read(move |s| s.top_keys(limit)).await?;
    let keys = keys
        .into_iter()
        .map(|(key, sum)| TopKey { key, sum })
        .collect();
    Ok(json(StatusCode::OK, &TopBody { keys }))
}

#[cfg(test)]
mod tests {
    use tally_pipeline::store::Store;

    use crate::api::Reader;
    use warp::Filter;

    /// The status routes behind the shared rejection handler, as the API mounts them.
    fn routes(
        reader: Reader,
    ) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
        super::routes(reader).recover(tally_http::recover)
    }

    fn reader_with(keys: &[(&str, i64)]) -> Reader {
        let mut s = Store::in_memory("t").unwrap();
        let b = crate::test_support::batch_of(keys);
        s.apply([(0, &b)]).unwrap();
        Reader::new(s)
    }

    #[tokio::test]
    async fn top_lists_the_largest_sums_first_and_checks_its_limit() {
        let api = routes(reader_with(&[("a", 3), ("b", 9), ("c", -1), ("a", 2)]));
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
    async fn the_page_and_its_assets_are_served_with_their_types() {
        let api = routes(reader_with(&[("a", 1)]));
        for (path, ty, needle) in [
            ("/", "text/html", "<script src=\"status.js\""),
            ("/status.js", "text/javascript", "/offsets"),
            ("/status.css", "text/css", "font-family"),
        ] {
            let r = warp::test::request().path(path).reply(&api).await;
            assert_eq!(r.status(), 200, "{path}");
            let ct = r.headers()["content-type"].to_str().unwrap();
            assert!(ct.starts_with(ty), "{path}: {ct}");
            let body = std::str::from_utf8(r.body()).unwrap();
            assert!(body.contains(needle), "{path} lacks {needle}");
        }
        let r = warp::test::request()
            .method("POST")
            .path("/")
            .reply(&api)
            .await;
        assert_eq!(r.status(), 405);
        let r = warp::test::request().path("/nope").reply(&api).await;
        assert_eq!(r.status(), 404);
    }
}
