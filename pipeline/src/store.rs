//! The SQLite store: schema and migrations, and `apply`, the one place where sums and offsets
//! change. Every change to a partition's sums happens in the same transaction as the
//! compare-and-set of that partition's next offset against the offset the batch started from.
//!
//! Opening sets WAL mode and `synchronous=FULL` (a committed batch survives power loss), and a
//! busy timeout so that several aggregator processes can share one file.
//!
//! Idempotency keys spent by applied records are stored per partition in the same transaction
//! as the sums (`idempotency_keys`), and kept for a bounded time and row count
//! ([`IdempotencyRetention`]); a key older than the retention no longer counts as seen.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::fold::PartitionBatch;

/// Migrations, in order; the schema version is the number applied (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    include_str!("store/001_initial.sql"),
    include_str!("store/002_idempotency.sql"),
];

/// How often `apply` prunes old idempotency keys (pruning is also callable directly).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// How long, and how many, spent idempotency keys are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRetention {
    /// A key spent longer ago than this no longer counts as seen, and is pruned.
    pub max_age: Duration,
    /// At most this many keys are kept; the oldest beyond it are pruned.
    pub max_keys: u64,
}

impl Default for IdempotencyRetention {
    fn default() -> Self {
        IdempotencyRetention {
            max_age: Duration::from_secs(24 * 60 * 60),
            max_keys: 1_000_000,
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of `idempotency_keys.seen_at`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
    retention: IdempotencyRetention,
    last_prune: Option<Instant>,
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
            retention: IdempotencyRetention::default(),
            last_prune: None,
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

    /// Sets how long and how many spent idempotency keys are remembered.
    pub fn set_idempotency_retention(&mut self, retention: IdempotencyRetention) {
        self.retention = retention;
    }

    /// True when a record of `partition` spent `key` within the retention window.
    pub fn idempotency_key_seen(&self, partition: i32, key: &[u8]) -> Result<bool> {
        let oldest = now_ms() - self.retention.max_age.as_millis() as i64;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM idempotency_keys
                 WHERE topic = ?1 AND partition = ?2 AND key = ?3 AND seen_at >= ?4",
            )?
            .query_row(params![self.topic, partition, key, oldest], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Deletes idempotency keys older than the retention window as of `now` (Unix ms), then the
    /// oldest keys beyond the row cap. Returns the rows deleted.
    pub fn prune_idempotency_keys(&mut self, now: i64) -> Result<usize> {
        let oldest = now - self.retention.max_age.as_millis() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = tx.execute(
            "DELETE FROM idempotency_keys WHERE topic = ?1 AND seen_at < ?2",
            params![self.topic, oldest],
        )?;
        let count: i64 = tx.query_row(
            "SELECT count(*) FROM idempotency_keys WHERE topic = ?1",
            [&self.topic],
            |r| r.get(0),
        )?;
        let excess = count - self.retention.max_keys.min(i64::MAX as u64) as i64;
        if excess > 0 {
            deleted += tx.execute(
                "DELETE FROM idempotency_keys WHERE (topic, partition, key) IN (
                     SELECT topic, partition, key FROM idempotency_keys WHERE topic = ?1
                     ORDER BY seen_at, partition, \"offset\" LIMIT ?2)",
                params![self.topic, excess],
            )?;
        }
        tx.commit()?;
        self.last_prune = Some(Instant::now());
        Ok(deleted)
    }

    /// Spent idempotency keys stored, over all partitions.
    pub fn idempotency_key_count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM idempotency_keys WHERE topic = ?1",
            [&self.topic],
            |r| r.get::<_, i64>(0),
        )? as u64)
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
        let mut stmt = self.conn.prepare_cached(
            "SELECT key FROM sums GROUP BY key ORDER BY TOTAL(sum) DESC, key LIMIT ?1",
        )?;
        let keys = stmt
            .query_map([limit as i64], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        keys.into_iter()
            .map(|k| {
                let sum = self.key_sum(&k)?.unwrap_or(0);
                Ok((k, sum))
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
        let (p, o) = after.unwrap_or((i32::MIN, i64::MIN));
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, \"offset\", reason, key, value FROM rejected_records
             WHERE topic = ?1 AND (partition, \"offset\") > (?2, ?3)
             ORDER BY partition, \"offset\" LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![self.topic, p, o, limit as i64], |r| {
            Ok(RejectedRow {
                partition: r.get(0)?,
                offset: r.get(1)?,
                reason: r.get(2)?,
                key: r.get(3)?,
                value: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many records are quarantined for this topic.
    pub fn rejected_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM rejected_records WHERE topic = ?1")?
            .query_row([&self.topic], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Keys starting with `prefix`, in byte order, strictly after `after` when given, at most
    /// `limit` of them, each with its sum over all partitions (added as [`Store::key_sum`] does).
    pub fn list_sums(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        // Keys compare as bytes (BINARY collation), so the keys with a prefix are one range
        // starting at the prefix; the range scan stops at the first key without it.
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, sum FROM sums WHERE key >= ?1 AND (?2 IS NULL OR key > ?2)
             ORDER BY key, partition",
        )?;
        let mut rows = stmt.query(params![prefix, after])?;
        let mut out: Vec<(String, i128)> = Vec::new();
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            if !key.starts_with(prefix) {
                break;
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
    /// Empty batches are skipped. Idempotency keys the batches spent are stored with their
    /// partition's rows; every [`PRUNE_EVERY`] old keys are pruned after the commit.
    pub fn apply<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (i32, &'a PartitionBatch)>,
    ) -> Result<Applied> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Applied::default();
        let now = now_ms();
        {
            let mut cas_update = tx.prepare_cached(
                "UPDATE offsets SET next_offset = ?1
                 WHERE topic = ?2 AND partition = ?3 AND next_offset = ?4",
            )?;
            let mut cas_insert = tx.prepare_cached(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?2, ?3, ?1)
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
            let mut spend = tx.prepare_cached(
                "INSERT INTO idempotency_keys (topic, partition, key, \"offset\", seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (topic, partition, key)
                 DO UPDATE SET \"offset\" = excluded.\"offset\", seen_at = excluded.seen_at",
            )?;
            for (partition, batch) in batches {
                let Some(next) = batch.next.filter(|_| !batch.is_empty()) else {
                    continue;
                };
                let swapped = match batch.start {
                    Some(start) => {
                        cas_update.execute(params![next, self.topic, partition, start])?
                    }
                    None => cas_insert.execute(params![next, self.topic, partition])?,
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
                // A key stored but expired may be spent again: the upsert renews it.
                for (key, offset) in &batch.idempotency_keys {
                    spend.execute(params![self.topic, partition, key, offset, now])?;
                }
                out.committed.push((partition, next));
            }
        }
        tx.commit()?;
        if !matches!(self.last_prune, Some(t) if t.elapsed() < PRUNE_EVERY) {
            self.prune_idempotency_keys(now)?;
        }
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
    use crate::record::encode_value;

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

    fn keyed_batch(
        store: &Store,
        partition: i32,
        start: Option<i64>,
        recs: &[(i64, i64, &str)],
    ) -> PartitionBatch {
        let mut b = PartitionBatch::new(start);
        for &(off, delta, ik) in recs {
            b.fold_keyed(
                off,
                Some(b"k"),
                Some(&encode_value(delta)),
                Some(ik.as_bytes()),
                |k| store.partition_sum(partition, k),
                |ik| store.idempotency_key_seen(partition, ik),
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
    fn idempotency_keys_are_spent_with_the_sums_and_survive_commits() {
        let mut s = Store::in_memory("t").unwrap();
        let b = keyed_batch(&s, 0, None, &[(0, 5, "a"), (1, 5, "a"), (2, 7, "b")]);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("k").unwrap(), Some(12));
        assert!(s.idempotency_key_seen(0, b"a").unwrap());
        assert!(
            !s.idempotency_key_seen(1, b"a").unwrap(),
            "keys are per partition"
        );
        // A retry in a later batch, after the first was committed: passed over.
        let b = keyed_batch(&s, 0, Some(3), &[(3, 5, "a"), (4, 1, "c")]);
        assert_eq!(b.duplicate_keys, 1);
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.key_sum("k").unwrap(), Some(13));
        assert_eq!(s.stored_offset(0).unwrap(), Some(5));
        assert_eq!(s.idempotency_key_count().unwrap(), 3);
    }

    #[test]
    fn a_fenced_batch_spends_no_keys() {
        let mut s = Store::in_memory("t").unwrap();
        let winner = keyed_batch(&s, 0, None, &[(0, 1, "w")]);
        let zombie = keyed_batch(&s, 0, None, &[(0, 1, "w"), (1, 1, "z")]);
        s.apply([(0, &winner)]).unwrap();
        assert_eq!(s.apply([(0, &zombie)]).unwrap().fenced.len(), 1);
        assert!(!s.idempotency_key_seen(0, b"z").unwrap());
        assert_eq!(s.idempotency_key_count().unwrap(), 1);
    }

    #[test]
    fn old_keys_expire_and_the_row_count_is_bounded() {
        let mut s = Store::in_memory("t").unwrap();
        s.set_idempotency_retention(IdempotencyRetention {
            max_age: Duration::from_secs(60),
            max_keys: 3,
        });
        let b = keyed_batch(&s, 0, None, &[(0, 1, "a"), (1, 1, "b")]);
        s.apply([(0, &b)]).unwrap();
        // Age the two keys past the window: they no longer count, and pruning removes them.
        s.connection()
            .execute("UPDATE idempotency_keys SET seen_at = seen_at - 61000", [])
            .unwrap();
        assert!(!s.idempotency_key_seen(0, b"a").unwrap());
        let b = keyed_batch(&s, 0, Some(2), &[(2, 1, "a")]);
        assert_eq!(b.duplicate_keys, 0, "an expired key counts again");
        s.apply([(0, &b)]).unwrap();
        assert_eq!(s.prune_idempotency_keys(now_ms()).unwrap(), 1, "b expired");
        assert!(s.idempotency_key_seen(0, b"a").unwrap(), "a was renewed");

        // Past the row cap the oldest keys go first.
        let recs: Vec<(i64, i64, String)> = (3..8).map(|o| (o, 1, format!("n{o}"))).collect();
        let recs: Vec<(i64, i64, &str)> = recs.iter().map(|(o, d, k)| (*o, *d, &k[..])).collect();
        let b = keyed_batch(&s, 0, Some(3), &recs);
        s.apply([(0, &b)]).unwrap();
        s.connection()
            .execute(
                "UPDATE idempotency_keys SET seen_at = seen_at - 10 WHERE key = 'a'",
                [],
            )
            .unwrap();
        assert_eq!(s.prune_idempotency_keys(now_ms()).unwrap(), 3);
        assert_eq!(s.idempotency_key_count().unwrap(), 3);
        assert!(
            !s.idempotency_key_seen(0, b"a").unwrap(),
            "the oldest went first"
        );
        assert_eq!(
            s.key_sum("k").unwrap(),
            Some(8),
            "pruning never touches sums"
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
