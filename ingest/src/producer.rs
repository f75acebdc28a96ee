//! The append side: one idempotent, acks=all producer, and `append`, which resolves only when
//! the broker acknowledged every record of a request.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tally_http::ApiError;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::record::encode_value;
use warp::http::StatusCode;

use crate::parse::Increment;

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub partition: i32,
    pub offset: i64,
}

pub struct Appender {
    producer: FutureProducer,
    topic: String,
}

impl Appender {
    pub fn new(kafka: &KafkaArgs, delivery_timeout: Duration) -> anyhow::Result<Self> {
        let producer = kafka
            .producer(delivery_timeout)
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Appender {
            producer,
            topic: kafka.topic.clone(),
        })
    }

    /// Appends the increments, each keyed by its key, and waits for every acknowledgement.
    /// An error means the request as a whole failed; records already enqueued may still land
    /// (a client that retries should send an idempotency key).
    pub async fn append(&self, incs: &[Increment]) -> Result<Vec<Landed>, ApiError> {
        let mut pending = Vec::with_capacity(incs.len());
        for inc in incs {
            let value = encode_value(inc.value);
            let record = FutureRecord::to(&self.topic)
                .key(inc.key.as_bytes())
                .payload(&value);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => return Err(unavailable(&e)),
            }
        }
        let mut landed = Vec::with_capacity(pending.len());
        for result in join_all(pending).await {
            match result {
                Ok(Ok(d)) => landed.push(Landed {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => return Err(unavailable(&e)),
                Err(_canceled) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "producer_closed",
                        "the producer is shutting down",
                    )
                    .retry_after(1))
                }
            }
        }
        Ok(landed)
    }

    /// Waits for everything enqueued to be delivered (or to fail), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("producer did not flush in time")
    }
}

fn unavailable(e: &KafkaError) -> ApiError {
    let (code, message) = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ("overloaded", "the producer queue is full".to_owned()),
        Some(RDKafkaErrorCode::MessageTimedOut) => (
            "broker_timeout",
            "the broker did not acknowledge in time; the increment may or may not have been appended".to_owned(),
        ),
        _ => ("broker_unavailable", format!("the broker did not accept the increment: {e}")),
    };
    tracing::warn!(error = %e, code, "append failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
}
