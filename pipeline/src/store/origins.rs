//! The store's side of origins ([`crate::origin`]): the registry of the logs a database folds
//! (table `origins`: names, identities, retirement), each origin's part of a key's sum, and
//! what [`Store::apply`] does for the cross-origin retry rule ([`crate::across`]) inside its
//! transaction: it stores the counted copies of a committed batch (`request_copies`), judges
//! each copy's group again, and takes the deltas newly left out from the `sums` rows of
//! [`ACROSS`]. Copies no origin can meet again are pruned after the commit.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{Result, Store, StoreError};
use crate::across::{left_out, Counted, OfOrigin};
use crate::origin::{Identity, KnownOrigin, OriginId, ACROSS, LOCAL};

/// One row of `origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OriginRow {
    pub id: OriginId,
    pub name: Option<String>,
    pub retired: bool,
}

/// The origins of a database, as read at open and after each change.
#[derive(Debug, Clone, Default)]
pub(super) struct Registry {
    pub rows: Vec<OriginRow>,
}

impl Registry {
    pub(super) fn load(conn: &Connection) -> Result<Registry> {
        let mut stmt = conn.prepare("SELECT id, name, retired FROM origins ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OriginRow {
                    id: OriginId(r.get(0)?),
                    name: r.get(1)?,
                    retired: r.get::<_, i64>(2)? != 0,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Registry { rows })
    }

    /// The name the cross-origin rule orders an origin's copies by.
    fn name(&self, id: OriginId) -> String {
        self.rows
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }

    /// Whether batches must keep what they counted: more than one origin was ever folded.
    pub(super) fn several(&self) -> bool {
        self.rows.len() > 1
    }
}

impl Store {
    /// The local origin's stored name; `None` until a process that knows it opened the database.
    pub fn local_origin_name(&self) -> Option<&str> {
        self.origins
            .rows
            .iter()
            .find(|r| r.id == LOCAL)
            .and_then(|r| r.name.as_deref())
    }

    /// Binds the local origin to `name`: the first name given is stored (a database folded
    /// before it knew origins takes it then); another one later is refused.
    pub fn bind_local_origin(&mut self, name: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken: Option<i64> = tx
            .query_row(
                "SELECT id FROM origins WHERE name = ?1 AND id <> 0",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(StoreError::OriginName(format!(
                "this database folds a remote origin named {name}: the local origin needs another --origin-name"
            )));
        }
        tx.execute(
            "UPDATE origins SET name = ?1 WHERE id = 0 AND name IS NULL",
            [name],
        )?;
        let stored: String =
            tx.query_row("SELECT name FROM origins WHERE id = 0", [], |r| r.get(0))?;
        tx.commit()?;
        self.origins = Registry::load(&self.conn)?;
        if stored != name {
            return Err(StoreError::OriginName(format!(
                "this database's local origin is named {stored}, not {name}: pass --origin-name {stored}"
            )));
        }
        Ok(())
    }

    /// The remote origins the database knows, retired ones included, by id.
    pub fn known_origins(&self) -> Vec<KnownOrigin> {
        self.origins
            .rows
            .iter()
            .filter(|r| r.id != LOCAL)
            .map(|r| KnownOrigin {
                name: r.name.clone().unwrap_or_default(),
                retired: r.retired,
            })
            .collect()
    }

    /// Every origin's id and name (the local one first), retired ones included.
    pub fn origins(&self) -> Vec<(OriginId, String)> {
        self.origins
            .rows
            .iter()
            .map(|r| (r.id, self.origins.name(r.id)))
            .collect()
    }

    /// Whether the database knows more than one origin (retired ones included): then batches
    /// keep what they counted for the cross-origin rule.
    pub fn folds_several_origins(&self) -> bool {
        self.origins.several()
    }

    pub fn origin_id(&self, name: &str) -> Option<OriginId> {
        self.origins
            .rows
            .iter()
            .find(|r| r.name.as_deref() == Some(name))
            .map(|r| r.id)
    }

    /// Registers a remote origin, folded from its start; returns its id (the stored one when
    /// it is known already). The local origin must be named first.
    pub fn add_origin(&mut self, name: &str) -> Result<OriginId> {
        if let Some(id) = self.origin_id(name) {
            return Ok(id);
        }
        if self.local_origin_name().is_none() {
            return Err(StoreError::OriginName(
                "the local origin has no name yet: bind it before adding others".into(),
            ));
        }
        self.conn.execute(
            "INSERT INTO origins (id, name) SELECT MAX(id) + 1, ?1 FROM origins",
            [name],
        )?;
        self.origins = Registry::load(&self.conn)?;
        Ok(self.origin_id(name).expect("just inserted"))
    }

    /// Stops folding a remote origin for good; its part of every sum stays as folded.
    pub fn retire_origin(&mut self, name: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE origins SET retired = 1 WHERE name = ?1 AND id <> 0",
            [name],
        )?;
        self.origins = Registry::load(&self.conn)?;
        Ok(())
    }

    /// What identifies an origin's log, as stored when first met.
    pub fn stored_identity(&self, origin: OriginId) -> Result<Identity> {
        Ok(self
            .conn
            .query_row(
                "SELECT cluster_id, topic_id FROM origins WHERE id = ?1",
                [origin.0],
                |r| {
                    Ok(Identity {
                        cluster_id: r.get(0)?,
                        topic_id: r.get(1)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Stores the parts of an origin's identity not stored yet and returns the stored identity
    /// (to be judged against `current` with [`crate::origin::judge_identity`]).
    pub fn bind_identity(&mut self, origin: OriginId, current: &Identity) -> Result<Identity> {
        self.conn.execute(
            "UPDATE origins SET cluster_id = COALESCE(cluster_id, ?2),
                 topic_id = COALESCE(topic_id, ?3) WHERE id = ?1",
            params![origin.0, current.cluster_id, current.topic_id],
        )?;
        self.stored_identity(origin)
    }

    /// A key's sum per origin, over its partitions, for the origins that folded it (each
    /// origin's part as its log alone gives it). The global sum ([`Store::key_sum`]) is their
    /// total less what more than one origin counted.
    pub fn origin_key_sums(&self, key: &str) -> Result<BTreeMap<OriginId, i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT origin, sum FROM sums WHERE key = ?1 AND origin >= 0")?;
        let mut rows = stmt.query([key])?;
        let mut out: BTreeMap<OriginId, i128> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            *out.entry(OriginId(r.get(0)?)).or_default() += r.get::<_, i64>(1)? as i128;
        }
        Ok(out
            .into_iter()
            .map(|(o, s)| (o, s.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
            .collect())
    }

    /// Counted copies kept for the cross-origin rule, over all partitions.
    pub fn copy_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM request_copies", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Deletes up to `max_rows` of a partition's counted copies that no origin still folded
    /// can meet again, oldest first, in one transaction. Returns the rows deleted. A later copy
    /// of origin X belongs to a request X first saw at most a window before X's clock (else
    /// that request is dead there), so it can only meet copies first seen less than two
    /// windows before X's clock.
    pub(super) fn prune_copies(&mut self, partition: i32, max_rows: usize) -> Result<usize> {
        if !self.origins.several() {
            return Ok(0);
        }
        let window = self.window.as_millis().min(i64::MAX as u128) as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached(
                "DELETE FROM request_copies WHERE (partition, request, idx, origin, \"offset\") IN (
                     SELECT partition, request, idx, origin, \"offset\" FROM request_copies c
                     WHERE c.partition = ?1 AND NOT EXISTS (
                         SELECT 1 FROM origins o WHERE o.id <> c.origin AND o.retired = 0
                         AND NOT EXISTS (
                             SELECT 1 FROM offsets f WHERE f.topic = ?2 AND f.origin = o.id
                             AND f.partition = ?1 AND f.log_clock - 2 * ?3 > c.first_seen))
                     ORDER BY c.first_seen LIMIT ?4)",
            )?
            .execute(params![partition, self.topic, window, max_rows as i64])?;
        tx.commit()?;
        Ok(n)
    }
}

/// Stores the copies a committed batch of `origin`'s `partition` counted, judges each copy's
/// group again with everything stored, and takes the deltas of copies newly left out from the
/// partition's [`ACROSS`] rows. Runs in `apply`'s transaction.
pub(super) fn record_counted(
    tx: &Transaction<'_>,
    registry: &Registry,
    window_ms: i64,
    origin: OriginId,
    partition: i32,
    counted: &[Counted],
) -> Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO request_copies
         (partition, request, idx, origin, \"offset\", fingerprint, first_seen, key, delta, left_out)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
    )?;
    let mut group = tx.prepare_cached(
        "SELECT origin, \"offset\", fingerprint, first_seen, key, delta, left_out
         FROM request_copies WHERE partition = ?1 AND request = ?2 AND idx = ?3",
    )?;
    let mut flag = tx.prepare_cached(
        "UPDATE request_copies SET left_out = 1
         WHERE partition = ?1 AND request = ?2 AND idx = ?3 AND origin = ?4 AND \"offset\" = ?5",
    )?;
    let mut across = tx
        .prepare_cached("SELECT sum FROM sums WHERE key = ?1 AND partition = ?2 AND origin = ?3")?;
    let mut set_across = tx.prepare_cached(
        "INSERT INTO sums (key, partition, origin, sum) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key, partition, origin) DO UPDATE SET sum = excluded.sum",
    )?;
    for c in counted {
        let fingerprint = c.fingerprint.as_ref().map(<[u8; 16]>::as_slice);
        insert.execute(params![
            partition,
            c.request,
            c.index,
            origin.0,
            c.offset,
            fingerprint,
            c.first_seen,
            c.key,
            c.delta
        ])?;
        let rows: Vec<(OriginId, bool, Counted)> = group
            .query_map(params![partition, c.request, c.index], |r| {
                let fingerprint: Option<Vec<u8>> = r.get(2)?;
                Ok((
                    OriginId(r.get(0)?),
                    r.get::<_, i64>(6)? != 0,
                    Counted {
                        request: c.request.clone(),
                        index: c.index,
                        fingerprint: fingerprint.and_then(|f| f.try_into().ok()),
                        first_seen: r.get(3)?,
                        offset: r.get(1)?,
                        key: r.get(4)?,
                        delta: r.get(5)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = rows.iter().map(|(o, _, _)| registry.name(*o)).collect();
        let copies: Vec<OfOrigin<'_>> = rows
            .iter()
            .zip(&names)
            .map(|((_, _, counted), name)| OfOrigin {
                origin: name,
                counted,
            })
            .collect();
        // Only flags that turn on are written. On the whole set a flag never turns off again
        // (more copies only leave more out); the group read here may lack copies pruned
        // since, which decided flags stored earlier but cannot decide any later copy's.
        let now = left_out(&copies, window_ms);
        for ((o, was, copy), out) in rows.iter().zip(now) {
            if *was || !out {
                continue;
            }
            flag.execute(params![
                partition,
                copy.request,
                copy.index,
                o.0,
                copy.offset
            ])?;
            let stored: i64 = across
                .query_row(params![copy.key, partition, ACROSS.0], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            set_across.execute(params![
                copy.key,
                partition,
                ACROSS.0,
                stored.saturating_sub(copy.delta)
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::schema::MIGRATIONS;
    use super::super::OpenMode;
    use super::*;
    use crate::applier::Applier;
    use crate::fold::Record;
    use crate::record::{encode_request, encode_value};

    #[test]
    fn a_schema_3_database_becomes_the_local_origin_named_at_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 3;
                 INSERT INTO meta VALUES ('topic', 't'), ('topic_id', 'TID');
                 INSERT INTO offsets VALUES ('t', 2, 7, 1234);
                 INSERT INTO sums VALUES ('k', 2, 40), ('j', 1, -3);
                 INSERT INTO requests VALUES (2, x'72', NULL, x'01', 1200);
                 INSERT INTO rejected_records VALUES ('t', 2, 5, 'why', NULL, NULL);",
            )
            .unwrap();
        }
        let mut s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(
            (s.stored_offset(2).unwrap(), s.stored_clock(2).unwrap()),
            (Some(7), Some(1234))
        );
        assert_eq!(s.key_sum("k").unwrap(), Some(40));
        assert_eq!(s.partition_sum(2, "k").unwrap(), 40);
        assert_eq!(s.stored_request(2, b"r").unwrap().unwrap().first_seen, 1200);
        assert_eq!(s.rejected_offsets().unwrap(), vec![(2, 5)]);
        assert_eq!(s.stored_topic_id().unwrap().as_deref(), Some("TID"));
        assert_eq!(s.local_origin_name(), None);
        assert_eq!(
            s.origin_key_sums("k").unwrap(),
            BTreeMap::from([(LOCAL, 40)])
        );
        s.bind_local_origin("east").unwrap();
        drop(s);
        let mut s = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(s.local_origin_name(), Some("east"));
        s.bind_local_origin("east").unwrap();
        let e = s.bind_local_origin("local").unwrap_err().to_string();
        assert!(e.contains("--origin-name east"), "{e}");
        // A remote origin cannot take the local one's name, nor the other way round.
        let west = s.add_origin("west").unwrap();
        assert_eq!(s.add_origin("west").unwrap(), west, "known already");
        assert_ne!(west, LOCAL);
        assert_eq!(s.stored_offset_of(west, 2).unwrap(), None);
        let fresh = dir.path().join("fresh.db");
        let mut f = Store::open(&fresh, "t", OpenMode::CreateNew).unwrap();
        assert!(
            f.add_origin("west").is_err(),
            "the local origin is named first"
        );
        f.bind_local_origin("east").unwrap();
        f.add_origin("west").unwrap();
        assert!(f.bind_local_origin("west").is_err());
    }

    #[test]
    fn identities_are_stored_when_first_met_and_origins_retire() {
        let mut s = Store::in_memory("t").unwrap();
        s.bind_local_origin("a").unwrap();
        let b = s.add_origin("b").unwrap();
        let half = Identity {
            cluster_id: Some("C".into()),
            topic_id: None,
        };
        assert_eq!(s.bind_identity(b, &half).unwrap(), half);
        let full = Identity {
            cluster_id: Some("other".into()),
            topic_id: Some("T".into()),
        };
        let stored = s.bind_identity(b, &full).unwrap();
        assert_eq!(
            stored,
            Identity {
                cluster_id: Some("C".into()),
                topic_id: Some("T".into())
            },
            "a stored part is never replaced"
        );
        assert_eq!(
            s.known_origins(),
            vec![KnownOrigin {
                name: "b".into(),
                retired: false
            }]
        );
        s.retire_origin("b").unwrap();
        assert!(s.known_origins()[0].retired);
        assert!(s.folds_several_origins());
    }

    /// An applier on an in-memory store with origins "a" (local) and "b", a window of 1 s,
    /// owning partition 0 of both.
    fn two_origins() -> (Applier, OriginId) {
        let mut s = Store::in_memory("t").unwrap();
        s.bind_idempotency_window(Some(Duration::from_secs(1)))
            .unwrap();
        s.bind_local_origin("a").unwrap();
        let b = s.add_origin("b").unwrap();
        let mut a = Applier::new(s);
        a.assign(&[0]).unwrap();
        a.assign_of(b, &[0]).unwrap();
        (a, b)
    }

    fn fold(a: &mut Applier, origin: OriginId, off: i64, ts: i64, request: &str, delta: i64) {
        let header = encode_request(request, 0, &[1; 16]);
        let value = encode_value(delta);
        let record = Record::with_request(off, b"k", &value, ts, &header);
        a.fold_of(origin, 0, &record).unwrap();
    }

    #[test]
    fn a_retry_at_another_origin_counts_once_in_the_global_sum_and_in_each_part() {
        let (mut a, b) = two_origins();
        fold(&mut a, LOCAL, 0, 10_000, "r", 5);
        fold(&mut a, LOCAL, 1, 10_001, "s", 1);
        a.commit().unwrap();
        // The client's retry of r at b, a little later on b's clock, in another commit.
        fold(&mut a, b, 0, 10_300, "r", 5);
        let report = a.commit().unwrap();
        assert_eq!(report.committed_of, vec![(b, 0, 1)]);
        let s = a.store();
        assert_eq!(s.key_sum("k").unwrap(), Some(6));
        assert_eq!(
            s.origin_key_sums("k").unwrap(),
            BTreeMap::from([(LOCAL, 6), (b, 5)])
        );
        assert_eq!(s.partition_sum_of(ACROSS, 0, "k").unwrap(), -5);
        // Past the window on b's clock: r there is a new request, and counts.
        fold(&mut a, b, 1, 12_000, "r", 5);
        a.commit().unwrap();
        assert_eq!(a.store().key_sum("k").unwrap(), Some(11));
    }

    #[test]
    fn copies_are_pruned_once_no_origin_can_meet_them_and_decisions_stay() {
        let (mut a, b) = two_origins();
        fold(&mut a, LOCAL, 0, 10_000, "r", 1);
        a.commit().unwrap();
        // b has no clock in partition 0 yet: the copy is kept.
        fold(&mut a, LOCAL, 1, 50_000, "x", 1);
        a.commit().unwrap();
        assert_eq!(a.store().copy_count().unwrap(), 2);
        // b's clock moves to 12,001, more than two windows past r (10,000): a later copy at b
        // belongs to a request b first saw after 11,001, too late to meet r. y (b's, 12,001) is
        // two windows before a's clock (50,000) too; x (50,000) is not.
        fold(&mut a, b, 0, 12_001, "y", 1);
        a.commit().unwrap();
        assert_eq!(a.store().copy_count().unwrap(), 1);
        fold(&mut a, b, 1, 52_000, "z", 1);
        fold(&mut a, LOCAL, 2, 54_001, "w", 1);
        a.commit().unwrap();
        // x (50,000) is exactly two windows before b's clock (52,000): kept. z (52,000) is
        // more than two before a's clock (54,001): pruned. w is not, by b's clock.
        let s = a.store();
        let left: Vec<Vec<u8>> = s
            .connection()
            .prepare("SELECT request FROM request_copies ORDER BY request")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![b"w".to_vec(), b"x".to_vec()]);
        assert_eq!(
            s.key_sum("k").unwrap(),
            Some(5),
            "five requests, none retried"
        );
    }

    #[test]
    fn each_origin_has_its_own_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || {
            let mut s = Store::open(&path, "t", OpenMode::CreateIfMissing).unwrap();
            s.bind_local_origin("a").unwrap();
            let b = s.add_origin("b").unwrap();
            (s, b)
        };
        let (s, b) = open();
        let mut first = Applier::new(s);
        first.assign(&[0]).unwrap();
        first.assign_of(b, &[0]).unwrap();
        let (s, _) = open();
        let mut zombie = Applier::new(s);
        zombie.assign_of(b, &[0]).unwrap();
        fold(&mut first, LOCAL, 0, 10, "p", 1);
        fold(&mut first, b, 0, 10, "q", 2);
        fold(&mut zombie, b, 0, 10, "q", 2);
        assert_eq!(zombie.commit().unwrap().committed_of, vec![(b, 0, 1)]);
        let report = first.commit().unwrap();
        // b's partition 0 moved on meanwhile: fenced, while a's commits.
        assert_eq!(report.committed, vec![(0, 1)]);
        assert_eq!(report.fenced_of, vec![(b, 0, Some(1))]);
        assert_eq!(first.position_of(b, 0), Some(1));
        assert_eq!(first.store().key_sum("k").unwrap(), Some(3));
    }
}
