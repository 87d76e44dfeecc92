//! Prometheus remote write (1.0): a snappy-compressed protobuf `WriteRequest`.
//!
//! A series becomes a point per sample in the table named by its `__name__` label,
//! with the other labels as tags and the sample in the float field `value` (the
//! mapping InfluxDB uses), so that a metric is one table and Kafka can key by it.
//! The messages are declared here with prost's derive (the five messages vigil
//! reads from Prometheus's `remote.proto`); no code generation step is needed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use prost::Message;
use vigil_model::{FieldValue, Point};

use crate::line_protocol::{repeated_key, truncate_chars, LineLimits};
use crate::ParsedBody;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (exemplars and native histograms are not read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a millisecond timestamp.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Why a remote-write body could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("remote-write body is not snappy-compressed (block format): {0}")]
    Snappy(#[from] snap::Error),
    #[error("remote-write body is not a prometheus.WriteRequest protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("remote-write body decompresses to {size} bytes, over the limit of {limit} (http.max_body_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("remote-write request has {count} time series, over the limit of {limit} (write.max_series_per_request)")]
    TooManySeries { count: usize, limit: usize },
    #[error("remote-write request expands to {count} label values (samples times labels), over the limit of {limit} (write.max_label_values_per_request); send fewer samples per request")]
    TooManyLabelValues { count: u64, limit: usize },
}

/// Prometheus marks a series that went away with this NaN; it is not a value.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Snappy-decompresses and decodes a remote-write body.
pub fn decode_remote_write(body: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    decode_remote_write_limited(body, usize::MAX, usize::MAX, usize::MAX)
}

/// [`decode_remote_write`] that checks the length the snappy header announces
/// against `max_bytes` before allocating anything (a few bytes can announce 4 GiB),
/// the number of series against `max_series`, and what the request expands to
/// against `max_label_values`: every sample becomes a point carrying its series'
/// labels, so one series with 250 labels and millions of samples (a few MB on the
/// wire) would otherwise cost gigabytes.
pub fn decode_remote_write_limited(
    body: &[u8],
    max_bytes: usize,
    max_series: usize,
    max_label_values: usize,
) -> Result<WriteRequest, RemoteWriteError> {
    let size = snap::raw::decompress_len(body)?;
    if size > max_bytes {
        return Err(RemoteWriteError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    let request = WriteRequest::decode(raw.as_slice())?;
    if request.timeseries.len() > max_series {
        return Err(RemoteWriteError::TooManySeries {
            count: request.timeseries.len(),
            limit: max_series,
        });
    }
    let label_values: u64 = request
        .timeseries
        .iter()
        .map(|t| t.samples.len() as u64 * (t.labels.len() as u64 + 1))
        .sum();
    if label_values > max_label_values as u64 {
        return Err(RemoteWriteError::TooManyLabelValues {
            count: label_values,
            limit: max_label_values,
        });
    }
    Ok(request)
}

/// Encodes a request the way Prometheus sends it (protobuf, then snappy).
pub fn encode_remote_write(request: &WriteRequest) -> Vec<u8> {
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input whose length fits in memory")
}

/// Points of a request. Errors are per series, numbered from 1 in request order
/// (the "line" of a remote-write body); a bad series rejects only itself.
pub fn remote_write_points(request: &WriteRequest) -> ParsedBody<'_> {
    remote_write_points_limited(request, &LineLimits::unlimited())
}

/// [`remote_write_points`] with the per-line limits applied to each series (its
/// labels are the tags of a line).
pub fn remote_write_points_limited<'a>(
    request: &'a WriteRequest,
    limits: &LineLimits,
) -> ParsedBody<'a> {
    let mut out = ParsedBody::default();
    let max_errors = limits.max_errors;
    for (i, series) in request.timeseries.iter().enumerate() {
        let number = i + 1;
        let mut name = None;
        let mut tags: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::with_capacity(series.labels.len());
        for l in &series.labels {
            if l.name == "__name__" {
                name = Some(l.value.as_str());
            } else if !l.value.is_empty() {
                // An empty label value is the same as no label in Prometheus.
                tags.push((
                    Cow::Borrowed(l.name.as_str()),
                    Cow::Borrowed(l.value.as_str()),
                ));
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            out.reject(max_errors, number, || {
                format!(
                    "time series {number} has no __name__ label (labels: {})",
                    truncate_chars(&label_text(series), 1024)
                )
            });
            continue;
        };
        if let Some(t) = tags.iter().find(|(k, _)| k == "value" || k == "time") {
            out.reject(max_errors, number, || {
                format!(
                    "time series {number} ({name}) has a label named '{}', which is a column of every metric table",
                    t.0
                )
            });
            continue;
        }
        let probe = Point {
            table: Cow::Borrowed(name),
            tags: tags.clone(),
            fields: Vec::new(),
            time: 0,
        };
        if let Some(reason) = limits.check(&probe).or_else(|| repeated_key(&probe)) {
            out.reject(max_errors, number, || {
                format!(
                    "time series {number} ({}): {reason}",
                    truncate_chars(name, 200)
                )
            });
            continue;
        }
        for s in &series.samples {
            if s.value.to_bits() == STALE_NAN_BITS {
                continue;
            }
            let Some(time) = s.timestamp.checked_mul(1_000_000) else {
                out.reject(max_errors, number, || {
                    format!(
                        "time series {number} ({name}): timestamp {} ms is out of range",
                        s.timestamp
                    )
                });
                continue;
            };
            out.points.push((
                number,
                Point {
                    table: Cow::Borrowed(name),
                    tags: tags.clone(),
                    fields: vec![(Cow::Borrowed("value"), FieldValue::F64(s.value))],
                    time,
                },
            ));
        }
    }
    out
}

fn label_text(series: &TimeSeries) -> String {
    let labels: Vec<String> = series
        .labels
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{{{}}}", labels.join(", "))
}

/// Splits a request into one request per metric name (series without a name are
/// kept under ""), so that each can be sent on its own, keyed by the metric.
pub fn split_by_metric(request: WriteRequest) -> BTreeMap<String, WriteRequest> {
    let mut out: BTreeMap<String, WriteRequest> = BTreeMap::new();
    for series in request.timeseries {
        let name = series
            .labels
            .iter()
            .find(|l| l.name == "__name__")
            .map(|l| l.value.clone())
            .unwrap_or_default();
        out.entry(name).or_default().timeseries.push(series);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|(value, timestamp)| Sample {
                    value: *value,
                    timestamp: *timestamp,
                })
                .collect(),
        }
    }

    #[test]
    fn series_become_points_of_the_metric_table() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "up"), ("job", "node"), ("empty", "")],
                    &[
                        (1.0, 1_700_000_000_000),
                        (f64::from_bits(STALE_NAN_BITS), 1_700_000_015_000),
                    ],
                ),
                series(&[("job", "x")], &[(2.0, 1)]),
                series(&[("__name__", "m"), ("value", "v")], &[(3.0, 1)]),
                series(&[("__name__", "big")], &[(4.0, i64::MAX)]),
            ],
        };
        let body = encode_remote_write(&req);
        let decoded = decode_remote_write(&body).unwrap();
        assert_eq!(
            encode_remote_write(&decoded),
            body,
            "NaN != NaN: compare bytes"
        );
        let parsed = remote_write_points(&decoded);
        assert_eq!(parsed.points.len(), 1, "stale marker skipped");
        let (n, p) = &parsed.points[0];
        assert_eq!(*n, 1);
        assert_eq!(p.table, "up");
        assert_eq!(p.tags, vec![("job".into(), "node".into())]);
        assert_eq!(p.fields, vec![("value".into(), FieldValue::F64(1.0))]);
        assert_eq!(p.time, 1_700_000_000_000_000_000);
        let lines: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(
            parsed.errors[0].reason.contains("no __name__"),
            "{:?}",
            parsed.errors
        );
        assert!(parsed.errors[1].reason.contains("'value'"));
        assert!(parsed.errors[2].reason.contains("out of range"));
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let e = decode_remote_write(b"not snappy at all").unwrap_err();
        assert!(e.to_string().contains("snappy"), "{e}");
        let junk = snap::raw::Encoder::new().compress_vec(&[0xff; 7]).unwrap();
        let e = decode_remote_write(&junk).unwrap_err();
        assert!(e.to_string().contains("protobuf"), "{e}");
    }

    #[test]
    fn split_keeps_each_metric_together() {
        let req = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "a"), ("i", "1")], &[(1.0, 1)]),
                series(&[("__name__", "b")], &[(2.0, 1)]),
                series(&[("__name__", "a"), ("i", "2")], &[(3.0, 1)]),
            ],
        };
        let parts = split_by_metric(req);
        assert_eq!(parts.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(parts["a"].timeseries.len(), 2);
    }
}
