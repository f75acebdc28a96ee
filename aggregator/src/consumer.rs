//! The consumer-group member that folds its partitions into SQLite.
//!
//! Delivery guarantee: every record is applied exactly once. Records are folded into pending
//! per-partition batches; every commit interval the batches are applied to SQLite in ONE
//! transaction together with each partition's next offset, by compare-and-set against the
//! offset the batch started from ([`tally_pipeline::store::Store::apply`]). Kafka's committed
//! offsets are not used at all: on assignment each partition starts at the offset SQLite holds
//! (the beginning when none). A consumer that lost a partition without knowing it (a zombie:
//! paused, partitioned, slow) fails the compare-and-set, drops its pending work for that
//! partition and resumes from the stored offset; a record is therefore never applied twice and,
//! since a batch may only advance over records it folded contiguously, never skipped.
//!
//! The loop runs on a dedicated thread: librdkafka's rebalance callback runs inside `poll` on
//! that same thread, so the applier's mutex is never contended by the callback, and SQLite's
//! blocking calls never stall the async HTTP side.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tally_pipeline::applier::Applier;
use tally_pipeline::fold::Folded;
use tally_pipeline::store::{OpenMode, Store};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// How long one `poll` may block; bounds the reaction time to stop and commit deadlines.
const POLL: Duration = Duration::from_millis(20);
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

struct Ctx {
    topic: String,
    applier: Mutex<Applier>,
    /// An error the rebalance callback could not recover from; the loop exits with it.
    fatal: Mutex<Option<anyhow::Error>>,
}

impl Ctx {
    fn applier(&self) -> std::sync::MutexGuard<'_, Applier> {
        // A panic while holding the lock leaves no half-applied state (SQLite rolled back), so
        // a poisoned lock is still usable.
        self.applier.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    fn fail(&self, e: anyhow::Error) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports reaching a partition's end through here as well; it is not an error.
        if matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::debug!(reason, "partition end reached");
        } else {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Ctx {
    /// Replaces the default so that assigned partitions start at the offsets SQLite holds.
    /// Only the eager protocol is configured (`range`), so assign and revoke are whole sets.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts = self.partitions(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let starts = match self.applier().assign(&parts) {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail(anyhow::Error::new(e).context("cannot read stored offsets"));
                        let _ = consumer.unassign();
                        return;
                    }
                };
                for (p, start) in &starts {
                    let offset = start.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&self.topic, *p, offset) {
                        self.fail(anyhow::Error::new(e).context("cannot set start offset"));
                    }
                }
                tracing::info!(?starts, "partitions assigned, starting at stored offsets");
                if let Err(e) = consumer.assign(tpl) {
                    self.fail(anyhow::Error::new(e).context("cannot assign partitions"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    tracing::warn!(?parts, "assignment lost, dropping pending work");
                    self.applier().discard(&parts);
                } else {
                    match self.applier().revoke(&parts) {
                        Ok(r) => {
                            tracing::info!(?parts, committed = r.records, fenced = ?r.fenced, "partitions revoked after final commit")
                        }
                        Err(e) => {
                            tracing::warn!(?parts, error = %e, "commit on revoke failed, pending work dropped")
                        }
                    }
                    // revoke() forgets the partitions even when its commit failed.
                    self.applier().discard(&parts);
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(?other, "rebalance error, dropping assignment");
                self.applier().discard(&parts);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs the consumer until `stop` is cancelled; commits pending work before returning.
pub fn run(config: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    let topic = config.kafka.topic.clone();
    let mut store = Store::open(&config.db, &topic, OpenMode::CreateIfMissing)
        .with_context(|| format!("cannot open database {}", config.db.display()))?;
    store.set_idempotency_retention(config.idempotency_retention());
    let ctx = Ctx {
        topic: topic.clone(),
        applier: Mutex::new(Applier::new(store)),
        fatal: Mutex::new(None),
    };
    let consumer: BaseConsumer<Ctx> = config
        .kafka
        .group_consumer(&config.group, config.session_timeout())
        .create_with_context(ctx)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    tracing::info!(group = %config.group, %topic, db = %config.db.display(), "consumer started");

    let mut last_commit = Instant::now();
    let mut paused = false;
    while !stop.is_cancelled() {
        if let Some(e) = consumer.context().fatal.lock().unwrap().take() {
            return Err(e);
        }
        if !paused {
            match consumer.poll(POLL) {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    let folded = consumer.context().applier().fold(
                        p,
                        offset,
                        m.key(),
                        m.payload(),
                        tally_pipeline::kafka::idempotency_key(&m),
                    );
                    drop(m);
                    match folded {
                        Ok(Folded::Gap) => {
                            let pos = consumer.context().applier().position(p);
                            tracing::warn!(partition = p, offset, expected = ?pos, "gap in delivered offsets, seeking back");
                            seek(&consumer, &topic, p, pos);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(partition = p, offset, error = %e, "cannot fold record, will retry it");
                            seek(&consumer, &topic, p, Some(offset));
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    tracing::debug!(partition = p, "caught up")
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
        } else {
            // Keep servicing the group (heartbeats, rebalances) while paused.
            let _ = consumer.poll(POLL);
        }
        let pending = consumer.context().applier().pending_records();
        if pending > 0
            && (last_commit.elapsed() >= config.commit_interval()
                || pending >= config.max_pending_records)
        {
            let ok = commit(&consumer, &topic);
            last_commit = Instant::now();
            paused = set_paused(
                &consumer,
                paused,
                !ok && pending >= config.max_pending_records,
            );
        } else if pending == 0 && paused {
            paused = set_paused(&consumer, paused, false);
        }
    }
    commit(&consumer, &topic);
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
    Ok(())
}

/// Commits pending work; returns false when the database refused it (kept for a retry).
fn commit(consumer: &BaseConsumer<Ctx>, topic: &str) -> bool {
    let report = consumer.context().applier().commit();
    match report {
        Ok(r) => {
            for &(p, stored) in &r.fenced {
                tracing::warn!(partition = p, stored = ?stored, "commit fenced: another consumer advanced this partition; dropped pending work, resuming from the stored offset");
                seek(consumer, topic, p, stored);
            }
            if r.records > 0 {
                tracing::debug!(records = r.records, rejected = r.rejected, "committed");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "commit failed, pending work kept for a retry");
            false
        }
    }
}

fn set_paused(consumer: &BaseConsumer<Ctx>, paused: bool, want: bool) -> bool {
    if paused == want {
        return paused;
    }
    let Ok(assignment) = consumer.assignment() else {
        return paused;
    };
    let r = if want {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match r {
        Ok(()) => {
            tracing::info!(paused = want, "consumption paused state changed");
            want
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot change paused state");
            paused
        }
    }
}

fn seek(consumer: &BaseConsumer<Ctx>, topic: &str, partition: i32, to: Option<i64>) {
    let offset = to.map_or(Offset::Beginning, Offset::Offset);
    if let Err(e) = consumer.seek(topic, partition, offset, SEEK_TIMEOUT) {
        // Not fatal: the next delivered record shows up as a gap or a duplicate and the fold
        // refuses it, so we come back here.
        tracing::warn!(partition, ?offset, error = %e, "seek failed");
    }
}
