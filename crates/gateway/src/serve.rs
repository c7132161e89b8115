//! `sdoh-gateway serve`: open and migrate the store, serve HTTP, and shut down gracefully on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{GatewayConfig, redact_url};
use crate::http::{AppState, router};
use crate::ingest::{AcceptPolicy, CommitSettings, GroupCommitter, IngestService};

/// Opens the database named by the configuration, bounded by its connect timeout, and brings the schema (and the
/// measure facts of an upgraded database) up to date.
pub async fn open_store(config: &GatewayConfig) -> anyhow::Result<store::Store> {
    let shown_url = redact_url(&config.database.url);
    let store = store::Store::connect(&config.store_options())
        .await
        .with_context(|| format!("cannot open the database at {shown_url}"))?;
    store.migrate().await.with_context(|| format!("cannot migrate the database at {shown_url}"))?;
    // Resources written before the measures' fact rows existed get theirs once, before anything else runs.
    let filled = fhir_server::measures::facts::backfill(&store)
        .await
        .with_context(|| format!("cannot fill the measure facts in the database at {shown_url}"))?;
    if filled > 0 {
        tracing::info!(rows = filled, "measure facts filled for resources written before they were kept");
    }
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
    tokio::spawn(refresh_statistics(store.clone(), shutdown.clone()));
    tokio::spawn(checkpoint(store.clone(), shutdown.clone()));

    let mut mllp_addr = None;
    let mut commit_tasks = None;
    let mut mllp_task = None;
    let mut ingest_activity = None;
    if config.mllp.enabled {
        let (committer, tasks) = GroupCommitter::spawn(store.clone(), commit_settings(&config, store.backend()));
        ingest_activity = Some(committer.activity());
        let policy = AcceptPolicy::new(&config.ingest.accepted_message_types, &config.ingest.accepted_processing_ids);
        let service = Arc::new(IngestService::new(committer, policy));
        let server = mllp::Server::bind(config.mllp.listen, listener_config(&config))
            .await
            .with_context(|| format!("cannot listen for MLLP on {}", config.mllp.listen))?;
        mllp_addr = Some(server.local_addr()?);
        let stop = shutdown.clone();
        mllp_task = Some(tokio::spawn(async move { server.run(service, stop.cancelled_owned()).await }));
        commit_tasks = Some(tasks);
    }

    // Background workers (conversion, normalization) start after migrations and stop after their current job.
    let mut settings = worker_settings(&config);
    // SQLite has one writer for ingest and workers alike; PostgreSQL commits them concurrently.
    if store.backend() == store::BackendKind::Sqlite {
        settings.ingest = ingest_activity;
    }
    let registries = std::sync::Arc::new(
        crate::registries::RegistrySet::from_config(&config.registries).map_err(|e| anyhow::anyhow!(e))?,
    );
    // Writes queue membership work only while registries are kept.
    fhir_server::rest::membership::track_registries(!registries.is_empty());
    crate::registries::membership::schedule_backfills(&store, &registries)
        .await
        .context("cannot record the registries' state")?;
    let export_wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let registry_workers = crate::registries::RegistryWorkers {
        export_wake: export_wake.clone(),
        store: store.clone(),
        registries: registries.clone(),
        exports: config.exports.clone(),
        settings: settings.clone(),
    };
    let mut worker_tasks = crate::worker::spawn(store.clone(), settings, shutdown.clone()).await;
    let mut registry_tasks = crate::registries::spawn(registry_workers, shutdown.clone());
    // Outbound HL7 v2 (application acknowledgments) is delivered in order per destination, retried until ACKed.
    let outbound_task = crate::outbound::spawn(store.clone(), &config.outbound, shutdown.clone())
        .context("cannot start outbound HL7 v2 delivery")?;

    // Subscription notifications: handshakes, events in order per subscription, heartbeats, retries.
    let mut notify_tasks = tokio::task::JoinSet::new();
    if config.subscriptions.enabled && config.subscriptions.workers > 0 {
        let tls = crate::subscriptions::tls_roots(&config.subscriptions)?;
        let notifier = crate::subscriptions::Notifier::new(
            tls,
            Duration::from_secs(config.subscriptions.default_timeout_secs.max(1)),
        );
        let settings = crate::subscriptions::DeliverySettings::new(
            &config.subscriptions,
            config.fhir_base_url(http_addr),
            Duration::from_millis(config.workers.poll_interval_ms.max(10)),
        );
        notify_tasks = crate::subscriptions::spawn(store.clone(), settings, notifier, shutdown.clone());
    }

    let mut fhir = fhir_server::FhirState::new(store.clone(), config.fhir_base_url(http_addr));
    let measures = fhir_server::measures::MeasuresState::new(store.clone(), config.fhir_base_url(http_addr))
        .with_completion_window(config.measures.completion_window_days);
    fhir.allow_update_create = config.fhir.allow_update_create;
    fhir.max_body_bytes = config.http.max_body_bytes;
    let authenticator: Option<std::sync::Arc<dyn crate::auth::Authenticator>> = if config.auth.required {
        let credentials =
            crate::auth::ClientCredentials::new(store.clone(), Duration::from_secs(config.auth.cache_secs));
        Some(std::sync::Arc::new(credentials))
    } else {
        tracing::warn!("auth.required is false: the FHIR API and admin endpoints accept unauthenticated requests");
        None
    };
    let registry_api = crate::registries::http::RegistryApi {
        store: store.clone(),
        registries,
        base_url: config.fhir_base_url(http_addr),
        exports: config.exports.clone(),
        requires_access_token: config.auth.required,
        export_wake,
    };
    let app = router(
        AppState { store: store.clone(), max_attempts: config.workers.max_attempts },
        fhir,
        measures,
        registry_api,
        crate::auth::AuthLayer { authenticator },
        config.http.max_body_bytes,
        Duration::from_secs(config.http.request_timeout_secs),
    );
    // Clients address the FHIR base both as `/fhir` and `/fhir/` (a transaction is POSTed to the base), so trailing
    // slashes are trimmed before routing.
    let app = tower::Layer::layer(&tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash(), app);
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let server = axum::serve(listener, service).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });

    tracing::info!(
        http_addr = %http_addr,
        mllp_addr = mllp_addr.map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()),
        backend = store.backend().as_str(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    shutdown.cancelled().await;
    let grace = Duration::from_secs(config.shutdown.grace_period_secs);
    let drained = async {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server stopped with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
        // The MLLP listener answers the frames it already has (their commits included) before it returns; the
        // committers stop once its handler, the last holder of the submitting side, is gone.
        if let Some(task) = mllp_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "MLLP listener stopped with an error"),
                Err(e) => tracing::error!(error = %e, "MLLP listener task failed"),
            }
        }
        if let Some(mut tasks) = commit_tasks {
            while tasks.join_next().await.is_some() {}
        }
        // Workers saw the same cancellation and finish the entry or job in hand (concurrently with the above).
        while worker_tasks.join_next().await.is_some() {}
        while registry_tasks.join_next().await.is_some() {}
        let _ = outbound_task.await;
        while notify_tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "in-flight work did not finish within the grace period");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn commit_settings(config: &GatewayConfig, backend: store::BackendKind) -> CommitSettings {
    let committers = match (config.ingest.committers, backend) {
        (0, store::BackendKind::Sqlite) => 1,
        (0, store::BackendKind::Postgres) => 4,
        (n, _) => n,
    };
    CommitSettings {
        max_batch: config.ingest.group_commit_max_batch,
        committers,
        job_queue: crate::admin::CONVERT_QUEUE.into(),
        max_attempts: config.workers.max_attempts,
    }
}

fn worker_settings(config: &GatewayConfig) -> crate::worker::WorkerSettings {
    crate::worker::WorkerSettings {
        count: config.workers.count,
        lease: Duration::from_secs(config.workers.lease_secs),
        poll_interval: Duration::from_millis(config.workers.poll_interval_ms.max(10)),
        max_attempts: config.workers.max_attempts,
        routes: config.outbound.enabled.then(|| crate::outbound::Routes::new(&config.outbound)),
        sender: crate::outbound::AckSender {
            application: config.ingest.receiving_application.clone(),
            facility: config.ingest.receiving_facility.clone(),
        },
        ingest: None,
    }
}

fn listener_config(config: &GatewayConfig) -> mllp::ListenerConfig {
    let m = &config.mllp;
    mllp::ListenerConfig {
        max_connections: m.max_connections,
        max_frame_len: m.max_frame_bytes,
        read_timeout: Duration::from_secs(m.read_timeout_secs),
        idle_timeout: Duration::from_secs(m.idle_timeout_secs),
        max_in_flight_per_connection: m.max_in_flight_per_connection,
        drain_timeout: Duration::from_secs(config.shutdown.grace_period_secs),
        tls: m.tls.as_ref().map(|t| mllp::TlsServerConfig {
            cert_chain_pem: t.cert_file.clone(),
            key_pem: t.key_file.clone(),
            client_ca_pem: t.client_ca_file.clone(),
        }),
        ..mllp::ListenerConfig::default()
    }
}

/// Keeps the planner's statistics current as data grows. Plans depend on them (see `Store::refresh_statistics`),
/// so they are refreshed whenever the number of stored versions has doubled since the last refresh (checked every
/// few seconds with one indexed lookup), and every ten minutes while anything is written.
async fn refresh_statistics(store: store::Store, shutdown: CancellationToken) {
    // SQLite runs on fixed statistics installed at migration (a measured ANALYZE would stall the writer).
    if store.backend() == store::BackendKind::Sqlite {
        return;
    }
    const FIRST_AT: i64 = 500;
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut analyzed_at: Option<(i64, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let Ok(written) = store.versions_written().await else { continue };
                let due = match analyzed_at {
                    None => true,
                    Some((count, at)) => {
                        written >= (count * 2).max(FIRST_AT)
                            || (written > count && at.elapsed() >= Duration::from_secs(600))
                    }
                };
                if !due {
                    continue;
                }
                let started = tokio::time::Instant::now();
                match store.refresh_statistics().await {
                    Ok(()) => {
                        analyzed_at = Some((written, tokio::time::Instant::now()));
                        metrics::histogram!("store_maintenance_seconds", "task" => "statistics").record(started.elapsed());
                        log_if_slow("planner statistics refreshed", started.elapsed(), written);
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
                }
            }
        }
    }
}

/// Checkpoints SQLite's write-ahead log five times a second, off the write path (see `Store::checkpoint`): often
/// enough that the writer rarely finds a large WAL to checkpoint itself; a pass with nothing to copy costs little.
async fn checkpoint(store: store::Store, shutdown: CancellationToken) {
    if store.backend() != store::BackendKind::Sqlite {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failing checkpoint is reported when it starts failing, not five times a second.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let started = tokio::time::Instant::now();
                match store.checkpoint().await {
                    Ok(progress) => {
                        metrics::histogram!("store_maintenance_seconds", "task" => "checkpoint").record(started.elapsed());
                        if let Some(progress) = progress {
                            metrics::gauge!("db_wal_pages").set(progress.wal_pages as f64);
                        }
                        log_if_slow("WAL checkpoint", started.elapsed(), 0);
                        failing = false;
                    }
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints instead");
                        failing = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed again"),
                }
            }
        }
    }
}

/// Background store maintenance that takes long competes with requests for the disk and the writer: operators
/// see each such run in the log (writes and reads stalling at the same moment point here).
fn log_if_slow(what: &'static str, took: Duration, versions: i64) {
    if took >= Duration::from_millis(500) {
        tracing::warn!(took_ms = took.as_millis() as u64, versions, "{what} took long");
    }
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
