//! Ingest's flags; each also reads an environment variable and has a default.

use std::net::SocketAddr;
use std::time::Duration;

use tally_pipeline::kafka::KafkaArgs;

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
    /// How long the broker may take to acknowledge a record before the request fails with 503.
    #[arg(long, env = "TALLY_DELIVERY_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub delivery_timeout_ms: u64,
}

impl Config {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}
