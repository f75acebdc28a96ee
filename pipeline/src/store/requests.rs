//! What each partition remembers of client requests (`requests`, see [`crate::fold`]) and its
//! log clock (the highest record timestamp folded), both written by [`Store::apply`] in the
//! same transaction as the sums. The idempotency window is bound to the database
//! ([`Store::bind_idempotency_window`]) so that no process folds it with another window.
//! Requests past the window are pruned after each commit in short transactions of their own
//! ([`PRUNE_CHUNK`] rows each), so the write lock every aggregator shares is never held long; a
//! dead request left unpruned is ignored by the fold all the same.

use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{LockHeld, Result, Store, StoreError};
use crate::fold::{RequestState, DEFAULT_WINDOW};
use crate::origin::{OriginId, LOCAL};

/// Most dead requests one prune transaction deletes.
pub const PRUNE_CHUNK: usize = 500;

impl Store {
    /// The idempotency window stored in the database, if one was bound.
    pub fn stored_idempotency_window(&self) -> Result<Option<Duration>> {
        let secs: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'idempotency_window_secs'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(secs
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs))
    }

    /// Binds the database to an idempotency window and folds with it from now on: the stored
    /// one when there is one (`wanted`, when given, must equal it), else `wanted` or the
    /// default, which is then stored. Returns the window in force.
    pub fn bind_idempotency_window(&mut self, wanted: Option<Duration>) -> Result<Duration> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let first = wanted.unwrap_or(DEFAULT_WINDOW).as_secs().to_string();
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('idempotency_window_secs', ?1)
             ON CONFLICT (name) DO NOTHING",
            [&first],
        )?;
        let stored: String = tx.query_row(
            "SELECT value FROM meta WHERE name = 'idempotency_window_secs'",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        let stored = stored.parse::<u64>().unwrap_or(0);
        if let Some(w) = wanted.filter(|w| w.as_secs() != stored) {
            return Err(StoreError::WindowMismatch {
                stored,
                wanted: w.as_secs(),
            });
        }
        self.window = Duration::from_secs(stored);
        Ok(self.window)
    }

    /// The idempotency window this store folds with.
    pub fn idempotency_window(&self) -> Duration {
        self.window
    }

    /// What the partition remembers of a request key, dead or alive.
    pub fn stored_request(&self, partition: i32, key: &[u8]) -> Result<Option<RequestState>> {
        self.stored_request_of(LOCAL, partition, key)
    }

    /// What an origin's partition remembers of a request key, dead or alive.
    pub fn stored_request_of(
        &self,
        origin: OriginId,
        partition: i32,
        key: &[u8],
    ) -> Result<Option<RequestState>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT fingerprint, seen, first_seen FROM requests
                 WHERE origin = ?3 AND partition = ?1 AND key = ?2",
            )?
            .query_row(params![partition, key, origin.0], |r| {
                let fingerprint: Option<Vec<u8>> = r.get(0)?;
                Ok(RequestState {
                    fingerprint: fingerprint.and_then(|f| f.try_into().ok()),
                    seen: r.get(1)?,
                    first_seen: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// A partition's stored log clock (highest record timestamp folded).
    pub fn stored_clock(&self, partition: i32) -> Result<Option<i64>> {
        self.stored_clock_of(LOCAL, partition)
    }

    /// An origin's partition's stored log clock.
    pub fn stored_clock_of(&self, origin: OriginId, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT log_clock FROM offsets WHERE topic = ?1 AND origin = ?3 AND partition = ?2",
            )?
            .query_row(params![self.topic, partition, origin.0], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Deletes up to `max_rows` of a partition's requests first seen more than the window
    /// before its stored log clock, [`PRUNE_CHUNK`] rows per transaction, oldest first.
    /// Returns the rows deleted.
    pub fn prune_requests(&mut self, partition: i32, max_rows: usize) -> Result<usize> {
        let mut held = LockHeld::default();
        self.prune_partition(LOCAL, partition, max_rows, &mut held)?;
        Ok(held.pruned)
    }

    pub(super) fn prune_partition(
        &mut self,
        origin: OriginId,
        partition: i32,
        max_rows: usize,
        held: &mut LockHeld,
    ) -> Result<()> {
        let window = self.window.as_millis().min(i64::MAX as u128) as i64;
        // A read first: most commits find nothing due and then take no write lock for it.
        let due = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM requests WHERE origin = ?4 AND partition = ?1 AND first_seen < (
                     SELECT log_clock - ?3 FROM offsets
                     WHERE topic = ?2 AND origin = ?4 AND partition = ?1)
                 LIMIT 1",
            )?
            .query_row(params![partition, self.topic, window, origin.0], |_| Ok(()))
            .optional()?
            .is_some();
        let mut deleted = 0;
        while due && deleted < max_rows {
            let chunk = PRUNE_CHUNK.min(max_rows - deleted);
            let started = Instant::now();
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The clock is read inside the transaction: a request dead by it stays dead, since
            // a clock only moves forward, so even a fenced zombie may prune.
            let n = tx
                .prepare_cached(
                    "DELETE FROM requests WHERE (origin, partition, key) IN (
                         SELECT origin, partition, key FROM requests
                         WHERE origin = ?5 AND partition = ?1 AND first_seen < (
                             SELECT log_clock - ?3 FROM offsets
                             WHERE topic = ?2 AND origin = ?5 AND partition = ?1)
                         ORDER BY first_seen LIMIT ?4)",
                )?
                .execute(params![
                    partition,
                    self.topic,
                    window,
                    chunk as i64,
                    origin.0
                ])?;
            tx.commit()?;
            held.prune_transactions += 1;
            held.longest_prune = held.longest_prune.max(started.elapsed());
            deleted += n;
            if n < chunk {
                break;
            }
        }
        held.pruned += deleted;
        Ok(())
    }

    /// Requests remembered, over all partitions, dead ones not yet pruned included.
    pub fn request_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::{PartitionBatch, Record};
    use crate::record::{encode_request, encode_value};
    use crate::store::test_batches::request_batch;
    use crate::store::OpenMode;

    #[test]
    fn requests_and_the_log_clock_commit_with_the_sums() {
        let mut s = Store::in_memory("t").unwrap();
        let b = request_batch(&s, None, "a", &[(0, 0, 10), (1, 2, 12)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.stored_clock(0).unwrap(), Some(12));
        let a = s.stored_request(0, b"a").unwrap().unwrap();
        assert_eq!((a.seen, a.first_seen), (vec![0b101], 10));
        assert_eq!(s.stored_request(1, b"a").unwrap(), None, "per partition");
        // The retry, in a later batch after the first committed: only index 1 is new.
        let b = request_batch(&s, Some(2), "a", &[(2, 0, 20), (3, 1, 20), (4, 2, 20)]);
        assert_eq!((b.applied, b.duplicate_keys), (1, 2));
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("k").unwrap(), Some(3));
        assert_eq!(
            s.stored_request(0, b"a").unwrap().unwrap().seen,
            vec![0b111]
        );
        assert_eq!(
            (s.stored_clock(0).unwrap(), s.request_count().unwrap()),
            (Some(20), 1)
        );
    }

    #[test]
    fn a_fenced_batch_remembers_nothing() {
        let mut s = Store::in_memory("t").unwrap();
        let winner = request_batch(&s, None, "w", &[(0, 0, 5)]);
        let zombie = request_batch(&s, None, "z", &[(0, 0, 9)]);
        s.apply([(0, &winner)]).unwrap();
        assert_eq!(s.apply([(0, &zombie)]).unwrap().fenced.len(), 1);
        assert_eq!(s.stored_request(0, b"z").unwrap(), None);
        assert_eq!(
            (s.stored_clock(0).unwrap(), s.request_count().unwrap()),
            (Some(5), 1)
        );
    }

    #[test]
    fn pruning_deletes_only_requests_past_the_window_in_chunks() {
        let mut s = Store::in_memory("t").unwrap();
        s.bind_idempotency_window(Some(Duration::from_secs(1)))
            .unwrap();
        // 1,200 requests first seen at t = 0..1199 ms, then one at 2,500: the clock is 2,500
        // and every request first seen before 1,500 is dead.
        let mut b = PartitionBatch::new(None).with_clock(None, s.idempotency_window());
        let fp = [1; 16];
        for i in 0..1_201 {
            let header = encode_request(&format!("r{i}"), 0, &fp);
            let value = encode_value(1);
            let ts = if i < 1_200 { i } else { 2_500 };
            let record = Record::with_request(i, b"k", &value, ts, &header);
            b.fold_record(&record, |_| Ok::<_, StoreError>(0), |_| Ok(None))
                .unwrap();
        }
        // apply prunes up to twice what it touched: all 1,200 dead ones, in 3 transactions.
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.request_count().unwrap(), 1);
        assert!(s.stored_request(0, b"r1200").unwrap().is_some());
        assert_eq!(
            s.prune_requests(0, 10).unwrap(),
            0,
            "nothing left that is due"
        );
        assert_eq!(
            s.key_sum("k").unwrap(),
            Some(1_201),
            "pruning never touches sums"
        );
    }

    #[test]
    fn the_window_is_bound_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut s = Store::open(&path, "t", OpenMode::CreateNew).unwrap();
        assert_eq!(s.stored_idempotency_window().unwrap(), None);
        let hour = Duration::from_secs(3600);
        assert_eq!(s.bind_idempotency_window(None).unwrap(), DEFAULT_WINDOW);
        drop(s);
        let mut s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(s.bind_idempotency_window(Some(hour)).unwrap(), hour);
        let e = s
            .bind_idempotency_window(Some(Duration::from_secs(60)))
            .unwrap_err();
        assert!(matches!(
            e,
            StoreError::WindowMismatch {
                stored: 3600,
                wanted: 60
            }
        ));
        assert!(e.to_string().contains("--idempotency-window-secs 3600"));
        assert_eq!(s.stored_idempotency_window().unwrap(), Some(hour));
    }
}
