//! What the suite reads from a running aggregator: committed offsets and how fast they move,
//! its peak memory while it folds, which partitions each member owns, and the stored sums
//! against the ground truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tally_pipeline::store::{OpenMode, Store};

use crate::loadgen::Truth;

pub(crate) fn offsets(c: &reqwest::blocking::Client, base: &str) -> BTreeMap<i32, i64> {
    tally_testkit::client::offsets(c, base).unwrap_or_default()
}

/// Waits until the aggregator's committed offsets reach `ends`; returns records/s from the
/// first committed progress to the end, counting only what was committed after that moment.
pub(crate) fn fold_rate(base: &str, ends: &BTreeMap<i32, i64>) -> anyhow::Result<f64> {
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let o = offsets(&c, base);
        let done: i64 = o.values().sum();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if ends.iter().all(|(p, e)| o.get(p).is_some_and(|n| n >= e)) {
            let Some((t0, d0)) = first else {
                return Ok(0.0);
            };
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            return Ok((done - d0).max(0) as f64 / secs);
        }
        if Instant::now() > deadline {
            bail!("aggregator did not catch up: {o:?} vs {ends:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the aggregator to fold up to `ends`, sampling its peak RSS at each quarter of the
/// log: `(records folded, VmHWM MB)`.
pub(crate) fn fold_sampling_rss(
    base: &str,
    pid: i32,
    ends: &BTreeMap<i32, i64>,
) -> anyhow::Result<Vec<(i64, f64)>> {
    let c = reqwest::blocking::Client::new();
    let total: i64 = ends.values().sum();
    let mut samples = Vec::new();
    let mut next_quarter = 1;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done: i64 = offsets(&c, base).values().sum();
        while next_quarter <= 4 && done * 4 >= total * next_quarter {
            samples.push((
                done,
                tally_testkit::process::memory_mb(pid, "VmHWM:").unwrap_or(0.0),
            ));
            next_quarter += 1;
        }
        if next_quarter > 4 {
            return Ok(samples);
        }
        if Instant::now() > deadline {
            bail!("aggregator did not fold the P6 log in time ({done} of {total})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 60 s) until every aggregator owns some partitions and together they own all
/// `partitions`, as each one's `/offsets` tells (a log end is given for owned partitions only).
pub(crate) fn split_ownership(aggs: &[&str], partitions: i32) -> bool {
    let c = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut all = std::collections::BTreeSet::new();
        let mut each = true;
        for a in aggs {
            let owned: Vec<i64> = c
                .get(format!("{a}/offsets"))
                .send()
                .and_then(|r| r.json::<serde_json::Value>())
                .ok()
                .and_then(|v| {
                    v["partitions"].as_array().map(|ps| {
                        ps.iter()
                            .filter(|p| !p["log_end"].is_null())
                            .filter_map(|p| p["partition"].as_i64())
                            .collect()
                    })
                })
                .unwrap_or_default();
            each &= !owned.is_empty();
            all.extend(owned);
        }
        if each && all.len() == partitions as usize {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

pub(crate) fn supports_min_offset(agg: &str) -> bool {
    let c = reqwest::blocking::Client::new();
    c.get(format!(
        "{agg}/sums/key-0?min_offset=0:999999999999&wait_ms=10"
    ))
    .send()
    .is_ok_and(|r| r.status() == 504)
}

/// Keys whose stored sum differs from the truth (and stored keys the truth lacks).
pub(crate) fn diff_store(db: &Path, topic: &str, truth: &Truth) -> anyhow::Result<Vec<String>> {
    let store = Store::open(db, topic, OpenMode::Existing).context("open bench database")?;
    let mut stored: BTreeMap<String, i64> = BTreeMap::new();
    for ((k, _), s) in store.all_sums()? {
        *stored.entry(k).or_insert(0) += s;
    }
    let mut diff = Vec::new();
    for (k, want) in &truth.sums {
        let got = stored.remove(k);
        if got != Some(*want) {
            diff.push(format!("{k}: want {want}, got {got:?}"));
        }
    }
    for (k, got) in stored {
        if got != 0 {
            diff.push(format!("{k}: not acknowledged, got {got}"));
        }
    }
    Ok(diff)
}
