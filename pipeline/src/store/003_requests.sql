-- Schema version 3. Applied inside one transaction by store::migrate.

-- Each partition's log clock: the highest record timestamp folded (Unix ms), moved with the
-- next offset by the same compare-and-set. The idempotency window is measured against it.
ALTER TABLE offsets ADD COLUMN log_clock INTEGER;

-- What each partition remembers of a client request, per request key (the Idempotency-Key):
-- the fingerprint of its content, which of its record indices were folded (a bitmap: bit i
-- of byte i/8), and the partition's log clock when it was first seen. Written by Store::apply
-- in the transaction of the sums and the offset compare-and-set. One database folds one topic
-- (meta.topic), so rows carry no topic. Rows first seen longer than the window before their
-- partition's log clock are dead, whether or not pruning removed them yet.
CREATE TABLE requests (
    partition   INTEGER NOT NULL,
    key         BLOB    NOT NULL,
    -- NULL for requests written with the old header, which carried no fingerprint.
    fingerprint BLOB,
    seen        BLOB    NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (partition, key)
) WITHOUT ROWID;

-- Pruning walks each partition's oldest requests first.
CREATE INDEX requests_by_age ON requests (partition, first_seen);

-- Keys spent under schema 2 become requests of one record, first seen when they were applied
-- (a wall-clock time, close to their records' timestamps).
INSERT INTO requests (partition, key, fingerprint, seen, first_seen)
    SELECT partition, key, NULL, x'01', seen_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
