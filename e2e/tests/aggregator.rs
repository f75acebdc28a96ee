//! The aggregator under faults, on a real broker: three processes in one group killed and
//! restarted under load, scaled up and down; a zombie paused past its session timeout and
//! fenced when it resumes; poison records written straight to the topic; read-your-writes.
//! Every exactness claim is checked against the ground truth of what was acknowledged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{assert_sums, owned_partitions, serial, Pipeline, Service};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tally_pipeline::record::encode_value;
use tally_pipeline::store::{OpenMode, Store};
use tally_testkit::client::{http, GroundTruth};
use tally_testkit::wait_for;

/// These tests start several processes each and depend on group timing: run them one at a time
/// so that they do not starve each other of the machine's cores.
/// Increments each loader sends even when `done` comes sooner: the load is part of what is
/// checked, so its size does not depend on how fast the machine ran the rest of the test.
const MIN_PER_LOADER: u64 = 600;

/// Posts single increments on random keys until `done` (and at least [`MIN_PER_LOADER`]);
/// returns what was acknowledged.
fn load(base: String, seed: u64, done: Arc<AtomicBool>) -> GroundTruth {
    let client = http();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = GroundTruth::default();
    // At least MIN_PER_LOADER each, however fast the test reaches `done`.
    while truth.acknowledged < MIN_PER_LOADER || !done.load(Ordering::Relaxed) {
        let key = format!("k-{}", rng.gen_range(0..300));
        let value: i64 = rng.gen_range(-1000..=1000);
        let r = client
            .post(format!("{base}/increment"))
            .form(&[("key", key.clone()), ("value", value.to_string())])
            .send()
            .expect("ingest answers");
        assert_eq!(r.status(), 200, "ingest refused an increment");
        let body: Value = r.json().expect("json");
        truth.add(&key, value);
        truth.landed(
            body["partition"].as_i64().unwrap() as i32,
            body["offset"].as_i64().unwrap(),
        );
    }
    truth
}

struct Load {
    done: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<GroundTruth>>,
}

impl Load {
    fn start(ingest: &Service, threads: u64) -> Load {
        let done = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let (base, done) = (ingest.base.clone(), done.clone());
                std::thread::spawn(move || load(base, 100 + i, done))
            })
            .collect();
        Load { done, threads }
    }

    fn stop(self) -> GroundTruth {
        self.done.store(true, Ordering::Relaxed);
        let mut truth = GroundTruth::default();
        for t in self.threads {
            truth.merge(t.join().expect("loader thread"));
        }
        truth
    }
}

fn metrics(base: &str) -> Option<String> {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()
}

/// Sum of the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            (*series == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|want| series.contains(want))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// How many partitions each aggregator owns now.
fn owned_counts(aggs: &[&Service]) -> Vec<u64> {
    aggs.iter()
        .map(|a| owned_partitions(&a.base).len() as u64)
        .collect()
}

/// Waits until the aggregators own all `partitions` between them, each at least one when
/// there are enough partitions: the group converged.
fn wait_converged(aggs: &[&Service], partitions: u64, timeout: Duration) -> Vec<u64> {
    wait_for("the group to converge", timeout, || {
        let o = owned_counts(aggs);
        let each = partitions < aggs.len() as u64 || o.iter().all(|n| *n > 0);
        (o.iter().sum::<u64>() == partitions && each).then_some(o)
    })
}

#[test]
fn three_aggregators_stay_exact_through_kills_restarts_and_scaling() {
    let _serial = serial();
    let started = Instant::now();
    let p = Pipeline::new(12);
    let ingest = p.ingest(&[]);
    let mut aggs: Vec<Service> = (0..3).map(|_| p.aggregator(&[])).collect();
    let load = Load::start(&ingest, 2);
    wait_converged(
        &aggs.iter().collect::<Vec<_>>(),
        12,
        Duration::from_secs(90),
    );

    // Ten SIGKILLs under load, cycling through all three processes (the group's leader
    // included), each restarted at once as systemd or compose would: the new process joins
    // while the dead member's session has not expired yet, and the coordinator drops it when
    // it does. Half the kills also wait for the survivors to take everything over first.
    for i in 0..10 {
        let victim = i % 3;
        aggs[victim].proc.kill();
        if i % 2 == 1 {
            let survivors: Vec<&Service> =
                (0..3).filter(|j| *j != victim).map(|j| &aggs[j]).collect();
            let o = wait_converged(&survivors, 12, Duration::from_secs(90));
            eprintln!("kill {}: survivors took over {o:?}", i + 1);
        }
        aggs[victim].restart();
        let all = wait_converged(
            &aggs.iter().collect::<Vec<_>>(),
            12,
            Duration::from_secs(90),
        );
        eprintln!(
            "kill {} of aggregator {victim}: all converged {all:?} at {:?}",
            i + 1,
            started.elapsed()
        );
    }

    // A fourth joins; then one leaves gracefully (SIGTERM: final commit, group left).
    aggs.push(p.aggregator(&[]));
    wait_converged(
        &aggs.iter().collect::<Vec<_>>(),
        12,
        Duration::from_secs(90),
    );
    let mut leaving = aggs.remove(1);
    let status = leaving.proc.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop exit status {status}");
    assert!(
        leaving.proc.log_text().contains("group left"),
        "{}",
        leaving.proc.log_text()
    );
    wait_converged(
        &aggs.iter().collect::<Vec<_>>(),
        12,
        Duration::from_secs(90),
    );

    let truth = load.stop();
    assert!(truth.acknowledged > 1000, "sent {}", truth.acknowledged);
    p.wait_caught_up(&aggs[0].base, &truth, Duration::from_secs(120));
    for a in &aggs {
        assert_sums(&a.base, &truth);
    }
    let live = Store::open(&p.db(), &p.topic, OpenMode::Existing).unwrap();
    assert_eq!(live.rejected_count().unwrap(), 0);
    eprintln!(
        "{} increments exact after 10 kills and a scale up and down in {:?}",
        truth.acknowledged,
        started.elapsed()
    );
}

#[test]
fn zombie_paused_past_the_session_timeout_is_fenced_and_resumes_exactly() {
    let _serial = serial();
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    // The zombie joins first and so leads the group. A long commit interval, also when its
    // fetched records are all folded: it always holds pending work when it is paused.
    let zombie = p.aggregator(&[
        "--commit-interval-ms",
        "4000",
        "--min-commit-interval-ms",
        "4000",
    ]);
    let other = p.aggregator(&[]);
    let load = Load::start(&ingest, 2);
    let o = wait_converged(&[&zombie, &other], 4, Duration::from_secs(90));
    eprintln!("converged {o:?}");
    // Wait until the zombie has folded records it has not committed yet.
    wait_for(
        "the zombie to hold pending work",
        Duration::from_secs(30),
        || {
            let m = metrics(&zombie.base)?;
            let folded = metric(&m, "tally_records_folded_total", &["outcome=\"applied\""]);
            let committed = metric(&m, "tally_records_committed_total", &[]);
            (folded > committed).then_some(())
        },
    );

    // Paused past the session timeout: the group expires it and the other takes everything.
    zombie.proc.stop_signal();
    wait_for(
        "the other to own every partition",
        Duration::from_secs(90),
        || (owned_counts(&[&other]) == [4]).then_some(()),
    );
    // The new owner commits past where the zombie's pending batches started.
    let before = Store::open(&p.db(), &p.topic, OpenMode::Existing)
        .unwrap()
        .stored_offsets()
        .unwrap();
    wait_for(
        "the new owner to commit every partition further",
        Duration::from_secs(60),
        || {
            let now = Store::open(&p.db(), &p.topic, OpenMode::Existing)
                .ok()?
                .stored_offsets()
                .ok()?;
            (0..4).all(|q| now.get(&q) > before.get(&q)).then_some(())
        },
    );
    zombie.proc.cont_signal();

    wait_for(
        "the zombie's commit to be fenced",
        Duration::from_secs(60),
        || {
            zombie
                .proc
                .log_text()
                .contains("commit fenced")
                .then_some(())
        },
    );
    let m = metrics(&zombie.base).expect("zombie metrics");
    let fenced = metric(&m, "tally_partition_commits_total", &["outcome=\"fenced\""]);
    assert!(fenced >= 1.0, "fenced commits in metrics: {fenced}\n{m}");

    // It rejoins and works on: both own partitions again, and nothing was lost or doubled.
    wait_converged(&[&zombie, &other], 4, Duration::from_secs(90));
    let truth = load.stop();
    p.wait_caught_up(&other.base, &truth, Duration::from_secs(120));
    assert_sums(&other.base, &truth);
    assert_sums(&zombie.base, &truth);
}

/// Writes one record straight to the topic (as a foreign client would) and returns its offset.
fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> i64 {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition);
    record.key = key;
    record.payload = value;
    let delivery = producer
        .send_result(record)
        .map_err(|(e, _)| e)
        .expect("enqueue");
    futures::executor::block_on(delivery)
        .expect("delivery report")
        .map_err(|(e, _)| e)
        .expect("delivered")
        .offset
}

#[test]
fn poison_records_are_quarantined_listed_and_rebuilt_identically() {
    let _serial = serial();
    let p = Pipeline::new(2);
    let agg = p.aggregator(&[]); // creates the topic
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .set("acks", "all")
        .create()
        .unwrap();
    let v = |d: i64| encode_value(d);
    let mut trailing = v(1);
    trailing.push(0);
    // (partition, key, value, reason code when it must be quarantined)
    type Planned = (i32, Option<Vec<u8>>, Option<Vec<u8>>, Option<&'static str>);
    let plan: Vec<Planned> = vec![
        (0, Some(b"good".to_vec()), Some(v(5)), None),
        (
            0,
            Some(b"good".to_vec()),
            Some(b"garbage".to_vec()),
            Some("unknown_version"),
        ),
        (0, Some(b"good".to_vec()), Some(v(7)), None),
        (0, Some(b"big".to_vec()), Some(v(i64::MAX - 1)), None),
        (0, Some(b"big".to_vec()), Some(v(1)), None),
        (0, Some(b"big".to_vec()), Some(v(1)), Some("overflow")),
        (0, Some(b"big".to_vec()), Some(v(-3)), None),
        (0, None, Some(v(1)), Some("missing_key")),
        (0, Some(vec![0xff, 0xfe]), Some(v(1)), Some("key_not_utf8")),
        (
            0,
            Some(b"good".to_vec()),
            Some(trailing),
            Some("undecodable_body"),
        ),
        (
            0,
            Some(b"good".to_vec()),
            Some(vec![1, 2, 3]),
            Some("undecodable_body"),
        ),
        (0, Some(b"good".to_vec()), None, Some("missing_value")),
        (0, Some(b"good".to_vec()), Some(v(100)), None),
        (1, Some(b"neg".to_vec()), Some(v(i64::MIN + 1)), None),
        (1, Some(b"neg".to_vec()), Some(v(-1)), None),
        (1, Some(b"neg".to_vec()), Some(v(-1)), Some("overflow")),
        (1, Some(b"neg".to_vec()), Some(v(10)), None),
    ];
    let mut expected = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for (part, key, value, reason) in &plan {
        let off = produce(&producer, &p.topic, *part, key.as_deref(), value.as_deref());
        ends.insert(*part, off + 1);
        if let Some(r) = reason {
            expected.insert((*part, off), (*r, key.clone(), value.clone()));
        }
    }

    let client = http();
    wait_for(
        "the aggregator to pass every record",
        Duration::from_secs(60),
        || {
            let o = tally_testkit::client::offsets(&client, &agg.base)?;
            ends.iter().all(|(p, e)| o.get(p) >= Some(e)).then_some(())
        },
    );

    // The valid records around the poison ones are counted, overflow judged in log order.
    let sums: Value = client
        .get(format!("{}/sums?prefix=", agg.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        sums["sums"],
        serde_json::json!([
            {"key": "big", "sum": i64::MAX - 3},
            {"key": "good", "sum": 112},
            {"key": "neg", "sum": i64::MIN + 10},
        ])
    );

    // /rejected lists each one with its offset, reason and raw bytes, in pages of 3.
    let b64 = |b: &Option<Vec<u8>>| {
        b.as_ref().map_or(Value::Null, |b| {
            base64::engine::general_purpose::STANDARD.encode(b).into()
        })
    };
    let mut listed = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/rejected?limit=3", agg.base);
        if let Some(a) = &after {
            url += &format!("&after={a}");
        }
        let page: Value = client.get(url).send().unwrap().json().unwrap();
        assert_eq!(
            page["count"].as_u64(),
            Some(expected.len() as u64),
            "{page}"
        );
        for r in page["records"].as_array().unwrap() {
            let at = (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            );
            listed.insert(at, r.clone());
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (at, (reason, key, value)) in &expected {
        let r = &listed[at];
        assert!(
            r["reason"].as_str().unwrap().starts_with(reason),
            "{at:?}: {r}"
        );
        assert_eq!(r["key_base64"], b64(key), "{at:?}");
        assert_eq!(r["value_base64"], b64(value), "{at:?}");
    }
    let m = metrics(&agg.base).unwrap();
    assert_eq!(
        metric(&m, "tally_rejected_records_total", &[]),
        expected.len() as f64
    );

    // Lag: the consumer's log end matches the committed offsets once caught up, and /readyz
    // passes.
    wait_for("lag 0 with known log ends", Duration::from_secs(30), || {
        let o: Value = client
            .get(format!("{}/offsets", agg.base))
            .send()
            .ok()?
            .json()
            .ok()?;
        let parts = o["partitions"].as_array()?;
        let exact = parts.iter().all(|q| {
            q["log_end"].as_i64()
                == ends
                    .get(&(q["partition"].as_i64().unwrap() as i32))
                    .copied()
        });
        (o["total_lag"] == 0 && exact && parts.len() == 2).then_some(())
    });
    assert_eq!(
        client
            .get(format!("{}/readyz", agg.base))
            .send()
            .unwrap()
            .status(),
        200
    );

    // A rebuild from the log reproduces the same quarantine and the same sums.
    let rebuilt = p.dir.path().join("rebuilt.db");
    let out = p.replayer(&["rebuild", "--db", rebuilt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "rebuild: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = Store::open(&rebuilt, &p.topic, OpenMode::Existing).unwrap();
    let live = Store::open(&p.db(), &p.topic, OpenMode::Existing).unwrap();
    assert_eq!(
        rebuilt.rejected(None, 100).unwrap(),
        live.rejected(None, 100).unwrap()
    );
    assert_eq!(rebuilt.rejected(None, 100).unwrap().len(), expected.len());
    assert_eq!(rebuilt.all_sums().unwrap(), live.all_sums().unwrap());
}

#[test]
fn read_your_writes_for_1000_sequential_pairs_across_two_aggregators() {
    let _serial = serial();
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let fast = ["--commit-interval-ms", "10", "--fetch-wait-max-ms", "10"];
    let a = p.aggregator(&fast);
    let b = p.aggregator(&fast);
    wait_converged(&[&a, &b], 4, Duration::from_secs(90));

    let client = http();
    let mut truth: BTreeMap<String, i64> = BTreeMap::new();
    let mut partitions = BTreeSet::new();
    let started = Instant::now();
    for i in 0..1000i64 {
        let key = format!("ryw-{}", i % 40);
        let value = i - 500;
        let r: Value = client
            .post(format!("{}/increment", ingest.base))
            .form(&[("key", key.clone()), ("value", value.to_string())])
            .send()
            .unwrap()
            .json()
            .unwrap();
        *truth.entry(key.clone()).or_insert(0) += value;
        let (part, off) = (
            r["partition"].as_i64().unwrap(),
            r["offset"].as_i64().unwrap(),
        );
        partitions.insert(part);
        // Alternate: half the reads go to the process that does not own the partition.
        let reader = if i % 2 == 0 { &a } else { &b };
        let resp = client
            .get(format!(
                "{}/sums/{key}?min_offset={part}:{off}&wait_ms=10000",
                reader.base
            ))
            .send()
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().unwrap();
        assert_eq!(status, 200, "pair {i}: {body}");
        assert_eq!(
            body["sum"].as_i64(),
            Some(truth[&key]),
            "pair {i} did not see its write"
        );
    }
    eprintln!("1000 write-then-read pairs in {:?}", started.elapsed());
    assert_eq!(partitions.len(), 4, "the keys cover every partition");

    // An offset not reached: 504 after the wait, with the committed offset in the body.
    let resp = client
        .get(format!(
            "{}/sums/ryw-1?min_offset=0:1000000&wait_ms=300",
            a.base
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "offset_not_reached");
    assert_eq!(body["partition"], 0);
    assert!(
        body["next_offset"].as_i64().is_some_and(|n| n > 0),
        "{body}"
    );
}
