//! Ingest's flags; each also reads an environment variable and has a default.

use std::net::SocketAddr;
use std::time::Duration;

use tally_pipeline::kafka::KafkaArgs;
use tally_pipeline::record::MAX_KEY_BYTES;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ingest",
    version,
    about = "Accepts increments over HTTP and appends them to the log; answers 200 only after the broker acknowledged"
)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address of the HTTP API.
    #[arg(long, env = "TALLY_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(64..=1024 * 1024 * 1024))]
    pub max_body_bytes: u64,
    /// Most increments accepted in one batch request.
    #[arg(long, env = "TALLY_MAX_BATCH", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_batch: u64,
    /// Longest counter key accepted, in bytes (the default is the most the record format
    /// allows).
    #[arg(long, env = "TALLY_MAX_KEY_BYTES", default_value_t = MAX_KEY_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_KEY_BYTES as u64))]
    pub max_key_bytes: u64,
    /// Largest request head (request line and headers) accepted, in bytes; a larger one is
    /// answered 431 and the connection closed. At least 8192.
    #[arg(long, env = "TALLY_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u64).range(8192..=1024 * 1024))]
    pub max_header_bytes: u64,
    /// How long the broker may take to acknowledge a record before the request fails with 503.
    #[arg(long, env = "TALLY_DELIVERY_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub delivery_timeout_ms: u64,
    /// Most requests handled at once; beyond it requests get 503 with Retry-After at once.
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,
    /// Most records waiting in the producer for the broker's acknowledgement; beyond it
    /// requests get 503 with Retry-After at once.
    #[arg(long, env = "TALLY_MAX_QUEUED_RECORDS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_queued_records: u64,
    /// Requests per second allowed per client IP address (0: no limit); beyond it 429 with
    /// Retry-After.
    #[arg(long, env = "TALLY_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub rate_limit_per_second: u32,
    /// Burst allowed above the per-client rate (0: the same as the rate).
    #[arg(long, env = "TALLY_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// Bearer token every write must carry (`Authorization: Bearer TOKEN`); empty: no auth.
    /// Health, readiness and metrics stay open.
    #[arg(
        long,
        env = "TALLY_AUTH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub auth_token: String,
    /// How long a client may take to send the request line and headers, in milliseconds; also
    /// how long an idle keep-alive connection stays open.
    #[arg(long, env = "TALLY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send the request body, in milliseconds (408 after).
    #[arg(long, env = "TALLY_BODY_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub body_read_timeout_ms: u64,
    /// After a shutdown signal, how long in-flight requests may take before their connections
    /// are dropped, in milliseconds; the producer flush (at most the delivery timeout) follows.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,
}

impl Config {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
