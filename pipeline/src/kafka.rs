//! Kafka client configuration shared by the binaries, the command-line flags that choose the
//! broker and topic, and topic creation.

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

/// Where the log is: flags every binary takes. The broker and topic flags are `global`: a
/// binary with subcommands (the replayer) accepts them before or after the subcommand. The
/// topic-creation flags are not (the replayer creates no topic, and `verify --partitions` is
/// its own flag).
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        long,
        global = true,
        env = "TALLY_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Topic that holds the increments.
    #[arg(long, global = true, env = "TALLY_TOPIC", default_value = "increments")]
    pub topic: String,
    /// Partitions to create the topic with when it is missing.
    #[arg(long, env = "TALLY_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// Replication factor to create the topic with when it is missing.
    #[arg(long, env = "TALLY_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication_factor: i32,
    /// librdkafka debug contexts to log (e.g. `fetch,protocol`), for diagnosing the broker.
    #[arg(long, global = true, env = "TALLY_KAFKA_DEBUG")]
    pub kafka_debug: Option<String>,
    /// Start even though the topic deletes records after a time or size (`retention.ms` or
    /// `retention.bytes` not -1). Rebuild, verify and as-of then see only what is left of the
    /// log, and an aggregator that falls behind the retention stops the partition.
    #[arg(long, env = "TALLY_ACCEPT_FINITE_RETENTION", default_value_t = false)]
    pub accept_finite_retention: bool,
}

impl KafkaArgs {
    pub fn new(brokers: &str, topic: &str, partitions: i32) -> Self {
        KafkaArgs {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions,
            replication_factor: 1,
            kafka_debug: None,
            accept_finite_retention: false,
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            // Quiet the log when a broker restarts; errors still reach the error callback.
            .set("log.connection.close", "false");
        if let Some(debug) = &self.kafka_debug {
            c.set("debug", debug);
        }
        c
    }

    /// Producer: every record acknowledged by all in-sync replicas, idempotent so that the
    /// producer's own retries never duplicate a record, keyed partitioning like Java clients.
    /// A produce request in flight to a leader that went silent (a cut link) is given up after
    /// [`PRODUCER_REQUEST_TIMEOUT`] (librdkafka's `request.timeout.ms`, default 30 s, and
    /// `socket.timeout.ms`, default 60 s), after which the producer learns the new leader: the
    /// defaults kept a partition's writes failing for 30-60 s after its leader was cut off.
    pub fn producer(&self, delivery_timeout: Duration) -> ClientConfig {
        let mut c = self.base();
        let timeout = PRODUCER_REQUEST_TIMEOUT.as_millis().to_string();
        c.set("request.timeout.ms", &timeout)
            .set("socket.timeout.ms", &timeout);
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        c
    }

    /// A consumer-group member whose offsets live in SQLite: no automatic commits, no reliance
    /// on Kafka's committed offsets (start positions are set on assignment). A start position
    /// outside the log is an error (`auto.offset.reset=error`), never a silent jump to either
    /// end; only committed transactions are read (`isolation.level=read_committed`).
    ///
    /// Timeouts for a broker that vanishes without a word (a cut link sends no RST): a request
    /// in flight to it is given up after `socket.timeout.ms` ([`MEMBER_SOCKET_TIMEOUT`]), and a
    /// JoinGroup in flight to a cut coordinator after `max.poll.interval.ms` plus 3 s, which
    /// librdkafka uses as that request's timeout. With their defaults (60 s and 300 s) a
    /// rebalance that meets a cut coordinator left the group without owners for five minutes.
    /// The member polls continuously, so [`MAX_POLL_INTERVAL`] is no constraint on folding.
    pub fn group_consumer(&self, group: &str, session_timeout: Duration) -> ClientConfig {
        let mut c = self.base();
        let max_poll = MAX_POLL_INTERVAL.max(session_timeout);
        c.set(
            "socket.timeout.ms",
            MEMBER_SOCKET_TIMEOUT.as_millis().to_string(),
        )
        .set("max.poll.interval.ms", max_poll.as_millis().to_string());
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set(
                "session.timeout.ms",
                session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (session_timeout.as_millis() / 3).max(100).to_string(),
            )
            .set("partition.assignment.strategy", "range");
        read_promptly(&mut c);
        c
    }

    /// A reader of explicitly assigned partitions (no group membership), that reports the end
    /// of each partition: how the replayer knows it is caught up. Same offset-reset and
    /// isolation rules as [`KafkaArgs::group_consumer`], so both decide alike.
    pub fn reader(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", "tally-replayer-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        read_promptly(&mut c);
        c
    }

    pub(crate) fn admin(&self) -> anyhow::Result<AdminClient<crate::kafka_log::LoggingContext>> {
        self.base()
            .create_with_context(crate::kafka_log::LoggingContext::default())
            .context("cannot create the Kafka admin client")
    }

    /// Creates the topic when it is missing, keeping every record for ever
    /// ([`crate::topic::CREATE_CONFIGS`]), then checks the topic's configuration as it is
    /// ([`KafkaArgs::check_topic`]); an existing topic is fine whatever its size.
    pub async fn ensure_topic(&self) -> anyhow::Result<()> {
        self.create_topic().await?;
        self.check_topic().await
    }

    async fn create_topic(&self) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let mut topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        );
        for (name, value) in crate::topic::CREATE_CONFIGS {
            topic = topic.set(name, value);
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .with_context(|| format!("cannot create topic {} on {}", self.topic, self.brokers))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %self.topic, partitions = self.partitions, "created topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %self.topic, "topic exists")
                }
                Err((t, code)) => bail!("cannot create topic {t} on {}: {code}", self.brokers),
            }
        }
        Ok(())
    }
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

fn read_promptly(c: &mut ClientConfig) {
    c.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
}

/// A consumed message as the fold reads it: offset, key, value, timestamp, and its request
/// header ([`crate::record::REQUEST_HEADER`], or the older [`crate::record::IDEMPOTENCY_HEADER`]).
pub fn record_of<M: rdkafka::message::Message>(m: &M) -> crate::fold::Record<'_> {
    use crate::fold::RequestHeader;
    use rdkafka::message::Headers as _;
    let request = m.headers().and_then(|hs| {
        hs.iter().find_map(|h| match (h.key, h.value) {
            (crate::record::REQUEST_HEADER, Some(v)) => Some(RequestHeader::V1(v)),
            (crate::record::IDEMPOTENCY_HEADER, Some(v)) => Some(RequestHeader::Legacy(v)),
            _ => None,
        })
    });
    crate::fold::Record {
        offset: m.offset(),
        key: m.key(),
        value: m.payload(),
        timestamp: m.timestamp().to_millis(),
        request,
    }
}

/// Ids of the topic's partitions, from broker metadata.
pub fn partitions_of<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read metadata of topic {topic}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} is not in the broker's metadata"))?;
    if let Some(e) = t.error() {
        bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(e));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    Ok(ids)
}
