-- Indexes that tansu 0.6's SQLite schema lacks. Its fetch reads each record's headers with
--   select ... from header ... where tp.partition = ? and r.offset_id = ?
-- and the header table has no index, so every record fetched scans every header in the log:
-- a fetch costs O(records fetched x headers stored). Tally puts an idempotency-key header on
-- records, so without this a replay from the start of a 50k-record log never finishes and the
-- broker's CPU grows with the log. Applied by testkit (tests) and infra/local-broker.sh once
-- tansu has created its schema; harmless to apply again. Not needed for Redpanda or Kafka.
create index if not exists tally_header_topition_offset on header (topition, offset_id);
