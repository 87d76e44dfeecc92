//! Ingest front ends' parsing: request bodies in, [`vigil_storage::Point`]s out.
//!
//! Line protocol is parsed with InfluxData's `influxdb-line-protocol` crate; this crate
//! adds what vigil needs around it: 1-based line numbers for errors, timestamp
//! precision, default timestamps, and duplicate-field handling. Prometheus remote
//! write (snappy protobuf) maps each metric to a table with one `value` field.
//! The Prometheus text exposition format and OpenMetrics (what scrape targets
//! serve) have their own streaming parser in `exposition`.
//! [`WritePipeline`] is the one path from a body to stored points that every input
//! uses, with the write limits.

pub mod exposition;
mod line_protocol;
mod pipeline;
mod remote_write;

pub use line_protocol::{
    encode_line_protocol, parse_line_protocol, parse_line_protocol_limited, LineLimits, ParsedBody,
    Precision, PrecisionError,
};
pub use pipeline::{
    ParsedWrite, PreparedWrite, RejectedLine, WriteError, WriteFormat, WriteLimits, WritePipeline,
    WriteReport,
};
pub use remote_write::{
    decode_remote_write, decompress_remote_write, decompress_remote_write_into,
    encode_remote_write, read_remote_write, remote_write_points, remote_write_points_limited,
    split_by_metric, Label, RemoteWriteBody, RemoteWriteError, Sample, SeriesRef, TimeSeries,
    WriteRequest,
};

/// The current time in nanoseconds since the Unix epoch: the timestamp of lines
/// written without one (every ingest path uses the arrival time).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
