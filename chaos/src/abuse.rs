//! The HTTP abuse run: a seeded mix of valid and invalid requests against a real ingest (broker
//! and aggregator behind it), many threads at once. Invalid requests are well-formed HTTP with
//! bad bodies, headers, methods and paths, and malformed HTTP sent over raw TCP (garbage,
//! truncated bodies, huge heads, clients too slow for the read timeouts). Valid requests carry
//! an `Idempotency-Key` and are retried on 503 until acknowledged: they are the ground truth.
//!
//! It checks that ingest never answers a 5xx other than 503, never accepts an invalid request,
//! never exits, keeps its memory under a bound, and that the aggregator's sums equal the
//! ground truth of the valid requests exactly.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tally_testkit::broker::Broker;
use tally_testkit::process::{memory_mb, Proc};
use tally_testkit::{free_port, unique, wait_for};

use crate::check;

/// Largest body ingest accepts in this run (smaller than the default, so 413 is cheap).
const MAX_BODY: usize = 64 * 1024;
/// Read timeouts ingest gets in this run, so the slow clients are cut off quickly.
const READ_TIMEOUT_MS: u64 = 1000;

#[derive(Debug, Clone)]
pub struct AbuseConfig {
    pub seed: u64,
    pub requests: u64,
    pub concurrency: usize,
    pub keys: usize,
    /// Ingest's resident memory must stay at or below this, in MiB.
    pub max_rss_mb: u64,
    pub work_dir: PathBuf,
}

/// What was sent, what came back, and what was checked.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AbuseFigures {
    pub seed: u64,
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    /// Per kind of request: answers by status (`closed`: the connection closed without one).
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Answers 500-599 other than 503.
    pub server_errors: u64,
    /// 2xx answers to invalid requests.
    pub invalid_accepted: u64,
    /// Valid requests acknowledged (after retries) and the increments they carried.
    pub valid_acknowledged: u64,
    pub valid_increments: u64,
    /// Valid requests never acknowledged within their retries.
    pub valid_unfinished: u64,
    /// Keys whose stored sum differs from the ground truth, and the total absolute difference.
    pub keys_wrong: u64,
    pub sum_difference: i64,
    /// Ingest's resident memory: after the first 5% of requests, the highest seen, at the end.
    pub ingest_rss_mb: (f64, f64, f64),
    pub ingest_exited: bool,
}

impl AbuseFigures {
    pub fn passed(&self, max_rss_mb: u64) -> bool {
        self.server_errors == 0
            && self.invalid_accepted == 0
            && self.valid_unfinished == 0
            && self.keys_wrong == 0
            && self.sum_difference == 0
            && !self.ingest_exited
            && self.ingest_rss_mb.1 <= max_rss_mb as f64
    }
}

/// The request kinds, with their weights in the mix.
const KINDS: &[(&str, u32)] = &[
    ("valid_form", 10),
    ("valid_json", 10),
    ("valid_ndjson", 6),
    ("empty_key", 4),
    ("long_key", 4),
    ("bad_utf8", 4),
    ("value_overflow", 4),
    ("value_fraction", 4),
    ("value_string", 4),
    ("truncated_json", 6),
    ("random_body", 6),
    ("bad_ndjson_line", 6),
    ("wrong_content_type", 4),
    ("oversize_body", 2),
    ("wrong_method", 3),
    ("unknown_path", 3),
    ("bad_idempotency_key", 3),
    ("raw_garbage", 4),
    ("raw_truncated_body", 4),
    ("raw_huge_head", 2),
    ("raw_slow_head", 0),
    ("raw_slow_body", 0),
];

/// One request in every this many is a slow client (head or body), which costs its thread
/// a read timeout.
const SLOW_EVERY: u64 = 5000;

fn pick(rng: &mut StdRng, n: u64) -> &'static str {
    if n % SLOW_EVERY == SLOW_EVERY - 1 {
        return if rng.gen_bool(0.5) {
            "raw_slow_head"
        } else {
            "raw_slow_body"
        };
    }
    let total: u32 = KINDS.iter().map(|(_, w)| w).sum();
    let mut x = rng.gen_range(0..total);
    for (k, w) in KINDS {
        if x < *w {
            return k;
        }
        x -= w;
    }
    unreachable!()
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<String, BTreeMap<String, u64>>,
    server_errors: u64,
    invalid_accepted: u64,
    sums: BTreeMap<String, i64>,
    max_offsets: BTreeMap<i32, i64>,
    acknowledged: u64,
    increments: u64,
    unfinished: u64,
}

impl Tally {
    fn answer(&mut self, kind: &str, status: &str) {
        *self
            .answers
            .entry(kind.to_owned())
            .or_default()
            .entry(status.to_owned())
            .or_insert(0) += 1;
        if let Ok(s) = status.parse::<u16>() {
            if (500..600).contains(&s) && s != 503 {
                self.server_errors += 1;
            }
            if (200..300).contains(&s) && !kind.starts_with("valid") {
                self.invalid_accepted += 1;
            }
        }
    }

    fn landed(&mut self, body: &Value) {
        if let (Some(p), Some(o)) = (body["partition"].as_i64(), body["offset"].as_i64()) {
            self.offset(p as i32, o);
        }
        if let Some(m) = body["offsets"].as_object() {
            for (p, o) in m {
                if let (Ok(p), Some(o)) = (p.parse::<i32>(), o.as_i64()) {
                    self.offset(p, o);
                }
            }
        }
    }

    fn offset(&mut self, p: i32, o: i64) {
        let m = self.max_offsets.entry(p).or_insert(o);
        *m = (*m).max(o);
    }

    fn merge(&mut self, o: Tally) {
        for (k, m) in o.answers {
            let mine = self.answers.entry(k).or_default();
            for (s, n) in m {
                *mine.entry(s).or_insert(0) += n;
            }
        }
        for (k, v) in o.sums {
            *self.sums.entry(k).or_insert(0) += v;
        }
        for (p, off) in o.max_offsets {
            self.offset(p, off);
        }
        self.server_errors += o.server_errors;
        self.invalid_accepted += o.invalid_accepted;
        self.acknowledged += o.acknowledged;
        self.increments += o.increments;
        self.unfinished += o.unfinished;
    }
}

/// A well-formed HTTP request: method, path, content type, body.
struct Http {
    method: reqwest::Method,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    idempotency_key: Option<String>,
}

fn form(key: &str, value: &str) -> Vec<u8> {
    serde_urlencoded::to_string([("key", key), ("value", value)])
        .expect("form")
        .into_bytes()
}

/// Builds an invalid but well-formed request of `kind`, or None for raw and valid kinds.
fn invalid(kind: &str, key: &str, rng: &mut StdRng) -> Option<Http> {
    let post = |path, ct, body: Vec<u8>| Http {
        method: reqwest::Method::POST,
        path,
        content_type: ct,
        body,
        idempotency_key: None,
    };
    const FORM: &str = "application/x-www-form-urlencoded";
    const JSON: &str = "application/json";
    Some(match kind {
        "empty_key" => post("/increment", FORM, form("", "1")),
        "long_key" => post("/increment", FORM, form(&"k".repeat(300), "1")),
        "bad_utf8" => post("/increment", FORM, b"key=%FF%FE&value=1".to_vec()),
        "value_overflow" => post("/increment", FORM, form(key, "99999999999999999999")),
        "value_fraction" => post(
            "/increments",
            JSON,
            format!(r#"{{"key":"{key}","value":1.5}}"#).into_bytes(),
        ),
        "value_string" => post(
            "/increments",
            JSON,
            format!(r#"{{"key":"{key}","value":"1"}}"#).into_bytes(),
        ),
        "truncated_json" => {
            let full = format!(r#"{{"key":"{key}","value":1}}"#);
            let cut = rng.gen_range(0..full.len() - 1);
            post("/increments", JSON, full.as_bytes()[..cut].to_vec())
        }
        "random_body" => {
            let n = rng.gen_range(1..512);
            post("/increments", JSON, (0..n).map(|_| rng.gen()).collect())
        }
        "bad_ndjson_line" => {
            let lines = rng.gen_range(2..20);
            let bad = rng.gen_range(0..lines);
            let body: String = (0..lines)
                .map(|i| {
                    if i == bad {
                        format!("{{\"key\":\"{key}\",\"value\":x}}\n")
                    } else {
                        format!("{{\"key\":\"{key}\",\"value\":1}}\n")
                    }
                })
                .collect();
            post("/increments", "application/x-ndjson", body.into_bytes())
        }
        "wrong_content_type" => post(
            "/increments",
            "text/plain",
            format!(r#"{{"key":"{key}","value":1}}"#).into_bytes(),
        ),
        "oversize_body" => {
            let line = format!("{{\"key\":\"{key}\",\"value\":1}}\n");
            let body = line.repeat(MAX_BODY / line.len() + 2);
            post("/increments", "application/x-ndjson", body.into_bytes())
        }
        "wrong_method" => Http {
            method: reqwest::Method::PUT,
            ..post("/increment", FORM, form(key, "1"))
        },
        "unknown_path" => post("/increment/extra", FORM, form(key, "1")),
        "bad_idempotency_key" => Http {
            idempotency_key: Some("x".repeat(200)),
            ..post("/increment", FORM, form(key, "1"))
        },
        _ => return None,
    })
}

/// A valid request of `kind` and the increments it carries.
fn valid(kind: &str, keys: usize, rng: &mut StdRng, idem: String) -> (Http, Vec<(String, i64)>) {
    let inc = |rng: &mut StdRng| {
        (
            format!("a{}", rng.gen_range(0..keys)),
            rng.gen_range(-1000..=1000i64),
        )
    };
    let (path, content_type, incs, body) = match kind {
        "valid_form" => {
            let (k, v) = inc(rng);
            let body = form(&k, &v.to_string());
            (
                "/increment",
                "application/x-www-form-urlencoded",
                vec![(k, v)],
                body,
            )
        }
        "valid_json" => {
            let (k, v) = inc(rng);
            let body = serde_json::to_vec(&serde_json::json!({"key": k, "value": v})).unwrap();
            ("/increments", "application/json", vec![(k, v)], body)
        }
        _ => {
            let n = rng.gen_range(1..=20);
            let incs: Vec<_> = (0..n).map(|_| inc(rng)).collect();
            let body: String = incs
                .iter()
                .map(|(k, v)| format!("{}\n", serde_json::json!({"key": k, "value": v})))
                .collect();
            (
                "/increments",
                "application/x-ndjson",
                incs,
                body.into_bytes(),
            )
        }
    };
    (
        Http {
            method: reqwest::Method::POST,
            path,
            content_type,
            body,
            idempotency_key: Some(idem),
        },
        incs,
    )
}

fn send(http: &reqwest::blocking::Client, base: &str, r: &Http) -> (String, Option<Value>) {
    let mut req = http
        .request(r.method.clone(), format!("{base}{}", r.path))
        .header("content-type", r.content_type)
        .body(r.body.clone());
    if let Some(k) = &r.idempotency_key {
        req = req.header("idempotency-key", k);
    }
    match req.send() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = if status == 200 {
                resp.json().ok()
            } else {
                None
            };
            (status.to_string(), body)
        }
        Err(_) => ("closed".into(), None),
    }
}

/// Sends `bytes` on a new connection (then, for slow kinds, waits past the read timeout
/// between two halves) and returns the status line's code, or `closed`.
fn raw(addr: &str, kind: &str, rng: &mut StdRng) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return "connect_failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let slow = Duration::from_millis(READ_TIMEOUT_MS + 500);
    let wrote = match kind {
        "raw_garbage" => {
            let n = rng.gen_range(1..2048);
            let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            b.extend_from_slice(b"\r\n\r\n");
            s.write_all(&b)
        }
        "raw_truncated_body" => s
            .write_all(
                b"POST /increments HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                  content-length: 100\r\n\r\n{\"key\":\"a1\",",
            )
            .and_then(|_| s.shutdown(Shutdown::Write)),
        "raw_huge_head" => {
            let mut b = b"POST /increment HTTP/1.1\r\nhost: x\r\nx-filler: ".to_vec();
            b.extend(std::iter::repeat_n(b'a', 20 * 1024));
            b.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            s.write_all(&b)
        }
        "raw_slow_head" => s.write_all(b"POST /increment HTTP/1.1\r\nhost: x\r\n").map(|_| {
            std::thread::sleep(slow);
            let _ = s.write_all(b"content-length: 0\r\n\r\n");
        }),
        "raw_slow_body" => s
            .write_all(
                b"POST /increment HTTP/1.1\r\nhost: x\r\n\
                  content-type: application/x-www-form-urlencoded\r\ncontent-length: 20\r\n\r\nkey=a1",
            )
            .map(|_| {
                std::thread::sleep(slow);
                let _ = s.write_all(b"&value=1000000");
            }),
        _ => unreachable!("{kind} is not a raw kind"),
    };
    if wrote.is_err() {
        return "closed".into();
    }
    let mut head = [0u8; 12];
    match s.read(&mut head) {
        Ok(n) if n >= 12 && head.starts_with(b"HTTP/1.") => {
            String::from_utf8_lossy(&head[9..12]).into_owned()
        }
        _ => "closed".into(),
    }
}

/// One thread of the run: sends requests until `next` reaches `total`.
fn worker(
    id: usize,
    cfg: &AbuseConfig,
    base: &str,
    addr: &str,
    next: &AtomicU64,
    stop: &AtomicBool,
) -> Tally {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut t = Tally::default();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= cfg.requests || stop.load(Ordering::Relaxed) {
            return t;
        }
        let kind = pick(&mut rng, n);
        let key = format!("a{}", rng.gen_range(0..cfg.keys));
        if kind.starts_with("raw_") {
            let status = raw(addr, kind, &mut rng);
            t.answer(kind, &status);
        } else if let Some(req) = invalid(kind, &key, &mut rng) {
            let (status, _) = send(&http, base, &req);
            t.answer(kind, &status);
        } else {
            let (req, incs) = valid(kind, cfg.keys, &mut rng, format!("v{id}-{n}"));
            let mut backoff = Duration::from_millis(10);
            let mut tries = 0;
            loop {
                let (status, body) = send(&http, base, &req);
                t.answer(kind, &status);
                if status == "200" {
                    t.landed(&body.unwrap_or(Value::Null));
                    t.acknowledged += 1;
                    for (k, v) in &incs {
                        *t.sums.entry(k.clone()).or_insert(0) += v;
                        t.increments += 1;
                    }
                    break;
                }
                tries += 1;
                if !(status == "503" || status == "closed") || tries > 200 {
                    t.unfinished += 1;
                    break;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// The pipeline under abuse: a broker, ingest with small limits, one aggregator.
struct Target {
    // Fields drop in order: the processes before the broker.
    ingest: Proc,
    _aggregator: Proc,
    _broker: Broker,
    topic: String,
    db: PathBuf,
    /// Ingest's address, and its base URL.
    addr: String,
    base: String,
}

impl Target {
    fn start(cfg: &AbuseConfig) -> Target {
        let broker = Broker::start();
        let topic = unique("abuse");
        let common = |extra: &[String]| {
            let mut a = vec![
                "--brokers".into(),
                broker.addr(),
                "--topic".into(),
                topic.clone(),
                "--partitions".into(),
                "4".into(),
            ];
            a.extend_from_slice(extra);
            a
        };
        let addr = format!("127.0.0.1:{}", free_port());
        let ingest = Proc::start(
            "ingest",
            &common(&[
                "--listen".into(),
                addr.clone(),
                "--max-body-bytes".into(),
                MAX_BODY.to_string(),
                "--header-read-timeout-ms".into(),
                READ_TIMEOUT_MS.to_string(),
                "--body-read-timeout-ms".into(),
                READ_TIMEOUT_MS.to_string(),
            ]),
            &[("RUST_LOG", "warn".into())],
            &cfg.work_dir,
        );
        let db = cfg.work_dir.join(format!("{topic}.db"));
        let aggregator = Proc::start(
            "aggregator",
            &common(&[
                "--listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--group".into(),
                unique("abuse-group"),
                "--db".into(),
                db.display().to_string(),
                "--session-timeout-ms".into(),
                "6000".into(),
            ]),
            &[],
            &cfg.work_dir,
        );
        let base = format!("http://{addr}");
        let probe = reqwest::blocking::Client::new();
        wait_for("ingest to be ready", Duration::from_secs(90), || {
            probe
                .get(format!("{base}/readyz"))
                .send()
                .ok()
                .filter(|r| r.status() == 200)
        });
        Target {
            ingest,
            _aggregator: aggregator,
            _broker: broker,
            topic,
            db,
            addr,
            base,
        }
    }
}

/// Samples a process's resident memory every 100 ms: the first sample once `warm` requests
/// were sent, and the highest.
struct RssSampler {
    rss: Arc<Mutex<(Option<f64>, f64)>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: i32, next: Arc<AtomicU64>, warm: u64) -> RssSampler {
        let rss = Arc::new(Mutex::new((None::<f64>, 0.0f64)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, rss) = (stop.clone(), rss.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(mb) = memory_mb(pid, "VmRSS:") {
                        let mut r = rss.lock().expect("rss");
                        r.1 = r.1.max(mb);
                        if r.0.is_none() && next.load(Ordering::Relaxed) >= warm {
                            r.0 = Some(mb);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler { rss, stop, thread }
    }

    /// `(after warm-up, peak)` in MB.
    fn stop(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("rss sampler");
        let (warm, peak) = *self.rss.lock().expect("rss");
        (warm.unwrap_or(peak), peak)
    }
}

/// Sends the whole mix from `cfg.concurrency` threads; what they sent and got back.
fn send_mix(cfg: &AbuseConfig, t: &Target, next: &Arc<AtomicU64>) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|id| {
            let (cfg, base, addr) = (cfg.clone(), t.base.clone(), t.addr.clone());
            let (next, stop) = (next.clone(), stop.clone());
            std::thread::spawn(move || worker(id, &cfg, &base, &addr, &next, &stop))
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.join().expect("worker thread"));
    }
    tally
}

/// Keys whose stored sum differs from the valid increments acknowledged on them, and the
/// total absolute difference; stored keys never acknowledged count whole.
fn compare(db: &Path, topic: &str, tally: &Tally) -> anyhow::Result<(u64, i64)> {
    let mut stored = check::stored_sums(db, topic)?;
    let (mut keys_wrong, mut diff) = (0u64, 0i64);
    for (k, want) in &tally.sums {
        let got = stored.remove(k).unwrap_or(0);
        if got != *want {
            keys_wrong += 1;
            diff += (got - want).abs();
        }
    }
    for v in stored.values().filter(|v| **v != 0) {
        keys_wrong += 1;
        diff += v.abs();
    }
    Ok((keys_wrong, diff))
}

/// Runs the abuse mix against a fresh pipeline and returns its figures.
pub fn abuse(cfg: &AbuseConfig) -> anyhow::Result<AbuseFigures> {
    std::fs::create_dir_all(&cfg.work_dir)?;
    let mut target = Target::start(cfg);
    let next = Arc::new(AtomicU64::new(0));
    let pid = target.ingest.pid();
    let sampler = RssSampler::start(pid, next.clone(), cfg.requests / 20);
    let start = Instant::now();
    let tally = send_mix(cfg, &target, &next);
    let duration = start.elapsed().as_secs_f64();
    let at_end = memory_mb(pid, "VmRSS:").unwrap_or(0.0);
    let (warm, peak) = sampler.stop();
    let ingest_exited = !target.ingest.is_running();
    // Every valid acknowledged increment folded, then compared with the ground truth.
    check::wait_folded(&target.db, &target.topic, &tally.max_offsets, || Ok(()))?;
    let (keys_wrong, sum_difference) = compare(&target.db, &target.topic, &tally)?;
    Ok(AbuseFigures {
        seed: cfg.seed,
        requests: cfg.requests.min(next.load(Ordering::Relaxed)),
        duration_s: duration,
        requests_per_s: cfg.requests as f64 / duration,
        answers: tally.answers,
        server_errors: tally.server_errors,
        invalid_accepted: tally.invalid_accepted,
        valid_acknowledged: tally.acknowledged,
        valid_increments: tally.increments,
        valid_unfinished: tally.unfinished,
        keys_wrong,
        sum_difference,
        ingest_rss_mb: (warm, peak, at_end),
        ingest_exited,
    })
}
