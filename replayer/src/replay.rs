//! The replay engine: reads chosen partitions of the log from a start to an end and folds them
//! with the same [`Applier`] the aggregator uses, committing as it goes. It is caught up when
//! librdkafka reports partition EOF, never by trusting the high watermark (which only sizes
//! the progress bar). Times in `--from`/`--to` become offsets through [`crate::timestamps`].
//!
//! A database that already holds offsets (`--continue`, or a snapshot taken at a point)
//! resumes at them: the start of each partition is what the database stores, as for the
//! aggregator, and a `--from` past it is refused because records in between would be missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::Folded;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::topic::{judge_position, partitions_of};

use crate::positions::{From, To};
use crate::progress::Progress;
use crate::reader::{reader, Reader};
use crate::timestamps;

/// Commit at least this often, so a killed rebuild keeps most of its work.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How long a partition may go without progress short of its end offset before giving up.
const STALL: Duration = Duration::from_secs(60);
/// Records folded in a row between two reads of the clock (for the commit, the stall check and
/// the progress report), which were four per record before (BENCHMARKS.md, "Fetch backoff").
const CLOCK_EVERY: u32 = 256;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub rejected: u64,
    pub partitions: usize,
}

/// Replays `[from, to)` of the topic into the applier's database, for every partition of the
/// topic or only those in `only`. Partitions whose start is at or past their end are skipped.
pub fn replay(
    kafka: &KafkaArgs,
    applier: &mut Applier,
    from: &From,
    to: &To,
    only: Option<&BTreeSet<i32>>,
) -> anyhow::Result<Summary> {
    let consumer = reader(kafka)?;
    let mut all = partitions_of(&consumer, &kafka.topic, Duration::from_secs(30))?;
    if let Some(only) = only {
        all.retain(|p| only.contains(p));
    }
    let from = match from {
        From::Timestamp(t) => From::Offsets(timestamps::resolve(kafka, &all, *t)?),
        other => other.clone(),
    };
    let to = match to {
        To::Timestamp(t) => To::Offsets(timestamps::resolve(kafka, &all, *t)?),
        other => other.clone(),
    };
    let stored = applier.assign(&all).context("cannot read stored offsets")?;
    if stored.iter().any(|(_, s)| s.is_some()) {
        tracing::info!(?stored, "continuing from the database's stored offsets");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    let mut expected_records: Option<u64> = Some(0);
    for (p, stored) in stored {
        let wanted = match &from {
            From::Offsets(m) => m.get(&p).map_or(Wanted::Default, |w| Wanted::At(*w)),
            From::LogStart => Wanted::LogStart,
            _ => Wanted::Default,
        };
        let (low, high) = consumer
            .fetch_watermarks(&kafka.topic, p, Duration::from_secs(30))
            .with_context(|| {
                format!(
                    "cannot read the watermarks of topic {} partition {p}",
                    kafka.topic
                )
            })?;
        let start =
            start_offset(&kafka.topic, p, stored, wanted, low, high).map_err(anyhow::Error::msg)?;
        let end = match &to {
            To::Offsets(m) => m.get(&p).copied(),
            _ => None,
        };
        if end.is_some_and(|e| start >= e) {
            applier.discard(&[p]);
            continue;
        }
        expected_records = expected_records
            .zip(estimate(high, start, end))
            .map(|(a, b)| a + b);
        tpl.add_partition_offset(&kafka.topic, p, Offset::Offset(start))?;
        ends.insert(p, end);
    }
    let mut summary = Summary {
        partitions: ends.len(),
        ..Summary::default()
    };
    if ends.is_empty() {
        return Ok(summary);
    }
    consumer.assign(&tpl).context("cannot assign partitions")?;
    // Each partition reads from exactly its start offset and cannot jump
    // (`auto.offset.reset=error`), so offsets it is not handed are markers or aborted records.
    for p in ends.keys() {
        applier.positioned(*p);
    }
    let mut open: BTreeSet<i32> = ends.keys().copied().collect();
    let mut last_commit = Instant::now();
    let mut last_progress = Instant::now();
    let mut progress = Progress::new(expected_records);
    // Records folded since the clock was last read: it is read (for the commit, the stall
    // check and the progress report) every CLOCK_EVERY records and after anything but a record.
    let (mut folded, mut since_clock) = (0u64, 0u32);
    while !open.is_empty() {
        let mut record = false;
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                record = true;
                let (p, offset) = (m.partition(), m.offset());
                if !open.contains(&p) {
                    continue;
                }
                if let Some(e) = ends[&p].filter(|e| offset >= *e) {
                    // Nothing was handed over between the last record folded and this one, so
                    // the offsets up to the end are markers or aborted records.
                    applier.advance_to(p, e);
                    close(&consumer, &kafka.topic, &mut open, p);
                    continue;
                }
                match applier.fold(p, &tally_pipeline::kafka::record_of(&m))? {
                    Folded::Applied | Folded::Rejected | Folded::DuplicateKey => folded += 1,
                    Folded::Duplicate | Folded::NotOwned => {}
                    Folded::Gap => bail!(
                        "topic {} partition {p}: the log jumps from offset {:?} to {offset}; records are missing from the log",
                        kafka.topic,
                        applier.position(p)
                    ),
                }
                if ends[&p].is_some_and(|e| offset + 1 >= e) {
                    close(&consumer, &kafka.topic, &mut open, p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if open.contains(&p) => {
                // The reader's position is past any trailing markers it consumed.
                if let Ok(Offset::Offset(at)) = position(&consumer, &kafka.topic, p) {
                    applier.advance_to(p, at);
                }
                let reached = match ends[&p] {
                    None => true,
                    Some(e) => applier.position(p).is_some_and(|at| at >= e),
                };
                if reached {
                    close(&consumer, &kafka.topic, &mut open, p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(
                e @ KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ),
            )) => bail!(
                "topic {}: a start offset is outside the log ({e}); the log changed during the \
                 replay (records deleted, or the topic recreated): check the topic and run again",
                kafka.topic
            ),
            // Already logged by the context's error callback.
            Some(Err(e @ KafkaError::MessageConsumption(_))) => {
                tracing::debug!(error = %e, "reader error")
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reader error"),
            None => {}
        }
        since_clock += 1;
        if record && since_clock < CLOCK_EVERY {
            continue;
        }
        since_clock = 0;
        if folded > 0 {
            progress.inc(folded);
            folded = 0;
            last_progress = Instant::now();
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            commit(applier, &mut summary)?;
            last_commit = Instant::now();
        }
        if last_progress.elapsed() >= STALL {
            let at: Vec<String> = open
                .iter()
                .map(|p| {
                    let end = ends[p].map_or("its end".to_owned(), |e| e.to_string());
                    format!("{p} at {:?} of {end}", applier.position(*p))
                })
                .collect();
            bail!(
                "no progress for {STALL:?} on partitions short of their end offsets ({}); is the broker up and does the log reach them?",
                at.join(", ")
            );
        }
    }
    progress.inc(folded);
    commit(applier, &mut summary)?;
    progress.finish();
    Ok(summary)
}

/// Records between `start` and `end` (or the high watermark), for the progress bar only.
fn estimate(high: i64, start: i64, end: Option<i64>) -> Option<u64> {
    Some(end.unwrap_or(high).saturating_sub(start).max(0) as u64)
}

/// The reader's position in one partition: the offset after the last record or marker it
/// handed over.
fn position(consumer: &Reader, topic: &str, p: i32) -> anyhow::Result<Offset> {
    let all = consumer.position()?;
    Ok(all
        .find_partition(topic, p)
        .map_or(Offset::Invalid, |e| e.offset()))
}

/// What `--from` asks of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Nothing said: offset 0, the whole log.
    Default,
    /// This offset.
    At(i64),
    /// Wherever the log starts now.
    LogStart,
}

/// Where a partition's replay starts, given the database's stored next offset, what `--from`
/// asks, and the log's start and end (watermarks). Refuses, in one sentence naming topic,
/// partition and offsets, any start that would skip records or read a log that is not the one
/// the database was folded from.
fn start_offset(
    topic: &str,
    p: i32,
    stored: Option<i64>,
    wanted: Wanted,
    low: i64,
    high: i64,
) -> Result<i64, String> {
    match (stored, wanted) {
        (Some(s), Wanted::At(w)) if w > s => Err(format!(
            "the database holds topic {topic} partition {p} up to offset {s} but --from starts it at {w}; \
             records in between would be missing: drop --from for partition {p} or use a new database"
        )),
        (Some(s), _) => match judge_position(s, low, high) {
            Some(why) => Err(format!(
                "{}; the database cannot be continued from this log",
                why.describe(topic, p)
            )),
            None => Ok(s),
        },
        (None, Wanted::At(w)) if w < low => Err(format!(
            "--from starts topic {topic} partition {p} at offset {w} but its log starts at {low}: \
             records {w}..{low} were deleted; start it at {low} or later"
        )),
        (None, Wanted::At(w)) if w > high => Err(format!(
            "--from starts topic {topic} partition {p} at offset {w} but its log ends at {high}; \
             start it at {high} or earlier"
        )),
        (None, Wanted::At(w)) => Ok(w),
        (None, Wanted::LogStart) => Ok(low),
        (None, Wanted::Default) if low > 0 => Err(format!(
            "topic {topic} partition {p} no longer starts at offset 0 but at {low}: records 0..{low} \
             were deleted (retention or DeleteRecords), so a replay from the beginning would miss \
             them; to rebuild from what is left, pass --from log-start (or --from {p}:{low})"
        )),
        (None, Wanted::Default) => Ok(0),
    }
}

pub(crate) fn close(consumer: &Reader, topic: &str, open: &mut BTreeSet<i32>, p: i32) {
    if open.remove(&p) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        // Stop fetching a finished partition; failure only costs some wasted fetches.
        let _ = consumer.pause(&tpl);
    }
}

fn commit(applier: &mut Applier, summary: &mut Summary) -> anyhow::Result<()> {
    let r = applier.commit().context("cannot commit to the database")?;
    if !r.fenced.is_empty() {
        bail!("{}", fenced_message(&r.fenced));
    }
    summary.records += r.records;
    summary.rejected += r.rejected;
    Ok(())
}

/// What to say when a commit was fenced: the stored offset of those partitions is no longer the
/// one this replay started from or last committed, so something else wrote them.
fn fenced_message(fenced: &[(i32, Option<i64>)]) -> String {
    let moved: Vec<String> = fenced
        .iter()
        .map(|(p, stored)| match stored {
            Some(o) => format!("{p} (now at offset {o})"),
            None => format!("{p} (now without an offset)"),
        })
        .collect();
    format!(
        "another process wrote to this database's partitions {} during the replay (an aggregator \
         or another replayer on the same file?); this replay's last commit for them was not \
         written: stop the other writer, then run rebuild --continue again",
        moved.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_names_each_partition_and_where_it_is_now() {
        let m = fenced_message(&[(0, Some(2812)), (3, None)]);
        assert!(m.starts_with("another process wrote"), "{m}");
        assert!(
            m.contains("0 (now at offset 2812), 3 (now without an offset)"),
            "{m}"
        );
        assert!(m.ends_with("run rebuild --continue again"), "{m}");
    }

    #[test]
    fn a_log_that_no_longer_starts_at_zero_needs_an_explicit_start() {
        assert_eq!(start_offset("t", 1, None, Wanted::Default, 0, 9), Ok(0));
        let e = start_offset("t", 1, None, Wanted::Default, 4, 9).unwrap_err();
        assert!(
            e.starts_with("topic t partition 1 no longer starts at offset 0 but at 4"),
            "{e}"
        );
        assert!(e.contains("--from log-start (or --from 1:4)"), "{e}");
        assert_eq!(start_offset("t", 1, None, Wanted::LogStart, 4, 9), Ok(4));
        assert_eq!(start_offset("t", 1, None, Wanted::At(6), 4, 9), Ok(6));
        assert!(start_offset("t", 1, None, Wanted::At(3), 4, 9)
            .unwrap_err()
            .contains("records 3..4 were deleted"));
        assert!(start_offset("t", 1, None, Wanted::At(10), 4, 9)
            .unwrap_err()
            .contains("its log ends at 9"));
    }

    #[test]
    fn a_stored_offset_must_lie_within_the_log() {
        assert_eq!(start_offset("t", 2, Some(5), Wanted::Default, 0, 9), Ok(5));
        assert_eq!(start_offset("t", 2, Some(5), Wanted::At(3), 0, 9), Ok(5));
        assert!(start_offset("t", 2, Some(5), Wanted::At(6), 0, 9)
            .unwrap_err()
            .contains("records in between would be missing"));
        // Deleted before folded, and a log shorter than what was folded (recreated topic).
        let e = start_offset("t", 2, Some(5), Wanted::LogStart, 7, 9).unwrap_err();
        assert!(e.contains("the log starts at offset 7"), "{e}");
        let e = start_offset("t", 2, Some(5), Wanted::Default, 0, 2).unwrap_err();
        assert!(e.contains("the log ends at offset 2"), "{e}");
    }
}
