//! The consumer-group member that folds its partitions into SQLite.
//!
//! Delivery guarantee: every record is applied exactly once. Records are folded into pending
//! per-partition batches; every commit interval the batches are applied to SQLite in ONE
//! transaction together with each partition's next offset, by compare-and-set against the
//! offset the batch started from ([`tally_pipeline::store::Store::apply`]). Kafka's committed
//! offsets are never read: on assignment each partition starts at the offset SQLite holds
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
//! statistics report give each owned partition's lag. The same offsets go to the consumer group
//! for Kafka's tools to display, and for nothing else ([`crate::group_offsets`]).
//!
//! Each partition is read from exactly the stored offset (0 when none) with
//! `auto.offset.reset=error`, so the reader never jumps: offsets it does not hand over between
//! two records are transaction markers or aborted records (`read_committed`), and the batch
//! passes them ([`tally_pipeline::fold::PartitionBatch::positioned`]). When every fetched record
//! is folded, each batch moves to the reader's position, past trailing markers. A start offset
//! outside the log (records deleted before they were folded, or a recreated topic or wiped
//! broker) raises an offset-reset error instead of a jump: each owned partition is judged
//! against its watermarks ([`tally_pipeline::topic::judge_position`]) and the ones the log no
//! longer covers are stopped, with one log line, a metric and `/readyz` saying which and why;
//! the other partitions go on. These reading rules are [`tally_pipeline::reader`]'s, shared with
//! the standby and the replayer; what is the member's own here is the rebalance hooks, the
//! stopped partitions, the published progress and when to commit ([`Cadence`]).
//!
//! The loop runs on a dedicated thread: librdkafka's rebalance callback runs inside `poll` on
//! that same thread, so the applier's mutex is never contended by the callback, and SQLite's
//! blocking calls never stall the async HTTP side.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tally_pipeline::applier::Applier;
use tally_pipeline::client_config::{self, Member};
use tally_pipeline::fold::Folded;
use tally_pipeline::kafka_log::ClientLog;
use tally_pipeline::reader::{Fold, FoldingReader, Polled, Start};
use tally_pipeline::store::{OpenMode, Store};
use tally_pipeline::topic::{self, Unreadable};
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
/// How long leaving the group may take to hand the partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
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
    fn give_up(&self, parts: &[i32], why: &str) -> Vec<(i32, i64)> {
        let started = Instant::now();
        let result = self.applier().revoke(parts);
        let committed = match result {
            Ok(r) => {
                instruments::committed(&r, started.elapsed());
                for &(p, stored) in &r.fenced {
                    tracing::warn!(partition = p, stored = ?stored, why, "commit fenced: another consumer advanced this partition; dropped pending work");
                }
                self.publish(&r.committed);
                tracing::info!(?parts, committed = r.records, fenced = ?r.fenced, why, "partitions given up after a final commit");
                r.committed
            }
            Err(e) => {
                instruments::commit_failed();
                tracing::warn!(?parts, error = %e, why, "final commit failed, pending work dropped");
                Vec::new()
            }
        };
        // revoke() forgets the partitions even when its commit failed.
        self.applier().discard(parts);
        self.given_up(parts);
        self.unclaim(parts);
        committed
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
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        crate::group_offsets::outcome(&result);
    }

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
                self.unstop(&parts);
                tracing::info!(?starts, "partitions assigned, starting at stored offsets");
                instruments::rebalance("assign");
                self.assigned(&starts);
                let reader = FoldingReader::new(consumer, &self.topic);
                if let Err(e) = reader.start(&mut self.applier(), &starts, Start::Assign) {
                    self.fail(anyhow::Error::new(e).context("cannot assign partitions"));
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
                    let committed = self.give_up(&parts, "revoked");
                    crate::group_offsets::commit(consumer, &self.topic, &committed);
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
    let Some(store) = open_store(config, &progress, &stop)? else {
        return Ok(());
    };
    let consumer = join(config, store, progress, claims)?;
    FoldLoop::new(&consumer, config).run_until(&stop)?;
    commit(&consumer);
    // Leaving the group runs the revoke callback (a final commit through the compare-and-set)
    // and tells the coordinator at once, so the partitions move without waiting for the session
    // timeout. Closing the consumer on drop completes the leave.
    leave(&consumer);
    drop(consumer);
    tracing::info!("consumer stopped, group left");
    Ok(())
}

/// Opens the database, binds the idempotency window and checks the topic's id. `None` when the
/// topic is not the one the database folded: the member then refused ([`refuse`]) until `stop`.
fn open_store(
    config: &Config,
    progress: &ProgressTx,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let mut store = Store::open(&config.db, &config.kafka.topic, OpenMode::CreateIfMissing)
        .with_context(|| format!("cannot open database {}", config.db.display()))?;
    let window = store.bind_idempotency_window(config.idempotency_window())?;
    tracing::info!(
        window_secs = window.as_secs(),
        "requests are remembered for this long in log time"
    );
    if let Err(why) = topic::check_id(&config.kafka, &mut store)? {
        refuse(why, progress, stop);
        return Ok(None);
    }
    Ok(Some(store))
}

/// Creates the group member, whose context holds the applier over `store`, and subscribes it to
/// the topic; partitions come with the first rebalance.
fn join(
    config: &Config,
    store: Store,
    progress: ProgressTx,
    claims: Claims,
) -> anyhow::Result<BaseConsumer<Ctx>> {
    let topic = config.kafka.topic.clone();
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
    Ok(consumer)
}

/// When the member commits: the one place its commit timing is written. Pending work is
/// committed on the commit interval, when `--max-pending-records` are pending, or as soon as
/// every fetched record is folded but not more often than `--min-commit-interval-ms`; after a
/// failed commit, only on the interval (not each time the queue drains).
struct Cadence {
    last: Instant,
    last_ok: bool,
    interval: Duration,
    min_interval: Duration,
    max_pending: u64,
}

impl Cadence {
    fn new(config: &Config) -> Self {
        Cadence {
            last: Instant::now(),
            last_ok: true,
            interval: config.commit_interval(),
            min_interval: config.min_commit_interval(),
            max_pending: config.max_pending_records,
        }
    }

    /// How long a poll may wait for records: with work pending, only until a commit made
    /// because the fetched records ran out is due.
    fn poll_wait(&self, has_work: impl FnOnce() -> bool) -> Duration {
        if self.last_ok && has_work() {
            self.min_interval
                .saturating_sub(self.last.elapsed())
                .min(POLL)
        } else {
            POLL
        }
    }

    /// Whether `pending` records (and offsets) are due for a commit; `drained`: every record
    /// fetched so far is folded.
    fn due(&self, pending: u64, drained: bool) -> bool {
        let since = self.last.elapsed();
        since >= self.interval
            || pending >= self.max_pending
            || (drained && self.last_ok && since >= self.min_interval)
    }

    fn committed(&mut self, ok: bool) {
        self.last_ok = ok;
        self.last = Instant::now();
    }
}

/// What one turn of the fold loop came to.
enum Read {
    /// A record was folded: the burst goes on.
    Folded,
    /// A record of a stopped partition, passed over.
    Skipped,
    /// Nothing came: every record fetched so far is folded.
    Drained,
    /// Anything else.
    Other,
}

/// The member's fold loop, and what it keeps between two polls.
struct FoldLoop<'c> {
    consumer: &'c BaseConsumer<Ctx>,
    cadence: Cadence,
    max_pending: u64,
    folds: instruments::FoldCounters,
    paused: bool,
}

impl<'c> FoldLoop<'c> {
    fn new(consumer: &'c BaseConsumer<Ctx>, config: &Config) -> Self {
        FoldLoop {
            consumer,
            cadence: Cadence::new(config),
            max_pending: config.max_pending_records,
            folds: instruments::FoldCounters::register(),
            paused: false,
        }
    }

    fn ctx(&self) -> &'c Ctx {
        self.consumer.context()
    }

    fn reader(&self) -> FoldingReader<'c, Ctx> {
        FoldingReader::new(self.consumer, &self.ctx().topic)
    }

    /// Folds until `stop`, or until the rebalance callback met an error it could not recover
    /// from. Under a backlog it looks at the stop, a fatal error, the clock and the commit every
    /// [`FOLD_BURST`] records, not after each one (those locks and clock reads were a sixth of
    /// the fold loop's time at 1M records/s).
    fn run_until(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        let mut burst = 0u32;
        loop {
            if burst == 0 {
                if stop.is_cancelled() {
                    return Ok(());
                }
                if let Some(e) = self.ctx().fatal.lock().unwrap().take() {
                    return Err(e);
                }
            }
            let read = if self.paused {
                // Keep servicing the group (heartbeats, rebalances) while paused.
                let _ = self.consumer.poll(POLL);
                Read::Other
            } else {
                self.read(burst)
            };
            match read {
                Read::Skipped => continue,
                Read::Folded => {
                    burst += 1;
                    if burst < FOLD_BURST {
                        continue;
                    }
                }
                Read::Drained | Read::Other => {}
            }
            burst = 0;
            self.commit_if_due(matches!(read, Read::Drained));
        }
    }

    /// Polls once and reacts: in a burst without waiting (a poll that finds nothing ends it),
    /// otherwise as long as [`Cadence::poll_wait`] allows.
    fn read(&mut self, burst: u32) -> Read {
        let timeout = if burst > 0 {
            Duration::ZERO
        } else {
            self.cadence.poll_wait(|| self.ctx().applier().has_work())
        };
        let reader = self.reader();
        match reader.poll(timeout) {
            Polled::Record(m) => self.fold(&reader, &m),
            Polled::End(p) => {
                tracing::debug!(partition = p, "caught up");
                // At the partition's end the next offset to fold is the log end, past any
                // trailing markers the reader consumed.
                let end = {
                    let mut applier = self.ctx().applier();
                    reader.advance(&mut applier, None);
                    applier.position(p)
                };
                if let Some(end) = end {
                    self.ctx().log_end(p, end);
                }
                Read::Other
            }
            Polled::OutsideLog(e) => {
                tracing::debug!(error = %e, "start offset outside the log");
                self.judge(&reader);
                Read::Other
            }
            // Error events also went to the context's error callback, which logged them.
            Polled::Error(e @ KafkaError::MessageConsumption(_)) => {
                // A fetch refused by an ACL comes only this way: kept for /readyz.
                tally_pipeline::kafka_access::note(&e, "a fetch was refused");
                tracing::debug!(error = %e, "consumer error");
                Read::Other
            }
            Polled::Error(e) => {
                tracing::warn!(error = %e, "consumer error");
                Read::Other
            }
            Polled::Nothing => {
                reader.advance(&mut self.ctx().applier(), None);
                Read::Drained
            }
        }
    }

    /// Folds a record unless its partition is stopped; a record that could not be folded is
    /// read again after a pause.
    fn fold(&self, reader: &FoldingReader<'c, Ctx>, m: &BorrowedMessage<'_>) -> Read {
        if self.ctx().stopped().contains_key(&m.partition()) {
            return Read::Skipped;
        }
        let fold = reader.fold(&mut self.ctx().applier(), m);
        match fold {
            Fold::Folded(f) => {
                self.folds.folded(&f);
                Read::Folded
            }
            Fold::SoughtBack { .. } => {
                self.folds.folded(&Folded::Gap);
                Read::Other
            }
            Fold::Retry(_) => {
                std::thread::sleep(Duration::from_millis(100));
                Read::Other
            }
        }
    }

    /// After an offset-reset error: stops the owned partitions the log does not cover (one log
    /// line, a metric, `/readyz`); the others go on.
    fn judge(&self, reader: &FoldingReader<'c, Ctx>) {
        let ctx = self.ctx();
        let mut applier = ctx.applier();
        let owned: Vec<i32> = {
            let stopped = ctx.stopped();
            applier
                .owned()
                .filter(|p| !stopped.contains_key(p))
                .collect()
        };
        for o in reader.judge(&mut applier, &owned) {
            ctx.stop(o.partition, o.why, o.log_start, o.log_end);
        }
    }

    /// Commits when [`Cadence::due`]; pauses fetching while commits fail with
    /// `--max-pending-records` pending, and resumes once nothing is pending.
    fn commit_if_due(&mut self, drained: bool) {
        let (pending, work) = {
            let applier = self.ctx().applier();
            (applier.pending_records(), applier.has_work())
        };
        if work && self.cadence.due(pending, drained) {
            let ok = commit(self.consumer);
            self.cadence.committed(ok);
            let want = !ok && pending >= self.max_pending;
            self.paused = set_paused(self.consumer, self.paused, want);
        } else if !work && self.paused {
            self.paused = set_paused(self.consumer, self.paused, false);
        }
    }
}

/// Unsubscribes and services the revoke callback (a final commit) until nothing is assigned.
fn leave(consumer: &BaseConsumer<Ctx>) {
    consumer.unsubscribe();
    let started = Instant::now();
    while consumer.assignment().is_ok_and(|a| a.count() > 0) && started.elapsed() < LEAVE_TIMEOUT {
        let _ = consumer.poll(POLL);
    }
}

/// Commits pending work; returns false when the database refused it (kept for a retry). A
/// fenced partition is read again from the stored offset.
fn commit(consumer: &BaseConsumer<Ctx>) -> bool {
    let ctx = consumer.context();
    let started = Instant::now();
    let report = ctx.applier().commit();
    match report {
        Ok(r) => {
            instruments::committed(&r, started.elapsed());
            ctx.publish(&r.committed);
            crate::group_offsets::commit(consumer, &ctx.topic, &r.committed);
            let reader = FoldingReader::new(consumer, &ctx.topic);
            for &(p, stored) in &r.fenced {
                tracing::warn!(topic = %ctx.topic, partition = p, stored = ?stored, "commit fenced: another consumer advanced this partition; dropped pending work, resuming from the stored offset");
                reader.seek(&mut ctx.applier(), p, stored);
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

/// The topic is not the one the database folded: join no group, fold nothing, say why on
/// `/readyz` and in one error line, and wait for the stop (the HTTP side keeps serving the
/// sums as they were, for the operator who recovers them).
fn refuse(why: String, progress: &ProgressTx, stop: &CancellationToken) {
    tracing::error!("refusing to fold: {why}");
    instruments::refused();
    progress.send_modify(|pr| pr.refused = Some(why));
    while !stop.is_cancelled() {
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cadence(interval_ms: u64, min_ms: u64, max_pending: u64) -> Cadence {
        Cadence {
            last: Instant::now(),
            last_ok: true,
            interval: Duration::from_millis(interval_ms),
            min_interval: Duration::from_millis(min_ms),
            max_pending,
        }
    }

    #[test]
    fn a_drained_queue_commits_at_once_unless_the_last_commit_failed() {
        let mut c = cadence(600_000, 0, 100);
        assert!(c.due(1, true), "drained, no minimum gap");
        assert!(!c.due(1, false), "not drained, interval far off");
        assert!(c.due(100, false), "pending limit reached");
        assert_eq!(
            c.poll_wait(|| true),
            Duration::ZERO,
            "a drained commit is due now"
        );
        c.committed(false);
        assert!(!c.due(1, true), "after a failure only the interval retries");
        assert_eq!(c.poll_wait(|| true), POLL);
        let c = cadence(600_000, 600_000, 100);
        assert!(
            !c.due(1, true),
            "the minimum gap holds a drained commit back"
        );
        assert_eq!(
            c.poll_wait(|| false),
            POLL,
            "nothing pending: the usual wait"
        );
    }
}
