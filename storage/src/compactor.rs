//! The compactor: merges a day's freshly flushed (level-0) files with the
//! compacted files of the windows they touch into level-1 files that do not overlap
//! (the merge itself is in [`crate::compact`]), commits the swap to the catalog and
//! hands the replaced files to the reaper.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::catalog::{Catalog, ParquetFileMeta, Tier};
use crate::compact::{merge_files, plan_compactions, CompactionPlan, MergeError, MergeSpec};
use crate::error::{Error, Result};
use crate::flush::NANOS_PER_DAY;
use crate::metrics::StorageMetrics;
use crate::parquet_store::{ParquetStore, UncommittedFiles};
use crate::persister::parquet_file_path;
use crate::reaper::Reaper;
use crate::tables::TableSchemas;

pub(crate) struct Compactor {
    pub(crate) store: ParquetStore,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) schemas: Arc<TableSchemas>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) metrics: StorageMetrics,
    /// Compact a day once it has this many level-0 files (sooner if they overlap).
    pub(crate) min_files: usize,
    /// Each level-1 file holds one window of this many nanoseconds.
    pub(crate) window_nanos: i64,
    /// One compaction at a time; flushes and queries do not wait for it.
    pub(crate) lock: tokio::sync::Mutex<()>,
    /// Set at shutdown: a running compaction gives up between batches.
    pub(crate) cancel: AtomicBool,
}

/// The compaction window, kept between a minute and a day (the server's
/// configuration allows only windows that divide a day).
pub(crate) fn window_nanos(window: std::time::Duration) -> i64 {
    let nanos = window.as_nanos().min(NANOS_PER_DAY as u128) as i64;
    nanos.max(60_000_000_000)
}

fn hot_files(files: Vec<ParquetFileMeta>) -> Vec<ParquetFileMeta> {
    files.into_iter().filter(|f| f.tier == Tier::Hot).collect()
}

impl Compactor {
    /// Sets the file and compaction-debt gauges from the catalog.
    pub(crate) fn update_gauges(&self) {
        let all = self.catalog.files();
        self.metrics.parquet_files.set(all.len() as i64);
        self.metrics
            .parquet_bytes
            .set(all.iter().map(|f| f.size_bytes as i64).sum());
        for tier in [Tier::Hot, Tier::Cold, Tier::Restored] {
            let label = vec![("tier".to_string(), tier.as_str().to_string())];
            let of_tier = all.iter().filter(|f| f.tier == tier);
            let (n, bytes, rows) = of_tier.fold((0i64, 0i64, 0i64), |(n, b, r), f| {
                (n + 1, b + f.size_bytes as i64, r + f.rows as i64)
            });
            self.metrics.tier_files.get_or_create(&label).set(n);
            self.metrics.tier_bytes.get_or_create(&label).set(bytes);
            self.metrics.tier_rows.get_or_create(&label).set(rows);
        }
        // Compaction merges hot files only: a late write into a day already in
        // the cold tier stays a file of its own until it is moved too.
        let files = hot_files(all);
        let plans = plan_compactions(&files, self.min_files, self.window_nanos);
        self.metrics
            .compaction_debt_bytes
            .set(plans.iter().map(|p| p.level0_bytes as i64).sum());
        self.metrics.compaction_debt_days.set(plans.len() as i64);
        self.metrics
            .level0_files
            .set(files.iter().filter(|f| f.level == 0).count() as i64);
    }

    /// Merges each table's day of overlapping or many freshly flushed files into
    /// files that do not overlap (see [`crate::compact`]); returns how many days
    /// were merged. Flushes, writes and queries go on meanwhile.
    pub(crate) async fn compact(self: &Arc<Self>) -> Result<usize> {
        let _guard = self.lock.lock().await;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.compact_blocking())
            .await
            .map_err(|e| Error::io("compaction task", std::io::Error::other(e.to_string())))?
    }

    /// Runs every merge due, one after the other.
    fn compact_blocking(&self) -> Result<usize> {
        let all = self.catalog.files();
        let cold: Vec<ParquetFileMeta> = all
            .iter()
            .filter(|f| f.tier != Tier::Hot)
            .cloned()
            .collect();
        let files = hot_files(all);
        let mut plans = plan_compactions(&files, self.min_files, self.window_nanos);
        // A merge's output takes the highest sequence of its inputs: merged
        // without a cold file it overlaps, older rows could come to win over that
        // file's newer ones. Such windows wait until their hot files move too.
        plans.retain(|p| {
            let (lo, hi) = p.inputs.iter().fold((i64::MAX, i64::MIN), |(lo, hi), f| {
                (lo.min(f.min_time), hi.max(f.max_time))
            });
            !cold
                .iter()
                .any(|c| c.table == p.table && c.overlaps(lo, hi))
        });
        let mut merged = 0;
        let mut first_error = None;
        for plan in plans {
            if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            // One day that cannot be compacted (a damaged file, a full disk) must
            // not hold up the others.
            match self.compact_plan(&plan) {
                Ok(true) => merged += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(table = plan.table, day = plan.day, error = %e, "compaction failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.update_gauges();
        self.reaper.delete_expired(false);
        match first_error {
            None => Ok(merged),
            Some(e) => Err(e),
        }
    }

    /// Runs one merge and commits it; false if it was cancelled or its inputs
    /// changed meanwhile.
    fn compact_plan(&self, plan: &CompactionPlan) -> Result<bool> {
        let started = Instant::now();
        let table = &plan.table;
        let in_bytes: u64 = plan.inputs.iter().map(|f| f.size_bytes).sum();
        let in_rows: u64 = plan.inputs.iter().map(|f| f.rows).sum();
        info!(
            table,
            day = plan.day,
            files = plan.inputs.len(),
            bytes = in_bytes,
            rows = in_rows,
            "compacting"
        );
        // The whole key (fixed now if it is not yet): a table from before sort keys
        // were recorded has tags in its files but none in its key, and merging by
        // time alone would take different series at one time for duplicates.
        if !self.schemas.contains(table) {
            return Ok(false);
        }
        let (schema, sort_key) = self.schemas.schema_and_sort_key(table, &[])?;
        let mut force_float = std::collections::HashSet::new();
        let outputs = loop {
            let spec = MergeSpec {
                store: &self.store,
                table,
                day: plan.day,
                schema: &schema,
                sort_key: &sort_key,
                window_nanos: self.window_nanos,
                force_float: &force_float,
                cancel: &self.cancel,
            };
            let mut new_file = || {
                let id = self.catalog.allocate_file_id();
                (id, parquet_file_path(id))
            };
            match merge_files(&spec, &plan.inputs, &mut new_file) {
                Ok(outputs) => break outputs,
                Err(MergeError::Rescale(column)) => {
                    warn!(
                        table,
                        column,
                        "a decimal column cannot be rescaled exactly; compacting it as floats"
                    );
                    force_float.insert(column);
                }
                Err(MergeError::Cancelled) => {
                    info!(table, day = plan.day, "compaction cancelled");
                    return Ok(false);
                }
                Err(MergeError::Failed(e)) => return Err(e),
            }
        };
        // Removed unless the catalog comes to name them: on an error, a dropped
        // commit or a panic.
        let outputs =
            UncommittedFiles::new(&self.store, outputs, "the output of a dropped compaction");
        fail::fail_point!("compaction-before-commit");
        let ids: std::collections::HashSet<u64> = plan.inputs.iter().map(|f| f.id).collect();
        let committed = self.catalog.commit_if(|next| {
            let still_hot = |f: &&ParquetFileMeta| ids.contains(&f.id) && f.tier == Tier::Hot;
            if next.files.iter().filter(still_hot).count() != ids.len() {
                // Something else (retention, tiering) took an input meanwhile.
                return Ok(None);
            }
            next.files.retain(|f| !ids.contains(&f.id));
            next.files.extend(outputs.files.iter().cloned());
            // The sort key may have been fixed by this compaction.
            next.tables = self.schemas.snapshot();
            Ok(Some(()))
        });
        let outputs = match committed {
            Ok(Some(())) => outputs.keep(),
            Ok(None) => {
                drop(outputs);
                warn!(
                    table,
                    day = plan.day,
                    "inputs of the compaction changed; its output is dropped"
                );
                return Ok(false);
            }
            Err(e) => {
                // Saved but not synced: the catalog the next start loads may name
                // the outputs, so they stay (if it does not, they are orphans then).
                if e.maybe_saved {
                    let _ = outputs.keep();
                }
                return Err(e.into());
            }
        };
        fail::fail_point!("compaction-after-commit");
        self.reaper
            .delete_later(Tier::Hot, plan.inputs.iter().map(|f| f.path.clone()));
        let out_bytes: u64 = outputs.iter().map(|f| f.size_bytes).sum();
        let out_rows: u64 = outputs.iter().map(|f| f.rows).sum();
        self.metrics.compactions.inc();
        self.metrics.compaction_input_bytes.inc_by(in_bytes);
        self.metrics.compaction_output_bytes.inc_by(out_bytes);
        self.metrics.compaction_output_rows.inc_by(out_rows);
        self.metrics
            .parquet_files_written
            .inc_by(outputs.len() as u64);
        self.metrics.parquet_bytes_written.inc_by(out_bytes);
        let secs = started.elapsed().as_secs_f64();
        info!(
            table,
            day = plan.day,
            input_files = plan.inputs.len(),
            output_files = outputs.len(),
            rows = out_rows,
            duplicates_removed = in_rows.saturating_sub(out_rows),
            bytes = out_bytes,
            elapsed_ms = (secs * 1000.0) as u64,
            rows_per_sec = (out_rows as f64 / secs.max(1e-9)) as u64,
            "compacted"
        );
        self.update_gauges();
        Ok(true)
    }

    /// Makes a running compaction give up (between batches) and keeps new ones
    /// from starting: the server is stopping.
    pub(crate) fn stop(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
