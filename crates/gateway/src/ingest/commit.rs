//! Group commit: many connections' messages share one journal transaction, and each waits for that commit.
//!
//! A committer takes the first waiting message, then everything else already queued (up to a batch limit), and
//! journals them in one transaction. Under light load a batch is one message and nothing waits on a timer; under
//! heavy load batches grow by themselves and the per-message cost of a commit (an fsync) shrinks.

use std::sync::Arc;
use std::time::Instant;

use store::{JournalOutcome, NewMessage, Store};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Why a message could not be journaled; the sender is told to resend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("the message store is unavailable")]
    Unavailable,
    #[error("the message could not be stored")]
    Failed,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

struct Pending {
    message: NewMessage,
    reply: oneshot::Sender<Result<JournalOutcome, CommitError>>,
}

/// Settings for the committers.
#[derive(Debug, Clone)]
pub struct CommitSettings {
    pub max_batch: usize,
    pub committers: usize,
    pub job_queue: String,
    pub max_attempts: i32,
}

/// The submitting side; cheap to clone, one per connection handler.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: mpsc::Sender<Pending>,
}

impl GroupCommitter {
    /// Starts the committer tasks. They stop after every `GroupCommitter` clone is dropped and the queue is drained.
    pub fn spawn(store: Store, settings: CommitSettings) -> (GroupCommitter, tokio::task::JoinSet<()>) {
        let (sender, receiver) = mpsc::channel::<Pending>(settings.max_batch.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..settings.committers.max(1) {
            let (store, receiver, settings) = (store.clone(), receiver.clone(), settings.clone());
            tasks.spawn(async move { run_committer(store, receiver, settings).await });
        }
        (GroupCommitter { sender }, tasks)
    }

    /// Journals one message and resolves once it is committed (or known not to be).
    pub async fn submit(&self, message: NewMessage) -> Result<JournalOutcome, CommitError> {
        let (reply, outcome) = oneshot::channel();
        self.sender.send(Pending { message, reply }).await.map_err(|_| CommitError::ShuttingDown)?;
        outcome.await.unwrap_or(Err(CommitError::ShuttingDown))
    }
}

async fn run_committer(store: Store, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>, settings: CommitSettings) {
    let mut batch: Vec<Pending> = Vec::with_capacity(settings.max_batch);
    loop {
        {
            let mut rx = receiver.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            drain_ready(&mut rx, &mut batch, settings.max_batch);
            // Give connection tasks that are already runnable one turn to submit, so a commit takes them along
            // instead of leaving them for the next fsync; stop as soon as a turn brings nothing new.
            for _ in 0..4 {
                let before = batch.len();
                tokio::task::yield_now().await;
                drain_ready(&mut rx, &mut batch, settings.max_batch);
                if batch.len() == before || batch.len() >= settings.max_batch {
                    break;
                }
            }
        }
        commit_batch(&store, &settings, &mut batch).await;
    }
}

fn drain_ready(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

async fn commit_batch(store: &Store, settings: &CommitSettings, batch: &mut Vec<Pending>) {
    let started = Instant::now();
    let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch.drain(..).map(|p| (p.message, p.reply)).unzip();
    metrics::histogram!("ingest_group_commit_batch_size").record(messages.len() as f64);
    match store.journal_messages(&messages, &settings.job_queue, settings.max_attempts).await {
        Ok(outcomes) => {
            metrics::histogram!("ingest_commit_duration_seconds").record(started.elapsed().as_secs_f64());
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) if e.is_transient() || messages.len() == 1 => {
            tracing::warn!(error = %e, messages = messages.len(), "journal commit failed; senders are told to resend");
            let error = if e.is_transient() { CommitError::Unavailable } else { CommitError::Failed };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(e) => {
            // One bad message must not sink the others: retry each alone so only the culprit is refused.
            tracing::warn!(error = %e, messages = messages.len(), "journal batch failed; retrying messages one by one");
            for (message, reply) in messages.iter().zip(replies) {
                let outcome = store
                    .journal_messages(std::slice::from_ref(message), &settings.job_queue, settings.max_attempts)
                    .await
                    .map(|mut o| o.remove(0))
                    .map_err(|e| if e.is_transient() { CommitError::Unavailable } else { CommitError::Failed });
                let _ = reply.send(outcome);
            }
        }
    }
}
