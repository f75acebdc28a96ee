//! Aggregators with a database each (issue 16, first part): one group, every member on its own
//! SQLite file, reads through any member. Under load through ingest, a member is killed and
//! restarted at once (as systemd would), a new member with an empty database joins, and one
//! leaves for good; after each step every key read through every member, with the
//! read-your-writes token of its last acknowledged write, equals the ground truth, losses and
//! doubles counted apart, one key at a time, in a listing gathered from every owner, in `/top`
//! and `/rejected`. A warm standby takes a dead member's partitions over exactly. Ingest's
//! partitioner and the members' routing agree
//! (`tally_pipeline::partition::partition_for` against the partition ingest reported).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::members::{assert_exact_through, check, check_listing, start_load, wait_split, Acked};
use common::{owned_partitions, Pipeline, Service};
use serde_json::Value;
use tally_testkit::client::http;

const PARTITIONS: i32 = 6;

/// Reads every key through `member`: (lost, doubled, answers served by another member).
fn check_member(member: &Service, acked: &Acked) -> (i64, i64, usize) {
    let r = check(&member.base, acked);
    (r.lost, r.doubled, r.forwarded)
}

/// Posts a request twice under one idempotency key, the second time with another value: the
/// first counts (added to the ground truth), the second is quarantined. Returns where the
/// second landed.
fn reuse_an_idempotency_key(ingest: &str, acked: &Mutex<Acked>) -> (i32, i64) {
    let c = http();
    let mut landed = Vec::new();
    for value in ["5", "6"] {
        let r: Value = c
            .post(format!("{ingest}/increment"))
            .header("idempotency-key", "reused-once")
            .form(&[("key", "q"), ("value", value)])
            .send()
            .unwrap()
            .json()
            .unwrap();
        let at = (
            r["partition"].as_i64().unwrap() as i32,
            r["offset"].as_i64().unwrap(),
        );
        let mut a = acked.lock().unwrap();
        a.truth.landed(at.0, at.1);
        a.partition_of.insert("q".into(), at.0);
        a.last_offset.insert("q".into(), at.1);
        landed.push(at);
    }
    acked.lock().unwrap().truth.add("q", 5);
    landed[1]
}

#[test]
fn every_member_answers_every_key_through_kills_joins_and_leaves() {
    let p = Pipeline::new(PARTITIONS);
    let mut a = p.member("a"); // creates the topic
    let ingest = p.ingest(&[]);
    let mut b = p.member("b");
    let acked = Arc::new(Mutex::new(Acked::default()));

    let l = start_load(&ingest.base, &acked, "phase1");
    l.wait_acknowledged(100);
    l.finish();
    // Both members own some partitions before the reads, so each forwards some of them.
    wait_split(&[&a.base, &b.base], PARTITIONS);
    let quarantined = reuse_an_idempotency_key(&ingest.base, &acked);
    {
        let acked = acked.lock().unwrap();
        for (key, p_ingest) in &acked.partition_of {
            let routed = tally_pipeline::partition::partition_for(key.as_bytes(), PARTITIONS);
            assert_eq!(routed, *p_ingest, "{key}: ingest and routing disagree");
        }
        let (la, da, fa) = check_member(&a, &acked);
        let (lb, db, fb) = check_member(&b, &acked);
        assert_eq!((la, da, lb, db), (0, 0, 0, 0), "lost/doubled through a, b");
        for m in [&a, &b] {
            let (lost, doubled) = check_listing(m, &acked);
            assert_eq!((lost, doubled), (0, 0), "listing through {}", m.base);
        }
        assert!(
            fa > 0 && fb > 0,
            "each member forwarded some reads ({fa}, {fb})"
        );
        // Only the owner's database holds the quarantined record; every member lists it.
        for m in [&a, &b] {
            let r: Value = http()
                .get(format!("{}/rejected", m.base))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(r["count"], 1, "{}: {r}", m.base);
            assert_eq!(r["records"][0]["partition"], quarantined.0, "{r}");
            assert_eq!(r["records"][0]["offset"], quarantined.1, "{r}");
        }
    }

    // Under load: b is killed and restarted at once; c joins with an empty database.
    let l = start_load(&ingest.base, &acked, "phase2");
    l.wait_acknowledged(30);
    b.proc.kill();
    b.restart();
    let c = p.member("c");
    l.wait_acknowledged(100);
    l.finish();
    {
        let acked = acked.lock().unwrap();
        for m in [&a, &b, &c] {
            assert_exact_through(m, &acked);
        }
    }

    // a leaves for good under load: b and c take its partitions over, each from what its own
    // database holds of them, catching up from the log.
    let l = start_load(&ingest.base, &acked, "phase3");
    l.wait_acknowledged(30);
    a.proc.kill();
    l.wait_acknowledged(100);
    l.finish();
    let acked = acked.lock().unwrap();
    for m in [&b, &c] {
        assert_exact_through(m, &acked);
    }
    assert!(
        acked.truth.acknowledged > 100,
        "{}",
        acked.truth.acknowledged
    );
}

/// A warm standby (issue 16, item 3): `b` follows the partitions `a` owns into its own
/// database while `a` serves them, so when `a` dies `b` starts them from near their end. Shown
/// here: `b`'s database holds every acknowledged record of `a`'s partitions before the kill
/// (the standby followed them), and after `a` is killed under load every key read through `b`
/// equals the ground truth, losses and doubles counted apart (the standby's commits and the
/// takeover never apply a record twice or skip one). How much sooner it is exact is measured
/// by `failover-bench` (BENCHMARKS.md).
#[test]
fn a_standby_takes_a_dead_members_partitions_over_exactly() {
    let p = Pipeline::new(PARTITIONS);
    let mut a = p.member("a");
    let ingest = p.ingest(&[]);
    let b = p.member_with("b", &["--standby"]);
    let acked = Arc::new(Mutex::new(Acked::default()));

    let l = start_load(&ingest.base, &acked, "warm");
    l.wait_acknowledged(100);
    l.finish();
    // The group has settled with both members owning some partitions (waited for: how soon
    // is the schedule's).
    wait_split(&[&a.base, &b.base], PARTITIONS);
    let owned_by_a: Vec<i32> = owned_partitions(&a.base);
    assert!(
        !owned_by_a.is_empty() && owned_by_a.len() < PARTITIONS as usize,
        "a and b share the partitions: a owns {owned_by_a:?}"
    );
    {
        let acked = acked.lock().unwrap();
        let c = http();
        let warm = tally_testkit::wait_for(
            "b's standby to fold a's partitions",
            Duration::from_secs(60),
            || {
                let stored = tally_testkit::client::offsets(&c, &b.base)?;
                owned_by_a
                    .iter()
                    .all(|p| {
                        acked
                            .truth
                            .max_offsets
                            .get(p)
                            .is_none_or(|o| stored.get(p).is_some_and(|n| n > o))
                    })
                    .then_some(stored)
            },
        );
        assert!(
            owned_by_a
                .iter()
                .any(|p| warm.get(p).is_some_and(|n| *n > 0)),
            "b's database holds a's partitions: {warm:?}"
        );
        let (lost, doubled, forwarded) = check_member(&b, &acked);
        assert_eq!((lost, doubled), (0, 0), "lost/doubled through b, a alive");
        assert!(forwarded > 0, "b forwards a's keys while a owns them");
    }

    let l = start_load(&ingest.base, &acked, "takeover");
    l.wait_acknowledged(30);
    a.proc.kill();
    l.wait_acknowledged(100);
    l.finish();
    let acked = acked.lock().unwrap();
    let (lost, doubled, forwarded) = check_member(&b, &acked);
    assert_eq!(
        (lost, doubled),
        (0, 0),
        "lost/doubled through b after a died"
    );
    assert_eq!(forwarded, 0, "b owns every partition now");
    // The member took the partitions over from what its standby had committed, and the
    // standby gave them up before committing again: neither fenced the other (both folding a
    // partition would fence the slower one's commits: the compare-and-set keeps that exact,
    // the claims keep it from happening).
    let metrics = http()
        .get(format!("{}/metrics", b.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "tally_partition_commits_total",
        "tally_standby_partition_commits_total",
    ] {
        let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(name)).collect();
        assert!(
            lines.iter().any(|l| l.contains("\"committed\"")),
            "{name} has commits: {lines:?}"
        );
        let fenced: Vec<&&str> = lines.iter().filter(|l| l.contains("fenced")).collect();
        assert!(fenced.is_empty(), "{name}: {fenced:?}");
    }
}
