//! Ingest: the HTTP front door. It validates increments ([`parse`]), appends each one to the
//! topic keyed by its key ([`producer`]) and answers 200 only after the broker acknowledged
//! (acks=all, idempotent producer), with the record's partition and offset.
//!
//! What lives here: routes and their guards, validation, the producer, metrics, the server.
//! What must not: the record encoding (`tally_pipeline::record`), or anything that reads sums.

pub mod config;
pub mod contract;
pub mod handlers;
pub mod parse;
pub mod producer;
pub mod routes;
pub mod server;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::Config;

/// Runs ingest until `shutdown` resolves: then it stops accepting, lets in-flight requests
/// finish (each still waits for its acknowledgement) for at most the shutdown grace, and
/// flushes the producer for at most the delivery timeout.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    telemetry::handle();
    tally_pipeline::topic::ensure(&config.kafka).await?;
    tally_pipeline::durability::report(&config.kafka).await;
    let appender = producer::Appender::new(
        &config.kafka,
        config.delivery_timeout(),
        config.max_queued_records,
    )?;
    let state = Arc::new(handlers::State {
        appender,
        max_batch: config.max_batch as usize,
        max_key_bytes: config.max_key_bytes as usize,
    });
    let guards = Arc::new(routes::Guards::new(
        &config.auth_token,
        config.rate_limit_per_second,
        config.rate_limit_burst,
        config.max_in_flight as usize,
        config.max_body_bytes,
        Duration::from_millis(config.body_read_timeout_ms),
    ));
    let upkeep = tokio::spawn({
        let guards = guards.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                telemetry::handle().run_upkeep();
                guards.forget_idle_clients();
            }
        }
    });
    let served = server::serve(&config, state.clone(), guards, shutdown).await;
    upkeep.abort();
    let flush = config.delivery_timeout();
    let flushed = tokio::task::spawn_blocking(move || state.appender.flush(flush))
        .await
        .context("flush task panicked")?;
    served?;
    flushed?;
    tracing::info!("ingest stopped");
    Ok(())
}
