//! Apache Kafka's own command-line tools through `infra/kafka-cli.sh`, against a test broker:
//! the topics Tally creates are listed, described and configured as Tally says, and
//! `consumer-groups --describe` shows the offsets the aggregator committed and its lag.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_sums, increment, kafka_cli, kafka_cli_ok, serial, topic_configs, Pipeline};
use tally_testkit::client::{http, offsets, GroundTruth};
use tally_testkit::wait_for;

#[test]
fn kafka_cli_lists_describes_and_configures_tallys_topic() {
    let _serial = serial();
    let p = Pipeline::new(3);
    // Ingest creates the topic at start.
    let _ingest = p.ingest(&[]);
    let brokers = p.broker.addr();

    let list = kafka_cli_ok(&brokers, &["topics", "--list"]);
    assert!(list.lines().any(|l| l.trim() == p.topic), "{list}");

    let describe = kafka_cli_ok(&brokers, &["topics", "--describe", "--topic", &p.topic]);
    assert!(describe.contains("PartitionCount: 3"), "{describe}");
    assert_eq!(describe.matches("Partition: ").count(), 3, "{describe}");

    let configs = topic_configs(&brokers, &p.topic);
    for setting in [
        "retention.ms=-1",
        "retention.bytes=-1",
        "cleanup.policy=delete",
    ] {
        assert!(configs.contains(setting), "{setting} missing:\n{configs}");
    }

    // A tool it does not know: exit 2 and one line saying what to use.
    let out = kafka_cli(&brokers, &["consumer-group"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: unknown Kafka tool") && err.contains("consumer-groups"),
        "{err}"
    );
}

/// `consumer-groups --describe` as partition → (CURRENT-OFFSET, LAG), columns found by header;
/// a dash (nothing committed) is `None`.
fn group_offsets(brokers: &str, group: &str) -> BTreeMap<i32, (Option<i64>, Option<i64>)> {
    let text = kafka_cli_ok(
        brokers,
        &["consumer-groups", "--describe", "--group", group],
    );
    let mut header: Option<Vec<&str>> = None;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.contains(&"CURRENT-OFFSET") {
            header = Some(cols);
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| h.iter().position(|c| *c == name).and_then(|i| cols.get(i));
        let (Some(p), Some(cur), Some(lag)) = (col("PARTITION"), col("CURRENT-OFFSET"), col("LAG"))
        else {
            continue;
        };
        if let Ok(p) = p.parse::<i32>() {
            out.insert(p, (cur.parse().ok(), lag.parse().ok()));
        }
    }
    out
}

/// Appends `n` increments spread over keys; records the ground truth.
fn write(base: &str, n: usize, round: usize, truth: &mut GroundTruth) {
    let client = http();
    for i in 0..n {
        let key = format!("k{}", (i * 7 + round) % 23);
        let (p, o) = increment(&client, base, &key, 3);
        truth.add(&key, 3);
        truth.landed(p, o);
    }
}

/// What Kafka's tools show equals what the aggregator committed to SQLite, within seconds;
/// while the aggregator is down they show the lag; and offsets changed by hand in Kafka change
/// nothing: the aggregator starts from SQLite's.
#[test]
fn consumer_groups_describe_shows_the_aggregators_offsets_and_lag() {
    let _serial = serial();
    let p = Pipeline::new(4);
    let ingest = p.ingest(&[]);
    let mut agg = p.aggregator(&[]);
    let brokers = p.broker.addr();
    let mut truth = GroundTruth::default();

    for round in 0..2 {
        write(&ingest.base, 60, round, &mut truth);
        p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
        let sqlite = offsets(&http(), &agg.base).expect("/offsets");
        assert_eq!(sqlite.len(), 4, "{sqlite:?}");
        // The Kafka commit follows the SQLite one asynchronously.
        wait_for(
            "the group's offsets to equal /offsets, at lag 0",
            Duration::from_secs(60),
            || {
                let kafka = group_offsets(&brokers, &p.group);
                let same = sqlite
                    .iter()
                    .all(|(part, next)| kafka.get(part) == Some(&(Some(*next), Some(0))));
                same.then_some(())
            },
        );
    }

    // The aggregator stops: the tools show the records it has not folded as lag.
    let committed = offsets(&http(), &agg.base).unwrap();
    assert!(agg.proc.terminate(Duration::from_secs(60)).success());
    let before = truth.max_offsets.clone();
    write(&ingest.base, 40, 2, &mut truth);
    let kafka = group_offsets(&brokers, &p.group);
    for (part, next) in &committed {
        let end = truth.max_offsets[part] + 1;
        let lag = end - next;
        assert_eq!(
            kafka.get(part),
            Some(&(Some(*next), Some(lag))),
            "partition {part}"
        );
    }
    assert_ne!(
        before, truth.max_offsets,
        "records arrived while it was down"
    );

    // Someone moves the group to the log's end by hand; the aggregator still folds from SQLite.
    kafka_cli_ok(
        &brokers,
        &[
            "consumer-groups",
            "--reset-offsets",
            "--to-latest",
            "--execute",
            "--group",
            &p.group,
            "--topic",
            &p.topic,
        ],
    );
    let kafka = group_offsets(&brokers, &p.group);
    assert!(kafka.values().all(|(_, lag)| *lag == Some(0)), "{kafka:?}");
    agg.restart();
    p.wait_caught_up(&agg.base, &truth, Duration::from_secs(120));
    assert_sums(&agg.base, &truth);
}
