//! HTTP helpers for tests, and the ground truth: the per-key sum of every increment whose
//! request was answered 200.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Per-key sums of acknowledged increments, and the highest acknowledged offset per partition.
#[derive(Debug, Default, Clone)]
pub struct GroundTruth {
    pub sums: BTreeMap<String, i64>,
    pub max_offsets: BTreeMap<i32, i64>,
    pub acknowledged: u64,
}

impl GroundTruth {
    pub fn add(&mut self, key: &str, value: i64) {
        *self.sums.entry(key.to_owned()).or_insert(0) += value;
        self.acknowledged += 1;
    }

    pub fn landed(&mut self, partition: i32, offset: i64) {
        let m = self.max_offsets.entry(partition).or_insert(offset);
        *m = (*m).max(offset);
    }

    pub fn merge(&mut self, other: GroundTruth) {
        for (k, v) in other.sums {
            *self.sums.entry(k).or_insert(0) += v;
        }
        for (p, o) in other.max_offsets {
            self.landed(p, o);
        }
        self.acknowledged += other.acknowledged;
    }
}

/// `GET /offsets` as partition → next offset.
pub fn offsets(client: &reqwest::blocking::Client, base: &str) -> Option<BTreeMap<i32, i64>> {
    let v: Value = client
        .get(format!("{base}/offsets"))
        .send()
        .ok()?
        .json()
        .ok()?;
    let mut out = BTreeMap::new();
    for p in v["partitions"].as_array()? {
        out.insert(p["partition"].as_i64()? as i32, p["next_offset"].as_i64()?);
    }
    Some(out)
}

/// True when every acknowledged offset is below the partition's committed next offset.
pub fn caught_up(committed: &BTreeMap<i32, i64>, truth: &GroundTruth) -> bool {
    truth
        .max_offsets
        .iter()
        .all(|(p, o)| committed.get(p).is_some_and(|n| n > o))
}

/// `GET /sums/{key}`: `Some(sum)`, or `None` on 404.
pub fn sum(client: &reqwest::blocking::Client, base: &str, key: &str) -> Option<i64> {
    let enc: String = key
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = client
        .get(format!("{base}/sums/{enc}"))
        .send()
        .expect("GET /sums");
    match r.status().as_u16() {
        200 => Some(
            r.json::<Value>().expect("json")["sum"]
                .as_i64()
                .expect("sum"),
        ),
        404 => None,
        s => panic!("GET /sums/{key}: status {s}"),
    }
}
