//! Raw produce for the benchmarks' baselines and logs: librdkafka's queue is allowed to fill,
//! and a full queue waits instead of failing.

use std::time::Duration;

use anyhow::bail;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Enqueues one record, waiting while librdkafka's queue is full; the future resolves with its
/// acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<DeliveryFuture> {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(value)) {
            Ok(d) => return Ok(d),
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => bail!("raw produce failed: {e}"),
        }
    }
}
