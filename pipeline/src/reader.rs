//! The folding reader: the rules for reading partitions of one topic on one cluster into an
//! [`Applier`], written once for the aggregator's group member, its standby and the replayer.
//!
//! - **Positioning.** A partition is read from exactly the offset the applier starts it at (0
//!   when nothing is stored; never `Beginning`, which would follow a log start that moved past
//!   records nobody folded), and the consumer cannot jump (`auto.offset.reset=error`,
//!   [`crate::client_config`]). Only once the consumer accepted that position is the partition
//!   marked positioned ([`Applier::positioned`]), so that offsets the consumer does not hand over
//!   between two records (transaction markers, aborted records) are passed over.
//! - **Folding.** Each record is folded by the applier. A record past the next offset of a batch
//!   that is not positioned ([`Folded::Gap`]) makes the reader seek back to that offset; a
//!   record that cannot be folded (the database failed) is sought again, to be read once more.
//! - **Advancing.** When every fetched record is folded, a batch moves to its consumer's
//!   position, past trailing markers ([`FoldingReader::advance`]). The position counts only what
//!   `poll` handed over or skipped as a marker, in order, so it never passes a record that was
//!   not folded; after a seek librdkafka reports no position until the next record.
//! - **An offset outside the log.** A start offset the log no longer covers raises an
//!   offset-reset error (librdkafka does not say for which partition); each partition is then
//!   judged against its watermarks ([`crate::topic::judge_position`]) and the ones the log does
//!   not cover are paused and reported ([`FoldingReader::judge`]). When none is found (the
//!   watermarks moved meanwhile) every judged partition is sought again to its next offset, so
//!   the one that failed fetches again instead of idling.
//!
//! A reader is a view over one consumer and one topic: the caller owns both, and builds a
//! reader wherever it needs one (the group member also in its rebalance callback). Everything
//! a caller does with what it reads (its rebalance hooks, claims, end offsets, progress) stays
//! with the caller. One cluster, one reader: several clusters are several consumers, each read
//! through a reader of its own.
//!
//! What must not live here: a decision of what to read (assignment, claims, end offsets) or
//! when to commit.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::applier::Applier;
use crate::fold::{Folded, Record, RequestHeader};
use crate::record::{IDEMPOTENCY_HEADER, REQUEST_HEADER};
use crate::store::StoreError;
use crate::topic::{judge_position, Unreadable};

/// How long a seek or a watermark request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The rules for reading partitions of `topic` through `consumer` into an [`Applier`].
pub struct FoldingReader<'c, C: ConsumerContext + 'static> {
    consumer: &'c BaseConsumer<C>,
    topic: &'c str,
}

/// How partitions join what the consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// They replace the whole assignment (a group member's assignment, or a replay's).
    Assign,
    /// They are added to it (a standby following more partitions).
    Add,
}

/// What one `poll` brought.
pub enum Polled<'m> {
    /// A record, to [`FoldingReader::fold`].
    Record(BorrowedMessage<'m>),
    /// The partition's end was reached: everything in it so far was handed over.
    End(i32),
    /// A start offset is outside the log, for a partition librdkafka does not name: see
    /// [`FoldingReader::judge`].
    OutsideLog(KafkaError),
    /// Any other error (librdkafka also reported it to the context's error callback).
    Error(KafkaError),
    /// Nothing came within the timeout: every record fetched so far was handed over.
    Nothing,
}

/// What folding one record came to.
#[derive(Debug)]
pub enum Fold {
    /// The applier folded it (or passed it over, as a duplicate or a record of a partition it
    /// does not own).
    Folded(Folded),
    /// The record lies past the next offset of a partition that is not positioned: the reader
    /// sought back to that offset (`expected`; 0 when `None`).
    SoughtBack { expected: Option<i64> },
    /// The record could not be folded; the reader sought to it, to read it again.
    Retry(StoreError),
}

/// A partition whose next offset the log does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    pub partition: i32,
    pub why: Unreadable,
    pub log_start: i64,
    pub log_end: i64,
}

impl<'c, C: ConsumerContext + 'static> FoldingReader<'c, C> {
    pub fn new(consumer: &'c BaseConsumer<C>, topic: &'c str) -> Self {
        FoldingReader { consumer, topic }
    }

    pub fn topic(&self) -> &str {
        self.topic
    }

    /// Starts reading partitions each at its start (`None`: offset 0), as the applier gave them
    /// ([`Applier::assign`]), and marks each positioned once the consumer accepted it.
    pub fn start(
        &self,
        applier: &mut Applier,
        starts: &[(i32, Option<i64>)],
        how: Start,
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for &(p, start) in starts {
            tpl.add_partition_offset(self.topic, p, Offset::Offset(start.unwrap_or(0)))?;
        }
        match how {
            Start::Assign => self.consumer.assign(&tpl)?,
            Start::Add => self.consumer.incremental_assign(&tpl)?,
        }
        for &(p, _) in starts {
            applier.positioned(p);
        }
        Ok(())
    }

    /// Stops reading partitions and gives them up (a standby leaving them to their owner).
    pub fn leave(&self, partitions: &[i32]) -> KafkaResult<()> {
        self.consumer.incremental_unassign(&self.list(partitions))
    }

    /// Stops fetching partitions without giving them up; failing only costs wasted fetches.
    pub fn pause(&self, partitions: &[i32]) {
        let _ = self.consumer.pause(&self.list(partitions));
    }

    /// Waits up to `timeout` for the next record or event.
    pub fn poll(&self, timeout: Duration) -> Polled<'c> {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => Polled::Record(m),
            Some(Err(KafkaError::PartitionEOF(p))) => Polled::End(p),
            Some(Err(
                e @ KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ),
            )) => Polled::OutsideLog(e),
            Some(Err(e)) => Polled::Error(e),
            None => Polled::Nothing,
        }
    }

    /// Folds one record by the rules above.
    pub fn fold(&self, applier: &mut Applier, m: &BorrowedMessage<'_>) -> Fold {
        let (p, offset) = (m.partition(), m.offset());
        match applier.fold(p, &record_of(m)) {
            Ok(Folded::Gap) => {
                let expected = applier.position(p);
                tracing::warn!(topic = %self.topic, partition = p, offset, ?expected, "gap in delivered offsets while not positioned, seeking back");
                self.seek(applier, p, expected);
                Fold::SoughtBack { expected }
            }
            Ok(folded) => Fold::Folded(folded),
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = p, offset, error = %e, "cannot fold a record, will retry it");
                self.seek(applier, p, Some(offset));
                Fold::Retry(e)
            }
        }
    }

    /// Seeks a partition to `to` (0 when `None`: nothing stored) and, once that worked, marks it
    /// positioned. A failed seek is not fatal: the batch stays unpositioned, so the next record
    /// delivered shows up as a gap or a duplicate, which the fold refuses, and the reader seeks
    /// again. Returns whether the seek worked.
    pub fn seek(&self, applier: &mut Applier, partition: i32, to: Option<i64>) -> bool {
        let offset = Offset::Offset(to.unwrap_or(0));
        match self.consumer.seek(self.topic, partition, offset, TIMEOUT) {
            Ok(()) => {
                applier.positioned(partition);
                true
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition, ?offset, error = %e, "seek failed");
                false
            }
        }
    }

    /// Moves the batches of `partitions` (every partition read when `None`) to their consumer's
    /// position, past markers and aborted records it consumed after the last record folded.
    /// Call it only when every record handed over for them was folded.
    pub fn advance(&self, applier: &mut Applier, partitions: Option<&[i32]>) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements_for_topic(self.topic) {
            if partitions.is_some_and(|only| !only.contains(&e.partition())) {
                continue;
            }
            if let Offset::Offset(o) = e.offset() {
                applier.advance_to(e.partition(), o);
            }
        }
    }

    /// After [`Polled::OutsideLog`]: judges each of `partitions` at its next offset against the
    /// log's watermarks, pauses the ones the log does not cover and returns them. When none is
    /// found, seeks every judged partition again to its next offset.
    pub fn judge(&self, applier: &mut Applier, partitions: &[i32]) -> Vec<Outside> {
        let mut outside = Vec::new();
        for &p in partitions {
            let next = applier.position(p).unwrap_or(0);
            match self.consumer.fetch_watermarks(self.topic, p, TIMEOUT) {
                Ok((low, high)) => {
                    if let Some(why) = judge_position(next, low, high) {
                        outside.push(Outside {
                            partition: p,
                            why,
                            log_start: low,
                            log_end: high,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = p, error = %e, "cannot read watermarks")
                }
            }
        }
        if outside.is_empty() {
            tracing::warn!(topic = %self.topic, "offset reset error but every partition judged is within the log; seeking each to its next offset");
            for &p in partitions {
                let next = applier.position(p).unwrap_or(0);
                self.seek(applier, p, Some(next));
            }
        } else {
            // They fetch nothing anyway (reset=error); pausing keeps it that way.
            let stopped: Vec<i32> = outside.iter().map(|o| o.partition).collect();
            self.pause(&stopped);
        }
        outside
    }

    fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(self.topic, p);
        }
        tpl
    }
}

/// A consumed message as the fold reads it: offset, key, value, timestamp, and its request
/// header ([`REQUEST_HEADER`], or the older [`IDEMPOTENCY_HEADER`]).
pub fn record_of<M: Message>(m: &M) -> Record<'_> {
    let request = m.headers().and_then(|hs| {
        hs.iter().find_map(|h| match (h.key, h.value) {
            (REQUEST_HEADER, Some(v)) => Some(RequestHeader::V1(v)),
            (IDEMPOTENCY_HEADER, Some(v)) => Some(RequestHeader::Legacy(v)),
            _ => None,
        })
    });
    Record {
        offset: m.offset(),
        key: m.key(),
        value: m.payload(),
        timestamp: m.timestamp().to_millis(),
        request,
    }
}
