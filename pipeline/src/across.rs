//! The cross-origin retry rule: a request counted in more than one origin's log (a client that
//! sent it to one datacenter, lost the answer, and retried it with the same Idempotency-Key and
//! content at another) counts once in the global sum.
//!
//! Each origin's part is the fold of that origin's log alone ([`crate::fold`]): a retry inside
//! one origin is decided there, by that origin's log order and log clock. What this module
//! decides is only which of those *counted* records (applied, carrying a request header) the
//! global sum leaves out because another origin counted the same record of the same request.
//! The store keeps the counted records of every origin that another origin may still meet
//! ([`Counted`], table `request_copies`) and, per key and partition, minus the deltas left out
//! (the `sums` rows of [`crate::origin::ACROSS`]), so that the global sum is the sum of every
//! `sums` row of a key.
//!
//! The rule is a function of the *set* of counted records, never of the order in which the
//! origins' records were folded, so the global sums depend only on the prefix of each origin
//! folded ([`left_out`]):
//!
//! - Records of the same request key, record index and fingerprint ("copies") are ordered by
//!   (first seen, origin name, offset), where first seen is the origin's log clock when the
//!   request was first seen there (a clock, so it never moves back within an origin).
//! - A copy is left out of the global sum when a copy of *another* origin comes before it in
//!   that order and was first seen at most the idempotency window before it. Copies of the same
//!   origin never judge each other (that origin's own fold already did).
//!
//! Adding a copy can only leave more copies out (the rule is a "there exists"), so the store
//! keeps each copy's flag and only ever turns flags on as copies arrive: the flags then equal
//! the rule applied to every copy folded. A copy can be forgotten once no origin can meet it
//! again: every other origin's log clock in that partition is more than two windows past it
//! (a later copy there belongs to a request first seen at most one window before that clock,
//! since an older one is dead). Pruning then changes no decision: the flags it decided are
//! stored, and it can decide no later copy's.
//!
//! Copies with other content under the same request key (another fingerprint) are other
//! requests across origins: both count. Within one origin such a reuse is quarantined by the
//! origin's own fold as before.

/// A record counted in one origin's part that carries a request header: what the rule compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The request key (Idempotency-Key) of the record's request.
    pub request: Vec<u8>,
    /// The record's index in its request.
    pub index: u32,
    /// The request's content fingerprint; `None` for records with the old header.
    pub fingerprint: Option<[u8; 16]>,
    /// The origin's log clock when the request was first seen there (Unix ms).
    pub first_seen: i64,
    pub offset: i64,
    /// The counter key and the delta the record added to it.
    pub key: String,
    pub delta: i64,
}

/// A copy as the rule orders it: its origin's name, and the copy.
#[derive(Debug, Clone, Copy)]
pub struct OfOrigin<'a> {
    pub origin: &'a str,
    pub counted: &'a Counted,
}

impl OfOrigin<'_> {
    fn order(&self) -> (i64, &str, i64) {
        (self.counted.first_seen, self.origin, self.counted.offset)
    }

    fn same_record(&self, other: &OfOrigin<'_>) -> bool {
        self.counted.request == other.counted.request
            && self.counted.index == other.counted.index
            && self.counted.fingerprint == other.counted.fingerprint
    }
}

/// For each copy, whether the global sum leaves it out: a copy of the same record from another
/// origin comes before it and was first seen at most `window_ms` before it.
pub fn left_out(copies: &[OfOrigin<'_>], window_ms: i64) -> Vec<bool> {
    copies
        .iter()
        .map(|c| {
            copies.iter().any(|e| {
                e.origin != c.origin
                    && e.same_record(c)
                    && e.order() < c.order()
                    && c.counted.first_seen - e.counted.first_seen <= window_ms
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(request: &str, first_seen: i64, offset: i64, fp: u8) -> Counted {
        Counted {
            request: request.as_bytes().to_vec(),
            index: 0,
            fingerprint: Some([fp; 16]),
            first_seen,
            offset,
            key: "k".into(),
            delta: 1,
        }
    }

    fn judge(copies: &[(&str, &Counted)]) -> Vec<bool> {
        let copies: Vec<OfOrigin<'_>> = copies
            .iter()
            .map(|&(origin, counted)| OfOrigin { origin, counted })
            .collect();
        left_out(&copies, 100)
    }

    #[test]
    fn a_retry_at_another_origin_is_left_out_whichever_came_first() {
        let (a, b) = (counted("r", 1_000, 5, 1), counted("r", 1_040, 2, 1));
        assert_eq!(judge(&[("a", &a), ("b", &b)]), vec![false, true]);
        // The same set given in the other order: the same decisions.
        assert_eq!(judge(&[("b", &b), ("a", &a)]), vec![true, false]);
        // B's copy first seen earlier (clocks differ between datacenters): B's counts.
        let b = counted("r", 990, 2, 1);
        assert_eq!(judge(&[("a", &a), ("b", &b)]), vec![true, false]);
        // The same time: the origin's name decides.
        let b = counted("r", 1_000, 2, 1);
        assert_eq!(judge(&[("b", &b), ("a", &a)]), vec![true, false]);
    }

    #[test]
    fn only_the_same_record_of_the_same_content_within_the_window_is_left_out() {
        let a = counted("r", 1_000, 0, 1);
        // Past the window: a new request under the same key, counted again.
        assert_eq!(
            judge(&[("a", &a), ("b", &counted("r", 1_101, 0, 1))]),
            vec![false, false]
        );
        // At the window's edge: still the same request.
        assert_eq!(
            judge(&[("a", &a), ("b", &counted("r", 1_100, 0, 1))]),
            vec![false, true]
        );
        // Other content, another request key, another index: never left out.
        assert_eq!(
            judge(&[("a", &a), ("b", &counted("r", 1_010, 0, 2))]),
            vec![false, false]
        );
        assert_eq!(
            judge(&[("a", &a), ("b", &counted("s", 1_010, 0, 1))]),
            vec![false, false]
        );
        let mut other_index = counted("r", 1_010, 0, 1);
        other_index.index = 1;
        assert_eq!(judge(&[("a", &a), ("b", &other_index)]), vec![false, false]);
    }

    #[test]
    fn copies_of_one_origin_never_judge_each_other() {
        // Two counted copies in one origin are two requests there (the window passed between).
        let (a1, a2) = (counted("r", 1_000, 0, 1), counted("r", 1_150, 9, 1));
        assert_eq!(judge(&[("a", &a1), ("a", &a2)]), vec![false, false]);
        // A third origin's copy between them, within the window of each: the window across
        // origins is measured from the nearest earlier copy of another origin.
        let c = counted("r", 1_090, 0, 1);
        assert_eq!(
            judge(&[("a", &a1), ("a", &a2), ("c", &c)]),
            vec![false, true, true]
        );
    }

    #[test]
    fn more_copies_only_ever_leave_more_out() {
        // Every subset of a chain of copies: a copy left out in a subset stays left out in
        // every larger one, so flags updated as copies arrive equal the rule on the whole set.
        let all = [
            ("a", counted("r", 1_000, 0, 1)),
            ("b", counted("r", 1_060, 0, 1)),
            ("c", counted("r", 1_150, 0, 1)),
            ("a", counted("r", 1_210, 1, 1)),
            ("b", counted("r", 1_000, 1, 1)),
        ];
        for small in 0u32..32 {
            for large in 0u32..32 {
                if small & large != small {
                    continue;
                }
                let pick = |mask: u32| -> Vec<(usize, bool)> {
                    let set: Vec<(usize, (&str, &Counted))> = all
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(i, (o, c))| (i, (*o, c)))
                        .collect();
                    let flags = judge(&set.iter().map(|(_, c)| *c).collect::<Vec<_>>());
                    set.iter().map(|(i, _)| *i).zip(flags).collect()
                };
                let big = pick(large);
                for (i, out) in pick(small) {
                    let in_big = big.iter().find(|(j, _)| *j == i).unwrap().1;
                    assert!(
                        !out || in_big,
                        "copy {i} left out in {small:b} but not {large:b}"
                    );
                }
            }
        }
    }
}
