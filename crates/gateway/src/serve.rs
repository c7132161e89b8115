//! `sdoh-gateway serve`: open and migrate the store, serve HTTP, and shut down gracefully on SIGTERM or Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{GatewayConfig, redact_url};
use crate::http::{AppState, router};

/// Opens the database named by the configuration, bounded by its connect timeout, and brings the schema up to date.
pub async fn open_store(config: &GatewayConfig) -> anyhow::Result<store::Store> {
    let shown_url = redact_url(&config.database.url);
    let store = store::Store::connect(&config.store_options())
        .await
        .with_context(|| format!("cannot open the database at {shown_url}"))?;
    store.migrate().await.with_context(|| format!("cannot migrate the database at {shown_url}"))?;
    Ok(store)
}

pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::telemetry::metrics_handle();
    let store = open_store(&config).await?;
    metrics::gauge!(
        "sdoh_gateway_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "backend" => store.backend().as_str()
    )
    .set(1.0);

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));

    let app = router(
        AppState { store: store.clone(), max_attempts: config.workers.max_attempts },
        config.http.max_body_bytes,
        Duration::from_secs(config.http.request_timeout_secs),
    );
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });

    tracing::info!(
        http_addr = %http_addr,
        backend = store.backend().as_str(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    shutdown.cancelled().await;
    let grace = Duration::from_secs(config.shutdown.grace_period_secs);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period")
        }
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `token` on the first SIGTERM or Ctrl-C.
async fn watch_signals(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested: no new connections; finishing in-flight work");
    token.cancel();
}
