//! The replayer: rebuilds or verifies Tally's state from the log. [`replay`] is the engine
//! (read a range of partitions to partition EOF or to end offsets, fold with the shared
//! `Applier`), [`verify`] compares a replay with a live database, [`as_of`] gives the sums at
//! a point of the log, [`positions`] parses log positions, [`timestamps`] turns times into
//! offsets by asking the broker's time index, [`reader`] makes the Kafka reader both use,
//! [`progress`] reports how far a replay is, [`cli`] is the command line.
//!
//! What must not live here: a fold, a schema or SQL of its own. A rebuild must fold exactly
//! as the aggregator does, so both use `tally_pipeline`'s.

pub mod as_of;
pub mod cli;
pub mod positions;
pub mod progress;
pub mod reader;
pub mod replay;
pub mod timestamps;
pub mod verify;
