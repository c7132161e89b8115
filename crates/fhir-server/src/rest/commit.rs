//! Group commit for plain creates: concurrent `POST /{type}` requests share one database transaction.
//!
//! A create with a server-assigned id cannot conflict with anything, so many of them can be written in one
//! transaction and acknowledged together after its commit. On SQLite, where every write goes through one writer and
//! each commit is an fsync, this is what lets creates scale with concurrent clients. Under light load a batch is one
//! create and nothing waits on a timer; under load batches grow by themselves. Each client still gets its 201 only
//! after the commit that holds its resource.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use store::{CommitTicket, Store, Written};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{FhirError, write};
use crate::auth::Caller;

/// Largest number of creates written in one transaction.
const MAX_BATCH: usize = 64;

struct Pending {
    caller: Caller,
    resource: Value,
    reply: oneshot::Sender<Result<Written, FhirError>>,
}

/// The submitting side; cheap to clone. The committer task ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct CreateCommitter {
    sender: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for CreateCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateCommitter").finish_non_exhaustive()
    }
}

impl CreateCommitter {
    /// Starts the committer on the current tokio runtime. One committer per store: SQLite has one writer anyway,
    /// and on PostgreSQL one transaction at a time keeps batches large while other requests still run in parallel.
    pub(crate) fn spawn(store: Store) -> CreateCommitter {
        let (sender, receiver) = mpsc::channel::<Pending>(MAX_BATCH * 4);
        tokio::spawn(run(store, Arc::new(Mutex::new(receiver))));
        CreateCommitter { sender }
    }

    /// Writes a new resource (its id already assigned) and resolves once the commit holding it is durable.
    pub(crate) async fn create(&self, caller: &Caller, resource: Value) -> Result<Written, FhirError> {
        let (reply, outcome) = oneshot::channel();
        self.sender.send(Pending { caller: caller.clone(), resource, reply }).await.map_err(|_| shutting_down())?;
        outcome.await.unwrap_or_else(|_| Err(shutting_down()))
    }
}

fn shutting_down() -> FhirError {
    FhirError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        super::IssueType::Transient,
        "the server is shutting down; retry later",
    )
}

async fn run(store: Store, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = receiver.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            drain_ready(&mut rx, &mut batch);
            // Requests that are already runnable get one turn to submit, so this commit takes them along instead of
            // leaving them for the next fsync; stop as soon as a turn brings nothing new.
            for _ in 0..4 {
                let before = batch.len();
                tokio::task::yield_now().await;
                drain_ready(&mut rx, &mut batch);
                if batch.len() == before || batch.len() >= MAX_BATCH {
                    break;
                }
            }
        }
        commit_batch(&store, &mut batch).await;
    }
}

fn drain_ready(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

async fn commit_batch(store: &Store, batch: &mut Vec<Pending>) {
    let started = Instant::now();
    let (creates, replies): (Vec<(Caller, Value)>, Vec<_>) =
        batch.drain(..).map(|p| ((p.caller, p.resource), p.reply)).unzip();
    let resources = creates;
    metrics::histogram!("fhir_create_batch_size").record(resources.len() as f64);
    match write_all(store, &resources).await {
        Ok((written, ticket)) => {
            metrics::histogram!("fhir_create_commit_seconds").record(started.elapsed().as_secs_f64());
            // The next batch writes while this one's commit is synced; its clients hear back once it is durable.
            tokio::spawn(async move {
                let durable = ticket.durable().await.map_err(FhirError::from);
                for (reply, written) in replies.into_iter().zip(written) {
                    let _ = reply.send(durable.clone().map(|()| written));
                }
            });
        }
        Err(e) if e.is_transient() || resources.len() == 1 => {
            let error = FhirError::from(e);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(e) => {
            // One resource the database refuses must not sink the others: each is retried alone, so only the
            // culprit's client gets the error.
            tracing::warn!(error = %e, resources = resources.len(), "create batch failed; retrying one by one");
            for (resource, reply) in resources.into_iter().zip(replies) {
                let outcome = match write_all(store, std::slice::from_ref(&resource)).await {
                    Ok((mut written, ticket)) => ticket.durable().await.map(|()| written.remove(0)),
                    Err(e) => Err(e),
                };
                let _ = reply.send(outcome.map_err(FhirError::from));
            }
        }
    }
}

/// Writes and commits a batch; the ticket says when the commit is durable.
async fn write_all(
    store: &Store,
    resources: &[(Caller, Value)],
) -> Result<(Vec<Written>, CommitTicket), store::StoreError> {
    let mut tx = store.begin().await?;
    let written = if let [(caller, resource)] = resources {
        // Alone, a create takes the checked path, so an id clash (from the one-by-one retry) reads as a conflict.
        vec![write::create_as(&mut tx, caller, resource.clone()).await?]
    } else {
        // Each caller's creates are checked and granted as that caller's; runs of one caller share a bulk insert.
        let mut written = Vec::with_capacity(resources.len());
        for run in resources.chunk_by(|a, b| a.0 == b.0) {
            let values = run.iter().map(|(_, r)| r.clone()).collect();
            written.extend(write::create_all_as(&mut tx, &run[0].0, values).await?);
        }
        written
    };
    let ticket = tx.commit_visible().await?;
    Ok((written, ticket))
}
