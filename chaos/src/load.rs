//! Clients with ground truth. Each client owns its keys; on a key, request `j` sends the value
//! `3^j` ([`tally_testkit::ledger`]) and carries a unique idempotency key, and the client
//! retries it (same idempotency key) until ingest answers 200. The key's stored sum then says
//! how many times each request was counted, so losses and doubles are counted apart
//! ([`crate::check::tally`]). After 39 requests a key is retired and a fresh one takes its
//! place.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

pub use tally_testkit::ledger::{value, KeyLedger, PER_KEY};

#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub keys: BTreeMap<String, KeyLedger>,
    pub max_offsets: BTreeMap<i32, i64>,
    pub acknowledged: u64,
    /// Answers that were not 200 (and were retried), by status or "connect".
    pub retries: BTreeMap<String, u64>,
}

impl Truth {
    pub fn merge(&mut self, o: Truth) {
        for (k, l) in o.keys {
            let e = self.keys.entry(k).or_default();
            e.sent |= l.sent;
            e.acked |= l.acked;
        }
        for (p, off) in o.max_offsets {
            self.landed(p, off);
        }
        for (k, v) in o.retries {
            *self.retries.entry(k).or_insert(0) += v;
        }
        self.acknowledged += o.acknowledged;
    }

    fn landed(&mut self, p: i32, off: i64) {
        let m = self.max_offsets.entry(p).or_insert(off);
        *m = (*m).max(off);
    }

    /// Request `j` on `key` is about to be sent (once or more, with one idempotency key).
    pub fn sending(&mut self, key: &str, j: u32) {
        self.keys.entry(key.to_owned()).or_default().sending(j);
    }

    /// Request `j` on `key` got a 200 (`answer` is ingest's JSON: where it landed).
    pub fn acknowledged(&mut self, key: &str, j: u32, answer: &Value) {
        self.keys.entry(key.to_owned()).or_default().acknowledged(j);
        self.acknowledged += 1;
        if let (Some(p), Some(o)) = (answer["partition"].as_i64(), answer["offset"].as_i64()) {
            self.landed(p as i32, o);
        }
    }
}

/// How one client runs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub id: usize,
    /// Ingest, or the load balancer in front of it.
    pub base: String,
    /// Keys this client writes at a time.
    pub keys: usize,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    /// After `stop`, how long the increment in hand may still be retried.
    pub drain: Duration,
    /// Counts every acknowledgement as it happens (for progress checks during a fault).
    pub acks: Arc<AtomicU64>,
}

/// One client: sends until `stop`, then finishes the increment in hand (retrying until it is
/// acknowledged or `drain` runs out, which is reported as unfinished).
pub fn client(cfg: ClientConfig) -> (Truth, u64) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let id = cfg.id;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let mut truth = Truth::default();
    let mut unfinished = 0;
    let mut seq = 0u64;
    // Per slot: (generation, next request index).
    let mut slots = vec![(0u64, 0u32); cfg.keys.max(1)];
    let mut stop_seen: Option<Instant> = None;
    while !cfg.stop.load(Ordering::Relaxed) {
        let s = rng.gen_range(0..slots.len());
        if slots[s].1 == PER_KEY {
            slots[s] = (slots[s].0 + 1, 0);
        }
        let (gen, j) = slots[s];
        slots[s].1 += 1;
        let key = format!("c{id}-{s}-{gen}");
        let idem = format!("c{id}-{seq}");
        seq += 1;
        truth.sending(&key, j);
        let mut backoff = Duration::from_millis(20);
        loop {
            if cfg.stop.load(Ordering::Relaxed)
                && stop_seen.get_or_insert_with(Instant::now).elapsed() > cfg.drain
            {
                unfinished += 1;
                break;
            }
            let r = http
                .post(format!("{}/increments", cfg.base))
                .header("idempotency-key", &idem)
                .json(&serde_json::json!({"key": key, "value": value(j)}))
                .send();
            match r {
                Ok(resp) if resp.status() == 200 => {
                    let v: Value = resp.json().unwrap_or(Value::Null);
                    truth.acknowledged(&key, j, &v);
                    cfg.acks.fetch_add(1, Ordering::Relaxed);
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

/// One write of 1 on the fresh key `probe-{n}`, retried with one idempotency key until it is
/// acknowledged or `within` runs out; returns where it landed and is recorded in `truth`.
pub fn probe(
    base: &str,
    n: u64,
    truth: &mut Truth,
    within: Duration,
) -> anyhow::Result<(i32, i64)> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let key = format!("probe-{n}");
    let idem = format!("probe-{n}");
    truth.sending(&key, 0);
    let start = Instant::now();
    while start.elapsed() < within {
        let r = http
            .post(format!("{base}/increments"))
            .header("idempotency-key", &idem)
            .json(&serde_json::json!({"key": key, "value": value(0)}))
            .send();
        if let Ok(resp) = r {
            if resp.status() == 200 {
                let v: Value = resp.json()?;
                truth.acknowledged(&key, 0, &v);
                let p = v["partition"].as_i64().unwrap_or(-1) as i32;
                let o = v["offset"].as_i64().unwrap_or(-1);
                return Ok((p, o));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("probe {key} not acknowledged within {within:?}")
}
