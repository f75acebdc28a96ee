//! The aggregator: a consumer-group member that folds its partitions into exact per-key sums
//! in SQLite ([`consumer`]) and serves them over HTTP ([`api`]; reads need the token of
//! [`read_auth`] when one is set), with a status page ([`status`]);
//! the consumer tells the API what it committed and how far behind it is through [`progress`],
//! and records metrics named in [`instruments`]; Kafka's tools see its offsets in the consumer
//! group ([`group_offsets`]). [`peers`] reads from the group who owns which partition and on
//! which database, and [`read_route`] decides from it where each read is answered: only from a
//! database that holds the key's partition.
//!
//! What lives here: the group membership, commit cadence and the read API. What must not:
//! the fold, the record format or SQL that changes sums (those are `tally_pipeline`'s, shared
//! with the replayer, so that a rebuild folds exactly as the live consumer does).

pub mod api;
mod config;
pub mod consumer;
pub mod contract;
pub mod group_offsets;
pub mod instruments;
pub mod peers;
pub mod progress;
pub mod read_auth;
pub mod read_route;
pub mod standby;
pub mod status;

#[cfg(test)]
mod test_support;

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tally_pipeline::store::{OpenMode, Store};
use tokio_util::sync::CancellationToken;
use warp::Filter as _;

pub use config::Config;

/// How long shutdown waits for the consumer's last commit and group leave.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the aggregator until `shutdown` resolves or the consumer fails.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if config.standby && config.advertise_url.is_none() {
        anyhow::bail!(
            "--standby needs --advertise-url: a standby folds into a database of its own, \
             which only members that forward reads have"
        );
    }
    tally_pipeline::topic::ensure(&config.kafka).await?;
    let reader = Store::open(&config.db, &config.kafka.topic, OpenMode::CreateIfMissing)
        .with_context(|| format!("cannot open database {}", config.db.display()))?;
    // Origins are checked before anything is served or folded; a refusal ends the process.
    let (reader, origins) = {
        let (kafka, args) = (config.kafka.clone(), config.origins.clone());
        tokio::task::spawn_blocking(move || {
            let mut store = reader;
            tally_pipeline::origin_start::bind_or_refuse(&kafka, &args, &mut store)
                .map(|o| (store, o))
        })
        .await
        .context("the origin check panicked")??
    };
    if !origins.checked.is_empty() || !origins.unchecked.is_empty() {
        tracing::warn!(
            remote = origins.checked.len() + origins.unchecked.len(),
            "remote origins are checked and stored, not folded yet by this version"
        );
    }
    let stop = CancellationToken::new();
    let metrics = instruments::install();
    tally_pipeline::durability::report(&config.kafka).await;
    let (progress_tx, progress_rx) = progress::channel();
    let read_token = read_auth::bearer(&config.read_token);
    let me = peers::Member::this(reader.database_id()?, config.advertise_url.clone());
    tracing::info!(database = me.db.as_deref(), "database identity");
    let peers = peers::Peers::watch(&config.kafka, &config.group, me.clone(), stop.clone())?;
    let forward = Some(api::Forward::new(me, peers, read_token.as_ref())?);
    let api = api::Api::new(
        api::Reader::new(reader),
        progress_rx,
        metrics,
        config.limits(),
    )
    .forwarding(forward);
    let (addr, server) = warp::serve(read_auth::guard(read_token).or(api::routes(api)))
        .try_bind_with_graceful_shutdown(config.listen, stop.clone().cancelled_owned())
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(%addr, "aggregator API listening");
    let server = tokio::spawn(server);
    let claims = standby::Claims::default();
    if config.standby {
        let (config, claims, stop) = (config.clone(), claims.clone(), stop.clone());
        let progress = progress_tx.subscribe();
        std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || {
                if let Err(e) = standby::run(&config, claims, progress, stop) {
                    tracing::error!("standby stopped: {e:#}; owned partitions go on");
                }
            })
            .context("cannot start the standby thread")?;
    }
    let mut consumer = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || consumer::run(&config, progress_tx, claims, stop)
    });
    let result = tokio::select! {
        _ = shutdown => {
            stop.cancel();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut consumer).await {
                Ok(r) => r.context("consumer thread panicked").and_then(|r| r),
                Err(_) => Err(anyhow::anyhow!("consumer did not stop within {SHUTDOWN_GRACE:?}")),
            }
        }
        r = &mut consumer => {
            stop.cancel();
            r.context("consumer thread panicked")
                .and_then(|r| r)
                .and_then(|()| Err(anyhow::anyhow!("consumer stopped unexpectedly")))
        }
    };
    let _ = server.await;
    result
}
