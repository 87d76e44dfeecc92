//! The one write pipeline: body -> points -> storage -> per-line result.
//!
//! Every input (HTTP line protocol and remote write, Kafka, and later UDP and
//! scraping) goes through [`WritePipeline`], so the limits, the per-line error
//! report and the commit rules are the same whichever way data arrives. A limit
//! that a whole request breaks is a [`WriteError`] (the HTTP status says which);
//! a limit that one line breaks rejects that line only.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use vigil_model::{LineError, Point, TableAccess};
use vigil_storage::Storage;

use crate::line_protocol::{truncate_chars, LineLimits};
use crate::remote_write::{
    decompress_remote_write, decompress_remote_write_into, read_remote_write, RemoteWriteBody,
    RemoteWriteError,
};
use crate::{parse_line_protocol_limited, remote_write_points_limited, ParsedBody, Precision};

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// Largest decompression buffer a thread keeps between remote-write requests.
const KEPT_BUFFER_BYTES: usize = 8 << 20;

/// The limits of one write. Defaults are what a user of InfluxDB or Prometheus would
/// find roomy; each is a key of the `[write]` section of vigil.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteLimits {
    /// Largest body, after decompression (gzip, snappy).
    pub max_body_bytes: usize,
    /// Limits that reject single lines.
    pub line: LineLimits,
    /// Distinct UTC days the points of one write may fall on; a flush writes a file
    /// per table and day, so a write scattered over years would make thousands.
    pub max_days_per_write: usize,
    /// Most time series in one remote-write request.
    pub max_series_per_request: usize,
    /// Most samples x labels in one remote-write request (what it expands to in
    /// memory).
    pub max_label_values_per_request: usize,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            line: LineLimits::default(),
            max_days_per_write: 400,
            max_series_per_request: 1_000_000,
            // Prometheus sends 2,000 samples per request by default: 10 M leaves
            // room for 50,000 samples of 200 labels, and caps the expansion near
            // 500 MB.
            max_label_values_per_request: 10_000_000,
        }
    }
}

/// Why a whole write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("request body is larger than the limit of {limit} bytes (http.max_body_bytes)")]
    TooLarge { limit: usize },
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    #[error("body is not valid UTF-8 at byte {byte} (line {line})")]
    NotUtf8 { byte: usize, line: usize },
    #[error("{0}")]
    RemoteWrite(#[from] RemoteWriteError),
    #[error("the write buffer is full (flushing to Parquet is behind): retry later")]
    Backpressure,
    #[error("write could not be made durable: {0}")]
    Storage(#[from] vigil_storage::Error),
}

/// A write whose parsing task failed (panicked or was cancelled) is not stored.
impl From<tokio::task::JoinError> for WriteError {
    fn from(e: tokio::task::JoinError) -> Self {
        WriteError::Storage(vigil_storage::Error::Io {
            path: "write task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

impl WriteError {
    /// The HTTP status that tells a client what to do: fix the request (4xx), or
    /// retry it (503), or report the server (500).
    pub fn http_status(&self) -> u16 {
        match self {
            WriteError::TooLarge { .. } => 413,
            WriteError::RemoteWrite(RemoteWriteError::TooLarge { .. }) => 413,
            WriteError::Gzip(_) | WriteError::NotUtf8 { .. } | WriteError::RemoteWrite(_) => 400,
            WriteError::Backpressure => 503,
            WriteError::Storage(vigil_storage::Error::WriteTooLarge { .. }) => 413,
            WriteError::Storage(vigil_storage::Error::WalFailed(_)) => 503,
            WriteError::Storage(_) => 500,
        }
    }
}

/// The format of a write body.
#[derive(Debug, Clone, Copy)]
pub enum WriteFormat {
    LineProtocol(Precision),
    RemoteWrite,
}

/// One rejected line as the client is told about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RejectedLine {
    pub line_number: usize,
    pub error_message: String,
    /// The line as sent (cut at 256 characters); remote write has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_line: Option<String>,
}

/// The outcome of a write, line by line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    /// Lines (remote write: time series) in the body, not counting blank lines and
    /// comments.
    pub lines: usize,
    /// Points accepted.
    pub accepted: usize,
    /// Lines rejected.
    pub rejected: usize,
    /// The first rejected lines (up to `max_errors`), by line number.
    pub errors: Vec<RejectedLine>,
}

/// A body's points, checked and built into batches, with the report the client gets
/// once they are committed.
#[derive(Debug)]
pub struct PreparedWrite {
    pub tables: Vec<(String, RecordBatch)>,
    pub report: WriteReport,
}

/// A parsed body, handed to the closure of [`WritePipeline::parse_with`].
pub struct ParsedWrite<'a> {
    pub points: Vec<(usize, Point<'a>)>,
    /// Lines rejected while parsing (the first `max_errors`) and their count.
    pub errors: Vec<LineError>,
    pub error_count: usize,
    pub lines: usize,
    /// The text of a line-protocol body (to quote rejected lines).
    pub text: Option<&'a str>,
    /// The decoded request of a remote-write body.
    pub request: Option<&'a RemoteWriteBody<'a>>,
}

/// Parses, checks and commits writes into one storage engine under one set of limits.
#[derive(Debug)]
pub struct WritePipeline {
    storage: Arc<Storage>,
    limits: WriteLimits,
}

impl WritePipeline {
    pub fn new(storage: Arc<Storage>, limits: WriteLimits) -> Self {
        Self { storage, limits }
    }

    pub fn limits(&self) -> &WriteLimits {
        &self.limits
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Refuses new writes while flushing is behind (the buffer holds twice its flush
    /// limits), so memory stays bounded; clients retry (HTTP 503 with Retry-After).
    pub fn admit(&self) -> Result<(), WriteError> {
        if self.storage.over_capacity() {
            Err(WriteError::Backpressure)
        } else {
            Ok(())
        }
    }

    /// Undoes `Content-Encoding: gzip` (every member of a multi-member stream, as
    /// `gzip -c a b` makes) and checks the size limit before and after.
    pub fn decode_body<'b>(&self, body: &'b [u8], gzip: bool) -> Result<Cow<'b, [u8]>, WriteError> {
        let limit = self.limits.max_body_bytes;
        if body.len() > limit {
            return Err(WriteError::TooLarge { limit });
        }
        if !gzip {
            return Ok(Cow::Borrowed(body));
        }
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| WriteError::Gzip(e.to_string()))?;
        if out.len() > limit {
            return Err(WriteError::TooLarge { limit });
        }
        Ok(Cow::Owned(out))
    }

    /// Parses a (decompressed) body under the limits and hands the points to `f`,
    /// which may borrow them (they point into the body).
    pub fn parse_with<R>(
        &self,
        body: &[u8],
        format: WriteFormat,
        now: i64,
        access: &TableAccess,
        f: impl FnOnce(ParsedWrite<'_>) -> R,
    ) -> Result<R, WriteError> {
        match format {
            WriteFormat::LineProtocol(precision) => {
                let text = std::str::from_utf8(body).map_err(|e| {
                    let byte = e.valid_up_to();
                    let line = body[..byte].iter().filter(|b| **b == b'\n').count() + 1;
                    WriteError::NotUtf8 { byte, line }
                })?;
                let parsed = self.parse_lines(text, precision, now);
                let lines = parsed.points.len() + parsed.error_count;
                Ok(f(self.parsed(parsed, lines, Some(text), None, access)))
            }
            WriteFormat::RemoteWrite => {
                thread_local! {
                    /// The decompressed body, kept for the thread's next request.
                    static RAW: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
                }
                let mut raw = RAW.take();
                let result =
                    decompress_remote_write_into(body, self.limits.max_body_bytes, &mut raw)
                        .map_err(WriteError::from)
                        .and_then(|()| {
                            let request = self.read_remote_write(&raw)?;
                            let parsed = self.remote_write_points(&request);
                            Ok(f(self.parsed(
                                parsed,
                                request.len(),
                                None,
                                Some(&request),
                                access,
                            )))
                        });
                // A buffer grown by an unusually large body is not kept.
                if raw.capacity() <= KEPT_BUFFER_BYTES {
                    RAW.set(raw);
                }
                result
            }
        }
    }

    fn parsed<'a>(
        &self,
        mut parsed: ParsedBody<'a>,
        lines: usize,
        text: Option<&'a str>,
        request: Option<&'a RemoteWriteBody<'a>>,
        access: &TableAccess,
    ) -> ParsedWrite<'a> {
        limit_tables(&mut parsed, access, self.limits.line.max_errors);
        self.limit_days(&mut parsed);
        ParsedWrite {
            points: parsed.points,
            errors: parsed.errors,
            error_count: parsed.error_count,
            lines,
            text,
            request,
        }
    }

    /// Line protocol under the line limits.
    pub fn parse_lines<'a>(&self, text: &'a str, precision: Precision, now: i64) -> ParsedBody<'a> {
        parse_line_protocol_limited(text, precision, now, &self.limits.line)
    }

    /// A remote-write body's protobuf, its announced size checked first.
    pub fn decompress_remote_write(&self, body: &[u8]) -> Result<Vec<u8>, WriteError> {
        Ok(decompress_remote_write(body, self.limits.max_body_bytes)?)
    }

    /// A decompressed remote-write request, read in place, its series count and
    /// expansion checked.
    pub fn read_remote_write<'a>(&self, raw: &'a [u8]) -> Result<RemoteWriteBody<'a>, WriteError> {
        Ok(read_remote_write(
            raw,
            self.limits.max_series_per_request,
            self.limits.max_label_values_per_request,
        )?)
    }

    /// The points of a remote-write request under the line limits.
    pub fn remote_write_points<'a>(&self, request: &RemoteWriteBody<'a>) -> ParsedBody<'a> {
        remote_write_points_limited(request, &self.limits.line)
    }

    /// Rejects the points that fall on more distinct days than the limit allows (the
    /// first days met are kept).
    pub fn limit_days(&self, parsed: &mut ParsedBody<'_>) {
        let max = self.limits.max_days_per_write;
        let mut days: Vec<i64> = Vec::new();
        let mut last_day = None;
        let mut rejected_line = 0usize;
        let max_errors = self.limits.line.max_errors;
        let mut errors = std::mem::take(&mut parsed.errors);
        let mut error_count = parsed.error_count;
        parsed.points.retain(|(line, p)| {
            let day = p.time.div_euclid(NANOS_PER_DAY);
            if last_day == Some(day) || days.contains(&day) {
                last_day = Some(day);
                return true;
            }
            if days.len() < max {
                days.push(day);
                last_day = Some(day);
                return true;
            }
            // A remote-write series has many samples: its line is counted once.
            if rejected_line != *line {
                rejected_line = *line;
                error_count += 1;
                if errors.len() < max_errors {
                    errors.push(LineError {
                        line: *line,
                        reason: format!(
                            "point falls on a day beyond the {max} distinct days one write may cover (write.max_days_per_write)"
                        ),
                    });
                }
            }
            false
        });
        errors.sort_by_key(|e| e.line);
        parsed.errors = errors;
        parsed.error_count = error_count;
    }

    /// Checks points against the stored schemas and builds the batches to commit;
    /// the errors (the first `max_errors`) and their count come back with them.
    pub fn validate<'a>(&self, points: Vec<(usize, Point<'a>)>) -> vigil_storage::ValidatedWrite {
        self.storage
            .validate_capped(points, self.limits.line.max_errors)
    }

    /// Validates a parsed body against storage and builds the client's report.
    pub fn prepare(&self, parsed: ParsedWrite<'_>) -> PreparedWrite {
        let validated = self.validate(parsed.points);
        let mut errors = parsed.errors;
        errors.extend(validated.rejected);
        let rejected = parsed.error_count + validated.rejected_count;
        let report = self.report(
            parsed.lines,
            validated.accepted,
            rejected,
            errors,
            parsed.text,
        );
        PreparedWrite {
            tables: validated.tables,
            report,
        }
    }

    /// The report of a write: the first `max_errors` errors by line, each with its
    /// line as sent when the body was text.
    pub fn report(
        &self,
        lines: usize,
        accepted: usize,
        rejected: usize,
        mut errors: Vec<LineError>,
        text: Option<&str>,
    ) -> WriteReport {
        errors.sort_by_key(|e| e.line);
        errors.truncate(self.limits.line.max_errors);
        let originals = match text {
            Some(text) => lines_at(text, errors.iter().map(|e| e.line)),
            None => Vec::new(),
        };
        let errors = errors
            .into_iter()
            .enumerate()
            .map(|(i, e)| RejectedLine {
                line_number: e.line,
                error_message: e.reason,
                original_line: originals.get(i).map(|l| truncate_chars(l, 256)),
            })
            .collect();
        WriteReport {
            lines,
            accepted,
            rejected,
            errors,
        }
    }

    /// Makes prepared batches durable (WAL, fsynced) and visible; returns the WAL
    /// sequence number.
    pub async fn commit(&self, tables: Vec<(String, RecordBatch)>) -> Result<u64, WriteError> {
        Ok(self.storage.commit(tables).await?)
    }

    /// The whole pipeline for one body: decode, parse, validate (on a blocking
    /// thread: it is CPU work) and commit.
    pub async fn write(
        self: &Arc<Self>,
        body: bytes::Bytes,
        gzip: bool,
        format: WriteFormat,
        now: i64,
        access: TableAccess,
    ) -> Result<WriteReport, WriteError> {
        self.admit()?;
        let this = Arc::clone(self);
        let prepared = tokio::task::spawn_blocking(move || {
            let body = this.decode_body(&body, gzip)?;
            this.parse_with(&body, format, now, &access, |parsed| this.prepare(parsed))
        })
        .await??;
        self.commit(prepared.tables).await?;
        Ok(prepared.report)
    }
}

/// Rejects the points of tables the client's token does not cover.
fn limit_tables(parsed: &mut ParsedBody<'_>, access: &TableAccess, max_errors: usize) {
    if access.is_all() {
        return;
    }
    let mut errors = std::mem::take(&mut parsed.errors);
    let mut error_count = parsed.error_count;
    let mut last_line = 0usize;
    parsed.points.retain(|(line, p)| {
        if access.allows(&p.table) {
            return true;
        }
        if last_line != *line {
            last_line = *line;
            error_count += 1;
            if errors.len() < max_errors {
                errors.push(LineError {
                    line: *line,
                    reason: format!(
                        "permission denied: table '{}' is outside the tables this token may write",
                        truncate_chars(&p.table, 200)
                    ),
                });
            }
        }
        false
    });
    errors.sort_by_key(|e| e.line);
    parsed.errors = errors;
    parsed.error_count = error_count;
}

/// The text of the given 1-based lines (ascending), in one pass over the body.
fn lines_at(text: &str, wanted: impl Iterator<Item = usize>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.split('\n').enumerate();
    for w in wanted {
        let found = loop {
            match lines.next() {
                Some((i, l)) if i + 1 == w => break Some(l.trim_end_matches('\r')),
                Some((i, _)) if i + 1 < w => continue,
                _ => break None,
            }
        };
        match found {
            Some(l) => out.push(l),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_storage::StorageConfig;

    async fn pipeline(dir: &std::path::Path, limits: WriteLimits) -> Arc<WritePipeline> {
        let mut config = StorageConfig::new(dir);
        config.max_tables = 3;
        config.max_columns_per_table = 4;
        Arc::new(WritePipeline::new(
            Storage::open(config).await.unwrap(),
            limits,
        ))
    }

    fn lp(body: &str) -> bytes::Bytes {
        bytes::Bytes::from(body.to_string())
    }

    #[tokio::test]
    async fn repeated_keys_reject_only_their_line_and_the_rest_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), WriteLimits::default()).await;
        let report = p
            .write(
                lp("m,a=1 f=1 1\nm,a=1,a=2 f=1 2\nm,a=2 f=3 3"),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::all(),
            )
            .await
            .unwrap();
        assert_eq!((report.lines, report.accepted, report.rejected), (3, 2, 1));
        assert_eq!(report.errors[0].line_number, 2);
        assert_eq!(
            report.errors[0].original_line.as_deref(),
            Some("m,a=1,a=2 f=1 2")
        );
        let snap = p.storage().snapshot("m").unwrap();
        let rows: usize = snap.buffer.iter().map(|b| b.batch.num_rows()).sum();
        assert_eq!(rows, 2, "both good lines are stored");
    }

    #[tokio::test]
    async fn table_and_column_limits_reject_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), WriteLimits::default()).await;
        let report = p
            .write(
                lp("a f=1 1\nb f=1 1\nc f=1 1\nd f=1 1\na g=1,h=1,i=1,j=1 1\na g=1,h=1 1"),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::all(),
            )
            .await
            .unwrap();
        let lines: Vec<usize> = report.errors.iter().map(|e| e.line_number).collect();
        assert_eq!(lines, vec![4, 5], "{:?}", report.errors);
        assert!(report.errors[0]
            .error_message
            .contains("storage.max_tables"));
        assert!(report.errors[1]
            .error_message
            .contains("storage.max_columns_per_table"));
        assert_eq!(report.accepted, 4);
    }

    #[tokio::test]
    async fn sparse_fields_are_stored_in_linear_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StorageConfig::new(dir.path());
        config.max_columns_per_table = 100_000;
        let p = Arc::new(WritePipeline::new(
            Storage::open(config).await.unwrap(),
            WriteLimits::default(),
        ));
        let body: String = (0..30_000).map(|i| format!("m f{i}=1 {i}\n")).collect();
        let report = p
            .write(
                lp(&body),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::all(),
            )
            .await
            .unwrap();
        assert_eq!(report.accepted, 30_000);
        let snap = p.storage().snapshot("m").unwrap();
        let cells: usize = snap
            .buffer
            .iter()
            .map(|b| b.batch.num_rows() * b.batch.num_columns())
            .sum();
        // Laid out in one batch this would be 30,000 x 30,001 cells (7 GB of
        // NULL padding); split, it stays linear in the points.
        assert!(
            cells < 5_000_000,
            "dense cells {cells}: padding is not bounded"
        );
        // Row numbers run on across the batches of one write.
        let last = snap.buffer.last().unwrap();
        assert_eq!(last.row_base + last.batch.num_rows(), 30_000);
    }

    #[tokio::test]
    async fn error_flood_is_capped_and_days_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let limits = WriteLimits {
            max_days_per_write: 2,
            ..WriteLimits::default()
        };
        let p = pipeline(dir.path(), limits).await;
        let body: String = "bad\n".repeat(100_000);
        let report = p
            .write(
                lp(&body),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::all(),
            )
            .await
            .unwrap();
        assert_eq!(report.rejected, 100_000);
        assert_eq!(report.errors.len(), 100);
        let day = NANOS_PER_DAY;
        let body = format!("m f=1 0\nm f=1 {}\nm f=1 {}\nm f=1 1", day, 2 * day);
        let report = p
            .write(
                lp(&body),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::all(),
            )
            .await
            .unwrap();
        assert_eq!(report.accepted, 3);
        assert_eq!(report.errors[0].line_number, 3);
        assert!(report.errors[0]
            .error_message
            .contains("write.max_days_per_write"));
    }

    #[tokio::test]
    async fn gzip_members_are_all_read_and_bombs_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(
            dir.path(),
            WriteLimits {
                max_body_bytes: 1000,
                ..WriteLimits::default()
            },
        )
        .await;
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut two = gz(b"m f=1 1\n");
        two.extend(gz(b"m f=2 2\n"));
        assert_eq!(&*p.decode_body(&two, true).unwrap(), b"m f=1 1\nm f=2 2\n");
        let bomb = gz(&vec![b'a'; 100_000]);
        assert!(matches!(
            p.decode_body(&bomb, true),
            Err(WriteError::TooLarge { limit: 1000 })
        ));
        assert!(matches!(
            p.decode_body(b"not gzip", true),
            Err(WriteError::Gzip(_))
        ));
    }

    #[tokio::test]
    async fn snappy_length_bomb_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), WriteLimits::default()).await;
        // A varint header announcing ~4 GiB, and no data.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        let e = p.decompress_remote_write(&body).unwrap_err();
        assert_eq!(e.http_status(), 413, "{e}");
        assert!(e.to_string().contains("http.max_body_bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_token_writes_only_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), WriteLimits::default()).await;
        let report = p
            .write(
                lp("team_a f=1 1\nother f=1 1\nteam_b f=1 1"),
                false,
                WriteFormat::LineProtocol(Precision::Nanosecond),
                0,
                TableAccess::prefixes(vec!["team_".into()]),
            )
            .await
            .unwrap();
        assert_eq!(report.accepted, 2);
        assert_eq!(report.errors[0].line_number, 2);
        assert!(report.errors[0].error_message.contains("permission denied"));
        assert!(p.storage().snapshot("other").is_none());
    }

    #[test]
    fn lines_at_finds_lines_in_one_pass() {
        assert_eq!(lines_at("a\nb\r\nc\nd", [2, 4].into_iter()), vec!["b", "d"]);
        assert_eq!(lines_at("a", [1, 5].into_iter()), vec!["a"]);
    }
}
