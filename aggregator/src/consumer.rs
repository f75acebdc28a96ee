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
//! Because the compare-and-set is the guard, pending work is offered to it whenever a partition
//! is given up, even when librdkafka reports the assignment as lost (e.g. after this process
//! was paused past the session timeout): it commits if nobody moved the partition on, and is
//! fenced ("commit fenced" in the log, `tally_partition_commits_total{outcome="fenced"}`)
//! otherwise. After each successful commit the committed offsets are published on a watch
//! channel ([`crate::progress`]) for read-your-writes, and the log end offsets librdkafka's
//! statistics report give each owned partition's lag.
//!
//! Each partition is read from exactly the stored offset (0 when none) with
//! `auto.offset.reset=error`, so the reader never jumps: offsets it does not hand over between
//! two records are transaction markers or aborted records (`read_committed`), and the batch
//! passes them ([`tally_pipeline::fold::PartitionBatch::positioned`]). When every fetched record
//! is folded, each batch moves to the reader's position, past trailing markers. A start offset
//! outside the log (records deleted before they were folded, or a recreated topic or wiped
//! broker) raises an offset-reset error instead of a jump: the consumer judges each owned
//! partition against its watermarks ([`tally_pipeline::topic::judge_position`]) and stops the
//! ones the log no longer covers, with one log line, a metric and `/readyz` saying which and why;
//! the other partitions go on.
//!
//! The loop runs on a dedicated thread: librdkafka's rebalance callback runs inside `poll` on
//! that same thread, so the applier's mutex is never contended by the callback, and SQLite's
//! blocking calls never stall the async HTTP side.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

use anyhow::Context as _;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::BTreeMap;

use tally_pipeline::applier::Applier;
use tally_pipeline::client_config::{self, Member};
use tally_pipeline::fold::Folded;
use tally_pipeline::kafka_log::ClientLog;
use tally_pipeline::store::{OpenMode, Store};
use tally_pipeline::topic::{judge_position, Unreadable};
use tokio_util::sync::CancellationToken;

use crate::instruments;
use crate::progress::ProgressTx;
use crate::standby::Claims;
use crate::Config;

/// How long one `poll` may block; bounds the reaction time to stop and commit deadlines.
const POLL: Duration = Duration::from_millis(20);
/// Records the loop folds in a row before it looks at the stop, the clock and the commit
/// again; a fraction of a millisecond under a backlog, and a poll that finds nothing ends a
/// burst at once.
const FOLD_BURST: u32 = 256;
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often librdkafka reports statistics (the log end offsets behind the lag).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

struct Ctx {
    topic: String,
    applier: Mutex<Applier>,
    /// An error the rebalance callback could not recover from; the loop exits with it.
    fatal: Mutex<Option<anyhow::Error>>,
    progress: ProgressTx,
    /// librdkafka's reports, logged once and at their level.
    client_log: ClientLog,
    /// Owned partitions stopped because the log does not cover their stored offset.
    stopped: Mutex<BTreeMap<i32, Unreadable>>,
    /// What this member owns, for the standby of the same process ([`crate::standby`]).
    claims: Claims,
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

    fn assigned(&self, starts: &[(i32, Option<i64>)]) {
        self.progress.send_modify(|pr| {
            pr.joined = true;
            for &(p, start) in starts {
                pr.owned.insert(p);
                match start {
                    Some(o) => pr.committed.insert(p, o),
                    None => pr.committed.remove(&p),
                };
            }
            instruments::owned(pr.owned.len());
        });
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Unreadable>> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets that partitions were stopped (given up, or assigned afresh: judged again).
    fn unstop(&self, parts: &[i32]) {
        let mut stopped = self.stopped();
        for p in parts {
            if let Some(u) = stopped.remove(p) {
                instruments::stopped(*p, u.reason(), false);
            }
        }
        drop(stopped);
        self.progress.send_if_modified(|pr| {
            let before = pr.stopped.len();
            pr.stopped.retain(|p, _| !parts.contains(p));
            pr.stopped.len() != before
        });
    }

    /// Stops a partition the log does not cover: one error line, the metric, `/readyz`.
    fn stop(&self, partition: i32, why: Unreadable, log_start: i64, log_end: i64) {
        let text = format!(
            "{}; this partition stopped, the others go on",
            why.describe(&self.topic, partition)
        );
        let next = match why {
            Unreadable::StartPastStored { next, .. } | Unreadable::EndBeforeStored { next, .. } => {
                next
            }
        };
        tracing::error!(
            topic = %self.topic, partition, next_offset = next, log_start, log_end,
            reason = why.reason(), "partition stopped: {text}"
        );
        instruments::stopped(partition, why.reason(), true);
        self.stopped().insert(partition, why);
        self.progress.send_modify(|pr| {
            pr.stopped.insert(partition, text);
        });
    }

    fn given_up(&self, parts: &[i32]) {
        self.unstop(parts);
        self.progress.send_modify(|pr| {
            for p in parts {
                pr.owned.remove(p);
                pr.committed.remove(p);
                pr.log_end.remove(p);
                instruments::lag(*p, 0);
            }
            instruments::owned(pr.owned.len());
        });
    }

    /// Publishes committed offsets and refreshes the lag of the partitions they belong to.
    fn publish(&self, committed: &[(i32, i64)]) {
        if committed.is_empty() {
            return;
        }
        self.progress.send_modify(|pr| {
            for &(p, next) in committed {
                if pr.owned.contains(&p) {
                    pr.committed.insert(p, next);
                    // The log reaches at least as far as what was committed from it (the
                    // statistics' watermark may be older).
                    if let Some(end) = pr.log_end.get_mut(&p) {
                        *end = (*end).max(next);
                    }
                    if let Some(l) = pr.lag(p, Some(next)) {
                        instruments::lag(p, l);
                    }
                }
            }
        });
    }

    /// Records a log end offset seen for an owned partition; never moves it backwards.
    fn log_end(&self, partition: i32, end: i64) {
        self.progress.send_if_modified(|pr| {
            if !pr.owned.contains(&partition) || pr.log_end.get(&partition) >= Some(&end) {
                return false;
            }
            pr.log_end.insert(partition, end);
            if let Some(l) = pr.lag(partition, pr.committed.get(&partition).copied()) {
                instruments::lag(partition, l);
            }
            true
        });
    }

    /// Commits pending work of every owned partition, then gives `parts` up. Fenced partitions
    /// are logged and counted; their pending work is gone (the applier dropped it).
    fn give_up(&self, parts: &[i32], why: &str) {
        let started = Instant::now();
        let result = self.applier().revoke(parts);
        match result {
            Ok(r) => {
                instruments::committed(&r, started.elapsed());
                for &(p, stored) in &r.fenced {
                    tracing::warn!(partition = p, stored = ?stored, why, "commit fenced: another consumer advanced this partition; dropped pending work");
                }
                self.publish(&r.committed);
                tracing::info!(?parts, committed = r.records, fenced = ?r.fenced, why, "partitions given up after a final commit");
            }
            Err(e) => {
                instruments::commit_failed();
                tracing::warn!(?parts, error = %e, why, "final commit failed, pending work dropped");
            }
        }
        // revoke() forgets the partitions even when its commit failed.
        self.applier().discard(parts);
        self.given_up(parts);
        self.unclaim(parts);
    }

    /// Leaves partitions to the standby (after their last commit, or without one).
    fn unclaim(&self, parts: &[i32]) {
        let mut claimed = self.claims.lock();
        for p in parts {
            claimed.remove(p);
        }
    }
}

impl ClientContext for Ctx {
    /// The high watermark of each owned partition, as the fetcher last saw it.
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, part) in &topic.partitions {
            // librdkafka reports -1 (or -1001) while it does not know the watermark.
            if part.hi_offset >= 0 {
                self.log_end(*p, part.hi_offset);
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.client_log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Partition ends are debug, unreachable brokers a warning until the outage lasts.
        self.client_log.error(&error, reason);
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
                // Claimed before the stored offsets are read, under the lock the standby
                // commits under: the start is whatever the standby committed last.
                let mut claimed = self.claims.lock();
                claimed.extend(&parts);
                let starts = self.applier().assign(&parts);
                drop(claimed);
                let starts = match starts {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail(anyhow::Error::new(e).context("cannot read stored offsets"));
                        self.unclaim(&parts);
                        let _ = consumer.unassign();
                        return;
                    }
                };
                // Exactly the stored offset, 0 when none: never `Beginning`, which would follow
                // a log start that moved past records nobody folded.
                self.unstop(&parts);
                for (p, start) in &starts {
                    let offset = Offset::Offset(start.unwrap_or(0));
                    if let Err(e) = tpl.set_partition_offset(&self.topic, *p, offset) {
                        self.fail(anyhow::Error::new(e).context("cannot set start offset"));
                    }
                }
                tracing::info!(?starts, "partitions assigned, starting at stored offsets");
                instruments::rebalance("assign");
                self.assigned(&starts);
                if let Err(e) = consumer.assign(tpl) {
                    self.fail(anyhow::Error::new(e).context("cannot assign partitions"));
                } else {
                    let mut applier = self.applier();
                    for p in &parts {
                        applier.positioned(*p);
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    // Another consumer may own them already: the compare-and-set decides
                    // whether the pending work still applies.
                    instruments::rebalance("lost");
                    tracing::warn!(
                        ?parts,
                        "assignment lost, offering pending work to the compare-and-set"
                    );
                    self.give_up(&parts, "assignment lost");
                } else {
                    instruments::rebalance("revoke");
                    self.give_up(&parts, "revoked");
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(?other, "rebalance error, dropping assignment");
                instruments::rebalance("error");
                self.applier().discard(&parts);
                self.given_up(&parts);
                self.unclaim(&parts);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs the consumer until `stop` is cancelled; commits pending work before returning.
pub fn run(
    config: &Config,
    progress: ProgressTx,
    claims: Claims,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let topic = config.kafka.topic.clone();
    let mut store = Store::open(&config.db, &topic, OpenMode::CreateIfMissing)
        .with_context(|| format!("cannot open database {}", config.db.display()))?;
    let window = store.bind_idempotency_window(config.idempotency_window())?;
    tracing::info!(
        window_secs = window.as_secs(),
        "requests are remembered for this long in log time"
    );
    if let Err(why) = tally_pipeline::topic::check_id(&config.kafka, &mut store)? {
        return refuse(why, &progress, &stop);
    }
    let me = crate::peers::Member::this(store.database_id()?, config.advertise_url.clone());
    let ctx = Ctx {
        topic: topic.clone(),
        applier: Mutex::new(Applier::new(store)),
        fatal: Mutex::new(None),
        progress,
        client_log: ClientLog::new(),
        stopped: Mutex::new(BTreeMap::new()),
        claims,
    };
    let member = Member {
        group: &config.group,
        session_timeout: config.session_timeout(),
        client_id: Some(crate::peers::client_id(&me)),
        statistics_interval: Some(STATS_INTERVAL),
        fetch: config.fetch(),
    };
    let consumer: BaseConsumer<Ctx> = client_config::group_member(&config.kafka, &member)
        .create_with_context(ctx)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    tracing::info!(group = %config.group, %topic, db = %config.db.display(), "consumer started");

    let folds = instruments::FoldCounters::register();
    let mut last_commit = Instant::now();
    // A failed commit is retried on the commit interval only, not each time the queue drains.
    let mut last_ok = true;
    let mut paused = false;
    // Records folded in a row since the loop last looked at the stop, a fatal error, the clock
    // and the commit: under a backlog it looks every FOLD_BURST records, not after each one
    // (those locks and clock reads were a sixth of the fold loop's time at 1M records/s).
    let mut burst = 0u32;
    loop {
        if burst == 0 {
            if stop.is_cancelled() {
                break;
            }
            if let Some(e) = consumer.context().fatal.lock().unwrap().take() {
                return Err(e);
            }
        }
        // Whether every record fetched so far has been folded (the last poll found none).
        let mut drained = false;
        if !paused {
            // With work pending, wait for more records only until a drained commit is due; in a
            // burst, not at all (a poll that finds nothing ends the burst).
            let timeout = if burst > 0 {
                Duration::ZERO
            } else if last_ok && consumer.context().applier().has_work() {
                config
                    .min_commit_interval()
                    .saturating_sub(last_commit.elapsed())
                    .min(POLL)
            } else {
                POLL
            };
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    if consumer.context().stopped().contains_key(&p) {
                        continue;
                    }
                    let folded = consumer
                        .context()
                        .applier()
                        .fold(p, &tally_pipeline::kafka::record_of(&m));
                    drop(m);
                    if let Ok(f) = &folded {
                        folds.folded(f);
                    }
                    match folded {
                        Ok(Folded::Gap) => {
                            let pos = consumer.context().applier().position(p);
                            tracing::warn!(%topic, partition = p, offset, expected = ?pos, "gap in delivered offsets while not positioned, seeking back");
                            seek(&consumer, &topic, p, pos);
                        }
                        Ok(_) => {
                            burst += 1;
                            if burst < FOLD_BURST {
                                continue;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%topic, partition = p, offset, error = %e, "cannot fold record, will retry it");
                            seek(&consumer, &topic, p, Some(offset));
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    tracing::debug!(partition = p, "caught up");
                    // At the partition's end the next offset to fold is the log end, past any
                    // trailing markers the reader consumed.
                    advance_to_positions(&consumer);
                    let end = consumer.context().applier().position(p);
                    if let Some(end) = end {
                        consumer.context().log_end(p, end);
                    }
                }
                Some(Err(
                    e @ KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                    ),
                )) => {
                    // librdkafka does not say which partition; judge every owned one.
                    tracing::debug!(error = %e, "start offset outside the log");
                    judge_positions(&consumer, &topic);
                }
                // Error events also went to the context's error callback, which logged them.
                Some(Err(e @ KafkaError::MessageConsumption(_))) => {
                    tracing::debug!(error = %e, "consumer error")
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {
                    drained = true;
                    advance_to_positions(&consumer);
                }
            }
        } else {
            // Keep servicing the group (heartbeats, rebalances) while paused.
            let _ = consumer.poll(POLL);
        }
        burst = 0;
        let (pending, work) = {
            let applier = consumer.context().applier();
            (applier.pending_records(), applier.has_work())
        };
        let since = last_commit.elapsed();
        if work
            && (since >= config.commit_interval()
                || pending >= config.max_pending_records
                || (drained && last_ok && since >= config.min_commit_interval()))
        {
            let ok = commit(&consumer, &topic);
            last_ok = ok;
            last_commit = Instant::now();
            paused = set_paused(
                &consumer,
                paused,
                !ok && pending >= config.max_pending_records,
            );
        } else if !work && paused {
            paused = set_paused(&consumer, paused, false);
        }
    }
    commit(&consumer, &topic);
    // Leaving the group runs the revoke callback (a final commit through the compare-and-set)
    // and tells the coordinator at once, so the partitions move without waiting for the session
    // timeout. Closing the consumer on drop completes the leave.
    leave(&consumer);
    drop(consumer);
    tracing::info!("consumer stopped, group left");
    Ok(())
}

/// Unsubscribes and services the revoke callback (a final commit) until nothing is assigned.
fn leave(consumer: &BaseConsumer<Ctx>) {
    consumer.unsubscribe();
    let started = Instant::now();
    while consumer.assignment().is_ok_and(|a| a.count() > 0) && started.elapsed() < SEEK_TIMEOUT {
        let _ = consumer.poll(POLL);
    }
}

/// Commits pending work; returns false when the database refused it (kept for a retry).
fn commit(consumer: &BaseConsumer<Ctx>, topic: &str) -> bool {
    let started = Instant::now();
    let report = consumer.context().applier().commit();
    match report {
        Ok(r) => {
            instruments::committed(&r, started.elapsed());
            consumer.context().publish(&r.committed);
            for &(p, stored) in &r.fenced {
                tracing::warn!(%topic, partition = p, stored = ?stored, "commit fenced: another consumer advanced this partition; dropped pending work, resuming from the stored offset");
                seek(consumer, topic, p, stored);
            }
            if r.records > 0 {
                tracing::debug!(records = r.records, rejected = r.rejected, "committed");
            }
            true
        }
        Err(e) => {
            instruments::commit_failed();
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

/// Seeks a partition to `to` (0 when `None`: nothing stored) and, once that worked, tells the
/// applier its reader is positioned there.
fn seek(consumer: &BaseConsumer<Ctx>, topic: &str, partition: i32, to: Option<i64>) {
    let offset = Offset::Offset(to.unwrap_or(0));
    match consumer.seek(topic, partition, offset, SEEK_TIMEOUT) {
        Ok(()) => consumer.context().applier().positioned(partition),
        // Not fatal: the batch stays unpositioned, so the next delivered record shows up as a
        // gap or a duplicate and the fold refuses it, and we come back here.
        Err(e) => tracing::warn!(%topic, partition, ?offset, error = %e, "seek failed"),
    }
}

/// Moves every owned batch past markers and aborted records its reader consumed after the last
/// record folded (the reader's position). The position counts only what `poll` handed over or
/// skipped as a marker, in order, so it never passes a record that was not folded; after a seek
/// librdkafka reports no position until the next record.
fn advance_to_positions(consumer: &BaseConsumer<Ctx>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let ctx = consumer.context();
    let mut applier = ctx.applier();
    for e in positions.elements_for_topic(&ctx.topic) {
        if let Offset::Offset(o) = e.offset() {
            applier.advance_to(e.partition(), o);
        }
    }
}

/// The topic is not the one the database folded: join no group, fold nothing, say why on
/// `/readyz` and in one error line, and wait for the stop (the HTTP side keeps serving the
/// sums as they were, for the operator who recovers them).
fn refuse(why: String, progress: &ProgressTx, stop: &CancellationToken) -> anyhow::Result<()> {
    tracing::error!("refusing to fold: {why}");
    instruments::refused();
    progress.send_modify(|pr| pr.refused = Some(why));
    while !stop.is_cancelled() {
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// After an offset-reset error: compares each owned partition's next offset with the log's
/// watermarks and stops the ones the log does not cover. If none is found (the watermarks
/// moved meanwhile), every owned partition is sought again to its next offset, so that the one
/// that failed fetches again instead of idling.
fn judge_positions(consumer: &BaseConsumer<Ctx>, topic: &str) {
    let ctx = consumer.context();
    let owned: Vec<(i32, i64)> = {
        let applier = ctx.applier();
        let stopped = ctx.stopped();
        applier
            .owned()
            .filter(|p| !stopped.contains_key(p))
            .map(|p| (p, applier.position(p).unwrap_or(0)))
            .collect()
    };
    let mut found = false;
    for &(p, next) in &owned {
        match consumer.fetch_watermarks(topic, p, SEEK_TIMEOUT) {
            Ok((low, high)) => {
                if let Some(why) = judge_position(next, low, high) {
                    ctx.stop(p, why, low, high);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(topic, p);
                    // It fetches nothing anyway (reset=error); pausing keeps it that way.
                    let _ = consumer.pause(&tpl);
                    found = true;
                }
            }
            Err(e) => {
                tracing::warn!(%topic, partition = p, error = %e, "cannot read watermarks")
            }
        }
    }
    if !found {
        tracing::warn!(
            %topic, "offset reset error but every owned partition is within the log; seeking each to its next offset"
        );
        for (p, next) in owned {
            seek(consumer, topic, p, Some(next));
        }
    }
}
