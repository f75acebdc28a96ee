//! The SQLite store: schema and migrations, and `apply`, the one place where sums and offsets
//! change. Every change to a partition's sums happens in the same transaction as the
//! compare-and-set of that partition's next offset against the offset the batch started from.
//!
//! Opening sets WAL mode and `synchronous=FULL` (a committed batch survives power loss), and a
//! busy timeout so that several aggregator processes can share one file.
//!
//! What each partition remembers of client requests (`requests`, see [`crate::fold`]) is
//! written in the same transaction as the sums, and each partition's log clock moves with its
//! offset. The idempotency window is bound to the database ([`Store::bind_idempotency_window`])
//! so that no process folds it with another window. Requests past the window are pruned after
//! each commit in short transactions of their own ([`PRUNE_CHUNK`] rows each), so the write
//! lock every aggregator shares is never held long; a dead request left unpruned is ignored
//! by the fold all the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::fold::{PartitionBatch, RequestState, DEFAULT_WINDOW};

/// Migrations, in order; the schema version is the number applied (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    include_str!("store/001_initial.sql"),
    include_str!("store/002_idempotency.sql"),
    include_str!("store/003_requests.sql"),
];

/// Most dead requests one prune transaction deletes.
pub const PRUNE_CHUNK: usize = 500;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade tally")]
    NewerSchema { found: i64, supported: i64 },
    #[error("database folds topic '{found}', not '{wanted}'")]
    TopicMismatch { found: String, wanted: String },
    #[error("database {0} already exists")]
    Exists(String),
    #[error("database {0} does not exist")]
    Missing(String),
    #[error("database remembers requests for {stored} s, not {wanted} s: pass --idempotency-window-secs {stored}, or rebuild into a new database to change the window")]
    WindowMismatch { stored: u64, wanted: u64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A partition whose stored offset was not the one its batch started from: another consumer
/// owns it now (or did meanwhile). Its batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub partition: i32,
    pub expected: Option<i64>,
    pub stored: Option<i64>,
}

/// What `apply` did: partitions committed with their new next offset, and partitions fenced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub committed: Vec<(i32, i64)>,
    pub fenced: Vec<Fenced>,
    /// How long `apply` held the database's write lock, transaction by transaction.
    pub lock_held: LockHeld,
}

/// Write-lock hold times of one `apply`: its own transaction, and the prune transactions after
/// it (between which other writers may go).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LockHeld {
    pub commit: Duration,
    pub prune_transactions: usize,
    pub longest_prune: Duration,
    pub pruned: usize,
}

/// A database's state at one moment: what verify compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub offsets: BTreeMap<i32, i64>,
    pub sums: BTreeMap<(String, i32), i64>,
    pub rejected: Vec<(i32, i64)>,
}

/// A quarantined record as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// How to open a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it when missing (the aggregator).
    CreateIfMissing,
    /// It must not exist yet (a rebuild into a fresh database).
    CreateNew,
    /// It must exist (verify, continue).
    Existing,
}

/// One connection to a Tally database, bound to one topic.
pub struct Store {
    conn: Connection,
    topic: String,
    window: Duration,
}

impl Store {
    pub fn open(path: &Path, topic: &str, mode: OpenMode) -> Result<Store> {
        let exists = path.exists();
        match mode {
            OpenMode::CreateNew if exists => {
                return Err(StoreError::Exists(path.display().to_string()))
            }
            OpenMode::Existing if !exists => {
                return Err(StoreError::Missing(path.display().to_string()))
            }
            _ => {}
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        Self::init(conn, topic)
    }

    /// An in-memory database, for tests and temporary work.
    pub fn in_memory(topic: &str) -> Result<Store> {
        Self::init(Connection::open_in_memory()?, topic)
    }

    fn init(mut conn: Connection, topic: &str) -> Result<Store> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Pragmas outside any transaction: journal mode cannot change inside one.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        bind_topic(&mut conn, topic)?;
        Ok(Store {
            conn,
            topic: topic.to_owned(),
            window: DEFAULT_WINDOW,
        })
    }

    /// The topic id this database was bound to, if any ([`Store::bind_topic_id`]).
    pub fn stored_topic_id(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE name = 'topic_id'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Binds the database to the broker's id of its topic: the first id given is stored, and
    /// the stored one is returned (the one given, on a database that had none). A database
    /// folded before ids were stored keeps no id until this is first called.
    pub fn bind_topic_id(&mut self, id: &str) -> Result<String> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('topic_id', ?1) ON CONFLICT (name) DO NOTHING",
            [id],
        )?;
        let stored: String =
            tx.query_row("SELECT value FROM meta WHERE name = 'topic_id'", [], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok(stored)
    }

    /// The idempotency window stored in the database, if one was bound.
    pub fn stored_idempotency_window(&self) -> Result<Option<Duration>> {
        let secs: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'idempotency_window_secs'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(secs
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs))
    }

    /// Binds the database to an idempotency window and folds with it from now on: the stored
    /// one when there is one (`wanted`, when given, must equal it), else `wanted` or the
    /// default, which is then stored. Returns the window in force.
    pub fn bind_idempotency_window(&mut self, wanted: Option<Duration>) -> Result<Duration> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let first = wanted.unwrap_or(DEFAULT_WINDOW).as_secs().to_string();
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('idempotency_window_secs', ?1)
             ON CONFLICT (name) DO NOTHING",
            [&first],
        )?;
        let stored: String = tx.query_row(
            "SELECT value FROM meta WHERE name = 'idempotency_window_secs'",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        let stored = stored.parse::<u64>().unwrap_or(0);
        if let Some(w) = wanted.filter(|w| w.as_secs() != stored) {
            return Err(StoreError::WindowMismatch {
                stored,
                wanted: w.as_secs(),
            });
        }
        self.window = Duration::from_secs(stored);
        Ok(self.window)
    }

    /// The idempotency window this store folds with.
    pub fn idempotency_window(&self) -> Duration {
        self.window
    }

    /// What the partition remembers of a request key, dead or alive.
    pub fn stored_request(&self, partition: i32, key: &[u8]) -> Result<Option<RequestState>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT fingerprint, seen, first_seen FROM requests
                 WHERE partition = ?1 AND key = ?2",
            )?
            .query_row(params![partition, key], |r| {
                let fingerprint: Option<Vec<u8>> = r.get(0)?;
                Ok(RequestState {
                    fingerprint: fingerprint.and_then(|f| f.try_into().ok()),
                    seen: r.get(1)?,
                    first_seen: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// A partition's stored log clock (highest record timestamp folded).
    pub fn stored_clock(&self, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT log_clock FROM offsets WHERE topic = ?1 AND partition = ?2")?
            .query_row(params![self.topic, partition], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Deletes up to `max_rows` of a partition's requests first seen more than the window
    /// before its stored log clock, [`PRUNE_CHUNK`] rows per transaction, oldest first.
    /// Returns the rows deleted.
    pub fn prune_requests(&mut self, partition: i32, max_rows: usize) -> Result<usize> {
        let mut held = LockHeld::default();
        self.prune_partition(partition, max_rows, &mut held)?;
        Ok(held.pruned)
    }

    fn prune_partition(
        &mut self,
        partition: i32,
        max_rows: usize,
        held: &mut LockHeld,
    ) -> Result<()> {
        let window = self.window.as_millis().min(i64::MAX as u128) as i64;
        // A read first: most commits find nothing due and then take no write lock for it.
        let due = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM requests WHERE partition = ?1 AND first_seen < (
                     SELECT log_clock - ?3 FROM offsets WHERE topic = ?2 AND partition = ?1)
                 LIMIT 1",
            )?
            .query_row(params![partition, self.topic, window], |_| Ok(()))
            .optional()?
            .is_some();
        let mut deleted = 0;
        while due && deleted < max_rows {
            let chunk = PRUNE_CHUNK.min(max_rows - deleted);
            let started = Instant::now();
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The clock is read inside the transaction: a request dead by it stays dead, since
            // a clock only moves forward, so even a fenced zombie may prune.
            let n = tx
                .prepare_cached(
                    "DELETE FROM requests WHERE (partition, key) IN (
                         SELECT partition, key FROM requests
                         WHERE partition = ?1 AND first_seen < (
                             SELECT log_clock - ?3 FROM offsets
                             WHERE topic = ?2 AND partition = ?1)
                         ORDER BY first_seen LIMIT ?4)",
                )?
                .execute(params![partition, self.topic, window, chunk as i64])?;
            tx.commit()?;
            held.prune_transactions += 1;
            held.longest_prune = held.longest_prune.max(started.elapsed());
            deleted += n;
            if n < chunk {
                break;
            }
        }
        held.pruned += deleted;
        Ok(())
    }

    /// Requests remembered, over all partitions, dead ones not yet pruned included.
    pub fn request_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The stored next offset of a partition, `None` when nothing was ever applied for it.
    pub fn stored_offset(&self, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT next_offset FROM offsets WHERE topic = ?1 AND partition = ?2")?
            .query_row(params![self.topic, partition], |r| r.get(0))
            .optional()?)
    }

    /// Every stored next offset, by partition.
    pub fn stored_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, next_offset FROM offsets WHERE topic = ?1 ORDER BY partition",
        )?;
        let rows = stmt.query_map([&self.topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored sum of a key within one partition (0 when the key has no row there).
    pub fn partition_sum(&self, partition: i32, key: &str) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT sum FROM sums WHERE key = ?1 AND partition = ?2")?
            .query_row(params![key, partition], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// The sum of a key over all partitions; `None` when the key was never seen.
    /// Rows of one key in several partitions (only after a repartition) are added in i128 and
    /// saturate at the i64 bounds.
    pub fn key_sum(&self, key: &str) -> Result<Option<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT sum FROM sums WHERE key = ?1")?;
        let mut rows = stmt.query([key])?;
        let mut total: Option<i128> = None;
        while let Some(row) = rows.next()? {
            *total.get_or_insert(0) += row.get::<_, i64>(0)? as i128;
        }
        Ok(total.map(|t| t.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
    }

    /// The `limit` keys with the largest sums, largest first (ties by key), each with its sum
    /// over all partitions as [`Store::key_sum`] gives it. Ranking uses SQLite's `TOTAL`
    /// (a float, so it never overflows); keys whose sums differ by less than a float's
    /// precision near 2^63 may come in either order.
    pub fn top_keys(&self, limit: usize) -> Result<Vec<(String, i64)>> {
        self.top_keys_of(limit, None)
    }

    /// [`Store::top_keys`] over the rows of `partitions` only (all when `None`).
    pub fn top_keys_of(
        &self,
        limit: usize,
        partitions: Option<&BTreeSet<i32>>,
    ) -> Result<Vec<(String, i64)>> {
        // The set goes in as a JSON array (SQLite's json_each), one statement for any set.
        let only =
            partitions.map(|ps| serde_json::to_string(ps).expect("a set of integers serializes"));
        let filter = "(?2 IS NULL OR partition IN (SELECT value FROM json_each(?2)))";
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT key FROM sums WHERE {filter} GROUP BY key ORDER BY TOTAL(sum) DESC, key LIMIT ?1"
        ))?;
        let keys = stmt
            .query_map(params![limit as i64, only], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut sum_of = self
            .conn
            .prepare_cached(&format!("SELECT sum FROM sums WHERE key = ?1 AND {filter}"))?;
        keys.into_iter()
            .map(|k| {
                let mut total: i128 = 0;
                let mut rows = sum_of.query(params![k, only])?;
                while let Some(row) = rows.next()? {
                    total += row.get::<_, i64>(0)? as i128;
                }
                Ok((k, total.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
            })
            .collect()
    }

    /// Every sum row, keyed by (key, partition): what verify compares.
    pub fn all_sums(&self) -> Result<BTreeMap<(String, i32), i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, partition, sum FROM sums")?;
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Offsets and sums read in one transaction, so they describe the same moment even while
    /// a consumer keeps committing (WAL readers see a snapshot).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let tx = self.conn.unchecked_transaction()?;
        let snap = Snapshot {
            offsets: self.stored_offsets()?,
            sums: self.all_sums()?,
            rejected: self.rejected_offsets()?,
        };
        tx.commit()?;
        Ok(snap)
    }

    /// (partition, offset) of every quarantined record.
    pub fn rejected_offsets(&self) -> Result<Vec<(i32, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, \"offset\" FROM rejected_records WHERE topic = ?1
             ORDER BY partition, \"offset\"",
        )?;
        let rows = stmt.query_map([&self.topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Quarantined records, in partition and offset order, after the given position.
    pub fn rejected(&self, after: Option<(i32, i64)>, limit: usize) -> Result<Vec<RejectedRow>> {
        self.rejected_of(after, limit, |_| true)
    }

    /// [`Store::rejected`] of the partitions `include` accepts only.
    pub fn rejected_of(
        &self,
        after: Option<(i32, i64)>,
        limit: usize,
        include: impl Fn(i32) -> bool,
    ) -> Result<Vec<RejectedRow>> {
        let (p, o) = after.unwrap_or((i32::MIN, i64::MIN));
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, \"offset\", reason, key, value FROM rejected_records
             WHERE topic = ?1 AND (partition, \"offset\") > (?2, ?3)
             ORDER BY partition, \"offset\"",
        )?;
        let mut rows = stmt.query(params![self.topic, p, o])?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(r) = rows.next()? else { break };
            if include(r.get(0)?) {
                out.push(RejectedRow {
                    partition: r.get(0)?,
                    offset: r.get(1)?,
                    reason: r.get(2)?,
                    key: r.get(3)?,
                    value: r.get(4)?,
                });
            }
        }
        Ok(out)
    }

    /// How many records are quarantined for this topic.
    pub fn rejected_count(&self) -> Result<u64> {
        Ok(self.rejected_counts()?.values().sum())
    }

    /// How many records are quarantined, per partition.
    pub fn rejected_counts(&self) -> Result<BTreeMap<i32, u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, COUNT(*) FROM rejected_records WHERE topic = ?1 GROUP BY partition",
        )?;
        let rows = stmt.query_map([&self.topic], |r| {
            Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keys starting with `prefix`, in byte order, strictly after `after` when given, at most
    /// `limit` of them, each with its sum over all partitions (added as [`Store::key_sum`] does).
    pub fn list_sums(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        self.list_sums_of(prefix, after, limit, |_| true)
    }

    /// [`Store::list_sums`] over the rows of the partitions `include` accepts only (a member
    /// answering for the partitions it owns, while its database also holds others).
    pub fn list_sums_of(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        include: impl Fn(i32) -> bool,
    ) -> Result<Vec<(String, i64)>> {
        // Keys compare as bytes (BINARY collation), so the keys with a prefix are one range
        // starting at the prefix; the range scan stops at the first key without it.
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, sum, partition FROM sums WHERE key >= ?1 AND (?2 IS NULL OR key > ?2)
             ORDER BY key, partition",
        )?;
        let mut rows = stmt.query(params![prefix, after])?;
        let mut out: Vec<(String, i128)> = Vec::new();
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            if !key.starts_with(prefix) {
                break;
            }
            if !include(row.get(2)?) {
                continue;
            }
            let sum = row.get::<_, i64>(1)? as i128;
            if let Some((_, total)) = out.last_mut().filter(|(k, _)| *k == key) {
                *total += sum;
            } else if out.len() == limit {
                break;
            } else {
                out.push((key, sum));
            }
        }
        Ok(out
            .into_iter()
            .map(|(k, t)| (k, t.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
            .collect())
    }

    /// Applies pending batches in one transaction. For each partition the stored next offset
    /// must still equal the batch's `start` (compare-and-set); a partition where it does not is
    /// fenced and none of its rows are written, while the other partitions commit.
    /// Empty batches are skipped. The requests a batch touched and its log clock are stored with
    /// its partition's rows. After the commit each committed partition's dead requests are
    /// pruned, at most twice as many as the batches touched (at least [`PRUNE_CHUNK`]), so
    /// pruning keeps up with a steady load without one long transaction.
    pub fn apply<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (i32, &'a PartitionBatch)>,
    ) -> Result<Applied> {
        let started = Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Applied::default();
        let mut touched = 0;
        {
            let mut cas_update = tx.prepare_cached(
                "UPDATE offsets SET next_offset = ?1, log_clock = ?5
                 WHERE topic = ?2 AND partition = ?3 AND next_offset = ?4",
            )?;
            let mut cas_insert = tx.prepare_cached(
                "INSERT INTO offsets (topic, partition, next_offset, log_clock)
                 VALUES (?2, ?3, ?1, ?4)
                 ON CONFLICT (topic, partition) DO NOTHING",
            )?;
            let mut stored = tx.prepare_cached(
                "SELECT next_offset FROM offsets WHERE topic = ?1 AND partition = ?2",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO sums (key, partition, sum) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, partition) DO UPDATE SET sum = excluded.sum",
            )?;
            let mut quarantine = tx.prepare_cached(
                "INSERT OR IGNORE INTO rejected_records
                 (topic, partition, \"offset\", reason, key, value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut remember = tx.prepare_cached(
                "INSERT INTO requests (partition, key, fingerprint, seen, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (partition, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                     seen = excluded.seen, first_seen = excluded.first_seen",
            )?;
            for (partition, batch) in batches {
                let Some(next) = batch.next.filter(|_| !batch.is_empty()) else {
                    continue;
                };
                let swapped = match batch.start {
                    Some(start) => cas_update.execute(params![
                        next,
                        self.topic,
                        partition,
                        start,
                        batch.clock
                    ])?,
                    None => {
                        cas_insert.execute(params![next, self.topic, partition, batch.clock])?
                    }
                };
                if swapped != 1 {
                    out.fenced.push(Fenced {
                        partition,
                        expected: batch.start,
                        stored: stored
                            .query_row(params![self.topic, partition], |r| r.get(0))
                            .optional()?,
                    });
                    continue;
                }
                for (key, sum) in &batch.sums {
                    upsert.execute(params![key, partition, sum])?;
                }
                for r in &batch.rejected {
                    quarantine.execute(params![
                        self.topic, partition, r.offset, r.reason, r.key, r.value
                    ])?;
                }
                // A request stored but dead may be met again: the upsert starts it anew.
                for (key, state) in &batch.requests {
                    let fingerprint = state.fingerprint.as_ref().map(<[u8; 16]>::as_slice);
                    remember.execute(params![
                        partition,
                        key,
                        fingerprint,
                        state.seen,
                        state.first_seen
                    ])?;
                }
                touched += batch.requests.len();
                out.committed.push((partition, next));
            }
        }
        tx.commit()?;
        out.lock_held.commit = started.elapsed();
        let budget = (2 * touched).max(PRUNE_CHUNK) / out.committed.len().max(1);
        let mut held = out.lock_held;
        for &(partition, _) in &out.committed {
            self.prune_partition(partition, budget.max(PRUNE_CHUNK), &mut held)?;
        }
        out.lock_held = held;
        Ok(out)
    }

    /// Direct access for tests and tools that alter a database on purpose.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > supported {
        return Err(StoreError::NewerSchema { found, supported });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

fn bind_topic(conn: &mut Connection, topic: &str) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO meta (name, value) VALUES ('topic', ?1) ON CONFLICT (name) DO NOTHING",
        [topic],
    )?;
    let found: String = tx.query_row("SELECT value FROM meta WHERE name = 'topic'", [], |r| {
        r.get(0)
    })?;
    tx.commit()?;
    if found != topic {
        return Err(StoreError::TopicMismatch {
            found,
            wanted: topic.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::Record;
    use crate::record::{encode_request, encode_value};

    fn batch(
        store: &Store,
        partition: i32,
        start: Option<i64>,
        recs: &[(i64, &str, i64)],
    ) -> PartitionBatch {
        let mut b = PartitionBatch::new(start);
        for &(off, key, delta) in recs {
            b.fold(off, Some(key.as_bytes()), Some(&encode_value(delta)), |k| {
                store.partition_sum(partition, k)
            })
            .unwrap();
        }
        b
    }

    #[test]
    fn apply_commits_sums_and_offsets_together() {
        let mut s = Store::in_memory("t").unwrap();
        let b = batch(&s, 0, None, &[(0, "a", 2), (1, "b", 3), (2, "a", 5)]);
        let out = s.apply([(0, &b)]).unwrap();
        assert_eq!(out.committed, vec![(0, 3)]);
        assert_eq!(s.key_sum("a").unwrap(), Some(7));
        assert_eq!(s.key_sum("b").unwrap(), Some(3));
        assert_eq!(s.key_sum("never").unwrap(), None);
        assert_eq!(s.stored_offset(0).unwrap(), Some(3));

        let b = batch(&s, 0, Some(3), &[(3, "a", -10)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("a").unwrap(), Some(-3));
    }

    #[test]
    fn stale_owner_is_fenced_and_writes_nothing() {
        let mut s = Store::in_memory("t").unwrap();
        // Two owners of partition 0 both start from the stored offset (none).
        let first = batch(&s, 0, None, &[(0, "a", 1), (1, "a", 1)]);
        let zombie = batch(&s, 0, None, &[(0, "a", 1), (1, "a", 1), (2, "a", 1)]);
        assert_eq!(s.apply([(0, &first)]).unwrap().committed, vec![(0, 2)]);
        let out = s.apply([(0, &zombie)]).unwrap();
        assert!(out.committed.is_empty());
        assert_eq!(
            out.fenced,
            vec![Fenced {
                partition: 0,
                expected: None,
                stored: Some(2)
            }]
        );
        assert_eq!(s.key_sum("a").unwrap(), Some(2));

        // Same with a stored offset: both start at 2, one wins.
        let a = batch(&s, 0, Some(2), &[(2, "a", 10)]);
        let b = batch(&s, 0, Some(2), &[(2, "a", 10), (3, "a", 10)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.apply([(0, &a)]).unwrap().fenced.len(), 1);
        assert_eq!(s.key_sum("a").unwrap(), Some(22));
        assert_eq!(s.stored_offset(0).unwrap(), Some(4));
    }

    #[test]
    fn a_fenced_partition_does_not_block_the_others() {
        let mut s = Store::in_memory("t").unwrap();
        let p0 = batch(&s, 0, Some(5), &[(5, "a", 1)]);
        let p1 = batch(&s, 1, None, &[(0, "b", 1)]);
        let out = s.apply([(0, &p0), (1, &p1)]).unwrap();
        assert_eq!(out.committed, vec![(1, 1)]);
        assert_eq!(out.fenced[0].partition, 0);
        assert_eq!(s.key_sum("a").unwrap(), None);
        assert_eq!(s.key_sum("b").unwrap(), Some(1));
    }

    #[test]
    fn rejected_records_land_with_the_offset() {
        let mut s = Store::in_memory("t").unwrap();
        let mut b = PartitionBatch::new(None);
        b.fold(0, Some(b"k"), Some(b"\xffjunk"), |_| Ok::<_, StoreError>(0))
            .unwrap();
        b.fold(1, Some(b"k"), Some(&encode_value(4)), |_| {
            Ok::<_, StoreError>(0)
        })
        .unwrap();
        s.apply([(3, &b)]).unwrap();
        let rows = s.rejected(None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].partition, rows[0].offset), (3, 0));
        assert_eq!(rows[0].value.as_deref(), Some(&b"\xffjunk"[..]));
        assert_eq!(s.stored_offset(3).unwrap(), Some(2));
        assert_eq!(s.key_sum("k").unwrap(), Some(4));
    }

    /// Folds records of request key `rk` (each: offset, record index, timestamp) into a batch of
    /// partition 0 as the applier does, asking the store what it remembers.
    fn request_batch(
        store: &Store,
        start: Option<i64>,
        rk: &str,
        recs: &[(i64, u32, i64)],
    ) -> PartitionBatch {
        let fp = [3; 16];
        let mut b = PartitionBatch::new(start)
            .with_clock(store.stored_clock(0).unwrap(), store.idempotency_window());
        for &(off, index, ts) in recs {
            let header = encode_request(rk, index, &fp);
            let value = encode_value(1);
            let record = Record::with_request(off, b"k", &value, ts, &header);
            b.fold_record(
                &record,
                |k| store.partition_sum(0, k),
                |rk| store.stored_request(0, rk),
            )
            .unwrap();
        }
        b
    }

    #[test]
    fn the_first_topic_id_bound_stays() {
        let mut s = Store::in_memory("t").unwrap();
        assert_eq!(s.stored_topic_id().unwrap(), None);
        assert_eq!(s.bind_topic_id("id-1").unwrap(), "id-1");
        assert_eq!(s.stored_topic_id().unwrap().as_deref(), Some("id-1"));
        assert_eq!(
            s.bind_topic_id("id-2").unwrap(),
            "id-1",
            "a later id does not replace it"
        );
    }

    #[test]
    fn requests_and_the_log_clock_commit_with_the_sums() {
        let mut s = Store::in_memory("t").unwrap();
        let b = request_batch(&s, None, "a", &[(0, 0, 10), (1, 2, 12)]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.stored_clock(0).unwrap(), Some(12));
        let a = s.stored_request(0, b"a").unwrap().unwrap();
        assert_eq!((a.seen, a.first_seen), (vec![0b101], 10));
        assert_eq!(s.stored_request(1, b"a").unwrap(), None, "per partition");
        // The retry, in a later batch after the first committed: only index 1 is new.
        let b = request_batch(&s, Some(2), "a", &[(2, 0, 20), (3, 1, 20), (4, 2, 20)]);
        assert_eq!((b.applied, b.duplicate_keys), (1, 2));
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("k").unwrap(), Some(3));
        assert_eq!(
            s.stored_request(0, b"a").unwrap().unwrap().seen,
            vec![0b111]
        );
        assert_eq!(
            (s.stored_clock(0).unwrap(), s.request_count().unwrap()),
            (Some(20), 1)
        );
    }

    #[test]
    fn a_fenced_batch_remembers_nothing() {
        let mut s = Store::in_memory("t").unwrap();
        let winner = request_batch(&s, None, "w", &[(0, 0, 5)]);
        let zombie = request_batch(&s, None, "z", &[(0, 0, 9)]);
        s.apply([(0, &winner)]).unwrap();
        assert_eq!(s.apply([(0, &zombie)]).unwrap().fenced.len(), 1);
        assert_eq!(s.stored_request(0, b"z").unwrap(), None);
        assert_eq!(
            (s.stored_clock(0).unwrap(), s.request_count().unwrap()),
            (Some(5), 1)
        );
    }

    #[test]
    fn pruning_deletes_only_requests_past_the_window_in_chunks() {
        let mut s = Store::in_memory("t").unwrap();
        s.bind_idempotency_window(Some(Duration::from_secs(1)))
            .unwrap();
        // 1,200 requests first seen at t = 0..1199 ms, then one at 2,500: the clock is 2,500
        // and every request first seen before 1,500 is dead.
        let mut b = PartitionBatch::new(None).with_clock(None, s.idempotency_window());
        let fp = [1; 16];
        for i in 0..1_201 {
            let header = encode_request(&format!("r{i}"), 0, &fp);
            let value = encode_value(1);
            let ts = if i < 1_200 { i } else { 2_500 };
            let record = Record::with_request(i, b"k", &value, ts, &header);
            b.fold_record(&record, |_| Ok::<_, StoreError>(0), |_| Ok(None))
                .unwrap();
        }
        // apply prunes up to twice what it touched: all 1,200 dead ones, in 3 transactions.
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.request_count().unwrap(), 1);
        assert!(s.stored_request(0, b"r1200").unwrap().is_some());
        assert_eq!(
            s.prune_requests(0, 10).unwrap(),
            0,
            "nothing left that is due"
        );
        assert_eq!(
            s.key_sum("k").unwrap(),
            Some(1_201),
            "pruning never touches sums"
        );
    }

    #[test]
    fn the_window_is_bound_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut s = Store::open(&path, "t", OpenMode::CreateNew).unwrap();
        assert_eq!(s.stored_idempotency_window().unwrap(), None);
        let hour = Duration::from_secs(3600);
        assert_eq!(s.bind_idempotency_window(None).unwrap(), DEFAULT_WINDOW);
        drop(s);
        let mut s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(s.bind_idempotency_window(Some(hour)).unwrap(), hour);
        let e = s
            .bind_idempotency_window(Some(Duration::from_secs(60)))
            .unwrap_err();
        assert!(matches!(
            e,
            StoreError::WindowMismatch {
                stored: 3600,
                wanted: 60
            }
        ));
        assert!(e.to_string().contains("--idempotency-window-secs 3600"));
        assert_eq!(s.stored_idempotency_window().unwrap(), Some(hour));
    }

    #[test]
    fn schema_2_keys_become_requests_of_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 2;
                 INSERT INTO meta VALUES ('topic', 't');
                 INSERT INTO offsets VALUES ('t', 0, 4);
                 INSERT INTO idempotency_keys VALUES ('t', 0, x'6f6c64', 3, 1700000000000);",
            )
            .unwrap();
        }
        let s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        let old = s.stored_request(0, b"old").unwrap().unwrap();
        assert_eq!(
            old,
            RequestState {
                fingerprint: None,
                seen: vec![1],
                first_seen: 1_700_000_000_000
            }
        );
        assert_eq!(
            (s.stored_offset(0).unwrap(), s.stored_clock(0).unwrap()),
            (Some(4), None)
        );
    }

    #[test]
    fn top_keys_rank_by_sum_across_partitions_and_keep_exact_values() {
        let mut s = Store::in_memory("t").unwrap();
        let p0 = batch(
            &s,
            0,
            None,
            &[
                (0, "a", 5),
                (1, "b", 7),
                (2, "big", i64::MAX),
                (3, "neg", -9),
            ],
        );
        // "a" also has a row in partition 1 (as after a repartition): 5 + 4 = 9 > 7.
        let p1 = batch(&s, 1, None, &[(0, "a", 4), (1, "c", 7)]);
        s.apply([(0, &p0), (1, &p1)]).unwrap();
        assert_eq!(
            s.top_keys(4).unwrap(),
            vec![
                ("big".to_owned(), i64::MAX),
                ("a".to_owned(), 9),
                ("b".to_owned(), 7),
                ("c".to_owned(), 7),
            ]
        );
        assert_eq!(s.top_keys(0).unwrap(), vec![]);
        // Partition 1's rows only: its own part of "a".
        assert_eq!(
            s.top_keys_of(2, Some(&BTreeSet::from([1]))).unwrap(),
            vec![("c".to_owned(), 7), ("a".to_owned(), 4)]
        );
        assert_eq!(
            s.top_keys(10).unwrap().last().unwrap(),
            &("neg".to_owned(), -9)
        );
    }

    #[test]
    fn sums_are_listed_by_prefix_in_pages() {
        let mut s = Store::in_memory("t").unwrap();
        let b = batch(
            &s,
            0,
            None,
            &[
                (0, "a:1", 1),
                (1, "a:2", 2),
                (2, "a:3", 3),
                (3, "b:1", 4),
                (4, "a", 5),
            ],
        );
        s.apply([(0, &b)]).unwrap();
        // The same key in another partition is added to the key's total.
        let b = batch(&s, 1, None, &[(0, "a:2", 10)]);
        s.apply([(1, &b)]).unwrap();
        let page = s.list_sums("a:", None, 2).unwrap();
        assert_eq!(page, vec![("a:1".into(), 1), ("a:2".into(), 12)]);
        let page = s.list_sums("a:", Some("a:2"), 2).unwrap();
        assert_eq!(page, vec![("a:3".into(), 3)]);
        assert_eq!(s.list_sums("", None, 10).unwrap().len(), 5);
        assert!(s.list_sums("c", None, 10).unwrap().is_empty());
        // Partition 1's row of a:2 only, when only partition 1 is asked for.
        let only1 = s.list_sums_of("a:", None, 10, |p| p == 1).unwrap();
        assert_eq!(only1, vec![("a:2".into(), 10)]);
        assert_eq!(s.rejected_count().unwrap(), 0);
    }

    #[test]
    fn reopening_keeps_state_and_refuses_other_topics_and_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut s = Store::open(&path, "t", OpenMode::CreateNew).unwrap();
            let b = batch(&s, 0, None, &[(0, "a", 1)]);
            s.apply([(0, &b)]).unwrap();
        }
        assert!(matches!(
            Store::open(&path, "t", OpenMode::CreateNew),
            Err(StoreError::Exists(_))
        ));
        let s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(s.key_sum("a").unwrap(), Some(1));
        let mode: String = s
            .connection()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        assert!(matches!(
            Store::open(&path, "other", OpenMode::Existing),
            Err(StoreError::TopicMismatch { .. })
        ));
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path, "t", OpenMode::Existing),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
        assert!(matches!(
            Store::open(&dir.path().join("nope.db"), "t", OpenMode::Existing),
            Err(StoreError::Missing(_))
        ));
    }
}
