//! The command-line flags that say where the log is (brokers, topic, how to create the topic).
//! Nothing here talks to the broker: the settings of each client are [`crate::client_config`]'s,
//! the topic's creation and checks [`crate::topic`]'s, reading [`crate::reader`]'s.

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
    /// The operator's own client settings (security, mostly), applied after Tally's.
    #[command(flatten)]
    pub client_config: crate::kafka_overrides::KafkaConfigArgs,
    /// [`KafkaArgs::overrides`], judged once.
    #[arg(skip)]
    overrides: std::sync::OnceLock<Result<crate::kafka_overrides::Overrides, String>>,
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
            client_config: Default::default(),
            overrides: Default::default(),
        }
    }

    /// The same settings (the operator's client settings included) for other brokers: another
    /// origin's cluster.
    pub fn with_brokers(&self, brokers: &str) -> Self {
        KafkaArgs {
            brokers: brokers.to_owned(),
            ..self.clone()
        }
    }

    /// The operator's client settings ([`crate::kafka_overrides`]), read and judged once. The
    /// start-up check ([`crate::kafka_access::check`]) ends the process on an error; the client
    /// builders apply them only when valid ([`crate::client_config`]'s `finish`).
    pub fn overrides(
        &self,
    ) -> Result<&crate::kafka_overrides::Overrides, crate::kafka_overrides::Misconfigured> {
        self.overrides
            .get_or_init(|| self.client_config.load())
            .as_ref()
            .map_err(|e| crate::kafka_overrides::Misconfigured(e.clone()))
    }

    /// `text` without any secret of the operator's settings.
    pub fn overrides_redact(&self, text: &str) -> String {
        match self.overrides() {
            Ok(o) => o.redact(text),
            Err(_) => text.to_owned(),
        }
    }
}
