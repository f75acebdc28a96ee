//! `verify`: replays the log into a temporary database up to the live database's committed
//! offsets and compares every sum. Reads the live database in one read transaction (a
//! consistent snapshot while its consumer keeps committing) and never writes to it, nor joins
//! its consumer group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tally_pipeline::applier::Applier;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::store::{OpenMode, Snapshot, Store, StoreError};

use crate::positions::{From, To};
use crate::replay::replay;

/// One key whose sum differs; `None` means the side has no row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub key: String,
    pub partition: i32,
    pub expected: Option<i64>,
    pub found: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub partitions: BTreeMap<i32, i64>,
    pub keys_checked: usize,
    pub differences: Vec<Difference>,
    /// Quarantined records the replay found that live lacks, and the other way round.
    pub rejected_missing: Vec<(i32, i64)>,
    pub rejected_extra: Vec<(i32, i64)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
            && self.rejected_missing.is_empty()
            && self.rejected_extra.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(
                f,
                "ok: {} keys over {} partitions match the log up to the live offsets",
                self.keys_checked,
                self.partitions.len()
            );
        }
        writeln!(f, "MISMATCH: {} differing keys", self.differences.len())?;
        writeln!(
            f,
            "{:<40} {:>9} {:>20} {:>20}",
            "key", "partition", "expected", "found"
        )?;
        let show = |v: Option<i64>| v.map_or("(missing)".to_owned(), |v| v.to_string());
        for d in &self.differences {
            writeln!(
                f,
                "{:<40} {:>9} {:>20} {:>20}",
                d.key,
                d.partition,
                show(d.expected),
                show(d.found)
            )?;
        }
        if !self.rejected_missing.is_empty() {
            writeln!(
                f,
                "quarantined in the log but not in live: {:?}",
                self.rejected_missing
            )?;
        }
        if !self.rejected_extra.is_empty() {
            writeln!(
                f,
                "quarantined in live but not by the log: {:?}",
                self.rejected_extra
            )?;
        }
        Ok(())
    }
}

/// Compares two snapshots row by row.
pub fn compare(expected: &Snapshot, found: &Snapshot) -> Report {
    let mut differences = Vec::new();
    let keys: BTreeSet<&(String, i32)> = expected.sums.keys().chain(found.sums.keys()).collect();
    for k in &keys {
        let (e, f) = (expected.sums.get(k).copied(), found.sums.get(k).copied());
        if e != f {
            differences.push(Difference {
                key: k.0.clone(),
                partition: k.1,
                expected: e,
                found: f,
            });
        }
    }
    let er: BTreeSet<_> = expected.rejected.iter().copied().collect();
    let fr: BTreeSet<_> = found.rejected.iter().copied().collect();
    Report {
        partitions: found.offsets.clone(),
        keys_checked: keys.len(),
        differences,
        rejected_missing: er.difference(&fr).copied().collect(),
        rejected_extra: fr.difference(&er).copied().collect(),
    }
}

/// Verifies the live database at `live` against the log, folding with the idempotency window
/// the live database stores (`window`, when given, must be that one).
pub fn verify(
    kafka: &KafkaArgs,
    live: &Path,
    window: Option<Duration>,
    only: Option<&BTreeSet<i32>>,
) -> anyhow::Result<Report> {
    let live_store = Store::open(live, &kafka.topic, OpenMode::Existing)
        .with_context(|| format!("cannot open the live database {}", live.display()))?;
    if live_store.folds_several_origins() {
        anyhow::bail!(
            "{} folds remote origins; verify covers the local origin only in this version",
            live.display()
        );
    }
    // Read-only: verify never binds a database to an id, it only compares a bound one.
    if let (Some(stored), Some(current)) = (
        live_store.stored_topic_id()?,
        tally_pipeline::topic::id(kafka)?,
    ) {
        tally_pipeline::topic::judge_topic_id(&kafka.topic, &stored, &current)
            .map_err(anyhow::Error::msg)?;
    }
    let stored_window = live_store.stored_idempotency_window()?;
    if let (Some(stored), Some(wanted)) = (stored_window, window) {
        if stored != wanted {
            return Err(StoreError::WindowMismatch {
                stored: stored.as_secs(),
                wanted: wanted.as_secs(),
            }
            .into());
        }
    }
    let mut found = live_store
        .snapshot()
        .context("cannot read the live database")?;
    drop(live_store);
    if let Some(only) = only {
        found.offsets.retain(|p, _| only.contains(p));
        found.sums.retain(|(_, p), _| only.contains(p));
        found.rejected.retain(|(p, _)| only.contains(p));
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut scratch = Store::open(
        &dir.path().join("verify.db"),
        &kafka.topic,
        OpenMode::CreateNew,
    )?;
    scratch.bind_idempotency_window(stored_window.or(window))?;
    let mut applier = Applier::new(scratch);
    let parts: BTreeSet<i32> = found.offsets.keys().copied().collect();
    replay(
        kafka,
        &mut applier,
        &From::Earliest,
        &To::Offsets(found.offsets.clone()),
        Some(&parts),
    )?;
    let expected = applier.store().snapshot()?;
    Ok(compare(&expected, &found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(sums: &[(&str, i32, i64)]) -> Snapshot {
        Snapshot {
            offsets: BTreeMap::from([(0, 10)]),
            sums: sums
                .iter()
                .map(|(k, p, s)| ((k.to_string(), *p), *s))
                .collect(),
            rejected: vec![],
        }
    }

    #[test]
    fn finds_altered_missing_and_extra_keys() {
        let e = snap(&[("a", 0, 1), ("b", 0, 2), ("c", 0, 3)]);
        let f = snap(&[("a", 0, 1), ("b", 0, 5), ("d", 0, 4)]);
        let r = compare(&e, &f);
        assert!(!r.is_clean());
        assert_eq!(r.keys_checked, 4);
        let got: Vec<_> = r
            .differences
            .iter()
            .map(|d| (d.key.as_str(), d.expected, d.found))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b", Some(2), Some(5)),
                ("c", Some(3), None),
                ("d", None, Some(4))
            ]
        );
        assert!(r.to_string().contains("MISMATCH: 3 differing keys"));
        assert!(compare(&e, &e).is_clean());
    }
}
