//! What the consumer thread tells the HTTP side, through a `tokio::sync::watch` channel: which
//! partitions this process owns, their committed next offsets (published after each successful
//! commit, and the stored ones on assignment), and each owned partition's log end as last seen
//! by the consumer. Read-your-writes waits on it instead of polling SQLite; `/offsets`,
//! `/readyz` and the lag gauges derive lag from it.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;

/// The consumer's view, as of its last change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// True once the first assignment (possibly empty) arrived: the process is in the group.
    pub joined: bool,
    /// Partitions this process owns now.
    pub owned: BTreeSet<i32>,
    /// Committed next offset of each owned partition, as this process last committed or
    /// read it. Partitions owned by other processes are not here: read SQLite for those.
    pub committed: BTreeMap<i32, i64>,
    /// Log end offset (high watermark) of owned partitions, as last seen by the consumer.
    pub log_end: BTreeMap<i32, i64>,
    /// Owned partitions that stopped because the log no longer holds what follows their stored
    /// offset, each with the sentence that says why (topic, partition, offsets).
    pub stopped: BTreeMap<i32, String>,
    /// Why this process folds nothing at all (the topic was recreated), if it refused to.
    pub refused: Option<String>,
}

impl Progress {
    /// Records behind the log end for an owned partition whose log end is known, given its
    /// committed next offset (nothing committed: 0).
    pub fn lag(&self, partition: i32, next_offset: Option<i64>) -> Option<i64> {
        let end = *self.log_end.get(&partition)?;
        Some((end - next_offset.unwrap_or(0)).max(0))
    }

    /// Total lag over owned partitions, `None` while any owned partition's log end is unknown.
    pub fn owned_lag(&self) -> Option<i64> {
        self.owned
            .iter()
            .map(|p| self.lag(*p, self.committed.get(p).copied()))
            .sum()
    }
}

pub type ProgressTx = watch::Sender<Progress>;
pub type ProgressRx = watch::Receiver<Progress>;

pub fn channel() -> (ProgressTx, ProgressRx) {
    watch::channel(Progress::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_known_only_with_every_log_end() {
        let mut p = Progress {
            owned: [0, 1].into(),
            committed: [(0, 5)].into(),
            ..Progress::default()
        };
        assert_eq!(p.owned_lag(), None);
        p.log_end.insert(0, 9);
        assert_eq!(p.owned_lag(), None);
        p.log_end.insert(1, 3);
        assert_eq!(p.owned_lag(), Some(4 + 3));
        // A watermark behind the committed offset counts as no lag.
        p.log_end.insert(0, 2);
        assert_eq!(p.lag(0, Some(5)), Some(0));
        assert_eq!(Progress::default().owned_lag(), Some(0));
    }
}
