//! The delivery worker: one task per destination sends its queued messages one at a time, in queue order, on a
//! connection kept open between messages, and completes or fails each job by the ACK it gets.

use std::time::Duration;

use bytes::Bytes;
use store::{Backoff, FailOutcome, Job, OutboundAck, Store, StoreError, Timestamp};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{OutboundError, Payload, queue_name};
use crate::config::{OutboundConfig, OutboundDestination, split_host_port};

/// Extra lease time beyond the connect and ACK timeouts of one delivery.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How often `outbound_queue_depth` is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

/// The outbound delivery worker for every configured destination.
#[derive(Debug)]
pub struct Worker {
    store: Store,
    destinations: Vec<Destination>,
    backoff: Backoff,
    poll_interval: Duration,
    idle_close: Duration,
}

#[derive(Debug, Clone)]
struct Destination {
    name: String,
    queue: String,
    address: String,
    connector: mllp::Connector,
    lease: Duration,
}

impl Worker {
    /// Prepares a worker: reads each destination's TLS files, so a bad file fails start-up, not the first delivery.
    pub fn new(store: Store, config: &OutboundConfig) -> Result<Worker, OutboundError> {
        let destinations = if config.enabled {
            config.destinations.iter().map(Destination::new).collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(Worker {
            store,
            destinations,
            backoff: Backoff {
                base: Duration::from_millis(config.backoff_base_ms.max(1)),
                max: Duration::from_secs(config.backoff_max_secs.max(1)),
            },
            poll_interval: Duration::from_millis(config.poll_interval_ms.max(1)),
            idle_close: Duration::from_secs(config.idle_close_secs.max(1)),
        })
    }

    /// Delivers until `shutdown` is cancelled; a message being sent when it is still gets its ACK (or its ACK
    /// timeout) and its job completed or failed first.
    pub async fn run(self, shutdown: CancellationToken) {
        describe_metrics();
        if self.destinations.is_empty() {
            tracing::debug!("outbound delivery: no destinations (or disabled on this replica)");
            return;
        }
        tracing::info!(destinations = self.destinations.len(), "outbound delivery started");
        let mut tasks = JoinSet::new();
        for dest in &self.destinations {
            let lane = Lane {
                store: self.store.clone(),
                dest: dest.clone(),
                backoff: self.backoff,
                poll_interval: self.poll_interval,
                idle_close: self.idle_close,
                shutdown: shutdown.clone(),
                conn: None,
            };
            tasks.spawn(lane.run());
        }
        let names: Vec<String> = self.destinations.iter().map(|d| d.name.clone()).collect();
        tasks.spawn(queue_depth(self.store.clone(), names, shutdown.clone()));
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "outbound delivery task failed");
            }
        }
        tracing::info!("outbound delivery stopped");
    }
}

/// Starts outbound delivery for `config` in the background; the task ends once `shutdown` is cancelled and the
/// messages in flight are settled. Fails (before spawning anything) when a destination's TLS files are unusable.
pub fn spawn(
    store: Store,
    config: &OutboundConfig,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, OutboundError> {
    let worker = Worker::new(store, config)?;
    Ok(tokio::spawn(worker.run(shutdown)))
}

impl Destination {
    fn new(d: &OutboundDestination) -> Result<Destination, OutboundError> {
        let tls = d.tls.as_ref().map(|t| {
            let host = split_host_port(&d.address).map(|(h, _)| h).unwrap_or_default();
            mllp::TlsClientConfig {
                ca_pem: t.ca_file.clone(),
                client_cert_pem: t.cert_file.clone(),
                client_key_pem: t.key_file.clone(),
                server_name: if t.server_name.is_empty() { host.to_owned() } else { t.server_name.clone() },
            }
        });
        let connect_timeout = Duration::from_secs(d.connect_timeout_secs.max(1));
        let ack_timeout = Duration::from_secs(d.ack_timeout_secs.max(1));
        let connector = mllp::Connector::new(mllp::ClientConfig {
            tls,
            connect_timeout,
            reply_timeout: ack_timeout,
            ..mllp::ClientConfig::default()
        })
        .map_err(|source| OutboundError::Destination { destination: d.name.clone(), source })?;
        Ok(Destination {
            name: d.name.clone(),
            queue: queue_name(&d.name),
            address: d.address.clone(),
            connector,
            // A reused connection that turns out dead costs a second connect and send within one attempt.
            lease: (connect_timeout + ack_timeout) * 2 + LEASE_MARGIN,
        })
    }
}

/// One destination's sender.
struct Lane {
    store: Store,
    dest: Destination,
    backoff: Backoff,
    poll_interval: Duration,
    idle_close: Duration,
    shutdown: CancellationToken,
    conn: Option<Connection>,
}

struct Connection {
    client: mllp::Client,
    last_used: Instant,
}

/// Why an attempt failed. `Display` is what the job records as its last error: codes and kinds, never content.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("connect to destination failed: {0}")]
    Connect(mllp::Error),
    #[error("send or ACK failed: {0}")]
    Exchange(mllp::Error),
    #[error("the reply is not an HL7 ACK (HL7 error {0})")]
    NotAnAck(u16),
    #[error("the ACK acknowledges control id {got:?}, not this message")]
    WrongAck { got: String },
    #[error("answered {code}{}", error_code.as_ref().map(|c| format!(" (HL7 error {c})")).unwrap_or_default())]
    Negative { code: &'static str, error_code: Option<String>, ack: OutboundAck },
    #[error("the queued job payload is unreadable")]
    BadPayload,
}

impl Failure {
    /// Whether the connection can still be used after this failure (its stream is in step).
    fn keeps_connection(&self) -> bool {
        matches!(self, Failure::Negative { .. } | Failure::BadPayload)
    }
}

/// The ACK of a delivered message.
struct Acked {
    code: &'static str,
    ack: OutboundAck,
}

impl Lane {
    async fn run(mut self) {
        let name = self.dest.name.clone();
        tracing::debug!(destination = %name, "outbound destination started");
        self.await_stale_leases().await;
        while !self.shutdown.is_cancelled() {
            let claimed = self.store.claim(&self.dest.queue, 1, self.dest.lease).await;
            let job = match claimed {
                Ok(mut jobs) => jobs.pop(),
                Err(e) => {
                    tracing::warn!(destination = %name, error = %e, "claiming outbound messages failed");
                    self.pause(self.poll_interval).await;
                    continue;
                }
            };
            match job {
                Some(job) => self.settle(job).await,
                None => self.idle().await,
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.client.close().await;
        }
        tracing::debug!(destination = %name, "outbound destination stopped");
    }

    /// A job of this destination still leased at start was being sent by a worker that stopped (a crash, or a
    /// replica): claiming now would send the messages after it first. Its lease is no longer than ours, so waiting
    /// that long makes it due again, and `claim` (oldest first) returns it before the rest.
    async fn await_stale_leases(&mut self) {
        let leased = match self.store.job_counts().await {
            Ok(counts) => counts
                .iter()
                .filter(|c| c.queue == self.dest.queue && c.state == store::JobState::Leased)
                .map(|c| c.count)
                .sum(),
            Err(_) => 0,
        };
        if leased > 0 {
            tracing::info!(
                destination = %self.dest.name,
                leased,
                wait_secs = self.dest.lease.as_secs(),
                "outbound messages still leased by a stopped worker; waiting for their leases to expire to keep order"
            );
            self.pause(self.dest.lease).await;
        }
    }

    /// Waits for a new job (local wakeup), the next poll, or shutdown; closes a connection idle for too long.
    async fn idle(&mut self) {
        let idle_for = self.conn.as_ref().map(|c| c.last_used.elapsed());
        if let Some(idle_for) = idle_for
            && idle_for >= self.idle_close
            && let Some(conn) = self.conn.take()
        {
            tracing::debug!(destination = %self.dest.name, "closing idle outbound connection");
            let _ = conn.client.close().await;
        }
        let wait = match self.conn.as_ref() {
            Some(c) => self.poll_interval.min(self.idle_close.saturating_sub(c.last_used.elapsed())),
            None => self.poll_interval,
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = self.store.job_enqueued() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }

    /// Sleeps for `d` unless shutdown comes first (a free-standing future: `Lane` is `Send` but not `Sync`).
    fn pause(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = self.shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(d) => {}
            }
        }
    }

    /// Sends one job's message and records the outcome; after a retryable failure, waits until the job is due
    /// again so that nothing queued after it is sent first.
    async fn settle(&mut self, job: Job) {
        let dest = self.dest.name.clone();
        let payload = Payload::from_json(&job.payload);
        let control_id = payload.as_ref().map(|p| p.control_id.clone()).unwrap_or_default();
        if let Err(e) = self.store.log_outbound_sending(job.id, job.attempts).await {
            // Only the "sent" mark is lost; the attempt's outcome is recorded with the job's.
            tracing::warn!(destination = %dest, control_id = %control_id, error = %e, "outbound log not updated");
        }
        let started = Instant::now();
        let result = match payload.as_ref().and_then(Payload::bytes) {
            Some(bytes) => self.deliver(Bytes::from(bytes), &control_id).await,
            None => Err(Failure::BadPayload),
        };
        match result {
            Ok(acked) => {
                metrics::histogram!("outbound_ack_duration_seconds", "destination" => dest.clone())
                    .record(started.elapsed().as_secs_f64());
                match acknowledged(&self.store, &job, &acked.ack).await {
                    Ok(()) => {
                        metrics::counter!("outbound_messages_total", "destination" => dest.clone(), "outcome" => "acknowledged")
                            .increment(1);
                        tracing::info!(
                            destination = %dest,
                            control_id = %control_id,
                            ack_code = acked.code,
                            ack_control_id = acked.ack.control_id.as_deref().unwrap_or_default(),
                            attempt = job.attempts,
                            job_id = job.id,
                            "outbound message acknowledged"
                        );
                    }
                    Err(e) => self.unsettled(&job, &control_id, e),
                }
            }
            Err(failure) => {
                if !failure.keeps_connection() {
                    self.conn = None;
                }
                let reason = failure.to_string();
                let ack = match &failure {
                    Failure::Negative { ack, .. } => Some(ack),
                    _ => None,
                };
                match failed(&self.store, &self.backoff, &job, ack, &reason).await {
                    Ok(FailOutcome::RetryAt(at)) => {
                        metrics::counter!("outbound_messages_total", "destination" => dest.clone(), "outcome" => "retried")
                            .increment(1);
                        tracing::warn!(
                            destination = %dest,
                            control_id = %control_id,
                            attempt = job.attempts,
                            max_attempts = job.max_attempts,
                            error = %reason,
                            "outbound message not acknowledged; will retry"
                        );
                        let wait = at.micros().saturating_sub(Timestamp::now().micros()).max(0);
                        self.pause(Duration::from_micros(wait.unsigned_abs())).await;
                    }
                    Ok(FailOutcome::DeadLettered) => {
                        metrics::counter!("outbound_messages_total", "destination" => dest.clone(), "outcome" => "dead_lettered")
                            .increment(1);
                        tracing::error!(
                            destination = %dest,
                            control_id = %control_id,
                            attempts = job.attempts,
                            error = %reason,
                            job_id = job.id,
                            "outbound message dead-lettered after its last attempt"
                        );
                    }
                    Err(e) => self.unsettled(&job, &control_id, e),
                }
            }
        }
    }

    fn unsettled(&self, job: &Job, control_id: &str, e: StoreError) {
        // The lease expired (another worker may send the message again: receivers dedupe on MSH-10) or the database
        // is away (the lease expires and the job is retried).
        tracing::warn!(
            destination = %self.dest.name,
            control_id = %control_id,
            job_id = job.id,
            error = %e,
            "outbound job outcome not recorded"
        );
    }

    /// One attempt: send on the open connection (or a new one) and read the ACK. A reused connection that the
    /// peer closed meanwhile is replaced once, at once: the peer cannot have taken the message on it.
    async fn deliver(&mut self, message: Bytes, control_id: &str) -> Result<Acked, Failure> {
        let reused = self.conn.is_some();
        let reply = match self.exchange(&message).await {
            Err(Failure::Exchange(mllp::Error::Closed | mllp::Error::Io(_))) if reused => {
                tracing::debug!(destination = %self.dest.name, "outbound connection was closed by the peer; reconnecting");
                self.conn = None;
                self.exchange(&message).await?
            }
            other => other?,
        };
        let ack = hl7v2::Message::parse(&reply).map_err(|e| Failure::NotAnAck(e.code.code()))?;
        let code = ack.text("MSA-1").map(|c| c.into_owned()).unwrap_or_default();
        let acked_id = ack.text("MSA-2").map(|c| c.into_owned()).unwrap_or_default();
        let Some(code) = hl7v2::AckCode::from_code(code.trim()) else {
            return Err(Failure::NotAnAck(hl7v2::ErrorCode::RequiredFieldMissing.code()));
        };
        if acked_id != control_id {
            return Err(Failure::WrongAck { got: acked_id });
        }
        let error_code = ack
            .text("ERR-3.1")
            .or_else(|| ack.text("ERR-1.4.1"))
            .map(|c| c.into_owned())
            .filter(|c| !c.is_empty() && c.len() <= 8 && c.bytes().all(|b| b.is_ascii_alphanumeric()));
        let record = OutboundAck {
            code: code.as_str().to_owned(),
            control_id: Some(ack.header().control_id).filter(|c| !c.is_empty()),
            error_code: error_code.clone(),
            text: ack.text("MSA-3").map(|t| t.into_owned()).filter(|t| !t.trim().is_empty()),
        };
        match code {
            hl7v2::AckCode::AA | hl7v2::AckCode::CA => Ok(Acked { code: code.as_str(), ack: record }),
            _ => Err(Failure::Negative { code: code.as_str(), error_code, ack: record }),
        }
    }

    async fn exchange(&mut self, message: &[u8]) -> Result<Bytes, Failure> {
        if self.conn.is_none() {
            let client = self.dest.connector.connect(self.dest.address.as_str()).await.map_err(Failure::Connect)?;
            tracing::debug!(destination = %self.dest.name, "outbound connection opened");
            self.conn = Some(Connection { client, last_used: Instant::now() });
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Exchange(mllp::Error::Closed));
        };
        conn.last_used = Instant::now();
        let reply = conn.client.send(message).await.map_err(Failure::Exchange);
        conn.last_used = Instant::now();
        reply
    }
}

/// Completes the job and logs its ACK, in one transaction.
async fn acknowledged(store: &Store, job: &Job, ack: &OutboundAck) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.complete_job(job).await?;
    tx.log_outbound_acknowledged(job.id, job.attempts, ack).await?;
    tx.commit().await
}

/// Fails the job (retry or dead-letter) and logs the failed attempt, in one transaction.
async fn failed(
    store: &Store,
    backoff: &Backoff,
    job: &Job,
    ack: Option<&OutboundAck>,
    reason: &str,
) -> Result<FailOutcome, StoreError> {
    let mut tx = store.begin().await?;
    let outcome = tx.fail_job(job, reason, backoff).await?;
    let dead = outcome == FailOutcome::DeadLettered;
    tx.log_outbound_failed(job.id, job.attempts, dead, ack, reason).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Keeps `outbound_queue_depth{destination}` (messages queued and not yet acknowledged, dead-lettered excluded)
/// current while the worker runs, and marks dead in the outbound log the messages the queue dead-lettered by itself.
async fn queue_depth(store: Store, destinations: Vec<String>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(DEPTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                match store.outbound_mark_dead_letters().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(messages = n, "outbound messages dead-lettered after a stopped delivery"),
                    Err(e) => tracing::debug!(error = %e, "outbound log reconciliation failed"),
                }
                let Ok(counts) = store.job_counts().await else { continue };
                for name in &destinations {
                    let queue = queue_name(name);
                    let depth: i64 = counts
                        .iter()
                        .filter(|c| c.queue == queue && c.state != store::JobState::Dead)
                        .map(|c| c.count)
                        .sum();
                    metrics::gauge!("outbound_queue_depth", "destination" => name.clone()).set(depth as f64);
                }
            }
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "outbound_messages_total",
        "Outbound HL7 v2 delivery attempts by destination and outcome (acknowledged, retried, dead_lettered)"
    );
    metrics::describe_gauge!("outbound_queue_depth", "Outbound HL7 v2 messages waiting for an ACK, by destination");
    metrics::describe_histogram!(
        "outbound_ack_duration_seconds",
        "Time from sending an outbound HL7 v2 message (connect included) to its positive ACK, by destination"
    );
}
