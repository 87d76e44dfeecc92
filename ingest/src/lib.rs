//! Ingest front ends' parsing: request bodies in, [`vigil_storage::Point`]s out.
//!
//! Line protocol is parsed with InfluxData's `influxdb-line-protocol` crate; this crate
//! adds what vigil needs around it: 1-based line numbers for errors, timestamp
//! precision, default timestamps, and duplicate-field handling.

mod line_protocol;

pub use line_protocol::{parse_line_protocol, ParsedBody, Precision, PrecisionError};

/// The current time in nanoseconds since the Unix epoch: the timestamp of lines
/// written without one (every ingest path uses the arrival time).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
