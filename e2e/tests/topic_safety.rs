//! Issue 13 on a real Kafka broker: transactions from another producer, records deleted before
//! they were folded, a recreated topic, and topic settings that would lose increments. Each test
//! checks against the ground truth (what ingest acknowledged, what was committed in
//! transactions) and counts lost and doubled increments separately.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Pipeline;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;
use tally_pipeline::record::encode_value;
use tally_testkit::client::{http, offsets};
use tally_testkit::process::Proc;
use tally_testkit::{unique, wait_for};

const T: Duration = Duration::from_secs(30);

fn admin(p: &Pipeline) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .create()
        .unwrap()
}

/// Posts one increment of 1 for each key; returns key -> (partition, offset) as acknowledged.
fn post(base: &str, keys: &[String]) -> BTreeMap<String, (i32, i64)> {
    let client = http();
    let mut out = BTreeMap::new();
    for k in keys {
        let r = client
            .post(format!("{base}/increment"))
            .form(&[("key", k.as_str()), ("value", "1")])
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{k}");
        let v: serde_json::Value = r.json().unwrap();
        out.insert(
            k.clone(),
            (
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
            ),
        );
    }
    out
}

fn high_watermarks(p: &Pipeline) -> BTreeMap<i32, i64> {
    let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer as _;
    (0..p.partitions)
        .map(|i| (i, c.fetch_watermarks(&p.topic, i, T).unwrap().1))
        .collect()
}

/// Lost (expected 1, found 0), doubled (found more than expected) and wrongly counted (expected
/// 0, found something) keys, each key standing for one increment of 1.
fn judge(base: &str, expected: &BTreeMap<String, i64>) -> (Vec<String>, Vec<String>) {
    let client = http();
    let (mut lost, mut doubled) = (Vec::new(), Vec::new());
    for (k, want) in expected {
        let got = tally_testkit::client::sum(&client, base, k).unwrap_or(0);
        if got < *want {
            lost.push(format!("{k}: want {want}, got {got}"));
        } else if got > *want {
            doubled.push(format!("{k}: want {want}, got {got}"));
        }
    }
    (lost, doubled)
}

fn readyz(base: &str) -> (u16, serde_json::Value) {
    let r = http().get(format!("{base}/readyz")).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or_default())
}

#[test]
fn transactions_interleaved_with_ingest_count_committed_once_and_aborted_never() {
    let p = Pipeline::new(2);
    let ingest = p.ingest(&[]);
    let agg = p.aggregator(&[]);
    // Threaded: delivery reports are served in the background, as a transaction needs.
    let txp: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .set("transactional.id", unique("txn"))
        .create()
        .unwrap();
    txp.init_transactions(T).unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut n = 0;
    // Writes one transactional increment of 1 per partition under fresh keys.
    let mut txn_write = |expected: &mut BTreeMap<String, i64>, counts: bool| {
        for part in 0..2 {
            n += 1;
            let key = format!("txn-{n}");
            txp.send(
                BaseRecord::to(&p.topic)
                    .partition(part)
                    .key(key.as_bytes())
                    .payload(&encode_value(1)),
            )
            .unwrap();
            expected.insert(key, i64::from(counts));
        }
    };
    let ingest_keys =
        |round: usize| -> Vec<String> { (0..10).map(|i| format!("ingest-{round}-{i}")).collect() };
    for round in 0..3 {
        txp.begin_transaction().unwrap();
        txn_write(&mut expected, true);
        txp.commit_transaction(T).unwrap();
        for k in post(&ingest.base, &ingest_keys(round * 3)).into_keys() {
            expected.insert(k, 1);
        }
        txp.begin_transaction().unwrap();
        txn_write(&mut expected, false);
        txp.abort_transaction(T).unwrap();
        // An open transaction while ingest writes; read_committed holds ingest's records
        // back until it ends, here with an abort.
        txp.begin_transaction().unwrap();
        txn_write(&mut expected, false);
        txp.flush(T).unwrap();
        for k in post(&ingest.base, &ingest_keys(round * 3 + 1)).into_keys() {
            expected.insert(k, 1);
        }
        txp.abort_transaction(T).unwrap();
    }
    // The partitions end with a committed transaction: their last offset is a commit marker.
    txp.begin_transaction().unwrap();
    txn_write(&mut expected, true);
    txp.commit_transaction(T).unwrap();

    let ends = high_watermarks(&p);
    // Caught up means the stored next offset reaches the log end, markers included.
    let client = http();
    wait_for(
        "the aggregator to reach the log end",
        Duration::from_secs(60),
        || offsets(&client, &agg.base).filter(|o| ends.iter().all(|(p, e)| o.get(p) == Some(e))),
    );
    let (lost, doubled) = judge(&agg.base, &expected);
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "{} lost: {lost:?}\n{} doubled or aborted counted: {doubled:?}\n{}",
        lost.len(),
        doubled.len(),
        agg.proc.log_text()
    );
    let v: serde_json::Value = client
        .get(format!("{}/offsets", agg.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["total_lag"], 0, "{v}");
    assert_eq!(readyz(&agg.base).0, 200);

    // The replayer decides the same: verify is clean, a rebuild has the same sums and ends at
    // the log end too.
    let out = p.replayer(&["verify", "--db", &p.db().display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = p.dir.path().join("rebuilt.db");
    let out = p.replayer(&["rebuild", "--db", &rebuilt.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = tally_pipeline::store::Store::open(
        &rebuilt,
        &p.topic,
        tally_pipeline::store::OpenMode::Existing,
    )
    .unwrap();
    assert_eq!(store.stored_offsets().unwrap(), ends);
    let (mut lost, mut doubled) = (0, 0);
    for (k, want) in &expected {
        let got = store.key_sum(k).unwrap().unwrap_or(0);
        lost += usize::from(got < *want);
        doubled += usize::from(got > *want);
    }
    assert_eq!((lost, doubled), (0, 0), "rebuild: lost, doubled");
}

#[test]
fn deleted_records_stop_only_their_partition_and_rebuild_refuses_a_log_not_at_zero() {
    let p = Pipeline::new(2);
    let ingest = p.ingest(&[]);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let acked = post(&ingest.base, &keys);
    let per_part = |part: i32| -> Vec<&String> {
        acked
            .iter()
            .filter(|(_, (pp, _))| *pp == part)
            .map(|(k, _)| k)
            .collect()
    };
    assert!(per_part(0).len() > 2 && per_part(1).len() > 2, "{acked:?}");
    // Partition 0 loses its first two records before anything folded them.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&p.topic, 0, rdkafka::Offset::Offset(2))
        .unwrap();
    futures::executor::block_on(admin(&p).delete_records(&tpl, &AdminOptions::new())).unwrap();

    let agg = p.aggregator(&[]);
    let (s, v) = wait_for("/readyz to report the stopped partition", T, || {
        let r = readyz(&agg.base);
        (r.1["error"]["code"] == "partition_stopped").then_some(r)
    });
    let msg = v["error"]["message"].as_str().unwrap().to_owned();
    assert_eq!(s, 503);
    assert!(
        msg.contains(&format!(
            "topic {} partition 0: the log starts at offset 2",
            p.topic
        )) && msg.contains("records 0..2 were deleted"),
        "{msg}"
    );
    // Partition 1 goes on: every increment there counted once.
    let expected1: BTreeMap<String, i64> =
        per_part(1).into_iter().map(|k| (k.clone(), 1)).collect();
    let ends = high_watermarks(&p);
    let client = http();
    wait_for("partition 1 to be folded", T, || {
        offsets(&client, &agg.base).filter(|o| o.get(&1) == ends.get(&1))
    });
    let (lost, doubled) = judge(&agg.base, &expected1);
    assert_eq!((lost.len(), doubled.len()), (0, 0), "{lost:?} {doubled:?}");
    // Partition 0: nothing skipped, nothing counted.
    let expected0: BTreeMap<String, i64> =
        per_part(0).into_iter().map(|k| (k.clone(), 0)).collect();
    let (_, counted) = judge(&agg.base, &expected0);
    assert!(
        counted.is_empty(),
        "records of a stopped partition counted: {counted:?}"
    );
    assert_eq!(
        offsets(&client, &agg.base)
            .unwrap()
            .get(&0)
            .copied()
            .unwrap_or(0),
        0,
        "a stopped partition's stored offset must not move"
    );
    let metrics = client
        .get(format!("{}/metrics", agg.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tally_partition_stopped")
                && l.contains("partition=\"0\"")
                && l.contains("log_start_past_stored_offset")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let log = agg.proc.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("partition stopped"))
            .count(),
        1,
        "{log}"
    );

    // The replayer refuses to rebuild a log that no longer starts at 0, in one line, exit 2.
    let db = p.dir.path().join("r.db").display().to_string();
    let out = p.replayer(&["rebuild", "--db", &db]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("partition 0 no longer starts at offset 0 but at 2"),
        "{err}"
    );
    // Told where it may start, it rebuilds what is left.
    let db = p.dir.path().join("r2.db").display().to_string();
    let out = p.replayer(&["rebuild", "--db", &db, "--from", "log-start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The silent case the log end alone cannot see: the recreated topic has grown past the stored
/// offsets before the aggregator comes back, so offsets 0..10 of the new log look like
/// redeliveries. The topic id tells the two logs apart.
#[test]
fn a_recreated_topic_is_refused_by_its_id_even_once_it_outgrew_the_stored_offsets() {
    let p = Pipeline::new(1);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&[]);
    let keys: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    post(&ingest.base, &keys);
    let client = http();
    wait_for("folding", T, || {
        offsets(&client, &agg.base).filter(|o| o.get(&0) == Some(&10))
    });
    agg.proc.terminate(T);
    let a = admin(&p);
    let opts = AdminOptions::new();
    futures::executor::block_on(a.delete_topics(&[&p.topic], &opts)).unwrap();
    wait_for("the topic to be created again", T, || {
        let t = NewTopic::new(&p.topic, 1, TopicReplication::Fixed(1))
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1");
        let r = futures::executor::block_on(a.create_topics([&t], &opts)).ok()?;
        r[0].is_ok().then_some(())
    });
    drop(ingest);
    let ingest = p.ingest(&[]);
    let new_keys: Vec<String> = (0..15).map(|i| format!("b{i}")).collect();
    post(&ingest.base, &new_keys);
    assert_eq!(
        high_watermarks(&p)[&0],
        15,
        "the new log is past the stored offset 10"
    );
    agg.restart();
    let (_, v) = wait_for("/readyz to refuse the recreated topic", T, || {
        let r = readyz(&agg.base);
        (r.1["error"]["code"] == "topic_recreated").then_some(r)
    });
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("topic {} has id", p.topic))
            && msg.contains("deleted and created again"),
        "{msg}"
    );
    // Nothing of the new log was counted, nothing of the old one lost: the store is as it was.
    std::thread::sleep(Duration::from_secs(2));
    let (lost, doubled) = judge(&agg.base, &keys.iter().map(|k| (k.clone(), 1)).collect());
    assert_eq!((lost.len(), doubled.len()), (0, 0), "{lost:?} {doubled:?}");
    let counted_new: Vec<&String> = new_keys
        .iter()
        .filter(|k| tally_testkit::client::sum(&client, &agg.base, k).is_some())
        .collect();
    assert!(
        counted_new.is_empty(),
        "new records counted: {counted_new:?}"
    );
    assert_eq!(offsets(&client, &agg.base).unwrap().get(&0), Some(&10));
    agg.proc.terminate(T);

    // The replayer refuses the same database in one line, exit 2: continue and verify alike.
    let db = p.db().display().to_string();
    for args in [
        vec!["rebuild", "--db", &db, "--continue"],
        vec!["verify", "--db", &db],
    ] {
        let out = p.replayer(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("deleted and created again"), "{args:?}: {err}");
    }
    // The runbook's recovery: a rebuild into a new database counts the new log exactly.
    let fresh = p.dir.path().join("fresh.db").display().to_string();
    let out = p.replayer(&["rebuild", "--db", &fresh]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = tally_pipeline::store::Store::open(
        std::path::Path::new(&fresh),
        &p.topic,
        tally_pipeline::store::OpenMode::Existing,
    )
    .unwrap();
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.offsets.get(&0), Some(&15));
    let total: i64 = snap.sums.values().sum();
    assert_eq!(total, 15, "each new increment once");
}

#[test]
fn compaction_and_finite_retention_are_refused_at_start() {
    let p = Pipeline::new(1);
    let a = admin(&p);
    let t = NewTopic::new(&p.topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let r = futures::executor::block_on(a.create_topics([&t], &AdminOptions::new())).unwrap();
    assert!(r[0].is_ok());
    let mut args = vec![
        "--brokers".to_owned(),
        p.broker.addr(),
        "--topic".into(),
        p.topic.clone(),
        "--db".into(),
        p.db().display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", tally_testkit::free_port()),
    ];
    let mut agg = Proc::start("aggregator", &args, &[], p.dir.path());
    assert!(!agg.wait(T).success());
    assert!(
        agg.log_text().contains("has cleanup.policy=compact"),
        "{}",
        agg.log_text()
    );
    let out = p.replayer(&["as-of"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("set cleanup.policy=delete"), "{err}");

    // Kafka's default seven days: refused, then accepted with the flag.
    let topic = unique("finite");
    let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("retention.ms", "604800000");
    futures::executor::block_on(a.create_topics([&t], &AdminOptions::new())).unwrap();
    args[3] = topic.clone();
    let mut agg = Proc::start("aggregator", &args, &[], p.dir.path());
    assert!(!agg.wait(T).success());
    assert!(
        agg.log_text().contains("retention.ms=604800000"),
        "{}",
        agg.log_text()
    );
    args.push("--accept-finite-retention".into());
    let mut agg = Proc::start("aggregator", &args, &[], p.dir.path());
    let base = args[7].clone();
    wait_for("the aggregator to serve with accepted retention", T, || {
        http()
            .get(format!("http://{base}/healthz"))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
    });
    assert!(agg.is_running());
}
