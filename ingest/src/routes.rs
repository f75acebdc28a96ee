//! Filters: paths, methods, headers and the size-capped body; they hand validated inputs to
//! [`crate::handlers`]. Every rejection becomes the shared JSON error shape.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::TryStreamExt;
use tally_http::ApiError;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::handlers::{self, State};

pub fn routes(
    state: Arc<State>,
    max_body: u64,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let content_type = warp::header::optional::<String>("content-type");

    let increment = warp::path!("increment")
        .and(warp::post())
        .and(query)
        .and(content_type)
        .and(body(max_body))
        .and(with_state.clone())
        .and_then(|q, ct, b, s| async move {
            handlers::increment(q, ct, b, s)
                .await
                .map_err(warp::reject::custom)
        });
    let increments = warp::path!("increments")
        .and(warp::post())
        .and(content_type)
        .and(body(max_body))
        .and(with_state)
        .and_then(|ct, b, s| async move {
            handlers::increments(ct, b, s)
                .await
                .map_err(warp::reject::custom)
        });
    tally_http::healthz()
        .or(increment)
        .unify()
        .or(increments)
        .unify()
        .recover(tally_http::recover)
        .unify()
        .with(warp::trace::request())
}

/// The request body, at most `limit` bytes whether or not a Content-Length is sent.
fn body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len, stream| collect(len, stream, limit))
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
            "body_unreadable",
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
        "body_too_large",
        format!("the body is larger than {limit} bytes"),
    )
}
