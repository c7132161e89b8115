//! Logs (tracing, pretty or JSON) and the Prometheus metrics registry with its scrape-time gauges.

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. Logs go to stderr so stdout stays clean for command output.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::builder().parse_lossy(&config.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Latency buckets in seconds: fine below 10 ms, where MLLP ACKs and reads by id live.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide metrics registry (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    STARTED.get_or_init(Instant::now);
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; the handle still renders our registry then.
        let _ = metrics::set_global_recorder(recorder);
        describe_metrics();
        handle
    })
}

/// HELP lines for every series the gateway emits, so a scrape documents itself.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("sdoh_gateway_build_info", "Build of the running gateway (version, database backend); always 1");
    describe_gauge!("process_uptime_seconds", "Seconds since the process started");
    describe_counter!("http_requests_total", "HTTP requests answered, by method, route template and status");
    describe_histogram!("http_request_duration_seconds", "HTTP request latency, by method, route template and status");
    describe_histogram!(
        "store_maintenance_seconds",
        "Duration of background store maintenance: WAL checkpoints and planner statistics refreshes, by task"
    );
    describe_histogram!("fhir_create_batch_size", "FHIR creates committed together in one transaction (group commit)");
    describe_histogram!("fhir_create_commit_seconds", "Duration of one group commit of FHIR creates");
    describe_gauge!("db_pool_connections", "Database pool connections, by pool and state (idle, busy)");
    describe_gauge!("db_pool_max_connections", "Database pool size limit, by pool");
    describe_counter!("db_commits_total", "SQLite commits made durable by the group WAL sync");
    describe_gauge!(
        "db_wal_pages",
        "Pages in the SQLite write-ahead log at the last background checkpoint (it restarts once all are copied)"
    );
    describe_counter!("db_wal_syncs_total", "WAL fsyncs of the group sync (commits per fsync = the ratio)");
    describe_gauge!("db_up", "1 when the database answered the last scrape's queries, else 0");
    describe_gauge!("jobs", "Background jobs by queue and state (ready, leased, dead); completed jobs are removed");
    describe_gauge!("hl7_journal_messages", "Journaled HL7 v2 messages by processing status");
    describe_counter!("hl7_messages_received_total", "HL7 v2 messages (MLLP frames carrying a message) received");
    describe_counter!(
        "hl7_messages_accepted_total",
        "HL7 v2 messages committed to the journal and acknowledged AA/CA, by type"
    );
    describe_counter!("hl7_messages_rejected_total", "HL7 v2 messages answered AE/AR/CE/CR, by reason");
    describe_counter!("hl7_messages_duplicate_total", "Resent HL7 v2 messages acknowledged without being stored again");
    describe_histogram!(
        "hl7_ack_latency_seconds",
        "From a frame's arrival to its acknowledgment being ready, by ACK code"
    );
    describe_histogram!("ingest_group_commit_batch_size", "Messages per journal transaction (group commit)");
    describe_histogram!("ingest_commit_duration_seconds", "Duration of one journal transaction");
    describe_counter!("conversion_total", "Journaled HL7 v2 messages converted to FHIR, by outcome and message type");
    describe_histogram!("conversion_duration_seconds", "Duration of one journal entry's conversion transaction");
    describe_counter!(
        "normalization_total",
        "QuestionnaireResponse normalization jobs, by outcome (normalized, skipped, failed)"
    );
    describe_histogram!("normalization_duration_seconds", "Duration of one normalization job");
    describe_counter!(
        "rri_total",
        "Referral Task status changes reported to the referring EHR as RRI^I12, by outcome (queued, no_destination, \
         unmapped_status, missing)"
    );
    describe_gauge!(
        "outbound_messages",
        "Outbound HL7 v2 messages in the outbound log, by state (queued, sent, acknowledged, failed, dead)"
    );
    describe_gauge!("mllp_connections_open", "Open MLLP connections");
    describe_counter!("mllp_connections_accepted_total", "MLLP connections accepted");
    describe_counter!(
        "mllp_connections_refused_total",
        "MLLP connections closed at once because the connection limit was reached"
    );
    describe_counter!("mllp_frames_received_total", "Complete MLLP frames received");
    describe_counter!("mllp_frame_errors_total", "MLLP framing errors, by reason");
    describe_counter!("mllp_discarded_bytes_total", "Bytes received outside any MLLP frame and discarded");
    describe_counter!("mllp_timeouts_total", "MLLP connections closed by a timeout, by kind");
    describe_counter!("mllp_tls_handshake_failures_total", "MLLP TLS handshakes that failed");
}

pub fn uptime_seconds() -> f64 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Refreshes gauges that are read from elsewhere (pool figures, queue depths) right before a scrape.
pub async fn refresh_scrape_gauges(store: &store::Store) {
    metrics::gauge!("process_uptime_seconds").set(uptime_seconds());
    for pool in store.pool_stats() {
        metrics::gauge!("db_pool_connections", "pool" => pool.name, "state" => "idle").set(f64::from(pool.idle));
        metrics::gauge!("db_pool_connections", "pool" => pool.name, "state" => "busy")
            .set(f64::from(pool.size.saturating_sub(pool.idle)));
        metrics::gauge!("db_pool_max_connections", "pool" => pool.name).set(f64::from(pool.max));
    }
    if let Some(sync) = store.commit_sync_stats() {
        metrics::counter!("db_commits_total").absolute(sync.commits);
        metrics::counter!("db_wal_syncs_total").absolute(sync.syncs);
    }
    let counts = tokio::time::timeout(std::time::Duration::from_secs(2), store.job_counts()).await;
    match counts {
        Ok(Ok(counts)) => {
            metrics::gauge!("db_up").set(1.0);
            if let Ok(journal) = store.journal_counts().await {
                for status in ["received", "converted", "failed"] {
                    let n = journal.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                    metrics::gauge!("hl7_journal_messages", "status" => status).set(n as f64);
                }
            }
            if let Ok(outbound) = store.outbound_counts().await {
                for state in store::OutboundState::ALL.map(store::OutboundState::as_str) {
                    let n = outbound.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                    metrics::gauge!("outbound_messages", "state" => state).set(n as f64);
                }
            }
            // Zero every known series first so a drained queue shows 0 instead of its last value.
            for queue in KNOWN_QUEUES.lock().expect("queue list").iter() {
                for state in ["ready", "leased", "dead"] {
                    metrics::gauge!("jobs", "queue" => queue.clone(), "state" => state).set(0.0);
                }
            }
            for c in counts {
                KNOWN_QUEUES.lock().expect("queue list").insert(c.queue.clone());
                metrics::gauge!("jobs", "queue" => c.queue, "state" => c.state.as_str()).set(c.count as f64);
            }
        }
        _ => metrics::gauge!("db_up").set(0.0),
    }
}

static KNOWN_QUEUES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
