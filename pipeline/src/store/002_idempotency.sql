-- Schema version 2. Applied inside one transaction by store::migrate.

-- Idempotency keys already counted, per partition (a request's records are keyed by the
-- counter key, so a retry lands in the same partition as its original). Written by
-- Store::apply in the same transaction as the sums and the offset compare-and-set, so a
-- fenced batch records no keys either. Bounded: rows older than the retention window and the
-- oldest rows beyond the row cap are pruned (Store::prune_idempotency_keys).
CREATE TABLE idempotency_keys (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    key         BLOB    NOT NULL,
    "offset"    INTEGER NOT NULL,
    -- Unix milliseconds when the batch holding the record was applied.
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (seen_at);
