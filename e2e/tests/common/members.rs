//! Load with ground truth, and reads of every key through one member of a group whose members
//! keep a database each: what `scale_out.rs` (members on loopback) and `hosts.rs` (members as
//! hosts in network namespaces) both check. Request `j` on a key sends `3^j`
//! ([`tally_testkit::ledger`]), so a read tells, request by request, which were lost and
//! which counted twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_testkit::client::{http, Drift, GroundTruth};

use super::Service;
use tally_testkit::ledger::{self, Counted, KeyLedger, PER_KEY};

/// How long one increment may go unacknowledged before the load gives up: a broker killed and
/// restarted at once took 46 s to start on a busy 2-core machine (JVM start, then TLS and SASL
/// logins and the idempotent producer's new id), so a minute was too tight.
const ACK_DEADLINE: Duration = Duration::from_secs(180);

/// Keys each client writes at a time; a key is retired after [`PER_KEY`] requests.
const SLOTS: u64 = 20;

/// What the load learned: sums of acknowledged increments, which requests were acknowledged
/// on each key, where each key lives, and the highest acknowledged offset of each key (its
/// read-your-writes token).
#[derive(Default, Clone)]
pub struct Acked {
    pub truth: GroundTruth,
    pub ledgers: BTreeMap<String, KeyLedger>,
    pub partition_of: BTreeMap<String, i32>,
    pub last_offset: BTreeMap<String, i64>,
}

impl Acked {
    /// What `got`, read for `key`, lost and doubled: request by request where the load wrote
    /// the key, else by how far it is from `want`, the acknowledged sum.
    pub fn drift(&self, key: &str, want: i64, got: i64) -> (i64, i64) {
        match self.ledgers.get(key) {
            Some(l) => {
                let mut c = Counted::default();
                c.count(*l, got);
                (c.lost as i64, c.doubled as i64)
            }
            None => {
                let mut d = Drift::default();
                d.add(want, got);
                (d.lost, d.doubled)
            }
        }
    }

    /// [`Acked::drift`] over every acknowledged key against `got` (a missing key holds 0); a
    /// key only `got` has was never acknowledged, so all of it counts as doubled.
    pub fn drift_of(&self, got: &BTreeMap<String, i64>) -> (i64, i64) {
        let (mut lost, mut doubled) = (0, 0);
        for (key, want) in &self.truth.sums {
            let (l, d) = self.drift(key, *want, got.get(key).copied().unwrap_or(0));
            lost += l;
            doubled += d;
        }
        for (key, g) in got {
            if !self.truth.sums.contains_key(key) {
                doubled += g.abs();
            }
        }
        (lost, doubled)
    }
}

/// A client that POSTs increments (one record each, with an idempotency key) retried until
/// acknowledged, until `stop`.
fn load(ingest: &str, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>, client: String) {
    let c = http();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (slot, j, generation) = (
            n % SLOTS,
            (n / SLOTS % u64::from(PER_KEY)) as u32,
            n / (SLOTS * u64::from(PER_KEY)),
        );
        let key = format!("{client}-{slot}-{generation}");
        let idem = format!("{client}-{n}");
        let value = ledger::value(j);
        // Marked sent before it is: a read may see it folded before it is acknowledged.
        acked
            .lock()
            .unwrap()
            .ledgers
            .entry(key.clone())
            .or_default()
            .sending(j);
        let deadline = Instant::now() + ACK_DEADLINE;
        let answer: Value = loop {
            let r = c
                .post(format!("{ingest}/increment"))
                .header("idempotency-key", &idem)
                .form(&[("key", key.as_str()), ("value", &value.to_string())])
                .send();
            match r {
                Ok(r) if r.status() == 200 => break r.json().unwrap(),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                other => panic!("increment not acknowledged within {ACK_DEADLINE:?}: {other:?}"),
            }
        };
        let (p, o) = (
            answer["partition"].as_i64().unwrap() as i32,
            answer["offset"].as_i64().unwrap(),
        );
        let mut a = acked.lock().unwrap();
        a.truth.add(&key, value);
        a.truth.landed(p, o);
        a.ledgers.entry(key.clone()).or_default().acknowledged(j);
        let last = a.last_offset.entry(key.clone()).or_insert(o);
        *last = (*last).max(o);
        a.partition_of.insert(key, p);
        n += 1;
    }
}

/// Clients writing until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acked: Arc<Mutex<Acked>>,
    /// Acknowledged increments when this load started.
    at_start: u64,
}

/// Three clients; `phase` keeps their keys and idempotency keys apart from other phases' (an
/// idempotency key used again for the same content would rightly count as a retry).
pub fn start_load(ingest: &str, acked: &Arc<Mutex<Acked>>, phase: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..3)
        .map(|i| {
            let (ingest, acked, stop) = (ingest.to_owned(), acked.clone(), stop.clone());
            let client = format!("{phase}-{}", "c".repeat(i + 1));
            std::thread::spawn(move || load(&ingest, acked, stop, client))
        })
        .collect();
    let at_start = acked.lock().unwrap().truth.acknowledged;
    Load {
        stop,
        threads,
        acked: acked.clone(),
        at_start,
    }
}

impl Load {
    /// Waits (at most 120 s) until this load has had `n` increments acknowledged: a phase
    /// of load is a number of acknowledgements, not a guessed time.
    pub fn wait_acknowledged(&self, n: u64) {
        tally_testkit::wait_for(
            &format!("{n} increments acknowledged"),
            Duration::from_secs(120),
            || {
                let now = self.acked.lock().unwrap().truth.acknowledged;
                (now >= self.at_start + n).then_some(())
            },
        );
    }

    /// Stops the clients and waits for their last requests.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// What reading every key through one member showed.
pub struct Reads {
    /// Acknowledged requests the answers do not count (request by request where the load
    /// wrote the key, else the shortfall of its sum).
    pub lost: i64,
    /// Counts beyond one of a request, likewise.
    pub doubled: i64,
    /// Answers that `tally-served-by` says another member gave.
    pub forwarded: usize,
    /// Key → the URL that served it.
    pub served_by: BTreeMap<String, String>,
}

/// Reads every key through the member at `base` with the token of the key's last acknowledged
/// write (`min_offset=P:O`), retrying while the group is rebalancing or the owner cannot be
/// reached (503) or is still catching up (504). A key the member does not know (404) counts
/// as all its increments lost.
pub fn check(base: &str, acked: &Acked) -> Reads {
    let c = http();
    let mut reads = Reads {
        lost: 0,
        doubled: 0,
        forwarded: 0,
        served_by: BTreeMap::new(),
    };
    for (key, want) in &acked.truth.sums {
        let token = format!("{}:{}", acked.partition_of[key], acked.last_offset[key]);
        let deadline = Instant::now() + Duration::from_secs(90);
        let (got, served_by) = loop {
            let r = c
                .get(format!("{base}/sums/{key}"))
                .query(&[("min_offset", token.as_str()), ("wait_ms", "5000")])
                .send()
                .unwrap_or_else(|e| panic!("{base}: GET {key}: {e}"));
            let status = r.status().as_u16();
            let served_by = r
                .headers()
                .get("tally-served-by")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().unwrap();
            match status {
                200 => break (body["sum"].as_i64().unwrap(), served_by),
                404 => break (0, served_by),
                503 | 504 if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                _ => panic!("{base}: GET {key}: {status} {body}"),
            }
        };
        let (lost, doubled) = acked.drift(key, *want, got);
        reads.lost += lost;
        reads.doubled += doubled;
        if let Some(s) = served_by {
            if s != base {
                reads.forwarded += 1;
            }
            reads.served_by.insert(key.clone(), s);
        }
    }
    reads
}

/// Waits (at most 120 s) until the members at `bases` share all `partitions` between them,
/// each owning some: the group has settled, so reading every key through any one of them
/// forwards some reads.
pub fn wait_split(bases: &[&str], partitions: i32) {
    tally_testkit::wait_for(
        &format!("{bases:?} to share the {partitions} partitions"),
        Duration::from_secs(120),
        || {
            let owned: Vec<Vec<i32>> = bases.iter().map(|b| super::owned_partitions(b)).collect();
            let all: std::collections::BTreeSet<i32> = owned.iter().flatten().copied().collect();
            (owned.iter().all(|o| !o.is_empty()) && all.len() == partitions as usize).then_some(())
        },
    );
}

/// Lists every key through `member` in pages of 7 (so pages merge several owners' rows),
/// retrying a page while the group rebalances (503); returns (lost, doubled) against the
/// ground truth ([`Acked::drift_of`]).
pub fn check_listing(member: &Service, acked: &Acked) -> (i64, i64) {
    let c = http();
    let mut listed: BTreeMap<String, i64> = BTreeMap::new();
    let mut after: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut q = vec![("limit", "7".to_owned())];
        q.extend(after.clone().map(|a| ("after", a)));
        let r = c
            .get(format!("{}/sums", member.base))
            .query(&q)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        match status {
            200 => {}
            503 if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            _ => panic!("{}: GET /sums: {status} {body}", member.base),
        }
        for e in body["sums"].as_array().unwrap() {
            let key = e["key"].as_str().unwrap().to_owned();
            assert!(
                listed
                    .insert(key.clone(), e["sum"].as_i64().unwrap())
                    .is_none(),
                "{key} listed twice"
            );
        }
        match body["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    acked.drift_of(&listed)
}

/// Every key read one by one, and the whole listing, through `member` equal the ground truth.
pub fn assert_exact_through(member: &Service, acked: &Acked) {
    let Reads { lost, doubled, .. } = check(&member.base, acked);
    assert_eq!(
        (lost, doubled),
        (0, 0),
        "lost/doubled through {}",
        member.base
    );
    let (lost, doubled) = check_listing(member, acked);
    assert_eq!((lost, doubled), (0, 0), "listing through {}", member.base);
    let mut want: Vec<(&String, &i64)> = acked.truth.sums.iter().collect();
    want.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let want: Vec<(String, i64)> = want
        .into_iter()
        .take(5)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let top: Value = tally_testkit::wait_for("/top", Duration::from_secs(30), || {
        let r = http()
            .get(format!("{}/top?limit=5", member.base))
            .send()
            .ok()?;
        (r.status() == 200).then(|| r.json().ok()).flatten()
    });
    let got: Vec<(String, i64)> = top["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_owned(),
                k["sum"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "/top through {}", member.base);
}
