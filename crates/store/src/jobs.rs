//! The durable job queue: enqueue with the data it refers to, claim under a lease, complete, retry, dead-letter.
//!
//! A claimed job carries a lease token. Completing or failing it checks the token, so a worker whose lease expired
//! (it stalled or died and the job was handed to someone else) cannot complete work it no longer owns.

use std::time::Duration;

use rand::Rng;
use sqlx::Row;

use crate::time::Timestamp;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Pools, Result, Store, StoreError, autocommit, with_read_pool};

/// A job to be queued.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    /// Opaque to the store; JSON by convention.
    pub payload: String,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: i32,
    /// Earliest time to run; `None` means now.
    pub run_at: Option<Timestamp>,
}

impl NewJob {
    pub fn new(queue: impl Into<String>, payload: impl Into<String>) -> Self {
        NewJob { queue: queue.into(), payload: payload.into(), max_attempts: 10, run_at: None }
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }
}

/// A job handed to one worker under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    /// Including this one.
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_token: i64,
    pub lease_until: Timestamp,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Ready,
    Leased,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<JobState> {
        match s {
            "ready" => Some(JobState::Ready),
            "leased" => Some(JobState::Leased),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

/// How many jobs of a queue are in a state (completed jobs are removed, so they are not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
}

/// What became of a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    RetryAt(Timestamp),
    DeadLettered,
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped, +/-20 %.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(1), max: Duration::from_secs(600) }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let raw = self.base.saturating_mul(1u32 << exponent).min(self.max);
        raw.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// Jobs per multi-row INSERT (5 binds each, well under either backend's bind limit).
const JOBS_PER_INSERT: usize = 200;

const INSERT_JOB: &str = "INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at_us, created_us) \
     VALUES ($1, $2, 'ready', 0, $3, $4, $5)";

impl StoreTx {
    /// Queues a job that becomes visible to workers when (and only if) this transaction commits. Jobs are
    /// buffered and inserted with one multi-row statement (at commit, or before anything in this transaction reads
    /// the queue), so a write that triggers several jobs per resource costs no statement per job.
    pub async fn enqueue(&mut self, job: &NewJob) -> Result<()> {
        self.pending_jobs.push(job.clone());
        if self.pending_jobs.len() >= JOBS_PER_INSERT {
            self.flush_jobs().await?;
        }
        Ok(())
    }

    /// Inserts the buffered jobs, in the order they were queued.
    pub(crate) async fn flush_jobs(&mut self) -> Result<()> {
        if self.pending_jobs.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending_jobs);
        self.enqueue_many(&pending).await
    }

    /// [`StoreTx::enqueue`], returning the new job's id (to record alongside it).
    pub async fn enqueue_returning_id(&mut self, job: &NewJob) -> Result<i64> {
        // Ids follow the order of queuing.
        self.flush_jobs().await?;
        let now = Timestamp::now();
        let sql = format!("{INSERT_JOB} RETURNING id");
        let id = with_tx_conn!(self, conn => {
            sqlx::query(&sql)
                .bind(&job.queue)
                .bind(&job.payload)
                .bind(job.max_attempts)
                .bind(job.run_at.unwrap_or(now).micros())
                .bind(now.micros())
                .fetch_one(&mut *conn)
                .await?
                .try_get::<i64, _>(0)?
        });
        self.enqueued_jobs = true;
        Ok(id)
    }

    /// Queues many jobs with one multi-row statement per chunk.
    pub async fn enqueue_many(&mut self, jobs: &[NewJob]) -> Result<()> {
        let now = Timestamp::now();
        for chunk in jobs.chunks(JOBS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at_us, created_us) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                let p = |n| crate::tx::placeholder(self, n);
                sql.push_str(&format!(
                    "({}, {}, 'ready', 0, {}, {}, {})",
                    p(b + 1),
                    p(b + 2),
                    p(b + 3),
                    p(b + 4),
                    p(b + 5)
                ));
            }
            with_tx_conn!(self, conn => {
                let mut q = sqlx::query(&sql);
                for job in chunk {
                    q = q
                        .bind(&job.queue)
                        .bind(&job.payload)
                        .bind(job.max_attempts)
                        .bind(job.run_at.unwrap_or(now).micros())
                        .bind(now.micros());
                }
                q.execute(&mut *conn).await?;
            });
            self.enqueued_jobs = true;
        }
        Ok(())
    }

    /// Completes a job in the same transaction as the work it did, so the work and the completion commit together.
    pub async fn complete_job(&mut self, job: &Job) -> Result<()> {
        let done = with_tx_conn!(self, conn => {
            sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'leased'")
                .bind(job.id)
                .bind(job.lease_token)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if done == 1 { Ok(()) } else { Err(StoreError::LeaseLost { job_id: job.id }) }
    }

    /// [`StoreTx::complete_job`] for many jobs with one statement per chunk; fails with the first job whose lease
    /// was lost when any was (the caller's work for all of them then rolls back).
    pub async fn complete_jobs(&mut self, jobs: &[Job]) -> Result<()> {
        const JOBS_PER_DELETE: usize = 200;
        for chunk in jobs.chunks(JOBS_PER_DELETE) {
            let mut sql = String::from("DELETE FROM jobs WHERE state = 'leased' AND (");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                let (id, token) = (crate::tx::placeholder(self, 2 * i + 1), crate::tx::placeholder(self, 2 * i + 2));
                sql.push_str(&format!("(id = {id} AND lease_token = {token})"));
            }
            sql.push_str(") RETURNING id");
            let done: Vec<i64> = with_tx_conn!(self, conn => {
                let mut query = sqlx::query_scalar(&sql);
                for job in chunk {
                    query = query.bind(job.id).bind(job.lease_token);
                }
                query.fetch_all(&mut *conn).await?
            });
            if done.len() != chunk.len() {
                let lost = chunk.iter().find(|j| !done.contains(&j.id)).map_or(chunk[0].id, |j| j.id);
                return Err(StoreError::LeaseLost { job_id: lost });
            }
        }
        Ok(())
    }
}

/// The statement that records a failed attempt, what it decides, the retry time and the error as stored.
fn fail_statement(job: &Job, error: &str, backoff: &Backoff) -> (&'static str, FailOutcome, i64, String) {
    let error: String = error.chars().take(2000).collect();
    if job.attempts >= job.max_attempts {
        (
            "UPDATE jobs SET state = 'dead', lease_token = NULL, last_error = $3, run_at_us = $4 \
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            FailOutcome::DeadLettered,
            Timestamp::now().micros(),
            error,
        )
    } else {
        let delay = i64::try_from(backoff.delay(job.attempts).as_micros()).unwrap_or(i64::MAX);
        let at = Timestamp(Timestamp::now().micros().saturating_add(delay));
        (
            "UPDATE jobs SET state = 'ready', lease_token = NULL, last_error = $3, run_at_us = $4 \
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            FailOutcome::RetryAt(at),
            at.micros(),
            error,
        )
    }
}

impl StoreTx {
    /// Whether `job`'s queue still holds an older job that is not dead-lettered (waiting, leased or due for a
    /// retry): a worker that must apply a queue strictly in order, across replicas and retries, defers `job` then.
    pub async fn earlier_job_pending(&mut self, job: &Job) -> Result<bool> {
        self.flush_jobs().await?;
        let found = with_tx_conn!(self, conn => {
            sqlx::query("SELECT id FROM jobs WHERE queue = $1 AND id < $2 AND state <> 'dead' LIMIT 1")
                .bind(&job.queue)
                .bind(job.id)
                .fetch_optional(&mut *conn)
                .await?
                .is_some()
        });
        Ok(found)
    }

    /// [`Store::fail`] inside this transaction, so what the failure also records (an outbound log row) commits
    /// with it.
    pub async fn fail_job(&mut self, job: &Job, error: &str, backoff: &Backoff) -> Result<FailOutcome> {
        let (sql, outcome, run_at, error) = fail_statement(job, error, backoff);
        let updated = with_tx_conn!(self, conn => {
            sqlx::query(sql)
                .bind(job.id)
                .bind(job.lease_token)
                .bind(&error)
                .bind(run_at)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if updated == 1 { Ok(outcome) } else { Err(StoreError::LeaseLost { job_id: job.id }) }
    }
}

impl Store {
    /// Queues one job in its own transaction.
    pub async fn enqueue(&self, job: &NewJob) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.enqueue(job).await?;
        tx.commit().await
    }

    /// Leases up to `limit` due jobs of `queue` (oldest first) for `lease`. Jobs whose lease expired (their worker
    /// died) are due again; those that already used their last attempt are dead-lettered instead.
    pub async fn claim(&self, queue: &str, limit: u32, lease: Duration) -> Result<Vec<Job>> {
        let now = Timestamp::now();
        let lease_until = now.micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let token: i64 = rand::rng().random();
        let bury = "UPDATE jobs SET state = 'dead', lease_token = NULL, \
                    last_error = 'lease expired on the final attempt (worker stopped or stalled)' \
                    WHERE queue = $1 AND state = 'leased' AND lease_until_us < $2 AND attempts >= max_attempts";
        let due =
            "queue = $1 AND ((state = 'ready' AND run_at_us <= $2) OR (state = 'leased' AND lease_until_us < $2))";
        // Looked for on a reader first: idle workers polling an empty queue then never take the one writer (nor
        // wait for a commit's sync) from the workers and ingest that have something to write. A job queued after
        // this look is found at the next notification or poll, as one queued just after a claim would be.
        let probe = format!("SELECT 1 FROM jobs WHERE {due} LIMIT 1");
        let any_due = with_read_pool!(self, pool => {
            sqlx::query(&probe).bind(queue).bind(now.micros()).fetch_optional(pool).await?.is_some()
        });
        if !any_due {
            return Ok(Vec::new());
        }
        let claim = match self.pools() {
            Pools::Sqlite { .. } => format!(
                "UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_until_us = $3, lease_token = $4 \
                 WHERE id IN (SELECT id FROM jobs WHERE {due} ORDER BY id LIMIT $5) \
                 RETURNING id, queue, payload, attempts, max_attempts"
            ),
            // SKIP LOCKED: concurrent claimers in any replica take disjoint rows without waiting on each other.
            Pools::Postgres(_) => format!(
                "UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_until_us = $3, lease_token = $4 \
                 WHERE id IN (SELECT id FROM jobs WHERE {due} ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, queue, payload, attempts, max_attempts"
            ),
        };
        let mut tx = self.begin().await?;
        let rows = with_tx_conn!(tx, conn => {
            sqlx::query(bury).bind(queue).bind(now.micros()).execute(&mut *conn).await?;
            sqlx::query(&claim)
                .bind(queue)
                .bind(now.micros())
                .bind(lease_until)
                .bind(token)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| {
                    Ok(Job {
                        id: row.try_get("id")?,
                        queue: row.try_get("queue")?,
                        payload: row.try_get("payload")?,
                        attempts: row.try_get("attempts")?,
                        max_attempts: row.try_get("max_attempts")?,
                        lease_token: token,
                        lease_until: Timestamp(lease_until),
                    })
                })
                .collect::<Result<Vec<Job>>>()?
        });
        tx.commit().await?;
        let mut jobs = rows;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Completes a job on its own (when its work needed no database write).
    pub async fn complete(&self, job: &Job) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.complete_job(job).await?;
        tx.commit().await
    }

    /// Completes many jobs in one transaction; returns the ids whose lease was lost (not completed here).
    pub async fn complete_many(&self, jobs: &[Job]) -> Result<Vec<i64>> {
        let mut lost = Vec::new();
        let mut tx = self.begin().await?;
        for job in jobs {
            match tx.complete_job(job).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost { job_id }) => lost.push(job_id),
                Err(e) => return Err(e),
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    /// Records a failed attempt: retried after a backoff delay, or dead-lettered after the last attempt.
    pub async fn fail(&self, job: &Job, error: &str, backoff: &Backoff) -> Result<FailOutcome> {
        let (sql, outcome, run_at, error) = fail_statement(job, error, backoff);
        let updated = autocommit!(self, pool => {
            sqlx::query(sql)
                .bind(job.id)
                .bind(job.lease_token)
                .bind(&error)
                .bind(run_at)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 1 { Ok(outcome) } else { Err(StoreError::LeaseLost { job_id: job.id }) }
    }

    /// Extends a lease held by a worker that needs longer than planned.
    pub async fn extend_lease(&self, job: &mut Job, lease: Duration) -> Result<()> {
        let until = Timestamp::now().micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let updated = autocommit!(self, pool => {
            sqlx::query("UPDATE jobs SET lease_until_us = $3 WHERE id = $1 AND lease_token = $2 AND state = 'leased'")
                .bind(job.id)
                .bind(job.lease_token)
                .bind(until)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 1 {
            job.lease_until = Timestamp(until);
            Ok(())
        } else {
            Err(StoreError::LeaseLost { job_id: job.id })
        }
    }

    /// Puts a dead-lettered job back in its queue with a fresh set of attempts. Returns false if it was not dead.
    pub async fn requeue_dead(&self, job_id: i64) -> Result<bool> {
        let updated = autocommit!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET state = 'ready', attempts = 0, run_at_us = $2, last_error = NULL \
                 WHERE id = $1 AND state = 'dead'",
            )
            .bind(job_id)
            .bind(Timestamp::now().micros())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Jobs per queue and state, for metrics and operators.
    pub async fn job_counts(&self) -> Result<Vec<JobCount>> {
        with_read_pool!(self, pool => {
            let rows = sqlx::query("SELECT queue, state, COUNT(*) AS n FROM jobs GROUP BY queue, state ORDER BY queue, state")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .filter_map(|row| {
                    let state: String = match row.try_get("state") {
                        Ok(s) => s,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let state = JobState::parse(&state)?;
                    Some((|| Ok(JobCount { queue: row.try_get("queue")?, state, count: row.try_get("n")? }))())
                })
                .collect()
        })
    }

    /// Dead-lettered jobs of a queue with their last error, oldest first.
    pub async fn dead_jobs(&self, queue: &str, limit: u32) -> Result<Vec<(i64, String, Option<String>)>> {
        with_read_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, payload, last_error FROM jobs WHERE queue = $1 AND state = 'dead' ORDER BY id LIMIT $2",
            )
            .bind(queue)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("id")?, row.try_get("payload")?, row.try_get("last_error")?)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
        for (attempt, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = b.delay(attempt).as_secs_f64();
            assert!(d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9, "attempt {attempt}: {d}");
        }
    }
}
