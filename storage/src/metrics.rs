//! Counters of the storage engine, exported by the server on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    pub compaction_input_bytes: Counter,
    pub compaction_output_bytes: Counter,
    pub compaction_output_rows: Counter,
    /// Bytes of freshly flushed files in days due for compaction.
    pub compaction_debt_bytes: Gauge,
    /// Table-days due for compaction.
    pub compaction_debt_days: Gauge,
    pub level0_files: Gauge,
    pub buffer_rows: Gauge,
    pub buffer_bytes: Gauge,
    pub parquet_files: Gauge,
    pub parquet_bytes: Gauge,
    /// Per `tier` (hot, cold): files, bytes and rows in the catalog.
    pub tier_files: Family<Vec<(String, String)>, Gauge>,
    pub tier_bytes: Family<Vec<(String, String)>, Gauge>,
    pub tier_rows: Family<Vec<(String, String)>, Gauge>,
    pub files_moved_to_cold: Counter,
    pub bytes_moved_to_cold: Counter,
    pub files_expired: Counter,
    pub rows_expired: Counter,
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
            "Compactions run (one per table-day merged)",
            self.compactions.clone(),
        );
        r.register(
            "vigil_compaction_input_bytes",
            "Bytes of Parquet files read by compaction",
            self.compaction_input_bytes.clone(),
        );
        r.register(
            "vigil_compaction_output_bytes",
            "Bytes of Parquet files written by compaction",
            self.compaction_output_bytes.clone(),
        );
        r.register(
            "vigil_compaction_output_rows",
            "Rows written by compaction",
            self.compaction_output_rows.clone(),
        );
        r.register(
            "vigil_compaction_debt_bytes",
            "Bytes of freshly flushed (level-0) files in table-days due for compaction",
            self.compaction_debt_bytes.clone(),
        );
        r.register(
            "vigil_compaction_debt_days",
            "Table-days due for compaction",
            self.compaction_debt_days.clone(),
        );
        r.register(
            "vigil_level0_files",
            "Freshly flushed Parquet files not yet compacted",
            self.level0_files.clone(),
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
        r.register(
            "vigil_tier_files",
            "Parquet files in the catalog, by tier",
            self.tier_files.clone(),
        );
        r.register(
            "vigil_tier_bytes",
            "Bytes of Parquet files in the catalog, by tier",
            self.tier_bytes.clone(),
        );
        r.register(
            "vigil_tier_rows",
            "Rows of Parquet files in the catalog, by tier",
            self.tier_rows.clone(),
        );
        r.register(
            "vigil_files_moved_to_cold",
            "Parquet files moved to the cold tier",
            self.files_moved_to_cold.clone(),
        );
        r.register(
            "vigil_bytes_moved_to_cold",
            "Bytes moved to the cold tier",
            self.bytes_moved_to_cold.clone(),
        );
        r.register(
            "vigil_files_expired",
            "Parquet files deleted by retention",
            self.files_expired.clone(),
        );
        r.register(
            "vigil_rows_expired",
            "Rows deleted by retention",
            self.rows_expired.clone(),
        );
    }
}
