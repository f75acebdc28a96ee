//! Turns a point in time into per-partition offsets: for each partition, the offset of the first
//! record whose timestamp is at or after the time, or the partition's end when there is none.
//!
//! The broker's time index is not trusted: tansu 0.6's ListOffsets-by-timestamp can answer
//! wrongly (see README, "Timestamps"). The answer comes from reading record timestamps from the
//! start of each partition up to the first record at or after the time. ListOffsets is asked
//! too, only to log where it disagrees.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tally_pipeline::kafka::KafkaArgs;

use crate::replay::{close, reader, Reader};

/// How long the scan may go without any message or end-of-partition before giving up.
const STALL: Duration = Duration::from_secs(60);

/// For each of `partitions`, the first offset whose record timestamp is `>= at_ms`, or the
/// offset after the partition's last record when none is (an empty partition: its low
/// watermark).
pub fn resolve(
    kafka: &KafkaArgs,
    partitions: &[i32],
    at_ms: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = reader(kafka)?;
    let hint = broker_answer(&consumer, &kafka.topic, partitions, at_ms);

    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl).context("cannot assign partitions")?;
    let mut open: BTreeSet<i32> = partitions.iter().copied().collect();
    let mut next_seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut found: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let (p, offset) = (m.partition(), m.offset());
                if !open.contains(&p) {
                    continue;
                }
                next_seen.insert(p, offset + 1);
                let ts = m.timestamp().to_millis().with_context(|| {
                    format!("partition {p} offset {offset} has no timestamp; use offsets instead")
                })?;
                if ts >= at_ms {
                    found.insert(p, offset);
                    close(&consumer, &kafka.topic, &mut open, p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                if open.contains(&p) {
                    let end = match next_seen.get(&p) {
                        Some(&n) => n,
                        None => low_watermark(&consumer, &kafka.topic, p)?,
                    };
                    found.insert(p, end);
                    close(&consumer, &kafka.topic, &mut open, p);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reader error"),
            None => {}
        }
        if last_progress.elapsed() >= STALL {
            bail!("no record nor end of partition for {STALL:?} on partitions {open:?}; is the broker up?");
        }
    }
    for (p, o) in &found {
        match hint.get(p) {
            Some(h) if h == o => {}
            h => tracing::warn!(
                partition = p,
                at_ms,
                from_record_timestamps = o,
                from_list_offsets = ?h,
                "the broker's ListOffsets disagrees with record timestamps; using record timestamps"
            ),
        }
    }
    tracing::info!(at_ms, offsets = ?found, "resolved a time to offsets by record timestamps");
    Ok(found)
}

/// What the broker's ListOffsets-by-timestamp answers (empty when it fails), for comparison only.
fn broker_answer(
    consumer: &Reader,
    topic: &str,
    partitions: &[i32],
    at_ms: i64,
) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        if tpl
            .add_partition_offset(topic, p, Offset::Offset(at_ms))
            .is_err()
        {
            return BTreeMap::new();
        }
    }
    match consumer.offsets_for_times(tpl, Duration::from_secs(10)) {
        Ok(answer) => answer
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "ListOffsets by timestamp failed");
            BTreeMap::new()
        }
    }
}

fn low_watermark(consumer: &Reader, topic: &str, p: i32) -> anyhow::Result<i64> {
    let (low, _) = consumer
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .with_context(|| format!("cannot read the start of partition {p}"))?;
    Ok(low.max(0))
}
