//! Restores of archived data over HTTP (`/api/v1/admin/restore`, admin only):
//! started, listed, resumed and dropped. A restore runs in a task of the server,
//! not of the request: a client that hangs up (or `vigil restore` stopped with
//! Ctrl-C) leaves it running, and a server stopped halfway carries on at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};
use vigil_auth::Principal;
use vigil_storage::archive::Restore;
use vigil_storage::Storage;

use crate::http::AppState;

/// The restores this server runs, and how the last run of each ended.
#[derive(Debug, Default)]
pub(crate) struct RestoreJobs {
    running: Mutex<HashMap<u64, ()>>,
    errors: Mutex<HashMap<u64, String>>,
}

impl RestoreJobs {
    /// Runs restore `id` in a task of its own, unless it is running already.
    pub(crate) fn spawn(self: &Arc<Self>, storage: &Arc<Storage>, id: u64) {
        if self.running.lock().insert(id, ()).is_some() {
            return;
        }
        self.errors.lock().remove(&id);
        let jobs = Arc::clone(self);
        let storage = Arc::clone(storage);
        tokio::spawn(async move {
            let out = storage.run_restore(id, |_| {}).await;
            // The error first: a poll in between must not see a stop without it.
            if let Err(e) = out {
                warn!(restore = id, error = %e, "restore stopped");
                jobs.errors.lock().insert(id, e.to_string());
            }
            jobs.running.lock().remove(&id);
        });
    }

    /// Carries on with the restores a stop interrupted.
    pub(crate) fn resume_all(self: &Arc<Self>, storage: &Arc<Storage>) {
        for r in storage.restores().into_iter().filter(|r| !r.complete()) {
            info!(
                restore = r.id,
                table = r.table,
                "resuming an interrupted restore"
            );
            self.spawn(storage, r.id);
        }
    }

    fn view(&self, r: &Restore) -> Value {
        let state = if r.complete() {
            "complete"
        } else if self.running.lock().contains_key(&r.id) {
            "running"
        } else if self.errors.lock().contains_key(&r.id) {
            "failed"
        } else {
            "stopped"
        };
        json!({
            "id": r.id,
            "table": r.table,
            "from": rfc3339(r.from),
            "to": rfc3339(r.to),
            "files": r.files.len(),
            "files_done": r.done.len(),
            "bytes": r.bytes,
            "bytes_done": r.bytes_done,
            "state": state,
            "error": self.errors.lock().get(&r.id),
            "created": rfc3339(r.created),
        })
    }
}

fn rfc3339(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// An RFC 3339 time (`2026-01-01T00:00:00Z`), a date (`2026-01-01`, midnight UTC)
/// or nanoseconds since the epoch.
fn parse_time(what: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("'{what}' must be whole nanoseconds, got {n}")),
        Value::String(s) => {
            let s = s.trim();
            let full = if s.len() == 10 {
                format!("{s}T00:00:00Z")
            } else {
                s.to_string()
            };
            let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
                format!(
                    "'{what}' is not a time like 2026-01-01T00:00:00Z or 2026-01-01: '{s}' ({e})"
                )
            })?;
            let ns = t
                .duration_since(UNIX_EPOCH)
                .map_err(|_| format!("'{what}' is before 1970: '{s}'"))?
                .as_nanos();
            i64::try_from(ns).map_err(|_| format!("'{what}' is too far in the future: '{s}'"))
        }
        _ => Err(format!(
            "'{what}' is missing (a time like 2026-01-01T00:00:00Z)"
        )),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RestoreRequest {
    table: String,
    #[serde(default)]
    from: Value,
    #[serde(default)]
    to: Value,
}

/// A token scoped to other tables may not restore (or see restores of) this one.
fn forbidden(table: &str) -> Response {
    error(
        StatusCode::FORBIDDEN,
        format!("this token may not read table '{table}'"),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// `POST /api/v1/admin/restore`: starts restoring `table` in `[from, to)`; 202
/// with the restore (follow it with `GET`).
pub(crate) async fn start(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    body: Result<Json<RestoreRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("restore wants a JSON body {{\"table\", \"from\", \"to\"}}: {e}"),
            )
        }
    };
    if !principal.tables.allows(&req.table) {
        return forbidden(&req.table);
    }
    let (from, to) = match (parse_time("from", &req.from), parse_time("to", &req.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.storage.start_restore(&req.table, from, to) {
        Ok(r) => {
            s.restores.spawn(&s.storage, r.id);
            (StatusCode::ACCEPTED, Json(s.restores.view(&r))).into_response()
        }
        Err(e @ vigil_storage::Error::Restore { .. }) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/admin/restore`: every restore with its progress.
pub(crate) async fn list(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Response {
    let all: Vec<Value> = s
        .storage
        .restores()
        .iter()
        .filter(|r| principal.tables.allows(&r.table))
        .map(|r| s.restores.view(r))
        .collect();
    Json(json!({ "restores": all })).into_response()
}

/// `POST /api/v1/admin/restore/{id}`: runs a stopped restore again.
pub(crate) async fn resume(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<u64>,
) -> Response {
    match s.storage.restores().into_iter().find(|r| r.id == id) {
        Some(r) if !principal.tables.allows(&r.table) => forbidden(&r.table),
        Some(r) => {
            if !r.complete() {
                s.restores.spawn(&s.storage, id);
            }
            (StatusCode::ACCEPTED, Json(s.restores.view(&r))).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("there is no restore {id}")),
    }
}

/// `DELETE /api/v1/admin/restore/{id}`: undoes a restore.
pub(crate) async fn drop_restore(
    State(s): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<u64>,
) -> Response {
    if let Some(r) = s.storage.restores().into_iter().find(|r| r.id == id) {
        if !principal.tables.allows(&r.table) {
            return forbidden(&r.table);
        }
    }
    match s.storage.drop_restore(id).await {
        Ok(files) => Json(json!({"id": id, "files_removed": files})).into_response(),
        Err(e @ vigil_storage::Error::Restore { .. }) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_or_say_what_is_wrong() {
        let v = |s: &str| Value::String(s.into());
        assert_eq!(
            parse_time("from", &v("1970-01-02")).unwrap(),
            86_400_000_000_000
        );
        assert_eq!(
            parse_time("from", &v("1970-01-01T00:00:01Z")).unwrap(),
            1_000_000_000
        );
        assert_eq!(parse_time("to", &json!(5)).unwrap(), 5);
        let e = parse_time("to", &v("yesterday")).unwrap_err();
        assert!(e.contains("'to'") && e.contains("yesterday"), "{e}");
        assert!(parse_time("from", &Value::Null)
            .unwrap_err()
            .contains("missing"));
        assert!(parse_time("from", &json!(1.5)).is_err());
    }
}
