//! Reading the outcome from the aggregators' database: committed offsets, waiting until every
//! acknowledged offset is folded, and per-key sums to compare with the ground truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use tally_pipeline::store::{OpenMode, Store};

/// Committed next offsets, read from the database itself (empty while it cannot be opened).
pub fn committed(db: &Path, topic: &str) -> BTreeMap<i32, i64> {
    Store::open(db, topic, OpenMode::Existing)
        .and_then(|s| s.stored_offsets())
        .unwrap_or_default()
}

/// Whether the record at `offset` of `partition` is folded and committed.
pub fn folded(db: &Path, topic: &str, partition: i32, offset: i64) -> bool {
    committed(db, topic)
        .get(&partition)
        .is_some_and(|n| *n > offset)
}

/// Waits (at most 300 s) until every partition's committed next offset is past its highest
/// acknowledged offset, calling `tick` on each poll (e.g. to restart a process that exited).
pub fn wait_folded(
    db: &Path,
    topic: &str,
    acked: &BTreeMap<i32, i64>,
    mut tick: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tick()?;
        let c = committed(db, topic);
        if acked.iter().all(|(p, o)| c.get(p).is_some_and(|n| n > o)) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the aggregators did not fold every acknowledged increment within 300 s: committed {c:?}, acknowledged up to {acked:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Lost and doubled increments, read apart from stored sums (see [`crate::load`]).
pub use tally_testkit::ledger::Counted as Tally;

/// Compares every key's stored sum with what was sent and acknowledged on it, request by
/// request ([`tally_testkit::ledger`]); keys stored but never written count as doubles.
pub fn tally(truth: &crate::load::Truth, stored: BTreeMap<String, i64>) -> Tally {
    Tally::between(&truth.keys, &stored)
}

/// Per fault kind, the maximum and mean of its recovery times.
pub fn max_mean(times: &BTreeMap<&str, Vec<f64>>) -> BTreeMap<String, (f64, f64)> {
    times
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let max = v.iter().cloned().fold(0.0, f64::max);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            ((*k).to_owned(), (max, mean))
        })
        .collect()
}

/// `replayer ARGS verify --db DB`: the log up to the committed offsets must fold to exactly
/// the stored sums (no offset passed an unapplied record). Returns its exit code; on a
/// failure it runs once more with librdkafka's fetch log into `work_dir/verify-debug.log`.
pub fn verify(args: &[String], db: &Path, work_dir: &Path) -> anyhow::Result<Option<i32>> {
    use anyhow::Context as _;
    use tally_testkit::process::bin;
    let db = db.to_str().context("the database path is not UTF-8")?;
    let out = std::process::Command::new(bin("replayer"))
        .args(args)
        .args(["verify", "--db", db])
        .env("RUST_LOG", "warn")
        .output()
        .context("cannot run replayer verify")?;
    if out.status.code() != Some(0) {
        eprintln!(
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = work_dir.join("verify-debug.log");
        let again = std::process::Command::new(bin("replayer"))
            .args(args)
            .args(["verify", "--db", db])
            .env("RUST_LOG", "debug")
            .env("TALLY_KAFKA_DEBUG", "fetch,consumer,topic")
            .stderr(std::fs::File::create(&log)?)
            .status()?;
        eprintln!(
            "verify again ({again}), librdkafka fetch log in {}",
            log.display()
        );
    }
    Ok(out.status.code())
}

/// Rebuilds the whole log into a new database beside `work_dir` and returns how many keys'
/// sums differ from the live database `db` (`None` when the rebuild failed). Stop the
/// aggregators first, so that the live database holds still while it is compared.
pub fn rebuild_differences(
    args: &[String],
    db: &Path,
    topic: &str,
    work_dir: &Path,
) -> anyhow::Result<Option<u64>> {
    use anyhow::Context as _;
    use tally_testkit::process::bin;
    let rebuilt = work_dir.join("rebuilt.db");
    let _ = std::fs::remove_file(&rebuilt);
    let out = std::process::Command::new(bin("replayer"))
        .args(args)
        .args([
            "rebuild",
            "--db",
            rebuilt.to_str().context("the work path is not UTF-8")?,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .context("cannot run replayer rebuild")?;
    if !out.status.success() {
        eprintln!(
            "rebuild: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(None);
    }
    let live = stored_sums(db, topic)?;
    let again = stored_sums(&rebuilt, topic)?;
    let keys: std::collections::BTreeSet<&String> = live.keys().chain(again.keys()).collect();
    let differ = keys
        .into_iter()
        .filter(|k| live.get(*k).unwrap_or(&0) != again.get(*k).unwrap_or(&0))
        .count();
    Ok(Some(differ as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{value, Truth};

    fn truth(acked: &[u32], sent_only: &[u32]) -> Truth {
        let mut t = Truth::default();
        for j in acked {
            t.sending("k", *j);
            t.acknowledged("k", *j, &serde_json::Value::Null);
        }
        for j in sent_only {
            t.sending("k", *j);
        }
        t
    }

    fn stored(counts: &[(u32, i64)]) -> BTreeMap<String, i64> {
        let sum = counts.iter().map(|(j, n)| value(*j) * n).sum();
        BTreeMap::from([("k".to_owned(), sum)])
    }

    #[test]
    fn a_loss_and_a_double_on_one_key_are_both_seen() {
        // Request 0 lost, request 1 counted twice: with +1 values the sum would be right.
        let t = tally(&truth(&[0, 1], &[]), stored(&[(1, 2)]));
        assert_eq!((t.lost, t.doubled), (1, 1));
        let all: Vec<u32> = (0..39).collect();
        let counts: Vec<(u32, i64)> = all.iter().map(|j| (*j, 1)).collect();
        assert_eq!(tally(&truth(&all, &[]), stored(&counts)), Tally::default());
    }

    #[test]
    fn unknown_keys_and_unsent_requests_are_doubles() {
        let mut s = stored(&[(0, 1), (5, 1)]);
        s.insert("other".into(), 4); // 1 + 3: two counts on requests never sent
        let t = tally(&truth(&[0], &[]), s);
        assert_eq!((t.lost, t.doubled), (0, 3));
    }
}
