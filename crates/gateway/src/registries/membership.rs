//! The membership workers: a written Patient, Condition or related resource -> the patient's membership and record
//! in every enabled registry, and each registry's FHIR Group rebuilt from the membership table.
//!
//! A membership job names the written version; the patients involved are those it and its previous version refer
//! to. Each patient is re-evaluated in one transaction, serialized per patient, that reads the patient's current
//! data, records what changed (membership, period, record) under the registry's next change sequence and completes
//! the job, so a job that dies leaves nothing half-done and a late job cannot overwrite a newer evaluation with
//! older data. When a membership changes, a `registry-group` job is queued unless one is already waiting: a burst
//! of changes rebuilds the Group once.

use chrono::Utc;
use serde_json::{Value, json};
use store::{
    Cond, Job, MemberQuery, NewJob, Precondition, RegistryMember, Scope, SearchQuery, Store, StoreError, StoreTx,
    ValueTest,
};

use super::records::{PatientData, build_record, registry_patient};
use super::{RegistrySet, dead_letter, retry_later};

/// Queue of Group rebuilds, payload `{"registry": id}`.
pub const GROUP_QUEUE: &str = "registry-group";
/// Queue of whole-population evaluations, payload `{"registry": id}`: queued at start-up for a registry newly
/// enabled or given a new key, so data stored before is evaluated too.
pub const BACKFILL_QUEUE: &str = "registry-backfill";
/// Patients read per page by a backfill.
const BACKFILL_PAGE: u32 = 500;

/// A Group rebuild rewrites every member (the Group version, its history copy and one index row per member), so
/// its cost grows with the registry. Rebuilt on every change, a registry filling up with N members costs O(N^2):
/// loading 50,000 members through the FHIR API had not finished after 14 minutes, the one SQLite writer busy
/// rewriting the Group. So a rebuild is queued to run this many times its last duration after the change that
/// asks for it (changes meanwhile join the waiting job): rebuilds take at most about 1/(1+this) of the time, and
/// loading stays linear. A small registry rebuilds at once; the records feed and exports never wait for the Group.
const GROUP_REBUILD_SPACING: u32 = 10;
/// Upper bound of that delay.
const GROUP_REBUILD_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(300);
/// How long this process's last Group rebuild took, in microseconds.
static LAST_GROUP_REBUILD_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// When a Group rebuild queued now should run: see [`GROUP_REBUILD_SPACING`].
fn group_rebuild_at() -> store::Timestamp {
    let last = std::time::Duration::from_micros(LAST_GROUP_REBUILD_US.load(std::sync::atomic::Ordering::Relaxed));
    let delay = group_rebuild_delay(last);
    store::Timestamp(store::Timestamp::now().micros() + delay.as_micros() as i64)
}

/// The delay before a Group rebuild, given how long the last one took.
pub fn group_rebuild_delay(last_rebuild: std::time::Duration) -> std::time::Duration {
    last_rebuild.saturating_mul(GROUP_REBUILD_SPACING).min(GROUP_REBUILD_MAX_DELAY)
}

/// Members per page when a Group is rebuilt.
const GROUP_PAGE: u32 = 1000;
/// Resources per page when a patient's data is read.
const SEARCH_PAGE: u32 = 500;

#[derive(serde::Deserialize)]
struct Written {
    #[serde(rename = "resourceType")]
    resource_type: String,
    id: String,
    #[serde(rename = "versionId")]
    version_id: i64,
}

/// Membership jobs claimed at once: the writes of one message or one normalized screening name the same patient
/// many times, and a batch evaluates each patient once.
pub const MEMBERSHIP_BATCH: u32 = 64;

/// Evaluates the patients a batch of jobs names, each once; a job completes in the transaction of the last of its
/// patients, so it ends exactly when all of them are evaluated. After a failure the jobs not yet completed are
/// retried.
pub(super) async fn run_jobs(store: &Store, registries: &RegistrySet, jobs: Vec<Job>) {
    let mut resolved: Vec<(Job, Vec<String>)> = Vec::new();
    for job in jobs {
        let Ok(written) = serde_json::from_str::<Written>(&job.payload) else {
            dead_letter(store, &job, "payload does not name a resource version").await;
            continue;
        };
        match patients_of(store, &written).await {
            Ok(patients) if patients.is_empty() => {
                if let Err(e) = store.complete(&job).await {
                    retry_later(store, &job, &e).await;
                }
            }
            Ok(patients) => resolved.push((job, patients)),
            Err(e) => retry_later(store, &job, &e).await,
        }
    }
    let mut order: Vec<&str> = Vec::new();
    for (_, patients) in &resolved {
        for p in patients {
            if !order.contains(&p.as_str()) {
                order.push(p);
            }
        }
    }
    let mut completing: Vec<Vec<&Job>> = vec![Vec::new(); order.len()];
    for (job, patients) in &resolved {
        let last = patients.iter().filter_map(|p| order.iter().position(|o| o == p)).max().unwrap_or(0);
        completing[last].push(job);
    }
    let mut done = 0;
    for (i, patient_id) in order.iter().enumerate() {
        if let Err(e) = refresh_patient(store, registries, patient_id, &completing[i]).await {
            let left: usize = completing[i..].iter().map(Vec::len).sum();
            metrics::counter!("registry_membership_jobs_total", "outcome" => "retry").increment(left as u64);
            for job in completing[i..].iter().flatten() {
                retry_later(store, job, &e).await;
            }
            break;
        }
        done += completing[i].len();
    }
    metrics::counter!("registry_membership_jobs_total", "outcome" => "done").increment(done as u64);
    tracing::debug!(jobs = done, patients = order.len(), "registry membership evaluated");
}

/// The patients a written version and its predecessor refer to (a Patient: itself).
async fn patients_of(store: &Store, written: &Written) -> Result<Vec<String>, StoreError> {
    if written.resource_type == "Patient" {
        return Ok(vec![written.id.clone()]);
    }
    let mut patients = Vec::new();
    for version in [written.version_id, written.version_id - 1] {
        if version < 1 {
            continue;
        }
        let Some(stored) = store.vread(&written.resource_type, &written.id, version).await? else { continue };
        let Some(content) = stored.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) else {
            continue;
        };
        let field = match written.resource_type.as_str() {
            "Task" => "for",
            "Coverage" => "beneficiary",
            _ => "subject",
        };
        if let Some(id) = patient_reference(&content[field])
            && !patients.contains(&id)
        {
            patients.push(id);
        }
    }
    Ok(patients)
}

fn patient_reference(reference: &Value) -> Option<String> {
    let text = reference["reference"].as_str()?;
    let (before, id) = text.rsplit_once('/')?;
    (before.rsplit('/').next() == Some("Patient") && store::is_valid_id(id)).then(|| id.to_owned())
}

/// Every live resource of `resource_type` whose reference `param` points at the patient.
async fn referring(
    tx: &mut StoreTx,
    resource_type: &str,
    param: &str,
    patient_id: &str,
) -> Result<Vec<Value>, StoreError> {
    let mut found = Vec::new();
    let mut offset = 0;
    loop {
        let query = SearchQuery {
            resource_type: resource_type.into(),
            clauses: vec![vec![Cond::Match {
                param: param.into(),
                test: ValueTest::Reference { target_type: Some("Patient".into()), target_id: patient_id.into() },
            }]],
            sort: Vec::new(),
            count: SEARCH_PAGE,
            offset,
            total: false,
            scope: Scope::All,
        };
        let page = tx.search(&query).await?;
        found.extend(page.resources.iter().filter_map(|r| serde_json::from_str(r.content.as_deref()?).ok()));
        if !page.more {
            return Ok(found);
        }
        offset += u64::from(SEARCH_PAGE);
    }
}

/// Re-evaluates one patient against every enabled registry and records what changed; completes `jobs` in the
/// same transaction.
pub async fn refresh_patient(
    store: &Store,
    registries: &RegistrySet,
    patient_id: &str,
    jobs: &[&Job],
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.serialize_on(&format!("registry-patient:{patient_id}")).await?;
    let today = Utc::now().date_naive();
    let data = read_patient_data(&mut tx, registries, patient_id, today).await?;
    let changed = record_evaluation(&mut tx, registries, patient_id, data.as_ref(), today).await?;
    for job in jobs {
        tx.complete_job(job).await?;
    }
    tx.commit().await?;
    metrics::counter!("registry_records_changed_total").increment(changed);
    Ok(())
}

/// The patient's current data as membership and records need it: `None` when the Patient is absent or deleted.
/// The resources a record carries are read only when the patient belongs to some registry.
async fn read_patient_data(
    tx: &mut StoreTx,
    registries: &RegistrySet,
    patient_id: &str,
    today: chrono::NaiveDate,
) -> Result<Option<PatientData>, StoreError> {
    let patient = tx
        .read("Patient", patient_id)
        .await?
        .filter(|p| !p.deleted)
        .and_then(|p| serde_json::from_str::<Value>(p.content.as_deref()?).ok());
    let Some(patient) = patient else { return Ok(None) };
    let mut data =
        PatientData { conditions: referring(tx, "Condition", "subject", patient_id).await?, ..PatientData::default() };
    let facts = registry_patient(&patient, &data.conditions);
    data.patient = patient;
    if registries.iter().any(|r| sdoh::registry::is_member(&r.definition, &facts, today).is_some()) {
        data.observations = referring(tx, "Observation", "subject", patient_id).await?;
        data.service_requests = referring(tx, "ServiceRequest", "subject", patient_id).await?;
        data.tasks = referring(tx, "Task", "subject", patient_id).await?;
        data.encounters = referring(tx, "Encounter", "subject", patient_id).await?;
        data.coverages = referring(tx, "Coverage", "beneficiary", patient_id).await?;
    }
    Ok(Some(data))
}

/// Evaluates the patient's `data` (`None`: no live Patient) against every enabled registry and records, inside
/// `tx`, each row that changed (membership, period or record) with the registry's next change sequence, queuing a
/// Group rebuild when a membership changed. Returns how many rows changed. The caller holds the patient's
/// serialization and commits; a bulk loader that has just written a patient's resources in `tx` passes them here
/// instead of reading them back.
pub async fn record_evaluation(
    tx: &mut StoreTx,
    registries: &RegistrySet,
    patient_id: &str,
    data: Option<&PatientData>,
    today: chrono::NaiveDate,
) -> Result<u64, StoreError> {
    let empty = PatientData::default();
    let memberships: Vec<_> = match data {
        Some(data) => {
            let facts = registry_patient(&data.patient, &data.conditions);
            registries.iter().map(|r| sdoh::registry::is_member(&r.definition, &facts, today)).collect()
        }
        None => vec![None; registries.iter().count()],
    };
    let data = data.unwrap_or(&empty);
    let mut changed = 0;
    for (registry, membership) in registries.iter().zip(memberships) {
        let existing = tx.registry_member(registry.id(), patient_id).await?;
        let record = membership.as_ref().and_then(|_| build_record(registry, data, today));
        let next = match (&membership, record) {
            (Some(m), Some((pseudonym, record))) => RegistryMember {
                registry_id: registry.id().into(),
                patient_id: patient_id.into(),
                pseudonym,
                member: true,
                period_start: m.start.map(|d| d.to_string()),
                period_end: m.end.map(|d| d.to_string()),
                inactive: m.inactive,
                record: Some(record.to_string()),
                seq: 0,
                changed: store::Timestamp(0),
            },
            _ => match &existing {
                Some(old) if old.member => RegistryMember {
                    member: false,
                    record: None,
                    period_start: None,
                    period_end: None,
                    inactive: false,
                    ..old.clone()
                },
                // Never a member: nothing to record.
                _ => continue,
            },
        };
        let same_membership = existing.as_ref().is_some_and(|old| {
            (old.member, &old.period_start, &old.period_end, old.inactive)
                == (next.member, &next.period_start, &next.period_end, next.inactive)
        });
        let same_record =
            existing.as_ref().is_some_and(|old| old.record == next.record && old.pseudonym == next.pseudonym);
        if same_membership && same_record {
            continue;
        }
        tx.put_registry_member(&next).await?;
        changed += 1;
        if !same_membership {
            let payload = json!({"registry": registry.id()}).to_string();
            if !tx.has_waiting_job(GROUP_QUEUE, &payload).await? {
                tx.enqueue(&NewJob::new(GROUP_QUEUE, payload).run_at(group_rebuild_at())).await?;
            }
            tracing::info!(registry = registry.id(), member = next.member, "registry membership changed");
        }
    }
    Ok(changed)
}

/// Queues a backfill for every enabled registry whose key fingerprint is new to the store (enabled for the first
/// time, or re-keyed). Replicas starting together queue one between them.
pub async fn schedule_backfills(store: &Store, registries: &RegistrySet) -> Result<(), StoreError> {
    for registry in registries.iter() {
        let fingerprint = sdoh::registry::pseudonym(&registry.key, registry.id(), "key fingerprint");
        let mut tx = store.begin().await?;
        if tx.set_registry_fingerprint(registry.id(), &fingerprint).await? {
            tx.enqueue(&NewJob::new(BACKFILL_QUEUE, json!({"registry": registry.id()}).to_string())).await?;
            tracing::info!(registry = registry.id(), "registry evaluation of every patient queued");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// How often every patient is evaluated again: ages cross a registry's minimum without any write.
const REEVALUATE_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Queues each registry's evaluation of every patient once a day (one replica takes it).
pub(super) async fn reevaluate_daily(
    store: Store,
    registries: std::sync::Arc<RegistrySet>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                for registry in registries.iter() {
                    let due_before = store::Timestamp(store::Timestamp::now().micros() - REEVALUATE_EVERY.as_micros() as i64);
                    let queued = async {
                        let mut tx = store.begin().await?;
                        let taken = tx.take_registry_evaluation(registry.id(), due_before).await?;
                        if taken {
                            tx.enqueue(&NewJob::new(BACKFILL_QUEUE, json!({"registry": registry.id()}).to_string())).await?;
                        }
                        tx.commit().await?;
                        Ok::<bool, StoreError>(taken)
                    }
                    .await;
                    match queued {
                        Ok(true) => tracing::info!(registry = registry.id(), "daily registry evaluation of every patient queued"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(registry = registry.id(), error = %e, "could not queue the daily registry evaluation"),
                    }
                }
            }
        }
    }
}

/// Evaluates every stored patient, a page at a time, renewing the job's lease as it goes.
pub(super) async fn run_backfill_job(store: &Store, registries: &RegistrySet, job: Job, lease: std::time::Duration) {
    let mut job = job;
    let enabled =
        serde_json::from_str::<GroupPayload>(&job.payload).is_ok_and(|p| registries.get(&p.registry).is_some());
    let outcome = async {
        if !enabled {
            store.complete(&job).await?;
            return Ok(0);
        }
        let mut after = String::new();
        let mut evaluated = 0u64;
        loop {
            let page = store.resources_page("Patient", None, &after, BACKFILL_PAGE).await?;
            for patient in &page {
                refresh_patient(store, registries, &patient.id, &[]).await?;
            }
            evaluated += page.len() as u64;
            store.extend_lease(&mut job, lease).await?;
            match page.last() {
                Some(last) if page.len() as u32 == BACKFILL_PAGE => after = last.id.clone(),
                _ => break,
            }
        }
        store.complete(&job).await?;
        Ok::<u64, StoreError>(evaluated)
    }
    .await;
    match outcome {
        Ok(patients) => tracing::info!(patients, "registry evaluation of every patient done"),
        Err(e) => retry_later(store, &job, &e).await,
    }
}

#[derive(serde::Deserialize)]
struct GroupPayload {
    registry: String,
}

pub(super) async fn run_group_job(store: &Store, registries: &RegistrySet, job: Job) {
    let Some(registry) = serde_json::from_str::<GroupPayload>(&job.payload).ok().map(|p| p.registry) else {
        dead_letter(store, &job, "payload does not name a registry").await;
        return;
    };
    if registries.get(&registry).is_none() {
        // A registry no longer enabled: its Group stays as it was last written.
        if let Err(e) = store.complete(&job).await {
            retry_later(store, &job, &e).await;
        }
        return;
    }
    if let Err(e) = write_group(store, registries, &registry, &job).await {
        retry_later(store, &job, &e).await;
    }
}

/// The registry's Group (`Group/registry-<id>`) from the membership table, written when it differs from the
/// stored one, with the job's completion.
async fn write_group(store: &Store, registries: &RegistrySet, registry_id: &str, job: &Job) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let registry = registries.get(registry_id).ok_or_else(|| StoreError::Invalid("unknown registry".into()))?;
    let mut members = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .registry_members(&MemberQuery {
                registry_id: registry_id.into(),
                after_patient: after.clone(),
                members_only: true,
                limit: GROUP_PAGE,
                ..MemberQuery::default()
            })
            .await?;
        for m in &page {
            let mut member = json!({"entity": {"reference": format!("Patient/{}", m.patient_id)}});
            let mut period = serde_json::Map::new();
            if let Some(start) = &m.period_start {
                period.insert("start".into(), json!(start));
            }
            if let Some(end) = &m.period_end {
                period.insert("end".into(), json!(end));
            }
            if !period.is_empty() {
                member["period"] = Value::Object(period);
            }
            member["inactive"] = json!(m.inactive);
            members.push(member);
        }
        match page.last() {
            Some(last) if page.len() as u32 == GROUP_PAGE => after = Some(last.patient_id.clone()),
            _ => break,
        }
    }
    let mut group = json!({
        "resourceType": "Group",
        "id": registry.group_id(),
        "active": true,
        "type": "person",
        "actual": true,
        "name": registry.definition.title,
        "quantity": members.len(),
    });
    if !members.is_empty() {
        group["member"] = Value::Array(members);
    }
    let mut tx = store.begin().await?;
    tx.serialize_on(&format!("registry-group:{registry_id}")).await?;
    let stored = tx.read("Group", &registry.group_id()).await?.filter(|g| !g.deleted);
    let unchanged = stored.and_then(|s| s.content).is_some_and(|c| crate::worker::same_content(&c, &group));
    if !unchanged {
        fhir_server::rest::write::put(&mut tx, group, Precondition::None).await?;
    }
    tx.complete_job(job).await?;
    tx.commit().await?;
    let took = started.elapsed();
    LAST_GROUP_REBUILD_US.store(took.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        registry = registry_id,
        written = !unchanged,
        took_ms = took.as_millis() as u64,
        "registry group rebuilt"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::group_rebuild_delay;

    #[test]
    fn group_rebuilds_wait_in_proportion_to_their_cost_within_a_bound() {
        assert_eq!(group_rebuild_delay(Duration::ZERO), Duration::ZERO, "a small registry rebuilds at once");
        assert_eq!(group_rebuild_delay(Duration::from_millis(40)), Duration::from_millis(400));
        assert_eq!(group_rebuild_delay(Duration::from_secs(2)), Duration::from_secs(20));
        assert_eq!(group_rebuild_delay(Duration::from_secs(3600)), Duration::from_secs(300));
    }
}
