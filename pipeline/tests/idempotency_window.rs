//! Issue 15's acceptance, on an on-disk database through the same applier the aggregator runs:
//! one request, then 1.2 million other idempotent requests (more than the old store's cap of a
//! million keys, all inside the window), then a retry of the first: counted once. The first
//! request is a batch over every partition that was only partly appended before, so the retry
//! both repeats records that landed and adds the ones that did not.

use std::collections::BTreeMap;

use tally_pipeline::applier::Applier;
use tally_pipeline::fold::{Folded, Record, DEFAULT_WINDOW};
use tally_pipeline::record::{encode_request, encode_value, request_fingerprint};
use tally_pipeline::store::{OpenMode, Store};

const PARTITIONS: i32 = 12;
const OTHERS: u64 = 1_200_000;
/// Records of the first request: two per partition.
const FIRST_LEN: u32 = 24;
/// Records of the first request appended by its failed first attempt.
const LANDED: u32 = 16;
const T0: i64 = 1_800_000_000_000;

/// Appends records to partitions the way a producer does, one offset after the other.
struct Log {
    applier: Applier,
    next: BTreeMap<i32, i64>,
    expected: BTreeMap<String, i64>,
}

impl Log {
    fn append(&mut self, p: i32, key: &str, value: i64, ts: i64, header: &[u8]) -> Folded {
        let offset = self.next.entry(p).or_insert(0);
        let v = encode_value(value);
        let record = Record::with_request(*offset, key.as_bytes(), &v, ts, header);
        *offset += 1;
        self.applier.fold(p, &record).unwrap()
    }
}

/// The first request's record `i`: its key and partition.
fn first_record(i: u32) -> (String, i32) {
    (format!("first-{i}"), (i % PARTITIONS as u32) as i32)
}

#[test]
fn a_retry_after_1_2_million_other_requests_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db"), "t", OpenMode::CreateNew).unwrap();
    assert_eq!(store.bind_idempotency_window(None).unwrap(), DEFAULT_WINDOW);
    let mut applier = Applier::new(store);
    applier
        .assign(&(0..PARTITIONS).collect::<Vec<_>>())
        .unwrap();
    let mut log = Log {
        applier,
        next: BTreeMap::new(),
        expected: BTreeMap::new(),
    };

    let contents: Vec<(String, i64)> = (0..FIRST_LEN).map(|i| (first_record(i).0, 1)).collect();
    let fp = request_fingerprint(contents.iter().map(|(k, v)| (k.as_str(), *v)));
    for i in 0..LANDED {
        let (key, p) = first_record(i);
        let f = log.append(p, &key, 1, T0, &encode_request("first", i, &fp));
        assert_eq!(f, Folded::Applied);
        *log.expected.entry(key).or_default() += 1;
    }

    // 1.2M other requests of one record each, 2 ms of log time apart: the last is 40 minutes
    // after the first request, inside the default window of an hour.
    let other_fp = request_fingerprint([("other", 1)]);
    for n in 0..OTHERS {
        let key = format!("k{}", n % 1000);
        let p = (n % PARTITIONS as u64) as i32;
        let header = encode_request(&format!("req-{n:08}"), 0, &other_fp);
        assert_eq!(
            log.append(p, &key, 1, T0 + 2 * n as i64, &header),
            Folded::Applied
        );
        *log.expected.entry(key).or_default() += 1;
        if n % 6_000 == 5_999 {
            log.applier.commit().unwrap();
        }
    }
    log.applier.commit().unwrap();
    let remembered = log.applier.store().request_count().unwrap();
    assert_eq!(
        remembered,
        OTHERS + PARTITIONS as u64,
        "every request is still remembered"
    );

    // The retry of the whole first request: the 16 records that landed are passed over, the
    // 8 that did not are counted.
    let retry_ts = T0 + 2 * OTHERS as i64 + 1_000;
    let (mut applied, mut passed) = (0, 0);
    for i in 0..FIRST_LEN {
        let (key, p) = first_record(i);
        match log.append(p, &key, 1, retry_ts, &encode_request("first", i, &fp)) {
            Folded::Applied => {
                applied += 1;
                *log.expected.entry(key).or_default() += 1;
            }
            Folded::DuplicateKey => passed += 1,
            other => panic!("record {i} of the retry: {other:?}"),
        }
    }
    log.applier.commit().unwrap();
    assert_eq!((applied, passed), (FIRST_LEN - LANDED, LANDED));

    // Ground truth against the store, losses and doubles counted apart.
    let store = log.applier.store();
    let (mut lost, mut doubled) = (0, 0);
    for (key, want) in &log.expected {
        let got = store.key_sum(key).unwrap().unwrap_or(0);
        lost += (want - got).max(0);
        doubled += (got - want).max(0);
    }
    assert_eq!((lost, doubled), (0, 0));
    for i in 0..FIRST_LEN {
        assert_eq!(store.key_sum(&first_record(i).0).unwrap(), Some(1));
    }
    let bytes: i64 = store
        .connection()
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "{remembered} requests remembered; database {bytes} bytes, {:.0} bytes per request",
        bytes as f64 / remembered as f64
    );
}
