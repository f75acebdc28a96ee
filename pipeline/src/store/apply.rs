//! [`Store::apply`], the one place where sums and offsets change: every change to a
//! partition's sums happens in the same transaction as the compare-and-set of that partition's
//! next offset against the offset the batch started from, so a stale owner (a zombie) is
//! fenced and writes nothing. The requests a batch touched and its log clock commit with its
//! sums; pruning follows the commit ([`super::requests`]). Batches belong to an origin: the
//! compare-and-set is per origin and partition, and the cross-origin retry rule is judged in
//! the same transaction ([`super::origins`]).

use std::time::{Duration, Instant};

use rusqlite::{params, CachedStatement, OptionalExtension, Transaction, TransactionBehavior};

use super::{origins, Result, Store, PRUNE_CHUNK};
use crate::fold::PartitionBatch;
use crate::origin::{OriginId, LOCAL};

/// A partition whose stored offset was not the one its batch started from: another consumer
/// owns it now (or did meanwhile). Its batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub origin: OriginId,
    pub partition: i32,
    pub expected: Option<i64>,
    pub stored: Option<i64>,
}

/// What `apply` did: partitions committed with their new next offset, and partitions fenced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Partitions of the local origin committed ([`Store::apply`]), and of every origin, each
    /// with its origin ([`Store::apply_origins`]).
    pub committed: Vec<(i32, i64)>,
    pub committed_of: Vec<(OriginId, i32, i64)>,
    pub fenced: Vec<Fenced>,
    /// How long `apply` held the database's write lock, transaction by transaction.
    pub lock_held: LockHeld,
}

/// Write-lock hold times of one `apply`: its own transaction, and the prune transactions after
/// it (between which other writers may go).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LockHeld {
    pub commit: Duration,
    pub prune_transactions: usize,
    pub longest_prune: Duration,
    pub pruned: usize,
}

impl Store {
    /// Applies pending batches in one transaction. For each partition the stored next offset
    /// must still equal the batch's `start` (compare-and-set); a partition where it does not is
    /// fenced and none of its rows are written, while the other partitions commit.
    /// Empty batches are skipped. The requests a batch touched and its log clock are stored with
    /// its partition's rows. After the commit each committed partition's dead requests are
    /// pruned, at most twice as many as the batches touched (at least [`PRUNE_CHUNK`]), so
    /// pruning keeps up with a steady load without one long transaction.
    /// Batches of the local origin; [`Store::apply_origins`] takes every origin's.
    pub fn apply<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (i32, &'a PartitionBatch)>,
    ) -> Result<Applied> {
        self.apply_origins(batches.into_iter().map(|(p, b)| ((LOCAL, p), b)))
    }

    /// [`Store::apply`] of batches of any origin, each keyed by (origin, partition): the
    /// compare-and-set is per origin and partition, and all commit in one transaction. While
    /// the database has several origins, the copies each committed batch counted are judged by
    /// the cross-origin rule in the same transaction ([`crate::across`]).
    pub fn apply_origins<'a>(
        &mut self,
        batches: impl IntoIterator<Item = ((OriginId, i32), &'a PartitionBatch)>,
    ) -> Result<Applied> {
        let window_ms = self.window.as_millis().min(i64::MAX as u128) as i64;
        let started = Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Applied::default();
        let mut touched = 0;
        {
            let mut writes = Writes::prepare(&tx, &self.topic)?;
            for ((origin, partition), batch) in batches {
                let Some(next) = batch.next.filter(|_| !batch.is_empty()) else {
                    continue;
                };
                if let Some(fenced) = writes.swap_offset(origin, partition, batch, next)? {
                    out.fenced.push(fenced);
                    continue;
                }
                writes.rows(origin, partition, batch)?;
                if self.origins.several() {
                    origins::record_counted(
                        &tx,
                        &self.origins,
                        window_ms,
                        origin,
                        partition,
                        &batch.counted,
                    )?;
                }
                touched += batch.requests.len();
                if origin == LOCAL {
                    out.committed.push((partition, next));
                }
                out.committed_of.push((origin, partition, next));
            }
        }
        tx.commit()?;
        out.lock_held.commit = started.elapsed();
        self.prune_committed(&mut out, touched)?;
        Ok(out)
    }

    /// Prunes each committed partition's dead requests, at most twice as many as the batches
    /// touched (at least [`PRUNE_CHUNK`] per partition), counting the transactions in `out`.
    /// Also prunes the cross-origin copies no decision can need any more.
    fn prune_committed(&mut self, out: &mut Applied, touched: usize) -> Result<()> {
        let budget =
            ((2 * touched).max(PRUNE_CHUNK) / out.committed_of.len().max(1)).max(PRUNE_CHUNK);
        for &(origin, partition, _) in &out.committed_of {
            self.prune_partition(origin, partition, budget, &mut out.lock_held)?;
            out.lock_held.pruned += self.prune_copies(partition, budget)?;
        }
        Ok(())
    }
}

/// The statements of one `apply` transaction, prepared once (and cached by the connection).
struct Writes<'t> {
    topic: &'t str,
    cas_update: CachedStatement<'t>,
    cas_insert: CachedStatement<'t>,
    stored: CachedStatement<'t>,
    upsert: CachedStatement<'t>,
    quarantine: CachedStatement<'t>,
    remember: CachedStatement<'t>,
}

impl<'t> Writes<'t> {
    fn prepare(tx: &'t Transaction<'_>, topic: &'t str) -> Result<Self> {
        Ok(Writes {
            topic,
            cas_update: tx.prepare_cached(
                "UPDATE offsets SET next_offset = ?1, log_clock = ?5
                 WHERE topic = ?2 AND origin = ?6 AND partition = ?3 AND next_offset = ?4",
            )?,
            cas_insert: tx.prepare_cached(
                "INSERT INTO offsets (topic, origin, partition, next_offset, log_clock)
                 VALUES (?2, ?5, ?3, ?1, ?4)
                 ON CONFLICT (topic, origin, partition) DO NOTHING",
            )?,
            stored: tx.prepare_cached(
                "SELECT next_offset FROM offsets WHERE topic = ?1 AND origin = ?3 AND partition = ?2",
            )?,
            upsert: tx.prepare_cached(
                "INSERT INTO sums (key, partition, origin, sum) VALUES (?1, ?2, ?4, ?3)
                 ON CONFLICT (key, partition, origin) DO UPDATE SET sum = excluded.sum",
            )?,
            quarantine: tx.prepare_cached(
                "INSERT OR IGNORE INTO rejected_records
                 (topic, origin, partition, \"offset\", reason, key, value)
                 VALUES (?1, ?7, ?2, ?3, ?4, ?5, ?6)",
            )?,
            remember: tx.prepare_cached(
                "INSERT INTO requests (origin, partition, key, fingerprint, seen, first_seen)
                 VALUES (?6, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (origin, partition, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                     seen = excluded.seen, first_seen = excluded.first_seen",
            )?,
        })
    }

    /// The compare-and-set: moves the partition's stored next offset from the batch's `start`
    /// to `next` (inserting it when nothing is stored), with the batch's log clock. `Some` when
    /// the stored offset was another: the partition is fenced.
    fn swap_offset(
        &mut self,
        origin: OriginId,
        partition: i32,
        batch: &PartitionBatch,
        next: i64,
    ) -> Result<Option<Fenced>> {
        let topic = self.topic;
        let swapped = match batch.start {
            Some(start) => self.cas_update.execute(params![
                next,
                topic,
                partition,
                start,
                batch.clock,
                origin.0
            ])?,
            None => {
                self.cas_insert
                    .execute(params![next, topic, partition, batch.clock, origin.0])?
            }
        };
        if swapped == 1 {
            return Ok(None);
        }
        Ok(Some(Fenced {
            origin,
            partition,
            expected: batch.start,
            stored: self
                .stored
                .query_row(params![topic, partition, origin.0], |r| r.get(0))
                .optional()?,
        }))
    }

    /// The batch's rows: new sums, quarantined records, and the requests it touched.
    fn rows(&mut self, origin: OriginId, partition: i32, batch: &PartitionBatch) -> Result<()> {
        for (key, sum) in &batch.sums {
            self.upsert
                .execute(params![key, partition, sum, origin.0])?;
        }
        for r in &batch.rejected {
            self.quarantine.execute(params![
                self.topic, partition, r.offset, r.reason, r.key, r.value, origin.0
            ])?;
        }
        // A request stored but dead may be met again: the upsert starts it anew.
        for (key, state) in &batch.requests {
            let fingerprint = state.fingerprint.as_ref().map(<[u8; 16]>::as_slice);
            self.remember.execute(params![
                partition,
                key,
                fingerprint,
                state.seen,
                state.first_seen,
                origin.0
            ])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_value;
    use crate::store::test_batches::batch;
    use crate::store::StoreError;

    #[test]
    fn apply_commits_sums_and_offsets_together() {
        let mut s = Store::in_memory("t").unwrap();
        let b = batch(&s, 0, None, &[(0, "a", 2), (1, "b", 3), (2, "a", 5)]);
        let out = s.apply([(0, &b)]).unwrap();
        assert_eq!(out.committed, vec![(0, 3)]);
        assert_eq!(s.key_sum("a").unwrap(), Some(7));
        assert_eq!(s.key_sum("b").unwrap(), Some(3));
        assert_eq!(s.key_sum("never").unwrap(), None);
        assert_eq!(s.stored_offset(0).unwrap(), Some(3));

        let b = batch(&s, 0, Some(3), &[(3, "a", -10)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("a").unwrap(), Some(-3));
    }

    #[test]
    fn stale_owner_is_fenced_and_writes_nothing() {
        let mut s = Store::in_memory("t").unwrap();
        // Two owners of partition 0 both start from the stored offset (none).
        let first = batch(&s, 0, None, &[(0, "a", 1), (1, "a", 1)]);
        let zombie = batch(&s, 0, None, &[(0, "a", 1), (1, "a", 1), (2, "a", 1)]);
        assert_eq!(s.apply([(0, &first)]).unwrap().committed, vec![(0, 2)]);
        let out = s.apply([(0, &zombie)]).unwrap();
        assert!(out.committed.is_empty());
        assert_eq!(
            out.fenced,
            vec![Fenced {
                origin: LOCAL,
                partition: 0,
                expected: None,
                stored: Some(2)
            }]
        );
        assert_eq!(s.key_sum("a").unwrap(), Some(2));

        // Same with a stored offset: both start at 2, one wins.
        let a = batch(&s, 0, Some(2), &[(2, "a", 10)]);
        let b = batch(&s, 0, Some(2), &[(2, "a", 10), (3, "a", 10)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.apply([(0, &a)]).unwrap().fenced.len(), 1);
        assert_eq!(s.key_sum("a").unwrap(), Some(22));
        assert_eq!(s.stored_offset(0).unwrap(), Some(4));
    }

    #[test]
    fn a_fenced_partition_does_not_block_the_others() {
        let mut s = Store::in_memory("t").unwrap();
        let p0 = batch(&s, 0, Some(5), &[(5, "a", 1)]);
        let p1 = batch(&s, 1, None, &[(0, "b", 1)]);
        let out = s.apply([(0, &p0), (1, &p1)]).unwrap();
        assert_eq!(out.committed, vec![(1, 1)]);
        assert_eq!(out.fenced[0].partition, 0);
        assert_eq!(s.key_sum("a").unwrap(), None);
        assert_eq!(s.key_sum("b").unwrap(), Some(1));
    }

    #[test]
    fn rejected_records_land_with_the_offset() {
        let mut s = Store::in_memory("t").unwrap();
        let mut b = PartitionBatch::new(None);
        b.fold(0, Some(b"k"), Some(b"\xffjunk"), |_| Ok::<_, StoreError>(0))
            .unwrap();
        b.fold(1, Some(b"k"), Some(&encode_value(4)), |_| {
            Ok::<_, StoreError>(0)
        })
        .unwrap();
        s.apply([(3, &b)]).unwrap();
        let rows = s.rejected(None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].partition, rows[0].offset), (3, 0));
        assert_eq!(rows[0].value.as_deref(), Some(&b"\xffjunk"[..]));
        assert_eq!(s.stored_offset(3).unwrap(), Some(2));
        assert_eq!(s.key_sum("k").unwrap(), Some(4));
    }
}
