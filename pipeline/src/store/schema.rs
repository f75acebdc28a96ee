//! Opening a database and what it is bound to: the pragmas (WAL, so readers see a snapshot
//! while a consumer writes; `synchronous=FULL`, so a committed batch survives power loss; a
//! busy timeout, so that several aggregator processes can share one file), the migrations in
//! order (the schema version is the number applied, `PRAGMA user_version`; a database newer
//! than this build is refused), the topic the database folds, and the broker's id of it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{Result, Store, StoreError};
use crate::fold::DEFAULT_WINDOW;

/// Migrations, in order; the schema version is the number applied (`PRAGMA user_version`).
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("001_initial.sql"),
    include_str!("002_idempotency.sql"),
    include_str!("003_requests.sql"),
    include_str!("004_origins.sql"),
    include_str!("005_identity.sql"),
];

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
        let origins = super::origins::Registry::load(&conn)?;
        Ok(Store {
            conn,
            topic: topic.to_owned(),
            window: DEFAULT_WINDOW,
            origins,
        })
    }

    /// The topic id this database was bound to, if any ([`Store::bind_topic_id`]).
    pub fn stored_topic_id(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT topic_id FROM origins WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    /// Binds the database to the broker's id of its topic: the first id given is stored, and
    /// the stored one is returned (the one given, on a database that had none). A database
    /// folded before ids were stored keeps no id until this is first called.
    pub fn bind_topic_id(&mut self, id: &str) -> Result<String> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE origins SET topic_id = COALESCE(topic_id, ?1) WHERE id = 0",
            [id],
        )?;
        let stored: String =
            tx.query_row("SELECT topic_id FROM origins WHERE id = 0", [], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok(stored)
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
    use crate::fold::RequestState;
    use crate::store::test_batches::batch;

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
