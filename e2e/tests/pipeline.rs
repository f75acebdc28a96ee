//! The pipeline end to end on a real broker: exact sums under aggregator SIGKILLs, rebuild and
//! verify by the replayer, and bad input that appends nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_sums, send, Pipeline};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::client::{http, GroundTruth};

const KEYS: usize = 500;

fn key(i: usize) -> String {
    // Some keys need percent-encoding on the way in and out.
    if i.is_multiple_of(10) {
        format!("user/é {i}&x=y")
    } else {
        format!("key-{i}")
    }
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Form,
    Query,
    Json,
    JsonArray(usize),
    Ndjson(usize),
}

/// Sends at least `count` increments in `format`, and goes on until `done` is set; returns
/// what was acknowledged.
fn load(base: &str, format: Format, count: usize, seed: u64, done: &AtomicBool) -> GroundTruth {
    let client = http();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = GroundTruth::default();
    let mut sent = 0;
    while sent < count || !done.load(Ordering::Relaxed) {
        let batch = match format {
            Format::JsonArray(n) | Format::Ndjson(n) => n,
            _ => 1,
        };
        let incs: Vec<(String, i64)> = (0..batch)
            .map(|_| (key(rng.gen_range(0..KEYS)), rng.gen_range(-1000..=1000)))
            .collect();
        let req = match format {
            Format::Form => client
                .post(format!("{base}/increment"))
                .form(&[("key", incs[0].0.clone()), ("value", incs[0].1.to_string())]),
            Format::Query => client
                .post(format!("{base}/increment"))
                .query(&[("key", incs[0].0.clone()), ("value", incs[0].1.to_string())]),
            Format::Json => client
                .post(format!("{base}/increments"))
                .json(&json!({"key": incs[0].0, "value": incs[0].1})),
            Format::JsonArray(_) => client.post(format!("{base}/increments")).json(
                &incs
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect::<Vec<_>>(),
            ),
            Format::Ndjson(_) => client
                .post(format!("{base}/increments"))
                .header("content-type", "application/x-ndjson")
                .body(
                    incs.iter()
                        .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
                        .collect::<String>(),
                ),
        };
        let resp = req.send().expect("ingest answers");
        let status = resp.status();
        let body: Value = resp.json().expect("json body");
        assert_eq!(status, 200, "{format:?}: {body}");
        for (k, v) in &incs {
            truth.add(k, *v);
        }
        if batch == 1 && !matches!(format, Format::JsonArray(_) | Format::Ndjson(_)) {
            truth.landed(
                body["partition"].as_i64().unwrap() as i32,
                body["offset"].as_i64().unwrap(),
            );
        } else {
            assert_eq!(body["accepted"].as_u64(), Some(batch as u64));
            for (p, o) in body["offsets"].as_object().unwrap() {
                truth.landed(p.parse().unwrap(), o.as_i64().unwrap());
            }
        }
        sent += batch;
    }
    truth
}

#[test]
fn exact_sums_through_aggregator_kills_then_rebuild_and_verify() {
    let p = Pipeline::new(12);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&["--commit-interval-ms", "100"]);

    let plan = [
        (Format::Form, 1500),
        (Format::Form, 1500),
        (Format::Query, 1000),
        (Format::Json, 1000),
        (Format::Json, 1000),
        (Format::JsonArray(100), 7000),
        (Format::Ndjson(50), 7000),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = plan
        .iter()
        .enumerate()
        .map(|(i, &(format, count))| {
            let base = ingest.base.clone();
            let done = done.clone();
            std::thread::spawn(move || load(&base, format, count, 7 + i as u64, &done))
        })
        .collect();

    // Kill the aggregator with SIGKILL during the load and restart it at once, as systemd or
    // compose would, 4 times. Before each kill, wait until the running instance has committed
    // progress.
    let client = http();
    let committed = |base: &str| -> i64 {
        tally_testkit::client::offsets(&client, base)
            .map(|o| o.values().sum())
            .unwrap_or(0)
    };
    let mut kills = 0;
    while kills < 4 {
        let before = committed(&agg.base);
        tally_testkit::wait_for(
            "the restarted aggregator to commit progress",
            Duration::from_secs(120),
            || (committed(&agg.base) > before).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(1000));
        agg.proc.kill();
        agg.restart();
        kills += 1;
    }
    done.store(true, Ordering::Relaxed);
    let mut truth = GroundTruth::default();
    for l in loaders {
        truth.merge(l.join().expect("loader thread"));
    }
    assert!(truth.acknowledged >= 20_000, "sent {}", truth.acknowledged);
    assert!(kills >= 3);
    assert!(
        truth.sums.values().any(|v| *v < 0),
        "values are positive and negative"
    );

    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(300));
    assert_sums(&agg.base, &truth);

    // Rebuild into a fresh database: identical sums.
    let rebuilt = p.dir.path().join("rebuilt.db");
    let out = p.replayer(&["rebuild", "--db", rebuilt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = Store::open(&rebuilt, &p.topic, OpenMode::Existing).unwrap();
    let live = Store::open(&p.db(), &p.topic, OpenMode::Existing).unwrap();
    let rebuilt_sums = rebuilt.all_sums().unwrap();
    assert_eq!(rebuilt_sums, live.all_sums().unwrap());
    for (k, want) in &truth.sums {
        let got: i64 = rebuilt_sums
            .iter()
            .filter(|((key, _), _)| key == k)
            .map(|(_, s)| s)
            .sum();
        assert_eq!(got, *want, "rebuilt sum of {k}");
    }

    // Verify: clean while the aggregator still runs, then 1 after a sum is altered by hand.
    let out = p.replayer(&["verify", "--db", p.db().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify on the live db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    agg.proc.terminate(Duration::from_secs(30));
    let k = key(3);
    live.connection()
        .execute("UPDATE sums SET sum = sum + 1 WHERE key = ?1", [&k])
        .unwrap();
    let out = p.replayer(&["verify", "--db", p.db().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify after tampering: {stdout}"
    );
    assert!(
        stdout.contains(&k),
        "the report names the altered key: {stdout}"
    );
}

#[test]
fn bad_input_gets_a_json_error_and_appends_nothing() {
    let p = Pipeline::new(1);
    let ingest = p.ingest(&["--max-body-bytes", "4096"]);
    let c = http();
    let inc = format!("{}/increment", ingest.base);
    let incs = format!("{}/increments", ingest.base);

    let (s, _, first) = send(c.post(&inc).form(&[("key", "k"), ("value", "1")]));
    assert_eq!(s, 200, "{first}");
    let first_offset = first["offset"].as_i64().unwrap();

    let form = |body: &'static [u8]| {
        c.post(&inc)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let json_body = |body: &'static str| {
        c.post(&incs)
            .header("content-type", "application/json")
            .body(body)
    };
    let ndjson = |body: &'static [u8]| {
        c.post(&incs)
            .header("content-type", "application/x-ndjson")
            .body(body)
    };
    let long_key = format!(r#"{{"key":"{}","value":1}}"#, "k".repeat(257));
    let cases: Vec<(&str, reqwest::blocking::RequestBuilder, u16, &str)> = vec![
        (
            "malformed json",
            json_body("{\"key\":"),
            400,
            "invalid_json",
        ),
        (
            "float",
            json_body(r#"{"key":"k","value":1.5}"#),
            400,
            "value_not_integer",
        ),
        (
            "exponent",
            json_body(r#"{"key":"k","value":15e-1}"#),
            400,
            "value_not_integer",
        ),
        (
            "string value",
            json_body(r#"{"key":"k","value":"1"}"#),
            400,
            "value_not_integer",
        ),
        (
            "overflow",
            json_body(r#"{"key":"k","value":9223372036854775808}"#),
            400,
            "value_out_of_range",
        ),
        (
            "empty key",
            json_body(r#"{"key":"","value":1}"#),
            400,
            "empty_key",
        ),
        (
            "long key",
            c.post(&incs)
                .header("content-type", "application/json")
                .body(long_key),
            400,
            "key_too_long",
        ),
        (
            "form float",
            form(b"key=k&value=1.5"),
            400,
            "value_not_integer",
        ),
        (
            "form overflow",
            form(b"key=k&value=-9223372036854775809"),
            400,
            "value_out_of_range",
        ),
        (
            "form invalid utf-8",
            form(b"key=%FF%FE&value=1"),
            400,
            "invalid_utf8",
        ),
        ("form missing value", form(b"key=k"), 400, "missing_value"),
        (
            "ndjson invalid utf-8",
            ndjson(b"{\"key\":\"ok\",\"value\":1}\n{\"key\":\"\xff\",\"value\":1}\n"),
            400,
            "invalid_json",
        ),
        (
            "batch with one bad item",
            json_body(r#"[{"key":"a","value":1},{"key":"b","value":0.5}]"#),
            400,
            "value_not_integer",
        ),
        (
            "wrong content type",
            c.post(&incs)
                .header("content-type", "text/plain")
                .body("key=k&value=1"),
            415,
            "unsupported_media_type",
        ),
        (
            "form route with json",
            c.post(&inc)
                .header("content-type", "application/json")
                .body(r#"{"key":"k","value":1}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "body over the limit",
            c.post(&incs)
                .header("content-type", "application/x-ndjson")
                .body("{\"key\":\"k\",\"value\":1}\n".repeat(400)),
            413,
            "body_too_large",
        ),
    ];
    for (name, req, want_status, want_code) in cases {
        let (s, _, body) = send(req);
        assert_eq!(s, want_status, "{name}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
    }

    // Nothing was appended: the next good record directly follows the first.
    let (s, _, second) = send(c.post(&incs).json(&json!({"key": "k", "value": 1})));
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["offset"].as_i64().unwrap(), first_offset + 1);
}
