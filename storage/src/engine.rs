//! The storage engine's front: [`Storage`] ties its parts together (the catalog,
//! the table schemas, the buffer, the WAL writer, the persister, the compactor, the
//! reaper and the job scheduler) and is what ingest and SQL see of storage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use vigil_model::Point;

use crate::buffer::{file_seq, normalize, with_seq_column, BufferedBatch, WriteBuffer};
use crate::catalog::{Catalog, ParquetFileMeta, RollupWatermark, Tier};
use crate::cold_store::{ColdStoreMetrics, ObservedStore};
use crate::compactor::{window_nanos, Compactor};
use crate::error::{Error, Result};
use crate::metrics::StorageMetrics;
use crate::parquet_store::{ParquetStore, COLD_STORE_URL};
use crate::persister::{FlushLimits, Persister};
use crate::problems::Problems;
use crate::reaper::{Reaper, COLD_DIR, PARQUET_DIR};
use crate::retention::{now_nanos, RetentionPolicy};
use crate::tables::{TableSchemas, ValidatedWrite};
use crate::wal;
use crate::wal_writer::{self, WalWriter};
use object_store::local::LocalFileSystem;

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
    /// The cold tier's object store; `None`: the directory `cold` of the data
    /// directory.
    pub cold_store: Option<Arc<dyn object_store::ObjectStore>>,
    /// Bytes of cold-tier reads kept in memory for repeated queries (0: none).
    pub cold_cache_bytes: usize,
    /// How long each table's data is kept (queries see nothing older).
    pub retention: RetentionPolicy,
    /// Keep raw files leaving retention in the cold store's archive instead of
    /// deleting them (restorable with [`Storage::start_restore`]).
    pub archive: bool,
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
            cold_store: None,
            cold_cache_bytes: 64 << 20,
            retention: RetentionPolicy::forever(),
            archive: false,
        }
    }
}

/// What a query sees of one table: buffered batches and Parquet files, consistent with
/// each other (a row may be in both; the hidden sequence column tells which wins).
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub schema: SchemaRef,
    pub tags: Vec<String>,
    /// Every tag in the order files are sorted by (see [`crate::TableSchema::full_sort_key`]).
    pub sort_key: Vec<String>,
    /// The buffered batches as written (narrower than `schema` when columns were
    /// added later); [`TableSnapshot::buffered`] gives them as queries read them.
    pub buffer: Vec<BufferedBatch>,
    /// No two buffered rows have the same series and time: the buffer can be read
    /// without sorting and deduplicating it (it may still repeat rows of files).
    pub buffer_duplicate_free: bool,
    /// The files holding rows at or after `retention_cutoff`, hot and cold.
    pub files: Vec<SnapshotFile>,
    /// Rows before this time (nanoseconds) are past the table's retention: queries
    /// must not return them, even from the buffer or a file not yet deleted.
    pub retention_cutoff: Option<i64>,
    /// Time ranges `[from, to)` restored from the archive: visible whatever the
    /// retention.
    pub restored: Vec<(i64, i64)>,
}

/// A Parquet file of a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub meta: ParquetFileMeta,
    /// Where queries read it: under the URL of [`Storage::parquet_store`].
    pub url: String,
}

impl SnapshotFile {
    /// The hidden sequence value of every row of the file: above all rows of the
    /// writes it holds, below every later write's.
    pub fn row_seq(&self) -> u64 {
        file_seq(self.meta.seq)
    }
}

/// Buffered rows as a query reads them.
#[derive(Debug, Clone)]
pub struct BufferedRows {
    pub min_time: i64,
    pub max_time: i64,
    /// In [`TableSnapshot::seq_schema`].
    pub batches: Vec<RecordBatch>,
}

impl TableSnapshot {
    /// The table schema with the hidden sequence column (last write wins on a
    /// duplicate series and time).
    pub fn seq_schema(&self) -> SchemaRef {
        with_seq_column(&self.schema)
    }

    pub fn buffer_overlaps(&self, min: i64, max: i64) -> bool {
        self.buffer.iter().any(|b| b.overlaps(min, max))
    }

    /// The buffered batches with rows in `[min, max]` (whole batches: callers
    /// filter rows), widened to the snapshot's schema with the sequence column.
    pub fn buffered(&self, min: i64, max: i64) -> Result<Option<BufferedRows>> {
        let mut out = BufferedRows {
            min_time: i64::MAX,
            max_time: i64::MIN,
            batches: Vec::new(),
        };
        let seq_schema = self.seq_schema();
        for b in self.buffer.iter().filter(|b| b.overlaps(min, max)) {
            out.min_time = out.min_time.min(b.min_time);
            out.max_time = out.max_time.max(b.max_time);
            let batch = b
                .normalized(&self.schema, &seq_schema)
                .map_err(|e| Error::arrow("reading the buffer", e))?;
            out.batches.push(batch);
        }
        Ok((!out.batches.is_empty()).then_some(out))
    }
}

/// A validated write encoded as its WAL record, not yet sequenced
/// ([`Storage::encode_write`], then [`Storage::submit`]).
pub struct EncodedWrite {
    payload: Vec<u8>,
    tables: Vec<(String, RecordBatch)>,
}

/// A submitted write's acknowledgement, awaited with [`Storage::acknowledged`].
pub struct WriteAck {
    reply: tokio::sync::oneshot::Receiver<Result<u64>>,
}

/// The storage engine. Cheap to share behind an `Arc`.
pub struct Storage {
    pub(crate) config: StorageConfig,
    pub(crate) store: ParquetStore,
    /// The cold tier, with request counters and a read cache.
    pub(crate) cold: ParquetStore,
    cold_metrics: ColdStoreMetrics,
    pub(crate) catalog: Arc<Catalog>,
    schemas: Arc<TableSchemas>,
    buffer: Arc<Mutex<WriteBuffer>>,
    wal: Arc<WalWriter>,
    persister: Arc<Persister>,
    pub(crate) compactor: Arc<Compactor>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) problems: Problems,
    pub(crate) metrics: StorageMetrics,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

impl Storage {
    /// Opens (or creates) the data directory, loads the catalog, removes what a
    /// crash left, replays the WAL and starts the WAL writer.
    pub async fn open(config: StorageConfig) -> Result<Arc<Self>> {
        let dir = &config.data_dir;
        for sub in ["", "wal", PARQUET_DIR] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let catalog = Arc::new(Catalog::open(dir)?);
        let store = ParquetStore::local(dir)?;
        let cold_metrics = ColdStoreMetrics::default();
        let (cold_inner, cold_root) = match &config.cold_store {
            Some(s) => (Arc::clone(s), None),
            None => {
                let root = dir.join(COLD_DIR);
                std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
                let local =
                    LocalFileSystem::new_with_prefix(&root).map_err(|e| Error::ObjectStore {
                        path: root.display().to_string(),
                        source: e,
                    })?;
                (
                    Arc::new(local) as Arc<dyn object_store::ObjectStore>,
                    Some(root),
                )
            }
        };
        let cold = ParquetStore::new(
            Arc::new(ObservedStore::new(
                cold_inner,
                config.cold_cache_bytes,
                cold_metrics.clone(),
            )),
            COLD_STORE_URL,
            cold_root,
        )?;
        let reaper = Arc::new(Reaper::new(
            store.clone(),
            cold.clone(),
            config.deletion_grace,
        ));
        reaper.remove_orphans(&catalog).await?;
        crate::archive::remove_dropped_restores(&store, &catalog).await?;
        let schemas = Arc::new(catalog.read(|c| {
            TableSchemas::new(&c.tables, config.max_tables, config.max_columns_per_table)
        }));
        let mut buffer = WriteBuffer::default();
        let next_seq = catalog.read(|c| wal_writer::replay(&config, c, &schemas, &mut buffer))?;
        let metrics = StorageMetrics::default();
        metrics.buffer_rows.set(buffer.active_rows as i64);
        let buffer = Arc::new(Mutex::new(buffer));
        let problems = Problems::default();
        let wal_dir = dir.join("wal");
        let wal = Arc::new(WalWriter::start(
            &wal_dir,
            next_seq,
            Arc::clone(&buffer),
            metrics.clone(),
            problems.clone(),
        )?);
        let compactor = Arc::new(Compactor {
            store: store.clone(),
            catalog: Arc::clone(&catalog),
            schemas: Arc::clone(&schemas),
            reaper: Arc::clone(&reaper),
            metrics: metrics.clone(),
            min_files: config.compaction_min_files,
            window_nanos: window_nanos(config.compaction_window),
            lock: tokio::sync::Mutex::new(()),
            cancel: Default::default(),
        });
        let persisted = tokio::sync::watch::channel(catalog.read(|c| c.flushed_seq)).0;
        let persister = Arc::new(Persister {
            limits: FlushLimits {
                max_rows: config.flush_max_rows,
                max_bytes: config.flush_max_bytes,
                interval: config.flush_interval,
            },
            wal_dir,
            store: store.clone(),
            catalog: Arc::clone(&catalog),
            schemas: Arc::clone(&schemas),
            buffer: Arc::clone(&buffer),
            wal: Arc::clone(&wal),
            compactor: Arc::clone(&compactor),
            metrics: metrics.clone(),
            problems: problems.clone(),
            lock: tokio::sync::Mutex::new(()),
            last_flush: Mutex::new(Instant::now()),
            wanted: tokio::sync::Notify::new(),
            persisted,
        });
        compactor.update_gauges();
        Ok(Arc::new(Self {
            config,
            store,
            cold,
            cold_metrics,
            catalog,
            schemas,
            buffer,
            wal,
            persister,
            compactor,
            reaper,
            problems,
            metrics,
        }))
    }

    /// Watches the highest WAL sequence number (as returned by [`Storage::commit`])
    /// whose data is in Parquet and the catalog, so it survives losing the WAL.
    pub fn persisted_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.persister.persisted.subscribe()
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// Requests to the cold tier's store and its read cache.
    pub fn cold_metrics(&self) -> &ColdStoreMetrics {
        &self.cold_metrics
    }

    /// The oldest time `table` keeps now (see [`RetentionPolicy::cutoff`]).
    pub fn retention_cutoff(&self, table: &str) -> Option<i64> {
        self.config.retention.cutoff(table, now_nanos())
    }

    /// Where the Parquet files are: queries register this store under its URL.
    pub fn parquet_store(&self) -> &ParquetStore {
        &self.store
    }

    /// What is failing now (the WAL, a table's flush, the flusher, the compactor),
    /// by part, for `/health`.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.problems.list()
    }

    /// Names a failing part outside the engine's own jobs (the cold tier's
    /// maintenance) among [`Storage::problems`], until [`Storage::clear_problem`].
    pub fn set_problem(&self, part: &str, message: String) {
        self.problems.set(part, message);
    }

    pub fn clear_problem(&self, part: &str) {
        self.problems.clear(part);
    }

    /// Checks points against the table schemas, adds new tables and columns, and
    /// builds Arrow batches per table. Lines that conflict are rejected one by one.
    pub fn validate<'a>(&self, points: Vec<(usize, Point<'a>)>) -> ValidatedWrite {
        self.schemas.validate(points)
    }

    /// [`Storage::validate`], keeping the reasons of the first `max_errors` rejected
    /// lines only (the others are counted).
    pub fn validate_capped<'a>(
        &self,
        points: Vec<(usize, Point<'a>)>,
        max_errors: usize,
    ) -> ValidatedWrite {
        self.schemas.validate_capped(points, max_errors)
    }

    /// Makes a validated write durable (WAL, fsynced) and visible (buffer). Returns
    /// the WAL sequence number once the write may be acknowledged.
    pub async fn commit(&self, tables: Vec<(String, RecordBatch)>) -> Result<u64> {
        match self.encode_write(tables)? {
            Some(write) => {
                let ack = self.submit(write)?;
                self.acknowledged(ack).await
            }
            None => Ok(0),
        }
    }

    /// The first step of [`Storage::commit`]: encodes a validated write as its WAL
    /// record (None when it has no table). CPU work with no order, so a consumer
    /// can run it on several threads before [`Storage::submit`] sequences the
    /// writes one by one.
    pub fn encode_write(&self, tables: Vec<(String, RecordBatch)>) -> Result<Option<EncodedWrite>> {
        if tables.is_empty() {
            return Ok(None);
        }
        let payload = wal::encode_payload(&tables)?;
        let limit = self.config.max_wal_record_bytes.min(wal::MAX_RECORD_BYTES);
        if payload.len() > limit {
            return Err(Error::WriteTooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(Some(EncodedWrite { payload, tables }))
    }

    /// Hands an encoded write to the WAL writer, which gives it the next sequence
    /// number now: writes submitted one after another win over each other in that
    /// order (last write wins), whenever their acknowledgements are awaited. The
    /// returned [`WriteAck`] resolves, through [`Storage::acknowledged`], once the
    /// write is fsynced and in the buffer.
    pub fn submit(&self, write: EncodedWrite) -> Result<WriteAck> {
        self.wal
            .submit(write.payload, write.tables)
            .map(|reply| WriteAck { reply })
    }

    /// Waits for a submitted write to be durable and visible; returns its sequence.
    pub async fn acknowledged(&self, ack: WriteAck) -> Result<u64> {
        let seq = ack.reply.await.map_err(|_| Error::WalClosed)??;
        let (rows, bytes) = {
            let b = self.buffer.lock();
            (b.active_rows, b.active_bytes)
        };
        self.persister.note_buffer(rows, bytes);
        Ok(seq)
    }

    /// [`Storage::validate`] for the rollup tables (see
    /// [`crate::TableSchemas::validate_rollups`]); clients' writes cannot name them.
    pub fn validate_rollups<'a>(&self, points: Vec<(usize, Point<'a>)>) -> ValidatedWrite {
        self.schemas.validate_rollups(points)
    }

    /// How far `table`'s rollups are built (`None`: not started).
    pub fn rollup_watermark(&self, table: &str) -> Option<RollupWatermark> {
        self.catalog.read(|c| c.rollups.get(table).copied())
    }

    /// All tables' rollup watermarks.
    pub fn rollup_watermarks(&self) -> Vec<(String, RollupWatermark)> {
        self.catalog
            .read(|c| c.rollups.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// Records how far `table`'s rollups are built. Call once the rollup rows it
    /// covers are committed (durable): a crash before this only redoes them.
    pub fn set_rollup_watermark(&self, table: &str, watermark: RollupWatermark) -> Result<()> {
        self.catalog.commit(|next| {
            next.rollups.insert(table.to_string(), watermark);
            Ok(())
        })?;
        Ok(())
    }

    pub fn table_names(&self) -> Vec<String> {
        self.schemas.names()
    }

    pub fn table_schema(&self, table: &str) -> Option<SchemaRef> {
        self.schemas.arrow_schema(table)
    }

    /// A consistent view of one table for a query. The buffer is read before the
    /// catalog: data only moves from buffer to files, so nothing can be missed.
    pub fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        let d = self.schemas.describe(table)?;
        let (buffer, buffer_duplicate_free) = {
            let b = self.buffer.lock();
            (b.table_batches(table), b.duplicate_free(table))
        };
        let retention_cutoff = self.retention_cutoff(table);
        let files = self.catalog.read(|c| {
            c.files
                .iter()
                .filter(|f| f.table == table)
                .filter(|f| {
                    f.tier == Tier::Restored || retention_cutoff.is_none_or(|cut| f.max_time >= cut)
                })
                .map(|f| SnapshotFile {
                    meta: f.clone(),
                    url: self.store_of(f.tier).file_url(&f.path),
                })
                .collect()
        });
        Some(TableSnapshot {
            schema: d.schema,
            tags: d.tags,
            sort_key: d.sort_key,
            buffer,
            buffer_duplicate_free,
            files,
            retention_cutoff,
            restored: self.restored_ranges(table),
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

    /// The latest row of every series of `table`, if it is tracked, in `schema`
    /// (the table's schema when the caller planned; columns added since are left
    /// out).
    pub fn last_values(&self, table: &str, schema: &SchemaRef) -> Option<Result<RecordBatch>> {
        let current = self.table_schema(table)?;
        let rows = self.buffer.lock().last_values.rows(table, &current)?;
        Some(
            rows.and_then(|r| normalize(&r, schema, None))
                .map_err(|e| Error::arrow(format!("reading last values of {table}"), e)),
        )
    }

    /// Resolves when a write has taken the buffer over its size limits.
    pub async fn flush_wanted(&self) {
        self.persister.wanted.notified().await
    }

    /// True when the buffer is over its size limits or old enough to flush.
    pub fn should_flush(&self) -> bool {
        self.persister.should_flush()
    }

    /// True when the buffer holds twice its flush limits: flushing is not keeping up
    /// with writes. Sources that can wait (Kafka) pause until it drains, so memory
    /// stays bounded instead of growing with the backlog.
    pub fn over_capacity(&self) -> bool {
        self.persister.over_capacity()
    }

    /// Persists the buffer to Parquet, records the files in the catalog, then drops
    /// the WAL segments they cover. Returns the number of rows written.
    pub async fn flush(&self) -> Result<usize> {
        self.persister.flush().await
    }

    /// Merges each table's day of overlapping or many freshly flushed files into
    /// files that do not overlap (see [`crate::compact`]); returns how many days
    /// were merged. Flushes, writes and queries go on meanwhile.
    pub async fn compact(&self) -> Result<usize> {
        self.compactor.compact().await
    }

    /// Makes a running compaction give up (between batches) and keeps new ones
    /// from starting: the server is stopping.
    pub fn stop_compaction(&self) {
        self.compactor.stop();
    }

    /// Deletes the files compaction replaced whose grace time is over (all of them
    /// with `all`).
    pub async fn delete_replaced_files(&self, all: bool) {
        let reaper = Arc::clone(&self.reaper);
        let _ = tokio::task::spawn_blocking(move || reaper.delete_expired(all)).await;
    }

    /// Flushes the buffer and stops the WAL writer.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop_compaction();
        let r = self.flush().await;
        self.delete_replaced_files(true).await;
        self.wal.close().await;
        r.map(|_| ())
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::NANOS_PER_DAY;
    use arrow::datatypes::DataType;

    /// A whole local Parquet file (the tests look at what is on disk).
    fn read_local(path: &std::path::Path) -> Vec<RecordBatch> {
        let file = std::fs::File::open(path).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }
    use std::borrow::Cow;
    use vigil_model::FieldValue;

    /// The values of float column `col` as stored in a Parquet file (floats with
    /// short decimals are stored as decimals and cast back).
    fn stored_floats(path: &std::path::Path, col: &str) -> Vec<f64> {
        let batches = read_local(path);
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

    /// What a crash leaves (a file the catalog does not name, a staging file of an
    /// interrupted write) is removed at start; what is not the engine's is not.
    #[tokio::test]
    async fn start_removes_orphans_and_interrupted_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(1.0), 1))]);
        s.commit(w.tables).await.unwrap();
        s.flush().await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let pq = dir.path().join("parquet");
        std::fs::write(pq.join("00000000000000000099.parquet"), b"orphan").unwrap();
        std::fs::write(pq.join("00000000000000000098.parquet#1"), b"staged").unwrap();
        std::fs::create_dir_all(pq.join("mine")).unwrap();
        std::fs::write(pq.join("mine/keep.parquet"), b"operator's").unwrap();
        std::fs::write(pq.join("notes.txt"), b"operator's").unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&pq)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let catalogued = s.catalog.files()[0].path.clone();
        assert_eq!(
            left,
            vec![
                catalogued.trim_start_matches("parquet/").to_string(),
                "mine".to_string(),
                "notes.txt".to_string()
            ]
        );
        assert!(pq.join("mine/keep.parquet").exists());
        assert_eq!(rows(&s, "cpu"), 1);
    }

    /// Names of the Parquet files on disk and in the catalog, sorted.
    fn files_on_disk_and_in_catalog(
        s: &Storage,
        dir: &std::path::Path,
    ) -> (Vec<String>, Vec<String>) {
        let mut disk: Vec<String> = std::fs::read_dir(dir.join("parquet"))
            .unwrap()
            .map(|e| format!("parquet/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        disk.sort();
        let mut named: Vec<String> = s.catalog.files().iter().map(|f| f.path.clone()).collect();
        named.sort();
        (disk, named)
    }

    /// A flush or a compaction whose catalog save fails removes what it wrote and
    /// keeps what it read: nothing orphaned, nothing lost, nothing doubled, and the
    /// next attempt succeeds.
    #[tokio::test]
    async fn a_failed_catalog_save_leaves_no_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(compacting_config(dir.path(), 2))
            .await
            .unwrap();
        let write = |table: &'static str, t: i64| {
            let w = s.validate(vec![(1, p(table, "a", "v", FieldValue::F64(t as f64), t))]);
            assert!(w.rejected.is_empty());
            w.tables
        };
        let fail_saves =
            || fail::cfg("catalog-save", &format!("return({})", dir.path().display())).unwrap();

        s.commit(write("cpu", 1)).await.unwrap();
        s.commit(write("mem", 1)).await.unwrap();
        fail_saves();
        assert!(s.flush().await.is_err());
        fail::remove("catalog-save");
        let (disk, named) = files_on_disk_and_in_catalog(&s, dir.path());
        assert!(disk.is_empty() && named.is_empty(), "{disk:?} {named:?}");
        assert_eq!((rows(&s, "cpu"), rows(&s, "mem")), (1, 1));
        s.flush().await.unwrap();
        let (disk, named) = files_on_disk_and_in_catalog(&s, dir.path());
        assert_eq!(disk.len(), 2);
        assert_eq!(disk, named);

        // A second cpu file of the same day: due for compaction, whose save fails.
        s.commit(write("cpu", 2)).await.unwrap();
        s.flush().await.unwrap();
        let (before, _) = files_on_disk_and_in_catalog(&s, dir.path());
        assert_eq!(before.len(), 3);
        fail_saves();
        assert!(s.compact().await.is_err());
        fail::remove("catalog-save");
        let (disk, named) = files_on_disk_and_in_catalog(&s, dir.path());
        assert_eq!(disk, before, "compaction output removed, inputs kept");
        assert_eq!(disk, named);
        assert_eq!(rows(&s, "cpu"), 2);
        assert_eq!(s.compact().await.unwrap(), 1);
        s.delete_replaced_files(true).await;
        let (disk, named) = files_on_disk_and_in_catalog(&s, dir.path());
        assert_eq!(disk.len(), 2);
        assert_eq!(disk, named);

        // After a restart: the same rows, once.
        s.shutdown().await.unwrap();
        drop(s);
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        assert_eq!((rows(&s, "cpu"), rows(&s, "mem")), (2, 1));
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
            + snap
                .files
                .iter()
                .map(|f| f.meta.rows as usize)
                .sum::<usize>()
    }

    #[tokio::test]
    async fn type_conflicts_rejected_per_line_and_replay_restores() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
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
        s.wal.close().await;
        drop(s);
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        assert_eq!(rows(&s, "cpu"), 2);
        let n = s.flush().await.unwrap();
        assert_eq!(n, 2);
        let snap = s.snapshot("cpu").unwrap();
        assert!(snap.buffer.is_empty());
        assert_eq!(snap.files.len(), 1);
        // After flush the WAL is truncated; reopening sees only the file.
        s.wal.close().await;
        drop(s);
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        assert_eq!(rows(&s, "cpu"), 2);
    }

    /// Writes are sequenced when submitted, not when their acknowledgements are
    /// awaited (the Kafka consumer awaits them beside its loop): of two writes of
    /// one series and time, the one submitted last wins.
    #[tokio::test]
    async fn writes_win_in_the_order_submitted_whenever_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let encode = |v: f64| {
            let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(v), 10))]);
            s.encode_write(w.tables).unwrap().expect("one table")
        };
        let (older, newer) = (encode(1.5), encode(2.5));
        let older = s.submit(older).unwrap();
        let newer = s.submit(newer).unwrap();
        let newer_seq = s.acknowledged(newer).await.unwrap();
        let older_seq = s.acknowledged(older).await.unwrap();
        assert!(older_seq < newer_seq, "{older_seq} < {newer_seq}");
        assert!(s.encode_write(Vec::new()).unwrap().is_none());
        s.flush().await.unwrap();
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(
            stored_floats(&dir.path().join(&snap.files[0].meta.path), "v"),
            vec![2.5]
        );
    }

    #[tokio::test]
    async fn later_line_of_one_request_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let pts = (0..1000)
            .map(|i| (i + 1, p("cpu", "a", "v", FieldValue::F64(i as f64), 10)))
            .collect();
        let w = s.validate(pts);
        s.commit(w.tables).await.unwrap();
        s.flush().await.unwrap();
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(
            stored_floats(&dir.path().join(&snap.files[0].meta.path), "v"),
            vec![999.0]
        );
    }

    #[tokio::test]
    async fn compaction_merges_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compacting_config(dir.path(), 2);
        let s = Storage::open(cfg).await.unwrap();
        for v in [1.0, 2.0, 3.0] {
            let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(v), 10))]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        assert_eq!(s.snapshot("cpu").unwrap().files.len(), 3);
        assert_eq!(s.compact().await.unwrap(), 1);
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(snap.files.len(), 1);
        assert_eq!(
            stored_floats(&dir.path().join(&snap.files[0].meta.path), "v"),
            vec![3.0]
        );
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
        let batches = read_local(path);
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
            let s = Storage::open(cfg).await.unwrap();
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
            let files = s.catalog.files();
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
        let s = Storage::open(cfg).await.unwrap();
        let big = (1u64 << 52) as f64 + 1.0;
        for (v, t) in [(big, 10), (0.125, 20)] {
            let w = s.validate(vec![(1, p("cpu", "a", "v", FieldValue::F64(v), t))]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        assert_eq!(s.compact().await.unwrap(), 1);
        let files = s.catalog.files();
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
        let s = Storage::open(cfg).await.unwrap();
        for v in [1.0, 2.0] {
            let w = s.validate(vec![
                (1, p("aaa", "a", "v", FieldValue::F64(v), 10)),
                (2, p("zzz", "a", "v", FieldValue::F64(v), 10)),
            ]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        let damaged = s.snapshot("aaa").unwrap().files[0].meta.path.clone();
        std::fs::write(dir.path().join(&damaged), b"not parquet").unwrap();
        let err = s.compact().await.unwrap_err().to_string();
        assert!(err.contains(&damaged), "{err}");
        let files = s.catalog.files();
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
            let s = Storage::open(cfg.clone()).await.unwrap();
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
        let s = Storage::open(cfg).await.unwrap();
        assert_eq!(s.compact().await.unwrap(), 1);
        let files = s.catalog.files();
        assert_eq!(files.len(), 1);
        let (rows, _) = file_rows(&dir.path().join(&files[0].path));
        assert_eq!(
            rows,
            vec![("a".to_string(), 10, 2.0), ("b".to_string(), 10, 2.0)]
        );
        assert_eq!(files[0].sort_key, vec!["host".to_string()]);
    }
}
