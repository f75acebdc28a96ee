//! Clients with ground truth. Every logical increment is `+1` on a key and carries a unique
//! idempotency key; a client retries it (same key) until ingest answers 200, so each one is
//! acknowledged exactly once in the truth, whatever faults hit ingest or the broker. With
//! all values 1, a key's stored sum minus its acknowledged count is the number doubled
//! (positive) or lost (negative).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub counts: BTreeMap<String, i64>,
    pub max_offsets: BTreeMap<i32, i64>,
    pub acknowledged: u64,
    /// Answers that were not 200 (and were retried), by status or "connect".
    pub retries: BTreeMap<String, u64>,
}

impl Truth {
    pub fn merge(&mut self, o: Truth) {
        for (k, v) in o.counts {
            *self.counts.entry(k).or_insert(0) += v;
        }
        for (p, off) in o.max_offsets {
            let m = self.max_offsets.entry(p).or_insert(off);
            *m = (*m).max(off);
        }
        for (k, v) in o.retries {
            *self.retries.entry(k).or_insert(0) += v;
        }
        self.acknowledged += o.acknowledged;
    }
}

/// One client: sends until `stop`, then finishes the increment in hand (retrying until it is
/// acknowledged or `drain` runs out, which is reported as unfinished).
pub fn client(
    id: usize,
    base: String,
    keys: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    drain: Duration,
) -> (Truth, u64) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let mut truth = Truth::default();
    let mut unfinished = 0;
    let mut seq = 0u64;
    let mut stop_seen: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.gen_range(0..keys));
        let idem = format!("c{id}-{seq}");
        seq += 1;
        let mut backoff = Duration::from_millis(20);
        loop {
            if stop.load(Ordering::Relaxed)
                && stop_seen.get_or_insert_with(Instant::now).elapsed() > drain
            {
                unfinished += 1;
                break;
            }
            let r = http
                .post(format!("{base}/increments"))
                .header("idempotency-key", &idem)
                .json(&serde_json::json!({"key": key, "value": 1}))
                .send();
            match r {
                Ok(resp) if resp.status() == 200 => {
                    let v: Value = resp.json().unwrap_or(Value::Null);
                    *truth.counts.entry(key.clone()).or_insert(0) += 1;
                    truth.acknowledged += 1;
                    if let (Some(p), Some(o)) = (v["partition"].as_i64(), v["offset"].as_i64()) {
                        let m = truth.max_offsets.entry(p as i32).or_insert(o);
                        *m = (*m).max(o);
                    }
                    break;
                }
                Ok(resp) => {
                    *truth
                        .retries
                        .entry(resp.status().as_u16().to_string())
                        .or_insert(0) += 1;
                }
                Err(_) => *truth.retries.entry("connect".into()).or_insert(0) += 1,
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
    (truth, unfinished)
}
