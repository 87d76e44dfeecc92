//! vigil's SQL layer: one DataFusion session over the storage engine.
//!
//! Each measurement is a [`VigilTable`], a `TableProvider` that plans a scan over the
//! table's buffered batches and Parquet files, pruned by the time range of the query,
//! with last-write-wins deduplication only where chunks overlap in time.
//! [`QueryEngine`] owns the session configuration (memory limit, timeout) that every
//! front end (HTTP, CLI, later Flight SQL and pgwire) shares.

mod decimal_predicate;
mod dedupe;
mod engine;
mod error;
mod functions;
mod last_cache;
mod memory;
mod placeholders;
pub mod ranges;
mod result_cache;
mod rollup_selection;
mod scan;
mod system;
mod table;
mod time_range;

pub use engine::{
    check_access, check_read_only, parameter_types, PlannedQuery, QueryConfig, QueryEngine,
    RunningQuery, CATALOG, ROLLUP_10M_SCHEMA, ROLLUP_1H_SCHEMA, SCHEMA,
};
pub use error::{Error, ErrorKind, Result};
pub use placeholders::number_placeholders;
pub use result_cache::ResultCacheMetrics;
pub use system::{utc_timestamp, SystemRows, SYSTEM_SCHEMA};
pub use table::{VigilSchema, VigilTable};
