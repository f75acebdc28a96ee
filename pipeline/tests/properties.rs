//! Property tests of the record decoder and the fold: arbitrary bytes never panic, and how a
//! stream of records is cut into committed batches never changes the result, idempotency
//! window decisions included (they depend on the log's timestamps, never on when commits run).

use proptest::prelude::*;
use std::time::Duration;
use tally_pipeline::applier::Applier;

use tally_pipeline::fold::{Folded, Record, RequestHeader};
use tally_pipeline::record::{
    decode_key, decode_request, decode_value, encode_request, encode_value,
};
use tally_pipeline::store::Store;

/// Key, value, request header, and the step of the log's timestamp before the record.
type Rec = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Folds the `i`-th record, its timestamp `ts`.
fn fold(a: &mut Applier, i: usize, (k, v, h, _): &Rec, ts: i64) -> Folded {
    let record = Record {
        offset: i as i64,
        key: k.as_deref(),
        value: v.as_deref(),
        timestamp: Some(ts),
        request: h.as_deref().map(RequestHeader::V1),
    };
    a.fold(0, &record).unwrap()
}

/// An applier on a fresh in-memory store that remembers requests for one second of log time.
fn applier() -> Applier {
    let mut store = Store::in_memory("t").unwrap();
    store
        .bind_idempotency_window(Some(Duration::from_secs(1)))
        .unwrap();
    let mut a = Applier::new(store);
    a.assign(&[0]).unwrap();
    a
}

/// A record as it may appear on the topic: valid increments, extreme deltas, garbage, and
/// sometimes a request header from a small set of keys, indices and contents (so that retries
/// repeat and keys get reused), or a garbled one; timestamps move on by up to 0.4 s, sometimes
/// back (another producer's clock), so requests fall out of the one-second window.
fn record() -> impl Strategy<Value = Rec> {
    let key = prop_oneof![
        8 => (0u8..6).prop_map(|k| Some(format!("k{k}").into_bytes())),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Some),
        1 => Just(None),
    ];
    let value = prop_oneof![
        6 => (-1000i64..1000).prop_map(|d| Some(encode_value(d))),
        2 => prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(i64::MAX / 2)].prop_map(|d| Some(encode_value(d))),
        1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(Some),
        1 => Just(None),
    ];
    let header = prop_oneof![
        6 => Just(None),
        3 => (0u8..5, 0u32..4, 0u8..2)
            .prop_map(|(k, i, f)| Some(encode_request(&format!("retry-{k}"), i, &[f; 16]))),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
    ];
    let step = prop_oneof![9 => 0i64..400, 1 => -300i64..0];
    (key, value, header, step)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_value(Some(&bytes));
        let _ = decode_key(Some(&bytes));
        let _ = decode_request(&bytes);
        if let Ok(v) = decode_value(Some(&bytes)) {
            // Whatever decodes re-encodes to the same bytes: no two encodings of one record.
            prop_assert_eq!(encode_value(v.delta), bytes);
        }
    }

    #[test]
    fn batch_boundaries_do_not_change_the_result(
        records in proptest::collection::vec(record(), 1..120),
        cuts in proptest::collection::vec(any::<bool>(), 120),
    ) {
        let stamps: Vec<i64> = records
            .iter()
            .scan(1_000_000, |t, r| {
                *t += r.3;
                Some(*t)
            })
            .collect();
        // Everything in one batch.
        let mut one = applier();
        let mut counted = 0;
        for (i, r) in records.iter().enumerate() {
            let f = fold(&mut one, i, r, stamps[i]);
            prop_assert!(matches!(f, Folded::Applied | Folded::Rejected | Folded::DuplicateKey));
            counted += 1;
        }
        prop_assert_eq!(counted, records.len());
        one.commit().unwrap();

        // The same records cut into many committed batches, with redeliveries after each cut.
        let mut many = applier();
        for (i, r) in records.iter().enumerate() {
            let f = fold(&mut many, i, r, stamps[i]);
            prop_assert!(matches!(f, Folded::Applied | Folded::Rejected | Folded::DuplicateKey));
            if cuts[i] {
                many.commit().unwrap();
                // A redelivery of the record just committed is ignored.
                let again = fold(&mut many, i, r, stamps[i]);
                prop_assert_eq!(again, Folded::Duplicate);
            }
        }
        many.commit().unwrap();

        let (a, b) = (one.store().snapshot().unwrap(), many.store().snapshot().unwrap());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.offsets.get(&0).copied(), Some(records.len() as i64));
    }
}
