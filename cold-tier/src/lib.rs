//! The cold tier: where data goes as it ages. Maintenance compacts, expires data
//! past retention and moves files older than the hot window to the cold store (a
//! local directory, or any S3-compatible bucket), using the storage engine's
//! transactional moves; queries read every tier as one table.

mod error;
mod maintenance;
mod store;

pub use error::{ColdTierError, Result};
pub use maintenance::{
    Maintenance, MaintenancePolicy, MaintenanceReport, MaintenanceSchedule, MaintenanceStep,
};
pub use store::{open_cold_store, ColdStoreOptions};
