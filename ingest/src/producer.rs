//! The append side: one idempotent, acks=all producer, and `append`, which resolves only when
//! the broker acknowledged every record of a request. The producer's queue is bounded
//! (`queue.buffering.max.messages`): a full queue fails a request at once with 503, and a
//! request whose records the broker does not acknowledge within the delivery timeout fails
//! with 503 then, so no request waits without bound. librdkafka's message timeout is the same
//! delivery timeout, so records of a failed request do not stay queued past it; after such a
//! timeout the idempotent producer bumps its epoch (KIP-360) and goes on without a restart.
//! A 503 never says the record is absent: it may have been appended, and a client that
//! retries sends an idempotency key: then every record of the request carries a request header
//! (the key, the record's index in the request, a fingerprint of the request's content), which
//! is what lets the aggregator count a retried request's records once each.

use crate::contract::Code;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientContext;
use tally_http::{ApiError, ErrorCode};
use tally_pipeline::client_config;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::kafka_log::{ClientLog, Verdict};
use tally_pipeline::record::{encode_request, encode_value, request_fingerprint, REQUEST_HEADER};
use warp::http::StatusCode;

use crate::parse::Increment;
use crate::telemetry;

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub partition: i32,
    pub offset: i64,
}

/// A request's idempotency key and the fingerprint of its content: what each of its records'
/// request header carries besides the record's index.
struct RequestId<'a> {
    key: &'a str,
    fingerprint: [u8; 16],
}

impl<'a> RequestId<'a> {
    fn new(key: &'a str, incs: &[Increment]) -> Self {
        RequestId {
            key,
            fingerprint: request_fingerprint(incs.iter().map(|i| (i.key.as_str(), i.value))),
        }
    }

    /// The header value of record `index`.
    fn header(&self, index: usize) -> Vec<u8> {
        encode_request(self.key, index as u32, &self.fingerprint)
    }
}

/// Counts and logs the errors librdkafka reports outside any request (lost connections...),
/// each once ([`ClientLog`]: an unreachable broker is a warning until the outage lasts).
#[derive(Default)]
pub struct Ctx(ClientLog);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(self.0.error(&error, reason), Verdict::Skip | Verdict::Debug) {
            metrics::counter!(telemetry::CLIENT_ERRORS).increment(1);
        }
    }
}

pub struct Appender {
    producer: FutureProducer<Ctx>,
    topic: String,
    delivery_timeout: Duration,
    metrics: telemetry::Produce,
    ends: telemetry::AckedEnds,
}

impl Appender {
    pub fn new(
        kafka: &KafkaArgs,
        delivery_timeout: Duration,
        max_queued_records: u64,
    ) -> anyhow::Result<Self> {
        let producer = client_config::producer(kafka, delivery_timeout, Some(max_queued_records))
            .create_with_context(Ctx::default())
            .context("cannot create the Kafka producer")?;
        Ok(Appender {
            producer,
            topic: kafka.topic.clone(),
            delivery_timeout,
            metrics: telemetry::Produce::new(),
            ends: telemetry::AckedEnds::default(),
        })
    }

    /// Appends the increments, each keyed by its key, and waits for every acknowledgement.
    /// An error means the request as a whole failed; records already enqueued may still land
    /// (a client that retries should send an idempotency key).
    pub async fn append(
        &self,
        incs: &[Increment],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<Landed>, ApiError> {
        let started = Instant::now();
        let result = self.append_inner(incs, idempotency_key).await;
        let elapsed = started.elapsed().as_secs_f64();
        match &result {
            Ok(landed) => {
                self.metrics.ok.record(elapsed);
                self.metrics.accepted.increment(landed.len() as u64);
                self.ends
                    .landed(landed.iter().map(|l| (l.partition, l.offset)));
            }
            Err(_) => metrics::histogram!(telemetry::PRODUCE_SECONDS, "outcome" => "error")
                .record(elapsed),
        }
        result
    }

    async fn append_inner(
        &self,
        incs: &[Increment],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<Landed>, ApiError> {
        let request = idempotency_key.map(|k| RequestId::new(k, incs));
        let mut pending = Vec::with_capacity(incs.len());
        for (i, inc) in incs.iter().enumerate() {
            let value = encode_value(inc.value);
            let header = request.as_ref().map(|r| r.header(i));
            let mut record = FutureRecord::to(&self.topic)
                .key(inc.key.as_bytes())
                .payload(&value);
            if let Some(header) = &header {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: REQUEST_HEADER,
                    value: Some(header.as_slice()),
                }));
            }
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => return Err(unavailable(&e)),
            }
        }
        // librdkafka's own message timeout can fire seconds late (in-flight requests, timer
        // scans); this deadline is the one a client can rely on.
        let Ok(results) = tokio::time::timeout(self.delivery_timeout, join_all(pending)).await
        else {
            metrics::counter!(telemetry::BROKER_ERRORS, "code" => "broker_timeout").increment(1);
            tracing::warn!(timeout = ?self.delivery_timeout, "no acknowledgement within the delivery timeout");
            return Err(timed_out());
        };
        let mut landed = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(Ok(d)) => landed.push(Landed {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => return Err(unavailable(&e)),
                Err(_canceled) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Code::ProducerClosed,
                        "the producer is shutting down",
                    )
                    .retry_after(1))
                }
            }
        }
        Ok(landed)
    }

    /// Sets the gauges of the acknowledged log ends ([`telemetry::ACKED_END`]).
    pub fn publish_ends(&self) {
        self.ends.publish();
    }

    /// Records enqueued and not yet acknowledged or failed.
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// True when the broker answered a metadata request for the topic within `timeout` and
    /// the topic has partitions. Blocking: call it off the async threads.
    pub fn has_metadata(&self, timeout: Duration) -> bool {
        match self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
        {
            Ok(md) => md.topics().iter().any(|t| {
                t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()
            }),
            Err(e) => {
                tracing::debug!(error = %e, "metadata request failed");
                false
            }
        }
    }

    /// Waits for everything enqueued to be delivered (or to fail), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("producer did not flush in time")
    }
}

const TIMED_OUT: &str =
    "the broker did not acknowledge in time; the increment may or may not have been appended";

fn timed_out() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::BrokerTimeout,
        TIMED_OUT,
    )
    .retry_after(1)
}

fn unavailable(e: &KafkaError) -> ApiError {
    let (code, message) = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => {
            (Code::Overloaded, "the producer queue is full".to_owned())
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => (Code::BrokerTimeout, TIMED_OUT.to_owned()),
        _ => (
            Code::BrokerUnavailable,
            format!("the broker did not accept the increment: {e}"),
        ),
    };
    metrics::counter!(telemetry::BROKER_ERRORS, "code" => code.as_str()).increment(1);
    // A refusal (ACL, login) is logged once per episode there, and shown by /readyz.
    if !tally_pipeline::kafka_access::note(e, "a produce request was refused") {
        tracing::warn!(error = %e, code = code.as_str(), "append failed");
    }
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_pipeline::record::decode_request;

    #[test]
    fn every_record_of_a_request_names_the_request_and_its_index() {
        let incs = [
            Increment {
                key: "a".into(),
                value: 1,
            },
            Increment {
                key: "b".into(),
                value: 2,
            },
        ];
        let id = RequestId::new("r1", &incs);
        let (h0, h1) = (
            decode_request(&id.header(0)).unwrap(),
            decode_request(&id.header(1)).unwrap(),
        );
        assert_eq!((h0.key.as_str(), h0.index, h1.index), ("r1", 0, 1));
        assert_eq!(h0.fingerprint, h1.fingerprint);
        assert_eq!(h0.fingerprint, request_fingerprint([("a", 1), ("b", 2)]));
        assert_ne!(h0.fingerprint, RequestId::new("r1", &incs[..1]).fingerprint);
    }
}
