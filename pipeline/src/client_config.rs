//! The settings of every Kafka client Tally makes, and nowhere else: the producer (ingest), the
//! consumer-group member (the aggregator), the reader of assigned partitions (the replayer, the
//! aggregator's standby and its table of peers), and the admin client (topic creation, the
//! topic checks and the topic-id lookup). What keeps Tally's guarantees is set here: `acks=all`,
//! idempotence and the partitioner of the producer; no automatic commit, `read_committed` and
//! `auto.offset.reset=error` of every consumer. Callers pass in only their own knobs: the
//! group and session timeout of a member ([`Member`]) and the fetch sizes and wait of a reader
//! ([`Fetch`]).
//!
//! Every builder ends in [`finish`], the single point every client's settings pass through
//! after Tally has set its own: the place to apply settings an operator gives, to every client
//! alike, and to refuse the ones that would break a guarantee above.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::config::ClientConfig;

use crate::kafka::KafkaArgs;
use crate::kafka_log::LoggingContext;

/// The kinds of client Tally makes; [`finish`] is told which one it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Producer,
    GroupMember,
    Reader,
    Admin,
    /// The access probe ([`plain`]).
    Plain,
}

/// How a consumer fetches; `None` keeps librdkafka's default.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    /// Longest time the broker may hold a fetch waiting for records (`fetch.wait.max.ms`).
    pub wait_max: Option<Duration>,
    /// Most bytes of one fetch response (`fetch.max.bytes`); the per-partition limit
    /// (`fetch.message.max.bytes`) is this or 1 MB (librdkafka's default), the smaller.
    pub max_bytes: Option<u64>,
    /// Records per partition kept prefetched (`queued.min.messages`).
    pub queued_min_messages: Option<u64>,
}

/// What a group member's caller chooses.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub group: &'a str,
    pub session_timeout: Duration,
    /// `client.id`, seen by the other members in the group's description.
    pub client_id: Option<String>,
    /// How often librdkafka reports statistics to the client context.
    pub statistics_interval: Option<Duration>,
    pub fetch: Fetch,
}

/// How long the producer waits for a broker's answer to a request before it gives the request
/// up and reconnects.
pub const PRODUCER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a group member waits for any answer from a broker before it gives the request up
/// and reconnects (librdkafka's `socket.timeout.ms`, default 60 s).
pub const MEMBER_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A group member's `max.poll.interval.ms` (default 300 s), raised to the session timeout when
/// that is longer, as librdkafka requires.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// How long librdkafka waits before it fetches a partition again once the partition's prefetch
/// queue is over `queued.min.messages` (`fetch.queue.backoff.ms`, librdkafka's default 1000 ms).
/// One fetch response of small records holds more than a bounded queue's limit (the
/// aggregator's is 1000 records), so the queue is over it after every fetch, and with the
/// default each partition was fetched about once a second: the aggregator folded a backlog at
/// about 80k records/s and the replayer at 160k/s, both processes idle nine tenths of the time
/// (BENCHMARKS.md, "Fetch backoff"). 10 ms brings both to the fold's own speed with the same
/// peak memory, which the queue limits bound, not this wait; 0 spins and was slower.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Producer: every record acknowledged by all in-sync replicas, idempotent so that the
/// producer's own retries never duplicate a record, keyed partitioning like Java clients.
/// A produce request in flight to a leader that went silent (a cut link) is given up after
/// [`PRODUCER_REQUEST_TIMEOUT`] (librdkafka's `request.timeout.ms`, default 30 s, and
/// `socket.timeout.ms`, default 60 s), after which the producer learns the new leader: the
/// defaults kept a partition's writes failing for 30-60 s after its leader was cut off.
/// `max_queued_records` bounds the records waiting to be sent (`queue.buffering.max.messages`).
pub fn producer(
    kafka: &KafkaArgs,
    delivery_timeout: Duration,
    max_queued_records: Option<u64>,
) -> ClientConfig {
    let mut c = base(kafka);
    let timeout = PRODUCER_REQUEST_TIMEOUT.as_millis().to_string();
    c.set("request.timeout.ms", &timeout)
        .set("socket.timeout.ms", &timeout)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    if let Some(n) = max_queued_records {
        c.set("queue.buffering.max.messages", n.to_string());
    }
    finish(kafka, Kind::Producer, c)
}

/// A consumer-group member whose offsets live in SQLite: no automatic commits, no reliance on
/// Kafka's committed offsets (start positions are set on assignment), and the reading rules of
/// every consumer ([`consumer_rules`]).
///
/// Timeouts for a broker that vanishes without a word (a cut link sends no RST): a request
/// in flight to it is given up after `socket.timeout.ms` ([`MEMBER_SOCKET_TIMEOUT`]), and a
/// JoinGroup in flight to a cut coordinator after `max.poll.interval.ms` plus 3 s, which
/// librdkafka uses as that request's timeout. With their defaults (60 s and 300 s) a
/// rebalance that meets a cut coordinator left the group without owners for five minutes.
/// The member polls continuously, so [`MAX_POLL_INTERVAL`] is no constraint on folding.
pub fn group_member(kafka: &KafkaArgs, member: &Member<'_>) -> ClientConfig {
    let mut c = base(kafka);
    let session = member.session_timeout;
    let max_poll = MAX_POLL_INTERVAL.max(session);
    c.set("group.id", member.group)
        .set(
            "socket.timeout.ms",
            MEMBER_SOCKET_TIMEOUT.as_millis().to_string(),
        )
        .set("max.poll.interval.ms", max_poll.as_millis().to_string())
        .set("session.timeout.ms", session.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            (session.as_millis() / 3).max(100).to_string(),
        )
        .set("partition.assignment.strategy", "range");
    if let Some(id) = &member.client_id {
        c.set("client.id", id);
    }
    if let Some(every) = member.statistics_interval {
        c.set("statistics.interval.ms", every.as_millis().to_string());
    }
    consumer_rules(&mut c);
    fetch_settings(&mut c, &member.fetch);
    finish(kafka, Kind::GroupMember, c)
}

/// A reader of explicitly assigned partitions (no group membership) that reports the end of
/// each partition: how the replayer knows it is caught up. It reads by the same rules as the
/// group member ([`consumer_rules`]), so both decide alike. Also the client that only reads
/// metadata and the group's description.
pub fn reader(kafka: &KafkaArgs, fetch: &Fetch) -> ClientConfig {
    let mut c = base(kafka);
    // librdkafka wants a group id for a consumer; this one never joins or commits.
    c.set("group.id", "tally-replayer-unused");
    consumer_rules(&mut c);
    fetch_settings(&mut c, fetch);
    finish(kafka, Kind::Reader, c)
}

/// The admin client: topic creation, the topic checks and the topic-id lookup.
pub fn admin(kafka: &KafkaArgs) -> anyhow::Result<AdminClient<LoggingContext>> {
    finish(kafka, Kind::Admin, base(kafka))
        .create_with_context(LoggingContext::default())
        .context("cannot create the Kafka admin client")
}

/// Only the brokers and the operator's settings, librdkafka's defaults otherwise: the start-up
/// access probe's client ([`crate::kafka_access::probe`]), which must not need a group's ACLs.
pub fn plain(kafka: &KafkaArgs) -> ClientConfig {
    finish(kafka, Kind::Plain, base(kafka))
}

/// Completes the settings of every client, of every [`Kind`], after Tally has set its own.
///
/// This is the one choke point every client's settings pass through: settings an operator
/// gives for the Kafka clients (security, timeouts, anything librdkafka takes) belong here,
/// applied last so that they reach every kind of client alike, with the settings that carry a
/// guarantee set above (`acks`, `enable.idempotence`, `partitioner`, `isolation.level`,
/// `enable.auto.commit`, `enable.auto.offset.store`, `auto.offset.reset`) refused rather than
/// overridden: the operator's settings ([`crate::kafka_overrides`]) are judged at start
/// ([`crate::kafka_access::check`] ends the process on a refused key) and applied here to every
/// kind alike.
fn finish(kafka: &KafkaArgs, _kind: Kind, mut c: ClientConfig) -> ClientConfig {
    if let Ok(o) = kafka.overrides() {
        o.apply(&mut c);
    }
    c
}

fn base(kafka: &KafkaArgs) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        // Quiet the log when a broker restarts; errors still reach the error callback.
        .set("log.connection.close", "false");
    if let Some(debug) = &kafka.kafka_debug {
        c.set("debug", debug);
    }
    c
}

/// How every consumer reads: offsets are Tally's (no automatic commit or offset store), a start
/// position outside the log is an error (`auto.offset.reset=error`), never a silent jump to
/// either end; only committed transactions are read (`isolation.level=read_committed`); the end
/// of each partition is reported; and a partition is fetched again soon after its prefetch
/// queue drains ([`FETCH_QUEUE_BACKOFF_MS`]).
fn consumer_rules(c: &mut ClientConfig) {
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
}

fn fetch_settings(c: &mut ClientConfig, fetch: &Fetch) {
    if let Some(wait) = fetch.wait_max {
        c.set("fetch.wait.max.ms", wait.as_millis().to_string());
    }
    if let Some(bytes) = fetch.max_bytes {
        c.set("fetch.max.bytes", bytes.to_string())
            .set("fetch.message.max.bytes", bytes.min(1 << 20).to_string());
    }
    if let Some(n) = fetch.queued_min_messages {
        c.set("queued.min.messages", n.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> KafkaArgs {
        KafkaArgs::new("127.0.0.1:1", "t", 1)
    }

    #[test]
    fn every_consumer_reads_by_the_same_rules() {
        let member = group_member(
            &args(),
            &Member {
                group: "g",
                session_timeout: Duration::from_secs(6),
                client_id: None,
                statistics_interval: None,
                fetch: Fetch::default(),
            },
        );
        let reader = reader(&args(), &Fetch::default());
        for (key, value) in [
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "error"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ] {
            assert_eq!(member.get(key), Some(value), "member {key}");
            assert_eq!(reader.get(key), Some(value), "reader {key}");
        }
        assert_eq!(member.get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(member.get("fetch.max.bytes"), None, "default kept");
    }

    #[test]
    fn a_fetch_size_also_bounds_each_partition() {
        let fetch = |bytes| Fetch {
            max_bytes: Some(bytes),
            ..Fetch::default()
        };
        let big = reader(&args(), &fetch(2 << 20));
        assert_eq!(big.get("fetch.max.bytes"), Some("2097152"));
        assert_eq!(big.get("fetch.message.max.bytes"), Some("1048576"));
        let small = reader(&args(), &fetch(4096));
        assert_eq!(small.get("fetch.message.max.bytes"), Some("4096"));
    }

    #[test]
    fn the_producer_waits_for_every_replica_and_never_duplicates() {
        let p = producer(&args(), Duration::from_secs(5), None);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("message.timeout.ms"), Some("5000"));
    }
}
