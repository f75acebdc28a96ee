//! Apache Kafka's own command-line tools through `infra/kafka-cli.sh`, against a test broker:
//! the topics Tally creates are listed, described and configured as Tally says.

mod common;

use std::process::{Command, Output};

use common::Pipeline;
use tally_testkit::workspace_root;

/// `infra/kafka-cli.sh ARGS...` with `TALLY_BROKERS` set to `brokers`.
pub fn kafka_cli(brokers: &str, args: &[&str]) -> Output {
    Command::new(workspace_root().join("infra/kafka-cli.sh"))
        .args(args)
        .env("TALLY_BROKERS", brokers)
        .output()
        .expect("cannot run infra/kafka-cli.sh")
}

/// Its standard output, asserting exit 0.
pub fn kafka_cli_ok(brokers: &str, args: &[&str]) -> String {
    let out = kafka_cli(brokers, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "infra/kafka-cli.sh {args:?} exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn kafka_cli_lists_describes_and_configures_tallys_topic() {
    let p = Pipeline::new(3);
    // Ingest creates the topic at start.
    let _ingest = p.ingest(&[]);
    let brokers = p.broker.addr();

    let list = kafka_cli_ok(&brokers, &["topics", "--list"]);
    assert!(list.lines().any(|l| l.trim() == p.topic), "{list}");

    let describe = kafka_cli_ok(&brokers, &["topics", "--describe", "--topic", &p.topic]);
    assert!(describe.contains("PartitionCount: 3"), "{describe}");
    assert_eq!(describe.matches("Partition: ").count(), 3, "{describe}");

    let configs = kafka_cli_ok(
        &brokers,
        &[
            "configs",
            "--describe",
            "--entity-type",
            "topics",
            "--entity-name",
            &p.topic,
        ],
    );
    for setting in ["retention.ms=-1", "retention.bytes=-1", "cleanup.policy=delete"] {
        assert!(configs.contains(setting), "{setting} missing:\n{configs}");
    }

    // A tool it does not know: exit 2 and one line saying what to use.
    let out = kafka_cli(&brokers, &["consumer-group"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: unknown Kafka tool") && err.contains("consumer-groups"), "{err}");
}
