//! The SQLite store: one connection to a Tally database, bound to one topic, and `apply`, the
//! one place where sums and offsets change. `Store` is one type whose methods live by what
//! they touch:
//!
//! - [`schema`]: opening a database (WAL, `synchronous=FULL`, a busy timeout so that several
//!   aggregator processes can share one file), the migrations counted by `PRAGMA user_version`,
//!   and the bindings to a topic and to the broker's id of it;
//! - [`apply`]: the transaction where every change to a partition's sums happens together with
//!   the compare-and-set of that partition's next offset against the offset the batch started
//!   from;
//! - [`reads`]: sums, listings by prefix, the top keys, offsets, quarantined records and the
//!   snapshot verify compares;
//! - [`requests`]: what each partition remembers of client requests (see [`crate::fold`]), its
//!   log clock, the idempotency window bound to the database, and pruning of requests past it;
//! - [`origins`]: the logs the database folds ([`crate::origin`]), each origin's part of a
//!   sum, and the cross-origin retry rule's side of `apply` ([`crate::across`]).
//!
//! Offsets, log clocks, requests, quarantined records and sums are kept per origin and
//! partition; the methods without `_of` are the local origin's, except the sums read by key,
//! which are global (every origin's rows added).
//! - [`identity`]: the database's random identity, drawn by a migration.
//!
//! Everything is re-exported here: callers name `store::Store`, `store::Applied` and so on.

use rusqlite::Connection;
use std::time::Duration;

mod apply;
mod identity;
mod origins;
mod reads;
mod requests;
mod schema;

pub use apply::{Applied, Fenced, LockHeld};
pub use reads::{RejectedRow, Snapshot};
pub use requests::PRUNE_CHUNK;
pub use schema::OpenMode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade tally")]
    NewerSchema { found: i64, supported: i64 },
    #[error("database folds topic '{found}', not '{wanted}'")]
    TopicMismatch { found: String, wanted: String },
    #[error("database {0} already exists")]
    Exists(String),
    #[error("database {0} does not exist")]
    Missing(String),
    #[error("{0}")]
    OriginName(String),
    #[error("database remembers requests for {stored} s, not {wanted} s: pass --idempotency-window-secs {stored}, or rebuild into a new database to change the window")]
    WindowMismatch { stored: u64, wanted: u64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One connection to a Tally database, bound to one topic.
pub struct Store {
    conn: Connection,
    topic: String,
    window: Duration,
    origins: origins::Registry,
}

impl Store {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Direct access for tests and tools that alter a database on purpose.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Batches folded as the applier folds them, for the tests of each part of the store.
#[cfg(test)]
mod test_batches {
    use super::Store;
    use crate::fold::{PartitionBatch, Record};
    use crate::record::{encode_request, encode_value};

    pub(super) fn batch(
        store: &Store,
        partition: i32,
        start: Option<i64>,
        recs: &[(i64, &str, i64)],
    ) -> PartitionBatch {
        let mut b = PartitionBatch::new(start);
        for &(off, key, delta) in recs {
            b.fold(off, Some(key.as_bytes()), Some(&encode_value(delta)), |k| {
                store.partition_sum(partition, k)
            })
            .unwrap();
        }
        b
    }

    /// Folds records of request key `rk` (each: offset, record index, timestamp) into a batch of
    /// partition 0 as the applier does, asking the store what it remembers.
    pub(super) fn request_batch(
        store: &Store,
        start: Option<i64>,
        rk: &str,
        recs: &[(i64, u32, i64)],
    ) -> PartitionBatch {
        let fp = [3; 16];
        let mut b = PartitionBatch::new(start)
            .with_clock(store.stored_clock(0).unwrap(), store.idempotency_window());
        for &(off, index, ts) in recs {
            let header = encode_request(rk, index, &fp);
            let value = encode_value(1);
            let record = Record::with_request(off, b"k", &value, ts, &header);
            b.fold_record(
                &record,
                |k| store.partition_sum(0, k),
                |rk| store.stored_request(0, rk),
            )
            .unwrap();
        }
        b
    }
}
