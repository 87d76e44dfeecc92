//! Prometheus remote write (1.0): a snappy-compressed protobuf `WriteRequest`.
//!
//! A series becomes a point per sample in the table named by its `__name__` label,
//! with the other labels as tags and the sample in the float field `value` (the
//! mapping InfluxDB uses), so that a metric is one table and Kafka can key by it.
//! Bodies are read by [`RemoteWriteBody`], a protobuf reader that borrows every
//! label from the decompressed body: prost's generated decoder allocates two
//! `String`s per label and a `Vec` per series, which was most of the receive
//! cost. The prost messages below encode requests (the forwarder, the tests, the
//! benchmark) and are the reference the reader is fuzzed against.

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
    #[error("remote-write body is not a prometheus.WriteRequest protobuf: {reason} at byte {at}")]
    Protobuf { at: usize, reason: String },
    #[error("remote-write body decompresses to {size} bytes, over the limit of {limit} (http.max_body_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("remote-write request has {count} time series, over the limit of {limit} (write.max_series_per_request)")]
    TooManySeries { count: usize, limit: usize },
    #[error("remote-write request expands to {count} label values (samples times labels), over the limit of {limit} (write.max_label_values_per_request); send fewer samples per request")]
    TooManyLabelValues { count: u64, limit: usize },
}

/// Prometheus marks a series that went away with this NaN; it is not a value.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A remote-write request read without copying: its labels point into the
/// decompressed body, and the series and samples are kept in three flat vectors
/// (three allocations per request, whatever its size).
#[derive(Debug, Default)]
pub struct RemoteWriteBody<'a> {
    labels: Vec<(&'a str, &'a str)>,
    samples: Vec<(f64, i64)>,
    /// Per series: its labels and samples as ranges of the vectors above.
    series: Vec<SeriesSpan>,
}

#[derive(Debug, Clone, Copy)]
struct SeriesSpan {
    labels: (u32, u32),
    samples: (u32, u32),
}

/// One series of a [`RemoteWriteBody`]: labels in the order sent, and its
/// `(value, timestamp in ms)` samples.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'b, 'a> {
    pub labels: &'b [(&'a str, &'a str)],
    pub samples: &'b [(f64, i64)],
}

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const FIXED32: u64 = 5;

/// A cursor over protobuf bytes; every read checks the length first.
struct Wire<'a> {
    buf: &'a [u8],
    /// Offset of `buf` in the whole message, for error messages.
    at: usize,
}

fn wire_error(at: usize, what: impl std::fmt::Display) -> RemoteWriteError {
    RemoteWriteError::Protobuf {
        at,
        reason: what.to_string(),
    }
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, RemoteWriteError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(i) else {
                return Err(wire_error(self.at, "truncated varint"));
            };
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                return Err(wire_error(self.at, "invalid varint"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.advance(i + 1);
                return Ok(value);
            }
        }
        Err(wire_error(self.at, "invalid varint"))
    }

    fn advance(&mut self, n: usize) {
        self.buf = &self.buf[n..];
        self.at += n;
    }

    fn take(&mut self, n: usize) -> Result<Wire<'a>, RemoteWriteError> {
        if n > self.buf.len() {
            return Err(wire_error(
                self.at,
                format!("field of {n} bytes with {} left", self.buf.len()),
            ));
        }
        let part = Wire {
            buf: &self.buf[..n],
            at: self.at,
        };
        self.advance(n);
        Ok(part)
    }

    /// The next field's number and wire type, or None at the end.
    fn key(&mut self) -> Result<Option<(u64, u64)>, RemoteWriteError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let at = self.at;
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(wire_error(at, format!("invalid key value {key}")));
        }
        let (tag, wire_type) = (key >> 3, key & 7);
        if tag == 0 {
            return Err(wire_error(at, "invalid tag value 0"));
        }
        Ok(Some((tag, wire_type)))
    }

    fn len_delimited(&mut self) -> Result<Wire<'a>, RemoteWriteError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn expect(&self, tag: u64, wire_type: u64, want: u64) -> Result<(), RemoteWriteError> {
        if wire_type == want {
            Ok(())
        } else {
            Err(wire_error(
                self.at,
                format!("field {tag} has wire type {wire_type}, expected {want}"),
            ))
        }
    }

    /// Skips a field vigil does not read (exemplars, histograms, metadata).
    fn skip(&mut self, tag: u64, wire_type: u64) -> Result<(), RemoteWriteError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            // Groups (deprecated since proto2) never occur in remote.proto.
            START_GROUP | 4 => Err(wire_error(
                self.at,
                format!("field {tag} is a protobuf group, which remote write does not use"),
            )),
            _ => Err(wire_error(
                self.at,
                format!("invalid wire type {wire_type} of field {tag}"),
            )),
        }
    }

    fn string(&mut self) -> Result<&'a str, RemoteWriteError> {
        let at = self.at;
        let raw = self.len_delimited()?;
        std::str::from_utf8(raw.buf)
            .map_err(|e| wire_error(at, format!("string is not UTF-8 ({e})")))
    }
}

impl<'a> RemoteWriteBody<'a> {
    /// Reads a decompressed `prometheus.WriteRequest`.
    pub fn decode(raw: &'a [u8]) -> Result<Self, RemoteWriteError> {
        // Sized from the body so the vectors do not grow (and copy) a dozen
        // times per request: a label takes at least 4 bytes on the wire and
        // usually 20-40, a sample 11-20, a series with its labels 100 or more.
        let mut out = RemoteWriteBody {
            labels: Vec::with_capacity(raw.len() / 24),
            samples: Vec::with_capacity(raw.len() / 64),
            series: Vec::with_capacity(raw.len() / 128),
        };
        let mut w = Wire { buf: raw, at: 0 };
        while let Some((tag, wt)) = w.key()? {
            if tag != 1 {
                w.skip(tag, wt)?;
                continue;
            }
            w.expect(tag, wt, LEN)?;
            let series = w.len_delimited()?;
            out.read_series(series)?;
        }
        Ok(out)
    }

    fn read_series(&mut self, mut w: Wire<'a>) -> Result<(), RemoteWriteError> {
        let (l0, s0) = (self.labels.len(), self.samples.len());
        while let Some((tag, wt)) = w.key()? {
            match tag {
                1 => {
                    w.expect(tag, wt, LEN)?;
                    let mut l = w.len_delimited()?;
                    let (mut name, mut value) = ("", "");
                    while let Some((tag, wt)) = l.key()? {
                        match tag {
                            1 => {
                                l.expect(tag, wt, LEN)?;
                                name = l.string()?;
                            }
                            2 => {
                                l.expect(tag, wt, LEN)?;
                                value = l.string()?;
                            }
                            _ => l.skip(tag, wt)?,
                        }
                    }
                    self.labels.push((name, value));
                }
                2 => {
                    w.expect(tag, wt, LEN)?;
                    let mut s = w.len_delimited()?;
                    let (mut value, mut timestamp) = (0f64, 0i64);
                    while let Some((tag, wt)) = s.key()? {
                        match tag {
                            1 => {
                                s.expect(tag, wt, FIXED64)?;
                                let b = s.take(8)?;
                                value = f64::from_le_bytes(
                                    b.buf.try_into().expect("take(8) is 8 bytes"),
                                );
                            }
                            2 => {
                                s.expect(tag, wt, VARINT)?;
                                timestamp = s.varint()? as i64;
                            }
                            _ => s.skip(tag, wt)?,
                        }
                    }
                    self.samples.push((value, timestamp));
                }
                _ => w.skip(tag, wt)?,
            }
        }
        let count = |n: usize| {
            u32::try_from(n).map_err(|_| wire_error(w.at, "more than 4 billion labels or samples"))
        };
        self.series.push(SeriesSpan {
            labels: (count(l0)?, count(self.labels.len())?),
            samples: (count(s0)?, count(self.samples.len())?),
        });
        Ok(())
    }

    /// Number of time series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The series in request order.
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesRef<'_, 'a>> + '_ {
        self.series.iter().map(|s| SeriesRef {
            labels: &self.labels[s.labels.0 as usize..s.labels.1 as usize],
            samples: &self.samples[s.samples.0 as usize..s.samples.1 as usize],
        })
    }

    /// The request as prost messages, without the series numbered (from 1) in
    /// `skip`: what collector mode forwards to Kafka.
    pub fn to_request(&self, skip: &std::collections::HashSet<usize>) -> WriteRequest {
        WriteRequest {
            timeseries: self
                .series()
                .enumerate()
                .filter(|(i, _)| !skip.contains(&(i + 1)))
                .map(|(_, s)| TimeSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(n, v)| Label {
                            name: n.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    samples: s
                        .samples
                        .iter()
                        .map(|&(value, timestamp)| Sample { value, timestamp })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Undoes the snappy block compression of a remote-write body, checking the
/// length the snappy header announces against `max_bytes` before allocating
/// anything (a few bytes can announce 4 GiB).
pub fn decompress_remote_write(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, RemoteWriteError> {
    let mut out = Vec::new();
    decompress_remote_write_into(body, max_bytes, &mut out)?;
    Ok(out)
}

/// [`decompress_remote_write`] into a buffer kept between requests: `out` is
/// cleared and holds exactly the protobuf afterwards, and its memory is only
/// zeroed where it grows (a fresh zeroed buffer per request was a tenth of the
/// receive cost).
pub fn decompress_remote_write_into(
    body: &[u8],
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), RemoteWriteError> {
    let size = snap::raw::decompress_len(body)?;
    if size > max_bytes {
        return Err(RemoteWriteError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    if out.len() < size {
        // Exactly: doubling would push a kept buffer past the size it is kept at.
        out.reserve_exact(size - out.len());
        out.resize(size, 0);
    }
    let n = snap::raw::Decoder::new().decompress(body, &mut out[..size]);
    match n {
        Ok(n) => {
            out.truncate(n);
            Ok(())
        }
        Err(e) => {
            out.clear();
            Err(e.into())
        }
    }
}

/// Reads a decompressed body and checks the number of series against
/// `max_series` and what the request expands to against `max_label_values`:
/// every sample becomes a point carrying its series' labels, so one series with
/// 250 labels and millions of samples (a few MB on the wire) would otherwise cost
/// gigabytes.
pub fn read_remote_write(
    raw: &[u8],
    max_series: usize,
    max_label_values: usize,
) -> Result<RemoteWriteBody<'_>, RemoteWriteError> {
    let body = RemoteWriteBody::decode(raw)?;
    if body.len() > max_series {
        return Err(RemoteWriteError::TooManySeries {
            count: body.len(),
            limit: max_series,
        });
    }
    let label_values: u64 = body
        .series()
        .map(|t| t.samples.len() as u64 * (t.labels.len() as u64 + 1))
        .sum();
    if label_values > max_label_values as u64 {
        return Err(RemoteWriteError::TooManyLabelValues {
            count: label_values,
            limit: max_label_values,
        });
    }
    Ok(body)
}

/// Snappy-decompresses and decodes a remote-write body into prost messages,
/// without limits (for callers that keep the request: tests, tools).
pub fn decode_remote_write(body: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    let raw = decompress_remote_write(body, usize::MAX)?;
    Ok(RemoteWriteBody::decode(&raw)?.to_request(&Default::default()))
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
pub fn remote_write_points<'a>(request: &RemoteWriteBody<'a>) -> ParsedBody<'a> {
    remote_write_points_limited(request, &LineLimits::unlimited())
}

/// [`remote_write_points`] with the per-line limits applied to each series (its
/// labels are the tags of a line).
pub fn remote_write_points_limited<'a>(
    request: &RemoteWriteBody<'a>,
    limits: &LineLimits,
) -> ParsedBody<'a> {
    let mut out = ParsedBody::default();
    let max_errors = limits.max_errors;
    for (i, series) in request.series().enumerate() {
        let number = i + 1;
        let mut name = None;
        let mut tags: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(series.labels.len());
        for &(label, value) in series.labels {
            if label == "__name__" {
                name = Some(value);
            } else if !value.is_empty() {
                // An empty label value is the same as no label in Prometheus.
                tags.push((Cow::Borrowed(label), Cow::Borrowed(value)));
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            out.reject(max_errors, number, || {
                format!(
                    "time series {number} has no __name__ label (labels: {})",
                    truncate_chars(&label_text(series.labels), 1024)
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
        let mut point = Point {
            table: Cow::Borrowed(name),
            tags,
            fields: Vec::new(),
            time: 0,
        };
        if let Some(reason) = limits.check(&point).or_else(|| repeated_key(&point)) {
            out.reject(max_errors, number, || {
                format!(
                    "time series {number} ({}): {reason}",
                    truncate_chars(name, 200)
                )
            });
            continue;
        }
        let mut samples = series
            .samples
            .iter()
            .filter(|(v, _)| v.to_bits() != STALE_NAN_BITS)
            .peekable();
        while let Some(&(value, timestamp)) = samples.next() {
            let Some(time) = timestamp.checked_mul(1_000_000) else {
                out.reject(max_errors, number, || {
                    format!(
                        "time series {number} ({name}): timestamp {timestamp} ms is out of range"
                    )
                });
                continue;
            };
            // The series' tags are cloned for all samples but its last, which
            // takes them (most requests carry one sample per series).
            let tags = if samples.peek().is_some() {
                point.tags.clone()
            } else {
                std::mem::take(&mut point.tags)
            };
            out.points.push((
                number,
                Point {
                    table: Cow::Borrowed(name),
                    tags,
                    fields: vec![(Cow::Borrowed("value"), FieldValue::F64(value))],
                    time,
                },
            ));
        }
    }
    out
}

fn label_text(labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
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
        let raw = decompress_remote_write(&body, usize::MAX).unwrap();
        let view = RemoteWriteBody::decode(&raw).unwrap();
        let parsed = remote_write_points(&view);
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

    /// The reader agrees with prost's generated decoder, including on fields it
    /// skips (exemplars, unknown fields) and on a label sent without a name.
    #[test]
    fn reader_matches_prost() {
        let mut req = WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("cpu", "0"),
                        ("mode", "idle"),
                    ],
                    &[(1.5, 1_700_000_000_000), (f64::NAN, -5), (-0.0, 0)],
                ),
                series(&[("", "x"), ("é", "ü\n")], &[]),
                series(&[], &[(f64::INFINITY, i64::MIN)]),
            ],
        };
        let mut raw = req.encode_to_vec();
        // An unknown field 9 (varint) and a metadata field 3 after the series.
        raw.extend_from_slice(&[9 << 3, 0x96, 0x01, 3 << 3 | 2, 2, 8, 1]);
        let view = RemoteWriteBody::decode(&raw).unwrap();
        let reference = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(
            view.to_request(&Default::default()).encode_to_vec(),
            reference.encode_to_vec()
        );
        assert_eq!(view.len(), 3);
        let skipped = view.to_request(&[2].into_iter().collect());
        req.timeseries.remove(1);
        assert_eq!(skipped.encode_to_vec(), req.encode_to_vec());
    }

    #[test]
    fn reader_refuses_what_prost_refuses() {
        let good = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)])],
        }
        .encode_to_vec();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "left"),
            (vec![0x0a, 0x80], "truncated varint"),
            (vec![0x0a; 1], "truncated varint"),
            (vec![0x08, 0x01], "wire type 0"),
            (vec![0x00], "tag value 0"),
            (vec![0x0f], "wire type 7"),
            (vec![0x17], "invalid wire type 7"),
            (vec![0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x01], "left"),
            (vec![0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff], "UTF-8"),
            (
                vec![
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "invalid varint",
            ),
        ];
        // A sample whose value is sent as a varint.
        cases.push((vec![0x0a, 0x04, 0x12, 0x02, 0x08, 0x01], "wire type 0"));
        for (bytes, want) in cases {
            let e = RemoteWriteBody::decode(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:?}: {e}");
            assert!(
                WriteRequest::decode(bytes.as_slice()).is_err(),
                "prost accepts {bytes:?}"
            );
        }
        // The one difference: prost skips an unknown group; the reader names it
        // (remote.proto has none, and no Prometheus sends one).
        let group = [0x1b, 0x1c];
        assert!(WriteRequest::decode(group.as_slice()).is_ok());
        let e = RemoteWriteBody::decode(&group).unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
    }

    #[test]
    fn a_kept_buffer_holds_only_the_latest_body() {
        let big = encode_remote_write(&WriteRequest {
            timeseries: (0..50)
                .map(|i| series(&[("__name__", "m"), ("i", &i.to_string())], &[(1.0, i)]))
                .collect(),
        });
        let small_request = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1.0, 2)])],
        };
        let small = encode_remote_write(&small_request);
        let mut buf = Vec::new();
        decompress_remote_write_into(&big, usize::MAX, &mut buf).unwrap();
        decompress_remote_write_into(&small, usize::MAX, &mut buf).unwrap();
        assert_eq!(buf, small_request.encode_to_vec());
        assert!(decompress_remote_write_into(b"\xff\xff\xff\x7f", 1 << 20, &mut buf).is_err());
        let e = decompress_remote_write_into(&big, 10, &mut buf).unwrap_err();
        assert!(e.to_string().contains("over the limit of 10"), "{e}");
        assert!(
            decompress_remote_write_into(&small[..small.len() - 2], 1 << 20, &mut buf).is_err()
        );
        assert!(buf.is_empty(), "a failed body leaves nothing behind");
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
