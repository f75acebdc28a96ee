-- Schema version 4. Applied inside one transaction by store::migrate.

-- The logs this database folds ("origins"): the local datacenter's topic (id 0) and the same
-- topic on other datacenters' clusters. An origin is known by its name (--origin-name for the
-- local one, --origin NAME=BROKERS for the others) and identified by its cluster id and topic
-- id, stored when first met and checked at every start. The local origin's name is NULL until
-- the first process that knows it opens the database (a database of schema 3 or older folded
-- the local log only, so its rows all become the local origin's).
-- A retired origin (--retire-origin) is no longer folded: its part stays as folded.
CREATE TABLE origins (
    id         INTEGER PRIMARY KEY,
    name       TEXT UNIQUE,
    cluster_id TEXT,
    topic_id   TEXT,
    retired    INTEGER NOT NULL DEFAULT 0
);
INSERT INTO origins (id, name, cluster_id, topic_id)
    VALUES (0, NULL, NULL, (SELECT value FROM meta WHERE name = 'topic_id'));
DELETE FROM meta WHERE name = 'topic_id';

-- Per-key sums per partition and origin: each origin's part is the fold of its log alone.
-- Rows of origin -1 hold minus the deltas counted by more than one origin (a request retried
-- at another datacenter), so a key's global sum is the sum of all its rows.
CREATE TABLE sums_v4 (
    key       TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    origin    INTEGER NOT NULL,
    sum       INTEGER NOT NULL,
    PRIMARY KEY (key, partition, origin)
) WITHOUT ROWID;
INSERT INTO sums_v4 (key, partition, origin, sum) SELECT key, partition, 0, sum FROM sums;
DROP TABLE sums;
ALTER TABLE sums_v4 RENAME TO sums;

-- Next offset and log clock per origin and partition, moved together with that origin's rows
-- by one compare-and-set.
CREATE TABLE offsets_v4 (
    topic       TEXT    NOT NULL,
    origin      INTEGER NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    log_clock   INTEGER,
    PRIMARY KEY (topic, origin, partition)
) WITHOUT ROWID;
INSERT INTO offsets_v4 (topic, origin, partition, next_offset, log_clock)
    SELECT topic, 0, partition, next_offset, log_clock FROM offsets;
DROP TABLE offsets;
ALTER TABLE offsets_v4 RENAME TO offsets;

CREATE TABLE rejected_records_v4 (
    topic       TEXT    NOT NULL,
    origin      INTEGER NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    key         BLOB,
    value       BLOB,
    PRIMARY KEY (topic, origin, partition, "offset")
) WITHOUT ROWID;
INSERT INTO rejected_records_v4 (topic, origin, partition, "offset", reason, key, value)
    SELECT topic, 0, partition, "offset", reason, key, value FROM rejected_records;
DROP TABLE rejected_records;
ALTER TABLE rejected_records_v4 RENAME TO rejected_records;

-- What each origin's partition remembers of client requests (its own fold's state).
CREATE TABLE requests_v4 (
    origin      INTEGER NOT NULL,
    partition   INTEGER NOT NULL,
    key         BLOB    NOT NULL,
    fingerprint BLOB,
    seen        BLOB    NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (origin, partition, key)
) WITHOUT ROWID;
INSERT INTO requests_v4 (origin, partition, key, fingerprint, seen, first_seen)
    SELECT 0, partition, key, fingerprint, seen, first_seen FROM requests;
DROP INDEX requests_by_age;
DROP TABLE requests;
ALTER TABLE requests_v4 RENAME TO requests;
CREATE INDEX requests_by_age ON requests (origin, partition, first_seen);

-- Records counted in one origin's part that carry a request header, kept while another
-- origin may still meet a copy of them (see pipeline/src/across.rs), and whether the global
-- sum leaves each out. Written only while the database has more than one origin.
CREATE TABLE request_copies (
    partition   INTEGER NOT NULL,
    request     BLOB    NOT NULL,
    idx         INTEGER NOT NULL,
    origin      INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    fingerprint BLOB,
    first_seen  INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    delta       INTEGER NOT NULL,
    left_out    INTEGER NOT NULL,
    PRIMARY KEY (partition, request, idx, origin, "offset")
) WITHOUT ROWID;
CREATE INDEX request_copies_by_age ON request_copies (partition, first_seen);
