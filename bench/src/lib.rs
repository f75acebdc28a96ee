//! Benchmarks for Tally: [`loadgen`] drives ingest over HTTP (through [`conn`], a lean
//! keep-alive client, so that it takes little of the cores it shares with what it measures) and records the ground truth
//! (per-key sums of acknowledged increments) so any run can be checked for exactness;
//! [`suite`] runs every stage against its own limit in one run, against the broker's own rates
//! ([`baseline`]) and what it reads from the aggregators ([`observe`]); [`report`] writes each
//! run into the history folder and keeps the current-figures table of BENCHMARKS.md;
//! [`prune`] times commits while a full idempotency window expires (no broker); [`failover`]
//! times the takeover of a killed aggregator's partitions with and without warm standbys.
//!
//! What must not live here: product logic. The suite measures the real binaries.

pub mod baseline;
pub mod conn;
pub mod failover;
pub mod loadgen;
pub mod observe;
pub mod produce;
pub mod prune;
pub mod report;
pub mod suite;
