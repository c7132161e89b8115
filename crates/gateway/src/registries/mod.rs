//! CQI registries as data in the gateway: membership kept current by workers as data arrives ([`membership`]),
//! each member's pseudonymized record ([`records`]), Bulk Data export ([`export`]) and the HTTP endpoints registry
//! loaders use ([`http`]).
//!
//! A registry is enabled by configuration (`[registries] enabled`) together with its pseudonymization key; the
//! definitions themselves are data (`profiles/registries/`, `sdoh::registry`). Membership and records live in the
//! store (`registry_members`), so the records feed, exports and the `export` command read them without
//! re-evaluating anything, and any replica can serve them.

pub mod export;
pub mod http;
pub mod membership;
pub mod records;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sdoh::registry::{PseudonymKey, Registries, RegistryDefinition};
use store::{Backoff, Job, Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ExportsConfig, RegistriesConfig};

/// The prefix of a registry's Group id: `Group/registry-<registry id>`.
pub const GROUP_PREFIX: &str = "registry-";

/// One enabled registry with its key.
#[derive(Debug, Clone)]
pub struct Registry {
    pub definition: RegistryDefinition,
    pub key: PseudonymKey,
}

impl Registry {
    pub fn id(&self) -> &str {
        &self.definition.id
    }

    pub fn group_id(&self) -> String {
        format!("{GROUP_PREFIX}{}", self.definition.id)
    }
}

/// The enabled registries.
#[derive(Debug, Clone, Default)]
pub struct RegistrySet {
    registries: Vec<Registry>,
}

impl RegistrySet {
    /// The registries the configuration enables, each with its key (configuration validation has already
    /// refused unknown ids and missing or short keys; this repeats the checks for callers that skipped it).
    pub fn from_config(config: &RegistriesConfig) -> Result<RegistrySet, String> {
        let known = Registries::builtin();
        let mut registries = Vec::new();
        for id in &config.enabled {
            let definition = known.get(id).ok_or_else(|| format!("registries.enabled: unknown registry {id:?}"))?;
            let key = config
                .key(&definition.pseudonym_key)
                .ok_or_else(|| format!("registries.keys.{} is not set", definition.pseudonym_key))?;
            let key = PseudonymKey::new(key.as_bytes())
                .map_err(|e| format!("registries.keys.{}: {e}", definition.pseudonym_key))?;
            if registries.iter().all(|r: &Registry| r.definition.id != *id) {
                registries.push(Registry { definition: definition.clone(), key });
            }
        }
        Ok(RegistrySet { registries })
    }

    pub fn is_empty(&self) -> bool {
        self.registries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Registry> {
        self.registries.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Registry> {
        self.registries.iter().find(|r| r.definition.id == id)
    }

    /// The registry whose Group has this id (`registry-<id>`).
    pub fn by_group_id(&self, group_id: &str) -> Option<&Registry> {
        self.get(group_id.strip_prefix(GROUP_PREFIX)?)
    }
}

/// What the registry and export workers need.
#[derive(Clone)]
pub struct RegistryWorkers {
    pub store: Store,
    pub registries: Arc<RegistrySet>,
    pub exports: ExportsConfig,
    pub settings: crate::worker::WorkerSettings,
    /// Notified by kick-offs on this replica (shared with [`http::RegistryApi`]).
    pub export_wake: Arc<Notify>,
}

/// Starts the registry workers (membership, backfill, Group; only while registries are enabled), the export
/// workers (`settings.count` per queue) and the export sweeper.
///
/// Only membership workers wake on every job committed through this store handle: the others' jobs are rare, and
/// every wake-up is a claim on the database (on SQLite, a turn at the one writer ingest needs). Export workers are
/// woken by kick-offs on this replica (`WorkerSettings::poll_interval` for other replicas'); backfill and Group
/// workers poll.
pub fn spawn(workers: RegistryWorkers, shutdown: CancellationToken) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if workers.settings.count == 0 {
        return tasks;
    }
    for n in 0..workers.settings.count {
        if !workers.registries.is_empty() {
            let w = workers.clone();
            let queue = fhir_server::rest::membership::MEMBERSHIP_QUEUE;
            let batch = membership::MEMBERSHIP_BATCH;
            tasks.spawn(run_queue(queue, batch, n, w.clone(), Wake::OnEnqueue, shutdown.clone(), move |jobs| {
                let w = w.clone();
                async move { membership::run_jobs(&w.store, &w.registries, jobs).await }
            }));
            let w = workers.clone();
            tasks.spawn(run_queue(
                membership::BACKFILL_QUEUE,
                1,
                n,
                w.clone(),
                Wake::Poll,
                shutdown.clone(),
                move |jobs| {
                    let w = w.clone();
                    async move {
                        for job in jobs {
                            membership::run_backfill_job(&w.store, &w.registries, job, w.settings.lease).await
                        }
                    }
                },
            ));
            let w = workers.clone();
            tasks.spawn(run_queue(
                membership::GROUP_QUEUE,
                1,
                n,
                w.clone(),
                Wake::Poll,
                shutdown.clone(),
                move |jobs| {
                    let w = w.clone();
                    async move {
                        for job in jobs {
                            membership::run_group_job(&w.store, &w.registries, job).await
                        }
                    }
                },
            ));
        }
        let w = workers.clone();
        let stop = shutdown.clone();
        let wake = Wake::Local(workers.export_wake.clone());
        tasks.spawn(run_queue(export::EXPORT_QUEUE, 1, n, w.clone(), wake, shutdown.clone(), move |jobs| {
            let (w, stop) = (w.clone(), stop.clone());
            async move {
                for job in jobs {
                    export::run_job(&w, job, &stop).await
                }
            }
        }));
    }
    if !workers.registries.is_empty() {
        tasks.spawn(membership::reevaluate_daily(workers.store.clone(), workers.registries.clone(), shutdown.clone()));
    }
    let (store, folder) = (workers.store.clone(), workers.exports.folder.clone());
    tasks.spawn(export::remove_expired(store, folder, shutdown));
    tasks
}

/// What wakes an idle worker besides its poll interval.
enum Wake {
    /// Every job committed through the store handle.
    OnEnqueue,
    /// Nothing.
    Poll,
    /// This notification (one waiter per notice; a notice with no waiter is kept for the next).
    Local(Arc<Notify>),
}

/// One worker on one queue: claim up to `batch` jobs, handle them, and wait for a wake-up or the poll interval.
async fn run_queue<F, Fut>(
    queue: &'static str,
    batch: u32,
    n: usize,
    workers: RegistryWorkers,
    wake: Wake,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(Vec<Job>) -> Fut,
    Fut: Future<Output = ()>,
{
    tracing::debug!(queue, worker = n, "worker started");
    let settings = &workers.settings;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        settings.give_way().await;
        match workers.store.claim(queue, batch, settings.lease).await {
            Ok(jobs) if !jobs.is_empty() => {
                handle(jobs).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(queue, error = %e, "claiming jobs failed; retrying"),
        }
        let woken = async {
            match &wake {
                Wake::OnEnqueue => workers.store.job_enqueued().await,
                Wake::Poll => std::future::pending().await,
                Wake::Local(notify) => notify.notified().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = woken => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
    tracing::debug!(queue, worker = n, "worker stopped");
}

/// Retries a job later: its work was rolled back.
async fn retry_later(store: &Store, job: &Job, error: &StoreError) {
    tracing::warn!(queue = %job.queue, job_id = job.id, attempt = job.attempts, error = %error, "job failed; will retry");
    let backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(300) };
    if let Err(e) = store.fail(job, &error.to_string(), &backoff).await {
        tracing::warn!(job_id = job.id, error = %e, "could not record the job failure (lease expires)");
    }
}

/// Dead-letters a job whose input is wrong (retrying cannot help).
async fn dead_letter(store: &Store, job: &Job, error: &str) {
    tracing::error!(queue = %job.queue, job_id = job.id, error, "job dead-lettered");
    let last = Job { attempts: job.max_attempts, ..job.clone() };
    if let Err(e) = store.fail(&last, error, &Backoff::default()).await {
        tracing::warn!(job_id = job.id, error = %e, "could not dead-letter the job (lease expires)");
    }
}
