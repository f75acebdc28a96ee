//! Which database this is: the random identity drawn by migration `005_identity.sql` when the
//! database was created (or first opened by a version that knows identities). Two connections
//! read the same identity exactly when they open the same database file; a copy of the file
//! carries the identity along, so a database is seeded from another only by a rebuild.

use super::{Result, Store};

impl Store {
    /// This database's identity (32 hex digits).
    pub fn database_id(&self) -> Result<String> {
        Ok(self.conn.query_row(
            "SELECT value FROM meta WHERE name = 'database_id'",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::MIGRATIONS;
    use super::super::{OpenMode, Store};
    use rusqlite::Connection;

    #[test]
    fn each_database_has_its_own_identity_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let id_a = Store::open(&a, "t", OpenMode::CreateIfMissing)
            .unwrap()
            .database_id()
            .unwrap();
        let id_b = Store::open(&b, "t", OpenMode::CreateIfMissing)
            .unwrap()
            .database_id()
            .unwrap();
        assert_eq!(id_a.len(), 32, "{id_a}");
        assert!(id_a.bytes().all(|c| c.is_ascii_hexdigit()), "{id_a}");
        assert_ne!(id_a, id_b);
        // Reopened, and by a second connection at once (a shared file): the same identity.
        let again = Store::open(&a, "t", OpenMode::Existing).unwrap();
        let other = Store::open(&a, "t", OpenMode::Existing).unwrap();
        assert_eq!(again.database_id().unwrap(), id_a);
        assert_eq!(other.database_id().unwrap(), id_a);
    }

    #[test]
    fn a_database_older_than_identities_gets_one_when_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch("PRAGMA user_version = 3; INSERT INTO meta VALUES ('topic', 't');")
                .unwrap();
        }
        let id = Store::open(&path, "t", OpenMode::Existing)
            .unwrap()
            .database_id()
            .unwrap();
        assert_eq!(id.len(), 32, "{id}");
        let again = Store::open(&path, "t", OpenMode::Existing).unwrap();
        assert_eq!(again.database_id().unwrap(), id, "drawn once");
    }
}
