//! vigil's storage engine: where validated writes go and where queries read from.
//!
//! Data comes in from the ingest front ends as [`Point`]s. [`Storage::validate`] checks
//! them against the table schemas (rejecting type conflicts per line) and builds Arrow
//! batches; [`Storage::commit`] appends them to the write-ahead log (group commit, one
//! fsync for many requests) and then to the in-memory buffer, where they are queryable
//! at once. The [`flush`] machinery turns the buffer into sorted, deduplicated Parquet
//! files recorded in the [`catalog`]; the [`compact`] step merges small files.
//! The SQL layer reads a consistent [`TableSnapshot`] (buffer + files) per query.

pub mod archive;
pub mod buffer;
pub mod catalog;
pub mod cold_store;
pub mod compact;
mod compactor;
pub mod dedupe;
mod engine;
mod error;
pub mod flush;
pub mod last_values;
pub mod metrics;
pub mod parquet_store;
mod persister;
mod problems;
mod reaper;
pub mod retention;
mod scheduler;
pub mod schema;
mod tables;
pub mod tiering;
pub mod wal;
mod wal_columns;
mod wal_writer;

pub use catalog::{ParquetFileMeta, RollupWatermark, Tier};
pub use engine::{
    BufferedRows, EncodedWrite, SnapshotFile, Storage, StorageConfig, TableSnapshot, WriteAck,
};
pub use error::{Error, Result};
pub use parquet_store::ParquetStore;
pub use retention::RetentionPolicy;
pub use scheduler::BackgroundJobs;
pub use schema::{ColumnKind, FieldType, TableSchema, SEQ_COLUMN, TIME_COLUMN};
pub use tables::{
    is_rollup_table, TableDescription, TableSchemas, ValidatedWrite, ROLLUP_PREFIXES,
};
pub use vigil_model::{FieldValue, LineError, Point};
