//! The status page and the read it needs beyond the API's: `GET /` serves a self-refreshing
//! HTML page (plain HTML, CSS and JavaScript under `aggregator/static/`, embedded at build
//! time: no build step, no files to deploy) that samples `/offsets`, `/rejected` and `/top`
//! every two seconds (`/top` is the API's, [`crate::api`]).
//!
//! What must not live here: anything that writes. The page only reads what the API serves.

use warp::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const INDEX_HTML: &str = include_str!("../static/status.html");
const STATUS_JS: &str = include_str!("../static/status.js");
const STATUS_CSS: &str = include_str!("../static/status.css");

/// `GET /`, `GET /status.js` and `GET /status.css`.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("status.js")
        .and(warp::get())
        .map(|| asset(STATUS_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("status.css")
        .and(warp::get())
        .map(|| asset(STATUS_CSS, "text/css; charset=utf-8"));
    index.or(js).unify().or(css).unify()
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

#[cfg(test)]
mod tests {
    use warp::Filter;

    /// The status routes behind the shared rejection handler, as the API mounts them.
    fn routes(
    ) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
        super::routes().recover(tally_http::recover)
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types() {
        let api = routes();
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
