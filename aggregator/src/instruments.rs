//! The aggregator's Prometheus metrics, recorded through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus` at `GET /metrics`. Names are listed here, in one place.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tally_pipeline::applier::CommitReport;
use tally_pipeline::fold::Folded;

/// Records folded, by outcome (`applied`, `rejected`, `duplicate`, `not_owned`, `gap`).
pub const RECORDS_FOLDED: &str = "tally_records_folded_total";
/// Records committed to SQLite (applied and quarantined).
pub const RECORDS_COMMITTED: &str = "tally_records_committed_total";
/// Records quarantined in `rejected_records` by a commit.
pub const REJECTED: &str = "tally_rejected_records_total";
/// Per-partition outcomes of commits: `committed`, or `fenced` (the compare-and-set failed
/// because another consumer moved the partition on; the pending work was dropped).
pub const PARTITION_COMMITS: &str = "tally_partition_commits_total";
/// Commits (transactions) by result: `ok` or `error`.
pub const COMMITS: &str = "tally_commits_total";
pub const COMMIT_SECONDS: &str = "tally_commit_duration_seconds";
/// Records per successful commit.
pub const COMMIT_BATCH: &str = "tally_commit_batch_records";
/// Lag per owned partition: log end as last seen minus committed next offset.
pub const LAG: &str = "tally_partition_lag";
/// Per partition, the next offset this process last committed to SQLite. Kept after the
/// partition moves away (offsets only grow, so the maximum over the group's members is the
/// group's); infra/prometheus subtracts it from ingest's acknowledged ends, a lag that Prometheus
/// still computes while no aggregator runs.
pub const COMMITTED_OFFSET: &str = "tally_partition_committed_offset";
/// Rebalance events, by kind (`assign`, `revoke`, `lost`, `error`).
pub const REBALANCES: &str = "tally_rebalances_total";
pub const OWNED: &str = "tally_owned_partitions";
/// 1 for an owned partition stopped because the log does not hold what follows its stored
/// offset, by partition and reason (`log_start_past_stored_offset`,
/// `log_end_before_stored_offset`); 0 once it is given up.
pub const STOPPED: &str = "tally_partition_stopped";
/// 1 when this process folds nothing because the topic's id is not the one its database
/// folded (the topic was recreated).
pub const TOPIC_RECREATED: &str = "tally_topic_recreated";
/// Offsets passed without a record (transaction markers, aborted records), by partition.
pub const SKIPPED_OFFSETS: &str = "tally_skipped_offsets_total";
/// The standby's per-partition commit outcomes (`committed`, `fenced`); with `--standby` a
/// fenced one means the standby and the member both folded a partition, which the claims
/// exclude ([`crate::standby`]).
pub const STANDBY_COMMITS: &str = "tally_standby_partition_commits_total";
/// Partitions the standby follows now.
pub const STANDBY_PARTITIONS: &str = "tally_standby_partitions";
/// 1 while the group is mixed: a member without a URL on another database than some other
/// member, so reads of its partitions are refused elsewhere ([`crate::peers::mixed`]).
pub const MIXED_DATABASES: &str = "tally_group_mixed_databases";

/// Installs the process-wide recorder (once) and returns the handle that renders it. A second
/// call (tests running several aggregators in one process) gets a detached handle.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder is already installed");
    }
    // Exported at 0 from the start, so that Prometheus sees the first quarantined record as
    // an increase (infra/prometheus/alerts.yml).
    counter!(REJECTED).increment(0);
    handle
}

/// [`RECORDS_FOLDED`] by outcome, registered once. The fold counts every record, and looking a
/// labelled counter up by name on each one (the `counter!` macro) took about a tenth of the
/// fold loop's time at 1M records/s (BENCHMARKS.md, "Fetch backoff").
pub struct FoldCounters {
    applied: Counter,
    rejected: Counter,
    duplicate: Counter,
    duplicate_key: Counter,
    not_owned: Counter,
    gap: Counter,
}

impl FoldCounters {
    /// Registers the counters with the installed recorder ([`install`] first).
    pub fn register() -> Self {
        let outcome = |o: &'static str| counter!(RECORDS_FOLDED, "outcome" => o);
        FoldCounters {
            applied: outcome("applied"),
            rejected: outcome("rejected"),
            duplicate: outcome("duplicate"),
            duplicate_key: outcome("duplicate_idempotency_key"),
            not_owned: outcome("not_owned"),
            gap: outcome("gap"),
        }
    }

    pub fn folded(&self, f: &Folded) {
        let c = match f {
            Folded::Applied => &self.applied,
            Folded::Rejected => &self.rejected,
            Folded::Duplicate => &self.duplicate,
            Folded::DuplicateKey => &self.duplicate_key,
            Folded::NotOwned => &self.not_owned,
            Folded::Gap => &self.gap,
        };
        c.increment(1);
    }
}

pub fn committed(r: &CommitReport, took: Duration) {
    if r.committed.is_empty() && r.fenced.is_empty() {
        return;
    }
    counter!(COMMITS, "result" => "ok").increment(1);
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    histogram!(COMMIT_BATCH).record(r.records as f64);
    counter!(RECORDS_COMMITTED).increment(r.records);
    counter!(REJECTED).increment(r.rejected);
    for &(p, next) in &r.committed {
        let partition = p.to_string();
        gauge!(COMMITTED_OFFSET, "partition" => partition.clone()).set(next as f64);
        counter!(PARTITION_COMMITS, "partition" => partition, "outcome" => "committed")
            .increment(1);
    }
    for (p, _) in &r.fenced {
        counter!(PARTITION_COMMITS, "partition" => p.to_string(), "outcome" => "fenced")
            .increment(1);
    }
    for &(p, n) in &r.skipped {
        skipped_offsets(p, n);
    }
}

pub fn commit_failed() {
    counter!(COMMITS, "result" => "error").increment(1);
}

pub fn rebalance(kind: &'static str) {
    counter!(REBALANCES, "kind" => kind).increment(1);
}

pub fn owned(n: usize) {
    gauge!(OWNED).set(n as f64);
}

/// Sets an owned partition's lag; a partition given up is set to 0 so that the sum over
/// instances stays the group's lag.
pub fn lag(partition: i32, lag: i64) {
    gauge!(LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// Marks a partition stopped (1) or no longer stopped (0) for a reason.
pub fn stopped(partition: i32, reason: &'static str, on: bool) {
    gauge!(STOPPED, "partition" => partition.to_string(), "reason" => reason).set(if on {
        1.0
    } else {
        0.0
    });
}

pub fn refused() {
    gauge!(TOPIC_RECREATED).set(1.0);
}

pub fn skipped_offsets(partition: i32, n: u64) {
    if n > 0 {
        counter!(SKIPPED_OFFSETS, "partition" => partition.to_string()).increment(n);
    }
}

pub fn standby_committed(r: &CommitReport) {
    for (p, _) in &r.committed {
        counter!(STANDBY_COMMITS, "partition" => p.to_string(), "outcome" => "committed")
            .increment(1);
    }
    for (p, _) in &r.fenced {
        counter!(STANDBY_COMMITS, "partition" => p.to_string(), "outcome" => "fenced").increment(1);
    }
}

pub fn mixed_databases(mixed: bool) {
    gauge!(MIXED_DATABASES).set(if mixed { 1.0 } else { 0.0 });
}

pub fn standby_partitions(n: usize) {
    gauge!(STANDBY_PARTITIONS).set(n as f64);
}
