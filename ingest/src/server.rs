//! The HTTP server around the routes, served through hyper directly because warp 0.3 exposes
//! neither a header read timeout nor a header size cap.
//!
//! What is bounded against slow or hostile clients: the request head must arrive within the
//! header read timeout, which also closes idle keep-alive connections (hyper's
//! `http1_header_read_timeout`); the head may be at most `--max-header-bytes` (hyper answers
//! 431); the body must arrive within the body read timeout (408, `routes::body`) and be at
//! most `--max-body-bytes` (413); and at most `--max-in-flight` requests are handled at once
//! (503). Shutdown: stop accepting, let in-flight requests finish for at most the grace
//! period, then drop what is left.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::AddrStream;
use hyper::service::{make_service_fn, service_fn, Service as _};
use tokio_util::sync::CancellationToken;

use crate::handlers::State;
use crate::routes::{self, ClientAddr, Guards};
use crate::Config;

/// Serves until `shutdown` resolves, then drains for at most the configured grace.
pub async fn serve(
    config: &Config,
    state: Arc<State>,
    guards: Arc<Guards>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let svc = warp::service(routes::routes(state, guards));
    let make = make_service_fn(move |conn: &AddrStream| {
        let addr = conn.remote_addr();
        let svc = svc.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |mut req: hyper::Request<hyper::Body>| {
                req.extensions_mut().insert(ClientAddr(addr));
                let mut svc = svc.clone();
                svc.call(req)
            }))
        }
    });
    let server = hyper::Server::try_bind(&config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?
        .http1_header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .http1_max_buf_size(config.max_header_bytes as usize)
        .serve(make);
    tracing::info!(addr = %server.local_addr(), topic = %config.kafka.topic, "ingest listening");
    let stop = CancellationToken::new();
    let graceful = server.with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::pin!(graceful);
    tokio::select! {
        r = &mut graceful => return r.context("http server failed"),
        () = shutdown => {}
    }
    stop.cancel();
    let grace = config.shutdown_grace();
    tracing::info!(?grace, "stopped accepting; finishing in-flight requests");
    match tokio::time::timeout(grace, graceful).await {
        Ok(r) => r.context("http server failed"),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish within the grace period; dropping them"
            );
            Ok(())
        }
    }
}
