//! Rest-hook delivery of topic-based Subscription notifications (FHIR R4 Subscriptions Backport), on the durable
//! job queue.
//!
//! The FHIR write path records numbered events and keeps at most one delivery job per subscription on the
//! `subscription-notify` queue (`fhir_server::subscriptions`). A delivery task claims such a job and serves that
//! subscription until it has nothing left to send: the handshake when one is pending, then the undelivered events
//! in number order (up to `backport-max-count` per notification), or a heartbeat when one is due. The cursor
//! (`delivered_through`) never passes an event the endpoint has not answered 2xx (it is written in batches, see
//! [`Pending`]), so delivery is at least once and in order; one job per subscription means one sender at a time,
//! on any replica.
//!
//! A failure is counted on the subscription: its status becomes `error` after `error_after_failures` consecutive
//! failures (or at once for a handshake) and the job is retried with exponential backoff; after
//! `off_after_failures` it becomes `off` and delivery stops. The next success returns `error` to `active`. Status
//! changes are written as new Subscription versions through the one write path.
//!
//! Logs and metrics carry subscription ids, event numbers, notification types and HTTP status codes, never
//! notification content or endpoint URLs (they may carry tokens).

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use fhir_server::subscriptions::notification::{EventWithFocus, NotificationType, StatusFacts, notification_bundle};
use fhir_server::subscriptions::{NOTIFY_QUEUE, PayloadContent, SubscriptionConfig, delivery_job, parse_subscription};
use serde_json::Value;
use store::{Backoff, Job, Precondition, Store, StoreError, SubscriptionRow, Timestamp};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::SubscriptionsConfig;
pub use http::Notifier;

/// How delivery runs.
#[derive(Clone)]
pub struct DeliverySettings {
    pub workers: usize,
    pub error_after: i64,
    pub off_after: i64,
    pub backoff: Backoff,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_events: u32,
    pub heartbeat_check: Duration,
    pub poll_interval: Duration,
    /// The FHIR base as receivers reach it (subscription and focus references).
    pub base_url: String,
}

impl DeliverySettings {
    pub fn new(config: &SubscriptionsConfig, base_url: String, poll_interval: Duration) -> DeliverySettings {
        DeliverySettings {
            workers: config.workers,
            error_after: i64::from(config.error_after_failures.max(1)),
            off_after: i64::from(config.off_after_failures.max(config.error_after_failures).max(1)),
            backoff: Backoff {
                base: Duration::from_millis(config.backoff_base_ms.max(1)),
                max: Duration::from_secs(config.backoff_max_secs.max(1)),
            },
            default_timeout: Duration::from_secs(config.default_timeout_secs.max(1)),
            max_timeout: Duration::from_secs(config.max_timeout_secs.max(1)),
            max_events: config.max_events_per_notification.max(1),
            heartbeat_check: Duration::from_millis(config.heartbeat_check_ms.max(1)),
            poll_interval,
            base_url,
        }
    }

    /// The lease a delivery job is claimed with: one notification at the default timeout. Before each notification
    /// the lease is renewed to cover that notification's timeout, so a worker that dies holds a subscription up only
    /// for about one timeout.
    fn lease(&self) -> Duration {
        self.default_timeout + LEASE_MARGIN
    }

    /// A subscription's notification timeout: its `backport-timeout`, bounded, or the default.
    fn timeout_of(&self, config: &SubscriptionConfig) -> Duration {
        config.timeout_secs.map_or(self.default_timeout, Duration::from_secs).min(self.max_timeout)
    }
}

/// Lease time beyond a notification's timeout, for the database work around it.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The rustls configuration for https endpoints: the configured CA file, else the system bundle if present.
pub fn tls_roots(config: &SubscriptionsConfig) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>> {
    let file = if config.ca_file.is_empty() {
        let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
        if !system.is_file() {
            return Ok(None);
        }
        system.to_path_buf()
    } else {
        std::path::PathBuf::from(&config.ca_file)
    };
    let tls =
        mllp::TlsClientConfig { ca_pem: file, client_cert_pem: None, client_key_pem: None, server_name: String::new() };
    Ok(Some(tls.load().map_err(|e| anyhow::anyhow!("subscriptions.ca_file: {e}"))?))
}

/// Starts the delivery tasks, the heartbeat scheduler and the status gauge; they stop once `shutdown` is cancelled
/// (a notification in flight is finished and recorded first).
pub fn spawn(store: Store, settings: DeliverySettings, notifier: Notifier, shutdown: CancellationToken) -> JoinSet<()> {
    describe_metrics();
    let mut tasks = JoinSet::new();
    for n in 0..settings.workers {
        let lane = Lane {
            store: store.clone(),
            settings: settings.clone(),
            notifier: notifier.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move { lane.run(n).await });
    }
    if settings.workers > 0 {
        tasks.spawn(heartbeats(store.clone(), settings.heartbeat_check, shutdown.clone()));
        tasks.spawn(status_gauge(store, shutdown));
    }
    tasks
}

struct Lane {
    store: Store,
    settings: DeliverySettings,
    notifier: Notifier,
    shutdown: CancellationToken,
}

/// What one notification carries.
enum Outgoing {
    Handshake,
    Heartbeat,
    Events(Vec<EventWithFocus>),
}

impl Outgoing {
    fn kind(&self) -> NotificationType {
        match self {
            Outgoing::Handshake => NotificationType::Handshake,
            Outgoing::Heartbeat => NotificationType::Heartbeat,
            Outgoing::Events(_) => NotificationType::EventNotification,
        }
    }
}

/// Acknowledged events whose cursor is not yet written. Writing the cursor after every notification would cost one
/// commit (an fsync on SQLite's single writer) per notification; it is written every [`CURSOR_EVERY`] notifications
/// or [`CURSOR_AFTER`], and always before the turn ends, fails or stops. A crash in between sends those events again:
/// delivery stays at least once and in order.
#[derive(Default)]
struct Pending {
    through: Option<i64>,
    at: Option<Timestamp>,
    count: u32,
    since: Option<std::time::Instant>,
}

const CURSOR_EVERY: u32 = 32;
const CURSOR_AFTER: Duration = Duration::from_millis(200);

impl Pending {
    fn record(&mut self, through: i64, at: Timestamp) {
        self.through = Some(self.through.map_or(through, |t| t.max(through)));
        self.at = Some(at);
        self.count += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    fn due(&self) -> bool {
        self.count >= CURSOR_EVERY || self.since.is_some_and(|s| s.elapsed() >= CURSOR_AFTER)
    }

    /// Writes the pending cursor in `tx` and forgets it.
    async fn apply(&mut self, tx: &mut store::StoreTx, id: &str) -> Result<(), StoreError> {
        if let (Some(through), Some(at)) = (self.through, self.at) {
            tx.subscription_delivered(id, through, at).await?;
        }
        *self = Pending::default();
        Ok(())
    }
}

/// How a job's turn ended.
enum Turn {
    /// Nothing left to send, or the subscription is off or gone: the job is complete.
    Done,
    /// A notification failed and the subscription still retries: the job is due again after a backoff.
    RetryAfter { failures: i64, reason: String },
}

impl Lane {
    async fn run(self, n: usize) {
        tracing::debug!(worker = n, "subscription delivery started");
        while !self.shutdown.is_cancelled() {
            match self.store.claim(NOTIFY_QUEUE, 1, self.settings.lease()).await {
                Ok(mut jobs) if !jobs.is_empty() => {
                    if let Some(job) = jobs.pop() {
                        self.serve(job).await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming subscription deliveries failed; retrying"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.store.job_enqueued() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::debug!(worker = n, "subscription delivery stopped");
    }

    /// Serves the subscription of one job until its turn ends, and records how it ended.
    async fn serve(&self, mut job: Job) {
        let Some(id) = serde_json::from_str::<Value>(&job.payload)
            .ok()
            .and_then(|p| p.get("subscription").and_then(Value::as_str).map(str::to_owned))
        else {
            let last = Job { attempts: job.max_attempts, ..job.clone() };
            let _ = self.store.fail(&last, "unreadable delivery job payload", &self.settings.backoff).await;
            return;
        };
        let mut pending = Pending::default();
        let outcome = loop {
            if self.shutdown.is_cancelled() {
                if let Err(e) = self.write_pending(&id, &mut pending).await {
                    tracing::warn!(subscription = %id, error = %e, "could not record the delivery cursor; events will be sent again");
                }
                // Hand the job back at once so any replica (or this one, restarted) continues in order.
                let now = Job { attempts: 0, ..job.clone() };
                let quick = Backoff { base: Duration::from_millis(1), max: Duration::from_millis(1) };
                let _ = self.store.fail(&now, "delivery stopped by shutdown", &quick).await;
                return;
            }
            match self.step(&mut job, &id, &mut pending).await {
                Ok(Some(turn)) => break Ok(turn),
                Ok(None) => {}
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::warn!(subscription = %id, "delivery lease lost; another worker continues");
                    return;
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(Turn::Done) => {}
            Ok(Turn::RetryAfter { failures, reason }) => {
                // The backoff follows the subscription's consecutive failures, not the job's claims.
                let retry =
                    Job { attempts: i32::try_from(failures).unwrap_or(i32::MAX).max(1), max_attempts: i32::MAX, ..job };
                if let Err(e) = self.store.fail(&retry, &reason, &self.settings.backoff).await {
                    tracing::warn!(subscription = %id, error = %e, "could not schedule the retry (the lease expires)");
                }
            }
            Err(e) => {
                tracing::warn!(subscription = %id, error = %e, "subscription delivery failed on the database; retrying");
                let retry = Job { attempts: 1, max_attempts: i32::MAX, ..job };
                let _ = self.store.fail(&retry, &e.to_string(), &self.settings.backoff).await;
            }
        }
    }

    async fn write_pending(&self, id: &str, pending: &mut Pending) -> Result<(), StoreError> {
        if pending.through.is_none() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        pending.apply(&mut tx, id).await?;
        tx.commit().await
    }

    /// Sends the next notification the subscription needs; `None` when there may be more to send.
    async fn step(&self, job: &mut Job, id: &str, pending: &mut Pending) -> Result<Option<Turn>, StoreError> {
        let row = self.store.subscription(id).await?;
        let resource = self
            .store
            .read("Subscription", id)
            .await?
            .filter(|r| !r.deleted)
            .and_then(|r| r.content)
            .and_then(|c| serde_json::from_str::<Value>(&c).ok());
        let (Some(row), Some(resource)) = (row, resource) else {
            return self.finish(job, id, pending).await;
        };
        let status = resource.get("status").and_then(Value::as_str).unwrap_or("requested").to_owned();
        let config = match parse_subscription(&resource) {
            Ok(config) if !row.deleted && status != "off" => config,
            _ => return self.finish(job, id, pending).await,
        };
        // This task is the only one moving the cursor: what it acknowledged but has not written yet counts.
        let delivered_through = pending.through.unwrap_or(0).max(row.delivered_through);
        let send = if row.handshake_pending {
            Outgoing::Handshake
        } else if delivered_through < row.events_since_start {
            let max = config.max_count.unwrap_or(1).min(self.settings.max_events);
            let events = self.store.subscription_events(id, delivered_through + 1, row.events_since_start, max).await?;
            let mut with_focus = Vec::with_capacity(events.len());
            for event in events {
                let focus = match config.content {
                    PayloadContent::Empty => None,
                    _ => self.store.vread(&event.focus_type, &event.focus_id, event.focus_version).await?,
                };
                with_focus.push(EventWithFocus { event, focus });
            }
            Outgoing::Events(with_focus)
        } else if row.spec.heartbeat_secs.is_some_and(|s| {
            pending
                .at
                .map_or(row.last_sent, |at| at.max(row.last_sent))
                .micros()
                .saturating_add(s.saturating_mul(1_000_000))
                <= Timestamp::now().micros()
        }) {
            Outgoing::Heartbeat
        } else {
            return self.finish(job, id, pending).await;
        };
        let timeout = self.settings.timeout_of(&config);
        if job.lease_until.micros().saturating_sub(Timestamp::now().micros()) < micros(timeout + LEASE_MARGIN) {
            // Twice what one notification needs, so the lease is renewed about every other timeout, not per notification.
            self.store.extend_lease(job, (timeout + LEASE_MARGIN) * 2).await?;
        }
        self.notify(job, &row, &config, &status, send, pending).await
    }

    /// Ends the job unless events arrived meanwhile (then the turn goes on).
    async fn finish(&self, job: &Job, id: &str, pending: &mut Pending) -> Result<Option<Turn>, StoreError> {
        let mut tx = self.store.begin().await?;
        let had_pending = pending.through.is_some();
        pending.apply(&mut tx, id).await?;
        if !tx.finish_subscription_delivery(id).await? {
            if had_pending {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            return Ok(None);
        }
        tx.complete_job(job).await?;
        tx.commit().await?;
        Ok(Some(Turn::Done))
    }

    async fn notify(
        &self,
        job: &Job,
        row: &SubscriptionRow,
        config: &SubscriptionConfig,
        status: &str,
        send: Outgoing,
        pending: &mut Pending,
    ) -> Result<Option<Turn>, StoreError> {
        let id = row.spec.id.as_str();
        let kind = send.kind();
        let events: &[EventWithFocus] = match &send {
            Outgoing::Events(events) => events,
            _ => &[],
        };
        let last_number = events.last().map(|e| e.event.number);
        let facts = StatusFacts {
            base: &self.settings.base_url,
            subscription_id: id,
            topic: &row.spec.topic,
            status,
            events_since_start: last_number.unwrap_or(row.events_since_start),
        };
        let bundle = notification_bundle(&facts, kind, events, config.content);
        let timeout = self.settings.timeout_of(config);
        let body = serde_json::to_vec(&bundle).unwrap_or_default();
        let result = self.notifier.post(&config.endpoint, &config.headers, body, timeout).await;
        let kind_label = kind.as_str();
        match result {
            Ok(took) => {
                metrics::histogram!("subscription_notification_duration_seconds", "type" => kind_label)
                    .record(took.as_secs_f64());
                let now = Timestamp::now();
                let new_status = match &send {
                    Outgoing::Handshake => "active",
                    Outgoing::Heartbeat => status,
                    Outgoing::Events(_) if status == "error" => "active",
                    Outgoing::Events(_) => status,
                };
                pending.record(last_number.unwrap_or(row.delivered_through), now);
                let handshake = matches!(send, Outgoing::Handshake);
                // A heartbeat's time is written at once: the next heartbeat is due from it.
                let heartbeat = matches!(send, Outgoing::Heartbeat);
                if handshake || heartbeat || new_status != status || pending.due() {
                    let mut tx = self.store.begin().await?;
                    if handshake {
                        tx.subscription_handshaken(id, now).await?;
                    }
                    pending.apply(&mut tx, id).await?;
                    if new_status != status {
                        write_status(&mut tx, id, new_status, None).await?;
                    }
                    tx.commit().await?;
                }
                metrics::counter!("subscription_notifications_total", "type" => kind_label, "outcome" => "delivered")
                    .increment(1);
                for e in events {
                    let waited = (now.micros() - e.event.occurred.micros()).max(0) as f64 / 1e6;
                    metrics::histogram!("subscription_event_delivery_latency_seconds").record(waited);
                }
                tracing::debug!(subscription = %id, notification = kind_label, events = events.len(), last_event = ?last_number, "notification delivered");
                if new_status != status {
                    tracing::info!(subscription = %id, from = status, to = new_status, "subscription status changed");
                }
                Ok(None)
            }
            Err(failure) => {
                let reason = failure.to_string();
                let mut tx = self.store.begin().await?;
                pending.apply(&mut tx, id).await?;
                let failures = tx.subscription_failed(id).await?;
                let new_status = if failures >= self.settings.off_after {
                    "off"
                } else if failures >= self.settings.error_after || matches!(send, Outgoing::Handshake) {
                    "error"
                } else {
                    status
                };
                if new_status != status {
                    let why = format!("{failures} consecutive notifications failed; the last: {reason}");
                    write_status(&mut tx, id, new_status, Some(&why)).await?;
                }
                let turn = if new_status == "off" {
                    tx.finish_subscription_delivery(id).await?;
                    tx.complete_job(job).await?;
                    Turn::Done
                } else {
                    Turn::RetryAfter { failures, reason: reason.clone() }
                };
                tx.commit().await?;
                let outcome = if new_status == "off" { "stopped" } else { "failed" };
                metrics::counter!("subscription_notifications_total", "type" => kind_label, "outcome" => outcome)
                    .increment(1);
                tracing::info!(subscription = %id, notification = kind_label, failures, error = %reason, "notification failed");
                if new_status != status {
                    tracing::info!(subscription = %id, from = status, to = new_status, "subscription status changed");
                }
                Ok(Some(turn))
            }
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Writes a new Subscription version with `status` (the server owns it) and `error` (R4 `Subscription.error`: why
/// it failed; removed on recovery), through the one write path. The text names counts and failure kinds only.
async fn write_status(tx: &mut store::StoreTx, id: &str, status: &str, error: Option<&str>) -> Result<(), StoreError> {
    let Some(current) = tx.read("Subscription", id).await?.filter(|c| !c.deleted) else { return Ok(()) };
    let Some(mut resource) = current.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) else {
        return Ok(());
    };
    resource["status"] = Value::String(status.to_owned());
    if let Some(object) = resource.as_object_mut() {
        match error {
            Some(text) => object.insert("error".into(), Value::String(text.to_owned())),
            None => object.remove("error"),
        };
    }
    fhir_server::rest::write::put(tx, resource, Precondition::Version(current.version_id)).await?;
    Ok(())
}

/// Queues a delivery job for every active subscription whose heartbeat is due; any replica may do it, the flag in
/// the subscription row keeps it to one job.
async fn heartbeats(store: Store, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let queued = async {
            let mut tx = store.begin().await?;
            let due = tx.flag_due_heartbeats(Timestamp::now()).await?;
            for id in &due {
                tx.enqueue(&delivery_job(id)).await?;
            }
            tx.commit().await?;
            Ok::<usize, StoreError>(due.len())
        };
        match queued.await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(subscriptions = n, "heartbeats queued"),
            Err(e) => tracing::warn!(error = %e, "looking for due heartbeats failed"),
        }
    }
}

/// Keeps `subscriptions{status}` current.
async fn status_gauge(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(counts) = store.subscription_status_counts().await {
            for status in ["requested", "active", "error", "off"] {
                let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                metrics::gauge!("subscriptions", "status" => status).set(n as f64);
            }
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "subscription_notifications_total",
        "Subscription notifications by type (handshake, heartbeat, event-notification) and outcome (delivered, failed, stopped)"
    );
    metrics::describe_histogram!(
        "subscription_notification_duration_seconds",
        "Time for an endpoint to accept one notification (POST to 2xx), by type"
    );
    metrics::describe_histogram!(
        "subscription_event_delivery_latency_seconds",
        "From a subscription event being recorded to its notification being accepted"
    );
    metrics::describe_gauge!("subscriptions", "Subscriptions by status (requested, active, error, off)");
}
