//! Reading the outcome from the aggregators' database: committed offsets, waiting until every
//! acknowledged offset is folded, and per-key sums to compare with the ground truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::wait_for;

/// Committed next offsets, read from the database itself (empty while it cannot be opened).
pub fn committed(db: &Path, topic: &str) -> BTreeMap<i32, i64> {
    Store::open(db, topic, OpenMode::Existing)
        .and_then(|s| s.stored_offsets())
        .unwrap_or_default()
}

/// Waits until every partition's committed next offset is past its highest acknowledged
/// offset, calling `tick` on each poll (e.g. to restart a process that exited).
pub fn wait_folded(db: &Path, topic: &str, acked: &BTreeMap<i32, i64>, mut tick: impl FnMut()) {
    wait_for(
        "the aggregators to fold every acknowledged increment",
        Duration::from_secs(300),
        || {
            tick();
            let c = committed(db, topic);
            acked
                .iter()
                .all(|(p, o)| c.get(p).is_some_and(|n| n > o))
                .then_some(())
        },
    );
}

/// Stored sums per key, summed over partitions.
pub fn stored_sums(db: &Path, topic: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let store = Store::open(db, topic, OpenMode::Existing)?;
    let mut stored: BTreeMap<String, i64> = BTreeMap::new();
    for ((k, _), s) in store.all_sums()? {
        *stored.entry(k).or_insert(0) += s;
    }
    Ok(stored)
}
