//! The replayer's Kafka reader: a client of explicitly assigned partitions (no group), as the
//! replay and the lookup of times both use it.

use anyhow::Context as _;
use rdkafka::consumer::BaseConsumer;
use tally_pipeline::client_config::{self, Fetch};
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::kafka_log::LoggingContext;

/// A reader of assigned partitions; librdkafka's reports are logged once, at their level
/// ([`LoggingContext`]; reaching a partition's end, how a replay finishes, is debug).
pub type Reader = BaseConsumer<LoggingContext>;

/// Most bytes one fetch response may carry. With librdkafka's 50 MB default a broker may answer
/// the first fetch of a rebuild with the whole log in one response, so folding could not start
/// until the broker had read all of it; 2 MB responses let the fold overlap the next fetch
/// (BENCHMARKS.md, "Reading runs 7 and 8").
const FETCH_MAX_BYTES: u64 = 2 << 20;

/// A reader of explicitly assigned partitions (no group).
pub fn reader(kafka: &KafkaArgs) -> anyhow::Result<Reader> {
    let fetch = Fetch {
        max_bytes: Some(FETCH_MAX_BYTES),
        ..Fetch::default()
    };
    client_config::reader(kafka, &fetch)
        .create_with_context(LoggingContext::default())
        .context("cannot create the Kafka reader")
}
