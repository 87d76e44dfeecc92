//! Where Parquet files live. Every Parquet read and write of the engine (flush,
//! compaction, queries through the URL it registers with DataFusion, deletes) goes
//! through one `Arc<dyn ObjectStore>`, so a tier in S3-compatible storage reads and
//! writes the same way as the local directory does.
//!
//! The engine's persistence code is synchronous and runs on blocking threads
//! (`spawn_blocking`); it drives the store's futures with the runtime handle taken
//! when the store was opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// The URL queries use for the local store's files (`vigil://local/parquet/…`).
pub const LOCAL_STORE_URL: &str = "vigil://local/";
/// The URL queries use for the cold tier's files (`vigil://cold/parquet/…`).
pub const COLD_STORE_URL: &str = "vigil://cold/";

/// Bytes buffered per file being written before it becomes a multipart upload,
/// and the size of each part: S3's smallest part. A compaction writes up to a file
/// per window at once, and each holds this much.
const UPLOAD_PART_BYTES: usize = 5 << 20;
/// The same for a local store.
const LOCAL_PART_BYTES: usize = 1 << 20;

/// The object store holding a data directory's Parquet files, addressed by paths
/// relative to the data directory (as the catalog records them).
#[derive(Debug, Clone)]
pub struct ParquetStore {
    store: Arc<dyn ObjectStore>,
    /// `scheme://host/` under which queries find the files.
    url: String,
    /// For a local store: its directory. Object stores do not sync what they
    /// write to a local disk; the engine does, since the WAL behind a flushed
    /// file is deleted once the catalog names it.
    local_root: Option<PathBuf>,
    runtime: Handle,
}

impl ParquetStore {
    /// The data directory on local disk. Must be called within a Tokio runtime.
    pub fn local(data_dir: &Path) -> Result<Self> {
        let store = LocalFileSystem::new_with_prefix(data_dir).map_err(|e| Error::ObjectStore {
            path: data_dir.display().to_string(),
            source: e,
        })?;
        let runtime = Handle::try_current()
            .map_err(|e| Error::io(data_dir, std::io::Error::other(e.to_string())))?;
        Ok(Self {
            store: Arc::new(store),
            url: LOCAL_STORE_URL.to_string(),
            local_root: Some(data_dir.to_path_buf()),
            runtime,
        })
    }

    /// A store other than the data directory (the cold tier), under `url`
    /// (`scheme://host/`). `local_root`: its directory, when it is one on local disk
    /// (finished files are then synced). Must be called within a Tokio runtime.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        url: impl Into<String>,
        local_root: Option<PathBuf>,
    ) -> Result<Self> {
        let url = url.into();
        let runtime = Handle::try_current()
            .map_err(|e| Error::io(&url, std::io::Error::other(e.to_string())))?;
        Ok(Self {
            store,
            url,
            local_root,
            runtime,
        })
    }

    /// Copies the file at `path` into `to` under `dest` (streamed: a large file is
    /// a multipart upload, never whole in memory); returns the bytes copied. Nothing
    /// is visible under `dest` unless the copy completes.
    pub async fn copy_to(&self, path: &str, to: &ParquetStore, dest: &str) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let from = Self::location(path)?;
        let location = Self::location(dest)?;
        let part = if to.local_root.is_some() {
            LOCAL_PART_BYTES
        } else {
            UPLOAD_PART_BYTES
        };
        let mut sink = BufWriter::with_capacity(Arc::clone(&to.store), location, part);
        // A failed shutdown (completing the upload) has abandoned it already, and
        // the writer must not be aborted after it.
        let mut completing = false;
        let copied = async {
            let mut stream = self
                .store
                .get(&from)
                .await
                .map_err(Self::store_error(path))?
                .into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(Self::store_error(path))?;
                n += chunk.len() as u64;
                sink.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(dest, e))?;
            }
            completing = true;
            sink.shutdown().await.map_err(|e| Error::io(dest, e))?;
            Ok(n)
        }
        .await;
        match copied {
            Ok(n) => {
                let synced = {
                    let to = to.clone();
                    let owned = dest.to_string();
                    tokio::task::spawn_blocking(move || to.sync_local(&owned))
                        .await
                        .map_err(|e| Error::io(dest, std::io::Error::other(e.to_string())))
                        .and_then(|r| r)
                };
                if let Err(e) = synced {
                    let _ = to.remove(dest).await;
                    return Err(e);
                }
                Ok(n)
            }
            Err(e) => {
                if !completing {
                    let _ = sink.abort().await;
                }
                Err(e)
            }
        }
    }

    /// The store, for registering with a query engine under [`ParquetStore::url`].
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// `scheme://host/` of the store.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL a query reads the file at `path` (relative to the data directory) by.
    pub fn file_url(&self, path: &str) -> String {
        format!("{}{}", self.url, path.trim_start_matches('/'))
    }

    fn location(path: &str) -> Result<ObjectPath> {
        ObjectPath::parse(path).map_err(|e| Error::ObjectStore {
            path: path.to_string(),
            source: e.into(),
        })
    }

    fn store_error(path: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
        move |e| Error::ObjectStore {
            path: path.to_string(),
            source: e,
        }
    }

    /// Starts writing a Parquet file. Nothing is visible under `path` until
    /// [`ParquetFileWriter::finish`] succeeds (a local store writes a staging file
    /// and renames it; S3 completes a multipart upload).
    pub fn create(
        &self,
        path: &str,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<ParquetFileWriter> {
        let location = Self::location(path)?;
        // A local store takes parts of any size: a small buffer per open file keeps a
        // compaction writing a file per window within its memory bound.
        let part = if self.local_root.is_some() {
            LOCAL_PART_BYTES
        } else {
            UPLOAD_PART_BYTES
        };
        let sink = BufWriter::with_capacity(Arc::clone(&self.store), location, part);
        let writer =
            AsyncArrowWriter::try_new(sink, schema, Some(props)).map_err(|e| Error::Parquet {
                path: PathBuf::from(path),
                source: e,
            })?;
        Ok(ParquetFileWriter {
            store: self.clone(),
            path: path.to_string(),
            writer: Some(writer),
        })
    }

    /// A reader of the file at `path`; `size` is its length when known (saves a
    /// request).
    fn reader(&self, path: &str, size: Option<u64>) -> Result<StoreFileReader> {
        let location = Self::location(path)?;
        let size = match size {
            Some(size) => size,
            None => {
                self.runtime
                    .block_on(self.store.head(&location))
                    .map_err(Self::store_error(path))?
                    .size
            }
        };
        Ok(StoreFileReader {
            store: Arc::clone(&self.store),
            location,
            size,
        })
    }

    /// Opens a Parquet file for reading in batches of `batch_size` rows. From a
    /// blocking thread.
    pub fn open(
        &self,
        path: &str,
        size: Option<u64>,
        batch_size: usize,
    ) -> Result<ParquetFileReader> {
        let reader = self.reader(path, size)?;
        let perr = |e| Error::Parquet {
            path: PathBuf::from(path),
            source: e,
        };
        let stream = self.runtime.block_on(async {
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(perr)?;
            builder.with_batch_size(batch_size).build().map_err(perr)
        })?;
        Ok(ParquetFileReader {
            runtime: self.runtime.clone(),
            path: path.to_string(),
            stream,
        })
    }

    /// The Arrow schema and Parquet metadata of a file. From a blocking thread.
    pub fn metadata(&self, path: &str, size: Option<u64>) -> Result<ArrowReaderMetadata> {
        let mut reader = self.reader(path, size)?;
        self.runtime.block_on(async {
            ArrowReaderMetadata::load_async(&mut reader, Default::default())
                .await
                .map_err(|e| Error::Parquet {
                    path: PathBuf::from(path),
                    source: e,
                })
        })
    }

    /// Deletes a file; one already gone is not an error.
    pub async fn remove(&self, path: &str) -> Result<()> {
        let location = Self::location(path)?;
        match ObjectStoreExt::delete(self.store.as_ref(), &location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_error(path)(e)),
        }
    }

    /// [`ParquetStore::remove`], from a blocking thread.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.runtime.block_on(self.remove(path))
    }

    /// Deletes files nothing names (the output of a write that was given up),
    /// warning about those it cannot: left over, they are only wasted space and go
    /// as orphans at the next start. From a blocking thread.
    pub fn discard<'a>(&self, paths: impl IntoIterator<Item = &'a str>, what: &str) {
        for path in paths {
            if let Err(e) = self.delete(path) {
                tracing::warn!(file = path, error = %e, "could not remove {what}");
            }
        }
    }

    /// The files under `prefix` (relative to the data directory), with their sizes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let location = Self::location(prefix)?;
        let mut out = Vec::new();
        let mut stream = self.store.list(Some(&location));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(Self::store_error(prefix))?;
            out.push((meta.location.to_string(), meta.size));
        }
        Ok(out)
    }

    /// Removes what interrupted writes left behind in a local store (a staging
    /// file is named `<file>#<n>`, and object store listings do not show it).
    pub fn remove_staging_files(&self, prefix: &str) -> Result<usize> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let dir = root.join(prefix);
        let mut removed = 0;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for e in entries {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let staged = name.as_deref().is_some_and(|n| {
                n.rsplit_once('#')
                    .is_some_and(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    || n.ends_with(".parquet.tmp")
            });
            if staged && p.is_file() {
                tracing::warn!(file = %p.display(), "removing an interrupted write");
                match std::fs::remove_file(&p) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "could not remove an interrupted write")
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Makes a finished file durable on a local disk (the file, then its directory).
    fn sync_local(&self, path: &str) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let full = root.join(path);
        let file = std::fs::File::open(&full).map_err(|e| Error::io(&full, e))?;
        file.sync_all().map_err(|e| Error::io(&full, e))?;
        if let Some(dir) = full.parent() {
            crate::wal::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// A Parquet file being written. Row groups are encoded in memory and uploaded as
/// they complete; the file appears under its name only when finished.
pub struct ParquetFileWriter {
    store: ParquetStore,
    path: String,
    writer: Option<AsyncArrowWriter<BufWriter>>,
}

impl ParquetFileWriter {
    fn perr(&self) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
        |e| Error::Parquet {
            path: PathBuf::from(&self.path),
            source: e,
        }
    }

    fn writer(&mut self) -> &mut AsyncArrowWriter<BufWriter> {
        self.writer.as_mut().expect("writer used after finish")
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let runtime = self.store.runtime.clone();
        let result = runtime.block_on(self.writer().write(batch));
        result.map_err(self.perr())
    }

    /// Memory the writer holds for the row group in progress (encoded pages and
    /// the buffers of the pages being built).
    pub fn in_progress_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.memory_size())
    }

    /// Writes out the row group in progress, freeing its memory.
    pub fn flush_row_group(&mut self) -> Result<()> {
        let runtime = self.store.runtime.clone();
        let result = runtime.block_on(self.writer().flush());
        result.map_err(self.perr())
    }

    /// Finishes the file and makes it durable; returns its size. On failure
    /// nothing is left under its name.
    pub fn finish(mut self) -> Result<u64> {
        let runtime = self.store.runtime.clone();
        let mut writer = self.writer.take().expect("finish once");
        let finished = runtime.block_on(writer.finish());
        if let Err(e) = finished {
            // Dropping the upload abandons it (a local staging file is removed).
            drop(writer);
            return Err((self.perr())(e));
        }
        let size = writer.bytes_written() as u64;
        if let Err(e) = self.store.sync_local(&self.path) {
            // Not durable: callers treat the file as never written.
            let _ = self.store.delete(&self.path);
            return Err(e);
        }
        Ok(size)
    }

    /// Gives up on the file: nothing is left under its name.
    pub fn abandon(mut self) {
        if let Some(writer) = self.writer.take() {
            let mut sink = writer.into_inner();
            let _ = self.store.runtime.block_on(sink.abort());
        }
    }
}

/// A Parquet file read a batch at a time.
pub struct ParquetFileReader {
    runtime: Handle,
    path: String,
    stream: ParquetRecordBatchStream<StoreFileReader>,
}

impl ParquetFileReader {
    pub fn schema(&self) -> SchemaRef {
        self.stream.schema().clone()
    }
}

impl Iterator for ParquetFileReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.runtime.block_on(self.stream.next())?;
        Some(next.map_err(|e| Error::Parquet {
            path: PathBuf::from(&self.path),
            source: e,
        }))
    }
}

/// Reads a Parquet file of known size from the store (the footer in one request).
struct StoreFileReader {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    size: u64,
}

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// Bytes fetched from a file's end at first: the footer of a vigil file (tens of
/// columns, a few row groups) fits.
const FOOTER_PREFETCH: usize = 64 << 10;

impl AsyncFileReader for StoreFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.location, range)
            .map_err(parquet_error)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.location, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Files written (by a flush or a compaction) that no catalog names yet. Dropped
/// without [`UncommittedFiles::keep`] (an error, or a panic unwinding through the
/// writer) it removes them, so that a job failing again and again does not fill
/// the disk with files only a restart would clear.
pub(crate) struct UncommittedFiles<'a> {
    store: &'a ParquetStore,
    pub(crate) files: Vec<crate::catalog::ParquetFileMeta>,
    what: &'static str,
}

impl<'a> UncommittedFiles<'a> {
    pub(crate) fn new(
        store: &'a ParquetStore,
        files: Vec<crate::catalog::ParquetFileMeta>,
        what: &'static str,
    ) -> Self {
        Self { store, files, what }
    }

    /// The catalog names the files (or may): they stay.
    #[must_use]
    pub(crate) fn keep(mut self) -> Vec<crate::catalog::ParquetFileMeta> {
        std::mem::take(&mut self.files)
    }
}

impl Drop for UncommittedFiles<'_> {
    fn drop(&mut self) {
        if !self.files.is_empty() {
            self.discard_now();
        }
    }
}

impl UncommittedFiles<'_> {
    fn discard_now(&mut self) {
        let files = std::mem::take(&mut self.files);
        self.store
            .discard(files.iter().map(|f| f.path.as_str()), self.what);
    }
}
