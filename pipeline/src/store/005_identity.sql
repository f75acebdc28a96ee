-- Schema version 4. Applied inside one transaction by store::migrate.

-- The database's identity: 128 random bits, drawn once, when the database is created or first
-- migrated to this version. Aggregators of one group announce it, so a member can tell whether
-- another member's partitions are folded into the very database it reads (store::identity).
INSERT INTO meta (name, value) VALUES ('database_id', lower(hex(randomblob(16))))
    ON CONFLICT (name) DO NOTHING;
