//! Deleting Parquet files nothing needs any more: files compaction replaced (after a
//! grace time, so queries planned before the swap can finish reading them), and
//! files a crash left that the catalog does not name.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::catalog::{Catalog, Tier};
use crate::error::Result;
use crate::parquet_store::ParquetStore;

/// Where the engine keeps its Parquet files, relative to the data directory.
pub(crate) const PARQUET_DIR: &str = "parquet";
/// The embedded cold tier's directory, relative to the data directory.
pub(crate) const COLD_DIR: &str = "cold";

#[derive(Debug)]
pub(crate) struct Reaper {
    hot: ParquetStore,
    cold: ParquetStore,
    grace: Duration,
    /// Files to delete, and from when.
    pending: Mutex<Vec<(Instant, Tier, String)>>,
    /// A move's catalog save failed after the new catalog may have replaced the
    /// old one: the catalog on disk may name a cold object the one in memory does
    /// not, so the cold tier is not swept until the next start.
    pub(crate) cold_uncertain: std::sync::atomic::AtomicBool,
}

impl Reaper {
    pub(crate) fn new(hot: ParquetStore, cold: ParquetStore, grace: Duration) -> Self {
        Self {
            hot,
            cold,
            grace,
            pending: Mutex::new(Vec::new()),
            cold_uncertain: Default::default(),
        }
    }

    fn store(&self, tier: Tier) -> &ParquetStore {
        match tier {
            Tier::Hot | Tier::Restored => &self.hot,
            Tier::Cold => &self.cold,
        }
    }

    /// Deletes `paths` (in `tier`'s store) once the grace time is over.
    pub(crate) fn delete_later(&self, tier: Tier, paths: impl IntoIterator<Item = String>) {
        let when = Instant::now() + self.grace;
        self.pending
            .lock()
            .extend(paths.into_iter().map(|p| (when, tier, p)));
    }

    /// Whether `path` of `tier` waits for deletion.
    pub(crate) fn is_pending(&self, tier: Tier, path: &str) -> bool {
        self.pending
            .lock()
            .iter()
            .any(|(_, t, p)| *t == tier && p == path)
    }

    /// Deletes the files whose grace time is over (or all of them, at shutdown).
    /// Blocking: call from a blocking thread.
    pub(crate) fn delete_expired(&self, all: bool) {
        let now = Instant::now();
        let due: Vec<(Instant, Tier, String)> = {
            let mut pending = self.pending.lock();
            let (due, keep) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(when, _, _)| all || *when <= now);
            *pending = keep;
            due
        };
        for (_, tier, path) in due {
            if let Err(e) = self.store(tier).delete(&path) {
                warn!(file = path, tier = tier.as_str(), error = %e, "could not delete a replaced file; trying again later");
                if !all {
                    self.pending.lock().push((now + self.grace, tier, path));
                }
            }
        }
    }

    /// Removes the hot tier's Parquet files the catalog does not name, and
    /// interrupted writes: what a crash between writing a file and committing it
    /// leaves, and the local copy of a file whose move to the cold tier committed.
    pub(crate) async fn remove_orphans(&self, catalog: &Catalog) -> Result<usize> {
        let removed = self.hot.remove_staging_files(PARQUET_DIR)?;
        Ok(removed + self.remove_orphans_of(Tier::Hot, catalog).await?)
    }

    /// Removes the Parquet files of `tier`'s store that the catalog does not name
    /// in that tier (and that are not waiting for deletion anyway). Nothing may
    /// write to the tier meanwhile: a file being moved there is not named yet.
    pub(crate) async fn remove_orphans_of(&self, tier: Tier, catalog: &Catalog) -> Result<usize> {
        if tier == Tier::Cold
            && self
                .cold_uncertain
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(0);
        }
        let known: HashSet<String> = catalog.read(|c| {
            c.files
                .iter()
                .filter(|f| f.tier == tier)
                .map(|f| f.path.clone())
                .collect()
        });
        let store = self.store(tier);
        let mut removed = 0;
        for (path, _) in store.list(PARQUET_DIR).await? {
            // Only the engine's own files: what an operator put in a subdirectory,
            // or under another name, is left alone.
            let own = path
                .strip_prefix(PARQUET_DIR)
                .and_then(|p| p.strip_prefix('/'))
                .is_some_and(|name| !name.contains('/') && name.ends_with(".parquet"));
            if !own || known.contains(&path) || self.is_pending(tier, &path) {
                continue;
            }
            warn!(
                file = path,
                tier = tier.as_str(),
                "removing a file the catalog does not name"
            );
            match store.remove(&path).await {
                Ok(()) => removed += 1,
                // Not fatal: an orphan is only wasted space.
                Err(e) => warn!(file = path, error = %e, "could not remove an orphan file"),
            }
        }
        Ok(removed)
    }
}
