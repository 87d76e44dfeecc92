//! What a Kafka message holds, told by its headers.

use rdkafka::message::{Headers, Message};
use vigil_ingest::Precision;

/// Header naming the payload's format, as on an HTTP request.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// A Prometheus remote-write body (snappy-compressed protobuf), as Prometheus sends it.
pub const REMOTE_WRITE_CONTENT_TYPE: &str = "application/x-protobuf";
/// Optional header giving line protocol timestamps' unit (default ns).
pub const PRECISION_HEADER: &str = "precision";

/// The format of one message's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    LineProtocol(Precision),
    RemoteWrite,
}

impl MessageFormat {
    /// Reads the headers: `content-type: application/x-protobuf` marks remote write;
    /// anything else is line protocol, in the unit of a `precision` header if any.
    pub fn of<M: Message>(m: &M) -> Result<Self, String> {
        let mut format = MessageFormat::LineProtocol(Precision::Nanosecond);
        let Some(headers) = m.headers() else {
            return Ok(format);
        };
        let mut precision = None;
        for h in headers.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
                .unwrap_or_default();
            if h.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                if value.starts_with(REMOTE_WRITE_CONTENT_TYPE) {
                    format = MessageFormat::RemoteWrite;
                }
            } else if h.key.eq_ignore_ascii_case(PRECISION_HEADER) {
                precision = Some(
                    value
                        .parse::<Precision>()
                        .map_err(|e| format!("header {PRECISION_HEADER}: {e}"))?,
                );
            }
        }
        if let (MessageFormat::LineProtocol(p), Some(given)) = (&mut format, precision) {
            *p = given;
        }
        Ok(format)
    }
}
