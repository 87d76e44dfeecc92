//! The storage engine: validation, the WAL sequencer thread, flush, compaction, replay.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::buffer::{
    normalize, with_seq_column, BatchBuilder, BufferedBatch, TableBuffer, WriteBuffer,
};
use crate::catalog::{CatalogState, ParquetFileMeta};
use crate::compact::{merge_files, plan_compactions, CompactionPlan, MergeError, MergeSpec};
use crate::dedupe::{series_key_range, sort_dedupe, sort_key_order};
use crate::error::{Error, Result};
use crate::flush::{split_by_day, time_range, write_parquet, NANOS_PER_DAY};
use crate::metrics::StorageMetrics;
use crate::schema::{ColumnKind, FieldType, TableSchema, TIME_COLUMN};
use crate::wal::{self, WalSegment};
use vigil_model::LineError;
use vigil_model::Point;

/// Settings of the storage engine (the server fills them from its config).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Flush when the buffer holds this many rows...
    pub flush_max_rows: usize,
    /// ...or this many bytes...
    pub flush_max_bytes: usize,
    /// ...or its oldest data is this old.
    pub flush_interval: Duration,
    /// Compact a table's day once it has this many freshly flushed files (or
    /// sooner, when they overlap).
    pub compaction_min_files: usize,
    /// Compacted files each hold one window of this length.
    pub compaction_window: Duration,
    /// Files removed by compaction are deleted after this grace time, so running
    /// queries can finish reading them.
    pub deletion_grace: Duration,
    /// Most tables the database may hold; a line that would create one more is
    /// rejected (a typo'd or generated measurement name must not create tables
    /// without end).
    pub max_tables: usize,
    /// Most columns (tags + fields, not counting time) one table may have.
    pub max_columns_per_table: usize,
    /// Largest write, encoded for the WAL; a bigger one is refused before it is
    /// acknowledged (capped at the log's own maximum, 1 GiB).
    pub max_wal_record_bytes: usize,
    /// What replay does with a damaged WAL record that is not a torn tail.
    pub wal_recovery: wal::WalRecovery,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            flush_max_rows: 1_000_000,
            flush_max_bytes: 256 << 20,
            flush_interval: Duration::from_secs(300),
            compaction_min_files: 4,
            compaction_window: Duration::from_secs(3600),
            deletion_grace: Duration::from_secs(120),
            max_tables: 10_000,
            max_columns_per_table: 1_000,
            max_wal_record_bytes: wal::MAX_RECORD_BYTES,
            wal_recovery: wal::WalRecovery::Refuse,
        }
    }
}

/// Points checked against the schemas and turned into Arrow batches, ready to commit.
#[derive(Debug, Default)]
pub struct ValidatedWrite {
    /// One or more batches per table (a sparse write is split), in line order.
    pub tables: Vec<(String, RecordBatch)>,
    pub accepted: usize,
    /// The first rejected lines (up to the `max_errors` asked for), by line.
    pub rejected: Vec<LineError>,
    /// How many lines were rejected in all.
    pub rejected_count: usize,
}

impl ValidatedWrite {
    fn reject(&mut self, max_errors: usize, line: usize, reason: impl FnOnce() -> String) {
        self.rejected_count += 1;
        if self.rejected.len() < max_errors {
            self.rejected.push(LineError {
                line,
                reason: reason(),
            });
        }
    }
}

/// What a query sees of one table: buffered batches and Parquet files, consistent with
/// each other (a row may be in both; the sequence numbers tell which one wins).
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub schema: SchemaRef,
    pub tags: Vec<String>,
    /// Every tag in the order files are sorted by (see [`TableSchema::full_sort_key`]).
    pub sort_key: Vec<String>,
    pub buffer: Vec<BufferedBatch>,
    pub files: Vec<(ParquetFileMeta, PathBuf)>,
}

enum WalCommand {
    Write {
        payload: Vec<u8>,
        tables: Vec<(String, RecordBatch)>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Start a new segment and hand the buffer over for flushing.
    Rotate {
        reply: oneshot::Sender<Result<RotateResult>>,
    },
}

struct RotateResult {
    last_seq: u64,
    new_segment_first_seq: u64,
    snapshot: HashMap<String, TableBuffer>,
}

/// The storage engine. Cheap to share behind an `Arc`.
pub struct Storage {
    config: StorageConfig,
    schemas: RwLock<HashMap<String, TableSchema>>,
    catalog: Mutex<CatalogState>,
    buffer: Arc<Mutex<WriteBuffer>>,
    wal_tx: Mutex<Option<mpsc::Sender<WalCommand>>>,
    wal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    flush_lock: tokio::sync::Mutex<()>,
    /// One compaction at a time; flushes and queries do not wait for it.
    compaction_lock: tokio::sync::Mutex<()>,
    /// Set at shutdown: a running compaction gives up between batches.
    compaction_cancel: std::sync::atomic::AtomicBool,
    last_flush: Mutex<Instant>,
    pending_deletes: Mutex<Vec<(Instant, PathBuf)>>,
    /// Woken when a write takes the buffer over its limits, so the flusher does not
    /// wait for its next tick.
    flush_wanted: tokio::sync::Notify,
    /// The highest WAL sequence number whose data is in Parquet and the catalog:
    /// consumers of replayable sources (Kafka) commit their offsets up to it.
    persisted: tokio::sync::watch::Sender<u64>,
    /// What is wrong right now (a failed WAL, tables whose flush fails), for health
    /// checks: part -> reason.
    problems: Arc<Mutex<BTreeMap<String, String>>>,
    metrics: StorageMetrics,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

/// Infers a column kind from an Arrow type written by [`BatchBuilder`].
fn kind_of(name: &str, dt: &DataType) -> Option<ColumnKind> {
    Some(match dt {
        _ if name == TIME_COLUMN => ColumnKind::Time,
        DataType::Dictionary(..) => ColumnKind::Tag,
        DataType::Float64 => ColumnKind::Field(FieldType::Float),
        DataType::Int64 => ColumnKind::Field(FieldType::Integer),
        DataType::UInt64 => ColumnKind::Field(FieldType::UInteger),
        DataType::Boolean => ColumnKind::Field(FieldType::Boolean),
        DataType::Utf8 => ColumnKind::Field(FieldType::String),
        _ => return None,
    })
}

enum Check {
    Ok(Vec<ColumnKind>),
    NeedsNewColumns,
    Rejected(String),
}

fn reserved(key: &str, what: &str) -> String {
    if key == TIME_COLUMN {
        format!("{what} key '{key}' is reserved: every table has a '{TIME_COLUMN}' column")
    } else {
        format!(
            "{what} key '{key}' is reserved: names starting with '__' are vigil's internal columns"
        )
    }
}

/// Checks one point against a table schema. With `schema` = None the table is new.
/// Keys given twice in one point (two tags, two fields, or a tag and a field of one
/// name) are rejected by the parsers, which every input goes through; should one
/// reach here, the batch builder keeps the first value.
fn check_point(schema: Option<&TableSchema>, p: &Point<'_>) -> Check {
    let mut new_cols = false;
    for (k, _) in &p.tags {
        if k == TIME_COLUMN || k.starts_with("__") {
            return Check::Rejected(reserved(k, "tag"));
        }
        match schema.and_then(|s| s.column(k)) {
            Some(ColumnKind::Tag) => {}
            Some(ColumnKind::Field(t)) => {
                return Check::Rejected(format!(
                    "tag '{k}' conflicts with existing {} field '{k}' in table '{}'",
                    t.name(),
                    p.table
                ))
            }
            Some(ColumnKind::Time) => unreachable!(),
            None => new_cols = true,
        }
    }
    let mut kinds = Vec::with_capacity(p.fields.len());
    for (k, v) in &p.fields {
        if k == TIME_COLUMN || k.starts_with("__") {
            return Check::Rejected(reserved(k, "field"));
        }
        let t = FieldType::of(v);
        match schema.and_then(|s| s.column(k)) {
            Some(ColumnKind::Field(existing)) if existing == t => {}
            Some(ColumnKind::Field(existing)) => {
                return Check::Rejected(format!(
                    "field '{k}' of table '{}' is {}, got {}",
                    p.table,
                    existing.name(),
                    t.name()
                ))
            }
            Some(ColumnKind::Tag) => {
                return Check::Rejected(format!(
                    "field '{k}' conflicts with existing tag '{k}' in table '{}'",
                    p.table
                ))
            }
            Some(ColumnKind::Time) => unreachable!(),
            None => new_cols = true,
        }
        kinds.push(ColumnKind::Field(t));
    }
    if new_cols {
        Check::NeedsNewColumns
    } else {
        Check::Ok(kinds)
    }
}

impl Storage {
    /// Opens (or creates) the data directory, loads the catalog, replays the WAL and
    /// starts the WAL thread.
    pub fn open(config: StorageConfig) -> Result<Arc<Self>> {
        let dir = &config.data_dir;
        for sub in ["", "wal", "parquet"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let catalog = CatalogState::load(dir)?;
        if !crate::catalog::catalog_path(dir).exists() {
            // A new data directory gets its (empty) catalog now: a crash during the
            // first flush must leave a catalog behind, or the next start would find
            // Parquet files without one and refuse to start.
            catalog.save(dir)?;
        }
        remove_orphans(dir, &catalog)?;
        let mut schemas: HashMap<String, TableSchema> = catalog
            .tables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut buffer = WriteBuffer::default();

        // Replay what was acknowledged but not yet flushed.
        let wal_dir = dir.join("wal");
        let mut next_seq = catalog.flushed_seq + 1;
        let mut replayed = 0usize;
        let segments = wal::list_segments(&wal_dir)?;
        let last = segments.len().saturating_sub(1);
        for (i, (_, path)) in segments.iter().enumerate() {
            let (records, warning) = wal::read_segment(path, i == last, config.wal_recovery)?;
            if let Some(w) = warning {
                warn!(segment = %path.display(), "WAL tail cut off: {w}");
            }
            for r in records {
                next_seq = next_seq.max(r.seq + 1);
                if r.seq <= catalog.flushed_seq {
                    continue;
                }
                let mut tables =
                    wal::decode_payload(&r.payload).map_err(|message| Error::CorruptWal {
                        path: path.clone(),
                        offset: 0,
                        message: format!("record {}: {message}", r.seq),
                    })?;
                // Tables whose flush succeeded while another's failed are in Parquet.
                tables.retain(|(t, _)| {
                    r.seq > catalog.table_flushed_seq.get(t).copied().unwrap_or(0)
                });
                for (t, b) in &tables {
                    let s = schemas.entry(t.clone()).or_default();
                    for f in b.schema().fields() {
                        if s.column(f.name()).is_none() {
                            if let Some(k) = kind_of(f.name(), f.data_type()) {
                                s.add_column(f.name(), k);
                            }
                        }
                    }
                }
                replayed += tables.iter().map(|(_, b)| b.num_rows()).sum::<usize>();
                buffer.apply(r.seq, &tables);
            }
        }
        if replayed > 0 {
            info!(rows = replayed, "replayed WAL");
        }
        let metrics = StorageMetrics::default();
        metrics.buffer_rows.set(buffer.active_rows as i64);
        let persisted = tokio::sync::watch::channel(catalog.flushed_seq).0;
        let storage = Arc::new(Self {
            persisted,
            config: config.clone(),
            schemas: RwLock::new(schemas),
            catalog: Mutex::new(catalog),
            buffer: Arc::new(Mutex::new(buffer)),
            wal_tx: Mutex::new(None),
            wal_thread: Mutex::new(None),
            flush_lock: tokio::sync::Mutex::new(()),
            compaction_lock: tokio::sync::Mutex::new(()),
            compaction_cancel: std::sync::atomic::AtomicBool::new(false),
            last_flush: Mutex::new(Instant::now()),
            pending_deletes: Mutex::new(Vec::new()),
            flush_wanted: tokio::sync::Notify::new(),
            problems: Arc::default(),
            metrics,
        });
        storage.update_file_gauges();
        let segment = WalSegment::create(&wal_dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let buf = Arc::clone(&storage.buffer);
        let m = storage.metrics.clone();
        let problems = Arc::clone(&storage.problems);
        let handle = std::thread::Builder::new()
            .name("vigil-wal".into())
            .spawn(move || wal_loop(rx, segment, next_seq, wal_dir, buf, m, problems))
            .map_err(|e| Error::io("wal thread", e))?;
        *storage.wal_tx.lock() = Some(tx);
        *storage.wal_thread.lock() = Some(handle);
        Ok(storage)
    }

    /// Watches the highest WAL sequence number (as returned by [`Storage::commit`])
    /// whose data is in Parquet and the catalog, so it survives losing the WAL.
    pub fn persisted_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.persisted.subscribe()
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// What is failing now (the WAL, a table's flush), by part, for `/health`.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.problems
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Checks points against the table schemas, adds new tables and columns, and
    /// builds Arrow batches per table. Lines that conflict are rejected one by one.
    pub fn validate<'a>(&self, points: Vec<(usize, Point<'a>)>) -> ValidatedWrite {
        self.validate_capped(points, usize::MAX)
    }

    /// [`Storage::validate`], keeping the reasons of the first `max_errors` rejected
    /// lines only (the others are counted), so that a flood of bad lines cannot
    /// build a reply larger than the request.
    pub fn validate_capped<'a>(
        &self,
        points: Vec<(usize, Point<'a>)>,
        max_errors: usize,
    ) -> ValidatedWrite {
        let mut out = ValidatedWrite::default();
        let mut checked: Vec<Option<Vec<ColumnKind>>> = Vec::with_capacity(points.len());
        let mut needs_write = false;
        {
            let schemas = self.schemas.read();
            for (line, p) in &points {
                match check_point(schemas.get(p.table.as_ref()), p) {
                    Check::Ok(k) => checked.push(Some(k)),
                    Check::NeedsNewColumns => {
                        needs_write = true;
                        break;
                    }
                    Check::Rejected(reason) => {
                        out.reject(max_errors, *line, || reason);
                        checked.push(None);
                    }
                }
            }
        }
        if needs_write {
            checked.clear();
            out = ValidatedWrite::default();
            let mut schemas = self.schemas.write();
            for (line, p) in &points {
                if p.table.is_empty() {
                    out.reject(max_errors, *line, || "measurement name is empty".into());
                    checked.push(None);
                    continue;
                }
                let existing = schemas.get(p.table.as_ref());
                match check_point(existing, p) {
                    Check::Ok(k) => checked.push(Some(k)),
                    Check::Rejected(reason) => {
                        out.reject(max_errors, *line, || reason);
                        checked.push(None);
                    }
                    Check::NeedsNewColumns => {
                        if existing.is_none() && schemas.len() >= self.config.max_tables {
                            out.reject(max_errors, *line, || {
                                format!(
                                    "table '{}' would exceed the limit of {} tables (storage.max_tables)",
                                    p.table, self.config.max_tables
                                )
                            });
                            checked.push(None);
                            continue;
                        }
                        let have = existing.map_or(0, |s| s.column_count());
                        let new = p
                            .tags
                            .iter()
                            .map(|(k, _)| k)
                            .chain(p.fields.iter().map(|(k, _)| k))
                            .filter(|k| existing.and_then(|s| s.column(k)).is_none())
                            .count();
                        if have + new > self.config.max_columns_per_table {
                            out.reject(max_errors, *line, || {
                                format!(
                                    "table '{}' would have {} columns, over the limit of {} (storage.max_columns_per_table)",
                                    p.table,
                                    have + new,
                                    self.config.max_columns_per_table
                                )
                            });
                            checked.push(None);
                            continue;
                        }
                        let s = schemas.entry(p.table.to_string()).or_default();
                        let mut kinds = Vec::with_capacity(p.fields.len());
                        for (k, _) in &p.tags {
                            if s.column(k).is_none() {
                                s.add_column(k, ColumnKind::Tag);
                            }
                        }
                        for (k, v) in &p.fields {
                            let kind = ColumnKind::Field(FieldType::of(v));
                            if s.column(k).is_none() {
                                s.add_column(k, kind);
                            }
                            kinds.push(kind);
                        }
                        checked.push(Some(kinds));
                    }
                }
            }
        }
        // Per table: finished batches, the batch being built, and its row count.
        struct TableBuild {
            name: String,
            done: Vec<BatchBuilder>,
            current: BatchBuilder,
            rows: usize,
        }
        let mut builders: Vec<TableBuild> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for ((line, p), kinds) in points.iter().zip(&checked) {
            let Some(kinds) = kinds else { continue };
            let i = match index.get(p.table.as_ref()) {
                Some(i) => *i,
                None => {
                    builders.push(TableBuild {
                        name: p.table.to_string(),
                        done: Vec::new(),
                        current: BatchBuilder::default(),
                        rows: 0,
                    });
                    index.insert(p.table.as_ref(), builders.len() - 1);
                    builders.len() - 1
                }
            };
            let t = &mut builders[i];
            if t.rows >= crate::buffer::MAX_ROWS_PER_WRITE {
                out.reject(max_errors, *line, || {
                    format!(
                        "more than {} rows for table '{}' in one request",
                        crate::buffer::MAX_ROWS_PER_WRITE,
                        p.table
                    )
                });
                continue;
            }
            if !t.current.append(p, kinds) {
                let full = std::mem::take(&mut t.current);
                t.done.push(full);
                let appended = t.current.append(p, kinds);
                debug_assert!(appended, "an empty batch takes any point");
            }
            t.rows += 1;
            out.accepted += 1;
        }
        for t in builders {
            for b in t.done.into_iter().chain(std::iter::once(t.current)) {
                if b.rows() == 0 {
                    continue;
                }
                match b.finish() {
                    Ok(batch) => out.tables.push((t.name.clone(), batch)),
                    // Validated points always build; should one not, the whole
                    // write fails rather than acknowledging lines it dropped.
                    Err(e) => {
                        out.tables.clear();
                        out.rejected_count += out.accepted;
                        out.accepted = 0;
                        out.rejected.push(LineError {
                            line: 0,
                            reason: format!("could not build batch for table '{}': {e}", t.name),
                        });
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Makes a validated write durable (WAL, fsynced) and visible (buffer). Returns
    /// the WAL sequence number once the write may be acknowledged.
    pub async fn commit(&self, tables: Vec<(String, RecordBatch)>) -> Result<u64> {
        if tables.is_empty() {
            return Ok(0);
        }
        let payload = wal::encode_payload(&tables)?;
        let limit = self.config.max_wal_record_bytes.min(wal::MAX_RECORD_BYTES);
        if payload.len() > limit {
            return Err(Error::WriteTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.send(WalCommand::Write {
            payload,
            tables,
            reply,
        })?;
        let seq = rx.await.map_err(|_| Error::WalClosed)??;
        let (rows, bytes) = {
            let b = self.buffer.lock();
            (b.active_rows, b.active_bytes)
        };
        self.metrics.buffer_rows.set(rows as i64);
        self.metrics.buffer_bytes.set(bytes as i64);
        if rows >= self.config.flush_max_rows || bytes >= self.config.flush_max_bytes {
            self.flush_wanted.notify_one();
        }
        Ok(seq)
    }

    fn send(&self, cmd: WalCommand) -> Result<()> {
        self.wal_tx
            .lock()
            .as_ref()
            .ok_or(Error::WalClosed)?
            .send(cmd)
            .map_err(|_| Error::WalClosed)
    }

    pub fn table_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.schemas.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn table_schema(&self, table: &str) -> Option<SchemaRef> {
        self.schemas
            .write()
            .get_mut(table)
            .map(|s| s.arrow_schema())
    }

    /// A consistent view of one table for a query. The buffer is read before the
    /// catalog: data only moves from buffer to files, so nothing can be missed.
    pub fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        let (schema, tags, sort_key) = {
            let mut s = self.schemas.write();
            let ts = s.get_mut(table)?;
            (
                ts.arrow_schema(),
                ts.tags().map(str::to_string).collect(),
                ts.full_sort_key(),
            )
        };
        let buffer = self.buffer.lock().table_batches(table);
        let files = self
            .catalog
            .lock()
            .files
            .iter()
            .filter(|f| f.table == table)
            .map(|f| (f.clone(), self.config.data_dir.join(&f.path)))
            .collect();
        Some(TableSnapshot {
            schema,
            tags,
            sort_key,
            buffer,
            files,
        })
    }

    /// Starts keeping the latest row per series of `table` in memory. Returns true
    /// when this call started it: the caller must then fill the cache from the data
    /// already stored ([`Storage::offer_last_values`]), or call
    /// [`Storage::untrack_last_values`] if it cannot.
    pub fn track_last_values(&self, table: &str) -> bool {
        self.buffer.lock().last_values.track(table)
    }

    /// Stops keeping `table`'s latest rows (after a failed fill).
    pub fn untrack_last_values(&self, table: &str) {
        self.buffer.lock().last_values.untrack(table);
    }

    /// Offers rows read from stored data; they only replace strictly older ones.
    pub fn offer_last_values(&self, table: &str, batch: &RecordBatch) {
        self.buffer.lock().last_values.offer(table, batch);
    }

    /// The latest row of every series of `table`, if it is tracked.
    pub fn last_values(&self, table: &str) -> Option<Result<RecordBatch>> {
        let schema = self.table_schema(table)?;
        let rows = self.buffer.lock().last_values.rows(table, &schema)?;
        Some(rows.map_err(|e| Error::arrow(format!("reading last values of {table}"), e)))
    }

    /// Resolves when a write has taken the buffer over its size limits.
    pub async fn flush_wanted(&self) {
        self.flush_wanted.notified().await
    }

    /// True when the buffer is over its size limits or old enough to flush.
    pub fn should_flush(&self) -> bool {
        let b = self.buffer.lock();
        if b.active_rows == 0 {
            return false;
        }
        b.active_rows >= self.config.flush_max_rows
            || b.active_bytes >= self.config.flush_max_bytes
            || self.last_flush.lock().elapsed() >= self.config.flush_interval
    }

    /// True when the buffer holds twice its flush limits: flushing is not keeping up
    /// with writes. Sources that can wait (Kafka) pause until it drains, so memory
    /// stays bounded instead of growing with the backlog.
    pub fn over_capacity(&self) -> bool {
        let b = self.buffer.lock();
        b.active_rows >= self.config.flush_max_rows.saturating_mul(2)
            || b.active_bytes >= self.config.flush_max_bytes.saturating_mul(2)
    }

    /// Persists the buffer to Parquet, records the files in the catalog, then drops
    /// the WAL segments they cover. Returns the number of rows written.
    pub async fn flush(self: &Arc<Self>) -> Result<usize> {
        let _guard = self.flush_lock.lock().await;
        let (reply, rx) = oneshot::channel();
        self.send(WalCommand::Rotate { reply })?;
        let rot = rx.await.map_err(|_| Error::WalClosed)??;
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
        let mut new_files = Vec::new();
        let mut rows = 0usize;
        let mut done: Vec<String> = Vec::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        let mut tables: Vec<_> = rot.snapshot.into_iter().collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        for (table, tb) in &tables {
            let mut written = Vec::new();
            match self.persist_table(table, tb, rot.last_seq, &mut written) {
                Ok(n) => {
                    rows += n;
                    new_files.extend(written);
                    done.push(table.clone());
                }
                Err(e) => {
                    warn!(table, error = %e, "flushing table failed; its data stays in the buffer and the WAL");
                    for f in written {
                        let _ = std::fs::remove_file(self.config.data_dir.join(&f.path));
                    }
                    failures.push((table.clone(), e.to_string()));
                }
            }
        }
        fail::fail_point!("flush-before-commit");
        {
            let mut c = self.catalog.lock();
            let mut next = c.clone();
            next.files.extend(new_files.iter().cloned());
            for t in &done {
                next.table_flushed_seq.insert(t.clone(), rot.last_seq);
            }
            if failures.is_empty() {
                next.flushed_seq = next.flushed_seq.max(rot.last_seq);
                let all = next.flushed_seq;
                next.table_flushed_seq.retain(|_, s| *s > all);
            }
            next.tables = self.table_schemas();
            next.save(&self.config.data_dir)?;
            self.persisted.send_replace(next.flushed_seq);
            *c = next;
        }
        self.buffer.lock().finish_flush(&done);
        self.update_file_gauges();
        {
            let mut problems = self.problems.lock();
            for t in &done {
                problems.remove(&format!("flush:{t}"));
            }
            for (t, e) in &failures {
                problems.insert(format!("flush:{t}"), e.clone());
            }
        }
        if failures.is_empty() {
            let wal_dir = self.config.data_dir.join("wal");
            for (first, path) in wal::list_segments(&wal_dir)? {
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
            files = new_files.len(),
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
        let (schema, tags) = self.schema_and_sort_key(table, &raw)?;
        let seq_schema = with_seq_column(&schema);
        let batches = tb
            .batches
            .iter()
            .map(|b| normalize(&b.batch, &schema, Some(b.first_row_seq())))
            .collect::<arrow::error::Result<Vec<_>>>()
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

    /// The table schemas as the catalog keeps them (with their sort keys).
    fn table_schemas(&self) -> std::collections::BTreeMap<String, TableSchema> {
        self.schemas
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The table's Arrow schema and its sort key, extended (and so fixed) by the
    /// tags it lacks, taken together so that the key names no column the schema
    /// lacks. New tags are ranked on `batches` before the lock is taken.
    fn schema_and_sort_key(
        &self,
        table: &str,
        batches: &[RecordBatch],
    ) -> Result<(SchemaRef, Vec<String>)> {
        let no_schema = || Error::FlushFailed {
            table: table.to_string(),
            message: "table has no schema".into(),
        };
        let missing = self
            .schemas
            .read()
            .get(table)
            .ok_or_else(no_schema)?
            .unsorted_tags();
        let ranked = if missing.is_empty() {
            missing
        } else {
            sort_key_order(batches, &missing)
        };
        let mut s = self.schemas.write();
        let ts = s.get_mut(table).ok_or_else(no_schema)?;
        let key = ts.extend_sort_key(&ranked);
        Ok((ts.arrow_schema(), key))
    }

    fn write_file(
        &self,
        table: &str,
        day: i64,
        batch: &RecordBatch,
        tags: &[String],
        seq: u64,
    ) -> Result<ParquetFileMeta> {
        let id = {
            let mut c = self.catalog.lock();
            let id = c.next_file_id;
            c.next_file_id += 1;
            id
        };
        let rel = format!("parquet/{id:020}.parquet");
        let path = self.config.data_dir.join(&rel);
        let size = write_parquet(&path, batch, tags)?;
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
        })
    }

    fn update_file_gauges(&self) {
        let files = {
            let c = self.catalog.lock();
            self.metrics.parquet_files.set(c.files.len() as i64);
            self.metrics
                .parquet_bytes
                .set(c.files.iter().map(|f| f.size_bytes as i64).sum());
            c.files.clone()
        };
        let plans = plan_compactions(
            &files,
            self.config.compaction_min_files,
            self.window_nanos(),
        );
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
    pub async fn compact(self: &Arc<Self>) -> Result<usize> {
        let _guard = self.compaction_lock.lock().await;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.compact_blocking())
            .await
            .map_err(|e| Error::io("compaction task", std::io::Error::other(e.to_string())))?
    }

    /// The compaction window, kept between a minute and a day (the server's
    /// configuration allows only windows that divide a day).
    fn window_nanos(&self) -> i64 {
        let nanos = self
            .config
            .compaction_window
            .as_nanos()
            .min(NANOS_PER_DAY as u128) as i64;
        nanos.max(60_000_000_000)
    }

    fn compact_blocking(&self) -> Result<usize> {
        let files = self.catalog.lock().files.clone();
        let plans = plan_compactions(
            &files,
            self.config.compaction_min_files,
            self.window_nanos(),
        );
        let mut merged = 0;
        let mut first_error = None;
        for plan in plans {
            if self
                .compaction_cancel
                .load(std::sync::atomic::Ordering::Relaxed)
            {
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
        self.update_file_gauges();
        self.delete_expired_files(false);
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
        if !self.schemas.read().contains_key(table.as_str()) {
            return Ok(false);
        }
        let (schema, sort_key) = self.schema_and_sort_key(table, &[])?;
        let mut force_float = std::collections::HashSet::new();
        let outputs = loop {
            let spec = MergeSpec {
                data_dir: &self.config.data_dir,
                table,
                day: plan.day,
                schema: &schema,
                sort_key: &sort_key,
                window_nanos: self.window_nanos(),
                force_float: &force_float,
                cancel: &self.compaction_cancel,
            };
            let mut new_file = || {
                let mut c = self.catalog.lock();
                let id = c.next_file_id;
                c.next_file_id += 1;
                (id, format!("parquet/{id:020}.parquet"))
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
        let discard = |outputs: &[ParquetFileMeta]| {
            for o in outputs {
                let _ = std::fs::remove_file(self.config.data_dir.join(&o.path));
            }
        };
        fail::fail_point!("compaction-before-commit");
        {
            let mut c = self.catalog.lock();
            let ids: std::collections::HashSet<u64> = plan.inputs.iter().map(|f| f.id).collect();
            if c.files.iter().filter(|f| ids.contains(&f.id)).count() != ids.len() {
                // Something else (retention) removed an input meanwhile.
                drop(c);
                discard(&outputs);
                warn!(
                    table,
                    day = plan.day,
                    "inputs of the compaction changed; its output is dropped"
                );
                return Ok(false);
            }
            let mut next = c.clone();
            next.files.retain(|f| !ids.contains(&f.id));
            next.files.extend(outputs.iter().cloned());
            next.tables = self.table_schemas();
            if let Err(e) = next.save(&self.config.data_dir) {
                // Failed before its rename (the temporary catalog is still there):
                // nothing names the outputs. Failed after it (syncing the
                // directory): the catalog on disk may name them, so they stay; if
                // it does not, the next start removes them as orphans.
                let tmp =
                    crate::catalog::catalog_path(&self.config.data_dir).with_extension("json.tmp");
                if tmp.exists() {
                    let _ = std::fs::remove_file(&tmp);
                    drop(c);
                    discard(&outputs);
                }
                return Err(e);
            }
            *c = next;
        }
        fail::fail_point!("compaction-after-commit");
        let when = Instant::now() + self.config.deletion_grace;
        self.pending_deletes.lock().extend(
            plan.inputs
                .iter()
                .map(|f| (when, self.config.data_dir.join(&f.path))),
        );
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
        self.update_file_gauges();
        Ok(true)
    }

    /// Deletes files that compaction replaced, once their grace time is over (or all
    /// of them, at shutdown).
    pub fn delete_expired_files(&self, all: bool) {
        let now = Instant::now();
        let mut pending = self.pending_deletes.lock();
        pending.retain(|(when, path)| {
            if all || *when <= now {
                if let Err(e) = std::fs::remove_file(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(file = %path.display(), error = %e, "could not delete compacted file");
                    }
                }
                false
            } else {
                true
            }
        });
    }

    /// Makes a running compaction give up (between batches) and keeps new ones
    /// from starting: the server is stopping.
    pub fn stop_compaction(&self) {
        self.compaction_cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Flushes the buffer and stops the WAL thread.
    pub async fn shutdown(self: &Arc<Self>) -> Result<()> {
        self.stop_compaction();
        let r = self.flush().await;
        self.delete_expired_files(true);
        self.wal_tx.lock().take();
        let wal_thread = self.wal_thread.lock().take();
        if let Some(h) = wal_thread {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        r.map(|_| ())
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// Removes Parquet files the catalog does not know (left by a crash mid-flush).
fn remove_orphans(dir: &Path, catalog: &CatalogState) -> Result<()> {
    let known: std::collections::HashSet<PathBuf> =
        catalog.files.iter().map(|f| dir.join(&f.path)).collect();
    let pdir = dir.join("parquet");
    for e in std::fs::read_dir(&pdir).map_err(|e| Error::io(&pdir, e))? {
        let p = e.map_err(|e| Error::io(&pdir, e))?.path();
        if !known.contains(&p) {
            warn!(file = %p.display(), "removing file not in the catalog");
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

/// The WAL sequencer: appends records in arrival order, fsyncs once per group, then
/// applies the group to the buffer in sequence order and acknowledges it.
fn wal_loop(
    rx: mpsc::Receiver<WalCommand>,
    segment: WalSegment,
    mut next_seq: u64,
    dir: PathBuf,
    buffer: Arc<Mutex<WriteBuffer>>,
    metrics: StorageMetrics,
    problems: Arc<Mutex<BTreeMap<String, String>>>,
) {
    type Pending = Vec<(
        u64,
        Vec<(String, RecordBatch)>,
        oneshot::Sender<Result<u64>>,
    )>;
    // Syncs and acknowledges the pending writes; false if they failed.
    let commit = |segment: &mut WalSegment, pending: &mut Pending, failed: &mut Option<String>| {
        if pending.is_empty() {
            return failed.is_none();
        }
        let synced = match failed.clone() {
            Some(e) => Err(e),
            None => segment.sync().map_err(|e| e.to_string()),
        };
        metrics.wal_fsyncs.inc();
        match synced {
            Ok(()) => {
                let mut b = buffer.lock();
                for (seq, tables, _) in pending.iter() {
                    b.apply(*seq, tables);
                }
                drop(b);
                for (seq, _, reply) in pending.drain(..) {
                    let _ = reply.send(Ok(seq));
                }
                true
            }
            Err(e) => {
                for (_, _, reply) in pending.drain(..) {
                    let _ = reply.send(Err(Error::io(
                        segment.path(),
                        std::io::Error::other(e.clone()),
                    )));
                }
                *failed = Some(e);
                false
            }
        }
    };
    // After a failed append or fsync nothing more is appended to that segment: what
    // was not synced is cut off and writing goes on in a new segment. If even that
    // fails the log stops taking writes (and says so on /health).
    let mut segment = Some(segment);
    let mut broken: Option<String> = None;
    let replace = |old: WalSegment, next_seq: u64, why: &str| -> Result<WalSegment> {
        warn!(segment = %old.path().display(), error = why, "WAL write failed; continuing in a new segment");
        old.abandon()?;
        WalSegment::create(&dir, next_seq)
    };
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        while cmds.len() < 10_000 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        let mut pending: Pending = Vec::new();
        let mut failed: Option<String> = None;
        for cmd in cmds {
            let Some(seg) = segment.as_mut() else {
                let why = broken.clone().unwrap_or_default();
                match cmd {
                    WalCommand::Write { reply, .. } => {
                        let _ = reply.send(Err(Error::WalFailed(why)));
                    }
                    WalCommand::Rotate { reply } => {
                        let _ = reply.send(Err(Error::WalFailed(why)));
                    }
                }
                continue;
            };
            match cmd {
                WalCommand::Write {
                    payload,
                    tables,
                    reply,
                } => {
                    if failed.is_some() {
                        let _ = reply.send(Err(Error::WalClosed));
                        continue;
                    }
                    let seq = next_seq;
                    next_seq += 1;
                    match seg.append(seq, &payload) {
                        Ok(()) => {
                            metrics.wal_records.inc();
                            metrics.wal_bytes.inc_by(payload.len() as u64 + 16);
                            pending.push((seq, tables, reply));
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                WalCommand::Rotate { reply } => {
                    if !commit(seg, &mut pending, &mut failed) {
                        let _ =
                            reply.send(Err(Error::WalFailed(failed.clone().unwrap_or_default())));
                        continue;
                    }
                    let r = WalSegment::create(&dir, next_seq).map(|s| {
                        let _ = seg.sync();
                        *seg = s;
                        RotateResult {
                            last_seq: next_seq - 1,
                            new_segment_first_seq: next_seq,
                            snapshot: buffer.lock().start_flush(),
                        }
                    });
                    let _ = reply.send(r);
                }
            }
        }
        if let Some(seg) = segment.as_mut() {
            commit(seg, &mut pending, &mut failed);
        }
        if let Some(why) = failed {
            let old = segment.take().expect("a failure needs a segment");
            match replace(old, next_seq, &why) {
                Ok(s) => segment = Some(s),
                Err(e) => {
                    let reason = format!("{why}; then could not start a new segment: {e}");
                    tracing::error!(error = %reason, "the WAL takes no more writes");
                    problems.lock().insert("wal".into(), reason.clone());
                    broken = Some(reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::read_parquet;
    use std::borrow::Cow;
    use vigil_model::FieldValue;

    /// The values of float column `col` as stored in a Parquet file (floats with
    /// short decimals are stored as decimals and cast back).
    fn stored_floats(path: &std::path::Path, col: &str) -> Vec<f64> {
        let batches = read_parquet(path).unwrap();
        let v = batches[0].column_by_name(col).unwrap();
        let v = arrow::compute::cast(v, &arrow::datatypes::DataType::Float64).unwrap();
        v.as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    fn p(
        table: &'static str,
        host: &'static str,
        field: &'static str,
        v: FieldValue<'static>,
        t: i64,
    ) -> Point<'static> {
        Point {
            table: Cow::Borrowed(table),
            tags: vec![(Cow::Borrowed("host"), Cow::Borrowed(host))],
            fields: vec![(Cow::Borrowed(field), v)],
            time: t,
        }
    }

    /// Settings for compaction tests: compact at `min_files` files, delete replaced
    /// files at once.
    fn compacting_config(dir: &std::path::Path, min_files: usize) -> StorageConfig {
        let mut cfg = StorageConfig::new(dir);
        cfg.compaction_min_files = min_files;
        cfg.deletion_grace = Duration::ZERO;
        cfg
    }

    fn rows(s: &Storage, table: &str) -> usize {
        let snap = s.snapshot(table).unwrap();
        snap.buffer
            .iter()
            .map(|b| b.batch.num_rows())
            .sum::<usize>()
            + snap.files.iter().map(|f| f.0.rows as usize).sum::<usize>()
    }

    #[tokio::test]
    async fn type_conflicts_rejected_per_line_and_replay_restores() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let w = s.validate(vec![
            (1, p("cpu", "a", "v", FieldValue::F64(1.0), 10)),
            (2, p("cpu", "a", "v", FieldValue::I64(1), 20)),
            (3, p("cpu", "b", "v", FieldValue::F64(2.0), 10)),
            (4, p("cpu", "b", "host", FieldValue::F64(2.0), 10)),
        ]);
        assert_eq!(w.accepted, 2);
        assert_eq!(
            w.rejected.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert!(
            w.rejected[0].reason.contains("is float, got integer"),
            "{:?}",
            w.rejected
        );
        s.commit(w.tables).await.unwrap();
        assert_eq!(rows(&s, "cpu"), 2);
        // Simulate a crash: drop without flushing, reopen, replay.
        s.wal_tx.lock().take();
        drop(s);
        let s = Storage::open(StorageConfig::new(dir.path())).unwrap();
        assert_eq!(rows(&s, "cpu"), 2);
        let n = s.flush().await.unwrap();
        assert_eq!(n, 2);
        let snap = s.snapshot("cpu").unwrap();
        assert!(snap.buffer.is_empty());
        assert_eq!(snap.files.len(), 1);
        // After flush the WAL is truncated; reopening sees only the file.
        s.wal_tx.lock().take();
        drop(s);
        let s = Storage::open(StorageConfig::new(dir.path())).unwrap();
        assert_eq!(rows(&s, "cpu"), 2);
    }

    #[tokio::test]
    async fn later_line_of_one_request_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let pts = (0..1000)
            .map(|i| (i + 1, p("cpu", "a", "v", FieldValue::F64(i as f64), 10)))
            .collect();
        let w = s.validate(pts);
        s.commit(w.tables).await.unwrap();
        s.flush().await.unwrap();
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(stored_floats(&snap.files[0].1, "v"), vec![999.0]);
    }

    #[tokio::test]
    async fn compaction_merges_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compacting_config(dir.path(), 2);
        let s = Storage::open(cfg).unwrap();
        for v in [1.0, 2.0, 3.0] {
            let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(v), 10))]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        assert_eq!(s.snapshot("cpu").unwrap().files.len(), 3);
        assert_eq!(s.compact().await.unwrap(), 1);
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(snap.files.len(), 1);
        assert_eq!(stored_floats(&snap.files[0].1, "v"), vec![3.0]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("parquet"))
                .unwrap()
                .count(),
            1
        );
    }

    /// Reads a file whole: (host, time, value) in file order, and the value column's
    /// stored type.
    fn file_rows(path: &std::path::Path) -> (Vec<(String, i64, f64)>, DataType) {
        use arrow::array::AsArray;
        let batches = read_parquet(path).unwrap();
        let mut out = Vec::new();
        let mut vtype = DataType::Null;
        for b in &batches {
            let host =
                arrow::compute::cast(b.column_by_name("host").unwrap(), &DataType::Utf8).unwrap();
            let host = host.as_string::<i32>();
            vtype = b.column_by_name("v").unwrap().data_type().clone();
            let v =
                arrow::compute::cast(b.column_by_name("v").unwrap(), &DataType::Float64).unwrap();
            let v = v.as_primitive::<arrow::datatypes::Float64Type>();
            let t = b
                .column_by_name("time")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            for i in 0..b.num_rows() {
                out.push((host.value(i).to_string(), t.value(i), v.value(i)));
            }
        }
        (out, vtype)
    }

    /// Backfill host by host, time order, and a shuffled replay with rewrites: after
    /// compaction every file is level 1, within one window, sorted, overlapping no
    /// other, and the rows are exactly the last write of each (host, time).
    #[tokio::test]
    async fn compaction_converges_to_non_overlapping_windows_whatever_the_order() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let hosts = ["h00", "h01", "h02", "h03", "h04", "h05", "h06", "h07"];
        let day0 = 19_700 * NANOS_PER_DAY;
        let step = 600_000_000_000i64; // 10 min
        let times: Vec<i64> = (0..40)
            .map(|k| day0 + 20 * 3_600_000_000_000 + k * step)
            .collect();
        for order in ["time", "host", "shuffled"] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = compacting_config(dir.path(), 3);
            let s = Storage::open(cfg).unwrap();
            let mut pts: Vec<(usize, i64, f64)> = Vec::new();
            for (h, _) in hosts.iter().enumerate() {
                for (k, t) in times.iter().enumerate() {
                    pts.push((h, *t, (h * 1000 + k) as f64 / 100.0));
                }
            }
            match order {
                "time" => pts.sort_by_key(|p| (p.1, p.0)),
                "host" => pts.sort_by_key(|p| (p.0, p.1)),
                _ => pts.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7)),
            }
            // Rewrites of a third of the points, with a value of another scale.
            let mut rewrites: Vec<(usize, i64, f64)> = pts
                .iter()
                .step_by(3)
                .map(|p| (p.0, p.1, ((p.2 * 100.0).round() * 10.0 + 1.0) / 1000.0))
                .collect();
            rewrites.reverse();
            pts.extend(rewrites);
            let mut expected = std::collections::BTreeMap::new();
            for chunk in pts.chunks(70) {
                let batch: Vec<(usize, Point<'static>)> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (h, t, v))| {
                        (i + 1, p("cpu", hosts[*h], "v", FieldValue::F64(*v), *t))
                    })
                    .collect();
                for (h, t, v) in chunk {
                    expected.insert((hosts[*h].to_string(), *t), *v);
                }
                let w = s.validate(batch);
                assert!(w.rejected.is_empty());
                s.commit(w.tables).await.unwrap();
                s.flush().await.unwrap();
            }
            let before = s.snapshot("cpu").unwrap().files.len();
            assert!(before > 5, "{order}: {before} files");
            let mut rounds = 0;
            while s.compact().await.unwrap() > 0 {
                rounds += 1;
                assert!(rounds < 5, "{order}: compaction does not converge");
            }
            assert!(rounds >= 1, "{order}: nothing compacted");
            let files = s.catalog.lock().files.clone();
            let mut stored = std::collections::BTreeMap::new();
            for f in &files {
                assert_eq!(f.level, 1, "{order}: {f:?}");
                let window = 3_600_000_000_000i64;
                assert_eq!(
                    f.min_time.div_euclid(window),
                    f.max_time.div_euclid(window),
                    "{order}: {f:?}"
                );
                for g in &files {
                    assert!(
                        f.id == g.id || !f.may_share_rows(g),
                        "{order}: {f:?} overlaps {g:?}"
                    );
                }
                let (rows, vtype) = file_rows(&dir.path().join(&f.path));
                assert_eq!(vtype, DataType::Decimal128(18, 3), "{order}: decimals kept");
                assert_eq!(rows.len() as u64, f.rows);
                for pair in rows.windows(2) {
                    assert!(
                        (&pair[0].0, pair[0].1) < (&pair[1].0, pair[1].1),
                        "{order}: not sorted: {pair:?}"
                    );
                }
                assert_eq!(rows.iter().map(|r| r.1).min(), Some(f.min_time));
                assert_eq!(rows.iter().map(|r| r.1).max(), Some(f.max_time));
                for (h, t, v) in rows {
                    assert!(stored.insert((h, t), v).is_none(), "{order}: duplicate row");
                }
            }
            assert_eq!(stored, expected, "{order}");
            // Replaced files are gone from the disk.
            assert_eq!(
                std::fs::read_dir(dir.path().join("parquet"))
                    .unwrap()
                    .count(),
                files.len()
            );
            assert_eq!(s.metrics.compaction_debt_bytes.get(), 0);
        }
    }

    /// A decimal column whose rescale to a common scale would lose exactness is
    /// written as floats, value for value.
    #[tokio::test]
    async fn compaction_keeps_values_a_rescale_would_change() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compacting_config(dir.path(), 2);
        let s = Storage::open(cfg).unwrap();
        let big = (1u64 << 52) as f64 + 1.0;
        for (v, t) in [(big, 10), (0.125, 20)] {
            let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(v), t))]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        assert_eq!(s.compact().await.unwrap(), 1);
        let files = s.catalog.lock().files.clone();
        assert_eq!(files.len(), 1);
        let (rows, vtype) = file_rows(&dir.path().join(&files[0].path));
        assert_eq!(vtype, DataType::Float64);
        assert_eq!(
            rows.iter().map(|r| r.2.to_bits()).collect::<Vec<_>>(),
            vec![big.to_bits(), 0.125f64.to_bits()]
        );
    }

    /// A day that cannot be compacted (here a damaged file) fails alone: the other
    /// tables' days are compacted, and the error is reported.
    #[tokio::test]
    async fn one_failing_day_does_not_hold_up_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compacting_config(dir.path(), 2);
        let s = Storage::open(cfg).unwrap();
        for v in [1.0, 2.0] {
            let w = s.validate(vec![
                (1, p("aaa", "a", "v", FieldValue::F64(v), 10)),
                (2, p("zzz", "a", "v", FieldValue::F64(v), 10)),
            ]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        let damaged = s.snapshot("aaa").unwrap().files[0].1.clone();
        std::fs::write(&damaged, b"not parquet").unwrap();
        let err = s.compact().await.unwrap_err().to_string();
        assert!(err.contains(&damaged.display().to_string()), "{err}");
        let files = s.catalog.lock().files.clone();
        let level = |t: &str| {
            files
                .iter()
                .filter(|f| f.table == t)
                .map(|f| f.level)
                .collect::<Vec<_>>()
        };
        assert_eq!(level("zzz"), vec![1]);
        assert_eq!(level("aaa"), vec![0, 0]);
        // Nothing half-written is left behind.
        let on_disk = std::fs::read_dir(dir.path().join("parquet"))
            .unwrap()
            .count();
        assert_eq!(on_disk, files.len());
    }

    /// A table written before sort keys were recorded (none in its schema or
    /// files): compaction sorts by every tag, so two series at the same time stay
    /// two rows.
    #[tokio::test]
    async fn compaction_of_a_table_without_a_recorded_sort_key_keeps_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compacting_config(dir.path(), 2);
        {
            let s = Storage::open(cfg.clone()).unwrap();
            for v in [1.0, 2.0] {
                let w = s.validate(vec![
                    (1, p("cpu", "a", "v", FieldValue::F64(v), 10)),
                    (2, p("cpu", "b", "v", FieldValue::F64(v), 10)),
                ]);
                s.commit(w.tables).await.unwrap();
                s.flush().await.unwrap();
            }
            s.shutdown().await.unwrap();
        }
        // Forget the sort keys, as catalogs of earlier versions had none.
        let path = crate::catalog::catalog_path(dir.path());
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["tables"]["cpu"]
            .as_object_mut()
            .unwrap()
            .remove("sort_key");
        for f in c["files"].as_array_mut().unwrap() {
            f.as_object_mut().unwrap().remove("sort_key");
            f.as_object_mut().unwrap().remove("key_range");
        }
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let s = Storage::open(cfg).unwrap();
        assert_eq!(s.compact().await.unwrap(), 1);
        let files = s.catalog.lock().files.clone();
        assert_eq!(files.len(), 1);
        let (rows, _) = file_rows(&dir.path().join(&files[0].path));
        assert_eq!(
            rows,
            vec![("a".to_string(), 10, 2.0), ("b".to_string(), 10, 2.0)]
        );
        assert_eq!(files[0].sort_key, vec!["host".to_string()]);
    }
}
