//! A read never answers 200 with a sum its database cannot vouch for (issue 29). The
//! misconfiguration of the issue: aggregators of one group, each on a database of its own, none
//! with `--advertise-url` (the mode for one shared file). Under idempotent load through ingest
//! (request `j` on a key sends `3^j`, [`tally_testkit::ledger`]): a member is SIGKILLed and
//! restarted at once (as systemd would) while a third joins with an empty database; then a
//! member is killed for good (the issue's own sequence). Every read answered 200, while the load
//! runs and after it, is checked against what was sent and acknowledged at that moment
//! ([`common::reads`]), losses and doubles counted apart: none may be wrong. Each key is
//! answered by exactly one member, its owner, and refused by the others with
//! `owner_not_shared`; listings, `/top` and `/rejected` are refused the same way; every member
//! says the group is mixed (one WARN line per process, `/readyz`'s body, a gauge).
//!
//! The same sequence on one shared database file: every member answers every key, listing and
//! `/top` exactly, and none says the group is mixed. The other documented mode (a database each
//! with `--advertise-url`) runs the same sequence in `scale_out.rs`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::members::{assert_exact_through, start_load, Acked};
use common::reads::{every_key_through_every_member, watch, Seen, Watch};
use common::{owned_partitions, Pipeline, Service};
use serde_json::Value;
use tally_testkit::client::http;
use tally_testkit::wait_for;

const PARTITIONS: i32 = 6;

/// Waits until `members` own every partition between them, each once: the group has settled
/// (a killed member's session expired, the joined one has its share).
fn wait_settled(members: &[&Service]) {
    wait_for("the group to settle", Duration::from_secs(120), || {
        let mut all = Vec::new();
        for m in members {
            let o = owned_partitions(&m.base);
            if o.is_empty() {
                return None;
            }
            all.extend(o);
        }
        let distinct: BTreeSet<i32> = all.iter().copied().collect();
        (all.len() == PARTITIONS as usize && distinct.len() == all.len()).then_some(())
    });
}

fn mixed_gauge(base: &str) -> Option<f64> {
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("tally_group_mixed_databases "))
        .and_then(|v| v.trim().parse().ok())
}

fn ready_body(base: &str) -> Value {
    wait_for("/readyz 200", Duration::from_secs(90), || {
        let r = http().get(format!("{base}/readyz")).send().ok()?;
        (r.status() == 200).then(|| r.json().ok()).flatten()
    })
}

/// Reads over many keys through `member`: the status and error code of each.
fn many_key_reads(member: &Service) -> Vec<(String, u16, String)> {
    ["/sums?limit=7", "/top?limit=5", "/rejected"]
        .iter()
        .map(|path| {
            let r = http().get(format!("{}{path}", member.base)).send().unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
            (path.to_string(), status, code)
        })
        .collect()
}

/// No 200 was wrong, losses and doubles apart.
fn assert_no_wrong_answer(what: &str, seen: &Seen) {
    eprintln!(
        "{what}: {} answers 200 checked, {} refused (owner_not_shared), {} other; \
         {} lost, {} doubled",
        seen.ok, seen.refused, seen.other, seen.lost, seen.doubled
    );
    assert_eq!(
        (seen.lost, seen.doubled),
        (0, 0),
        "{what}: lost/doubled in 200 answers:\n{}",
        seen.wrong.join("\n")
    );
    assert!(seen.wrong.is_empty(), "{what}:\n{}", seen.wrong.join("\n"));
    assert!(seen.ok > 0, "{what}: no read answered 200");
}

/// The mixed group is said by `member`, once per process start (`starts`).
fn assert_says_mixed(member: &Service, starts: usize) {
    let gauge = wait_for("the mixed gauge", Duration::from_secs(30), || {
        mixed_gauge(&member.base).filter(|g| *g == 1.0)
    });
    assert_eq!(gauge, 1.0);
    let body = ready_body(&member.base);
    let why = body["mixed_databases"].as_str().unwrap_or_default();
    assert!(why.contains("--advertise-url"), "{}: {body}", member.base);
    let log = member.proc.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("mixed group"))
        .count();
    assert!(
        (1..=starts).contains(&warned),
        "{}: {warned} WARN lines about the mixed group for {starts} process starts",
        member.base
    );
}

/// Load through `ingest` for a few seconds with reads through `members` checked all along;
/// `fault` strikes after two seconds (and may add a member to the reads). What the reads saw.
fn under_load(
    ingest: &str,
    acked: &Arc<Mutex<Acked>>,
    members: &[&str],
    phase: &str,
    fault: impl FnOnce(&Watch),
) -> Seen {
    let reads = watch(members, acked);
    let l = start_load(ingest, acked, phase);
    std::thread::sleep(Duration::from_secs(2));
    fault(&reads);
    std::thread::sleep(Duration::from_secs(4));
    l.finish();
    reads.finish()
}

#[test]
fn members_on_databases_of_their_own_without_urls_never_answer_a_wrong_sum() {
    let p = Pipeline::new(PARTITIONS);
    let mut a = p.unshared("a"); // creates the topic
    let ingest = p.ingest(&[]);
    let mut b = p.unshared("b");
    let acked = Arc::new(Mutex::new(Acked::default()));

    // b is killed and restarted at once under load; c joins with an empty database.
    let mut c = None;
    let first = [a.base.clone(), b.base.clone()];
    let during = under_load(
        &ingest.base,
        &acked,
        &[&first[0], &first[1]],
        "restart",
        |reads| {
            b.proc.kill();
            b.restart();
            let joined = p.unshared("c");
            reads.add(&joined.base);
            c = Some(joined);
        },
    );
    let c = c.unwrap();
    assert_no_wrong_answer("kill, restart and join, during the load", &during);
    wait_settled(&[&a, &b, &c]);
    {
        let acked = acked.lock().unwrap();
        let after = every_key_through_every_member(&[&a.base, &b.base, &c.base], &acked);
        assert_no_wrong_answer("kill, restart and join, after the load", &after);
        assert_only_owners_answer(&after, &acked);
    }
    for m in [&a, &b, &c] {
        for (path, status, code) in many_key_reads(m) {
            assert_eq!(
                (status, code.as_str()),
                (503, "owner_not_shared"),
                "{}{path}",
                m.base
            );
        }
    }
    assert_says_mixed(&a, 1);
    assert_says_mixed(&b, 2);
    assert_says_mixed(&c, 1);

    // a is killed for good under load (the sequence): b and c take its partitions
    // over, each from what its own database holds of them.
    let during = under_load(&ingest.base, &acked, &[&b.base, &c.base], "gone", |_| {
        a.proc.kill()
    });
    assert_no_wrong_answer("a killed for good, during the load", &during);
    wait_settled(&[&b, &c]);
    let acked = acked.lock().unwrap();
    let after = every_key_through_every_member(&[&b.base, &c.base], &acked);
    assert_no_wrong_answer("a killed for good, after the load", &after);
    assert_only_owners_answer(&after, &acked);
    assert_says_mixed(&b, 2);
    assert_says_mixed(&c, 1);
    assert!(
        acked.truth.acknowledged > 100,
        "{}",
        acked.truth.acknowledged
    );
}

/// Each key was answered by exactly one member, its owner, and refused by name elsewhere.
fn assert_only_owners_answer(after: &Seen, acked: &Acked) {
    let not_one: Vec<_> = after.answered.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        not_one.is_empty(),
        "keys not answered by exactly one member: {not_one:?}"
    );
    assert_eq!(after.answered.len(), acked.ledgers.len());
    assert!(after.refused > 0, "the other members refused by name");
}

#[test]
fn members_on_one_shared_database_answer_every_key_exactly() {
    let p = Pipeline::new(PARTITIONS);
    let mut a = p.aggregator(&[]);
    let ingest = p.ingest(&[]);
    let mut b = p.aggregator(&[]);
    let acked = Arc::new(Mutex::new(Acked::default()));

    let mut c = None;
    let first = [a.base.clone(), b.base.clone()];
    let during = under_load(
        &ingest.base,
        &acked,
        &[&first[0], &first[1]],
        "restart",
        |reads| {
            b.proc.kill();
            b.restart();
            let joined = p.aggregator(&[]);
            reads.add(&joined.base);
            c = Some(joined);
        },
    );
    let c = c.unwrap();
    assert_no_wrong_answer("shared: kill, restart and join, during the load", &during);
    assert_eq!(during.refused, 0, "nothing refused on one shared database");
    wait_settled(&[&a, &b, &c]);
    {
        let acked = acked.lock().unwrap();
        let members = [&a.base[..], &b.base, &c.base];
        let after = every_key_through_every_member(&members, &acked);
        assert_no_wrong_answer("shared: kill, restart and join, after the load", &after);
        assert_eq!(after.refused, 0);
        assert!(
            after.answered.values().all(|n| *n == 3),
            "every member answers every key"
        );
        for m in [&a, &b, &c] {
            assert_exact_through(m, &acked);
            assert_eq!(mixed_gauge(&m.base), Some(0.0), "{}", m.base);
            let body = ready_body(&m.base);
            assert!(body.get("mixed_databases").is_none(), "{body}");
        }
    }

    let during = under_load(&ingest.base, &acked, &[&b.base, &c.base], "gone", |_| {
        a.proc.kill()
    });
    assert_no_wrong_answer("shared: a killed for good, during the load", &during);
    wait_settled(&[&b, &c]);
    let acked = acked.lock().unwrap();
    let after = every_key_through_every_member(&[&b.base, &c.base], &acked);
    assert_no_wrong_answer("shared: a killed for good, after the load", &after);
    assert_eq!(after.refused, 0);
    for m in [&b, &c] {
        assert_exact_through(m, &acked);
    }
}
