//! Ingest: the HTTP front door. It validates increments ([`parse`]), appends each one to the
//! topic keyed by its key ([`producer`]) and answers 200 only after the broker acknowledged
//! (acks=all, idempotent producer), with the record's partition and offset.
//!
//! What lives here: routes, validation, the producer. What must not: the record encoding
//! (`tally_pipeline::record`), or anything that reads sums.

pub mod config;
pub mod handlers;
pub mod parse;
pub mod producer;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::Config;

/// Runs ingest until `shutdown` resolves: then it stops accepting, lets in-flight requests
/// finish (each still waits for its acknowledgement) and flushes the producer.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.kafka.ensure_topic().await?;
    let appender = producer::Appender::new(&config.kafka, config.delivery_timeout())?;
    let state = Arc::new(handlers::State {
        appender,
        max_batch: config.max_batch as usize,
    });
    let (addr, server) = warp::serve(routes::routes(state.clone(), config.max_body_bytes))
        .try_bind_with_graceful_shutdown(config.listen, shutdown)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(%addr, topic = %config.kafka.topic, "ingest listening");
    server.await;
    let flush = config.delivery_timeout() + Duration::from_secs(1);
    tokio::task::spawn_blocking(move || state.appender.flush(flush))
        .await
        .context("flush task panicked")??;
    tracing::info!("ingest stopped");
    Ok(())
}
