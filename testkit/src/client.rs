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
    // A 503 with Retry-After (`owner_unknown`: the group is being read or rebalanced) is a
    // passing state the API documents; a client retries it, as this one does for up to a
    // minute. Any other status but 200 and 404 fails the caller.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("{base}/sums/{enc}"))
            .send()
            .expect("GET /sums");
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        match status {
            200 => {
                return Some(
                    r.json::<Value>().expect("json")["sum"]
                        .as_i64()
                        .expect("sum"),
                )
            }
            404 => return None,
            503 if retry_after && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            s => panic!(
                "GET /sums/{key}: status {s}: {}",
                r.text().unwrap_or_default()
            ),
        }
    }
}

/// Increments lost and increments counted twice, summed apart over keys. Within one key a loss
/// and a double of the same size cancel out; where the writer chooses the values,
/// [`crate::ledger`] tells them apart request by request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    pub lost: i64,
    pub doubled: i64,
}

impl Drift {
    /// One key: what `got` lacks of `want` is lost, what it has beyond it is doubled.
    pub fn add(&mut self, want: i64, got: i64) {
        self.lost += (want - got).max(0);
        self.doubled += (got - want).max(0);
    }

    /// Every key of `want` against `got` (a missing key counts as 0); a key only `got` has
    /// was never acknowledged, so all of it counts as doubled.
    pub fn between(want: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>) -> Drift {
        let mut d = Drift::default();
        for (k, w) in want {
            d.add(*w, got.get(k).copied().unwrap_or(0));
        }
        for (k, g) in got {
            if !want.contains_key(k) {
                d.doubled += g.abs();
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_doubles_are_counted_apart() {
        let want: BTreeMap<String, i64> =
            [("a".into(), 5), ("b".into(), 3), ("c".into(), 1)].into();
        let got: BTreeMap<String, i64> =
            [("a".into(), 7), ("b".into(), 1), ("x".into(), -4)].into();
        // a: 2 doubled; b: 2 lost; c: missing, 1 lost; x: never acknowledged, 4 doubled.
        assert_eq!(
            Drift::between(&want, &got),
            Drift {
                lost: 3,
                doubled: 6
            }
        );
    }
}
