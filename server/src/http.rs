//! The HTTP API: InfluxDB-compatible writes, SQL, health and metrics.

use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use vigil_auth::{AuthError, Credentials, Permission, Principal, TokenStore};
use vigil_ingest::{now_nanos, Precision, WriteError, WriteFormat, WritePipeline, WriteReport};
use vigil_kafka::{ForwardBatch, KafkaForwarder};
use vigil_model::TableAccess;
use vigil_sql::{ErrorKind, QueryEngine};
use vigil_storage::Storage;

use crate::metrics::ServerMetrics;

pub(crate) struct AppState {
    pub storage: Arc<Storage>,
    pub tokens: Arc<TokenStore>,
    /// Serving without tokens on purpose (`--insecure`): no Host check either.
    pub insecure: bool,
    pub health: Arc<crate::health::Health>,
    pub pipeline: Arc<WritePipeline>,
    pub engine: Arc<QueryEngine>,
    pub metrics: Arc<ServerMetrics>,
    pub max_body_bytes: usize,
    /// Collector mode: writes go to Kafka instead of storage.
    pub forwarder: Option<Arc<KafkaForwarder>>,
    pub maintenance: Arc<vigil_cold_tier::Maintenance>,
    pub restores: Arc<crate::restore::RestoreJobs>,
    pub alerting: Arc<vigil_alert::Alerting>,
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
        .route("/api/v1/admin/maintenance", post(run_maintenance))
        .route(
            "/api/v1/admin/restore",
            post(crate::restore::start).get(crate::restore::list),
        )
        .route(
            "/api/v1/admin/restore/{id}",
            post(crate::restore::resume).delete(crate::restore::drop_restore),
        )
        .route("/api/v1/rules", get(rules_api))
        .route("/api/v1/alerts", get(alerts_api))
        .route("/api/v1/alerts/preview", post(preview_alerts))
        .route(
            "/api/v1/alerts/notifications/{key}",
            get(notification_outcome),
        )
        .route("/api/v2/silences", get(list_silences).post(post_silence))
        .route(
            "/api/v2/silence/{id}",
            get(get_silence).delete(expire_silence),
        )
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(raw_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .with_state(state)
}

/// What each path needs: writes `write`, SQL `query`; `/health` and `/ping` are
/// open (load balancers probe them); anything else needs a valid token.
fn required_permission(method: &axum::http::Method, path: &str) -> Option<Option<Permission>> {
    match path {
        // Silences: reading them is reading; making or ending one is admin.
        p if p.starts_with("/api/v2/silence") => Some(Some(if method == axum::http::Method::GET {
            Permission::Query
        } else {
            Permission::Admin
        })),
        "/health" | "/ping" => None,
        "/api/v3/write_lp" | "/api/v2/write" | "/write" | "/api/v1/write" => {
            Some(Some(Permission::Write))
        }
        p if p.starts_with("/api/v1/alerts/notifications/") => Some(Some(Permission::Query)),
        "/api/v1/sql"
        | "/api/v3/query_sql"
        | "/api/v1/rules"
        | "/api/v1/alerts"
        | "/api/v1/alerts/preview" => Some(Some(Permission::Query)),
        p if p.starts_with("/api/v1/admin/") => Some(Some(Permission::Admin)),
        _ => Some(None),
    }
}

#[derive(Debug, Deserialize)]
struct RulesParams {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Prometheus's `/api/v1/rules` (Grafana and tools read it), `type=alert|record`.
async fn rules_api(State(s): State<Arc<AppState>>, Query(p): Query<RulesParams>) -> Response {
    let only = match p.kind.as_deref() {
        None | Some("") => None,
        Some("alert") => Some(vigil_alert::rules::RuleKind::Alerting),
        Some("record") => Some(vigil_alert::rules::RuleKind::Recording),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("type must be alert or record, not {other:?}"),
            )
        }
    };
    Json(s.alerting.rules_api(only)).into_response()
}

/// Prometheus's `/api/v1/alerts`: pending and firing alerts.
async fn alerts_api(State(s): State<Arc<AppState>>) -> Response {
    Json(s.alerting.alerts_api()).into_response()
}

/// How the notification with this idempotency key ended on this node (peers
/// ask before sending, so only one node notifies); 404 if it did not.
async fn notification_outcome(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Response {
    let a = Arc::clone(&s.alerting);
    let found =
        tokio::task::spawn_blocking(move || a.store().delivery(&key).map(|d| (key, d))).await;
    let Ok(found) = found else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the delivery log failed",
        );
    };
    let (key, found) = match found {
        Ok(x) => (x.0, Ok(x.1)),
        Err(e) => (String::new(), Err(e)),
    };
    match found {
        Ok(Some(d)) => Json(serde_json::json!({
            "idempotency_key": d.idempotency_key,
            "outcome": d.outcome,
            "finished_at": d.finished_at,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no notification {key:?} finished here"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/v1/alerts/preview` with a rule file (YAML) as the body: what
/// its rules give now and the notifications they would send; nothing is sent.
async fn preview_alerts(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the rule file is not UTF-8");
    };
    match s.alerting.preview(text, &principal.tables).await {
        Ok(v) => Json(v).into_response(),
        Err(errors) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "invalid rule file",
                "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}

/// Alertmanager's v2 `GET /api/v2/silences`.
async fn list_silences(State(s): State<Arc<AppState>>) -> Response {
    let now = vigil_storage::retention::now_nanos();
    let list: Vec<serde_json::Value> = s
        .alerting
        .silences()
        .list()
        .iter()
        .map(|x| x.to_json(now))
        .collect();
    Json(list).into_response()
}

async fn get_silence(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match s.alerting.silences().get(&id) {
        Some(x) => Json(x.to_json(vigil_storage::retention::now_nanos())).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no silence {id}")),
    }
}

fn silence_error(e: vigil_alert::silences::SilenceError) -> Response {
    use vigil_alert::silences::SilenceError;
    let status = match &e {
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SilenceError::NotFound(_) => StatusCode::NOT_FOUND,
        SilenceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Alertmanager's v2 `POST /api/v2/silences`: creates (or, with `id`,
/// updates) a silence; answers `{"silenceID": ...}`.
async fn post_silence(State(s): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let posted: vigil_alert::silences::PostableSilence = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("silence: {e}")),
    };
    let alerting = Arc::clone(&s.alerting);
    let done = tokio::task::spawn_blocking(move || {
        alerting.silences().post(
            alerting.store(),
            posted,
            vigil_storage::retention::now_nanos(),
        )
    })
    .await;
    match done {
        Ok(Ok(id)) => Json(json!({ "silenceID": id })).into_response(),
        Ok(Err(e)) => silence_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Alertmanager's v2 `DELETE /api/v2/silence/{id}`: ends it now.
async fn expire_silence(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let alerting = Arc::clone(&s.alerting);
    let done = tokio::task::spawn_blocking(move || {
        alerting
            .silences()
            .expire(alerting.store(), &id, vigil_storage::retention::now_nanos())
    })
    .await;
    match done {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => silence_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs maintenance now (after a run in progress) and answers what it did; 500
/// when a step failed (the report says which, and what the other steps did).
async fn run_maintenance(State(s): State<Arc<AppState>>) -> Response {
    // In a task of its own: a client that hangs up does not cancel the run
    // halfway (it finishes, and is in system.maintenance).
    let maintenance = Arc::clone(&s.maintenance);
    let report = match tokio::spawn(async move { maintenance.run("request").await }).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("maintenance failed: {e}"),
            )
        }
    };
    let status = if report.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, Json(report)).into_response()
}

/// Host names a browser on this machine uses for a loopback server.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:8181`, `localhost:8181`; a bare `::1` has colons but no port.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The credentials of a request, as each kind of client sends them: `Authorization`
/// (`Bearer`, InfluxDB's `Token`, basic auth with the secret as password, as
/// Prometheus' `basic_auth` and Telegraf send it), or InfluxDB v1's `u`/`p`
/// parameters (the secret in `p`).
fn request_credentials(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Credentials>, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization is not ASCII".into()))?;
        return Ok(Some(match Credentials::from_authorization(v)? {
            // Over HTTP the secret alone names the token; clients put any user.
            Credentials::User(_, secret) => Credentials::Secret(secret),
            c => c,
        }));
    }
    let secret = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "p")
            .map(|(_, v)| v.into_owned())
    });
    Ok(secret.map(Credentials::Secret))
}

fn unauthorized(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut r = error(status, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"vigil\", Basic realm=\"vigil\""),
        );
    }
    r
}

/// Lets a request in (with its [`Principal`] in the request's extensions) or
/// answers 401/403. Without tokens every client is trusted, which is safe only for
/// loopback clients: then the `Host` header must name a loopback host, so that a web
/// page cannot reach vigil through DNS rebinding.
async fn authenticate(
    State(s): State<Arc<AppState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !s.tokens.enabled() && !s.insecure {
        if let Some(host) = req.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                s.metrics.auth_failures.inc();
                return error(
                    StatusCode::FORBIDDEN,
                    format!("Host '{}' is not a loopback name: without authentication vigil only answers requests addressed to localhost (configure [[auth.tokens]] to serve other hosts)", host.chars().take(100).collect::<String>()),
                );
            }
        }
    }
    let Some(needed) = required_permission(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let principal = request_credentials(req.headers(), req.uri().query())
        .and_then(|c| s.tokens.authenticate(c.as_ref()))
        .and_then(|p| match needed {
            Some(n) => p.require(n).map(|_| p),
            None => Ok(p),
        });
    match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            s.metrics.auth_failures.inc();
            unauthorized(&e)
        }
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    s.health.sync_storage(&s.storage.problems());
    let status = if s.health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(s.health.report())).into_response()
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
    Extension(principal): Extension<Arc<Principal>>,
    Query(p): Query<WriteParams>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let _db = p.db.or(p.bucket);
    let precision: Precision = match p.precision.as_deref().unwrap_or("ns").parse() {
        Ok(p) => p,
        Err(e) => {
            s.metrics.write_requests.inc();
            s.metrics.write_errors.inc();
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    write(s, &principal, h, body, WriteFormat::LineProtocol(precision)).await
}

/// Prometheus remote write (`POST /api/v1/write`, snappy protobuf): each metric is a
/// table with its labels as tags and a `value` field. Series that cannot be stored
/// (no `__name__`, a label named like a column) are rejected one by one (400 names
/// them); Prometheus does not retry a 4xx, so the rest is stored regardless.
async fn remote_write(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(s, &principal, headers, body, WriteFormat::RemoteWrite).await
}

fn is_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().eq_ignore_ascii_case("gzip"))
        .unwrap_or(false)
}

/// Every write endpoint: the write pipeline stores the body (or, in collector mode,
/// checks it and hands it to Kafka) and the reply reports it line by line.
async fn write(
    s: Arc<AppState>,
    principal: &Principal,
    headers: HeaderMap,
    body: Bytes,
    format: WriteFormat,
) -> Response {
    s.metrics.write_requests.inc();
    s.metrics.bytes_received.inc_by(body.len() as u64);
    let gzip = is_gzip(&headers);
    let access = principal.tables.clone();
    let result = match &s.forwarder {
        None => {
            s.pipeline
                .write(body, gzip, format, now_nanos(), access)
                .await
        }
        Some(f) => forward(&s.pipeline, f, body, gzip, format, access).await,
    };
    match result {
        Ok(report) => write_reply(&s, report),
        Err(e) => {
            s.metrics.write_errors.inc();
            s.metrics.count_refused_write(&e);
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                tracing::warn!(error = %e, "write refused");
            }
            let mut r = error(status, e.to_string());
            if matches!(e, WriteError::Backpressure) {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            r
        }
    }
}

/// Collector mode: the body is parsed and checked under the same limits, then
/// produced to Kafka (the storage nodes check column types); acknowledged once
/// Kafka has it.
async fn forward(
    pipeline: &Arc<WritePipeline>,
    forwarder: &Arc<KafkaForwarder>,
    body: Bytes,
    gzip: bool,
    format: WriteFormat,
    access: TableAccess,
) -> Result<WriteReport, WriteError> {
    let p = Arc::clone(pipeline);
    let prepared = tokio::task::spawn_blocking(move || {
        let body = p.decode_body(&body, gzip)?;
        p.parse_with(&body, format, now_nanos(), &access, |parsed| {
            let accepted = parsed.points.len();
            let batch = match parsed.request {
                // Forwarded as remote write (so NaN and every float survive),
                // without the series that cannot be stored.
                Some(request) => {
                    let bad: std::collections::HashSet<usize> =
                        parsed.errors.iter().map(|e| e.line).collect();
                    ForwardBatch::remote_write(request.to_request(&bad))
                }
                None => ForwardBatch::line_protocol(&parsed.points),
            };
            let report = p.report(
                parsed.lines,
                accepted,
                parsed.error_count,
                parsed.errors,
                parsed.text,
            );
            (batch, report)
        })
    })
    .await??;
    let (batch, report) = prepared;
    forwarder.send(batch).await.map_err(|e| {
        tracing::error!(error = %e, "write not acknowledged by Kafka");
        WriteError::Backpressure
    })?;
    Ok(report)
}

/// The reply to a write: 204, or 400 naming the first rejected lines (the count
/// says how many there were in all).
fn write_reply(s: &AppState, report: WriteReport) -> Response {
    s.metrics.rows_written.inc_by(report.accepted as u64);
    if report.rejected == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    s.metrics.lines_rejected.inc_by(report.rejected as u64);
    let shown = report.errors.len();
    let mut message = format!(
        "partial write: {} of {} lines rejected",
        report.rejected, report.lines
    );
    if shown < report.rejected {
        message.push_str(&format!(" (the first {shown} are listed)"));
    }
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": message,
            "lines_written": report.accepted,
            "lines_rejected": report.rejected,
            "data": report.errors,
        })),
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
struct SqlParams {
    q: Option<String>,
    sql: Option<String>,
    format: Option<String>,
}

async fn sql_get(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Query(p): Query<SqlParams>,
) -> Response {
    let Some(q) = p.q.or(p.sql) else {
        return error(StatusCode::BAD_REQUEST, "missing query: pass it as ?q=");
    };
    run_sql(s, &principal, q, p.format).await
}

async fn sql_post(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
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
    run_sql(s, &principal, q, format).await
}

async fn run_sql(
    s: Arc<AppState>,
    principal: &Principal,
    q: String,
    format: Option<String>,
) -> Response {
    let format = match format.as_deref().unwrap_or("json") {
        "json" => ResultFormat::Json,
        "jsonl" => ResultFormat::JsonLines,
        "csv" => ResultFormat::Csv,
        "arrow" => ResultFormat::Arrow,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown format '{other}': use json, jsonl, csv or arrow"),
            )
        }
    };
    s.metrics.queries.inc();
    let started = Instant::now();
    let planned = match s.engine.plan(&q, None, &principal.tables).await {
        Ok(p) => p,
        Err(e) => return query_failed(&s, e),
    };
    let schema = planned.schema();
    let mut batches = match s.engine.execute(planned) {
        Ok(b) => b,
        Err(e) => return query_failed(&s, e),
    };
    // The first batch is awaited before the status is sent, so that a query failing
    // at once (memory, timeout, a bad cast) gets an error status, not a cut body.
    let first = match batches.next().await {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return query_failed(&s, e.into()),
        None => None,
    };
    s.metrics
        .query_duration
        .observe(started.elapsed().as_secs_f64());
    let mut encoder = match ResultEncoder::new(format, &schema) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding result: {e}"),
            )
        }
    };
    let content_type = format.content_type();
    let rest = futures::stream::iter(first.map(Ok)).chain(batches);
    // Each batch is encoded as it arrives; an error after the first batch ends the
    // body abruptly (the client sees a broken transfer, never a truncated result
    // that looks whole).
    let metrics = Arc::clone(&s.metrics);
    let body = futures::stream::unfold(
        (Box::pin(rest), Some(encoder.take()), encoder, false),
        move |(mut rest, mut pending, mut encoder, finished)| {
            let metrics = Arc::clone(&metrics);
            async move {
                if let Some(bytes) = pending.take() {
                    if !bytes.is_empty() {
                        return Some((Ok(bytes), (rest, None, encoder, finished)));
                    }
                }
                if finished {
                    return None;
                }
                match rest.next().await {
                    Some(Ok(batch)) => {
                        let out = encoder.write(&batch).map_err(std::io::Error::other);
                        let finished = out.is_err();
                        Some((out, (rest, None, encoder, finished)))
                    }
                    Some(Err(e)) => {
                        metrics.query_errors.inc();
                        tracing::warn!(error = %e, "query failed while streaming its result");
                        Some((
                            Err(std::io::Error::other(e.to_string())),
                            (rest, None, encoder, true),
                        ))
                    }
                    None => {
                        let out = encoder.finish().map_err(std::io::Error::other);
                        Some((out, (rest, None, encoder, true)))
                    }
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

fn query_failed(s: &AppState, e: vigil_sql::Error) -> Response {
    s.metrics.query_errors.inc();
    // 503 (with Retry-After) for what passes with time; 504 for a query that ran
    // past its deadline (408 would blame the client's upload).
    let status = match e.kind() {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::ReadOnly | ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Busy | ErrorKind::ResourcesExhausted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = error(status, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultFormat {
    Json,
    JsonLines,
    Csv,
    Arrow,
}

impl ResultFormat {
    fn content_type(self) -> &'static str {
        match self {
            ResultFormat::Json => "application/json",
            ResultFormat::JsonLines => "application/jsonl",
            ResultFormat::Csv => "text/csv",
            ResultFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Encodes a result batch by batch, so that the server holds one batch's worth of
/// output at a time whatever the size of the result.
enum ResultEncoder {
    Json { rows: usize },
    JsonLines,
    Csv { header: Option<Vec<u8>> },
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl ResultEncoder {
    fn new(
        format: ResultFormat,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Self, arrow::error::ArrowError> {
        Ok(match format {
            ResultFormat::Json => ResultEncoder::Json { rows: 0 },
            ResultFormat::JsonLines => ResultEncoder::JsonLines,
            ResultFormat::Csv => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                let mut header = Vec::new();
                let mut w = arrow::csv::WriterBuilder::new().build(&mut header);
                // The header row alone, quoted as the writer quotes values.
                let empty = arrow::record_batch::RecordBatch::try_new(
                    Arc::new(arrow::datatypes::Schema::new(
                        names
                            .iter()
                            .map(|n| {
                                arrow::datatypes::Field::new(
                                    *n,
                                    arrow::datatypes::DataType::Utf8,
                                    true,
                                )
                            })
                            .collect::<Vec<_>>(),
                    )),
                    names
                        .iter()
                        .map(|_| {
                            Arc::new(arrow::array::StringArray::from(Vec::<Option<&str>>::new()))
                                as _
                        })
                        .collect(),
                )?;
                w.write(&empty)?;
                drop(w);
                ResultEncoder::Csv {
                    header: Some(header),
                }
            }
            ResultFormat::Arrow => ResultEncoder::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?,
            )),
        })
    }

    /// Bytes ready before any batch (the Arrow schema message).
    fn take(&mut self) -> Bytes {
        match self {
            ResultEncoder::Arrow(w) => Bytes::from(std::mem::take(w.get_mut())),
            _ => Bytes::new(),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<Bytes, arrow::error::ArrowError> {
        match self {
            ResultEncoder::Json { rows } => {
                if batch.num_rows() == 0 {
                    return Ok(Bytes::new());
                }
                let mut out = Vec::new();
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::JsonArray>(&mut out);
                w.write(batch)?;
                w.finish()?;
                drop(w);
                // `[{..},{..}]` per batch: joined into one array across batches.
                let inner = &out[1..out.len() - 1];
                let mut chunk = Vec::with_capacity(inner.len() + 1);
                chunk.push(if *rows == 0 { b'[' } else { b',' });
                chunk.extend_from_slice(inner);
                *rows += batch.num_rows();
                Ok(Bytes::from(chunk))
            }
            ResultEncoder::JsonLines => {
                let mut out = Vec::new();
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut out);
                w.write(batch)?;
                w.finish()?;
                drop(w);
                Ok(Bytes::from(out))
            }
            ResultEncoder::Csv { header } => {
                let mut out = header.take().unwrap_or_default();
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut out);
                w.write(batch)?;
                drop(w);
                Ok(Bytes::from(out))
            }
            ResultEncoder::Arrow(w) => {
                w.write(batch)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }

    fn finish(&mut self) -> Result<Bytes, arrow::error::ArrowError> {
        match self {
            ResultEncoder::Json { rows } => {
                Ok(Bytes::from_static(if *rows == 0 { b"[]" } else { b"]" }))
            }
            ResultEncoder::JsonLines => Ok(Bytes::new()),
            ResultEncoder::Csv { header } => Ok(Bytes::from(header.take().unwrap_or_default())),
            ResultEncoder::Arrow(w) => {
                w.finish()?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }
}
