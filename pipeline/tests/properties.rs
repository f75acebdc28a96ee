//! Property tests of the record decoder and the fold: arbitrary bytes never panic, and how a
//! stream of records is cut into committed batches never changes the result.

use proptest::prelude::*;
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::Folded;
use tally_pipeline::record::{decode_key, decode_value, encode_value};
use tally_pipeline::store::Store;

type Rec = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// A record as it may appear on the topic: valid increments, extreme deltas, garbage, and
/// sometimes an idempotency key from a small set (so that retries repeat).
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
    let idem = prop_oneof![
        6 => Just(None),
        1 => (0u8..5).prop_map(|i| Some(format!("retry-{i}").into_bytes())),
    ];
    (key, value, idem)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_value(Some(&bytes));
        let _ = decode_key(Some(&bytes));
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
        // Everything in one batch.
        let mut one = Applier::new(Store::in_memory("t").unwrap());
        one.assign(&[0]).unwrap();
        let mut counted = 0;
        for (i, (k, v, id)) in records.iter().enumerate() {
            let f = one.fold(0, i as i64, k.as_deref(), v.as_deref(), id.as_deref()).unwrap();
            prop_assert!(matches!(f, Folded::Applied | Folded::Rejected | Folded::DuplicateKey));
            counted += 1;
        }
        prop_assert_eq!(counted, records.len());
        one.commit().unwrap();

        // The same records cut into many committed batches, with redeliveries after each cut.
        let mut many = Applier::new(Store::in_memory("t").unwrap());
        many.assign(&[0]).unwrap();
        for (i, (k, v, id)) in records.iter().enumerate() {
            let f = many.fold(0, i as i64, k.as_deref(), v.as_deref(), id.as_deref()).unwrap();
            prop_assert!(matches!(f, Folded::Applied | Folded::Rejected | Folded::DuplicateKey));
            if cuts[i] {
                many.commit().unwrap();
                // A redelivery of the record just committed is ignored.
                let again = many.fold(0, i as i64, k.as_deref(), v.as_deref(), id.as_deref()).unwrap();
                prop_assert_eq!(again, Folded::Duplicate);
            }
        }
        many.commit().unwrap();

        let (a, b) = (one.store().snapshot().unwrap(), many.store().snapshot().unwrap());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.offsets.get(&0).copied(), Some(records.len() as i64));
    }
}
