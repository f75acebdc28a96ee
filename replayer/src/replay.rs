//! The replay engine: reads chosen partitions of the log from a start to an end and folds them
//! with the same [`Applier`] the aggregator uses, by the same reading rules
//! ([`tally_pipeline::reader`]), committing as it goes. It is caught up when
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
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::Folded;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::kafka_log::LoggingContext;
use tally_pipeline::reader::{Fold, FoldingReader, Polled, Start};
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
    let plan = plan(&consumer, &kafka.topic, applier, &all, &from, &to)?;
    if plan.ends.is_empty() {
        return Ok(Summary::default());
    }
    let reader = FoldingReader::new(&consumer, &kafka.topic);
    reader
        .start(applier, &plan.starts, Start::Assign)
        .context("cannot assign partitions")?;
    Replay::new(reader, applier, plan).run()
}

/// Where each partition of a replay starts and ends, and how many records that makes.
struct Plan {
    starts: Vec<(i32, Option<i64>)>,
    /// The partitions to read, each with its end offset (`None`: its end when reached).
    ends: BTreeMap<i32, Option<i64>>,
    /// Records expected, for the progress bar only.
    expected_records: Option<u64>,
}

/// Takes `partitions` over in the applier and decides each one's start ([`start_offset`]) and
/// end; a partition whose start is at or past its end is given up again.
fn plan(
    consumer: &Reader,
    topic: &str,
    applier: &mut Applier,
    partitions: &[i32],
    from: &From,
    to: &To,
) -> anyhow::Result<Plan> {
    let stored = applier
        .assign(partitions)
        .context("cannot read stored offsets")?;
    if stored.iter().any(|(_, s)| s.is_some()) {
        tracing::info!(?stored, "continuing from the database's stored offsets");
    }
    let mut plan = Plan {
        starts: Vec::new(),
        ends: BTreeMap::new(),
        expected_records: Some(0),
    };
    for (p, stored) in stored {
        let wanted = match from {
            From::Offsets(m) => m.get(&p).map_or(Wanted::Default, |w| Wanted::At(*w)),
            From::LogStart => Wanted::LogStart,
            _ => Wanted::Default,
        };
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .with_context(|| {
                format!("cannot read the watermarks of topic {topic} partition {p}")
            })?;
        let start =
            start_offset(topic, p, stored, wanted, low, high).map_err(anyhow::Error::msg)?;
        let end = match to {
            To::Offsets(m) => m.get(&p).copied(),
            _ => None,
        };
        if end.is_some_and(|e| start >= e) {
            applier.discard(&[p]);
            continue;
        }
        plan.expected_records = plan
            .expected_records
            .zip(estimate(high, start, end))
            .map(|(a, b)| a + b);
        plan.starts.push((p, Some(start)));
        plan.ends.insert(p, end);
    }
    Ok(plan)
}

/// A replay under way: the partitions still open, and what was folded and committed.
struct Replay<'r, 'a> {
    reader: FoldingReader<'r, LoggingContext>,
    applier: &'a mut Applier,
    ends: BTreeMap<i32, Option<i64>>,
    /// Partitions short of their end.
    open: BTreeSet<i32>,
    summary: Summary,
    progress: Progress,
    /// Records folded since the progress bar was last moved.
    folded: u64,
    last_commit: Instant,
    last_progress: Instant,
}

/// What one poll of a replay brought.
enum Step {
    /// A record was folded, or passed over as a marker before the partition's end.
    Record,
    /// A record of a partition already at its end, or the one record past it.
    Ignored,
    Other,
}

impl<'r, 'a> Replay<'r, 'a> {
    fn new(
        reader: FoldingReader<'r, LoggingContext>,
        applier: &'a mut Applier,
        plan: Plan,
    ) -> Self {
        Replay {
            reader,
            applier,
            open: plan.ends.keys().copied().collect(),
            summary: Summary {
                partitions: plan.ends.len(),
                ..Summary::default()
            },
            ends: plan.ends,
            progress: Progress::new(plan.expected_records),
            folded: 0,
            last_commit: Instant::now(),
            last_progress: Instant::now(),
        }
    }

    /// Reads until every partition reached its end, committing on the way.
    fn run(mut self) -> anyhow::Result<Summary> {
        // Steps since the clock was last read: it is read (for the commit, the stall check and
        // the progress report) every CLOCK_EVERY records and after anything but a record.
        let mut since_clock = 0u32;
        while !self.open.is_empty() {
            let step = self.step()?;
            if matches!(step, Step::Ignored) {
                continue;
            }
            since_clock += 1;
            if matches!(step, Step::Record) && since_clock < CLOCK_EVERY {
                continue;
            }
            since_clock = 0;
            self.on_the_clock()?;
        }
        self.progress.inc(self.folded);
        commit(self.applier, &mut self.summary)?;
        self.progress.finish();
        Ok(self.summary)
    }

    fn step(&mut self) -> anyhow::Result<Step> {
        match self.reader.poll(Duration::from_millis(100)) {
            Polled::Record(m) => self.record(&m),
            Polled::End(p) => {
                self.reached_end(p);
                Ok(Step::Other)
            }
            Polled::OutsideLog(e) => bail!(
                "topic {}: a start offset is outside the log ({e}); the log changed during the \
                 replay (records deleted, or the topic recreated): check the topic and run again",
                self.reader.topic()
            ),
            // Already logged by the context's error callback.
            Polled::Error(e @ KafkaError::MessageConsumption(_)) => {
                tracing::debug!(error = %e, "reader error");
                Ok(Step::Other)
            }
            Polled::Error(e) => {
                tracing::warn!(error = %e, "reader error");
                Ok(Step::Other)
            }
            Polled::Nothing => Ok(Step::Other),
        }
    }

    fn record(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<Step> {
        let (p, offset) = (m.partition(), m.offset());
        if !self.open.contains(&p) {
            return Ok(Step::Ignored);
        }
        let end = self.ends[&p];
        if let Some(e) = end.filter(|e| offset >= *e) {
            // Nothing was handed over between the last record folded and this one, so the
            // offsets up to the end are markers or aborted records.
            self.applier.advance_to(p, e);
            self.close(p);
            return Ok(Step::Ignored);
        }
        match self.reader.fold(self.applier, m) {
            Fold::Folded(Folded::Applied | Folded::Rejected | Folded::DuplicateKey) => {
                self.folded += 1;
            }
            Fold::Folded(_) => {}
            Fold::SoughtBack { expected } => bail!(
                "topic {} partition {p}: the log jumps from offset {expected:?} to {offset}; records are missing from the log",
                self.reader.topic()
            ),
            Fold::Retry(e) => return Err(e.into()),
        }
        if end.is_some_and(|e| offset + 1 >= e) {
            self.close(p);
        }
        Ok(Step::Record)
    }

    /// A partition's end: its batch moves past trailing markers (the reader's position), and the
    /// partition is done when that reaches its end offset (or it has none).
    fn reached_end(&mut self, p: i32) {
        if !self.open.contains(&p) {
            return;
        }
        self.reader.advance(self.applier, Some(&[p]));
        let reached = match self.ends[&p] {
            None => true,
            Some(e) => self.applier.position(p).is_some_and(|at| at >= e),
        };
        if reached {
            self.close(p);
        }
    }

    /// Moves the progress bar, commits when due, and gives up on a stall.
    fn on_the_clock(&mut self) -> anyhow::Result<()> {
        if self.folded > 0 {
            self.progress.inc(self.folded);
            self.folded = 0;
            self.last_progress = Instant::now();
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            commit(self.applier, &mut self.summary)?;
            self.last_commit = Instant::now();
        }
        if self.last_progress.elapsed() >= STALL {
            let at: Vec<String> = self
                .open
                .iter()
                .map(|p| {
                    let end = self.ends[p].map_or("its end".to_owned(), |e| e.to_string());
                    format!("{p} at {:?} of {end}", self.applier.position(*p))
                })
                .collect();
            bail!(
                "no progress for {STALL:?} on partitions short of their end offsets ({}); is the broker up and does the log reach them?",
                at.join(", ")
            );
        }
        Ok(())
    }

    /// Stops reading a finished partition.
    fn close(&mut self, p: i32) {
        if self.open.remove(&p) {
            self.reader.pause(&[p]);
        }
    }
}

/// Records between `start` and `end` (or the high watermark), for the progress bar only.
fn estimate(high: i64, start: i64, end: Option<i64>) -> Option<u64> {
    Some(end.unwrap_or(high).saturating_sub(start).max(0) as u64)
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
