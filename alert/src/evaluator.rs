//! The rule evaluator: each group on its own schedule (aligned to its
//! interval), its rules in order, each query through the one query path with
//! `now()` at the evaluation time (tick minus `query_offset`), and the alert
//! state machine inactive → pending → firing → resolved.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use futures::TryStreamExt;
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};
use vigil_ingest::WritePipeline;
use vigil_model::{FieldValue, Point, TableAccess};
use vigil_sql::QueryEngine;

use crate::routing::Routing;
use crate::rules::{ErrorState, NoDataState, Rule, RuleGroup, RuleKind};
use crate::store::{AlertInstance, AlertState, AlertStore, Changes, GroupState, HistoryEvent};
use crate::template::Data;
use crate::AlertError;

/// Alerts one rule may have when its group sets no `limit`.
pub const DEFAULT_MAX_ALERTS: usize = 10_000;

/// A resolved alert is kept this long (Prometheus keeps them 15 minutes), so
/// its group can tell the receiver it ended.
pub(crate) const RESOLVED_RETENTION: i64 = 15 * 60 * 1_000_000_000;

/// The last evaluation of a rule.
#[derive(Debug, Clone, Default)]
pub struct RuleStatus {
    pub health: &'static str,
    pub last_error: Option<String>,
    pub last_eval: Option<i64>,
    pub duration: Duration,
    pub rows: usize,
}

/// What one evaluation of an alerting rule found.
pub(crate) struct Outcome {
    /// The instances that hold: labels (before the rule's) and value.
    active: Vec<Sample>,
    /// Instances not in `active` keep their state (the query failed).
    keep_current: bool,
    /// The query's error, as an annotation of the `error` alert.
    error: Option<String>,
}

/// Rows of a rule's query: labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

pub struct Evaluator {
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) pipeline: Arc<WritePipeline>,
    pub(crate) store: Arc<AlertStore>,
    /// Instances by rule key, then fingerprint; written only together with
    /// the store (under this lock), so the two agree.
    pub(crate) instances: Mutex<HashMap<String, HashMap<u64, AlertInstance>>>,
    pub(crate) groups: RwLock<Arc<Vec<RuleGroup>>>,
    pub(crate) statuses: Mutex<HashMap<String, RuleStatus>>,
    pub(crate) routing: RwLock<Option<Arc<Routing>>>,
    pub(crate) silences: crate::silences::Silences,
    pub(crate) eval_timeout: Duration,
    /// The aggregation groups by id (receiver and group key), as stored.
    pub(crate) group_states: Mutex<HashMap<String, GroupState>>,
    pub(crate) wake_dispatcher: tokio::sync::Notify,
    /// Woken when alerts change state, so a group with no `group_wait` is
    /// sent at once.
    pub(crate) wake_flusher: tokio::sync::Notify,
    pub(crate) peers: crate::Peers,
    pub(crate) give_up_after: Duration,
    pub(crate) queue: Option<crate::queue::QueueProducer>,
    pub(crate) metrics: crate::AlertMetrics,
}

/// The rows of a query result as alert samples: text columns are labels (NULL:
/// no label), the `value` column the value.
pub fn samples(batches: &[arrow::record_batch::RecordBatch]) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let Some((vi, _)) = schema.column_with_name("value") else {
            return Err(format!(
                "the query returns no `value` column (columns: {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let values = cast(b.column(vi), &DataType::Float64)
            .map_err(|e| format!("the `value` column is not a number: {e}"))?;
        let values = values.as_primitive::<Float64Type>();
        let mut labels = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if i == vi {
                continue;
            }
            let text = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
                DataType::Dictionary(_, v) => {
                    matches!(
                        **v,
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                }
                _ => false,
            };
            if text {
                let col = cast(b.column(i), &DataType::Utf8).map_err(|e| e.to_string())?;
                labels.push((f.name().clone(), col));
            }
        }
        for row in 0..b.num_rows() {
            let mut l = BTreeMap::new();
            for (name, col) in &labels {
                let s = col.as_string::<i32>();
                if !s.is_null(row) && !s.value(row).is_empty() {
                    l.insert(name.clone(), s.value(row).to_string());
                }
            }
            let v = if values.is_null(row) {
                f64::NAN
            } else {
                values.value(row)
            };
            out.push((l, v));
        }
    }
    Ok(out)
}

impl Evaluator {
    /// Runs a rule's query as of `at` (nanoseconds).
    pub async fn query(&self, rule: &Rule, at: i64) -> Result<Vec<Sample>, String> {
        self.query_as(rule, at, &TableAccess::all()).await
    }

    /// As [`Evaluator::query`], reading only the tables `access` allows (a
    /// preview runs with the caller's token).
    pub async fn query_as(
        &self,
        rule: &Rule,
        at: i64,
        access: &TableAccess,
    ) -> Result<Vec<Sample>, String> {
        let planned = self
            .engine
            .plan_at(&rule.sql, at, access)
            .await
            .map_err(|e| e.to_string())?;
        let stream = self.engine.execute(planned).map_err(|e| e.to_string())?;
        let batches: Vec<_> = stream.try_collect().await.map_err(|e| e.to_string())?;
        samples(&batches)
    }

    /// Evaluates one rule at `at` and commits what changed.
    pub async fn evaluate(self: &Arc<Self>, group: &RuleGroup, rule: &Rule, at: i64) {
        let started = Instant::now();
        let timeout = self
            .eval_timeout
            .min(group.interval.max(Duration::from_secs(1)));
        let result = match tokio::time::timeout(timeout, self.query(rule, at)).await {
            Ok(r) => r,
            Err(_) => Err(format!("evaluation timed out after {timeout:?}")),
        };
        let result = result.and_then(|rows| {
            if group.limit > 0 && rows.len() > group.limit {
                return Err(format!("{} rows, over the group's limit of {}", rows.len(), group.limit));
            }
            // A query that forgot its GROUP BY would make an alert per row:
            // without a limit of its own, a group stops at this many.
            if group.limit == 0 && rule.kind == RuleKind::Alerting && rows.len() > DEFAULT_MAX_ALERTS {
                return Err(format!(
                    "{} rows: more than {DEFAULT_MAX_ALERTS} alerts from one rule (set the group's `limit` to allow more)",
                    rows.len()
                ));
            }
            // Equal labels once the rule's labels are applied (they may
            // override a column) would be one alert: an error of the rule.
            let mut seen = std::collections::HashSet::new();
            for (row, value) in &rows {
                let labels = Self::final_labels(rule, row, *value);
                if !seen.insert(crate::store::fingerprint(&labels)) {
                    return Err(format!(
                        "two rows have the same labels {labels:?}: add a column that tells them apart"
                    ));
                }
            }
            Ok(rows)
        });
        self.metrics.evaluations.inc();
        let rows = result.as_ref().map_or(0, |r| r.len());
        let mut error = result.as_ref().err().cloned();
        match rule.kind {
            RuleKind::Alerting => {
                if let Err(e) = self.update_alerts(rule, at, result).await {
                    error = Some(e.to_string());
                }
            }
            RuleKind::Recording => {
                if let Ok(rows) = result {
                    if let Err(e) = self.record(rule, at, rows).await {
                        error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = &error {
            self.metrics.failures.inc();
            warn!(
                rule = rule.key.as_str(),
                error = e.as_str(),
                "rule evaluation failed"
            );
        }
        self.statuses.lock().insert(
            rule.key.clone(),
            RuleStatus {
                health: if error.is_some() { "err" } else { "ok" },
                last_error: error,
                last_eval: Some(at),
                duration: started.elapsed(),
                rows,
            },
        );
    }

    /// A recording rule's rows become points of its table, through the write
    /// pipeline (validated and committed as any write).
    async fn record(&self, rule: &Rule, at: i64, rows: Vec<Sample>) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        self.pipeline.admit().map_err(|e| e.to_string())?;
        let points: Vec<(usize, Point<'static>)> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (row, value))| {
                let labels = Self::final_labels(rule, &row, value);
                (
                    i + 1,
                    Point {
                        table: rule.name.clone().into(),
                        tags: labels
                            .into_iter()
                            .map(|(k, v)| (k.into(), v.into()))
                            .collect(),
                        fields: vec![("value".into(), FieldValue::F64(value))],
                        time: at,
                    },
                )
            })
            .collect();
        let validated = self.pipeline.validate(points);
        if let Some(e) = validated.rejected.first() {
            return Err(format!(
                "{} rows refused by table {:?}: row {}: {}",
                validated.rejected_count, rule.name, e.line, e.reason
            ));
        }
        self.pipeline
            .commit(validated.tables)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The labels a row ends up with: an alert's (with `alertname`), or a
    /// recorded point's tags.
    fn final_labels(
        rule: &Rule,
        row: &BTreeMap<String, String>,
        value: f64,
    ) -> BTreeMap<String, String> {
        match rule.kind {
            RuleKind::Alerting => Self::instance_labels(rule, row, value).0,
            RuleKind::Recording => {
                let mut labels = row.clone();
                for (k, t, _) in &rule.labels {
                    labels.insert(k.clone(), t.render(&Data { labels: row, value }));
                }
                labels
            }
        }
    }

    /// The labels and annotations of an alert from a row: the row's labels,
    /// the rule's (templated; they win), and `alertname`.
    pub(crate) fn instance_labels(
        rule: &Rule,
        row: &BTreeMap<String, String>,
        value: f64,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut labels = row.clone();
        for (k, t, _) in &rule.labels {
            labels.insert(k.clone(), t.render(&Data { labels: row, value }));
        }
        labels.insert("alertname".into(), rule.name.clone());
        let annotations = rule
            .annotations
            .iter()
            .map(|(k, t, _)| {
                (
                    k.clone(),
                    t.render(&Data {
                        labels: &labels,
                        value,
                    }),
                )
            })
            .collect();
        (labels, annotations)
    }

    /// The alert state machine for one evaluation of an alerting rule.
    pub async fn update_alerts(
        self: &Arc<Self>,
        rule: &Rule,
        at: i64,
        result: Result<Vec<Sample>, String>,
    ) -> Result<(), AlertError> {
        // What holds now: the rows, or for no rows / an error what the rule says.
        // An error is not a verdict on the alerts: with `error`, the ones there
        // are stay as they are and one `alertstate="error"` alert is added.
        let special = |state: &str| {
            vec![(
                BTreeMap::from([("alertstate".to_string(), state.to_string())]),
                f64::NAN,
            )]
        };
        let (active, keep_current, error): (Vec<Sample>, bool, Option<String>) = match &result {
            Ok(rows) if rows.is_empty() => match rule.no_data {
                NoDataState::Ok => (Vec::new(), false, None),
                NoDataState::KeepLast => return Ok(()),
                NoDataState::Nodata => (special("nodata"), false, None),
                NoDataState::Alerting => (vec![(BTreeMap::new(), f64::NAN)], false, None),
            },
            Ok(rows) => (rows.clone(), false, None),
            Err(e) => match rule.on_error {
                ErrorState::KeepLast => return Ok(()),
                ErrorState::Error => (special("error"), true, Some(e.chars().take(1024).collect())),
                ErrorState::Alerting => (vec![(BTreeMap::new(), f64::NAN)], true, None),
            },
        };
        let this = Arc::clone(self);
        let rule = rule.clone();
        tokio::task::spawn_blocking(move || {
            this.transition(
                &rule,
                at,
                Outcome {
                    active,
                    keep_current,
                    error,
                },
            )
        })
        .await
        .map_err(|e| AlertError::Task(e.to_string()))?
    }

    fn transition(&self, rule: &Rule, at: i64, outcome: Outcome) -> Result<(), AlertError> {
        let Outcome {
            active,
            keep_current,
            error,
        } = outcome;
        let mut all = self.instances.lock();
        let current = all.get(&rule.key).cloned().unwrap_or_default();
        let mut next: HashMap<u64, AlertInstance> = HashMap::new();
        let mut changes = Changes::default();
        let for_ = dur_nanos(rule.for_);
        let mut history = Vec::new();
        let mut event = |a: &AlertInstance, from: &str, to: &str| {
            history.push(HistoryEvent {
                time: at,
                rule: rule.key.clone(),
                labels: a.labels.clone(),
                from: from.into(),
                to: to.into(),
                value: a.value,
            })
        };
        for (row, value) in active {
            let (labels, mut annotations) = Self::instance_labels(rule, &row, value);
            if let Some(e) = &error {
                annotations.insert("error".into(), e.clone());
            }
            let fp = crate::store::fingerprint(&labels);
            let (mut a, changed) = match current.get(&fp) {
                Some(a) if a.state != AlertState::Resolved => {
                    let mut a = a.clone();
                    let mut changed = a.keep_firing_since.take().is_some();
                    if a.state == AlertState::Pending && at - a.active_at >= for_ {
                        a.state = AlertState::Firing;
                        a.fired_at = Some(at);
                        event(&a, "pending", "firing");
                        changed = true;
                    }
                    (a, changed)
                }
                _ => {
                    let a = AlertInstance::starting(
                        &rule.key,
                        labels,
                        annotations.clone(),
                        value,
                        at,
                        for_ == 0,
                    );
                    event(&a, "inactive", a.state.as_str());
                    (a, true)
                }
            };
            // The value and annotations as they are now go with the next
            // notification; they are stored when the state changes (a
            // restart shows the values of the last change until the next
            // evaluation).
            a.value = value;
            a.annotations = annotations;
            a.last_eval = at;
            if changed {
                changes.upserts.push(a.clone());
            }
            next.insert(fp, a);
        }
        for (fp, old) in current {
            if next.contains_key(&fp) {
                continue;
            }
            let mut a = old;
            if keep_current && a.state != AlertState::Resolved {
                next.insert(fp, a);
                continue;
            }
            match a.state {
                AlertState::Pending => {
                    event(&a, "pending", "inactive");
                    changes.removals.push((rule.key.clone(), fp));
                    continue;
                }
                AlertState::Firing => {
                    let keep = dur_nanos(rule.keep_firing_for);
                    let since = *a.keep_firing_since.get_or_insert(at);
                    if keep > 0 && at - since < keep {
                        a.last_eval = at;
                        if since == at {
                            changes.upserts.push(a.clone());
                        }
                    } else {
                        a.state = AlertState::Resolved;
                        a.resolved_at = Some(at);
                        a.keep_firing_since = None;
                        a.last_eval = at;
                        event(&a, "firing", "resolved");
                        changes.upserts.push(a.clone());
                    }
                }
                AlertState::Resolved => {
                    if at - a.resolved_at.unwrap_or(at) > RESOLVED_RETENTION {
                        changes.removals.push((rule.key.clone(), fp));
                        continue;
                    }
                }
            }
            next.insert(fp, a);
        }
        changes.history = history;
        let changed = !changes.history.is_empty();
        self.store.apply(&changes)?;
        all.insert(rule.key.clone(), next);
        drop(all);
        if changed {
            self.wake_flusher.notify_one();
        }
        for h in &changes.history {
            info!(rule = h.rule.as_str(), labels = ?h.labels, from = h.from.as_str(), to = h.to.as_str(), "alert state changed");
        }
        Ok(())
    }
}

pub(crate) fn dur_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
