//! Ingest in production conditions, on a real broker with an aggregator: idempotency keys
//! counted once, 503 with Retry-After while the broker is down and recovery without a restart,
//! every error answered with its JSON body, SIGTERM under load, and `/metrics` parsed by a
//! Prometheus text parser. Sums are always compared with the ground truth of what was
//! acknowledged.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_sums, send, Pipeline};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};
use tally_testkit::broker::Broker;
use tally_testkit::client::{http, GroundTruth};

/// Sends a request that must be acknowledged; records where it landed.
fn ok(req: RequestBuilder, truth: &mut GroundTruth) -> Value {
    let (s, _, body) = send(req);
    assert_eq!(s, 200, "{body}");
    land(&body, truth);
    body
}

fn land(body: &Value, truth: &mut GroundTruth) {
    if let Some(offsets) = body["offsets"].as_object() {
        for (p, o) in offsets {
            truth.landed(p.parse().unwrap(), o.as_i64().unwrap());
        }
    } else {
        truth.landed(
            body["partition"].as_i64().unwrap() as i32,
            body["offset"].as_i64().unwrap(),
        );
    }
}

fn assert_error(name: &str, (s, retry, body): (u16, Option<String>, Value), want: u16, code: &str) {
    assert_eq!(s, want, "{name}: {body}");
    assert_eq!(body["error"]["code"], code, "{name}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{name}: {body}"
    );
    if want == 429 || want == 503 {
        let secs: u64 = retry
            .unwrap_or_else(|| panic!("{name}: no Retry-After"))
            .parse()
            .unwrap();
        assert!(secs >= 1, "{name}: Retry-After {secs}");
    }
}

#[test]
fn idempotency_keys_count_a_request_once_and_metrics_parse() {
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let agg = p.aggregator(&[]);
    let c = http();
    let inc = format!("{}/increment", ingest.base);
    let incs = format!("{}/increments", ingest.base);
    let mut truth = GroundTruth::default();

    // A retry after the first attempt was acknowledged: three records in the log, one count.
    let mut offsets = Vec::new();
    for _ in 0..3 {
        let req = c
            .post(&inc)
            .header("idempotency-key", "req-a")
            .form(&[("key", "a"), ("value", "5")]);
        offsets.push(ok(req, &mut truth)["offset"].as_i64().unwrap());
    }
    offsets.dedup();
    assert_eq!(offsets.len(), 3, "each retry is its own record in the log");
    truth.add("a", 5);

    // Concurrent duplicates.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (c, incs) = (c.clone(), incs.clone());
            std::thread::spawn(move || {
                let mut t = GroundTruth::default();
                ok(
                    c.post(&incs)
                        .header("idempotency-key", "req-b")
                        .json(&json!({"key": "b", "value": 7})),
                    &mut t,
                );
                t
            })
        })
        .collect();
    for t in threads {
        truth.merge(t.join().unwrap());
    }
    truth.add("b", 7);

    // Different keys count separately; no key always counts.
    for ik in ["req-c1", "req-c2"] {
        let req = c
            .post(&inc)
            .header("idempotency-key", ik)
            .form(&[("key", "c"), ("value", "3")]);
        ok(req, &mut truth);
        truth.add("c", 3);
    }
    for _ in 0..2 {
        ok(
            c.post(&inc).form(&[("key", "d"), ("value", "1")]),
            &mut truth,
        );
        truth.add("d", 1);
    }

    // A batch sent twice (once as NDJSON, once as a JSON array): each record counted once.
    let items = [("x", 1), ("y", 2), ("x", 10)];
    let ndjson: String = items
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
        .collect();
    ok(
        c.post(&incs)
            .header("idempotency-key", "req-e")
            .header("content-type", "application/x-ndjson")
            .body(ndjson),
        &mut truth,
    );
    let array: Vec<Value> = items
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    ok(
        c.post(&incs)
            .header("idempotency-key", "req-e")
            .json(&array),
        &mut truth,
    );
    for (k, v) in items {
        truth.add(k, v);
    }

    assert_error(
        "idempotency key too long",
        send(
            c.post(&inc)
                .header("idempotency-key", "k".repeat(129))
                .form(&[("key", "z"), ("value", "1")]),
        ),
        400,
        "invalid_idempotency_key",
    );

    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
    assert_eq!(tally_testkit::client::sum(&c, &agg.base, "z"), None);

    // /metrics: Prometheus text that a parser reads, with the counts of what was sent.
    let text = c
        .get(format!("{}/metrics", ingest.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics parse");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<prometheus_parse::Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match value(name, labels) {
        Some(prometheus_parse::Value::Counter(v)) => v,
        other => panic!("{name} {labels:?}: {other:?}\n{text}"),
    };
    assert_eq!(
        counter(
            "tally_ingest_requests_total",
            &[("route", "/increment"), ("status", "200")]
        ),
        7.0
    );
    assert_eq!(
        counter(
            "tally_ingest_requests_total",
            &[("route", "/increment"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            "tally_ingest_requests_total",
            &[("route", "/increments"), ("status", "200")]
        ),
        10.0
    );
    assert_eq!(
        counter("tally_ingest_increments_accepted_total", &[]),
        (3 + 8 + 2 + 2 + 6) as f64
    );
    match value("tally_ingest_produce_seconds", &[("outcome", "ok")]) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let total = buckets.last().unwrap();
            assert!(total.less_than.is_infinite());
            assert_eq!(total.count, 17.0);
        }
        other => panic!("produce histogram: {other:?}\n{text}"),
    }
    assert!(matches!(
        value("tally_ingest_producer_queue_depth", &[]),
        Some(prometheus_parse::Value::Gauge(_))
    ));
}

#[test]
fn errors_answer_with_their_status_and_json_body() {
    let p = Pipeline::new(1);
    let ingest = p.ingest(&[
        "--auth-token",
        "s3cret",
        "--max-body-bytes",
        "4096",
        "--max-batch",
        "5",
        "--max-key-bytes",
        "64",
        "--max-in-flight",
        "1",
        "--body-read-timeout-ms",
        "5000",
        "--header-read-timeout-ms",
        "1000",
        "--max-header-bytes",
        "8192",
    ]);
    let c = http();
    let inc = format!("{}/increment", ingest.base);
    let incs = format!("{}/increments", ingest.base);
    let auth = |r: RequestBuilder| r.bearer_auth("s3cret");

    // Health, readiness and metrics stay open.
    for path in ["healthz", "readyz", "metrics"] {
        let s = c.get(format!("{}/{path}", ingest.base)).send().unwrap();
        assert_eq!(s.status(), 200, "{path}");
    }
    assert_error(
        "no token",
        send(c.post(&inc).form(&[("key", "k"), ("value", "1")])),
        401,
        "unauthorized",
    );
    assert_error(
        "wrong token",
        send(
            c.post(&inc)
                .bearer_auth("s3cres")
                .form(&[("key", "k"), ("value", "1")]),
        ),
        401,
        "unauthorized",
    );
    let (s, _, first) = send(auth(c.post(&inc)).form(&[("key", "k"), ("value", "1")]));
    assert_eq!(s, 200, "{first}");

    let json_body = |b: &str| {
        auth(c.post(&incs))
            .header("content-type", "application/json")
            .body(b.to_owned())
    };
    let ndjson = |b: &'static [u8]| {
        auth(c.post(&incs))
            .header("content-type", "application/x-ndjson")
            .body(b)
    };
    let form = |b: &'static [u8]| {
        auth(c.post(&inc))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b)
    };
    let cases: Vec<(&str, RequestBuilder, u16, &str)> = vec![
        ("malformed json", json_body("{\"key\":"), 400, "invalid_json"),
        ("float", json_body(r#"{"key":"k","value":1.5}"#), 400, "value_not_integer"),
        ("string value", json_body(r#"{"key":"k","value":"1"}"#), 400, "value_not_integer"),
        (
            "overflow",
            json_body(r#"{"key":"k","value":9223372036854775808}"#),
            400,
            "value_out_of_range",
        ),
        ("empty key", json_body(r#"{"key":"","value":1}"#), 400, "empty_key"),
        (
            "key over the configured limit",
            json_body(&format!(r#"{{"key":"{}","value":1}}"#, "k".repeat(65))),
            400,
            "key_too_long",
        ),
        ("form invalid utf-8", form(b"key=%FF&value=1"), 400, "invalid_utf8"),
        (
            "ndjson invalid utf-8",
            ndjson(b"{\"key\":\"\xff\",\"value\":1}\n"),
            400,
            "invalid_json",
        ),
        (
            "batch over the limit",
            ndjson(&b"{\"key\":\"k\",\"value\":1}\n{\"key\":\"k\",\"value\":1}\n{\"key\":\"k\",\"value\":1}\n{\"key\":\"k\",\"value\":1}\n{\"key\":\"k\",\"value\":1}\n{\"key\":\"k\",\"value\":1}\n"[..]),
            400,
            "batch_too_long",
        ),
        (
            "wrong content type",
            auth(c.post(&incs)).header("content-type", "text/plain").body("x"),
            415,
            "unsupported_media_type",
        ),
        (
            "body over the limit",
            auth(c.post(&incs))
                .header("content-type", "application/x-ndjson")
                .body("{\"key\":\"k\",\"value\":1}\n".repeat(300)),
            413,
            "body_too_large",
        ),
    ];
    for (name, req, status, code) in cases {
        assert_error(name, send(req), status, code);
    }

    // A head over --max-header-bytes is refused by the server (431, no JSON: before routing).
    let s = auth(c.post(&inc))
        .header("x-padding", "p".repeat(9000))
        .form(&[("key", "k"), ("value", "1")])
        .send()
        .map(|r| r.status().as_u16());
    assert!(matches!(s, Ok(431) | Err(_)), "{s:?}");

    // A slow client holds the only in-flight slot: the next request gets 503 at once; the slow
    // one gets 408 when its body does not arrive in time.
    let addr = ingest.base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /increments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    )
    .unwrap();
    // Wait until ingest counts the slow request in flight (its metrics stay open), not for a
    // guessed time: only then is the slot taken.
    tally_testkit::wait_for(
        "the slow request to hold the in-flight slot",
        Duration::from_secs(60),
        || {
            let m = c
                .get(format!("{}/metrics", ingest.base))
                .send()
                .ok()?
                .text()
                .ok()?;
            m.lines()
                .filter(|l| l.starts_with("tally_ingest_in_flight_requests"))
                .any(|l| l.rsplit(' ').next() == Some("1"))
                .then_some(())
        },
    );
    // A 503 (not a 200 after the slot frees) shows the request was refused without waiting.
    assert_error(
        "in-flight bound",
        send(json_body(r#"{"key":"k","value":1}"#)),
        503,
        "overloaded",
    );
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");

    // A client that never finishes its head is disconnected after the header read timeout.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(b"POST /incre").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    // Closed by ingest (end of stream), not given up by this side's read timeout.
    let closed = stalled.read_to_end(&mut buf);
    assert!(closed.is_ok(), "stalled connection not closed: {closed:?}");

    // Nothing bad was appended: the next good record directly follows the first.
    let (s, _, second) = send(json_body(r#"{"key":"k","value":1}"#));
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["offset"], first["offset"].as_i64().unwrap() + 1);

    // The per-client rate limit: 429 with Retry-After past the burst.
    let limited = p.ingest(&["--rate-limit-per-second", "1", "--rate-limit-burst", "2"]);
    let inc = format!("{}/increment", limited.base);
    // Invalid bodies (400 once admitted) keep the requests quick: the limit comes first.
    let statuses: Vec<_> = (0..3)
        .map(|_| send(c.post(&inc).form(&[("key", "r")])))
        .collect();
    assert_error(
        "within the burst",
        statuses[0].clone(),
        400,
        "missing_value",
    );
    assert_error(
        "within the burst",
        statuses[1].clone(),
        400,
        "missing_value",
    );
    assert_error("rate limit", statuses[2].clone(), 429, "rate_limited");
}

/// One client: sends increments with fresh idempotency keys until `stop`, retrying each on 503
/// with the same key until it is acknowledged. Returns what was acknowledged.
fn retrying_client(
    base: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    unavailable: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    max_wait: Duration,
) -> GroundTruth {
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = GroundTruth::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (
            format!("k{}", rng.gen_range(0..50)),
            rng.gen_range(-100..=100),
        );
        let ik = format!("client{seed}-{n}");
        n += 1;
        let first = Instant::now();
        loop {
            let started = Instant::now();
            let (s, retry, body) = send(
                client
                    .post(format!("{base}/increments"))
                    .header("idempotency-key", &ik)
                    .json(&json!({"key": key, "value": value})),
            );
            let took = started.elapsed();
            match s {
                200 => {
                    land(&body, &mut truth);
                    truth.add(&key, value);
                    acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                503 => {
                    assert!(took <= max_wait, "503 took {took:?}: {body}");
                    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                    assert!(
                        ["broker_timeout", "broker_unavailable", "overloaded"]
                            .contains(&code.as_str()),
                        "{body}"
                    );
                    assert_error("broker down", (s, retry, body), 503, &code);
                    unavailable.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        first.elapsed() < Duration::from_secs(120),
                        "no acknowledgement for {ik} in 120 s"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                _ => panic!("unexpected {s}: {body}"),
            }
        }
    }
    truth
}

#[test]
fn stopped_broker_gives_503_then_recovers_without_losing_or_doubling() {
    outage_then_recovery(|b| b.kill(), |b| b.restart(), Duration::from_secs(4));
}

/// A paused broker keeps its connections open; requests time out inside librdkafka (its
/// message timeout is the delivery timeout), the idempotent producer bumps its epoch, and
/// produces resume with it once the broker answers again. The pause outlasts the aggregator's
/// 6 s session timeout, so the group also has to form again.
#[test]
fn paused_broker_gives_503_then_recovers_without_losing_or_doubling() {
    outage_then_recovery(|b| b.pause(), |b| b.resume(), Duration::from_secs(5));
}

/// `tally_ingest_broker_reachable` as ingest's `/metrics` shows it now.
fn reachable(c: &Client, base: &str) -> Option<f64> {
    let text = c.get(format!("{base}/metrics")).send().ok()?.text().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("tally_ingest_broker_reachable "))?
        .trim()
        .parse()
        .ok()
}

/// Load from retrying clients (each request retried with its Idempotency-Key until 200); the
/// broker goes `down` for longer than the delivery timeout, then comes `up`. Every retry while
/// down must get 503 with Retry-After within the delivery timeout; `hold` is how long the outage
/// lasts after /readyz said not ready. Acknowledgements must resume without restarting ingest,
/// and the sums must equal what was acknowledged.
fn outage_then_recovery(
    down: impl FnOnce(&mut Broker),
    up: impl FnOnce(&mut Broker),
    hold: Duration,
) {
    let mut p = Pipeline::new(4);
    let delivery = Duration::from_millis(2000);
    let ingest = p.ingest(&["--delivery-timeout-ms", "2000"]);
    let agg = p.aggregator(&[]);
    let c = http();
    let ready = |c: &Client| {
        c.get(format!("{}/readyz", ingest.base))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(&c), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    // A 503 must come once the delivery timeout has run out, never hang until the client's own
    // timeout (30 s); the slack is for a busy machine.
    let max_wait = delivery + Duration::from_secs(10);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (base, stop, un, ack) = (
                ingest.base.clone(),
                stop.clone(),
                unavailable.clone(),
                acked.clone(),
            );
            std::thread::spawn(move || retrying_client(base, i, stop, un, ack, max_wait))
        })
        .collect();

    tally_testkit::wait_for("load to flow", Duration::from_secs(60), || {
        (acked.load(Ordering::Relaxed) > 0).then_some(())
    });
    down(&mut p.broker);
    tally_testkit::wait_for(
        "503 while the broker is down",
        Duration::from_secs(20),
        || (unavailable.load(Ordering::Relaxed) > 0).then_some(()),
    );
    tally_testkit::wait_for("/readyz to say not ready", Duration::from_secs(20), || {
        (ready(&c) == 503).then_some(())
    });
    // The alert "no broker reachable" (infra/prometheus) reads this gauge.
    tally_testkit::wait_for("/metrics to say no broker", Duration::from_secs(20), || {
        (reachable(&c, &ingest.base) == Some(0.0)).then_some(())
    });
    std::thread::sleep(hold);
    let acked_before = acked.load(Ordering::Relaxed);
    up(&mut p.broker);
    // Recovery without restarting ingest.
    tally_testkit::wait_for(
        "acknowledgements to resume",
        Duration::from_secs(90),
        || (acked.load(Ordering::Relaxed) > acked_before + 50).then_some(()),
    );
    tally_testkit::wait_for("/readyz to say ready", Duration::from_secs(30), || {
        (ready(&c) == 200).then_some(())
    });
    tally_testkit::wait_for("/metrics to say a broker", Duration::from_secs(30), || {
        (reachable(&c, &ingest.base) == Some(1.0)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut truth = GroundTruth::default();
    for t in clients {
        truth.merge(t.join().expect("client thread"));
    }
    assert!(unavailable.load(Ordering::Relaxed) > 0);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(180));
    assert_sums(&agg.base, &truth);
    let log = p.broker.log();
    assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
}

#[test]
fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_increment() {
    let p = Pipeline::new(4);
    let mut ingest = p.ingest(&[]);
    let agg = p.aggregator(&[]);
    let refused = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..6)
        .map(|i| {
            let (base, refused, acked) = (ingest.base.clone(), refused.clone(), acked.clone());
            std::thread::spawn(move || {
                let client = http();
                let mut rng = StdRng::seed_from_u64(100 + i);
                let mut truth = GroundTruth::default();
                loop {
                    let batch: Vec<(String, i64)> = (0..rng.gen_range(1..20))
                        .map(|_| {
                            (
                                format!("t{}", rng.gen_range(0..40)),
                                rng.gen_range(-50..=50),
                            )
                        })
                        .collect();
                    let body: Vec<Value> = batch
                        .iter()
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect();
                    match client.post(format!("{base}/increments")).json(&body).send() {
                        Ok(r) if r.status() == 200 => {
                            let body: Value = r.json().unwrap();
                            land(&body, &mut truth);
                            for (k, v) in &batch {
                                truth.add(k, *v);
                            }
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // Not acknowledged: must not be counted either (checked by the sums).
                        Ok(r) => panic!("unexpected {}: {:?}", r.status(), r.text()),
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return truth;
                        }
                    }
                }
            })
        })
        .collect();
    // Under load: enough requests acknowledged before the SIGTERM (waited for, not guessed).
    tally_testkit::wait_for(
        "200 acknowledged requests",
        Duration::from_secs(120),
        || (acked.load(Ordering::Relaxed) > 200).then_some(()),
    );
    let started = Instant::now();
    let status = ingest.proc.terminate(Duration::from_secs(30));
    assert!(status.success(), "ingest exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let mut truth = GroundTruth::default();
    for l in loaders {
        truth.merge(l.join().expect("loader"));
    }
    assert!(truth.acknowledged > 200, "{}", truth.acknowledged);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        6,
        "every loader saw ingest go away"
    );
    let log = ingest.proc.log_text();
    assert!(log.contains("ingest stopped"), "{log}");
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
}
