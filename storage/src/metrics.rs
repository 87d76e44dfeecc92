//! Counters of the storage engine, exported by the server on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default, Clone)]
pub struct StorageMetrics {
    pub wal_fsyncs: Counter,
    pub wal_records: Counter,
    pub wal_bytes: Counter,
    pub flushes: Counter,
    pub flushed_rows: Counter,
    pub parquet_files_written: Counter,
    pub parquet_bytes_written: Counter,
    pub compactions: Counter,
    pub buffer_rows: Gauge,
    pub buffer_bytes: Gauge,
    pub parquet_files: Gauge,
    pub parquet_bytes: Gauge,
}

impl StorageMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "vigil_wal_fsyncs",
            "WAL fsync calls (one per group commit)",
            self.wal_fsyncs.clone(),
        );
        r.register(
            "vigil_wal_records",
            "WAL records appended",
            self.wal_records.clone(),
        );
        r.register(
            "vigil_wal_bytes",
            "WAL bytes appended",
            self.wal_bytes.clone(),
        );
        r.register(
            "vigil_flushes",
            "Buffer flushes to Parquet",
            self.flushes.clone(),
        );
        r.register(
            "vigil_flushed_rows",
            "Rows written to Parquet by flushes",
            self.flushed_rows.clone(),
        );
        r.register(
            "vigil_parquet_files_written",
            "Parquet files written (flush and compaction)",
            self.parquet_files_written.clone(),
        );
        r.register(
            "vigil_parquet_bytes_written",
            "Parquet bytes written (flush and compaction)",
            self.parquet_bytes_written.clone(),
        );
        r.register(
            "vigil_compactions",
            "Compactions run",
            self.compactions.clone(),
        );
        r.register(
            "vigil_buffer_rows",
            "Rows in the in-memory buffer",
            self.buffer_rows.clone(),
        );
        r.register(
            "vigil_buffer_bytes",
            "Bytes in the in-memory buffer",
            self.buffer_bytes.clone(),
        );
        r.register(
            "vigil_parquet_files",
            "Parquet files in the catalog",
            self.parquet_files.clone(),
        );
        r.register(
            "vigil_parquet_bytes",
            "Bytes of Parquet files in the catalog",
            self.parquet_bytes.clone(),
        );
    }
}
