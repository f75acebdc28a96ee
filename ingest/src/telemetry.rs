//! Ingest's Prometheus metrics: their names, the one process-wide recorder
//! (`metrics-exporter-prometheus`), and the route label that keeps cardinality bounded.
//!
//! The metrics every request touches are registered once and their handles kept
//! ([`count_request`], [`Produce`]): the `counter!` macro with labels builds its key (a
//! vector of labels, a status formatted to a string) and looks it up in the registry on every
//! call, 3% of ingest's CPU time in the profile of single increments (issue 18,
//! docs/history/bench/2026-12-02-1659-suite.md).
//!
//! Exposed at `GET /metrics` (open like `/healthz`: it names routes, statuses and error codes,
//! never counter keys or clients; restrict it at the network if that matters).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use warp::http::StatusCode;

/// Requests answered, by `route` and `status`.
pub const REQUESTS: &str = "tally_ingest_requests_total";
/// Increments acknowledged by the broker and answered 200.
pub const ACCEPTED: &str = "tally_ingest_increments_accepted_total";
/// Seconds from enqueueing a request's records to the last acknowledgement, by `outcome`.
pub const PRODUCE_SECONDS: &str = "tally_ingest_produce_seconds";
/// Records waiting in the producer for the broker (sampled).
pub const QUEUE_DEPTH: &str = "tally_ingest_producer_queue_depth";
/// Requests being handled (sampled).
pub const IN_FLIGHT: &str = "tally_ingest_in_flight_requests";
/// Appends that failed, by `code` (`broker_timeout`, `broker_unavailable`, `overloaded`, ...).
pub const BROKER_ERRORS: &str = "tally_ingest_broker_errors_total";
/// Errors the Kafka client reported on its own (connection loss and the like).
pub const CLIENT_ERRORS: &str = "tally_ingest_kafka_client_errors_total";
/// 1 when a broker answered the producer's metadata request for the topic at the last scrape
/// (the probe of `/readyz`, cached a second), else 0: 0 means no broker is reachable from here.
pub const BROKER_REACHABLE: &str = "tally_ingest_broker_reachable";
/// Per partition, one past the highest offset this process saw acknowledged: the log's end as
/// far as this ingest knows. Prometheus subtracts the aggregators' committed next offsets from
/// it (infra/prometheus), which gives a lag that still grows while no aggregator runs.
pub const ACKED_END: &str = "tally_ingest_acknowledged_end_offset";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's recorder handle, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(PRODUCE_SECONDS.into()), LATENCY_BUCKETS)
            .expect("static buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "HTTP requests answered, by route and status");
    describe_counter!(
        ACCEPTED,
        "increments acknowledged by the broker and answered 200"
    );
    describe_histogram!(
        PRODUCE_SECONDS,
        Unit::Seconds,
        "time from enqueueing a request's records to the broker's last acknowledgement"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "records waiting in the producer for the broker"
    );
    describe_gauge!(IN_FLIGHT, "HTTP requests being handled");
    describe_counter!(BROKER_ERRORS, "appends that failed, by error code");
    describe_counter!(CLIENT_ERRORS, "errors reported by the Kafka client");
    describe_gauge!(
        BROKER_REACHABLE,
        "1 when a broker answered a metadata request for the topic at the last scrape"
    );
    describe_gauge!(
        ACKED_END,
        "per partition, one past the highest offset acknowledged to this process"
    );
}

/// The acknowledged log ends per partition ([`ACKED_END`]): updated once per acknowledged
/// request (under a lock held for a map update), set as gauges when `/metrics` is rendered.
#[derive(Debug, Default)]
pub struct AckedEnds(Mutex<BTreeMap<i32, i64>>);

impl AckedEnds {
    /// Takes in the (partition, offset) of acknowledged records.
    pub fn landed(&self, records: impl Iterator<Item = (i32, i64)>) {
        let mut ends = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, offset) in records {
            let end = ends.entry(partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
    }

    /// The ends as they are now.
    pub fn snapshot(&self) -> BTreeMap<i32, i64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the [`ACKED_END`] gauges.
    pub fn publish(&self) {
        for (partition, end) in self.snapshot() {
            metrics::gauge!(ACKED_END, "partition" => partition.to_string()).set(end as f64);
        }
    }
}

const ROUTES: [&str; 6] = [
    "/increment",
    "/increments",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];

/// The route label of a request path: the known routes, else `other`.
pub fn route_label(path: &str) -> &'static str {
    ROUTES[route_index(path)]
}

fn route_index(path: &str) -> usize {
    ROUTES[..ROUTES.len() - 1]
        .iter()
        .position(|r| *r == path)
        .unwrap_or(ROUTES.len() - 1)
}

/// Statuses whose request counters are kept once registered; others are looked up each time.
const STATUSES: [u16; 14] = [
    200, 400, 401, 404, 405, 408, 411, 413, 415, 429, 431, 500, 503, 504,
];

/// Counts one answered request in [`REQUESTS`]. Each (route, status) counter is registered
/// the first time it is counted, so `/metrics` lists only pairs that occurred.
pub fn count_request(path: &str, status: StatusCode) {
    const SLOTS: usize = ROUTES.len() * STATUSES.len();
    static CACHE: [OnceLock<Counter>; SLOTS] = [const { OnceLock::new() }; SLOTS];
    let r = route_index(path);
    let route = ROUTES[r];
    let code = status.as_u16();
    let Some(s) = STATUSES.iter().position(|c| *c == code) else {
        metrics::counter!(REQUESTS, "route" => route, "status" => code.to_string()).increment(1);
        return;
    };
    CACHE[r * STATUSES.len() + s]
        .get_or_init(|| {
            // A handle taken before the recorder is installed would count into nothing.
            handle();
            metrics::counter!(REQUESTS, "route" => route, "status" => code.to_string())
        })
        .increment(1);
}

/// The producer's metrics of every acknowledged request, registered once (a failed request
/// takes the macro's path: it is not the hot one).
pub struct Produce {
    pub ok: Histogram,
    pub accepted: Counter,
}

impl Produce {
    pub fn new() -> Produce {
        handle();
        Produce {
            ok: metrics::histogram!(PRODUCE_SECONDS, "outcome" => "ok"),
            accepted: metrics::counter!(ACCEPTED),
        }
    }
}

impl Default for Produce {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_ends_keep_one_past_the_highest_offset_per_partition() {
        let ends = AckedEnds::default();
        ends.landed([(3, 7), (1, 0), (3, 2)].into_iter());
        // A later request acknowledged with a lower offset (answers arrive out of order)
        // never moves an end back.
        ends.landed([(3, 5), (1, 4)].into_iter());
        assert_eq!(ends.snapshot(), BTreeMap::from([(1, 5), (3, 8)]));
    }
}
