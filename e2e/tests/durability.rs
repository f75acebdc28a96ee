//! What an acknowledgement is worth, on a three-node Kafka cluster: a replicated topic Tally
//! creates has `min.insync.replicas=2`; a topic created beforehand with weaker settings
//! (`min.insync.replicas=1` with three replicas, `unclean.leader.election.enable=true`) is
//! reported at start by ingest and by the aggregator, each with one WARN line and the gauge
//! `tally_topic_weaker_than_promised{reason}`. And the price of two in-sync replicas with
//! replication factor 2: writes to a partition stop while one of its brokers is down.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{kafka_cli_ok, send, serial, topic_configs, wait_healthy};
use tally_testkit::broker::Cluster;
use tally_testkit::client::http;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique, wait_for};

const WARNING: &str = "makes an acknowledged write weaker than README's durability table says";

struct Service {
    proc: Proc,
    base: String,
}

fn start(bin: &str, brokers: &str, topic: &str, extra: &[&str], dir: &Path) -> Service {
    let port = free_port();
    let mut args: Vec<String> = [
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    if bin == "aggregator" {
        let db = dir.join(format!("{}.db", unique("agg")));
        args.extend(["--db".into(), db.display().to_string()]);
        args.extend(["--group".into(), unique("group")]);
    }
    let proc = Proc::start(bin, &args, &[], dir);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &proc);
    Service { proc, base }
}

/// The value of `tally_topic_weaker_than_promised{reason="REASON"}` at `base/metrics`.
fn weaker(base: &str, reason: &str) -> Option<f64> {
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    let prefix = format!("tally_topic_weaker_than_promised{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))?
        .trim()
        .parse()
        .ok()
}

fn warnings(s: &Service) -> Vec<String> {
    s.proc
        .log_text()
        .lines()
        .filter(|l| l.contains(WARNING))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_created_replicated_topic_has_two_in_sync_replicas_and_a_weaker_one_is_reported() {
    let _serial = serial();
    let cluster = Cluster::start();
    let brokers = cluster.bootstrap();
    let dir = tempfile::tempdir().unwrap();

    // Created by Tally with replication factor 2 (and 3): min.insync.replicas=2, nothing reported.
    for rf in ["2", "3"] {
        let topic = unique("durable");
        let flags = ["--partitions", "3", "--replication-factor", rf];
        let ingest = start("ingest", &brokers, &topic, &flags, dir.path());
        let configs = topic_configs(&brokers, &topic);
        assert!(
            configs.contains("min.insync.replicas=2"),
            "replication factor {rf}:\n{configs}"
        );
        let described = kafka_cli_ok(&brokers, &["topics", "--describe", "--topic", &topic]);
        assert!(
            described.contains(&format!("ReplicationFactor: {rf}")),
            "{described}"
        );
        let aggregator = start("aggregator", &brokers, &topic, &flags, dir.path());
        for s in [&ingest, &aggregator] {
            assert_eq!(warnings(s), Vec::<String>::new());
            for reason in ["min_insync_replicas_below_2", "unclean_leader_election"] {
                assert_eq!(weaker(&s.base, reason), Some(0.0), "{reason}");
            }
        }
    }

    // Created beforehand with three replicas, one of which is enough to acknowledge, and
    // unclean leader election on.
    let topic = unique("weak");
    kafka_cli_ok(
        &brokers,
        &[
            "topics",
            "--create",
            "--topic",
            &topic,
            "--partitions",
            "2",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=1",
            "--config",
            "unclean.leader.election.enable=true",
            "--config",
            "retention.ms=-1",
            "--config",
            "retention.bytes=-1",
        ],
    );
    let ingest = start("ingest", &brokers, &topic, &[], dir.path());
    let aggregator = start("aggregator", &brokers, &topic, &[], dir.path());
    for s in [&ingest, &aggregator] {
        let lines = warnings(s);
        assert_eq!(lines.len(), 1, "one WARN line: {lines:#?}");
        let line = &lines[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains("min.insync.replicas=1 with replication factor 3"),
            "{line}"
        );
        assert!(
            line.contains("unclean.leader.election.enable=true"),
            "{line}"
        );
        for reason in ["min_insync_replicas_below_2", "unclean_leader_election"] {
            assert_eq!(weaker(&s.base, reason), Some(1.0), "{reason}");
        }
    }
}

/// Partition → the ids of its replicas, from `topics --describe`.
fn replicas(brokers: &str, topic: &str) -> BTreeMap<i32, Vec<u32>> {
    let text = kafka_cli_ok(brokers, &["topics", "--describe", "--topic", topic]);
    let field = |line: &str, name: &str| {
        line.split('\t').find_map(|f| {
            f.trim()
                .strip_prefix(name)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    text.lines()
        .filter_map(|l| {
            let p = field(l, "Partition:")?.parse().ok()?;
            let r = field(l, "Replicas:")?
                .split(',')
                .map(|id| id.trim().parse().expect("replica id"))
                .collect();
            Some((p, r))
        })
        .collect()
}

/// POSTs one increment; the status and, on 200, the partition.
fn post(base: &str, key: &str) -> (u16, Option<i32>) {
    let (status, _, body) = send(
        http()
            .post(format!("{base}/increment"))
            .form(&[("key", key), ("value", "1")]),
    );
    (status, body["partition"].as_i64().map(|p| p as i32))
}

/// The price README's durability table states for replication factor 2 with two in-sync
/// replicas: while a broker that holds one of a partition's two replicas is down, writes to
/// that partition answer 503; a partition with both replicas up takes writes; once the broker
/// is back, the first takes writes again.
#[test]
fn with_replication_factor_2_writes_stop_where_a_replica_is_down() {
    let _serial = serial();
    let mut cluster = Cluster::start();
    let brokers = cluster.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("rf2");
    let flags = [
        "--partitions",
        "3",
        "--replication-factor",
        "2",
        "--delivery-timeout-ms",
        "3000",
    ];
    let ingest = start("ingest", &brokers, &topic, &flags, dir.path());
    let placement = replicas(&brokers, &topic);
    assert_eq!(placement.len(), 3, "{placement:?}");
    assert!(placement.values().all(|r| r.len() == 2), "{placement:?}");

    // A key in each partition.
    let mut key_of: BTreeMap<i32, String> = BTreeMap::new();
    for i in 0..1000 {
        let key = format!("k{i}");
        let (status, p) = post(&ingest.base, &key);
        assert_eq!(status, 200);
        key_of.entry(p.unwrap()).or_insert(key);
        if key_of.len() == 3 {
            break;
        }
    }
    assert_eq!(key_of.len(), 3);

    // A node that holds a replica of some partitions and not of others.
    let ids: Vec<u32> = (0..cluster.len())
        .map(|i| cluster.node(i).spec.id)
        .collect();
    let down = *ids
        .iter()
        .find(|id| {
            placement.values().any(|r| r.contains(id))
                && placement.values().any(|r| !r.contains(id))
        })
        .expect("a node missing from some partition");
    let (hit, spared): (Vec<i32>, Vec<i32>) =
        placement.keys().partition(|p| placement[p].contains(&down));
    let index = (0..cluster.len())
        .find(|&i| cluster.node(i).spec.id == down)
        .expect("the node is in the cluster");
    cluster.node(index).kill();

    for p in &spared {
        wait_for(
            "a write to a partition with both replicas up",
            Duration::from_secs(120),
            || (post(&ingest.base, &key_of[p]).0 == 200).then_some(()),
        );
    }
    for p in &hit {
        for _ in 0..3 {
            let (status, _) = post(&ingest.base, &key_of[p]);
            assert_eq!(status, 503, "partition {p} has one replica up: no 200");
        }
    }

    cluster.restart(index);
    for p in &hit {
        wait_for(
            "writes to resume once both replicas are up",
            Duration::from_secs(180),
            || (post(&ingest.base, &key_of[p]).0 == 200).then_some(()),
        );
    }
}
