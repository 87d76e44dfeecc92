//! The persister: turns the buffer into Parquet files (one per table and UTC day,
//! sorted by series key and time, deduplicated), records them in the catalog, and
//! then drops the WAL segments they cover.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::buffer::{normalize_buffered, with_seq_column, TableBuffer, WriteBuffer};
use crate::catalog::{Catalog, ParquetFileMeta, Tier};
use crate::compactor::Compactor;
use crate::dedupe::{series_key_range, sort_dedupe};
use crate::error::{Error, Result};
use crate::flush::{split_by_day, time_range, write_parquet};
use crate::metrics::StorageMetrics;
use crate::parquet_store::{ParquetStore, UncommittedFiles};
use crate::problems::Problems;
use crate::reaper::PARQUET_DIR;
use crate::tables::TableSchemas;
use crate::wal;
use crate::wal_writer::{RotateResult, WalWriter};

/// The path (relative to the data directory) of the Parquet file with this id.
pub(crate) fn parquet_file_path(id: u64) -> String {
    format!("{PARQUET_DIR}/{id:020}.parquet")
}

/// How long after a failed flush it is tried again when nothing new is written.
const FAILED_FLUSH_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// When to flush.
#[derive(Debug, Clone)]
pub(crate) struct FlushLimits {
    pub(crate) max_rows: usize,
    pub(crate) max_bytes: usize,
    pub(crate) interval: std::time::Duration,
}

pub(crate) struct Persister {
    pub(crate) limits: FlushLimits,
    pub(crate) wal_dir: PathBuf,
    pub(crate) store: ParquetStore,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) schemas: Arc<TableSchemas>,
    pub(crate) buffer: Arc<Mutex<WriteBuffer>>,
    pub(crate) wal: Arc<WalWriter>,
    pub(crate) compactor: Arc<Compactor>,
    pub(crate) metrics: StorageMetrics,
    pub(crate) problems: Problems,
    /// One flush at a time.
    pub(crate) lock: tokio::sync::Mutex<()>,
    pub(crate) last_flush: Mutex<Instant>,
    /// Woken when a write takes the buffer over its limits, so the flusher does
    /// not wait for its next tick.
    pub(crate) wanted: tokio::sync::Notify,
    /// The highest WAL sequence number whose data is in Parquet and the catalog.
    pub(crate) persisted: tokio::sync::watch::Sender<u64>,
}

impl Persister {
    /// Called after each write: wakes the flusher when the buffer is over its limits.
    pub(crate) fn note_buffer(&self, rows: usize, bytes: usize) {
        self.metrics.buffer_rows.set(rows as i64);
        self.metrics.buffer_bytes.set(bytes as i64);
        if rows >= self.limits.max_rows || bytes >= self.limits.max_bytes {
            self.wanted.notify_one();
        }
    }

    /// True when the buffer is over its size limits or old enough to flush.
    pub(crate) fn should_flush(&self) -> bool {
        let b = self.buffer.lock();
        if b.active_rows == 0 {
            // A table whose flush failed keeps its rows (and the WAL) until a
            // flush succeeds: retry it now and then even without new writes.
            return !b.flushing.is_empty()
                && self.last_flush.lock().elapsed() >= FAILED_FLUSH_RETRY;
        }
        b.active_rows >= self.limits.max_rows
            || b.active_bytes >= self.limits.max_bytes
            || self.last_flush.lock().elapsed() >= self.limits.interval
    }

    /// True when the buffer holds twice its flush limits.
    pub(crate) fn over_capacity(&self) -> bool {
        let b = self.buffer.lock();
        b.active_rows >= self.limits.max_rows.saturating_mul(2)
            || b.active_bytes >= self.limits.max_bytes.saturating_mul(2)
    }

    /// Persists the buffer; returns the number of rows written.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<usize> {
        let _guard = self.lock.lock().await;
        let rot = self.wal.rotate().await?;
        *self.last_flush.lock() = Instant::now();
        let this = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || this.persist(rot))
            .await
            .map_err(|e| Error::io("flush task", std::io::Error::other(e.to_string())))?;
        if let Err(e) = &result {
            // The data stays in the buffer's flushing set and in the WAL; the next
            // flush will try again.
            warn!(error = %e, "flush failed");
        }
        result
    }

    /// Writes each table's part of the rotated buffer to Parquet and records the
    /// files. Tables are independent: one whose flush fails keeps its data in the
    /// buffer and the WAL (and is named on /health) while the others are persisted.
    fn persist(&self, rot: RotateResult) -> Result<usize> {
        let started = Instant::now();
        let mut new_files =
            UncommittedFiles::new(&self.store, Vec::new(), "the file of a failed flush");
        let mut rows = 0usize;
        let mut done: Vec<String> = Vec::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        let mut tables: Vec<_> = rot.snapshot.into_iter().collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        for (table, tb) in &tables {
            let first = new_files.files.len();
            match self.persist_table(table, tb, rot.last_seq, &mut new_files.files) {
                Ok(n) => {
                    rows += n;
                    done.push(table.clone());
                }
                Err(e) => {
                    warn!(table, error = %e, "flushing table failed; its data stays in the buffer and the WAL");
                    let written = new_files.files.split_off(first);
                    self.store.discard(
                        written.iter().map(|f| f.path.as_str()),
                        "the file of a failed flush",
                    );
                    failures.push((table.clone(), e.to_string()));
                }
            }
        }
        fail::fail_point!("flush-before-commit");
        let committed = self.catalog.commit(|next| {
            next.files.extend(new_files.files.iter().cloned());
            for t in &done {
                next.table_flushed_seq.insert(t.clone(), rot.last_seq);
            }
            if failures.is_empty() {
                next.flushed_seq = next.flushed_seq.max(rot.last_seq);
                let all = next.flushed_seq;
                next.table_flushed_seq.retain(|_, s| *s > all);
            }
            next.tables = self.schemas.snapshot();
            Ok(next.flushed_seq)
        });
        let file_count = new_files.files.len();
        let flushed_seq = match committed {
            Ok(seq) => {
                let _ = new_files.keep();
                seq
            }
            Err(e) => {
                // Nothing names the files unless the save got as far as replacing
                // the catalog: then they stay (the next start sorts it out);
                // otherwise dropping `new_files` removes them.
                if e.maybe_saved {
                    let _ = new_files.keep();
                }
                return Err(e.into());
            }
        };
        self.persisted.send_replace(flushed_seq);
        self.buffer.lock().finish_flush(&done);
        self.compactor.update_gauges();
        for t in &done {
            self.problems.clear(&format!("flush:{t}"));
        }
        for (t, e) in &failures {
            self.problems.set(format!("flush:{t}"), e.clone());
        }
        if failures.is_empty() {
            for (first, path) in wal::list_segments(&self.wal_dir)? {
                if first < rot.new_segment_first_seq {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(segment = %path.display(), error = %e, "could not remove flushed WAL segment");
                    }
                }
            }
        }
        self.metrics.flushes.inc();
        self.metrics.flushed_rows.inc_by(rows as u64);
        info!(
            rows,
            files = file_count,
            failed_tables = failures.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed buffer to Parquet"
        );
        match failures.into_iter().next() {
            None => Ok(rows),
            Some((table, message)) => Err(Error::FlushFailed { table, message }),
        }
    }

    fn persist_table(
        &self,
        table: &str,
        tb: &TableBuffer,
        last_seq: u64,
        written: &mut Vec<ParquetFileMeta>,
    ) -> Result<usize> {
        let raw: Vec<RecordBatch> = tb.batches.iter().map(|b| b.batch.clone()).collect();
        let (schema, tags) = self.schemas.schema_and_sort_key(table, &raw)?;
        let seq_schema = with_seq_column(&schema);
        let batches = normalize_buffered(&tb.batches, &schema, &seq_schema)
            .map_err(|e| Error::arrow(format!("normalizing buffer of table {table}"), e))?;
        let merged = sort_dedupe(&seq_schema, &batches, &tags)
            .map_err(|e| Error::arrow(format!("sorting buffer of table {table}"), e))?;
        let mut rows = 0;
        for (day, part) in split_by_day(&merged)? {
            let meta = self.write_file(table, day, &part, &tags, last_seq)?;
            rows += part.num_rows();
            written.push(meta);
        }
        Ok(rows)
    }

    fn write_file(
        &self,
        table: &str,
        day: i64,
        batch: &RecordBatch,
        tags: &[String],
        seq: u64,
    ) -> Result<ParquetFileMeta> {
        let id = self.catalog.allocate_file_id();
        let rel = parquet_file_path(id);
        let size = write_parquet(&self.store, &rel, batch, tags)?;
        let (min_time, max_time) = time_range(batch)?;
        self.metrics.parquet_files_written.inc();
        self.metrics.parquet_bytes_written.inc_by(size);
        Ok(ParquetFileMeta {
            id,
            table: table.to_string(),
            path: rel,
            min_time,
            max_time,
            rows: batch.num_rows() as u64,
            size_bytes: size,
            seq,
            day,
            sort_key: tags.to_vec(),
            key_range: series_key_range(batch, tags),
            level: 0,
            tier: Tier::Hot,
        })
    }
}
