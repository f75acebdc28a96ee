//! Warm standby (`--standby`): besides the partitions the group gives this process, it follows
//! every other partition of the topic into its own database, outside the group and at low
//! priority, so that a partition moving here (its owner died or left) has little left to fold.
//!
//! What is shared with the group member is only the database and [`Claims`], the set of
//! partitions the member owns now. The standby never folds a claimed partition, and the two
//! never race for one: the member claims partitions *before* it reads their stored offsets,
//! and the standby drops claimed partitions (their pending work too) and commits under the same
//! lock. So the member starts a partition from what the standby committed, and the standby
//! never commits over a partition the member took. Even if that were broken, the
//! compare-and-set on the stored offset would fence the second writer: nothing is applied
//! twice either way.
//!
//! Low priority: the standby's thread runs at nice [`NICE`] (librdkafka's threads, created on
//! it, inherit that), commits at most every [`COMMIT_EVERY`] and fetches with a long wait, so
//! on a busy host the owned partitions get the cores first. Its reads of partitions it does not
//! own are never served: reads are routed to the owner ([`crate::api`]).
//!
//! It reads by the same rules as the member ([`tally_pipeline::reader`]); what is its own here is
//! which partitions to follow (the claims) and when to commit.
//!
//! What must not live here: anything the owned partitions depend on. A standby that fails
//! logs why and stops following; the member goes on.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::BaseConsumer;
use tally_pipeline::applier::Applier;
use tally_pipeline::client_config::{self, Fetch};
use tally_pipeline::kafka_log::LoggingContext;
use tally_pipeline::reader::{FoldingReader, Polled, Start};
use tally_pipeline::store::{OpenMode, Store};
use tally_pipeline::topic::partitions_of;
use tokio_util::sync::CancellationToken;

use crate::instruments;
use crate::progress::ProgressRx;
use crate::Config;

/// Niceness of the standby's thread (and of librdkafka's threads it creates).
pub const NICE: i32 = 10;
/// Longest gap between two standby commits.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often the followed set is compared with the claims and the topic's partitions.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// How often the topic's partition count is read again.
const METADATA_EVERY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Fetch wait: the standby is behind by design, so it asks for fewer, larger fetches.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// Partitions the group member of this process owns now. Lock it across claiming and reading
/// the stored offsets (the member) or across dropping claimed partitions and committing (the
/// standby).
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<BTreeSet<i32>>>);

impl Claims {
    pub fn lock(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        // The set is only ever inserted into or removed from whole: a panic cannot leave it
        // half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follows the partitions this process does not own until `stop`. Waits until the member has
/// joined (it opened the database first and checked the topic), and does nothing when the
/// member refused the topic.
pub fn run(
    config: &Config,
    claims: Claims,
    mut progress: ProgressRx,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    lower_priority();
    while !progress.borrow_and_update().joined {
        if stop.is_cancelled() || progress.borrow().refused.is_some() {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    if progress.borrow().refused.is_some() {
        return Ok(());
    }
    let topic = config.kafka.topic.clone();
    let mut store = Store::open(&config.db, &topic, OpenMode::Existing)
        .with_context(|| format!("standby cannot open database {}", config.db.display()))?;
    store.bind_idempotency_window(config.idempotency_window())?;
    let fetch = Fetch {
        wait_max: Some(FETCH_WAIT),
        ..config.fetch()
    };
    let consumer: BaseConsumer<LoggingContext> = client_config::reader(&config.kafka, &fetch)
        .create_with_context(LoggingContext::default())
        .context("cannot create the standby's Kafka reader")?;
    let mut s = Standby {
        topic,
        consumer,
        applier: Applier::new(store),
        claims,
        partitions: Vec::new(),
        unreadable: BTreeSet::new(),
    };
    tracing::info!(
        nice = NICE,
        "standby following the partitions other members own"
    );
    let mut last_reconcile = Instant::now() - RECONCILE_EVERY;
    let mut last_metadata = Instant::now() - METADATA_EVERY;
    let mut last_commit = Instant::now();
    while !stop.is_cancelled() {
        if last_metadata.elapsed() >= METADATA_EVERY {
            match partitions_of(&s.consumer, &s.topic, TIMEOUT) {
                Ok(ps) => s.partitions = ps,
                Err(e) => tracing::warn!(error = %e, "standby cannot read the topic's partitions"),
            }
            last_metadata = Instant::now();
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            s.reconcile()?;
            last_reconcile = Instant::now();
        }
        s.poll_once();
        if s.applier.has_work()
            && (last_commit.elapsed() >= COMMIT_EVERY
                || s.applier.pending_records() >= config.max_pending_records)
        {
            s.commit();
            last_commit = Instant::now();
        }
    }
    s.commit();
    Ok(())
}

struct Standby {
    topic: String,
    consumer: BaseConsumer<LoggingContext>,
    applier: Applier,
    claims: Claims,
    /// The topic's partitions, as last read.
    partitions: Vec<i32>,
    /// Partitions whose stored offset the log does not cover; the member reports them when it
    /// owns one, the standby only leaves them alone.
    unreadable: BTreeSet<i32>,
}

impl Standby {
    /// Follows every partition that is neither claimed nor unreadable; drops the others with
    /// their pending work.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let claims = self.claims.clone();
        let claimed = claims.lock();
        let followed: BTreeSet<i32> = self.applier.owned().collect();
        let want: BTreeSet<i32> = self
            .partitions
            .iter()
            .copied()
            .filter(|p| !claimed.contains(p) && !self.unreadable.contains(p))
            .collect();
        let drop: Vec<i32> = followed.difference(&want).copied().collect();
        let reader = FoldingReader::new(&self.consumer, &self.topic);
        if !drop.is_empty() {
            self.applier.discard(&drop);
            reader
                .leave(&drop)
                .context("standby cannot unassign partitions")?;
            tracing::info!(partitions = ?drop, "standby stopped following (owned here now, or unreadable)");
        }
        let add: Vec<i32> = want.difference(&followed).copied().collect();
        if !add.is_empty() {
            let starts = self
                .applier
                .assign(&add)
                .context("standby cannot read stored offsets")?;
            reader
                .start(&mut self.applier, &starts, Start::Add)
                .context("standby cannot assign partitions")?;
            tracing::info!(
                ?starts,
                "standby following partitions from their stored offsets"
            );
        }
        instruments::standby_partitions(self.applier.owned().count());
        Ok(())
    }

    /// Reads once and folds what came, by the rules of [`FoldingReader`]; a partition whose
    /// stored offset the log does not cover is left alone.
    fn poll_once(&mut self) {
        let reader = FoldingReader::new(&self.consumer, &self.topic);
        match reader.poll(POLL) {
            Polled::Record(m) => {
                reader.fold(&mut self.applier, &m);
            }
            Polled::End(_) | Polled::Nothing => reader.advance(&mut self.applier, None),
            Polled::OutsideLog(_) => {
                let followed: Vec<i32> = self.applier.owned().collect();
                for o in reader.judge(&mut self.applier, &followed) {
                    tracing::warn!(
                        partition = o.partition,
                        reason = o.why.reason(),
                        "standby leaves a partition the log does not cover"
                    );
                    self.unreadable.insert(o.partition);
                }
            }
            Polled::Error(e) => tracing::debug!(error = %e, "standby reader error"),
        }
    }

    /// Commits what was folded, after dropping partitions the member claimed meanwhile. A
    /// failed or fenced commit only costs the standby its pending work.
    fn commit(&mut self) {
        let claims = self.claims.clone();
        let claimed = claims.lock();
        let taken: Vec<i32> = self
            .applier
            .owned()
            .filter(|p| claimed.contains(p))
            .collect();
        self.applier.discard(&taken);
        match self.applier.commit() {
            Ok(r) => {
                instruments::standby_committed(&r);
                for (p, stored) in r.fenced {
                    tracing::warn!(
                        partition = p,
                        ?stored,
                        "standby commit fenced; following on from the stored offset"
                    );
                    FoldingReader::new(&self.consumer, &self.topic).seek(
                        &mut self.applier,
                        p,
                        stored,
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "standby commit failed, pending work kept"),
        }
    }
}

/// Lowers this thread's priority; threads it creates inherit it. Failing to is only logged.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid(2) and setpriority(2) take plain integers and touch no memory of ours.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "standby cannot lower its priority");
    }
}
