//! Origins at start, against real brokers: an aggregator given another datacenter's cluster
//! (`--origin west=BROKERS`) stores that origin's identity and checks it at every start. A
//! changed identity, another partition count, a known origin dropped without
//! `--retire-origin`, or another local name than the stored one is refused in one line with
//! exit code 2, before anything is folded or served.

mod common;

use std::time::Duration;

use common::Pipeline;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tally_testkit::broker::Broker;
use tally_testkit::process::Proc;

const EXIT: Duration = Duration::from_secs(90);

fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let out = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    for r in out {
        r.unwrap();
    }
}

/// Runs the aggregator on the pipeline's database with `extra` flags, expecting it to refuse:
/// returns its output once it exited 2.
fn refused(p: &Pipeline, extra: &[&str]) -> String {
    let mut args = p.common();
    args.extend([
        "--group".into(),
        p.group.clone(),
        "--db".into(),
        p.db().display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", tally_testkit::free_port()),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut proc = Proc::start("aggregator", &args, &[], p.dir.path());
    let status = proc.wait(EXIT);
    let log = proc.log_text();
    assert_eq!(status.code(), Some(2), "{extra:?}: {log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one line saying why: {log}");
    errors[0].to_owned()
}

#[test]
fn origins_are_checked_at_every_start_and_refused_in_one_line() {
    let _serial = common::serial();
    let p = Pipeline::new(4);
    let west = Broker::start();
    create_topic(&west, &p.topic, 4);
    let west_flag = format!("west={}", west.addr());

    // First start: the local origin is named, west is met and its identity stored.
    let mut agg = p.aggregator(&["--origin-name", "east", "--origin", &west_flag]);
    agg.proc.terminate(Duration::from_secs(30));
    let db = rusqlite::Connection::open(p.db()).unwrap();
    let (name, cluster): (String, Option<String>) = db
        .query_row(
            "SELECT name, cluster_id FROM origins WHERE id <> 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(name, "west");
    assert!(cluster.is_some(), "west's cluster id is stored");
    drop(db);

    // West's name now pointing at another cluster (the local one): refused.
    let local_flag = format!("west={}", p.broker.addr());
    let why = refused(&p, &["--origin-name", "east", "--origin", &local_flag]);
    assert!(why.contains("origin west: the cluster id is"), "{why}");
    // Another local name, or none (the stored one is east): refused.
    let why = refused(&p, &["--origin-name", "south", "--origin", &west_flag]);
    assert!(why.contains("--origin-name east"), "{why}");
    let why = refused(&p, &["--origin", &west_flag]);
    assert!(why.contains("--origin-name east"), "{why}");
    // West dropped without saying so: refused; retired on purpose: starts.
    let why = refused(&p, &["--origin-name", "east"]);
    assert!(why.contains("--retire-origin west"), "{why}");

    // Another partition count at a new origin: refused, and the origin is not stored.
    let north = Broker::start();
    create_topic(&north, &p.topic, 2);
    let north_flag = format!("north={}", north.addr());
    let why = refused(
        &p,
        &[
            "--origin-name",
            "east",
            "--origin",
            &west_flag,
            "--origin",
            &north_flag,
        ],
    );
    assert!(why.contains("same partition count"), "{why}");

    let mut agg = p.aggregator(&["--origin-name", "east", "--retire-origin", "west"]);
    agg.proc.terminate(Duration::from_secs(30));
    let retired: i64 = rusqlite::Connection::open(p.db())
        .unwrap()
        .query_row("SELECT retired FROM origins WHERE name = 'west'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(retired, 1);
    let origins: i64 = rusqlite::Connection::open(p.db())
        .unwrap()
        .query_row("SELECT count(*) FROM origins", [], |r| r.get(0))
        .unwrap();
    assert_eq!(origins, 2, "north was never stored");
}
