//! Deleting Parquet files nothing needs any more: files compaction replaced (after a
//! grace time, so queries planned before the swap can finish reading them), and
//! files a crash left that the catalog does not name.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::catalog::Catalog;
use crate::error::Result;
use crate::parquet_store::ParquetStore;

/// Where the engine keeps its Parquet files, relative to the data directory.
pub(crate) const PARQUET_DIR: &str = "parquet";

#[derive(Debug)]
pub(crate) struct Reaper {
    store: ParquetStore,
    grace: Duration,
    /// Files to delete, and from when.
    pending: Mutex<Vec<(Instant, String)>>,
}

impl Reaper {
    pub(crate) fn new(store: ParquetStore, grace: Duration) -> Self {
        Self {
            store,
            grace,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Deletes `paths` once the grace time is over.
    pub(crate) fn delete_later(&self, paths: impl IntoIterator<Item = String>) {
        let when = Instant::now() + self.grace;
        self.pending
            .lock()
            .extend(paths.into_iter().map(|p| (when, p)));
    }

    /// Deletes the files whose grace time is over (or all of them, at shutdown).
    /// Blocking: call from a blocking thread.
    pub(crate) fn delete_expired(&self, all: bool) {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut pending = self.pending.lock();
            let (due, keep) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(when, _)| all || *when <= now);
            *pending = keep;
            due.into_iter().map(|(_, p)| p).collect()
        };
        for path in due {
            if let Err(e) = self.store.delete(&path) {
                warn!(file = path, error = %e, "could not delete a compacted file; trying again later");
                if !all {
                    self.pending.lock().push((now + self.grace, path));
                }
            }
        }
    }

    /// Removes Parquet files the catalog does not name, and interrupted writes:
    /// what a crash between writing a file and committing it leaves.
    pub(crate) async fn remove_orphans(&self, catalog: &Catalog) -> Result<usize> {
        let known: HashSet<String> =
            catalog.read(|c| c.files.iter().map(|f| f.path.clone()).collect());
        let mut removed = self.store.remove_staging_files(PARQUET_DIR)?;
        for (path, _) in self.store.list(PARQUET_DIR).await? {
            // Only the engine's own files: what an operator put in a subdirectory,
            // or under another name, is left alone.
            let own = path
                .strip_prefix(PARQUET_DIR)
                .and_then(|p| p.strip_prefix('/'))
                .is_some_and(|name| !name.contains('/') && name.ends_with(".parquet"));
            if !own || known.contains(&path) {
                continue;
            }
            warn!(file = path, "removing a file the catalog does not name");
            match self.store.remove(&path).await {
                Ok(()) => removed += 1,
                // Not fatal: an orphan is only wasted space.
                Err(e) => warn!(file = path, error = %e, "could not remove an orphan file"),
            }
        }
        Ok(removed)
    }
}
