//! Helpers for the aggregator's unit tests.

use tally_pipeline::fold::PartitionBatch;
use tally_pipeline::record::encode_value;

/// A batch (starting from nothing stored) that folds `keys` as increments at offsets 0, 1, ...
pub(crate) fn batch_of(keys: &[(&str, i64)]) -> PartitionBatch {
    let mut b = PartitionBatch::new(None);
    for (i, (k, d)) in keys.iter().enumerate() {
        b.fold(
            i as i64,
            Some(k.as_bytes()),
            Some(&encode_value(*d)),
            |_| Ok::<_, std::convert::Infallible>(0),
        )
        .unwrap();
    }
    b
}
