//! The contract Tally's binaries share, and nothing else: the record on the topic
//! ([`record`]), the pure fold of records into sums ([`fold`]), the SQLite store where sums and
//! offsets change together ([`store`]), the owner of partitions that folds and commits
//! ([`applier`]), the rules for reading partitions into it ([`reader`]), which partition a key
//! lives in ([`partition`]), the flags that say where the log is ([`kafka`]) and how long
//! requests are remembered ([`window`]), the settings of every Kafka client
//! ([`client_config`]) with the operator's own ([`kafka_overrides`]), whether the brokers let
//! Tally in ([`kafka_access`]), the topic's creation, settings and identity as the broker gives
//! them ([`topic`]), what an acknowledgement is worth on it ([`durability`]) and what the Kafka
//! client reports ([`kafka_log`]), and process plumbing ([`telemetry`], [`shutdown`]).
//!
//! What must not live here: HTTP (ingest's and the aggregator's own), command-line parsing of a
//! particular binary, or anything that talks to a broker on its own initiative.

pub mod across;
pub mod applier;
pub mod client_config;
pub mod durability;
pub mod fold;
pub mod kafka;
pub mod kafka_access;
pub mod kafka_log;
pub mod kafka_overrides;
pub mod origin;
pub mod origin_start;
pub mod partition;
pub mod reader;
pub mod record;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod topic;
mod topic_id;
pub mod window;
