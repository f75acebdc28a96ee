//! The aggregator's flags; each also reads an environment variable and has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tally_pipeline::client_config::Fetch;
use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::origin::OriginArgs;
use tally_pipeline::window::WindowArgs;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "aggregator",
    version,
    about = "Folds the increments topic into exact per-key sums in SQLite and serves them over HTTP"
)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub origins: OriginArgs,
    /// Consumer group; aggregators in one group share the partitions.
    #[arg(long, env = "TALLY_GROUP", default_value = "tally-aggregator")]
    pub group: String,
    /// SQLite database holding sums and offsets: one file shared by the aggregators of a group
    /// on one host, or one per aggregator (then give each an `--advertise-url`: a member on a
    /// database of its own without one has its partitions' reads refused elsewhere,
    /// `owner_not_shared`).
    #[arg(long, env = "TALLY_DB", default_value = "tally.db")]
    pub db: PathBuf,
    /// The URL at which the other aggregators of the group reach this one's HTTP API (for
    /// example `http://10.0.0.2:8081`). Given, it is advertised through the group (in the
    /// Kafka client id), and a read of a key whose partition another member owns is forwarded
    /// to that member: needed when each aggregator has a database of its own. Not given, a read
    /// is answered from the local database when it is the owner's (one shared file), forwarded
    /// to an owner that advertises a URL, and refused otherwise.
    #[arg(long, env = "TALLY_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Also follow, outside the group and at low priority, every partition this member does
    /// not own, into its own database, so that a partition moving here has little left to
    /// fold (a warm standby). Needs `--advertise-url`: only a database of its own can hold
    /// partitions other members own.
    #[arg(long, env = "TALLY_STANDBY", default_value_t = false)]
    pub standby: bool,
    /// Bearer token every read must carry (`Authorization: Bearer TOKEN`); members send it with
    /// the reads they forward to each other. Empty: reads are open. `/healthz`, `/readyz`,
    /// `/metrics` and the status page's files stay open. Not ingest's write token.
    #[arg(
        long,
        env = "TALLY_READ_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub read_token: String,
    /// Address of the HTTP API.
    #[arg(
        long,
        env = "TALLY_AGGREGATOR_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// How often pending work is committed to SQLite, in milliseconds.
    #[arg(long, env = "TALLY_COMMIT_INTERVAL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub commit_interval_ms: u64,
    /// Consumer group session timeout in milliseconds; a member silent this long loses its
    /// partitions.
    #[arg(long, env = "TALLY_SESSION_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1_000..=300_000))]
    pub session_timeout_ms: u64,
    /// Commit early when this many records are pending (bounds memory).
    #[arg(long, env = "TALLY_MAX_PENDING_RECORDS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_records: u64,
    /// Longest read-your-writes wait (`wait_ms`) honoured, in milliseconds; longer asks are
    /// capped.
    #[arg(long, env = "TALLY_MAX_WAIT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub max_wait_ms: u64,
    /// `GET /readyz` fails while the total lag of this process's partitions is above this.
    #[arg(long, env = "TALLY_READY_MAX_LAG", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub ready_max_lag: i64,
    /// Longest time the broker may hold a fetch waiting for new records, in milliseconds:
    /// bounds how soon a new record is folded (read-your-writes latency) against fetch traffic.
    #[arg(long, env = "TALLY_FETCH_WAIT_MAX_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub fetch_wait_max_ms: u64,
    /// Records per partition librdkafka tries to keep prefetched (`queued.min.messages`).
    /// librdkafka's default, 100000, lets it queue the whole backlog of a dozen partitions at
    /// about 100 bytes of bookkeeping per record whatever the record's size (the 64 MB byte
    /// limit counts only payloads); this bounds the aggregator's memory while catching up.
    #[arg(long, env = "TALLY_QUEUED_MIN_MESSAGES", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub queued_min_messages: u64,
    /// Most bytes one fetch response may carry (`fetch.max.bytes`, also the per-partition
    /// limit `fetch.message.max.bytes`). librdkafka keeps about 150 bytes of bookkeeping per
    /// fetched record whatever the record's size, so with small records a 1 MB response is some
    /// 35,000 records and 5 MB of memory; its defaults (50 MB per response, 1 MB per partition)
    /// let one fetch over 12 partitions queue about 60 MB while catching up. Keep it at least
    /// the producers' batch size (1 MB for ingest), so that a whole batch always fits. 2 MB
    /// by default: on tansu 1 MB held the fold rate to 0.61-0.67 of a raw read (each fetch
    /// costs the broker a round of queries and its fetch wait) and 4 MB took the peak RSS
    /// to 71 MB (BENCHMARKS.md, "Fetch size").
    #[arg(long, env = "TALLY_FETCH_MAX_BYTES", default_value_t = 2 << 20,
          value_parser = clap::value_parser!(u64).range(1024..=1_000_000_000))]
    pub fetch_max_bytes: u64,
    /// Shortest gap between two commits made because every fetched record was folded, in
    /// milliseconds. Pending work is committed as soon as the fetched records run out (so a
    /// new increment is readable without waiting for the commit interval), but not more often
    /// than this; under a steady backlog `--commit-interval-ms` and `--max-pending-records`
    /// decide. Set it to the commit interval or above to commit on the interval only.
    #[arg(long, env = "TALLY_MIN_COMMIT_INTERVAL_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub min_commit_interval_ms: u64,
    #[command(flatten)]
    pub window: WindowArgs,
}

impl Config {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn min_commit_interval(&self) -> Duration {
        Duration::from_millis(self.min_commit_interval_ms)
    }

    pub fn limits(&self) -> crate::api::Limits {
        crate::api::Limits {
            max_wait: Duration::from_millis(self.max_wait_ms),
            ready_max_lag: self.ready_max_lag,
        }
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// How the group member fetches: the prefetch and fetch size limits that bound its memory
    /// (`--queued-min-messages`, `--fetch-max-bytes`) and its fetch wait
    /// (`--fetch-wait-max-ms`). The standby keeps the limits and waits longer.
    pub fn fetch(&self) -> Fetch {
        Fetch {
            wait_max: Some(Duration::from_millis(self.fetch_wait_max_ms)),
            max_bytes: Some(self.fetch_max_bytes),
            queued_min_messages: Some(self.queued_min_messages),
        }
    }

    pub fn idempotency_window(&self) -> Option<Duration> {
        self.window.window()
    }
}
