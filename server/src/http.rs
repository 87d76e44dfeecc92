//! The HTTP API: InfluxDB-compatible writes, SQL, health and metrics.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use vigil_ingest::{
    decode_remote_write, now_nanos, parse_line_protocol, remote_write_points, Precision,
};
use vigil_kafka::{ForwardBatch, KafkaForwarder};
use vigil_sql::QueryEngine;
use vigil_storage::{LineError, Storage};

use crate::metrics::ServerMetrics;

pub(crate) struct AppState {
    pub storage: Arc<Storage>,
    pub engine: Arc<QueryEngine>,
    pub metrics: Arc<ServerMetrics>,
    pub max_body_bytes: usize,
    /// Collector mode: writes go to Kafka instead of storage.
    pub forwarder: Option<Arc<KafkaForwarder>>,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    // The limit is enforced by `read_body` after decompression; axum's own limit is
    // set just above it so that oversized raw bodies are cut off early.
    let raw_limit = state.max_body_bytes.saturating_add(1);
    Router::new()
        .route("/api/v3/write_lp", post(write_lp))
        .route("/api/v2/write", post(write_lp))
        .route("/write", post(write_lp))
        .route("/api/v1/write", post(remote_write))
        .route("/api/v1/sql", get(sql_get).post(sql_post))
        .route("/api/v3/query_sql", get(sql_get).post(sql_post))
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(raw_limit))
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "pass"}))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

#[derive(Debug, Deserialize)]
struct WriteParams {
    db: Option<String>,
    bucket: Option<String>,
    precision: Option<String>,
}

/// All three write endpoints (v3, v2, v1) take the same parameters.
async fn write_lp(
    State(s): State<Arc<AppState>>,
    Query(p): Query<WriteParams>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    write(s, p, h, body).await
}

/// Decompresses (gzip) and bounds the body.
// The error is the reply itself, returned to the client at once; boxing buys nothing.
#[allow(clippy::result_large_err)]
fn read_body(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("gzip"))
        .unwrap_or(false);
    if body.len() > limit {
        return Err(too_large());
    }
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(out.into())
}

/// A parsed write, ready to be stored here or produced to Kafka.
enum Prepared {
    Local(Vec<(String, arrow::record_batch::RecordBatch)>),
    Forward(ForwardBatch),
}

/// What parsing a write body produced: the accepted part and the per-line errors.
struct ParsedWrite {
    prepared: Prepared,
    accepted: usize,
    total: usize,
    errors: Vec<serde_json::Value>,
}

impl AppState {
    /// The decompressed, bounded body of a write, counted in the write metrics.
    // The error is the reply itself, returned to the client at once.
    #[allow(clippy::result_large_err)]
    fn write_body(&self, headers: &HeaderMap, body: Bytes) -> Result<Bytes, Response> {
        let body = read_body(headers, body, self.max_body_bytes).inspect_err(|_| {
            self.metrics.write_errors.inc();
        })?;
        self.metrics.bytes_received.inc_by(body.len() as u64);
        Ok(body)
    }

    /// Stores (standalone) or validates for forwarding (collector) the points of a
    /// body, collecting every error as the JSON the client gets.
    fn prepare(
        &self,
        points: Vec<(usize, vigil_model::Point<'_>)>,
        mut errors: Vec<LineError>,
        original: impl Fn(usize) -> String,
    ) -> ParsedWrite {
        let total = points.len() + errors.len();
        let (prepared, accepted) = if self.forwarder.is_some() {
            // The storage nodes check column types; here only the syntax is known.
            let accepted = points.len();
            (
                Prepared::Forward(ForwardBatch::line_protocol(&points)),
                accepted,
            )
        } else {
            let w = self.storage.validate(points);
            errors.extend(w.rejected.iter().cloned());
            (Prepared::Local(w.tables), w.accepted)
        };
        errors.sort_by_key(|e| e.line);
        let errors = errors
            .iter()
            .map(|e| {
                json!({
                    "line_number": e.line,
                    "error_message": e.reason,
                    "original_line": original(e.line),
                })
            })
            .collect();
        ParsedWrite {
            prepared,
            accepted,
            total,
            errors,
        }
    }

    /// Makes a parsed write durable: the WAL, or Kafka's acknowledgement.
    async fn apply(&self, prepared: Prepared) -> Result<(), Response> {
        let result = match (prepared, &self.forwarder) {
            (Prepared::Local(tables), _) => {
                self.storage.commit(tables).await.map(|_| ()).map_err(|e| {
                    tracing::error!(error = %e, "write could not be made durable");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("write could not be made durable: {e}"),
                    )
                })
            }
            (Prepared::Forward(batch), Some(f)) => f.send(batch).await.map_err(|e| {
                tracing::error!(error = %e, "write not acknowledged by Kafka");
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }),
            (Prepared::Forward(_), None) => unreachable!("forwarding needs a forwarder"),
        };
        if result.is_err() {
            self.metrics.write_errors.inc();
        }
        result
    }
}

/// The reply to a write: 204, or 400 naming each rejected line.
fn write_reply(
    s: &AppState,
    accepted: usize,
    total: usize,
    errors: Vec<serde_json::Value>,
) -> Response {
    s.metrics.rows_written.inc_by(accepted as u64);
    if errors.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    s.metrics.lines_rejected.inc_by(errors.len() as u64);
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": format!("partial write: {} of {} lines rejected", errors.len(), total),
            "lines_written": accepted,
            "lines_rejected": errors.len(),
            "data": errors,
        })),
    )
        .into_response()
}

async fn write(s: Arc<AppState>, p: WriteParams, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.write_requests.inc();
    let _db = p.db.or(p.bucket);
    let precision: Precision = match p.precision.as_deref().unwrap_or("ns").parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let body = match s.write_body(&headers, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let state = Arc::clone(&s);
    let parsed = tokio::task::spawn_blocking(move || {
        let text = match std::str::from_utf8(&body) {
            Ok(t) => t,
            Err(e) => {
                let at = e.valid_up_to();
                let line = body[..at].iter().filter(|b| **b == b'\n').count() + 1;
                return Err(format!(
                    "body is not valid UTF-8 at byte {at} (line {line})"
                ));
            }
        };
        let parsed = parse_line_protocol(text, precision, now_nanos());
        // Split into lines only when an error needs its original line.
        let lines = std::cell::OnceCell::new();
        Ok(state.prepare(parsed.points, parsed.errors, |n| {
            lines
                .get_or_init(|| text.lines().collect::<Vec<&str>>())
                .get(n.wrapping_sub(1))
                .map(|l| truncate(l, 256))
                .unwrap_or_default()
        }))
    })
    .await;
    finish_write(&s, parsed).await
}

/// Stores or forwards a parsed write and replies; a body that could not be read at
/// all gets 400 with the reason.
async fn finish_write(
    s: &AppState,
    parsed: Result<Result<ParsedWrite, String>, tokio::task::JoinError>,
) -> Response {
    let parsed = match parsed {
        Ok(Ok(x)) => x,
        Ok(Err(msg)) => {
            s.metrics.write_errors.inc();
            return error(StatusCode::BAD_REQUEST, msg);
        }
        Err(e) => {
            s.metrics.write_errors.inc();
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("write task failed: {e}"),
            );
        }
    };
    if let Err(r) = s.apply(parsed.prepared).await {
        return r;
    }
    write_reply(s, parsed.accepted, parsed.total, parsed.errors)
}

/// Prometheus remote write (`POST /api/v1/write`, snappy protobuf): each metric is a
/// table with its labels as tags and a `value` field. Series that cannot be stored
/// (no `__name__`, a label named like a column) are rejected one by one (400 names
/// them); Prometheus does not retry a 4xx, so the rest is stored regardless.
async fn remote_write(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.write_requests.inc();
    let body = match s.write_body(&headers, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let state = Arc::clone(&s);
    let parsed = tokio::task::spawn_blocking(move || {
        let mut request = decode_remote_write(&body).map_err(|e| e.to_string())?;
        let parsed = remote_write_points(&request);
        if state.forwarder.is_none() {
            return Ok::<_, String>(state.prepare(parsed.points, parsed.errors, |_| String::new()));
        }
        // Forwarded as remote write (so NaN and every float survive), without the
        // series that cannot be stored.
        let bad: std::collections::HashSet<usize> = parsed.errors.iter().map(|e| e.line).collect();
        let total = request.timeseries.len();
        let accepted = parsed.points.len();
        let errors = parsed
            .errors
            .iter()
            .map(|e| json!({"line_number": e.line, "error_message": e.reason}))
            .collect();
        drop(parsed);
        let mut n = 0;
        request.timeseries.retain(|_| {
            n += 1;
            !bad.contains(&n)
        });
        Ok(ParsedWrite {
            prepared: Prepared::Forward(ForwardBatch::remote_write(request)),
            accepted,
            total,
            errors,
        })
    })
    .await;
    finish_write(&s, parsed).await
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[derive(Debug, Deserialize, Default)]
struct SqlParams {
    q: Option<String>,
    sql: Option<String>,
    format: Option<String>,
}

async fn sql_get(State(s): State<Arc<AppState>>, Query(p): Query<SqlParams>) -> Response {
    let Some(q) = p.q.or(p.sql) else {
        return error(StatusCode::BAD_REQUEST, "missing query: pass it as ?q=");
    };
    run_sql(s, q, p.format).await
}

async fn sql_post(
    State(s): State<Arc<AppState>>,
    Query(p): Query<SqlParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with("application/json"))
        .unwrap_or(body.first() == Some(&b'{'));
    let (q, format) = if is_json {
        match serde_json::from_slice::<SqlParams>(&body) {
            Ok(b) => (b.sql.or(b.q).or(p.q), b.format.or(p.format)),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    } else if !body.is_empty() {
        (Some(String::from_utf8_lossy(&body).into_owned()), p.format)
    } else {
        (p.q.or(p.sql), p.format)
    };
    let Some(q) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing query: send {\"sql\": \"...\"}",
        );
    };
    run_sql(s, q, format).await
}

async fn run_sql(s: Arc<AppState>, q: String, format: Option<String>) -> Response {
    let format = format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "jsonl" | "csv" | "arrow") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown format '{format}': use json, jsonl, csv or arrow"),
        );
    }
    s.metrics.queries.inc();
    let started = Instant::now();
    let result = s.engine.sql(&q).await;
    s.metrics
        .query_duration
        .observe(started.elapsed().as_secs_f64());
    let (schema, batches) = match result {
        Ok(r) => r,
        Err(e) => {
            s.metrics.query_errors.inc();
            let status = match e {
                vigil_sql::Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, e.to_string());
        }
    };
    match encode(&format, &schema, &batches) {
        Ok((ct, body)) => ([(header::CONTENT_TYPE, ct)], Body::from(body)).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding result: {e}"),
        ),
    }
}

fn encode(
    format: &str,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<(&'static str, Vec<u8>), arrow::error::ArrowError> {
    let mut out = Vec::new();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    match format {
        "json" => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut out);
            w.write_batches(&refs)?;
            w.finish()?;
            drop(w);
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            Ok(("application/json", out))
        }
        "jsonl" => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut out);
            w.write_batches(&refs)?;
            w.finish()?;
            drop(w);
            Ok(("application/jsonl", out))
        }
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                drop(w);
                out.extend_from_slice(names.join(",").as_bytes());
                out.push(b'\n');
                return Ok(("text/csv", out));
            }
            for b in batches {
                w.write(b)?;
            }
            drop(w);
            Ok(("text/csv", out))
        }
        _ => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            drop(w);
            Ok(("application/vnd.apache.arrow.stream", out))
        }
    }
}
