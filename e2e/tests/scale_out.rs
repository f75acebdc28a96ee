//! Aggregators with a database each (issue 16, first part): one group, every member on its own
//! SQLite file, reads through any member. Under load through ingest, a member is killed and
//! restarted at once (as systemd would), a new member with an empty database joins, and one
//! leaves for good; after each step every key read through every member, with the
//! read-your-writes token of its last acknowledged write, equals the ground truth, losses and
//! doubles counted apart. Ingest's partitioner and the members' routing agree
//! (`tally_pipeline::partition::partition_for` against the partition ingest reported).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::members::{check, start_load, Acked};
use common::{Pipeline, Service};

const PARTITIONS: i32 = 6;

/// Reads every key through `member`: (lost, doubled, answers served by another member).
fn check_member(member: &Service, acked: &Acked) -> (i64, i64, usize) {
    let r = check(&member.base, acked);
    (r.lost, r.doubled, r.forwarded)
}

#[test]
fn every_member_answers_every_key_through_kills_joins_and_leaves() {
    let p = Pipeline::new(PARTITIONS);
    let mut a = p.member("a"); // creates the topic
    let ingest = p.ingest(&[]);
    let mut b = p.member("b");
    let acked = Arc::new(Mutex::new(Acked::default()));

    let l = start_load(&ingest.base, &acked, "phase1");
    std::thread::sleep(Duration::from_secs(4));
    l.finish();
    {
        let acked = acked.lock().unwrap();
        for (key, p_ingest) in &acked.partition_of {
            let routed = tally_pipeline::partition::partition_for(key.as_bytes(), PARTITIONS);
            assert_eq!(routed, *p_ingest, "{key}: ingest and routing disagree");
        }
        let (la, da, fa) = check_member(&a, &acked);
        let (lb, db, fb) = check_member(&b, &acked);
        assert_eq!((la, da, lb, db), (0, 0, 0, 0), "lost/doubled through a, b");
        assert!(
            fa > 0 && fb > 0,
            "each member forwarded some reads ({fa}, {fb})"
        );
    }

    // Under load: b is killed and restarted at once; c joins with an empty database.
    let l = start_load(&ingest.base, &acked, "phase2");
    std::thread::sleep(Duration::from_secs(2));
    b.proc.kill();
    b.restart();
    let c = p.member("c");
    std::thread::sleep(Duration::from_secs(4));
    l.finish();
    {
        let acked = acked.lock().unwrap();
        for m in [&a, &b, &c] {
            let (lost, doubled, _) = check_member(m, &acked);
            assert_eq!((lost, doubled), (0, 0), "lost/doubled through {}", m.base);
        }
    }

    // a leaves for good under load: b and c take its partitions over, each from what its own
    // database holds of them, catching up from the log.
    let l = start_load(&ingest.base, &acked, "phase3");
    std::thread::sleep(Duration::from_secs(1));
    a.proc.kill();
    std::thread::sleep(Duration::from_secs(4));
    l.finish();
    let acked = acked.lock().unwrap();
    for m in [&b, &c] {
        let (lost, doubled, _) = check_member(m, &acked);
        assert_eq!((lost, doubled), (0, 0), "lost/doubled through {}", m.base);
    }
    assert!(
        acked.truth.acknowledged > 100,
        "{}",
        acked.truth.acknowledged
    );
}
