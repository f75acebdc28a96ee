//! Ground truth that tells a loss from a double on the same key. On a key, request `j` (the
//! key's `j`-th, `j < PER_KEY`) sends the value `3^j`, so the key's stored sum written in base 3
//! says, digit by digit, how many times each request was counted: 0 for a lost one, 1 for
//! exactly once, 2 for a double. With the same value everywhere a loss and a double on one key
//! would cancel out; here they are counted apart ([`Counted::count`]). A client retires a key
//! after `PER_KEY` requests and goes on with a fresh one.

use std::collections::BTreeMap;

/// Requests per key: `3^38 * 2` and the sum of all digits at 2 still fit an i64.
pub const PER_KEY: u32 = 39;

/// The value request `j` on a key sends.
pub fn value(j: u32) -> i64 {
    assert!(j < PER_KEY, "request {j} on one key: at most {PER_KEY}");
    3i64.pow(j)
}

/// What was sent and acknowledged on one key: bit `j` for request `j`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyLedger {
    pub sent: u64,
    pub acked: u64,
}

impl KeyLedger {
    /// Request `j` is about to be sent (once or more, with one idempotency key).
    pub fn sending(&mut self, j: u32) {
        self.sent |= 1 << j;
    }

    /// Request `j` was answered 200.
    pub fn acknowledged(&mut self, j: u32) {
        self.sent |= 1 << j;
        self.acked |= 1 << j;
    }
}

/// Requests lost and counts doubled, kept apart so that one cannot hide the other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Acknowledged requests counted zero times.
    pub lost: u64,
    /// Extra counts of requests counted more than once (acknowledged or not), and counts on
    /// requests never sent.
    pub doubled: u64,
    /// Requests never acknowledged (the client gave up) that were counted once: allowed, since
    /// a 503 means "may or may not be appended".
    pub unacknowledged_counted: u64,
}

impl Counted {
    /// Adds one key: `sum` is what the system says the key holds, `ledger` what was sent and
    /// acknowledged on it. A negative sum (impossible with these values) counts as one double.
    pub fn count(&mut self, ledger: KeyLedger, sum: i64) {
        if sum < 0 {
            self.doubled += 1;
            return;
        }
        let mut rest = sum;
        for j in 0..PER_KEY {
            let d = (rest % 3) as u64;
            rest /= 3;
            let bit = 1u64 << j;
            if ledger.acked & bit != 0 {
                if d == 0 {
                    self.lost += 1;
                } else {
                    self.doubled += d - 1;
                }
            } else if ledger.sent & bit != 0 {
                if d == 1 {
                    self.unacknowledged_counted += 1;
                }
                self.doubled += d.saturating_sub(1);
            } else {
                self.doubled += d;
            }
        }
        // Carries past the last digit: more than the values can explain.
        if rest > 0 {
            self.doubled += 1;
        }
    }

    /// Every key of `ledgers` against `sums` (a missing key holds 0); a key only `sums` has
    /// was never sent, so all its counts are doubles.
    pub fn between(ledgers: &BTreeMap<String, KeyLedger>, sums: &BTreeMap<String, i64>) -> Self {
        let mut c = Counted::default();
        for (k, l) in ledgers {
            c.count(*l, sums.get(k).copied().unwrap_or(0));
        }
        for (k, s) in sums {
            if !ledgers.contains_key(k) {
                c.count(KeyLedger::default(), *s);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(acked: &[u32], sent_only: &[u32]) -> KeyLedger {
        let mut l = KeyLedger::default();
        acked.iter().for_each(|j| l.acknowledged(*j));
        sent_only.iter().for_each(|j| l.sending(*j));
        l
    }

    fn sum(counts: &[(u32, i64)]) -> i64 {
        counts.iter().map(|(j, n)| value(*j) * n).sum()
    }

    fn counted(l: KeyLedger, s: i64) -> Counted {
        let mut c = Counted::default();
        c.count(l, s);
        c
    }

    #[test]
    fn a_loss_and_a_double_on_one_key_are_both_seen() {
        // Request 0 lost, request 1 counted twice: with +1 values the sum would be right.
        let c = counted(ledger(&[0, 1], &[]), sum(&[(1, 2)]));
        assert_eq!((c.lost, c.doubled), (1, 1));
    }

    #[test]
    fn exact_counts_and_unacknowledged_ones() {
        let all: Vec<u32> = (0..PER_KEY).collect();
        let once: Vec<(u32, i64)> = all.iter().map(|j| (*j, 1)).collect();
        assert_eq!(counted(ledger(&all, &[]), sum(&once)), Counted::default());
        let c = counted(ledger(&[0], &[1, 2]), sum(&[(0, 1), (1, 1)]));
        assert_eq!((c.lost, c.doubled, c.unacknowledged_counted), (0, 0, 1));
        let c = counted(ledger(&[0], &[1]), sum(&[(0, 1), (1, 2)]));
        assert_eq!((c.lost, c.doubled), (0, 1));
    }

    #[test]
    fn unknown_keys_and_unsent_requests_are_doubles() {
        let ledgers = BTreeMap::from([("k".to_owned(), ledger(&[0], &[]))]);
        let sums = BTreeMap::from([
            ("k".to_owned(), sum(&[(0, 1), (5, 1)])),
            ("other".to_owned(), 4), // 1 + 3: two counts on requests never sent
        ]);
        let c = Counted::between(&ledgers, &sums);
        assert_eq!((c.lost, c.doubled), (0, 3));
    }
}
