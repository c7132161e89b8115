//! Group fsync for SQLite commits: a commit is made durable after the write lock is released, and one fsync of the
//! write-ahead log covers every commit that finished before it started.
//!
//! With `synchronous = FULL` SQLite fsyncs the WAL inside every commit, while it still holds the database's only
//! write lock, so each commit's fsync (milliseconds) is time in which no other transaction can write. Here SQLite
//! runs with `synchronous = NORMAL` (it writes the commit's WAL frames but does not sync them) and
//! [`WalSync::commit_done`] syncs the WAL file before the committing caller goes on: the caller still learns of its
//! commit only once it is on disk, exactly as with FULL, but the next transaction writes while this one's fsync
//! runs, and commits that finish during an fsync share the next one. Checkpoints are unchanged (SQLite syncs the WAL
//! before copying it into the database file, and the database file after).
//!
//! What differs from FULL: another connection can read a commit up to one fsync before it is durable, and a power
//! loss in that window loses it; it was never acknowledged. WAL frames carry cumulative checksums, so recovery keeps
//! a prefix of commits: a later commit never survives without an earlier one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;

use crate::{Result, StoreError};

#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Commits whose WAL frames are written (counted after the commit returned).
    committed: AtomicU64,
    /// Commits known to be on disk; the lock is held while an fsync runs, so waiters queue behind it.
    synced: Mutex<u64>,
    /// The WAL file's directory entry is synced once, after the file exists.
    directory_synced: AtomicBool,
    /// fsyncs done, for the commits-per-fsync figure operators watch.
    syncs: AtomicU64,
}

impl WalSync {
    /// Syncs the WAL of the database file at `database`.
    pub(crate) fn new(database: &std::path::Path) -> WalSync {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            committed: AtomicU64::new(0),
            synced: Mutex::new(0),
            directory_synced: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        }
    }

    /// Counts a commit that just returned; its WAL frames are in the file. The ticket says which sync covers it.
    pub(crate) fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once the commit with `ticket` is on disk: at once if an fsync since covered it, else after the next.
    pub(crate) async fn durable(&self, ticket: u64) -> Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            return Ok(());
        }
        // Everything committed by now is in the file and is covered by this fsync.
        let covered = self.committed.load(Ordering::SeqCst);
        let wal = self.wal.clone();
        let directory = !self.directory_synced.load(Ordering::Relaxed);
        let existed = tokio::task::spawn_blocking(move || sync_wal(&wal, directory))
            .await
            .map_err(|e| StoreError::Unavailable(format!("WAL sync task failed: {e}")))?
            .map_err(|e| StoreError::Unavailable(format!("cannot sync the write-ahead log: {e}")))?;
        if existed {
            self.directory_synced.store(true, Ordering::Relaxed);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *synced = covered;
        Ok(())
    }

    pub(crate) fn stats(&self) -> crate::CommitSyncStats {
        crate::CommitSyncStats {
            commits: self.committed.load(Ordering::SeqCst),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

/// Opening the file afresh each time is cheap next to the fsync, and stays right if SQLite ever recreates the WAL
/// (it deletes it when the last connection closes).
/// Returns whether there was a WAL file to sync.
fn sync_wal(wal: &std::path::Path, directory: bool) -> std::io::Result<bool> {
    match std::fs::File::open(wal) {
        Ok(file) => file.sync_data()?,
        // No WAL yet: nothing has been committed through it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if directory && let Some(parent) = wal.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(true)
}
