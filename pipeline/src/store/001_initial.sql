-- Schema version 1. Applied inside one transaction by store::migrate.

-- What this database folds: one topic per database.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Per-key sums, per partition, so a partition's state (its rows plus its offset) is
-- self-contained. A key normally lives in one partition; reads add the rows up.
CREATE TABLE sums (
    key       TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    sum       INTEGER NOT NULL,
    PRIMARY KEY (key, partition)
) WITHOUT ROWID;

-- The next offset to fold for each partition. Changes only together with the sums derived
-- from the records before it, in the same transaction, by compare-and-set.
CREATE TABLE offsets (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

-- Records that could not be applied (undecodable, overflowing), quarantined with their offset
-- in the same transaction that moves the offset past them.
CREATE TABLE rejected_records (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    key         BLOB,
    value       BLOB,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
