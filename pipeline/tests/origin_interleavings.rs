//! The global sums of a database folding several origins are a function of the prefix of each
//! origin folded, never of how the origins' records happened to be interleaved or cut into
//! commits: the same origins folded in many interleavings and batch cuts, through the real
//! `Applier` and `Store` on disk, give the same global sums, the same per-origin parts and the
//! same decision for every record, and they equal a model folded origin by origin with the
//! cross-origin rule applied to the whole set at once. The logs hold cross-origin retries,
//! retries inside one origin, request keys reused with other content (quarantined within an
//! origin), windows expiring, and timestamps going backwards.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tally_pipeline::across::{left_out, OfOrigin};
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::{Folded, PartitionBatch, Record, RequestHeader};
use tally_pipeline::origin::LOCAL;
use tally_pipeline::record::{encode_request, encode_value};
use tally_pipeline::store::{OpenMode, Store};

const NAMES: [&str; 3] = ["east", "west", "north"];
const KEYS: usize = 3;
const PARTITIONS: i32 = 2;
const WINDOW: Duration = Duration::from_secs(1);

/// One record of an origin's log: a request record (request key, index, content) or a plain
/// increment, and the step of the origin's timestamps before it.
#[derive(Debug, Clone)]
struct Rec {
    request: Option<(u8, u32, u8)>,
    plain_key: usize,
    step: i64,
}

/// A record's counter key, delta and request header. A request's record has the same key and
/// delta wherever it is sent (same content), and a distinct power of 3, so that a sum tells
/// how many times each request record counted.
fn content(r: &Rec) -> (String, i64, Option<Vec<u8>>) {
    match r.request {
        Some((req, idx, fp)) => {
            let j = (u32::from(req) * 3 + idx) * 2 + u32::from(fp);
            let key = (usize::from(req) + idx as usize + usize::from(fp)) % KEYS;
            let header = encode_request(&format!("req-{req}"), idx, &[fp; 16]);
            (format!("k{key}"), 3i64.pow(j), Some(header))
        }
        None => (format!("k{}", r.plain_key), 1, None),
    }
}

/// A record of the logs the examples below spell out.
fn rec(request: Option<(u8, u32, u8)>, plain_key: usize, step: i64) -> Rec {
    Rec {
        request,
        plain_key,
        step,
    }
}

fn partition_of(key: &str) -> i32 {
    key.as_bytes()[1] as i32 % PARTITIONS
}

/// The origins' logs: each a start time and its records.
type Logs = Vec<(i64, Vec<Rec>)>;

fn logs() -> impl Strategy<Value = Logs> {
    let rec = (
        prop_oneof![
            3 => (0u8..5, 0u32..3, prop_oneof![6 => Just(0u8), 1 => Just(1u8)]).prop_map(Some),
            1 => Just(None),
        ],
        0..KEYS,
        // Mostly forward by up to 0.6 s, sometimes back: windows of 1 s expire, clocks differ.
        -300i64..600,
    )
        .prop_map(|(request, plain_key, step)| Rec {
            request,
            plain_key,
            step,
        });
    proptest::collection::vec((0i64..800, proptest::collection::vec(rec, 0..18)), 2..=3)
}

/// Each origin's records as (partition, offset, timestamp, key, delta, header).
type Placed = Vec<Vec<(i32, i64, i64, String, i64, Option<Vec<u8>>)>>;

fn place(logs: &Logs) -> Placed {
    logs.iter()
        .map(|(start, recs)| {
            let mut ts = 10_000 + start;
            let mut next = [0i64; PARTITIONS as usize];
            recs.iter()
                .map(|r| {
                    ts += r.step;
                    let (key, delta, header) = content(r);
                    let p = partition_of(&key);
                    let off = next[p as usize];
                    next[p as usize] += 1;
                    (p, off, ts, key, delta, header)
                })
                .collect()
        })
        .collect()
}

/// What a fold ended with: global sums, each origin's parts (by name), and each record's
/// decision in its origin, by (origin name, partition, offset).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    global: BTreeMap<String, i64>,
    parts: BTreeMap<(String, String), i64>,
    decisions: BTreeMap<(String, i32, i64), Folded>,
}

/// Folds the placed logs through an applier on a fresh database file, taking the next record
/// from the origin `schedule` picks and committing where it says.
fn fold_interleaved(placed: &Placed, schedule: &[(usize, bool)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db"), "t", OpenMode::CreateNew).unwrap();
    store.bind_idempotency_window(Some(WINDOW)).unwrap();
    store.bind_local_origin(NAMES[0]).unwrap();
    let mut ids = vec![LOCAL];
    for name in &NAMES[1..placed.len()] {
        ids.push(store.add_origin(name).unwrap());
    }
    let mut applier = Applier::new(store);
    let all: Vec<i32> = (0..PARTITIONS).collect();
    for &id in &ids {
        applier.assign_of(id, &all).unwrap();
        for &p in &all {
            applier.positioned_of(id, p);
        }
    }
    let mut cursor = vec![0usize; placed.len()];
    let mut decisions = BTreeMap::new();
    let mut steps = schedule.iter().cycle();
    while cursor.iter().zip(placed).any(|(c, log)| *c < log.len()) {
        let &(pick, commit) = steps.next().unwrap();
        let open: Vec<usize> = (0..placed.len())
            .filter(|&o| cursor[o] < placed[o].len())
            .collect();
        let o = open[pick % open.len()];
        let (p, off, ts, key, delta, header) = &placed[o][cursor[o]];
        cursor[o] += 1;
        let value = encode_value(*delta);
        let record = Record {
            offset: *off,
            key: Some(key.as_bytes()),
            value: Some(&value),
            timestamp: Some(*ts),
            request: header.as_deref().map(RequestHeader::V1),
        };
        let folded = applier.fold_of(ids[o], *p, &record).unwrap();
        decisions.insert((NAMES[o].to_owned(), *p, *off), folded);
        if commit {
            let report = applier.commit().unwrap();
            assert!(report.fenced_of.is_empty(), "nobody else writes");
        }
    }
    applier.commit().unwrap();
    let store = applier.store();
    let mut global = BTreeMap::new();
    let mut parts = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        if let Some(sum) = store.key_sum(&key).unwrap() {
            global.insert(key.clone(), sum);
        }
        for (id, sum) in store.origin_key_sums(&key).unwrap() {
            let name = NAMES[ids.iter().position(|i| *i == id).unwrap()];
            parts.insert((name.to_owned(), key.clone()), sum);
        }
    }
    Outcome {
        global,
        parts,
        decisions,
    }
}

/// The model: each origin folded alone, one batch per partition, then the cross-origin rule
/// applied once to every counted record of every origin.
fn model(placed: &Placed) -> Outcome {
    let mut decisions = BTreeMap::new();
    let mut parts: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut counted = Vec::new();
    for (o, log) in placed.iter().enumerate() {
        let mut batches: Vec<PartitionBatch> = (0..PARTITIONS)
            .map(|_| {
                let mut b = PartitionBatch::new(None)
                    .with_clock(None, WINDOW)
                    .positioned();
                b.track_counted = true;
                b
            })
            .collect();
        for (p, off, ts, key, delta, header) in log {
            let value = encode_value(*delta);
            let record = Record {
                offset: *off,
                key: Some(key.as_bytes()),
                value: Some(&value),
                timestamp: Some(*ts),
                request: header.as_deref().map(RequestHeader::V1),
            };
            let folded = batches[*p as usize]
                .fold_record(&record, |_| Ok::<_, ()>(0), |_| Ok::<_, ()>(None))
                .unwrap();
            decisions.insert((NAMES[o].to_owned(), *p, *off), folded);
        }
        for b in batches {
            for (key, sum) in &b.sums {
                *parts.entry((NAMES[o].to_owned(), key.clone())).or_default() += sum;
            }
            counted.extend(b.counted.into_iter().map(|c| (NAMES[o], c)));
        }
    }
    let copies: Vec<OfOrigin<'_>> = counted
        .iter()
        .map(|(origin, counted)| OfOrigin { origin, counted })
        .collect();
    let out = left_out(&copies, WINDOW.as_millis() as i64);
    let mut global: BTreeMap<String, i64> = BTreeMap::new();
    for ((_, key), sum) in &parts {
        *global.entry(key.clone()).or_default() += sum;
    }
    for (copy, out) in copies.iter().zip(out) {
        if out {
            *global.get_mut(&copy.counted.key).unwrap() -= copy.counted.delta;
        }
    }
    Outcome {
        global,
        parts,
        decisions,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn global_sums_and_decisions_do_not_depend_on_the_interleaving(
        logs in logs(),
        schedules in proptest::collection::vec(
            proptest::collection::vec((0usize..6, prop::bool::weighted(0.3)), 1..40), 3),
    ) {
        let placed = place(&logs);
        let expected = model(&placed);
        // Origin by origin, one commit at the end; then the random interleavings and cuts.
        let sequential: Vec<(usize, bool)> = vec![(0, false)];
        let first = fold_interleaved(&placed, &sequential);
        prop_assert_eq!(&first, &expected);
        for schedule in &schedules {
            let other = fold_interleaved(&placed, schedule);
            prop_assert_eq!(&other, &expected);
        }
    }
}

#[test]
fn a_retry_folded_before_its_original_counts_once_and_the_same() {
    // East's copy of req-0 is stamped later than west's, but folded first; then west's arrives.
    let logs: Logs = vec![
        (500, vec![rec(Some((0, 0, 0)), 0, 0), rec(None, 0, 10)]),
        (
            0,
            vec![rec(Some((0, 0, 0)), 0, 0), rec(Some((0, 0, 0)), 0, 2_000)],
        ),
    ];
    let placed = place(&logs);
    let east_first = fold_interleaved(&placed, &[(0, true), (0, true), (1, true)]);
    let west_first = fold_interleaved(&placed, &[(1, true)]);
    assert_eq!(east_first, west_first);
    assert_eq!(east_first, model(&placed));
    // req-0's record (3^0 = 1): once for the retry across origins, once more for west's
    // second copy, 2 s later on west's clock (a new request); plus east's plain increment.
    let key = format!("k{}", 0);
    assert_eq!(east_first.global[&key], 1 + 1 + 1);
    assert_eq!(east_first.parts[&("east".to_owned(), key.clone())], 2);
    assert_eq!(east_first.parts[&("west".to_owned(), key)], 2);
}

#[test]
fn a_copy_left_out_stays_left_out_after_the_copy_that_decided_it_was_pruned() {
    // West's copy of req-3/1 (10,000) leaves east's first copy (10,101) out. East's clock in
    // that partition then passes 12,000 (two windows), so west's copy is pruned; east's second
    // copy (12,500, a new request in east) must not bring the first one back.
    let logs: Logs = vec![
        (
            0,
            vec![
                rec(Some((0, 0, 0)), 0, 15),
                rec(Some((3, 1, 0)), 0, 86),
                rec(None, 1, 2_299),
                rec(Some((3, 1, 0)), 0, 100),
            ],
        ),
        (0, vec![rec(Some((3, 1, 0)), 0, 0)]),
    ];
    let placed = place(&logs);
    let expected = model(&placed);
    let one_by_one = [(1, true), (0, true), (0, true), (0, true), (0, true)];
    assert_eq!(fold_interleaved(&placed, &one_by_one), expected);
    assert_eq!(fold_interleaved(&placed, &[(0, false)]), expected);
    // Twice req-3/1 (3^20: west's, and east's second) and the plain increment, all on k1.
    assert_eq!(expected.global["k1"], 2 * 3i64.pow(20) + 1);
}

#[test]
fn a_later_record_of_a_request_seen_before_still_meets_the_other_origins_copies() {
    // West sees req-0 at 10,000 and again (index 2) at 11,068: the first is dead by then, so
    // a new request starts there. Its index 0 comes at 11,451, after west's clock passed
    // 11,573: it belongs to the request first seen at 11,068, within a window of east's copy
    // (10,572), which must therefore still be there to leave it out. Found by the property.
    let logs: Logs = vec![
        (572, vec![rec(Some((0, 0, 0)), 0, 0)]),
        (
            0,
            vec![
                rec(Some((0, 0, 0)), 0, 0),
                rec(Some((0, 2, 0)), 0, 1_068),
                rec(None, 2, 505),
                rec(Some((0, 0, 0)), 0, -122),
            ],
        ),
    ];
    let placed = place(&logs);
    let expected = model(&placed);
    let schedule = [(1, true), (0, true), (0, true), (0, true), (0, true)];
    assert_eq!(fold_interleaved(&placed, &schedule), expected);
    // req-0/0 counted once in the global sum, twice in west's part, once in east's.
    assert_eq!(expected.global["k0"], 1);
    let part = |o: &str| expected.parts[&(o.to_owned(), "k0".to_owned())];
    assert_eq!((part("west"), part("east")), (2, 1));
}
