//! Aggregators as hosts (issue 16, item 4): each member of the group runs in a network
//! namespace of its own ([`tally_testkit::netns`]), on a database directory of its own, and
//! listens on and advertises its own address; Apache Kafka listens on the bridge, ingest runs
//! in the root namespace. Under load through ingest (one increment per request, with an
//! idempotency key, retried until acknowledged; the ground truth is what was acknowledged):
//!
//! 1. a member is SIGKILLed and restarted at once, in the same namespace on the same database
//!    (as systemd would);
//! 2. a fourth member joins from a new namespace with an empty database;
//! 3. a member is cut off the network, so the group gives its partitions to the others after
//!    the session timeout; it is then healed and rejoins;
//! 4. a member leaves for good (SIGTERM).
//!
//! After each step the load stops and every key is read through every live member with the
//! read-your-writes token of the key's last acknowledged write: each answer equals the ground
//! truth, losses and doubles counted apart request by request (request `j` on a key sends
//! `3^j`, [`tally_testkit::ledger`]). Every member forwards some reads (the
//! `tally-served-by` header names another member), so no member passes by folding everything;
//! while a member is cut off, every key is answered without it, so its partitions did move.
//! Namespaces and database directories are removed on every exit path (their guards' `Drop`;
//! `Net::create` removes what a killed run left). Needs root and `ip`; one such run at a time
//! per machine (the namespaces' subnet is fixed).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::members::{check, start_load, wait_split, Acked, Reads};
use common::{Pipeline, Service};
use tally_testkit::broker::{Broker, KafkaOptions, NodeSpec};
use tally_testkit::netns::Net;
use tally_testkit::{free_port, wait_for};

const PARTITIONS: i32 = 6;

/// The members, by host: member `i` runs on `Net`'s host `i`; `d` starts in step 2.
const MEMBERS: [&str; 4] = ["a", "b", "c", "d"];
/// Acknowledgements each half of a step waits for, however fast the machine is.
const ACKS_PER_STEP: u64 = 50;

/// Flags a member gets beyond the common ones, by name; a restart keeps them (same command
/// line). `b` (killed and restarted) and `d` (joining empty) are warm standbys: they also fold
/// the partitions they do not own, and must still answer only what they own.
const EXTRA_ARGS: &[(&str, &[&str])] = &[("b", &["--standby"]), ("d", &["--standby"])];

/// One member as a host: the aggregator in its namespace and its database directory, removed
/// when the member is dropped, after the process is gone (fields drop in order).
struct Member {
    name: &'static str,
    host: usize,
    svc: Service,
    _db: tempfile::TempDir,
}

impl Member {
    /// Starts member `MEMBERS[host]` on `net`'s host `host`, on a new database directory.
    fn start(p: &Pipeline, net: &Net, host: usize) -> Member {
        let name = MEMBERS[host];
        let db = tempfile::Builder::new()
            .prefix(&format!("tally-host-{name}-"))
            .tempdir()
            .expect("cannot create the member's database directory");
        let extra = EXTRA_ARGS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, a)| a);
        let svc = p.member_on(&net.hosts[host], &db.path().join("tally.db"), extra);
        Member {
            name,
            host,
            svc,
            _db: db,
        }
    }

    fn url(&self) -> &str {
        &self.svc.base
    }
}

/// Reads every key through every member in `members` and asserts: nothing lost, nothing
/// doubled, each member forwarded some reads. Returns the reads, by member.
fn check_all(step: &str, members: &[&Member], acked: &Acked) -> Vec<Reads> {
    let urls: Vec<&str> = members.iter().map(|m| m.url()).collect();
    wait_split(&urls, PARTITIONS);
    let reads: Vec<Reads> = members.iter().map(|m| check(m.url(), acked)).collect();
    let summary = members
        .iter()
        .zip(&reads)
        .map(|(m, r)| {
            format!(
                "{} ({}): lost {}, doubled {}, forwarded {}/{}",
                m.name,
                m.url(),
                r.lost,
                r.doubled,
                r.forwarded,
                acked.truth.sums.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    println!(
        "{step}: {} acknowledged increments, {} keys; {summary}",
        acked.truth.acknowledged,
        acked.truth.sums.len()
    );
    assert!(
        reads.iter().all(|r| r.lost == 0),
        "{step}: acknowledged increments lost through some member: {summary}"
    );
    assert!(
        reads.iter().all(|r| r.doubled == 0),
        "{step}: increments doubled through some member: {summary}"
    );
    assert!(
        reads.iter().all(|r| r.forwarded > 0),
        "{step}: a member answered every key itself (no read forwarded): {summary}"
    );
    reads
}

/// URLs that served some read in `reads`.
fn servers(reads: &[Reads]) -> BTreeSet<String> {
    reads
        .iter()
        .flat_map(|r| r.served_by.values().cloned())
        .collect()
}

/// Runs load through `ingest` for `before` (and at least [`ACKS_PER_STEP`] acknowledgements),
/// then `fault`, then `after` more (and as many acknowledgements again); returns the ground
/// truth with the load stopped.
fn under_load(
    ingest: &str,
    acked: &Arc<Mutex<Acked>>,
    phase: &str,
    before: Duration,
    fault: impl FnOnce(),
    after: Duration,
) -> Acked {
    let load = start_load(ingest, acked, phase);
    std::thread::sleep(before);
    load.wait_acknowledged(ACKS_PER_STEP);
    fault();
    std::thread::sleep(after);
    load.wait_acknowledged(2 * ACKS_PER_STEP);
    load.finish();
    acked.lock().unwrap().clone()
}

#[test]
fn every_host_answers_every_key_through_kills_joins_moves_and_leaves() {
    let started = Instant::now();
    // Declared first, dropped last: after every process that runs in it or binds its bridge.
    let net = Net::create(MEMBERS.len());
    let broker = Broker::start_on(
        NodeSpec {
            id: 1,
            host: net.bridge_addr(),
            port: free_port(),
            controller_port: free_port(),
            netns: None,
        },
        KafkaOptions::default(),
    );
    let p = Pipeline::on(broker, PARTITIONS);
    let mut a = Member::start(&p, &net, 0); // creates the topic
    let ingest = p.ingest(&[]);
    let mut b = Member::start(&p, &net, 1);
    let c = Member::start(&p, &net, 2);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let secs = Duration::from_secs;

    let truth = under_load(&ingest.base, &acked, "start", secs(4), || (), secs(0));
    check_all("start", &[&a, &b, &c], &truth);

    // 1. b is SIGKILLed and restarted at once, same namespace, same database.
    let truth = under_load(
        &ingest.base,
        &acked,
        "kill",
        secs(2),
        || {
            b.svc.proc.kill();
            b.svc.restart();
        },
        secs(4),
    );
    check_all("1 kill and restart b", &[&a, &b, &c], &truth);

    // 2. d joins from host 3 with an empty database.
    let mut d = None;
    let truth = under_load(
        &ingest.base,
        &acked,
        "join",
        secs(1),
        || d = Some(Member::start(&p, &net, 3)),
        secs(4),
    );
    let d = d.expect("d started");
    let reads = check_all("2 d joins", &[&a, &b, &c, &d], &truth);
    assert!(
        servers(&reads).contains(c.url()),
        "c served no key before it was cut off: nothing to move"
    );

    // 3. c is cut off: after the session timeout the group gives its partitions to a, b, d,
    // which answer every key without it.
    let truth = under_load(
        &ingest.base,
        &acked,
        "isolate",
        secs(1),
        || net.isolate(c.host),
        secs(10),
    );
    let reads = check_all("3 c cut off", &[&a, &b, &d], &truth);
    let by_c: Vec<&String> = reads
        .iter()
        .flat_map(|r| r.served_by.iter())
        .filter(|(_, url)| *url == c.url())
        .map(|(key, _)| key)
        .collect();
    assert!(
        by_c.is_empty(),
        "served by c while it was cut off (was it?): {by_c:?}"
    );
    // Healed under load, c rejoins and is given partitions again.
    let truth = under_load(
        &ingest.base,
        &acked,
        "heal",
        secs(1),
        || net.heal(c.host),
        secs(3),
    );
    wait_for("c to serve keys again", secs(90), || {
        servers(&[check(a.url(), &truth)])
            .contains(c.url())
            .then_some(())
    });
    check_all("3 c healed", &[&a, &b, &c, &d], &truth);

    // 4. a leaves for good.
    let truth = under_load(
        &ingest.base,
        &acked,
        "leave",
        secs(1),
        || {
            let status = a.svc.proc.terminate(secs(30));
            assert!(status.success(), "a exited with {status} on SIGTERM");
        },
        secs(4),
    );
    check_all("4 a left", &[&b, &c, &d], &truth);
    assert!(
        truth.truth.acknowledged > 500,
        "too little load to show anything: {} acknowledged",
        truth.truth.acknowledged
    );
    println!("done in {:.0?}", started.elapsed());
}
