//! The owner of a set of partitions and their pending batches: what the aggregator and the
//! replayer both run. It folds records into per-partition batches and commits them through
//! [`Store::apply`]. It never commits work for a partition it no longer owns, and after a
//! fenced commit it restarts that partition from the offset the database holds.
//!
//! Partitions belong to an origin ([`crate::origin`]): the methods without `_of` are the local
//! origin's, the `_of` ones take the origin. One commit applies every origin's batches in one
//! transaction, each by its own compare-and-set.

use std::collections::BTreeMap;

use crate::fold::{Folded, PartitionBatch, Record};
use crate::origin::{OriginId, LOCAL};
use crate::store::{Applied, LockHeld, Result, Store};

/// Outcome of a commit, for the caller to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// Records committed (applied and rejected) in this commit.
    pub records: u64,
    /// Records quarantined in this commit.
    pub rejected: u64,
    /// Partitions that were fenced, each with the stored offset to resume from (`None`: from
    /// the beginning). Their pending work was dropped; the caller must seek there.
    pub fenced: Vec<(i32, Option<i64>)>,
    pub committed: Vec<(i32, i64)>,
    /// `fenced` and `committed` of every origin, each with its origin.
    pub fenced_of: Vec<(OriginId, i32, Option<i64>)>,
    pub committed_of: Vec<(OriginId, i32, i64)>,
    /// How long the commit held the database's write lock.
    pub lock_held: LockHeld,
    /// Offsets committed past without a record (transaction markers, aborted records), per
    /// partition where there were any.
    pub skipped: Vec<(i32, u64)>,
}

pub struct Applier {
    store: Store,
    owned: BTreeMap<(OriginId, i32), PartitionBatch>,
}

impl Applier {
    pub fn new(store: Store) -> Self {
        Applier {
            store,
            owned: BTreeMap::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes partitions over, starting each from its stored next offset. Returns where to start
    /// reading each one (`None`: from the beginning of the log).
    pub fn assign(&mut self, partitions: &[i32]) -> Result<Vec<(i32, Option<i64>)>> {
        self.assign_of(LOCAL, partitions)
    }

    /// [`Applier::assign`] of an origin's partitions.
    pub fn assign_of(
        &mut self,
        origin: OriginId,
        partitions: &[i32],
    ) -> Result<Vec<(i32, Option<i64>)>> {
        let mut starts = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let stored = self.store.stored_offset_of(origin, p)?;
            let batch = self.batch_from(origin, p, stored)?;
            self.owned.insert((origin, p), batch);
            starts.push((p, stored));
        }
        Ok(starts)
    }

    /// A batch starting at `start` that continues the partition's stored log clock.
    fn batch_from(
        &self,
        origin: OriginId,
        partition: i32,
        start: Option<i64>,
    ) -> Result<PartitionBatch> {
        let clock = self.store.stored_clock_of(origin, partition)?;
        let mut batch =
            PartitionBatch::new(start).with_clock(clock, self.store.idempotency_window());
        batch.track_counted = self.store.folds_several_origins();
        Ok(batch)
    }

    /// Declares that the caller positioned its reader of `partition` at the batch's next offset
    /// (0 when nothing is stored) and that the reader cannot jump on its own
    /// (`auto.offset.reset=error`): from now on offsets the reader skips are passed over
    /// ([`PartitionBatch::positioned`]). A fenced partition loses this until its reader is
    /// positioned again.
    pub fn positioned(&mut self, partition: i32) {
        self.positioned_of(LOCAL, partition)
    }

    /// [`Applier::positioned`] for an origin's partition.
    pub fn positioned_of(&mut self, origin: OriginId, partition: i32) {
        if let Some(b) = self.owned.get_mut(&(origin, partition)) {
            b.positioned = true;
        }
    }

    /// Moves an owned, positioned partition's next offset to its reader's position when that
    /// is ahead (the reader passed markers or aborted records after the last record folded).
    /// Returns whether it moved.
    pub fn advance_to(&mut self, partition: i32, position: i64) -> bool {
        self.advance_to_of(LOCAL, partition, position)
    }

    /// [`Applier::advance_to`] for an origin's partition.
    pub fn advance_to_of(&mut self, origin: OriginId, partition: i32, position: i64) -> bool {
        self.owned
            .get_mut(&(origin, partition))
            .is_some_and(|b| b.advance_to(position))
    }

    /// Commits pending work, then gives the partitions up.
    pub fn revoke(&mut self, partitions: &[i32]) -> Result<CommitReport> {
        self.revoke_of(LOCAL, partitions)
    }

    /// [`Applier::revoke`] of an origin's partitions (every origin's pending work commits).
    pub fn revoke_of(&mut self, origin: OriginId, partitions: &[i32]) -> Result<CommitReport> {
        let report = self.commit();
        for p in partitions {
            self.owned.remove(&(origin, *p));
        }
        report
    }

    /// Gives partitions up and drops their pending work (the assignment was lost, so another
    /// consumer may already own them).
    pub fn discard(&mut self, partitions: &[i32]) {
        self.discard_of(LOCAL, partitions)
    }

    /// [`Applier::discard`] of an origin's partitions.
    pub fn discard_of(&mut self, origin: OriginId, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(&(origin, *p));
        }
    }

    /// The local origin's owned partitions.
    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.owned_of(LOCAL)
    }

    /// An origin's owned partitions.
    pub fn owned_of(&self, origin: OriginId) -> impl Iterator<Item = i32> + '_ {
        self.owned
            .keys()
            .filter(move |(o, _)| *o == origin)
            .map(|(_, p)| *p)
    }

    /// The next offset this applier expects for a partition (`None` if not owned or nothing
    /// stored and nothing folded).
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.position_of(LOCAL, partition)
    }

    /// [`Applier::position`] for an origin's partition.
    pub fn position_of(&self, origin: OriginId, partition: i32) -> Option<i64> {
        self.owned.get(&(origin, partition)).and_then(|b| b.next)
    }

    /// Whether any owned partition has something to commit: records, or only a next offset
    /// moved past markers.
    pub fn has_work(&self) -> bool {
        !self.owned.values().all(PartitionBatch::is_empty)
    }

    /// Records folded but not yet committed.
    pub fn pending_records(&self) -> u64 {
        self.owned.values().map(PartitionBatch::records).sum()
    }

    /// Folds one record of an owned partition.
    pub fn fold(&mut self, partition: i32, record: &Record<'_>) -> Result<Folded> {
        self.fold_of(LOCAL, partition, record)
    }

    /// Folds one record of an origin's owned partition.
    pub fn fold_of(
        &mut self,
        origin: OriginId,
        partition: i32,
        record: &Record<'_>,
    ) -> Result<Folded> {
        let Some(batch) = self.owned.get_mut(&(origin, partition)) else {
            return Ok(Folded::NotOwned);
        };
        let store = &self.store;
        batch.fold_record(
            record,
            |k| store.partition_sum_of(origin, partition, k),
            |rk| store.stored_request_of(origin, partition, rk),
        )
    }

    /// Commits every owned partition's pending work in one transaction. On an error nothing
    /// was written and the pending work is kept for the next try.
    pub fn commit(&mut self) -> Result<CommitReport> {
        let mut report = CommitReport::default();
        if self.owned.values().all(PartitionBatch::is_empty) {
            return Ok(report);
        }
        let Applied {
            committed,
            committed_of,
            fenced,
            lock_held,
        } = self
            .store
            .apply_origins(self.owned.iter().map(|(s, b)| (*s, b)))?;
        report.lock_held = lock_held;
        for &(o, p, next) in &committed_of {
            let slot = self
                .owned
                .get_mut(&(o, p))
                .expect("committed partition is owned");
            // The reader goes on from where the batch ended, so it stays positioned.
            let mut fresh = PartitionBatch::new(Some(next))
                .with_clock(slot.clock, self.store.idempotency_window());
            fresh.positioned = slot.positioned;
            fresh.track_counted = slot.track_counted;
            let done = std::mem::replace(slot, fresh);
            report.records += done.records();
            report.rejected += done.rejected.len() as u64;
            if done.skipped_offsets > 0 && o == LOCAL {
                report.skipped.push((p, done.skipped_offsets));
            }
        }
        for f in fenced {
            let batch = self.batch_from(f.origin, f.partition, f.stored)?;
            self.owned.insert((f.origin, f.partition), batch);
            if f.origin == LOCAL {
                report.fenced.push((f.partition, f.stored));
            }
            report.fenced_of.push((f.origin, f.partition, f.stored));
        }
        report.committed = committed;
        report.committed_of = committed_of;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::RequestHeader;
    use crate::record::{encode_request, encode_value};

    fn plain<'a>(offset: i64, key: &'a [u8], value: &'a [u8]) -> Record<'a> {
        Record {
            offset,
            key: Some(key),
            value: Some(value),
            ..Record::default()
        }
    }

    fn fold_n(a: &mut Applier, p: i32, from: i64, n: i64, key: &str) {
        for off in from..from + n {
            a.fold(p, &plain(off, key.as_bytes(), &encode_value(1)))
                .unwrap();
        }
    }

    #[test]
    fn zombie_commit_is_fenced_and_the_zombie_resumes_from_the_store() {
        // Two appliers on one file stand for two aggregator processes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || Store::open(&path, "t", crate::store::OpenMode::CreateIfMissing).unwrap();
        let mut old = Applier::new(open());
        let mut new = Applier::new(open());
        assert_eq!(old.assign(&[0]).unwrap(), vec![(0, None)]);
        fold_n(&mut old, 0, 0, 5, "k");
        old.commit().unwrap();

        // The partition moves: the new owner starts at 5 while the old one keeps folding.
        assert_eq!(new.assign(&[0]).unwrap(), vec![(0, Some(5))]);
        fold_n(&mut old, 0, 5, 3, "k");
        fold_n(&mut new, 0, 5, 4, "k");
        assert_eq!(new.commit().unwrap().committed, vec![(0, 9)]);
        let stale = old.commit().unwrap();
        assert_eq!(stale.fenced, vec![(0, Some(9))]);
        assert_eq!(stale.records, 0);
        assert_eq!(old.position(0), Some(9));
        assert_eq!(new.store().key_sum("k").unwrap(), Some(9));

        // Whoever folds on from the stored offset commits; nothing is doubled.
        fold_n(&mut old, 0, 9, 1, "k");
        old.commit().unwrap();
        assert_eq!(new.commit().unwrap().fenced, vec![]);
        fold_n(&mut new, 0, 9, 1, "k");
        assert_eq!(new.commit().unwrap().fenced, vec![(0, Some(10))]);
        assert_eq!(old.store().key_sum("k").unwrap(), Some(10));
    }

    #[test]
    fn a_retry_committed_by_another_applier_is_not_counted_again() {
        // Two processes on one file: the original lands through one, the retry is folded by the
        // next owner of the partition after a rebalance.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || Store::open(&path, "t", crate::store::OpenMode::CreateIfMissing).unwrap();
        let mut first = Applier::new(open());
        first.assign(&[2]).unwrap();
        let one = encode_value(1);
        let fp = [5; 16];
        let (req, other) = (
            encode_request("req", 0, &fp),
            encode_request("other", 0, &fp),
        );
        let tagged = |offset, header| Record {
            request: Some(RequestHeader::V1(header)),
            timestamp: Some(1_000 + offset),
            ..plain(offset, b"k", &one)
        };
        assert_eq!(first.fold(2, &tagged(0, &req)).unwrap(), Folded::Applied);
        first.revoke(&[2]).unwrap();
        let mut next = Applier::new(open());
        next.assign(&[2]).unwrap();
        assert_eq!(
            next.fold(2, &tagged(1, &req)).unwrap(),
            Folded::DuplicateKey
        );
        assert_eq!(next.fold(2, &tagged(2, &other)).unwrap(), Folded::Applied);
        let report = next.commit().unwrap();
        assert_eq!((report.records, report.committed), (2, vec![(2, 3)]));
        assert_eq!(next.store().key_sum("k").unwrap(), Some(2));
    }

    #[test]
    fn positioning_survives_a_commit_but_not_a_fence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || Store::open(&path, "t", crate::store::OpenMode::CreateIfMissing).unwrap();
        let mut a = Applier::new(open());
        a.assign(&[0]).unwrap();
        let one = encode_value(1);
        a.fold(0, &plain(0, b"k", &one)).unwrap();
        a.commit().unwrap();
        // Not positioned: a gap after the stored offset is refused.
        assert_eq!(a.fold(0, &plain(2, b"k", &one)).unwrap(), Folded::Gap);
        a.positioned(0);
        assert_eq!(a.fold(0, &plain(2, b"k", &one)).unwrap(), Folded::Applied);
        assert!(a.advance_to(0, 4), "a trailing marker at 3");
        assert_eq!(a.commit().unwrap().committed, vec![(0, 4)]);
        assert_eq!(a.store().stored_offset(0).unwrap(), Some(4));
        // Still positioned after the commit.
        assert_eq!(a.fold(0, &plain(6, b"k", &one)).unwrap(), Folded::Applied);
        // Someone else moves the partition on: fenced, and no longer positioned.
        let mut other = Applier::new(open());
        other.assign(&[0]).unwrap();
        other.positioned(0);
        other.fold(0, &plain(4, b"k", &one)).unwrap();
        other.commit().unwrap();
        assert_eq!(a.commit().unwrap().fenced, vec![(0, Some(5))]);
        assert_eq!(a.fold(0, &plain(7, b"k", &one)).unwrap(), Folded::Gap);
        assert!(!a.advance_to(0, 9));
        assert_eq!(a.store().key_sum("k").unwrap(), Some(3));
    }

    #[test]
    fn revoke_commits_and_discard_drops() {
        let mut a = Applier::new(Store::in_memory("t").unwrap());
        a.assign(&[0, 1]).unwrap();
        fold_n(&mut a, 0, 0, 2, "x");
        fold_n(&mut a, 1, 0, 3, "y");
        a.revoke(&[0]).unwrap();
        assert_eq!(a.owned().collect::<Vec<_>>(), vec![1]);
        assert_eq!(a.store().key_sum("x").unwrap(), Some(2));
        // y was committed by the revoke's commit too (one transaction for all owned).
        assert_eq!(a.store().key_sum("y").unwrap(), Some(3));
        fold_n(&mut a, 1, 3, 3, "y");
        a.discard(&[1]);
        assert_eq!(a.pending_records(), 0);
        assert_eq!(
            a.fold(1, &plain(6, b"y", &encode_value(1))).unwrap(),
            Folded::NotOwned
        );
        assert_eq!(a.store().key_sum("y").unwrap(), Some(3));
    }
}
