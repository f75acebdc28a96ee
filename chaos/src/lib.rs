//! The chaos runner: drives load with ground truth against a real pipeline (broker, ingest,
//! two aggregators sharing one SQLite file on a small tmpfs) while it injects faults at random
//! moments from a recorded seed: SIGKILL of an aggregator, of ingest and of the broker, an
//! aggregator paused past its session timeout (zombie), and the database's filesystem filling
//! up. Clients retry with idempotency keys until acknowledged. At the end every increment must
//! be counted exactly once, the live database must verify against the log, and every process
//! must have recovered on its own.
//!
//! The abuse run ([`abuse`]) sends a seeded mix of valid and invalid HTTP requests (bad bodies,
//! malformed HTTP, slow clients) to ingest and checks that nothing crashes, nothing invalid is
//! accepted, memory stays bounded and the valid requests are counted exactly.
//!
//! What must not live here: product logic. It drives the binaries from the outside.

pub mod abuse;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod load;
pub mod run;
pub mod scenario;

pub use abuse::{abuse, AbuseConfig, AbuseFigures};
pub use cluster::{run_cluster, ClusterConfig, ClusterFigures};
pub use run::{run, Config};
pub use scenario::Figures;

/// A seed for a run that was given none: the clock, in seconds (printed with the figures).
pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
}
