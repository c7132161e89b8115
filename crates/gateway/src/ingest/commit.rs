//! Group commit: many connections' messages share one journal transaction, and each waits for that commit.
//!
//! A committer takes the first waiting message, then everything else already queued (up to a batch limit), and
//! journals them in one transaction. Under light load a batch is one message and nothing waits on a timer; under
//! heavy load batches grow by themselves and the per-message cost of a commit (an fsync) shrinks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use store::{JournalOutcome, NewMessage, Store};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

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
    activity: IngestActivity,
}

/// How many messages are waiting for their journal commit. On SQLite, where every write goes through one writer
/// connection, background workers wait while this is non-zero (up to a bound), so a burst of messages is
/// acknowledged at full speed and converted just after; without it four workers took four of every five turns
/// at the writer and ingest fell from ~14,600 to ~2,600 messages/s.
#[derive(Debug, Clone, Default)]
pub struct IngestActivity {
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
    /// When the last message arrived, in milliseconds since [`activity_epoch`].
    last_arrival_ms: Arc<AtomicU64>,
}

/// How recently a message must have arrived for ingest to count as streaming.
const STREAMING_WITHIN_MS: u64 = 100;

/// The origin of [`IngestActivity`]'s arrival times.
fn activity_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(activity_epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl IngestActivity {
    fn begin(&self) -> ActivityGuard {
        self.pending.fetch_add(1, Ordering::AcqRel);
        // Never zero, so a gateway that has received nothing does not look as if a message just arrived.
        self.last_arrival_ms.store(now_ms().max(1), Ordering::Relaxed);
        ActivityGuard(self.clone())
    }

    /// Whether messages are arriving: one waits for its journal commit, or one arrived within the last 100 ms.
    /// Background workers keep their transactions short then (each holds SQLite's one writer while it runs).
    pub fn is_streaming(&self) -> bool {
        if self.pending.load(Ordering::Acquire) > 0 {
            return true;
        }
        let last = self.last_arrival_ms.load(Ordering::Relaxed);
        last != 0 && now_ms().saturating_sub(last) < STREAMING_WITHIN_MS
    }

    /// Returns once no message waits for a journal commit, or after `at_most`, so background work is delayed,
    /// never starved, by a sustained stream.
    pub async fn wait_idle(&self, at_most: Duration) {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(at_most, idle).await;
    }
}

struct ActivityGuard(IngestActivity);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
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
        (GroupCommitter { sender, activity: IngestActivity::default() }, tasks)
    }

    /// What background workers watch to give way to ingest (see [`IngestActivity`]).
    pub fn activity(&self) -> IngestActivity {
        self.activity.clone()
    }

    /// Journals one message and resolves once it is committed (or known not to be).
    pub async fn submit(&self, message: NewMessage) -> Result<JournalOutcome, CommitError> {
        let _waiting = self.activity.begin();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_streams_while_a_message_waits() {
        let activity = IngestActivity::default();
        assert!(!activity.is_streaming(), "nothing has arrived");
        let _waiting = activity.begin();
        assert!(activity.is_streaming());
    }

    #[tokio::test(start_paused = true)]
    async fn workers_give_way_until_ingest_is_idle_but_never_longer_than_the_bound() {
        let activity = IngestActivity::default();
        let started = tokio::time::Instant::now();
        activity.wait_idle(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "idle: no wait");

        let busy = activity.begin();
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                activity.wait_idle(Duration::from_secs(5)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(busy);
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(300), "released when the last message commits");

        let _stuck = activity.begin();
        let started = tokio::time::Instant::now();
        activity.wait_idle(Duration::from_millis(250)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(250),
            "a sustained stream delays workers, never starves them"
        );
    }
}
