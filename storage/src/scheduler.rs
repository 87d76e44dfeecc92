//! The engine's background jobs: flushing when the buffer is full or old enough,
//! compacting on a timer (in its own task, so a long merge never holds up a flush),
//! and deleting files compaction replaced once their grace time is over. A job that
//! fails is named in [`Storage::problems`] until it succeeds again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

use crate::Storage;

/// How often the flusher checks the buffer's age (it is woken at once when a
/// write takes the buffer over its size limits).
const FLUSH_CHECK: Duration = Duration::from_millis(500);

/// The running jobs; [`BackgroundJobs::stop`] ends them.
#[must_use = "the jobs stop when this is dropped"]
pub struct BackgroundJobs {
    stop: watch::Sender<bool>,
    flusher: JoinHandle<()>,
    compactor: JoinHandle<()>,
    storage: Arc<Storage>,
}

impl Storage {
    /// Starts the background jobs; compaction runs every `compaction_interval`.
    #[must_use = "the jobs stop when the returned value is dropped"]
    pub fn start_jobs(self: &Arc<Self>, compaction_interval: Duration) -> BackgroundJobs {
        let (stop, _) = watch::channel(false);
        let flusher = tokio::spawn(flush_loop(Arc::clone(self), stop.subscribe()));
        let compactor = tokio::spawn(compaction_loop(
            Arc::clone(self),
            compaction_interval.max(Duration::from_millis(10)),
            stop.subscribe(),
        ));
        BackgroundJobs {
            stop,
            flusher,
            compactor,
            storage: Arc::clone(self),
        }
    }
}

impl BackgroundJobs {
    /// Ends the jobs. A running flush finishes; a running compaction gives up
    /// between batches (its output is dropped; the next start compacts again).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.storage.stop_compaction();
        let _ = self.flusher.await;
        let _ = self.compactor.await;
    }
}

async fn flush_loop(storage: Arc<Storage>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(FLUSH_CHECK);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
            _ = storage.flush_wanted() => {}
        }
        if !storage.should_flush() {
            continue;
        }
        // In a task of its own, so that a panic is a failed flush to report and
        // retry, not the silent end of flushing (and a buffer that only fills).
        let flushing = Arc::clone(&storage);
        match tokio::spawn(async move { flushing.flush().await }).await {
            Ok(Ok(_)) => storage.problems.clear("flush"),
            Ok(Err(e)) => {
                error!(error = %e, "flush failed");
                storage.problems.set(
                    "flush",
                    format!("flush failed (data stays in the WAL and is retried): {e}"),
                );
            }
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                error!(error = %e, "flush panicked");
                storage.problems.set(
                    "flush",
                    format!("flush panicked (data stays in the WAL and is retried): {e}"),
                );
            }
        }
    }
}

async fn compaction_loop(
    storage: Arc<Storage>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let compacting = Arc::clone(&storage);
        match tokio::spawn(async move { compacting.compact().await }).await {
            Ok(Ok(_)) => storage.problems.clear("compaction"),
            Ok(Err(e)) => {
                error!(error = %e, "compaction failed");
                storage
                    .problems
                    .set("compaction", format!("compaction failed: {e}"));
            }
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                error!(error = %e, "compaction panicked");
                storage
                    .problems
                    .set("compaction", format!("compaction panicked: {e}"));
            }
        }
        storage.delete_replaced_files(false).await;
    }
}
