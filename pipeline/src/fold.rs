//! The pure fold of one partition's records into pending per-key sums. No IO happens here: the
//! current stored sum of a key is asked for through a closure the caller provides, once per key
//! per batch, so that overflow can be judged record by record in log order.
//!
//! Idempotency: a record may carry a client's idempotency key. The first record of a partition
//! that carries a key spends it; a later record with the same key (a client's retry, or a
//! concurrent duplicate) is [`Folded::DuplicateKey`]: its offset is passed, its delta is not
//! added. Whether the store already saw a key is asked through a second closure.
//!
//! Gaps: on Kafka a reader is not handed every offset. Transaction markers (control records)
//! take offsets, aborted records are dropped under `read_committed`, compaction removes records.
//! A batch therefore passes over offsets it was not given only when its caller positioned the
//! reader at the batch's next offset and the reader cannot jump elsewhere on its own (no
//! automatic offset reset): [`PartitionBatch::positioned`]. Then whatever the broker does not
//! deliver between two records is something a read-committed reader must not count. An
//! unpositioned batch refuses a gap ([`Folded::Gap`]), because it cannot tell a marker from a
//! lost record. A positioned batch also moves past trailing markers when its caller reports the
//! reader's position ([`PartitionBatch::advance_to`]), so that a partition whose last offsets are
//! markers is stored as caught up.

use std::collections::HashMap;

use crate::record::{decode_key, decode_value, DecodeError};

/// A record that could not be applied, kept with everything needed to look at it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// What folding one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// The delta was added to its key's pending sum.
    Applied,
    /// The record went to quarantine (undecodable or overflowing); the offset still advances.
    Rejected,
    /// The record lies before the batch's next offset (a redelivery) and was ignored.
    Duplicate,
    /// The record carries an idempotency key already spent (in this batch or in the store): the
    /// offset advances, the sum does not change.
    DuplicateKey,
    /// The record's partition is not owned (any more); it was ignored.
    NotOwned,
    /// The record lies after the batch's next offset and the batch is not positioned: records
    /// in between were not seen. It was not folded; the caller must seek back to the batch's
    /// next offset.
    Gap,
}

/// Pending work for one partition: the offset it starts from (the compare-and-set expectation),
/// the offset after the last folded record, and the new absolute sum of every touched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBatch {
    /// Next offset stored in the database when the batch began; `None` when nothing is stored.
    pub start: Option<i64>,
    /// Next offset after the last record folded into this batch (equal to `start` when empty).
    pub next: Option<i64>,
    /// New absolute sum per touched key.
    pub sums: HashMap<String, i64>,
    pub rejected: Vec<Rejected>,
    /// Records applied (not rejected, not duplicates).
    pub applied: u64,
    /// Idempotency keys spent by this batch, each with the offset of the record that spent it.
    pub idempotency_keys: HashMap<Vec<u8>, i64>,
    /// Records passed over because their idempotency key was already spent.
    pub duplicate_keys: u64,
    /// Whether the reader was positioned at `next` and cannot jump: offsets it skips are not
    /// delivered on purpose (markers, aborted records) and may be passed.
    pub positioned: bool,
    /// Offsets passed without a record (markers, aborted records), in this batch.
    pub skipped_offsets: u64,
}

impl PartitionBatch {
    pub fn new(start: Option<i64>) -> Self {
        PartitionBatch {
            start,
            next: start,
            sums: HashMap::new(),
            rejected: Vec::new(),
            applied: 0,
            idempotency_keys: HashMap::new(),
            duplicate_keys: 0,
            positioned: false,
            skipped_offsets: 0,
        }
    }

    /// Declares that the caller positioned its reader at the batch's next offset (offset 0 when
    /// nothing is stored) with automatic offset resets off, so a later offset than expected is
    /// a marker or an aborted record the broker withheld, never a jump.
    pub fn positioned(mut self) -> Self {
        self.positioned = true;
        self
    }

    /// The offset the reader must deliver next.
    fn expected(&self) -> i64 {
        self.next.unwrap_or(0)
    }

    /// Moves a positioned batch's next offset to the reader's `position` (the offset after the
    /// last record or marker it handed over) when that is ahead: trailing markers and aborted
    /// records. Returns whether it moved. An unpositioned batch, or a position behind, is left
    /// as it is.
    pub fn advance_to(&mut self, position: i64) -> bool {
        let expected = self.expected();
        if !self.positioned || position <= expected {
            return false;
        }
        self.skipped_offsets += (position - expected) as u64;
        self.next = Some(position);
        true
    }

    /// True when no record has been folded since `start`.
    pub fn is_empty(&self) -> bool {
        self.next == self.start
    }

    /// Records folded (applied, rejected or passed over as duplicate keys) into this batch.
    pub fn records(&self) -> u64 {
        self.applied + self.rejected.len() as u64 + self.duplicate_keys
    }

    /// Folds one record without an idempotency key. `stored_sum` returns the key's sum as
    /// stored in the database for this partition; it is called at most once per key per batch.
    pub fn fold<E>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        stored_sum: impl FnOnce(&str) -> Result<i64, E>,
    ) -> Result<Folded, E> {
        self.fold_keyed(offset, key, value, None, stored_sum, |_| Ok(false))
    }

    /// Folds one record that may carry an idempotency key. `key_seen` says whether the store
    /// already holds the idempotency key for this partition (within its retention); it is only
    /// asked for keys this batch has not spent itself. A record that does not decode is
    /// quarantined and spends no key; a record that decodes spends its key whether it applies
    /// or overflows.
    pub fn fold_keyed<E>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        idempotency_key: Option<&[u8]>,
        stored_sum: impl FnOnce(&str) -> Result<i64, E>,
        key_seen: impl FnOnce(&[u8]) -> Result<bool, E>,
    ) -> Result<Folded, E> {
        let skipped = match self.next {
            Some(next) if offset < next => return Ok(Folded::Duplicate),
            Some(next) if offset > next && !self.positioned => return Ok(Folded::Gap),
            _ if self.positioned => (offset - self.expected()).max(0) as u64,
            _ => 0,
        };
        let decoded = decode_key(key).and_then(|k| Ok((k, decode_value(value)?.delta)));
        let (key_str, delta) = match decoded {
            Ok(kd) => kd,
            Err(e) => {
                self.next = Some(offset + 1);
                self.skipped_offsets += skipped;
                self.reject(offset, reason(&e), key, value);
                return Ok(Folded::Rejected);
            }
        };
        // The fallible steps come before any change, so an error leaves the batch as it was.
        if let Some(ik) = idempotency_key {
            if self.idempotency_keys.contains_key(ik) || key_seen(ik)? {
                self.next = Some(offset + 1);
                self.skipped_offsets += skipped;
                self.duplicate_keys += 1;
                return Ok(Folded::DuplicateKey);
            }
        }
        let current = match self.sums.get(key_str) {
            Some(sum) => *sum,
            None => stored_sum(key_str)?,
        };
        self.next = Some(offset + 1);
        self.skipped_offsets += skipped;
        if let Some(ik) = idempotency_key {
            self.idempotency_keys.insert(ik.to_vec(), offset);
        }
        match current.checked_add(delta) {
            Some(sum) => {
                // Allocate the key only the first time it is seen in this batch (hot path).
                match self.sums.get_mut(key_str) {
                    Some(slot) => *slot = sum,
                    None => {
                        self.sums.insert(key_str.to_owned(), sum);
                    }
                }
                self.applied += 1;
                Ok(Folded::Applied)
            }
            None => {
                // Remember the base so a later record for the key does not ask again.
                if !self.sums.contains_key(key_str) {
                    self.sums.insert(key_str.to_owned(), current);
                }
                self.reject(
                    offset,
                    format!("overflow: sum {current} + delta {delta} leaves the i64 range"),
                    key,
                    value,
                );
                Ok(Folded::Rejected)
            }
        }
    }

    fn reject(&mut self, offset: i64, reason: String, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.rejected.push(Rejected {
            offset,
            reason,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
        });
    }
}

fn reason(e: &DecodeError) -> String {
    format!("{}: {e}", e.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_value;
    use std::convert::Infallible;

    fn stored<'a>(map: &'a HashMap<&'a str, i64>) -> impl Fn(&str) -> Result<i64, Infallible> + 'a {
        move |k| Ok(*map.get(k).unwrap_or(&0))
    }

    #[test]
    fn folds_deltas_onto_stored_sums() {
        let db = HashMap::from([("a", 10)]);
        let mut b = PartitionBatch::new(Some(5));
        for (off, key, d) in [(5, "a", 1), (6, "b", 2), (7, "a", -4)] {
            let r = b.fold(
                off,
                Some(key.as_bytes()),
                Some(&encode_value(d)),
                stored(&db),
            );
            assert_eq!(r, Ok(Folded::Applied));
        }
        assert_eq!(b.next, Some(8));
        assert_eq!(b.sums, HashMap::from([("a".into(), 7), ("b".into(), 2)]));
        assert_eq!(b.applied, 3);
    }

    #[test]
    fn asks_the_store_once_per_key() {
        let mut asked = 0;
        let mut b = PartitionBatch::new(None);
        for off in 0..3 {
            b.fold(off, Some(b"k"), Some(&encode_value(1)), |_| {
                asked += 1;
                Ok::<_, Infallible>(100)
            })
            .unwrap();
        }
        assert_eq!(asked, 1);
        assert_eq!(b.sums["k"], 103);
        assert_eq!((b.start, b.next), (None, Some(3)));
    }

    #[test]
    fn redelivered_offsets_are_ignored() {
        let db = HashMap::new();
        let mut b = PartitionBatch::new(Some(3));
        assert_eq!(
            b.fold(2, Some(b"k"), Some(&encode_value(1)), stored(&db)),
            Ok(Folded::Duplicate)
        );
        b.fold(3, Some(b"k"), Some(&encode_value(1)), stored(&db))
            .unwrap();
        assert_eq!(
            b.fold(3, Some(b"k"), Some(&encode_value(1)), stored(&db)),
            Ok(Folded::Duplicate)
        );
        assert_eq!(b.sums["k"], 1);
        assert!(PartitionBatch::new(Some(3)).is_empty());
    }

    #[test]
    fn a_gap_is_refused_so_no_offset_passes_an_unseen_record() {
        let db = HashMap::new();
        let mut b = PartitionBatch::new(Some(3));
        assert_eq!(
            b.fold(5, Some(b"k"), Some(&encode_value(1)), stored(&db)),
            Ok(Folded::Gap)
        );
        assert!(b.is_empty());
        // With nothing stored, the first record may be anywhere (the log's start).
        let mut b = PartitionBatch::new(None);
        let r = b.fold(40, Some(b"k"), Some(&encode_value(1)), stored(&db));
        assert_eq!(r, Ok(Folded::Applied));
        assert_eq!(b.next, Some(41));
    }

    #[test]
    fn a_positioned_batch_passes_withheld_offsets_and_trailing_markers() {
        let db = HashMap::new();
        // Offsets 3 and 4 are, say, an aborted record and its abort marker: never delivered.
        let mut b = PartitionBatch::new(Some(3)).positioned();
        let one = encode_value(1);
        assert_eq!(
            b.fold(5, Some(b"k"), Some(&one), stored(&db)),
            Ok(Folded::Applied)
        );
        assert_eq!((b.next, b.skipped_offsets), (Some(6), 2));
        // A redelivery is still ignored, a later record still follows on.
        assert_eq!(
            b.fold(5, Some(b"k"), Some(&one), stored(&db)),
            Ok(Folded::Duplicate)
        );
        b.fold(6, Some(b"k"), Some(&one), stored(&db)).unwrap();
        // The commit marker at 7: the reader's position says 8, the batch moves there.
        assert!(b.advance_to(8));
        assert!(!b.advance_to(8), "no second move to the same position");
        assert!(!b.advance_to(4), "a position behind is ignored");
        assert_eq!((b.next, b.skipped_offsets, b.sums["k"]), (Some(8), 3, 2));

        // Nothing stored: the reader was positioned at 0, and a log whose first records are
        // markers moves the batch even before any record.
        let mut b = PartitionBatch::new(None).positioned();
        assert!(b.advance_to(2));
        assert!(!b.is_empty());
        assert_eq!(b.next, Some(2));
    }

    #[test]
    fn an_unpositioned_batch_never_moves_on_a_position() {
        let mut b = PartitionBatch::new(Some(3));
        assert!(!b.advance_to(10));
        assert!(b.is_empty());
    }

    #[test]
    fn overflow_is_rejected_in_log_order_and_later_records_still_apply() {
        let db = HashMap::from([("k", i64::MAX - 1)]);
        let mut b = PartitionBatch::new(Some(0));
        let f = |b: &mut PartitionBatch, off, d| {
            b.fold(off, Some(b"k"), Some(&encode_value(d)), stored(&db))
                .unwrap()
        };
        assert_eq!(f(&mut b, 0, 1), Folded::Applied);
        assert_eq!(f(&mut b, 1, 1), Folded::Rejected);
        assert_eq!(f(&mut b, 2, -5), Folded::Applied);
        assert_eq!(b.sums["k"], i64::MAX - 5);
        assert_eq!(b.rejected.len(), 1);
        assert_eq!(b.rejected[0].offset, 1);
        assert!(b.rejected[0].reason.starts_with("overflow"));

        let db = HashMap::from([("k", i64::MIN)]);
        let mut b = PartitionBatch::new(None);
        let r = b.fold(0, Some(b"k"), Some(&encode_value(-1)), stored(&db));
        assert_eq!(r, Ok(Folded::Rejected));
        assert_eq!(b.sums["k"], i64::MIN);
    }

    #[test]
    fn undecodable_records_are_quarantined_with_their_bytes() {
        let db = HashMap::new();
        let mut b = PartitionBatch::new(Some(0));
        assert_eq!(
            b.fold(0, Some(b"k"), Some(b"garbage"), stored(&db)),
            Ok(Folded::Rejected)
        );
        assert_eq!(
            b.fold(1, None, Some(&encode_value(1)), stored(&db)),
            Ok(Folded::Rejected)
        );
        assert_eq!(b.next, Some(2));
        assert!(b.sums.is_empty());
        assert_eq!(b.rejected[0].value.as_deref(), Some(&b"garbage"[..]));
        assert!(b.rejected[0].reason.starts_with("unknown_version"));
        assert!(b.rejected[1].reason.starts_with("missing_key"));
        assert_eq!(b.records(), 2);
    }

    fn keyed(
        b: &mut PartitionBatch,
        off: i64,
        delta: i64,
        ik: Option<&[u8]>,
        stored_keys: &[&[u8]],
    ) -> Folded {
        b.fold_keyed(
            off,
            Some(b"k"),
            Some(&encode_value(delta)),
            ik,
            |_| Ok::<_, Infallible>(0),
            |k| Ok(stored_keys.contains(&k)),
        )
        .unwrap()
    }

    #[test]
    fn a_spent_idempotency_key_passes_the_offset_but_not_the_sum() {
        let mut b = PartitionBatch::new(Some(0));
        assert_eq!(keyed(&mut b, 0, 5, Some(b"req-1"), &[]), Folded::Applied);
        // Same key later in the batch (a retry, or a concurrent duplicate): passed over.
        assert_eq!(
            keyed(&mut b, 1, 5, Some(b"req-1"), &[]),
            Folded::DuplicateKey
        );
        // A different key counts separately; no key always counts.
        assert_eq!(keyed(&mut b, 2, 7, Some(b"req-2"), &[]), Folded::Applied);
        assert_eq!(keyed(&mut b, 3, 1, None, &[]), Folded::Applied);
        assert_eq!(keyed(&mut b, 4, 1, None, &[]), Folded::Applied);
        // A key the store already holds (spent by an earlier, committed batch).
        assert_eq!(
            keyed(&mut b, 5, 100, Some(b"old"), &[b"old"]),
            Folded::DuplicateKey
        );
        assert_eq!(b.sums["k"], 14);
        assert_eq!(b.next, Some(6));
        assert_eq!((b.applied, b.duplicate_keys, b.records()), (4, 2, 6));
        assert_eq!(
            b.idempotency_keys,
            HashMap::from([(b"req-1".to_vec(), 0), (b"req-2".to_vec(), 2)])
        );
        // A redelivered offset is a plain duplicate, whatever its key.
        assert_eq!(keyed(&mut b, 1, 5, Some(b"new"), &[]), Folded::Duplicate);
    }

    #[test]
    fn undecodable_records_do_not_spend_their_key_and_errors_change_nothing() {
        let mut b = PartitionBatch::new(Some(0));
        let r = b.fold_keyed(
            0,
            Some(b"k"),
            Some(b"junk"),
            Some(b"ik"),
            |_| Ok::<_, Infallible>(0),
            |_| Ok(false),
        );
        assert_eq!(r, Ok(Folded::Rejected));
        assert!(b.idempotency_keys.is_empty());
        assert_eq!(keyed(&mut b, 1, 3, Some(b"ik"), &[]), Folded::Applied);

        let r = b.fold_keyed(
            2,
            Some(b"k"),
            Some(&encode_value(1)),
            Some(b"other"),
            |_| Ok(0),
            |_| Err("disk"),
        );
        assert_eq!(r, Err("disk"));
        assert_eq!(b.next, Some(2), "a failed fold must not advance the offset");
        assert_eq!(b.sums["k"], 3);
    }

    #[test]
    fn store_errors_propagate_without_advancing_sums() {
        let mut b = PartitionBatch::new(Some(0));
        let r = b.fold(0, Some(b"k"), Some(&encode_value(1)), |_| Err("disk"));
        assert_eq!(r, Err("disk"));
        assert!(b.sums.is_empty());
        assert!(b.is_empty(), "a failed fold must not advance the offset");
    }
}
