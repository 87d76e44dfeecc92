//! Alert state as SQL tables (`system.alerts`, `system.rules`,
//! `system.alert_history`) and as Prometheus's `/api/v1/rules` and
//! `/api/v1/alerts` JSON.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use crate::notify::rfc3339;
use crate::rules::RuleKind;
use crate::store::AlertState;
use crate::Alerting;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn times(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter(v).with_timezone("UTC"))
}

fn strings<S: AsRef<str>>(v: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}

impl Alerting {
    pub fn alerts_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("rule", DataType::Utf8, false),
            Field::new("alertname", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
            Field::new("annotations", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("active_at", ts(), false),
            Field::new("fired_at", ts(), true),
            Field::new("resolved_at", ts(), true),
            Field::new("last_evaluation", ts(), false),
        ]))
    }

    /// `system.alerts`: every pending, firing and recently resolved alert;
    /// `labels` and `annotations` as JSON objects.
    pub fn alerts_batch(&self) -> Result<RecordBatch, ArrowError> {
        let a = self.alerts();
        RecordBatch::try_new(
            Self::alerts_schema(),
            vec![
                strings(a.iter().map(|a| Some(&a.rule))),
                strings(
                    a.iter()
                        .map(|a| Some(a.labels.get("alertname").cloned().unwrap_or_default())),
                ),
                strings(a.iter().map(|a| Some(Self::labels_text(&a.labels)))),
                strings(a.iter().map(|a| Some(Self::labels_text(&a.annotations)))),
                strings(a.iter().map(|a| Some(a.state.as_str()))),
                Arc::new(Float64Array::from_iter_values(a.iter().map(|a| a.value))),
                times(a.iter().map(|a| Some(a.active_at))),
                times(a.iter().map(|a| a.fired_at)),
                times(a.iter().map(|a| a.resolved_at)),
                times(a.iter().map(|a| Some(a.last_eval))),
            ],
        )
    }

    pub fn rules_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("group_name", DataType::Utf8, false),
            Field::new("rule", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("file", DataType::Utf8, false),
            Field::new("sql", DataType::Utf8, false),
            Field::new("interval_seconds", DataType::Float64, false),
            Field::new("health", DataType::Utf8, false),
            Field::new("last_error", DataType::Utf8, true),
            Field::new("last_evaluation", ts(), true),
            Field::new("evaluation_seconds", DataType::Float64, true),
            Field::new("rows", DataType::UInt64, true),
        ]))
    }

    /// `system.rules`: every rule and its last evaluation.
    pub fn rules_batch(&self) -> Result<RecordBatch, ArrowError> {
        let groups = self.groups();
        let statuses = self.statuses();
        let rows: Vec<_> = groups
            .iter()
            .flat_map(|g| g.rules.iter().map(move |r| (g, r)))
            .collect();
        let st = |k: &str| statuses.get(k);
        RecordBatch::try_new(
            Self::rules_schema(),
            vec![
                strings(rows.iter().map(|(g, _)| Some(&g.name))),
                strings(rows.iter().map(|(_, r)| Some(&r.name))),
                strings(rows.iter().map(|(_, r)| Some(kind(r.kind)))),
                strings(rows.iter().map(|(g, _)| Some(g.file.display().to_string()))),
                strings(rows.iter().map(|(_, r)| Some(&r.sql))),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|(g, _)| g.interval.as_secs_f64()),
                )),
                strings(
                    rows.iter()
                        .map(|(_, r)| Some(st(&r.key).map_or("unknown", |s| s.health))),
                ),
                strings(
                    rows.iter()
                        .map(|(_, r)| st(&r.key).and_then(|s| s.last_error.clone())),
                ),
                times(
                    rows.iter()
                        .map(|(_, r)| st(&r.key).and_then(|s| s.last_eval)),
                ),
                Arc::new(Float64Array::from_iter(
                    rows.iter()
                        .map(|(_, r)| st(&r.key).map(|s| s.duration.as_secs_f64())),
                )),
                Arc::new(UInt64Array::from_iter(
                    rows.iter().map(|(_, r)| st(&r.key).map(|s| s.rows as u64)),
                )),
            ],
        )
    }

    pub fn history_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("time", ts(), false),
            Field::new("rule", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
            Field::new("from_state", DataType::Utf8, false),
            Field::new("to_state", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
        ]))
    }

    /// `system.alert_history`: the last state changes (up to 100,000).
    pub fn history_batch(&self) -> Result<RecordBatch, ArrowError> {
        let h = self
            .history(crate::store::HISTORY_LIMIT as usize)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        RecordBatch::try_new(
            Self::history_schema(),
            vec![
                times(h.iter().map(|e| Some(e.time))),
                strings(h.iter().map(|e| Some(&e.rule))),
                strings(h.iter().map(|e| Some(Self::labels_text(&e.labels)))),
                strings(h.iter().map(|e| Some(&e.from))),
                strings(h.iter().map(|e| Some(&e.to))),
                Arc::new(Float64Array::from_iter_values(h.iter().map(|e| e.value))),
            ],
        )
    }

    pub fn notifications_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("idempotency_key", DataType::Utf8, false),
            Field::new("receiver", DataType::Utf8, false),
            Field::new("group_key", DataType::Utf8, false),
            Field::new("endpoint", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("alerts", DataType::UInt64, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("attempts", DataType::UInt64, false),
            Field::new("enqueued_at", ts(), false),
            Field::new("next_attempt", ts(), true),
            Field::new("finished_at", ts(), true),
            Field::new("last_error", DataType::Utf8, true),
        ]))
    }

    /// `system.notifications`: the outbox (`queued`, `retrying`) and the
    /// delivery log (`delivered`, `dropped`, `dead`, `sent_by_peer`) of the
    /// last 120 hours. Endpoint URLs are not shown: they are often secrets.
    pub fn notifications_batch(&self) -> Result<RecordBatch, ArrowError> {
        let store = &self.evaluator.store;
        let ext = |e: crate::AlertError| ArrowError::ExternalError(Box::new(e));
        let outbox = store.outbox().map_err(ext)?;
        let mut rows: Vec<crate::store::Delivery> = store.deliveries().map_err(ext)?;
        let mut next: Vec<Option<i64>> = vec![None; rows.len()];
        for (_, n) in &outbox {
            let state = if n.attempts == 0 {
                "queued"
            } else {
                "retrying"
            };
            let mut d = n.finished(state, 0, None);
            d.finished_at = i64::MIN;
            rows.push(d);
            next.push(Some(n.next_attempt));
        }
        RecordBatch::try_new(
            Self::notifications_schema(),
            vec![
                strings(rows.iter().map(|d| Some(&d.idempotency_key))),
                strings(rows.iter().map(|d| Some(&d.receiver))),
                strings(rows.iter().map(|d| Some(&d.group_key))),
                strings(rows.iter().map(|d| Some(&d.endpoint))),
                strings(rows.iter().map(|d| Some(&d.status))),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|d| d.alerts as u64),
                )),
                strings(rows.iter().map(|d| Some(&d.outcome))),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|d| u64::from(d.attempts)),
                )),
                times(rows.iter().map(|d| Some(d.enqueued_at))),
                times(next),
                times(
                    rows.iter()
                        .map(|d| (d.finished_at != i64::MIN).then_some(d.finished_at)),
                ),
                strings(rows.iter().map(|d| d.last_error.as_deref())),
            ],
        )
    }

    fn alert_api_json(a: &crate::AlertInstance) -> Value {
        json!({
            "labels": a.labels,
            "annotations": a.annotations,
            "state": match a.state { AlertState::Resolved => "inactive", s => s.as_str() },
            "activeAt": rfc3339(a.active_at),
            "value": vigil_rules::template::go_exponent(a.value),
        })
    }

    /// Prometheus's `GET /api/v1/alerts`.
    pub fn alerts_api(&self) -> Value {
        let alerts: Vec<Value> = self
            .alerts()
            .iter()
            .filter(|a| a.state != AlertState::Resolved)
            .map(Self::alert_api_json)
            .collect();
        json!({ "status": "success", "data": { "alerts": alerts } })
    }

    /// Prometheus's `GET /api/v1/rules` (`type=alert|record` filters).
    pub fn rules_api(&self, only: Option<RuleKind>) -> Value {
        let alerts = self.alerts();
        let statuses = self.statuses();
        let groups: Vec<Value> = self
            .groups()
            .iter()
            // With a type filter, groups with none of that type are left out.
            .filter(|g| only.is_none_or(|k| g.rules.iter().any(|r| r.kind == k)))
            .map(|g| {
                let mut last: Option<i64> = None;
                let mut took = 0.0;
                let rules: Vec<Value> = g
                    .rules
                    .iter()
                    .filter(|r| only.is_none_or(|k| k == r.kind))
                    .map(|r| {
                        let s = statuses.get(&r.key);
                        if let Some(s) = s {
                            last = last.max(s.last_eval);
                            took += s.duration.as_secs_f64();
                        }
                        let labels: serde_json::Map<String, Value> = r
                            .labels
                            .iter()
                            .map(|(k, _, text)| (k.clone(), Value::from(text.clone())))
                            .collect();
                        let mut v = json!({
                            "name": r.name,
                            "query": r.sql,
                            "labels": labels,
                            "health": s.map_or("unknown", |s| s.health),
                            "lastError": s.and_then(|s| s.last_error.clone()).unwrap_or_default(),
                            "evaluationTime": s.map_or(0.0, |s| s.duration.as_secs_f64()),
                            "lastEvaluation": s.and_then(|s| s.last_eval).map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
                            "type": match r.kind { RuleKind::Alerting => "alerting", RuleKind::Recording => "recording" },
                        });
                        if r.kind == RuleKind::Alerting {
                            let mine: Vec<_> = alerts
                                .iter()
                                .filter(|a| a.rule == r.key && a.state != AlertState::Resolved)
                                .collect();
                            let state = if mine.iter().any(|a| a.state == AlertState::Firing) {
                                "firing"
                            } else if mine.is_empty() {
                                "inactive"
                            } else {
                                "pending"
                            };
                            let annotations: serde_json::Map<String, Value> = r
                                .annotations
                                .iter()
                                .map(|(k, _, text)| (k.clone(), Value::from(text.clone())))
                                .collect();
                            v["state"] = state.into();
                            v["duration"] = r.for_.as_secs_f64().into();
                            v["keepFiringFor"] = r.keep_firing_for.as_secs_f64().into();
                            v["annotations"] = Value::Object(annotations);
                            v["alerts"] = mine.into_iter().map(Self::alert_api_json).collect();
                        }
                        v
                    })
                    .collect();
                json!({
                    "name": g.name,
                    "file": g.file.display().to_string(),
                    "interval": g.interval.as_secs_f64(),
                    "limit": g.limit,
                    "rules": rules,
                    "evaluationTime": took,
                    "lastEvaluation": last.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
                })
            })
            .collect();
        let mut data = json!({ "groups": groups });
        if let Some(e) = self.last_reload_error() {
            data["reloadError"] = e.into();
        }
        json!({ "status": "success", "data": data })
    }
}

fn kind(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Alerting => "alerting",
        RuleKind::Recording => "recording",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_as_prometheus_writes_them() {
        assert_eq!(vigil_rules::template::go_exponent(95.0), "9.5e+01");
        assert_eq!(vigil_rules::template::go_exponent(0.001234), "1.234e-03");
        assert_eq!(vigil_rules::template::go_exponent(1e100), "1e+100");
        assert_eq!(
            vigil_rules::template::go_exponent(f64::NEG_INFINITY),
            "-Inf"
        );
        assert_eq!(vigil_rules::template::go_exponent(f64::NAN), "NaN");
    }
}
