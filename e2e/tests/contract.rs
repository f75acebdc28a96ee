//! The published HTTP contract checked from outside: Schemathesis (a property-based API fuzzer,
//! pinned in scripts/test.sh) drives ingest and then the aggregator of a pipeline on Kafka
//! from the documents they serve at `/openapi.json`, with every check it has: no 5xx (a 503
//! is documented and allowed), every status, content type, header and body as documented,
//! undocumented methods answered 405 with `Allow`, writes refused without the bearer token.
//!
//! Afterwards the sums must equal what ingest acknowledged. Schemathesis records every
//! request and answer (its HAR report); the test reads the acknowledged writes from it and
//! the topic from the broker, and checks (1) the log holds exactly the acknowledged
//! increments, record for record (nothing acknowledged lost, nothing unacknowledged written);
//! (2) the aggregator serves, for every key, the sum a fold of those increments in log order
//! gives under the documented rules (a request key reused for other content is quarantined,
//! a retry of the same content counts once, an overflowing sum quarantines the record), lost
//! and doubled counted apart; (3) it lists as many quarantined records as that fold made.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Pipeline;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, TopicPartitionList};
use serde_json::Value;
use tally_pipeline::partition::partition_for;
use tally_pipeline::record::{decode_request, decode_value, REQUEST_HEADER};
use tally_testkit::client::{http, Drift};
use tally_testkit::wait_for;

/// The version scripts/test.sh installs; another one is refused, so a run is reproducible.
const SCHEMATHESIS: &str = "4.32.5";
const TOKEN: &str = "contract-token";
const PARTITIONS: i32 = 4;

/// One increment as the log holds it: partition, counter key, delta, and the request key and
/// index when the request carried an `Idempotency-Key`.
type Item = (i32, String, i64, Option<(String, u32)>);

fn schemathesis_version() -> String {
    let out = Command::new("st")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
            "schemathesis (the `st` command) is not installed ({e}): scripts/test.sh installs it \
             with `python3 -m pip install schemathesis=={SCHEMATHESIS}`"
        )
        });
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Schemathesis' settings beyond the command line: of the 5xx statuses, only the documented
/// ones are not server errors: 503 (back-pressure, broker or owner unavailable, not ready,
/// each with its code) and the aggregator's 504 `offset_not_reached` (a read-your-writes wait
/// that ended before the write was folded).
/// Ingest's token is given as the document's `bearer` scheme, so that Schemathesis also
/// checks that a write without it, or with another one, is refused.
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[auth.openapi.bearer]
bearer = "contract-token"
"#;

/// Runs Schemathesis against the document `base` serves; its HAR report goes to `har`.
fn fuzz(name: &str, base: &str, dir: &Path, extra: &[&str]) -> (bool, String, Duration) {
    let har = dir.join(format!("{name}.har"));
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let started = Instant::now();
    let mut cmd = Command::new("st");
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", "all"])
        .args(["--max-examples", "25"])
        .args(["--workers", "1"])
        .args(["--seed", "28"])
        // Generation slowed by a busy machine is not a contract failure.
        .args(["--suppress-health-check", "too_slow"])
        .args(["--request-timeout", "90"])
        .args(["--wait-for-schema", "30"])
        .args(["--report", "har", "--report-preserve-bytes"])
        .arg("--report-har-path")
        .arg(&har)
        .args(["--output-sanitize", "false"])
        .args(extra)
        .current_dir(dir);
    let out = cmd.output().expect("cannot run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join(format!("{name}.schemathesis.txt")), &text).unwrap();
    (out.status.success(), text, started.elapsed())
}

/// What the HAR report shows ingest acknowledged (200), and how many writes got a 503 (may
/// or may not be appended) and any other answer.
struct Acknowledged {
    items: Vec<Item>,
    requests: u64,
    unavailable: u64,
    refused: u64,
    statuses: BTreeMap<u16, u64>,
}

fn acknowledged(har: &Path) -> Acknowledged {
    let v: Value = serde_json::from_slice(&std::fs::read(har).expect("no HAR report")).unwrap();
    let mut ack = Acknowledged {
        items: Vec::new(),
        requests: 0,
        unavailable: 0,
        refused: 0,
        statuses: BTreeMap::new(),
    };
    for e in v["log"]["entries"].as_array().expect("HAR entries") {
        let req = &e["request"];
        let status = e["response"]["status"].as_u64().unwrap_or(0) as u16;
        *ack.statuses.entry(status).or_default() += 1;
        let url = req["url"].as_str().unwrap();
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, q),
            None => (url, ""),
        };
        let write = req["method"] == "POST"
            && (path.ends_with("/increment") || path.ends_with("/increments"));
        if !write {
            continue;
        }
        match status {
            200 => ack.requests += 1,
            503 => {
                ack.unavailable += 1;
                continue;
            }
            _ => {
                ack.refused += 1;
                continue;
            }
        }
        let header = |name: &str| {
            req["headers"].as_array().unwrap().iter().find_map(|h| {
                h["name"]
                    .as_str()
                    .filter(|n| n.eq_ignore_ascii_case(name))
                    .and_then(|_| h["value"].as_str().map(str::to_owned))
            })
        };
        let body = req["postData"]["text"]
            .as_str()
            .map(|t| base64::engine::general_purpose::STANDARD.decode(t).unwrap())
            .unwrap_or_default();
        let ct = header("content-type").unwrap_or_default();
        let incs = if path.ends_with("/increment") {
            vec![ingest::parse::parse_form(&[query.as_bytes(), &body]).expect("acknowledged form")]
        } else if ct.starts_with("application/x-ndjson") {
            ingest::parse::parse_ndjson(&body, usize::MAX).expect("acknowledged ndjson")
        } else {
            match ingest::parse::parse_json(&body, usize::MAX).expect("acknowledged json") {
                ingest::parse::JsonBody::One(i) => vec![i],
                ingest::parse::JsonBody::Many(v) => v,
            }
        };
        let answer: Value = serde_json::from_str(
            e["response"]["content"]["text"]
                .as_str()
                .map_or("null".into(), |t| {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(t).unwrap())
                        .unwrap()
                })
                .as_str(),
        )
        .unwrap_or(Value::Null);
        let idem = header("idempotency-key");
        for (i, inc) in incs.iter().enumerate() {
            let p = partition_for(inc.key.as_bytes(), PARTITIONS);
            if let Some(landed) = answer["partition"].as_i64() {
                assert_eq!(landed as i32, p, "ingest's answer names another partition");
            }
            ack.items.push((
                p,
                inc.key.clone(),
                inc.value,
                idem.clone().map(|k| (k, i as u32)),
            ));
        }
    }
    ack
}

/// A record of the log, with its offset and its request's fingerprint.
struct Logged {
    item: Item,
    offset: i64,
    fingerprint: Option<[u8; 16]>,
}

/// Every record of the topic, per partition in offset order.
fn read_log(p: &Pipeline) -> BTreeMap<i32, Vec<Logged>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .set("group.id", tally_testkit::unique("contract-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    let mut out = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for part in 0..PARTITIONS {
        let (_, high) = c.fetch_watermarks(&p.topic, part, t).unwrap();
        ends.insert(part, high);
        tpl.add_partition_offset(&p.topic, part, rdkafka::Offset::Beginning)
            .unwrap();
        out.insert(part, Vec::new());
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = |out: &BTreeMap<i32, Vec<Logged>>| {
        ends.iter().all(|(part, end)| {
            *end == 0
                || out[part]
                    .last()
                    .is_some_and(|l: &Logged| l.offset + 1 >= *end)
        })
    };
    while !done(&out) {
        assert!(Instant::now() < deadline, "the topic was not read in time");
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_owned();
        let delta = decode_value(m.payload()).unwrap().delta;
        let request = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == REQUEST_HEADER)
                .and_then(|h| h.value)
                .map(|v| decode_request(v).unwrap())
        });
        out.get_mut(&m.partition()).unwrap().push(Logged {
            item: (
                m.partition(),
                key,
                delta,
                request.as_ref().map(|r| (r.key.clone(), r.index)),
            ),
            offset: m.offset(),
            fingerprint: request.as_ref().map(|r| r.fingerprint),
        });
    }
    out
}

/// The documented fold: per partition in log order, a request key met again with other
/// content is quarantined, a request index met again counts nothing, an overflowing sum
/// quarantines the record. Returns the sums (keys with an applied record) and the count of
/// quarantined records.
fn fold(log: &BTreeMap<i32, Vec<Logged>>) -> (BTreeMap<String, i64>, u64) {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    let mut quarantined = 0;
    for (part, records) in log {
        let mut requests: HashMap<String, ([u8; 16], BTreeSet<u32>)> = HashMap::new();
        for r in records {
            let (_, key, delta, request) = &r.item;
            if let (Some((rk, index)), Some(fp)) = (request, r.fingerprint) {
                let state = requests
                    .entry(rk.clone())
                    .or_insert_with(|| (fp, BTreeSet::new()));
                if state.0 != fp {
                    quarantined += 1;
                    continue;
                }
                if !state.1.insert(*index) {
                    continue;
                }
            }
            let current = sums.get(key).copied().unwrap_or(0);
            match current.checked_add(*delta) {
                Some(s) => {
                    sums.insert(key.clone(), s);
                }
                None => quarantined += 1,
            }
            let _ = part;
        }
    }
    (sums, quarantined)
}

/// Every key's sum the aggregator lists, page by page.
fn served_sums(base: &str) -> BTreeMap<String, i64> {
    let client = http();
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = client
            .get(format!("{base}/sums"))
            .query(&[("limit", "1000")]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let v: Value = req.send().unwrap().json().unwrap();
        for e in v["sums"].as_array().unwrap() {
            out.insert(
                e["key"].as_str().unwrap().to_owned(),
                e["sum"].as_i64().unwrap(),
            );
        }
        match v["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => return out,
        }
    }
}

#[test]
fn schemathesis_finds_no_contract_violation_and_the_sums_equal_what_ingest_acknowledged() {
    let version = schemathesis_version();
    assert!(
        version.contains(SCHEMATHESIS),
        "schemathesis {SCHEMATHESIS} is expected (scripts/test.sh pins it), found: {version}"
    );
    let p = Pipeline::new(PARTITIONS);
    let ingest = p.ingest(&["--auth-token", TOKEN, "--delivery-timeout-ms", "60000"]);
    let agg = p.aggregator(&["--max-wait-ms", "200"]);
    let dir = p.dir.path();
    let (ingest_ok, ingest_out, ingest_took) = fuzz("ingest", &ingest.base, dir, &[]);
    let ack = acknowledged(&dir.join("ingest.har"));
    let (agg_ok, agg_out, agg_took) = fuzz("aggregator", &agg.base, dir, &[]);
    let agg_statuses = {
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join("aggregator.har")).unwrap()).unwrap();
        let mut s: BTreeMap<u16, u64> = BTreeMap::new();
        for e in v["log"]["entries"].as_array().unwrap() {
            *s.entry(e["response"]["status"].as_u64().unwrap_or(0) as u16)
                .or_default() += 1;
        }
        s
    };
    let summary = |out: &str| {
        out.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!(
        "schemathesis {version}\ningest: {:.0?}, answers by status {:?}; writes: {} acknowledged \
         ({} increments), {} answered 503, {} refused\n{}\naggregator: {:.0?}, answers by status \
         {:?}\n{}",
        ingest_took,
        ack.statuses,
        ack.requests,
        ack.items.len(),
        ack.unavailable,
        ack.refused,
        summary(&ingest_out),
        agg_took,
        agg_statuses,
        summary(&agg_out)
    );
    assert!(
        ingest_ok,
        "schemathesis found failures in ingest:\n{ingest_out}"
    );
    assert!(
        agg_ok,
        "schemathesis found failures in the aggregator:\n{agg_out}"
    );
    assert!(
        ack.requests > 0,
        "the fuzz run had no write acknowledged: nothing to compare"
    );

    // (1) The log holds exactly the acknowledged increments.
    let log = read_log(&p);
    let mut want: BTreeMap<&Item, i64> = BTreeMap::new();
    for i in &ack.items {
        *want.entry(i).or_default() += 1;
    }
    let mut got: BTreeMap<&Item, i64> = BTreeMap::new();
    for l in log.values().flatten() {
        *got.entry(&l.item).or_default() += 1;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(i, n)| got.get(*i).copied().unwrap_or(0) < **n)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(i, n)| want.get(*i).copied().unwrap_or(0) < **n)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged increments missing from the log: {missing:?}"
    );
    assert!(
        extra.is_empty() || ack.unavailable > 0,
        "records in the log that no 200 acknowledged (and no write got 503): {extra:?}"
    );

    // (2) The aggregator's sums are the fold of them; (3) its quarantine count too.
    let ends: BTreeMap<i32, i64> = log
        .iter()
        .map(|(part, rs)| (*part, rs.last().map_or(0, |r| r.offset + 1)))
        .collect();
    let client = http();
    wait_for(
        "the aggregator to fold the whole log",
        Duration::from_secs(120),
        || {
            tally_testkit::client::offsets(&client, &agg.base).filter(|o| {
                ends.iter()
                    .all(|(part, end)| *end == 0 || o.get(part).is_some_and(|n| n >= end))
            })
        },
    );
    let (want_sums, want_quarantined) = fold(&log);
    let got_sums = served_sums(&agg.base);
    let drift = Drift::between(&want_sums, &got_sums);
    let wrong_keys: Vec<String> = want_sums
        .iter()
        .filter(|(k, v)| got_sums.get(*k) != Some(v))
        .map(|(k, v)| format!("{k:?}: want {v}, got {:?}", got_sums.get(k)))
        .chain(
            got_sums
                .keys()
                .filter(|k| !want_sums.contains_key(*k))
                .map(|k| format!("{k:?}: served, never acknowledged")),
        )
        .collect();
    let rejected: Value = client
        .get(format!("{}/rejected?limit=1000", agg.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rejected["records"].as_array().unwrap() {
        let reason = r["reason"].as_str().unwrap_or("");
        *reasons
            .entry(reason.split(':').next().unwrap_or(""))
            .or_default() += 1;
    }
    eprintln!(
        "log: {} records; keys {} (served {}), lost {} doubled {}; quarantined: want {}, served {} {reasons:?}",
        log.values().map(Vec::len).sum::<usize>(),
        want_sums.len(),
        got_sums.len(),
        drift.lost,
        drift.doubled,
        want_quarantined,
        rejected["count"]
    );
    assert!(wrong_keys.is_empty(), "sums differ: {wrong_keys:?}");
    assert_eq!(drift, Drift::default());
    assert_eq!(rejected["count"].as_u64(), Some(want_quarantined));
}
