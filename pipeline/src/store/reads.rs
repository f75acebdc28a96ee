//! Reads: offsets, sums (of one key, listed by prefix, the top keys), quarantined records, and
//! the snapshot verify compares. Rows of one key in several partitions (only after a
//! repartition) are added in i128 and saturate at the i64 bounds.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};
use crate::origin::{OriginId, LOCAL};

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

impl Store {
    /// The stored next offset of a partition, `None` when nothing was ever applied for it.
    pub fn stored_offset(&self, partition: i32) -> Result<Option<i64>> {
        self.stored_offset_of(LOCAL, partition)
    }

    /// An origin's partition's stored next offset.
    pub fn stored_offset_of(&self, origin: OriginId, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT next_offset FROM offsets WHERE topic = ?1 AND origin = ?3 AND partition = ?2",
            )?
            .query_row(params![self.topic, partition, origin.0], |r| r.get(0))
            .optional()?)
    }

    /// Every stored next offset of the local origin, by partition.
    pub fn stored_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        self.stored_offsets_of(LOCAL)
    }

    /// Every stored next offset of an origin, by partition.
    pub fn stored_offsets_of(&self, origin: OriginId) -> Result<BTreeMap<i32, i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, next_offset FROM offsets WHERE topic = ?1 AND origin = ?2
             ORDER BY partition",
        )?;
        let rows = stmt.query_map(params![self.topic, origin.0], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The local origin's stored sum of a key within one partition (0 when it has no row).
    pub fn partition_sum(&self, partition: i32, key: &str) -> Result<i64> {
        self.partition_sum_of(LOCAL, partition, key)
    }

    /// An origin's part of a key's sum within one partition (0 when it has no row there).
    pub fn partition_sum_of(&self, origin: OriginId, partition: i32, key: &str) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT sum FROM sums WHERE key = ?1 AND partition = ?2 AND origin = ?3",
            )?
            .query_row(params![key, partition, origin.0], |r| r.get(0))
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
        // A key's rows of every origin are added (in i128, saturating at the i64 bounds): its
        // global sum per partition.
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, partition, sum FROM sums")?;
        let mut rows = stmt.query([])?;
        let mut out: BTreeMap<(String, i32), i128> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            *out.entry((r.get(0)?, r.get(1)?)).or_default() += r.get::<_, i64>(2)? as i128;
        }
        Ok(out
            .into_iter()
            .map(|(k, t)| (k, t.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
            .collect())
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
            "SELECT partition, \"offset\" FROM rejected_records WHERE topic = ?1 AND origin = 0
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
             WHERE topic = ?1 AND origin = 0 AND (partition, \"offset\") > (?2, ?3)
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
            "SELECT partition, COUNT(*) FROM rejected_records WHERE topic = ?1 AND origin = 0
             GROUP BY partition",
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_batches::batch;

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
}
