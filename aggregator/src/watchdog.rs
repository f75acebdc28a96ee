//! The orphan watchdog: notices partitions that nobody in the group consumes and makes the
//! group coordinator run a fresh assignment.
//!
//! All aggregators of a group share one SQLite file, so each one sees every partition's stored
//! next offset. A partition that this process does not own, whose stored offset has not moved
//! for a while although the log has records beyond it, is consumed by nobody (or by a member
//! that is stuck). The remedy is to leave the group and join it again (unsubscribe + subscribe):
//! a LeaveGroup makes any coordinator start a new generation, whose leader assigns every
//! partition among the members that are actually there.
//!
//! Why this is needed with tansu 0.6: when a member's session expires and the coordinator
//! notices it while handling a survivor's Heartbeat, it drops the member but keeps the group in
//! its formed state with the same generation and the same stored assignments; the survivors are
//! told to rejoin, rejoin into that same generation and SyncGroup hands them their old
//! assignment again (the leader's new one is ignored in that state), so the dead member's
//! partitions stay unassigned. A LeaveGroup moves the group to a new generation and clears a
//! leader that is no longer a member. On Kafka or Redpanda the coordinator reassigns by
//! itself and the watchdog stays idle; a false alarm costs one rebalance, never exactness (the
//! compare-and-set on the stored offset fences any overlap).
//!
//! This module holds the decision only (no IO), so it is tested without a broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Tracks when each partition's stored offset last moved.
#[derive(Debug)]
pub struct Watchdog {
    /// How long an unowned partition's stored offset may stand still before it is suspected.
    after: Duration,
    /// Per partition: the stored offset last seen and since when it has been that.
    seen: BTreeMap<i32, (Option<i64>, Instant)>,
    /// When this process last left and rejoined the group (rejoins are at least `after` apart).
    last_rejoin: Option<Instant>,
}

impl Watchdog {
    /// A watchdog that suspects a partition after `after` without progress.
    pub fn new(after: Duration) -> Self {
        Watchdog {
            after,
            seen: BTreeMap::new(),
            last_rejoin: None,
        }
    }

    /// Partitions of `all` that are not in `owned` and whose offset in `stored` has not moved
    /// for the watchdog's delay, as of `now`. Returns none while a recent rejoin is settling.
    /// A partition owned here restarts its clock (this process is responsible for its progress).
    pub fn stalled(
        &mut self,
        now: Instant,
        all: &[i32],
        stored: &BTreeMap<i32, i64>,
        owned: &BTreeSet<i32>,
    ) -> Vec<i32> {
        let mut stalled = Vec::new();
        for &p in all {
            let offset = stored.get(&p).copied();
            let entry = self.seen.entry(p).or_insert((offset, now));
            if entry.0 != offset || owned.contains(&p) {
                *entry = (offset, now);
            } else if now.duration_since(entry.1) >= self.after {
                stalled.push(p);
            }
        }
        let settling = self
            .last_rejoin
            .is_some_and(|at| now.duration_since(at) < self.after);
        if settling {
            Vec::new()
        } else {
            stalled
        }
    }

    /// Notes a rejoin at `now`: every partition's clock restarts.
    pub fn rejoined(&mut self, now: Instant) {
        self.last_rejoin = Some(now);
        for entry in self.seen.values_mut() {
            entry.1 = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn set(parts: &[i32]) -> BTreeSet<i32> {
        parts.iter().copied().collect()
    }

    #[test]
    fn an_unowned_partition_whose_offset_stands_still_is_stalled_after_the_delay() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER);
        let stored = BTreeMap::from([(0, 5), (1, 7)]);
        assert!(w.stalled(t0, &[0, 1, 2], &stored, &set(&[0])).is_empty());
        assert!(w
            .stalled(t0 + AFTER / 2, &[0, 1, 2], &stored, &set(&[0]))
            .is_empty());
        // 0 is owned here; 1 stood still at 7; 2 has never been committed by anyone.
        assert_eq!(
            w.stalled(t0 + AFTER, &[0, 1, 2], &stored, &set(&[0])),
            vec![1, 2]
        );
    }

    #[test]
    fn progress_or_ownership_restarts_the_clock() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER);
        w.stalled(t0, &[0, 1], &BTreeMap::from([(0, 5), (1, 7)]), &set(&[]));
        let moved = BTreeMap::from([(0, 6), (1, 7)]);
        w.stalled(t0 + AFTER / 2, &[0, 1], &moved, &set(&[1]));
        assert!(w.stalled(t0 + AFTER, &[0, 1], &moved, &set(&[])).is_empty());
        assert_eq!(
            w.stalled(t0 + AFTER * 3 / 2, &[0, 1], &moved, &set(&[])),
            vec![0, 1]
        );
    }

    #[test]
    fn after_a_rejoin_nothing_is_stalled_until_the_delay_passed_again() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER);
        let stored = BTreeMap::from([(0, 5)]);
        w.stalled(t0, &[0], &stored, &set(&[]));
        assert_eq!(w.stalled(t0 + AFTER, &[0], &stored, &set(&[])), vec![0]);
        w.rejoined(t0 + AFTER);
        assert!(w
            .stalled(t0 + AFTER * 3 / 2, &[0], &stored, &set(&[]))
            .is_empty());
        assert_eq!(w.stalled(t0 + AFTER * 2, &[0], &stored, &set(&[])), vec![0]);
    }
}
