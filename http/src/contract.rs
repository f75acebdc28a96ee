//! The published HTTP contract's two lists, as code: a service's route table ([`Route`]) and
//! its error codes ([`ErrorCode`], one enum per service declared with [`error_codes!`], plus
//! the [`Common`] codes of the rejection handling here). The OpenAPI document each service
//! serves is checked against both lists in both directions by [`differences`].
//!
//! The route table is also what the service answers: [`listed`] sits in front of the filters
//! and answers 404 for a path outside the table and 405 with an `Allow` header (RFC 9110,
//! 15.5.6) for a listed path asked with a method the table does not give it, so a filter
//! added without a table entry is unreachable rather than undocumented.

use std::collections::BTreeSet;

use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection};

use crate::ApiError;

/// One operation of a service: a method and a path template in OpenAPI's notation
/// (`/sums/{key}`: a `{name}` segment matches any one non-empty segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

impl Route {
    pub const fn get(path: &'static str) -> Route {
        Route {
            method: "GET",
            path,
        }
    }

    pub const fn post(path: &'static str) -> Route {
        Route {
            method: "POST",
            path,
        }
    }

    fn matches_path(&self, path: &str) -> bool {
        let mut want = self.path.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                    if g.is_empty() {
                        return false;
                    }
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    }
}

/// The methods `routes` gives `path`, comma-separated as the `Allow` header wants them; `None`
/// when no route has that path.
pub fn allowed(routes: &[Route], path: &str) -> Option<String> {
    let methods: Vec<&str> = routes
        .iter()
        .filter(|r| r.matches_path(path))
        .map(|r| r.method)
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Passes a request whose method and path are in `routes`; rejects any other with 404
/// (`not_found`) or, when only the method is not listed for the path, 405
/// (`method_not_allowed`) carrying the `Allow` header.
pub fn listed(routes: &'static [Route]) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and_then(
            move |method: Method, path: warp::path::FullPath| async move {
                let path = path.as_str();
                if routes
                    .iter()
                    .any(|r| r.method == method.as_str() && r.matches_path(path))
                {
                    return Ok(());
                }
                Err(warp::reject::custom(match allowed(routes, path) {
                    None => ApiError::new(StatusCode::NOT_FOUND, Common::NotFound, "no such route"),
                    Some(allow) => {
                        let mut e = ApiError::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            Common::MethodNotAllowed,
                            format!("{method} is not supported here; use {allow}"),
                        );
                        e.allow = Some(allow);
                        e
                    }
                }))
            },
        )
        .untuple_one()
}

/// `GET /openapi.json`: a service's document.
pub fn document(
    document: String,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    use warp::Reply as _;
    warp::path!("openapi.json").and(warp::get()).map(move || {
        warp::reply::with_header(document.clone(), "content-type", "application/json")
            .into_response()
    })
}

/// Checks a service's OpenAPI document: version 3.1 and no [`differences`] from its lists.
pub fn check_document(
    document: &str,
    routes: &[Route],
    codes: &BTreeSet<&'static str>,
) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(document).map_err(|e| format!("not JSON: {e}"))?;
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        return Err(format!("not OpenAPI 3.1: {}", doc["openapi"]));
    }
    let d = differences(&doc, routes, codes);
    if d.is_empty() {
        Ok(())
    } else {
        Err(d.join("\n"))
    }
}

/// A stable, machine-readable error code. Implemented only by the enums [`error_codes!`]
/// declares: a handler cannot answer a code that is missing from its service's list.
pub trait ErrorCode: Copy {
    fn as_str(self) -> &'static str;
}

/// Declares a service's error codes: an enum with the code string of each variant, `ALL`,
/// and its [`ErrorCode`] implementation.
#[macro_export]
macro_rules! error_codes {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $var:ident = $code:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vm])* $var,)* }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];
        }

        impl $crate::ErrorCode for $name {
            fn as_str(self) -> &'static str {
                match self { $($name::$var => $code,)* }
            }
        }
    };
}

error_codes! {
    /// Codes the shared handling here answers, in both services.
    pub enum Common {
        /// 401: the bearer token ([`crate::auth`]) is missing or wrong: ingest's writes with
        /// `--auth-token`, the aggregator's reads with `--read-token`.
        Unauthorized = "unauthorized",
        /// 404: no route has this path.
        NotFound = "not_found",
        /// 405: the path exists, the method is not one of its (see `Allow`).
        MethodNotAllowed = "method_not_allowed",
        /// 400: a query string the route's parameters cannot be read from.
        InvalidQuery = "invalid_query",
        /// 400: a header that cannot be read (not visible ASCII, or not a number).
        InvalidHeader = "invalid_header",
        /// 400: a required header is missing.
        MissingHeader = "missing_header",
        /// 411: a body was sent without a length.
        LengthRequired = "length_required",
        /// 413: the body is larger than allowed.
        BodyTooLarge = "body_too_large",
        /// 415: a body in a format the route does not read.
        UnsupportedMediaType = "unsupported_media_type",
        /// 503 on `/readyz`: the brokers refuse this process (a login, a certificate, an ACL).
        KafkaAccessRefused = "kafka_access_refused",
        /// 500: a bug.
        Internal = "internal",
    }
}

/// The code strings of a service: the common ones and its own.
pub fn code_names<C: ErrorCode>(own: &[C]) -> BTreeSet<&'static str> {
    Common::ALL
        .iter()
        .map(|c| c.as_str())
        .chain(own.iter().map(|c| c.as_str()))
        .collect()
}

/// Where an OpenAPI document and the code disagree: operations (`METHOD /path`) in one and
/// not the other, and error codes (the document's `components.schemas.ErrorCode.enum`) in one
/// and not the other. Empty when they agree.
pub fn differences(
    document: &serde_json::Value,
    routes: &[Route],
    codes: &BTreeSet<&'static str>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut documented = BTreeSet::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, item) in paths {
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(method).is_some() {
                    documented.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
    }
    let coded: BTreeSet<String> = routes
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    for op in documented.difference(&coded) {
        out.push(format!("documented but not routed: {op}"));
    }
    for op in coded.difference(&documented) {
        out.push(format!("routed but not documented: {op}"));
    }
    let in_doc: BTreeSet<String> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let in_code: BTreeSet<String> = codes.iter().map(|c| (*c).to_owned()).collect();
    for c in in_doc.difference(&in_code) {
        out.push(format!("error code documented but not in the code: {c}"));
    }
    for c in in_code.difference(&in_doc) {
        out.push(format!("error code in the code but not documented: {c}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[Route] = &[
        Route::get("/"),
        Route::get("/sums"),
        Route::get("/sums/{key}"),
        Route::post("/sums/{key}"),
    ];

    #[test]
    fn templates_match_one_nonempty_segment() {
        assert_eq!(allowed(ROUTES, "/"), Some("GET".into()));
        assert_eq!(allowed(ROUTES, "/sums"), Some("GET".into()));
        assert_eq!(allowed(ROUTES, "/sums/a%2Fb"), Some("GET, POST".into()));
        assert_eq!(allowed(ROUTES, "/sums/"), None);
        assert_eq!(allowed(ROUTES, "/sums/a/b"), None);
        assert_eq!(allowed(ROUTES, "/other"), None);
    }

    #[tokio::test]
    async fn unlisted_methods_get_405_with_allow_and_unlisted_paths_404() {
        let f = listed(ROUTES).map(|| "ok").recover(crate::recover);
        let r = warp::test::request()
            .method("TRACE")
            .path("/sums/k")
            .reply(&f)
            .await;
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, POST");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
        let r = warp::test::request()
            .method("DELETE")
            .path("/nope")
            .reply(&f)
            .await;
        assert_eq!(r.status(), 404);
        let r = warp::test::request().path("/sums/k").reply(&f).await;
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (200, &b"ok"[..]));
    }

    #[test]
    fn differences_are_found_in_both_directions() {
        let doc = serde_json::json!({
            "paths": {"/sums": {"get": {}}, "/extra": {"get": {}}},
            "components": {"schemas": {"ErrorCode": {"enum": ["not_found", "gone"]}}}
        });
        let codes: BTreeSet<&str> = ["not_found", "internal"].into();
        let d = differences(&doc, &ROUTES[1..2], &codes);
        assert_eq!(
            d,
            [
                "documented but not routed: GET /extra",
                "error code documented but not in the code: gone",
                "error code in the code but not documented: internal",
            ]
        );
        let d = differences(&doc, ROUTES, &codes);
        assert!(d.contains(&"routed but not documented: GET /sums/{key}".to_owned()));
    }
}
