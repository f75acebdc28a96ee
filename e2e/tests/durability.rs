//! What an acknowledgement is worth, on a three-node Kafka cluster: a replicated topic Tally
//! creates has `min.insync.replicas=2`; a topic created beforehand with weaker settings
//! (`min.insync.replicas=1` with three replicas, `unclean.leader.election.enable=true`) is
//! reported at start by ingest and by the aggregator, each with one WARN line and the gauge
//! `tally_topic_weaker_than_promised{reason}`.

mod common;

use std::path::Path;

use common::{kafka_cli_ok, wait_healthy};
use tally_testkit::broker::Cluster;
use tally_testkit::client::http;
use tally_testkit::process::Proc;
use tally_testkit::{free_port, unique};

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
    let cluster = Cluster::start();
    let brokers = cluster.bootstrap();
    let dir = tempfile::tempdir().unwrap();

    // Created by Tally with replication factor 2 (and 3): min.insync.replicas=2, nothing reported.
    for rf in ["2", "3"] {
        let topic = unique("durable");
        let flags = ["--partitions", "3", "--replication-factor", rf];
        let ingest = start("ingest", &brokers, &topic, &flags, dir.path());
        let configs = kafka_cli_ok(
            &brokers,
            &[
                "configs",
                "--describe",
                "--entity-type",
                "topics",
                "--entity-name",
                &topic,
            ],
        );
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
