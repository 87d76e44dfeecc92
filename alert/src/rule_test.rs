//! `vigil rules test`: Prometheus's `promtool test rules` for SQL rules. A
//! test file gives input series (`cpu{host="a"}` with values `1+2x10 _ 5`),
//! rule files, and the alerts expected at evaluation times; the rules run on a
//! temporary embedded engine (no server), evaluated at every group interval
//! from time 0, so `for` and `keep_firing_for` act as they would live.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use vigil_ingest::{WriteLimits, WritePipeline};
use vigil_model::{FieldValue, Point};
use vigil_rules::{load_files, parse_duration, RuleGroup, RuleKind};
use vigil_sql::{QueryConfig, QueryEngine};
use vigil_storage::{Storage, StorageConfig};

use crate::evaluator::{dur_nanos, Evaluator};
use crate::store::{AlertState, AlertStore};
use crate::AlertMetrics;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<PathBuf>,
    #[serde(default)]
    evaluation_interval: Option<String>,
    #[serde(default)]
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    values: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: String,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

/// `metric{label="value", ...}` as a table and its tags.
pub fn parse_series(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let t = text.trim();
    let (name, rest) = match t.find('{') {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("series {text:?}: no metric name"));
    }
    let mut tags = Vec::new();
    if let Some(rest) = rest {
        let body = rest
            .trim_end()
            .strip_suffix('}')
            .ok_or_else(|| format!("series {text:?}: no closing }}"))?;
        // label="value" pairs; a value may hold commas and \" escapes.
        let mut rest = body.trim();
        while !rest.is_empty() {
            let (k, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("series {text:?}: {rest:?} is not label=\"value\""))?;
            let after = after.trim_start();
            let quoted = after.strip_prefix('"').ok_or_else(|| {
                format!("series {text:?}: the value of {} needs quotes", k.trim())
            })?;
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, e)) => value.push(e),
                        None => break,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end =
                end.ok_or_else(|| format!("series {text:?}: unterminated value of {}", k.trim()))?;
            tags.push((k.trim().to_string(), value));
            rest = quoted[end..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
    }
    Ok((name.to_string(), tags))
}

/// promtool's value notation: `1 2 3`, `_` (no sample), `_x3`, `stale`,
/// `1+2x3` (1 3 5 7), `10-1x2` (10 9 8), `5x2` (5 5 5). `None`: no sample.
pub fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    const MAX: usize = 1_000_000;
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        let bad = || format!("values: {item:?} is not a number, _, stale, a+bxn or a-bxn");
        if item == "_" || item == "stale" {
            out.push(None);
        } else if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| bad())?;
            out.extend(std::iter::repeat_n(None, n.min(MAX)));
        } else if let Some((head, times)) = item.rsplit_once('x') {
            let times: usize = times.parse().map_err(|_| bad())?;
            // a+b, a-b (the sign of b after the first character), or a.
            let split = head
                .char_indices()
                .skip(1)
                .find(|&(i, c)| (c == '+' || c == '-') && !head[..i].ends_with(['e', 'E']))
                .map(|(i, _)| i);
            let (start, step) = match split {
                Some(i) => {
                    let a: f64 = head[..i].parse().map_err(|_| bad())?;
                    let b: f64 = head[i..].parse().map_err(|_| bad())?;
                    (a, b)
                }
                None => (head.parse().map_err(|_| bad())?, 0.0),
            };
            for k in 0..=times.min(MAX) {
                out.push(Some(start + step * k as f64));
            }
        } else {
            out.push(Some(item.parse().map_err(|_| bad())?));
        }
        if out.len() > MAX {
            return Err(format!("values: more than {MAX} samples"));
        }
    }
    Ok(out)
}

/// Runs a test file; the failures, as text (empty: every test passed).
pub async fn run_test_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TestFile = serde_norway::from_str(&text).map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        format!("{}:{line}: {e}", path.display())
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = file.rule_files.iter().map(|f| base.join(f)).collect();
    let default_interval = match &file.evaluation_interval {
        Some(d) => parse_duration(d).map_err(|e| format!("evaluation_interval: {e}"))?,
        None => Duration::from_secs(60),
    };
    let groups = load_files(&files, default_interval).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let mut failures = Vec::new();
    for (i, case) in file.tests.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("test {}", i + 1));
        match run_case(case, &groups).await {
            Ok(f) => failures.extend(f.into_iter().map(|f| format!("{name}: {f}"))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Ok(failures)
}

async fn run_case(case: &TestCase, groups: &[RuleGroup]) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let storage = Storage::open(StorageConfig::new(dir.path().join("data")))
        .await
        .map_err(|e| e.to_string())?;
    let step = match &case.interval {
        Some(d) => parse_duration(d)?,
        None => Duration::from_secs(60),
    };
    let step = dur_nanos(step).max(1);
    let mut points = Vec::new();
    for s in &case.input_series {
        let (table, tags) = parse_series(&s.series)?;
        for (i, v) in expand_values(&s.values)?.into_iter().enumerate() {
            if let Some(v) = v {
                points.push(Point {
                    table: table.clone().into(),
                    tags: tags
                        .iter()
                        .map(|(k, v)| (k.clone().into(), v.clone().into()))
                        .collect(),
                    fields: vec![("value".into(), FieldValue::F64(v))],
                    time: (i as i64)
                        .checked_mul(step)
                        .ok_or("input series: times past 2262")?,
                });
            }
        }
    }
    // Samples arrive as they would live: each tick sees those up to its time.
    points.sort_by_key(|p| p.time);
    let mut points = points.into_iter().peekable();
    let engine = Arc::new(
        QueryEngine::new(Arc::clone(&storage), QueryConfig::default())
            .map_err(|e| e.to_string())?,
    );
    let evaluator = Arc::new(Evaluator {
        engine,
        pipeline: Arc::new(WritePipeline::new(
            Arc::clone(&storage),
            WriteLimits::default(),
        )),
        store: Arc::new(
            AlertStore::open(&dir.path().join("alerts.redb")).map_err(|e| e.to_string())?,
        ),
        instances: Mutex::new(HashMap::new()),
        groups: RwLock::new(Arc::new(groups.to_vec())),
        statuses: Mutex::new(HashMap::new()),
        routing: RwLock::new(None),
        silences: crate::silences::Silences::empty(),
        eval_timeout: Duration::from_secs(30),
        group_states: Mutex::new(HashMap::new()),
        wake_dispatcher: tokio::sync::Notify::new(),
        wake_flusher: tokio::sync::Notify::new(),
        peers: crate::Peers::default(),
        give_up_after: Duration::from_secs(86_400),
        queue: None,
        metrics: AlertMetrics::default(),
    });
    // Every evaluation time a test asks about, and the last one.
    let mut checks: Vec<(i64, &AlertTest)> = Vec::new();
    for t in &case.alert_rule_test {
        let at = dur_nanos(parse_duration(&t.eval_time).map_err(|e| format!("eval_time: {e}"))?);
        checks.push((at, t));
    }
    checks.sort_by_key(|(at, _)| *at);
    let end = checks.last().map_or(0, |(at, _)| *at);
    let mut failures = Vec::new();
    let mut next_check = 0;
    // Each group at its own ticks, in time order, up to the last check.
    let mut ticks: Vec<(i64, usize)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let every = dur_nanos(g.interval).max(1);
        let mut t: i64 = 0;
        while t <= end {
            if ticks.len() >= MAX_TICKS {
                return Err(format!(
                    "more than {MAX_TICKS} evaluations up to eval_time {}: use a longer interval",
                    humanize_at(end)
                ));
            }
            ticks.push((t, gi));
            let Some(next) = t.checked_add(every) else {
                break;
            };
            t = next;
        }
    }
    ticks.sort();
    let mut i = 0;
    loop {
        let now = ticks.get(i).map(|(t, _)| *t);
        // Checks due before the next tick look at the state as it is.
        while next_check < checks.len() && now.is_none_or(|t| checks[next_check].0 < t) {
            let (at, test) = checks[next_check];
            failures.extend(compare(&evaluator, groups, at, test));
            next_check += 1;
        }
        let Some(t) = now else { break };
        let mut due = Vec::new();
        while let Some(p) = points.next_if(|p| p.time <= t) {
            due.push((due.len() + 1, p));
        }
        if !due.is_empty() {
            let written = storage.validate(due);
            if let Some(e) = written.rejected.first() {
                return Err(format!("input series refused: {}", e.reason));
            }
            storage
                .commit(written.tables)
                .await
                .map_err(|e| e.to_string())?;
        }
        let g = &groups[ticks[i].1];
        for rule in &g.rules {
            evaluator.evaluate(g, rule, t).await;
            // A rule that fails is a failed test (a table with no sample yet is
            // not a failure: it appears with its first one).
            let error = evaluator
                .statuses
                .lock()
                .get(&rule.key)
                .and_then(|s| s.last_error.clone());
            if let Some(e) = error.filter(|e| !e.contains("not found")) {
                failures.push(format!("rule {:?} at {}: {e}", rule.name, humanize_at(t)));
                let _ = storage.shutdown().await;
                return Ok(failures);
            }
        }
        i += 1;
    }
    let _ = storage.shutdown().await;
    Ok(failures)
}

/// Evaluations one test may ask for (all groups together).
const MAX_TICKS: usize = 1_000_000;

/// An alert as a test compares it: labels and annotations.
type Seen = (BTreeMap<String, String>, BTreeMap<String, String>);

fn compare(evaluator: &Evaluator, groups: &[RuleGroup], at: i64, test: &AlertTest) -> Vec<String> {
    let keys: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.kind == RuleKind::Alerting && r.name == test.alertname)
        .map(|r| r.key.as_str())
        .collect();
    if keys.is_empty() {
        return vec![format!("no alerting rule {:?}", test.alertname)];
    }
    let mut got: Vec<Seen> = evaluator
        .instances
        .lock()
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .flat_map(|(_, m)| m.values())
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| (a.labels.clone(), a.annotations.clone()))
        .collect();
    got.sort();
    let mut want: Vec<Seen> = test
        .exp_alerts
        .iter()
        .map(|e| {
            let mut labels = e.exp_labels.clone();
            labels.insert("alertname".into(), test.alertname.clone());
            (labels, e.exp_annotations.clone())
        })
        .collect();
    want.sort();
    if got == want {
        return Vec::new();
    }
    let show = |v: &[Seen]| {
        v.iter()
            .map(|(l, a)| format!("labels {l:?} annotations {a:?}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    vec![format!(
        "alertname {:?} at {}: expected [{}], got [{}]",
        test.alertname,
        humanize_at(at),
        show(&want),
        show(&got)
    )]
}

fn humanize_at(at: i64) -> String {
    format!("{}s", at as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expand_as_promtool() {
        assert_eq!(
            expand_values("1+2x3 _ 10-1x2 5x1 stale _x2 -3").unwrap(),
            [
                Some(1.0),
                Some(3.0),
                Some(5.0),
                Some(7.0),
                None,
                Some(10.0),
                Some(9.0),
                Some(8.0),
                Some(5.0),
                Some(5.0),
                None,
                None,
                None,
                Some(-3.0)
            ]
        );
        assert_eq!(
            expand_values("1e3+1e2x1").unwrap(),
            [Some(1000.0), Some(1100.0)]
        );
        for bad in ["x", "1+x3", "a", "_xq", "1+2x"] {
            assert!(expand_values(bad).is_err(), "{bad}");
        }
        // A huge expansion is refused, not built.
        assert!(expand_values("0+1x99999999999").is_err());
        assert!(expand_values("_x99999999999 1").is_err());
    }

    #[test]
    fn series_parse_as_promtool() {
        assert_eq!(
            parse_series(r#"cpu{host="a", dc="eu"}"#).unwrap(),
            (
                "cpu".to_string(),
                vec![("host".into(), "a".into()), ("dc".into(), "eu".into())]
            )
        );
        assert_eq!(parse_series("up").unwrap(), ("up".to_string(), vec![]));
        assert_eq!(
            parse_series(r#"log{msg="a, b \"c\"", x="é"}"#).unwrap().1,
            [
                ("msg".to_string(), "a, b \"c\"".to_string()),
                ("x".into(), "é".into())
            ]
        );
        for bad in ["{a=\"b\"}", "cpu{host=a}", "cpu{host=\"a\"", "cpu{host}"] {
            assert!(parse_series(bad).is_err(), "{bad}");
        }
    }
}
