//! Idempotent requests on Apache Kafka (issue 15): a batch whose first attempt landed in part,
//! retried through ingest, is counted once per record; an idempotency key reused for other
//! content is quarantined and listed, never dropped in silence; and a retry at the edge of the
//! window is decided alike by the live aggregator (across a restart), by a rebuild and by
//! verify, because the window is measured on the log's timestamps.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{assert_sums, now_ms, serial, Pipeline};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tally_pipeline::record::{encode_request, encode_value, request_fingerprint, REQUEST_HEADER};
use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::client::{http, GroundTruth};
use tally_testkit::process::Proc;
fn producer(p: &Pipeline) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Appends one increment to partition 0 as ingest would, with a request header when given and
/// the timestamp given (the log's clock), and returns its offset.
fn append(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: i64,
    request: Option<(&str, u32, &[u8; 16])>,
    timestamp: i64,
) -> i64 {
    let v = encode_value(value);
    let header = request.map(|(k, i, fp)| encode_request(k, i, fp));
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(0)
        .key(key)
        .payload(&v)
        .timestamp(timestamp);
    if let Some(h) = &header {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: REQUEST_HEADER,
            value: Some(h.as_slice()),
        }));
    }
    let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
    futures::executor::block_on(delivery)
        .unwrap()
        .map_err(|(e, _)| e)
        .unwrap()
        .offset
}
/// Keys whose served sum is below (lost) or above (doubled) the truth, counted apart.
fn losses_and_doubles(base: &str, truth: &GroundTruth) -> (i64, i64) {
    let c = http();
    let mut d = tally_testkit::client::Drift::default();
    for (k, want) in &truth.sums {
        d.add(*want, tally_testkit::client::sum(&c, base, k).unwrap_or(0));
    }
    (d.lost, d.doubled)
}

#[test]
fn a_partly_appended_batch_retried_is_counted_once_and_a_reused_key_is_quarantined() {
    let _serial = serial();
    let p = Pipeline::new(1);
    let agg = p.aggregator(&[]); // creates the topic
    let ingest = p.ingest(&[]);
    let c = http();
    let mut truth = GroundTruth::default();
    let items: Vec<(String, i64)> = (0..9).map(|i| (format!("b{i}"), 1 << i)).collect();
    let fp = request_fingerprint(items.iter().map(|(k, v)| (k.as_str(), *v)));

    // The first attempt of the batch: records 0, 1, 4 and 7 landed, then the client saw an
    // error (a 503 from a broker timeout, say) and did not learn which ones.
    let prod = producer(&p);
    for i in [0u32, 1, 4, 7] {
        let (k, v) = &items[i as usize];
        append(&prod, &p.topic, k, *v, Some(("batch-1", i, &fp)), now_ms());
    }
    // Its retries through ingest, the same body under the same key: acknowledged each time.
    let ndjson: String = items
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
        .collect();
    for _ in 0..2 {
        let r = c
            .post(format!("{}/increments", ingest.base))
            .header("idempotency-key", "batch-1")
            .header("content-type", "application/x-ndjson")
            .body(ndjson.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().unwrap();
        assert_eq!(body["accepted"], 9);
        truth.landed(0, body["offsets"]["0"].as_i64().unwrap());
    }
    for (k, v) in &items {
        truth.add(k, *v);
    }

    // The key used again for another counter: acknowledged by ingest (it keeps no state), then
    // quarantined by the aggregator, which tells it from a retry by the content's fingerprint.
    let r = c
        .post(format!("{}/increment", ingest.base))
        .header("idempotency-key", "batch-1")
        .form(&[("key", "reused"), ("value", "1000")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let reused_offset = r.json::<Value>().unwrap()["offset"].as_i64().unwrap();
    truth.landed(0, reused_offset);

    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_eq!(losses_and_doubles(&agg.base, &truth), (0, 0));
    assert_sums(&agg.base, &truth);
    assert_eq!(tally_testkit::client::sum(&c, &agg.base, "reused"), None);
    let rejected: Value = c
        .get(format!("{}/rejected", agg.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(rejected["count"], 1, "{rejected}");
    let row = &rejected["records"][0];
    assert_eq!(row["offset"].as_i64(), Some(reused_offset));
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .starts_with("idempotency_key_reused"),
        "{row}"
    );
    let key = base64::engine::general_purpose::STANDARD.encode("reused");
    assert_eq!(row["key_base64"].as_str(), Some(key.as_str()));
}

#[test]
fn a_retry_at_the_window_edge_is_decided_alike_live_in_a_rebuild_and_by_verify() {
    let _serial = serial();
    let p = Pipeline::new(1);
    let window = ["--idempotency-window-secs", "60"];
    let mut agg = p.aggregator(&window);
    let prod = producer(&p);
    let mut truth = GroundTruth::default();
    let fp = request_fingerprint([("edge", 1)]);
    let t = now_ms() - 10 * 60 * 1000;
    // Records of request A carry values 1, 2, 4, 8 (one fingerprint: to the fold they are one
    // request's record 0), so the sum of "edge" says exactly which of them were counted.
    let put = |key: &str, value: i64, ts: i64, counts: bool, truth: &mut GroundTruth| {
        let req = (key == "edge").then_some(("A", 0, &fp));
        let offset = append(&prod, &p.topic, key, value, req, ts);
        truth.landed(0, offset);
        if counts {
            truth.add(key, value);
        }
    };
    put("edge", 1, t, true, &mut truth);
    // The clock reaches the window's end: A, first seen at t, is still remembered.
    put("clock", 1, t + 60_000, true, &mut truth);
    put("edge", 2, t + 60_000, false, &mut truth);
    // One millisecond past the window's end.
    put("clock", 1, t + 60_001, true, &mut truth);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    // A restart at once, as systemd would: the clock comes back from the database. A retry
    // stamped behind it (another producer's clock) finds A forgotten, counts, and is
    // remembered anew as first seen at the stored clock (t + 60.001 s), not at its own stamp.
    agg.proc.kill();
    agg.restart();
    put("edge", 4, t + 30_000, true, &mut truth);
    // So at t + 95 s it is still remembered (a clock started afresh at the retry's stamp
    // would have forgotten it by then and counted this one).
    put("clock", 1, t + 95_000, true, &mut truth);
    put("edge", 8, t + 95_000, false, &mut truth);
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_eq!(truth.sums["edge"], 1 + 4);
    assert_eq!(losses_and_doubles(&agg.base, &truth), (0, 0));
    assert_sums(&agg.base, &truth);

    // A rebuild with the same window decides every record as the live aggregator did.
    let rebuilt = p.dir.path().join("rebuilt.db");
    let rebuilt_s = rebuilt.display().to_string();
    let out = p.replayer(&[
        "rebuild",
        "--db",
        &rebuilt_s,
        "--idempotency-window-secs",
        "60",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = Store::open(&rebuilt, &p.topic, OpenMode::Existing).unwrap();
    let live = Store::open(&p.db(), &p.topic, OpenMode::Existing).unwrap();
    assert_eq!(rebuilt.snapshot().unwrap(), live.snapshot().unwrap());
    assert_eq!(rebuilt.key_sum("edge").unwrap(), Some(1 + 4));
    // verify reads the window from the live database.
    let db = p.db().display().to_string();
    let out = p.replayer(&["verify", "--db", &db]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Another window is another fold: refused where the database fixes it...
    let out = p.replayer(&["verify", "--db", &db, "--idempotency-window-secs", "3600"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--idempotency-window-secs 60"), "{err}");
    // ...and in a new database it decides otherwise (within an hour every record of A is a
    // retry of the first).
    let other = p.dir.path().join("hour.db");
    let other_s = other.display().to_string();
    let out = p.replayer(&[
        "rebuild",
        "--db",
        &other_s,
        "--idempotency-window-secs",
        "3600",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = Store::open(&other, &p.topic, OpenMode::Existing).unwrap();
    assert_eq!(other.key_sum("edge").unwrap(), Some(1));

    // An aggregator started on the live database with another window refuses to fold.
    agg.proc.kill();
    let mut args = p.common();
    let port = tally_testkit::free_port().to_string();
    args.extend(
        [
            "--group",
            &p.group,
            "--db",
            &db,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--idempotency-window-secs",
            "30",
        ]
        .map(String::from),
    );
    let mut wrong = Proc::start("aggregator", &args, &[], p.dir.path());
    let status = wrong.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        wrong.log_text().contains("--idempotency-window-secs 60"),
        "{}",
        wrong.log_text()
    );
    assert_eq!(live.key_sum("edge").unwrap(), Some(1 + 4));
}
