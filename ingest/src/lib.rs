//! Ingest front ends' parsing: request bodies in, [`vigil_storage::Point`]s out.
//!
//! Line protocol is parsed with InfluxData's `influxdb-line-protocol` crate; this crate
//! adds what vigil needs around it: 1-based line numbers for errors, timestamp
//! precision, default timestamps, and duplicate-field handling.

mod line_protocol;

pub use line_protocol::{parse_line_protocol, ParsedBody, Precision, PrecisionError};
