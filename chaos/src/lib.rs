//! The chaos runner: drives load with ground truth against a real pipeline (broker, ingest,
//! two aggregators sharing one SQLite file on a small tmpfs) while it injects faults at random
//! moments from a recorded seed: SIGKILL of an aggregator, of ingest and of the broker, an
//! aggregator paused past its session timeout (zombie), and the database's filesystem filling
//! up. Clients retry with idempotency keys until acknowledged. At the end every increment must
//! be counted exactly once, the live database must verify against the log, and every process
//! must have recovered on its own.
//!
//! What must not live here: product logic. It drives the binaries from the outside.

pub mod disk;
pub mod load;
pub mod run;

pub use run::{run, Config, Figures};
