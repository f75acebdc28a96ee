//! The pure fold of one partition's records into pending per-key sums. No IO happens here: the
//! current stored sum of a key is asked for through a closure the caller provides, once per key
//! per batch, so that overflow can be judged record by record in log order.
//!
//! Idempotency: a record may name the client request it came from ([`RequestHeader`]: the
//! request's idempotency key, the record's index in the request, a fingerprint of the request's
//! content). Per request key the partition remembers which indices it folded, the request's
//! fingerprint, and the partition's log clock when the request was first seen
//! ([`RequestState`]). A record whose index was already folded (a retry, whole or of the part
//! that landed before) is [`Folded::DuplicateKey`]: its offset is passed, its delta is not
//! added. A record whose key was first used for other content is quarantined
//! (`idempotency_key_reused`), never dropped silently. What the store remembers is asked
//! through a second closure.
//!
//! The window is measured on the log, not on a wall clock: a partition's log clock is the
//! highest record timestamp folded so far, and a request first seen more than the window before
//! the clock is forgotten (it counts again). So the fold stays a pure function of the log and
//! its window: a rebuild and a verify decide every record as the live aggregator did.
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
use std::time::Duration;

use crate::across::Counted;
use crate::record::{decode_key, decode_request, decode_value, DecodeError, RequestTag};

/// How long a request is remembered unless a database says otherwise, in log time.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60 * 60);

/// The request header a record carries, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHeader<'a> {
    /// [`crate::record::REQUEST_HEADER`]: key, index and fingerprint.
    V1(&'a [u8]),
    /// [`crate::record::IDEMPOTENCY_HEADER`] of records written before it: the value is the
    /// request key of a request of one record, without a fingerprint.
    Legacy(&'a [u8]),
}

impl<'a> RequestHeader<'a> {
    fn tag(self) -> Result<RequestTag<'a>, DecodeError> {
        match self {
            RequestHeader::V1(bytes) => {
                let r = decode_request(bytes)?;
                // The key is borrowed from the header bytes: bincode writes it as an 8-byte
                // length and the bytes, right after the version byte.
                let key = &bytes[1 + 8..1 + 8 + r.key.len()];
                if key != r.key.as_bytes() {
                    return Err(DecodeError::RequestHeader(
                        "key is not where v1 puts it".into(),
                    ));
                }
                Ok(RequestTag {
                    key,
                    index: r.index,
                    fingerprint: Some(r.fingerprint),
                })
            }
            RequestHeader::Legacy(key) => Ok(RequestTag {
                key,
                index: 0,
                fingerprint: None,
            }),
        }
    }
}

/// One record as the fold reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's timestamp in Unix milliseconds, as the log holds it.
    pub timestamp: Option<i64>,
    pub request: Option<RequestHeader<'a>>,
}

impl<'a> Record<'a> {
    /// A record of `key` carrying `value`, stamped `timestamp`, with a v1 request `header`.
    pub fn with_request(
        offset: i64,
        key: &'a [u8],
        value: &'a [u8],
        timestamp: i64,
        header: &'a [u8],
    ) -> Self {
        Record {
            offset,
            key: Some(key),
            value: Some(value),
            timestamp: Some(timestamp),
            request: Some(RequestHeader::V1(header)),
        }
    }
}

/// What a partition remembers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestState {
    /// `None` for a request of records with the old header.
    pub fingerprint: Option<[u8; 16]>,
    /// Bit `i` (byte `i / 8`, bit `i % 8`) is set once the request's record `i` was folded.
    pub seen: Vec<u8>,
    /// The partition's log clock when the request's first record here was folded.
    pub first_seen: i64,
}

impl RequestState {
    fn has(&self, index: u32) -> bool {
        let i = index as usize;
        self.seen
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn mark(&mut self, index: u32) {
        let i = index as usize;
        if self.seen.len() <= i / 8 {
            self.seen.resize(i / 8 + 1, 0);
        }
        self.seen[i / 8] |= 1 << (i % 8);
    }
}

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
    /// The partition's log clock after the last record folded (highest record timestamp).
    pub clock: Option<i64>,
    /// How long, in log milliseconds, a request is remembered.
    pub window_ms: i64,
    /// New state of every request this batch touched, by request key.
    pub requests: HashMap<Vec<u8>, RequestState>,
    /// Records passed over because their request had already folded their index.
    pub duplicate_keys: u64,
    /// Whether the reader was positioned at `next` and cannot jump: offsets it skips are not
    /// delivered on purpose (markers, aborted records) and may be passed.
    pub positioned: bool,
    /// Offsets passed without a record (markers, aborted records), in this batch.
    pub skipped_offsets: u64,
    /// Whether to keep [`PartitionBatch::counted`]: the database folds more than one origin.
    pub track_counted: bool,
    /// Records applied that carry a request header, in fold order, when tracked: what the
    /// cross-origin retry rule compares ([`crate::across`]).
    pub counted: Vec<Counted>,
}

impl PartitionBatch {
    pub fn new(start: Option<i64>) -> Self {
        PartitionBatch {
            start,
            next: start,
            sums: HashMap::new(),
            rejected: Vec::new(),
            applied: 0,
            clock: None,
            window_ms: DEFAULT_WINDOW.as_millis() as i64,
            requests: HashMap::new(),
            duplicate_keys: 0,
            positioned: false,
            skipped_offsets: 0,
            track_counted: false,
            counted: Vec::new(),
        }
    }

    /// Continues from a stored log clock, remembering requests for `window`.
    pub fn with_clock(mut self, clock: Option<i64>, window: Duration) -> Self {
        self.clock = clock;
        self.window_ms = window.as_millis().min(i64::MAX as u128) as i64;
        self
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

    /// Folds one record without a request header or timestamp. `stored_sum` returns the key's
    /// sum as stored in the database for this partition; it is called at most once per key per
    /// batch.
    pub fn fold<E>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        stored_sum: impl FnOnce(&str) -> Result<i64, E>,
    ) -> Result<Folded, E> {
        let record = Record {
            offset,
            key,
            value,
            ..Record::default()
        };
        self.fold_record(&record, stored_sum, |_| Ok(None))
    }

    /// Folds one record. `stored_request` returns what the store remembers of a request key in
    /// this partition; it is only asked for keys this batch has not touched itself. A record
    /// that does not decode (its request header included) is quarantined and marks nothing; a
    /// record that decodes marks its request index whether it applies or overflows.
    pub fn fold_record<E>(
        &mut self,
        record: &Record<'_>,
        stored_sum: impl FnOnce(&str) -> Result<i64, E>,
        stored_request: impl FnOnce(&[u8]) -> Result<Option<RequestState>, E>,
    ) -> Result<Folded, E> {
        let offset = record.offset;
        let skipped = match self.withheld_before(offset) {
            Ok(skipped) => skipped,
            Err(not_folded) => return Ok(not_folded),
        };
        // Every record moves the log clock, whatever becomes of it.
        let clock = later(self.clock, record.timestamp);
        let (key, delta, tag) = match decode(record) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.pass(offset, skipped, clock);
                self.reject(offset, reason(&e), record);
                return Ok(Folded::Rejected);
            }
        };
        // The fallible steps come before any change, so an error leaves the batch as it was.
        let remembered = match &tag {
            None => None,
            Some(tag) => match self.judge_request(tag, clock, stored_request)? {
                Request::Reused => {
                    self.pass(offset, skipped, clock);
                    self.reject(offset, reused_reason(tag.key), record);
                    return Ok(Folded::Rejected);
                }
                Request::Spent => {
                    self.pass(offset, skipped, clock);
                    self.duplicate_keys += 1;
                    return Ok(Folded::DuplicateKey);
                }
                Request::Marked(state) => Some((tag.key, state)),
            },
        };
        let current = match self.sums.get(key) {
            Some(sum) => *sum,
            None => stored_sum(key)?,
        };
        self.pass(offset, skipped, clock);
        let first_seen = remembered.as_ref().map(|(_, state)| state.first_seen);
        if let Some((request_key, state)) = remembered {
            self.requests.insert(request_key.to_vec(), state);
        }
        let folded = self.add(record, key, current, delta);
        if let (Folded::Applied, Some(tag), Some(first_seen)) = (&folded, &tag, first_seen) {
            self.count(tag, first_seen, offset, key, delta);
        }
        Ok(folded)
    }

    /// Keeps an applied record of a request for the cross-origin rule, when the batch was
    /// asked to ([`PartitionBatch::counted`]).
    fn count(&mut self, tag: &RequestTag<'_>, first_seen: i64, offset: i64, key: &str, delta: i64) {
        if !self.track_counted {
            return;
        }
        self.counted.push(Counted {
            request: tag.key.to_vec(),
            index: tag.index,
            fingerprint: tag.fingerprint,
            first_seen,
            offset,
            key: key.to_owned(),
            delta,
        });
    }

    /// How many offsets the reader withheld before `offset` (markers, aborted records), or why
    /// the record is not folded: it lies before the next offset (a redelivery), or after it
    /// while the batch is not positioned (a gap).
    fn withheld_before(&self, offset: i64) -> Result<u64, Folded> {
        match self.next {
            Some(next) if offset < next => Err(Folded::Duplicate),
            Some(next) if offset > next && !self.positioned => Err(Folded::Gap),
            _ if self.positioned => Ok((offset - self.expected()).max(0) as u64),
            _ => Ok(0),
        }
    }

    /// What the record's request index means, judged against the request's state as this
    /// batch or else the store remembers it, if that state is still inside the window at
    /// `clock`. Changes nothing.
    fn judge_request<E>(
        &self,
        tag: &RequestTag<'_>,
        clock: Option<i64>,
        stored_request: impl FnOnce(&[u8]) -> Result<Option<RequestState>, E>,
    ) -> Result<Request, E> {
        let known = match self.requests.get(tag.key) {
            Some(state) => Some(state.clone()),
            None => stored_request(tag.key)?,
        };
        let window_start = clock.map(|c| c.saturating_sub(self.window_ms));
        let live = known.filter(|s| window_start.is_none_or(|w| s.first_seen >= w));
        Ok(match live {
            Some(state) if reused(state.fingerprint, tag.fingerprint) => Request::Reused,
            Some(state) if state.has(tag.index) => Request::Spent,
            Some(mut state) => {
                state.mark(tag.index);
                Request::Marked(state)
            }
            None => {
                let mut state = RequestState {
                    fingerprint: tag.fingerprint,
                    seen: Vec::new(),
                    first_seen: clock.unwrap_or(0),
                };
                state.mark(tag.index);
                Request::Marked(state)
            }
        })
    }

    /// Adds `delta` to the key's `current` sum, or quarantines the record when the sum would
    /// leave the i64 range (the key's base is kept, so a later record does not ask again).
    fn add(&mut self, record: &Record<'_>, key: &str, current: i64, delta: i64) -> Folded {
        let Some(sum) = current.checked_add(delta) else {
            if !self.sums.contains_key(key) {
                self.sums.insert(key.to_owned(), current);
            }
            let why = format!("overflow: sum {current} + delta {delta} leaves the i64 range");
            self.reject(record.offset, why, record);
            return Folded::Rejected;
        };
        // Allocate the key only the first time it is seen in this batch (hot path).
        match self.sums.get_mut(key) {
            Some(slot) => *slot = sum,
            None => {
                self.sums.insert(key.to_owned(), sum);
            }
        }
        self.applied += 1;
        Folded::Applied
    }

    /// Moves past a folded record: its offset, the offsets withheld before it, the clock.
    fn pass(&mut self, offset: i64, skipped: u64, clock: Option<i64>) {
        self.next = Some(offset + 1);
        self.skipped_offsets += skipped;
        self.clock = clock;
    }

    fn reject(&mut self, offset: i64, reason: String, record: &Record<'_>) {
        self.rejected.push(Rejected {
            offset,
            reason,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
        });
    }
}

/// What a record's request index means for the batch.
enum Request {
    /// The request key was first used for other content: quarantine the record.
    Reused,
    /// The index was already folded: pass the record over.
    Spent,
    /// The index is new: the request's state with it marked, to keep once the record folds.
    Marked(RequestState),
}

/// A record's key, delta and request tag, or why it does not decode.
fn decode<'r>(record: &Record<'r>) -> Result<(&'r str, i64, Option<RequestTag<'r>>), DecodeError> {
    let key = decode_key(record.key)?;
    let delta = decode_value(record.value)?.delta;
    let tag = record.request.map(RequestHeader::tag).transpose()?;
    Ok((key, delta, tag))
}

/// A log clock moved by a record's timestamp: the later of the two, or whichever is known.
fn later(clock: Option<i64>, timestamp: Option<i64>) -> Option<i64> {
    match (clock, timestamp) {
        (Some(c), Some(t)) => Some(c.max(t)),
        (c, t) => c.or(t),
    }
}

fn reused_reason(request_key: &[u8]) -> String {
    format!(
        "idempotency_key_reused: request key {:?} was first used for a request with other content",
        String::from_utf8_lossy(request_key)
    )
}

/// Whether a request key met again carries other content than the request first seen with it.
/// Records of the old header carry no fingerprint and are never judged reused.
fn reused(first: Option<[u8; 16]>, now: Option<[u8; 16]>) -> bool {
    matches!((first, now), (Some(a), Some(b)) if a != b)
}

fn reason(e: &DecodeError) -> String {
    format!("{}: {e}", e.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_request, encode_value};
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

    /// A record of `request` (index `i`, content fingerprint `fp`) at `ts`, adding `delta`
    /// to key "k", folded against an empty store.
    fn req(b: &mut PartitionBatch, off: i64, ts: i64, request: (&str, u32, &[u8; 16])) -> Folded {
        let header = encode_request(request.0, request.1, request.2);
        let value = encode_value(1);
        let record = Record::with_request(off, b"k", &value, ts, &header);
        b.fold_record(&record, |_| Ok::<_, Infallible>(0), |_| Ok(None))
            .unwrap()
    }

    const FP: [u8; 16] = [7; 16];

    #[test]
    fn a_retried_request_counts_each_record_once_even_when_part_of_it_landed_before() {
        let mut b = PartitionBatch::new(Some(0));
        // A batch whose records 0 and 3 landed in this partition before the request failed.
        assert_eq!(req(&mut b, 0, 1_000, ("r", 0, &FP)), Folded::Applied);
        assert_eq!(req(&mut b, 1, 1_000, ("r", 3, &FP)), Folded::Applied);
        // The retry appends 0, 3 and 5 again: only 5 is new.
        assert_eq!(req(&mut b, 2, 2_000, ("r", 0, &FP)), Folded::DuplicateKey);
        assert_eq!(req(&mut b, 3, 2_000, ("r", 3, &FP)), Folded::DuplicateKey);
        assert_eq!(req(&mut b, 4, 2_000, ("r", 5, &FP)), Folded::Applied);
        // A gap left by a failed attempt (3 landed, 1 did not): the retry fills it.
        assert_eq!(req(&mut b, 5, 2_000, ("r", 1, &FP)), Folded::Applied);
        assert_eq!(b.sums["k"], 4);
        assert_eq!((b.applied, b.duplicate_keys, b.records()), (4, 2, 6));
        let state = &b.requests[&b"r".to_vec()];
        assert_eq!(state.seen, vec![0b0010_1011]);
        assert_eq!(state.first_seen, 1_000);
        assert_eq!(b.clock, Some(2_000));
        // A redelivered offset is a plain duplicate, whatever its request.
        assert_eq!(req(&mut b, 1, 2_000, ("new", 0, &FP)), Folded::Duplicate);
    }

    #[test]
    fn a_tracking_batch_keeps_the_records_it_counted_with_their_request() {
        let mut b = PartitionBatch::new(Some(0));
        b.track_counted = true;
        assert_eq!(req(&mut b, 0, 1_000, ("r", 0, &FP)), Folded::Applied);
        assert_eq!(req(&mut b, 1, 1_200, ("r", 0, &FP)), Folded::DuplicateKey);
        assert_eq!(req(&mut b, 2, 900, ("r", 1, &FP)), Folded::Applied);
        assert_eq!(req(&mut b, 3, 1_300, ("r", 2, &[9; 16])), Folded::Rejected);
        b.fold(4, Some(b"k"), Some(&encode_value(1)), |_| {
            Ok::<_, Infallible>(0)
        })
        .unwrap();
        let seen: Vec<(u32, i64, i64)> = b
            .counted
            .iter()
            .map(|c| (c.index, c.first_seen, c.offset))
            .collect();
        // Index 1 belongs to the request first seen at 1,000 (the clock stood at 1,200).
        assert_eq!(seen, vec![(0, 1_000, 0), (1, 1_000, 2)]);
        assert_eq!((b.counted[0].key.as_str(), b.counted[0].delta), ("k", 1));
        let mut untracked = PartitionBatch::new(Some(0));
        req(&mut untracked, 0, 1_000, ("r", 0, &FP));
        assert!(untracked.counted.is_empty());
    }

    #[test]
    fn a_key_reused_for_other_content_is_quarantined_not_dropped() {
        let mut b = PartitionBatch::new(Some(0));
        assert_eq!(req(&mut b, 0, 1_000, ("r", 0, &FP)), Folded::Applied);
        assert_eq!(req(&mut b, 1, 1_000, ("r", 0, &[8; 16])), Folded::Rejected);
        assert_eq!(b.sums["k"], 1);
        assert!(b.rejected[0].reason.starts_with("idempotency_key_reused"));
        assert_eq!(b.rejected[0].offset, 1);
        // The first request's state is untouched: its own retry is still recognised.
        assert_eq!(req(&mut b, 2, 1_000, ("r", 0, &FP)), Folded::DuplicateKey);
    }

    #[test]
    fn the_window_is_log_time_and_its_edge_is_inclusive() {
        let mut b = PartitionBatch::new(Some(0)).with_clock(None, Duration::from_millis(100));
        assert_eq!(req(&mut b, 0, 1_000, ("r", 0, &FP)), Folded::Applied);
        // Another request moves the clock to the window's edge: r is still remembered.
        assert_eq!(req(&mut b, 1, 1_100, ("x", 0, &FP)), Folded::Applied);
        assert_eq!(req(&mut b, 2, 1_050, ("r", 0, &FP)), Folded::DuplicateKey);
        // A record stamped earlier than the clock (another producer's clock) does not move it.
        assert_eq!(b.clock, Some(1_100));
        // One millisecond past the edge r is forgotten, counts again and is remembered anew.
        assert_eq!(req(&mut b, 3, 1_101, ("r", 0, &FP)), Folded::Applied);
        assert_eq!(b.requests[&b"r".to_vec()].first_seen, 1_101);
        assert_eq!(req(&mut b, 4, 1_101, ("r", 0, &FP)), Folded::DuplicateKey);
        // Past the window, a key may also be used for other content.
        assert_eq!(req(&mut b, 5, 1_300, ("x", 0, &[1; 16])), Folded::Applied);
        assert_eq!(b.sums["k"], 4);
    }

    #[test]
    fn the_store_is_asked_for_requests_the_batch_has_not_seen() {
        let stored = RequestState {
            fingerprint: Some(FP),
            seen: vec![0b1],
            first_seen: 900,
        };
        let header = encode_request("r", 0, &FP);
        let value = encode_value(1);
        let record = Record::with_request(0, b"k", &value, 1_000, &header);
        let mut asked = 0;
        let mut b = PartitionBatch::new(Some(0)).with_clock(Some(950), DEFAULT_WINDOW);
        let f = b.fold_record(
            &record,
            |_| Ok::<_, Infallible>(0),
            |k| {
                asked += 1;
                assert_eq!(k, b"r");
                Ok(Some(stored.clone()))
            },
        );
        assert_eq!((f, asked), (Ok(Folded::DuplicateKey), 1));
        assert!(
            b.requests.is_empty(),
            "a duplicate changes no request state"
        );
        assert_eq!((b.next, b.clock), (Some(1), Some(1_000)));
    }

    #[test]
    fn old_header_records_are_requests_of_one_record_and_bad_headers_are_quarantined() {
        let value = encode_value(5);
        let mut b = PartitionBatch::new(Some(0));
        let fold = |b: &mut PartitionBatch, off, request| {
            let record = Record {
                offset: off,
                key: Some(b"k"),
                value: Some(&value),
                timestamp: Some(1),
                request,
            };
            b.fold_record(&record, |_| Ok::<_, Infallible>(0), |_| Ok(None))
                .unwrap()
        };
        let legacy = Some(RequestHeader::Legacy(b"old#3"));
        assert_eq!(fold(&mut b, 0, legacy), Folded::Applied);
        assert_eq!(fold(&mut b, 1, legacy), Folded::DuplicateKey);
        assert_eq!(b.requests[&b"old#3".to_vec()].fingerprint, None);
        let junk = Some(RequestHeader::V1(b"\x09junk"));
        assert_eq!(fold(&mut b, 2, junk), Folded::Rejected);
        assert!(b.rejected[0].reason.starts_with("bad_request_header"));
        assert_eq!((b.sums["k"], b.next), (5, Some(3)));
    }

    #[test]
    fn undecodable_records_mark_nothing_and_errors_change_nothing() {
        let mut b = PartitionBatch::new(Some(0));
        let header = encode_request("r", 0, &FP);
        let junk = Record {
            offset: 0,
            key: Some(b"k"),
            value: Some(b"junk"),
            timestamp: Some(5),
            request: Some(RequestHeader::V1(&header)),
        };
        let r = b.fold_record(&junk, |_| Ok::<_, Infallible>(0), |_| Ok(None));
        assert_eq!(r, Ok(Folded::Rejected));
        assert!(b.requests.is_empty());
        assert_eq!(
            b.clock,
            Some(5),
            "a quarantined record still moves the clock"
        );
        assert_eq!(req(&mut b, 1, 6, ("r", 0, &FP)), Folded::Applied);

        let value = encode_value(1);
        let other = encode_request("other", 0, &FP);
        let record = Record::with_request(2, b"k", &value, 50, &other);
        let r = b.fold_record(&record, |_| Ok(0), |_| Err("disk"));
        assert_eq!(r, Err("disk"));
        assert_eq!(b.next, Some(2), "a failed fold must not advance the offset");
        assert_eq!((b.sums["k"], b.clock), (1, Some(6)));
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
