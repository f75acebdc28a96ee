//! The aggregator's HTTP API: sums (one key, with optional read-your-writes waiting, or a
//! listing by prefix), offsets with lag, quarantined records, the top keys, readiness and
//! Prometheus metrics. Every error is the shared JSON error shape (`tally_http`).
//!
//! Here: what every handler reads ([`Api`], its [`Reader`] and [`Limits`]) and the parsing
//! handlers share. The filters are in [`routes`]; the handlers each in the module of its path
//! ([`sums`], [`listing`], [`offsets`], [`rejected`], [`top`], [`probes`]).
//!
//! Every read is answered only from a database that holds the key's partition, as
//! [`crate::read_route`] decides from the group ([`crate::peers`]): here, or forwarded to the
//! owner on another database ([`forward`]; query and all, so read-your-writes tokens work
//! through any member), or refused with 503; the reads over many keys are gathered from every
//! owner ([`gather`]).

use crate::contract::Code;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tally_http::ApiError;
use tally_pipeline::store::Store;

use crate::progress::ProgressRx;

mod forward;
mod gather;
mod listing;
mod offsets;
mod probes;
mod rejected;
mod routes;
mod sums;
mod top;

pub use forward::{Forward, FORWARDED_FROM, SERVED_BY};
pub use routes::routes;
pub use sums::FOREIGN_POLL;

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

    /// Decides where reads are answered from the group ([`crate::read_route`]); `None`
    /// (tests): all locally.
    pub fn forwarding(mut self, forward: Option<Forward>) -> Self {
        self.forward = forward;
        self
    }
}

/// `P:O`, a partition and an offset, as in `min_offset` and `after`: decimal digits only, at
/// most 9 for the partition and 18 for the offset (the document's `Position`).
fn position(name: &'static str, s: &str) -> Result<(i32, i64), ApiError> {
    let digits = |t: &str, most: usize| {
        (1..=most).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
    };
    s.split_once(':')
        .filter(|(p, o)| digits(p, 9) && digits(o, 18))
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(
                Code::InvalidPosition,
                format!(
                    "{name} must be PARTITION:OFFSET (at most 9 and 18 decimal digits), got '{s}'"
                ),
            )
        })
}

#[cfg(test)]
mod tests;
