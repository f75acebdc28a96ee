//! Turns a point in time into per-partition offsets: for each partition, the offset of the first
//! record whose timestamp is at or after the time, or the partition's end when there is none.
//! The broker answers from its time index (ListOffsets by timestamp), which Kafka and Redpanda
//! keep for every segment; the answer is the same as reading the partition's record timestamps
//! in offset order up to the first one at or after the time.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tally_pipeline::kafka::KafkaArgs;

use crate::reader::reader;

const TIMEOUT: Duration = Duration::from_secs(30);

/// For each of `partitions`, the first offset whose record timestamp is `>= at_ms`, or the
/// partition's high watermark when no record is that late.
pub fn resolve(
    kafka: &KafkaArgs,
    partitions: &[i32],
    at_ms: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = reader(kafka)?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Offset(at_ms))?;
    }
    let answer = consumer
        .offsets_for_times(tpl, TIMEOUT)
        .with_context(|| format!("cannot look up time {at_ms} ms in topic {}", kafka.topic))?;
    let mut found = BTreeMap::new();
    for e in answer.elements() {
        let p = e.partition();
        if let Err(err) = e.error() {
            bail!("partition {p}: the broker cannot look up time {at_ms} ms: {err}");
        }
        let offset = match e.offset() {
            Offset::Offset(o) => o,
            // No record at or after the time: the partition's end.
            Offset::End | Offset::Invalid => {
                consumer
                    .fetch_watermarks(&kafka.topic, p, TIMEOUT)
                    .with_context(|| format!("cannot read the end of partition {p}"))?
                    .1
            }
            other => bail!("partition {p}: unexpected answer {other:?} for time {at_ms} ms"),
        };
        found.insert(p, offset);
    }
    tracing::info!(at_ms, offsets = ?found, "resolved a time to offsets");
    Ok(found)
}
