//! The aggregator's HTTP API: reads of sums and offsets from SQLite.
//! Filters here, handlers below them; every error is the shared JSON error shape.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tally_http::{json, ApiError};
use tally_pipeline::store::Store;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

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

pub fn routes(
    reader: Reader,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let status = crate::status::routes(reader.clone());
    let with_reader = warp::any().map(move || reader.clone());
    let sum = warp::path!("sums" / String)
        .and(warp::get())
        .and(with_reader.clone())
        .and_then(|k, r| async move { get_sum(k, r).await.map_err(warp::reject::custom) });
    let offsets = warp::path!("offsets")
        .and(warp::get())
        .and(with_reader)
        .and_then(|r| async move { get_offsets(r).await.map_err(warp::reject::custom) });
    tally_http::healthz()
        .or(sum)
        .unify()
        .or(offsets)
        .unify()
        .or(status)
        .unify()
        .recover(tally_http::recover)
        .unify()
        .with(warp::trace::request())
}

#[derive(Serialize)]
struct SumBody {
    key: String,
    sum: i64,
}

async fn get_sum(raw_key: String, reader: Reader) -> Result<Response, ApiError> {
    let key = percent_encoding::percent_decode_str(&raw_key)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request("invalid_key", "key is not valid percent-encoded utf-8")
        })?
        .into_owned();
    let k = key.clone();
    match reader.read(move |s| s.key_sum(&k)).await? {
        Some(sum) => Ok(json(StatusCode::OK, &SumBody { key, sum })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no increment for key '{key}' has been folded"),
        )),
    }
}

#[derive(Serialize)]
struct PartitionOffset {
    partition: i32,
    next_offset: i64,
}

#[derive(Serialize)]
struct OffsetsBody {
    partitions: Vec<PartitionOffset>,
}

async fn get_offsets(reader: Reader) -> Result<Response, ApiError> {
    let offsets = reader.read(|s| s.stored_offsets()).await?;
    let partitions = offsets
        .into_iter()
        .map(|(partition, next_offset)| PartitionOffset {
            partition,
            next_offset,
        })
        .collect();
    Ok(json(StatusCode::OK, &OffsetsBody { partitions }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_pipeline::fold::PartitionBatch;
    use tally_pipeline::record::encode_value;

    fn reader_with(keys: &[(&str, i64)]) -> Reader {
        let mut s = Store::in_memory("t").unwrap();
        let mut b = PartitionBatch::new(None);
        for (i, (k, d)) in keys.iter().enumerate() {
            b.fold(
                i as i64,
                Some(k.as_bytes()),
                Some(&encode_value(*d)),
                |_| Ok::<_, std::convert::Infallible>(0),
            )
            .unwrap();
        }
        s.apply([(2, &b)]).unwrap();
        Reader::new(s)
    }

    #[tokio::test]
    async fn sums_are_served_with_percent_decoded_keys() {
        let api = routes(reader_with(&[("a/b c", 5), ("x", -2)]));
        let r = warp::test::request()
            .path("/sums/a%2Fb%20c")
            .reply(&api)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), r#"{"key":"a/b c","sum":5}"#);
        let r = warp::test::request().path("/sums/nope").reply(&api).await;
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"]["code"], "key_not_found");
        let r = warp::test::request().path("/sums/%FF").reply(&api).await;
        assert_eq!(r.status(), 400);
        let r = warp::test::request().path("/offsets").reply(&api).await;
        assert_eq!(
            r.body(),
            r#"{"partitions":[{"partition":2,"next_offset":2}]}"#
        );
        let r = warp::test::request().path("/healthz").reply(&api).await;
        assert_eq!(r.status(), 200);
        let r = warp::test::request()
            .method("POST")
            .path("/offsets")
            .reply(&api)
            .await;
        assert_eq!(r.status(), 405);
    }
}
