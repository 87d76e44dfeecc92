//! Rule files: Prometheus-style groups with SQL instead of PromQL.
//!
//! ```yaml
//! groups:
//!   - name: hosts
//!     interval: 10s
//!     query_offset: 5s
//!     rules:
//!       - alert: HighCpu
//!         sql: SELECT host, avg(usage_user) AS value FROM cpu WHERE ... GROUP BY host
//!         for: 30s
//!         labels: { severity: page }
//!         annotations: { summary: "CPU {{ $value }} on {{ $labels.host }}" }
//!       - record: cpu_by_host
//!         sql: SELECT host, avg(usage_user) AS value FROM cpu WHERE ... GROUP BY host
//! ```
//!
//! Everything a file can get wrong is found when it loads, with `file:line`:
//! YAML, unknown keys, durations, templates, SQL syntax, duplicate names.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sqlparser::ast::Statement;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::template::Template;

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFileError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// What an alerting rule does when its query fails, or returns no rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataState {
    /// No rows: every instance is resolved (Prometheus).
    Ok,
    /// No rows: one `nodata` alert fires (Grafana's NoData).
    Nodata,
    /// No rows: every instance keeps its state.
    KeepLast,
    /// No rows: one alert fires as if the condition held.
    Alerting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorState {
    /// A failed query fires one `error` alert (Grafana's Error).
    Error,
    /// A failed query changes nothing (instances keep their state).
    KeepLast,
    /// A failed query fires one alert as if the condition held.
    Alerting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Alerting,
    Recording,
}

/// One rule, checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable identity for state: `group/name`, with `#n` for the n-th
    /// repeated name in a group.
    pub key: String,
    pub name: String,
    pub kind: RuleKind,
    pub sql: String,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub labels: Vec<(String, Template, String)>,
    pub annotations: Vec<(String, Template, String)>,
    pub receiver: Option<String>,
    pub no_data: NoDataState,
    pub on_error: ErrorState,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct RuleGroup {
    pub name: String,
    pub file: PathBuf,
    pub interval: Duration,
    pub query_offset: Duration,
    /// At most this many alert instances (or recorded rows) per rule; 0: no limit.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

/// A Prometheus duration: `1h30m`, `90s`, `500ms`, `2d`, `1w`, `1y`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "not a duration: {text:?} (use e.g. 30s, 5m, 1h30m)"
            ));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration too long: {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            "" => {
                return Err(format!(
                    "duration {text:?} lacks a unit (ms, s, m, h, d, w, y)"
                ))
            }
            u => {
                return Err(format!(
                    "unknown unit {u:?} in duration {text:?} (ms, s, m, h, d, w, y)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v < u128::from(u64::MAX))
            .ok_or_else(|| format!("duration too long: {text:?}"))?;
    }
    Ok(Duration::from_millis(total as u64))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Vec<GroupDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: String,
    interval: Option<String>,
    query_offset: Option<String>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    alert: Option<String>,
    name: Option<String>,
    record: Option<String>,
    sql: Option<String>,
    expr: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    receiver: Option<String>,
    no_data_state: Option<NoDataState>,
    exec_err_state: Option<ErrorState>,
}

/// Where rules and groups start in the text, found by their names in order (a
/// YAML parser with positions for every value would do this too; serde's gives
/// positions only for its own errors).
struct Lines<'t> {
    lines: Vec<&'t str>,
    cursor: usize,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        Lines {
            lines: text.lines().collect(),
            cursor: 0,
        }
    }

    /// The next line (1-based) after the cursor that names `name` under one of
    /// `keys`; moves the cursor there.
    fn next_named(&mut self, keys: &[&str], name: &str) -> usize {
        for i in self.cursor..self.lines.len() {
            let l = self.lines[i]
                .trim_start()
                .trim_start_matches('-')
                .trim_start();
            for key in keys {
                if let Some(rest) = l.strip_prefix(key) {
                    let rest = rest.trim_start();
                    if let Some(v) = rest.strip_prefix(':') {
                        let v = v.split(" #").next().unwrap_or("").trim();
                        let v = v.trim_matches(|c| c == '"' || c == '\'');
                        if v == name {
                            self.cursor = i + 1;
                            return i + 1;
                        }
                    }
                }
            }
        }
        self.cursor.max(1)
    }

    /// The line of `key:` in the rule starting at `from` (before `to`).
    fn key_in(&self, from: usize, to: usize, key: &str) -> usize {
        let end = to.min(self.lines.len() + 1);
        (from..end)
            .find(|&n| {
                let l = self.lines[n - 1]
                    .trim_start()
                    .trim_start_matches('-')
                    .trim_start();
                l.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
            .unwrap_or(from)
    }
}

/// Reads one rule file. Every error of the file comes back, not only the first.
pub fn load_file(
    path: &Path,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, Vec<RuleFileError>> {
    let err = |line: usize, message: String| RuleFileError {
        file: path.to_path_buf(),
        line,
        message,
    };
    let doc: FileDoc = match serde_norway::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.location().map_or(1, |l| l.line());
            let message = e.to_string();
            // serde_norway appends " at line L column C"; the prefix says it.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            return Err(vec![err(line, message)]);
        }
    };
    let mut lines = Lines::new(text);
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut group_names: HashMap<String, usize> = HashMap::new();
    for g in doc.groups {
        let group_line = lines.next_named(&["name"], &g.name);
        if g.name.trim().is_empty() {
            errors.push(err(group_line, "a group needs a name".into()));
        }
        if let Some(first) = group_names.insert(g.name.clone(), group_line) {
            errors.push(err(
                group_line,
                format!(
                    "group {:?} is defined twice (first at line {first})",
                    g.name
                ),
            ));
        }
        // Durations are checked here rather than while deserializing: serde's
        // position for them would be the group's, not the key's.
        let group_key = |key: &str| lines.key_in(group_line, lines.lines.len() + 1, key);
        let mut duration = |text: &Option<String>, key: &str, default: Duration| match text {
            None => default,
            Some(t) => parse_duration(t).unwrap_or_else(|e| {
                errors.push(err(
                    group_key(key),
                    format!("group {:?}: {key}: {e}", g.name),
                ));
                default
            }),
        };
        let interval = duration(&g.interval, "interval", default_interval);
        let query_offset = duration(&g.query_offset, "query_offset", Duration::ZERO);
        if interval < Duration::from_millis(100) {
            errors.push(err(
                group_key("interval"),
                format!("group {:?}: interval must be at least 100ms", g.name),
            ));
        }
        let mut rules = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // The start line of every rule first, so a rule's keys are searched
        // within its own lines.
        let starts: Vec<usize> = g
            .rules
            .iter()
            .map(|r| {
                let name = r.alert.as_ref().or(r.name.as_ref()).or(r.record.as_ref());
                lines.next_named(
                    &["alert", "name", "record"],
                    name.map_or("", |s| s.as_str()),
                )
            })
            .collect();
        for (i, r) in g.rules.into_iter().enumerate() {
            let line = starts[i];
            let next = starts.get(i + 1).copied().unwrap_or(usize::MAX);
            match check_rule(
                r,
                &g.name,
                &mut seen,
                |key| lines.key_in(line, next, key),
                line,
            ) {
                Ok(rule) => rules.push(rule),
                Err(es) => errors.extend(es.into_iter().map(|(l, m)| err(l, m))),
            }
        }
        groups.push(RuleGroup {
            name: g.name,
            file: path.to_path_buf(),
            interval,
            query_offset,
            limit: g.limit,
            rules,
        });
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn check_rule(
    r: RuleDoc,
    group: &str,
    seen: &mut HashMap<String, usize>,
    key_line: impl Fn(&str) -> usize,
    line: usize,
) -> Result<Rule, Vec<(usize, String)>> {
    let mut errors = Vec::new();
    let (kind, name) = match (&r.alert, &r.name, &r.record) {
        (Some(a), None, None) | (None, Some(a), None) => (RuleKind::Alerting, a.clone()),
        (None, None, Some(t)) => (RuleKind::Recording, t.clone()),
        (None, None, None) => {
            return Err(vec![(
                line,
                "a rule needs `alert` (or `name`) or `record`".into(),
            )])
        }
        _ => {
            return Err(vec![(
                line,
                "a rule has one of `alert`, `name` and `record`".into(),
            )])
        }
    };
    let what = format!("rule {name:?}");
    if name.trim().is_empty() {
        errors.push((line, format!("{what}: the name is empty")));
    }
    if kind == RuleKind::Recording {
        if name.starts_with("system.") || name.starts_with("rollup_") || name.contains('.') {
            errors.push((
                line,
                format!(
                    "{what}: `record` names a table of the default schema (no dots, not rollup_*)"
                ),
            ));
        }
        for (key, set) in [
            ("for", r.for_.is_some()),
            ("keep_firing_for", r.keep_firing_for.is_some()),
            ("annotations", !r.annotations.is_empty()),
            ("receiver", r.receiver.is_some()),
            ("no_data_state", r.no_data_state.is_some()),
            ("exec_err_state", r.exec_err_state.is_some()),
        ] {
            if set {
                errors.push((
                    key_line(key),
                    format!("{what}: `{key}` is for alerting rules, not recording rules"),
                ));
            }
        }
    }
    let sql = match (&r.sql, &r.expr) {
        (Some(s), _) => s.clone(),
        (None, Some(_)) => {
            errors.push((
                key_line("expr"),
                format!("{what}: `expr` is PromQL; vigil rules take `sql`"),
            ));
            String::new()
        }
        (None, None) => {
            errors.push((line, format!("{what}: no `sql`")));
            String::new()
        }
    };
    if !sql.is_empty() {
        if let Err(e) = check_sql(&sql) {
            errors.push((key_line("sql"), format!("{what}: {e}")));
        }
    }
    let mut templates = |map: BTreeMap<String, String>, key: &str| {
        let mut out = Vec::new();
        for (k, v) in map {
            if key == "labels" && !vigil_model::is_label_name(&k) {
                errors.push((
                    key_line(key),
                    format!("{what}: label name {k:?} is not [a-zA-Z_][a-zA-Z0-9_]*"),
                ));
            }
            if key == "labels" && (k == "value" || k == "alertname" || k == "time") {
                errors.push((key_line(key), format!("{what}: label {k:?} is reserved")));
            }
            match Template::parse(&v) {
                Ok(t) => out.push((k, t, v)),
                Err(e) => errors.push((key_line(key), format!("{what}: {key}.{k}: {e}"))),
            }
        }
        out
    };
    let labels = templates(r.labels, "labels");
    let annotations = templates(r.annotations, "annotations");
    let mut duration = |text: &Option<String>, key: &str| match text {
        None => Duration::ZERO,
        Some(t) => parse_duration(t).unwrap_or_else(|e| {
            errors.push((key_line(key), format!("{what}: {key}: {e}")));
            Duration::ZERO
        }),
    };
    let for_ = duration(&r.for_, "for");
    let keep_firing_for = duration(&r.keep_firing_for, "keep_firing_for");
    let n = seen.entry(name.clone()).or_insert(0);
    // `/` in the group name doubled: the first single `/` ends the group.
    let group = group.replace('/', "//");
    let key = if *n == 0 {
        format!("{group}/{name}")
    } else {
        format!("{group}/{name}#{n}")
    };
    *n += 1;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rule {
        key,
        name,
        kind,
        sql,
        for_,
        keep_firing_for,
        labels,
        annotations,
        receiver: r.receiver,
        no_data: r.no_data_state.unwrap_or(NoDataState::Ok),
        on_error: r.exec_err_state.unwrap_or(ErrorState::Error),
        line,
    })
}

/// SQL syntax, offline: exactly one statement, a query.
pub fn check_sql(sql: &str) -> Result<(), String> {
    // DataFusion's default dialect is the generic one.
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("SQL: {e}"))?;
    if statements.len() != 1 {
        return Err(format!(
            "SQL: one statement expected, found {}",
            statements.len()
        ));
    }
    match statements.first() {
        Some(Statement::Query(_)) => Ok(()),
        _ => Err("SQL: a rule's SQL is a query (SELECT ...)".into()),
    }
}

/// Every `.yml`/`.yaml` file of `dir` (sorted), each read with
/// [`load_file`]; group names must be unique across files.
pub fn load_dir(
    dir: &Path,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, Vec<RuleFileError>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
            })
            .collect(),
        Err(e) => {
            return Err(vec![RuleFileError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read the rules directory: {e}"),
            }])
        }
    };
    files.sort();
    load_files(&files, default_interval)
}

/// Reads the given rule files; group names must be unique across them.
pub fn load_files(
    files: &[PathBuf],
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, Vec<RuleFileError>> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    let mut owners: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let text = match std::fs::read(path) {
            Ok(b) if b.len() > MAX_RULE_FILE_BYTES => {
                errors.push(RuleFileError {
                    file: path.clone(),
                    line: 0,
                    message: format!("larger than {MAX_RULE_FILE_BYTES} bytes"),
                });
                continue;
            }
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(RuleFileError {
                        file: path.clone(),
                        line: 0,
                        message: format!("not UTF-8: {e}"),
                    });
                    continue;
                }
            },
            Err(e) => {
                errors.push(RuleFileError {
                    file: path.clone(),
                    line: 0,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match load_file(path, &text, default_interval) {
            Ok(gs) => {
                for g in gs {
                    if let Some(other) = owners.insert(g.name.clone(), path.clone()) {
                        errors.push(RuleFileError {
                            file: path.clone(),
                            line: g
                                .rules
                                .first()
                                .map_or(1, |r| r.line.saturating_sub(2).max(1)),
                            message: format!(
                                "group {:?} is also defined in {}",
                                g.name,
                                other.display()
                            ),
                        });
                    }
                    groups.push(g);
                }
            }
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

/// A rule file larger than this is refused (a rule file is small; a huge one
/// is a mistake or an attack).
pub const MAX_RULE_FILE_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn load(text: &str) -> Result<Vec<RuleGroup>, Vec<RuleFileError>> {
        load_file(Path::new("r.yml"), text, MINUTE)
    }

    fn errors(text: &str) -> Vec<String> {
        load(text)
            .expect_err("errors")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn durations_as_prometheus_writes_them() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "1.5h", "3x", "-1s", "99999999999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_good_file_loads() {
        let groups = load(
            "groups:\n  - name: hosts\n    interval: 10s\n    query_offset: 5s\n    rules:\n      - alert: HighCpu\n        sql: SELECT host, 1.0 AS value\n        for: 30s\n        labels: { severity: page }\n        annotations:\n          summary: \"CPU {{ $value }} on {{ $labels.host }}\"\n      - record: cpu_by_host\n        sql: |\n          SELECT host, 2.0 AS value\n      - name: HighCpu\n        sql: SELECT 1 AS value\n",
        )
        .unwrap();
        let g = &groups[0];
        assert_eq!(
            (g.interval, g.query_offset),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        let keys: Vec<_> = g.rules.iter().map(|r| (r.key.as_str(), r.line)).collect();
        assert_eq!(
            keys,
            [
                ("hosts/HighCpu", 6),
                ("hosts/cpu_by_host", 12),
                ("hosts/HighCpu#1", 15)
            ]
        );
        assert_eq!(g.rules[1].kind, RuleKind::Recording);
        assert_eq!(g.rules[0].for_, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELECT 1 AS value\n        for: 5 minutes\n");
        assert!(
            e[0].starts_with("r.yml:6:") && e[0].contains("unknown unit"),
            "{e:?}"
        );
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELECT 1 AS value\n        fro: 5m\n");
        assert!(
            e[0].starts_with("r.yml:6:") && e[0].contains("unknown field `fro`"),
            "{e:?}"
        );
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELEC 1\n      - alert: B\n        sql: SELECT 1 AS value\n        annotations:\n          s: \"{{ $labels.host\"\n");
        assert!(
            e[0].starts_with("r.yml:5:") && e[0].contains("SQL"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("r.yml:8:") && e[1].contains("unclosed"),
            "{e:?}"
        );
        let e =
            errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n");
        assert!(
            e[0].starts_with("r.yml:5:") && e[0].contains("PromQL"),
            "{e:?}"
        );
        let e = errors("groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n");
        assert!(
            e[0].starts_with("r.yml:4:") && e[0].contains("twice"),
            "{e:?}"
        );
        let e = errors(
            "groups:\n  - name: g\n    rules:\n      - record: x\n        sql: DELETE FROM cpu\n",
        );
        assert!(e[0].contains("a query"), "{e:?}");
        let e = errors("groups:\n  - name: g\n    rules:\n      - record: x\n        sql: SELECT 1 AS value; SELECT 2 AS value\n");
        assert!(e[0].contains("one statement"), "{e:?}");
        let e = errors("groups: [\n");
        assert!(e[0].starts_with("r.yml:"), "{e:?}");
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        record: B\n        sql: SELECT 1\n");
        assert!(e[0].contains("one of"), "{e:?}");
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELECT 1 AS value\n        labels: { \"bad-name\": x, value: y }\n");
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn hostile_yaml_is_an_error_not_a_hang() {
        // An alias bomb (billion laughs) and deep nesting.
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\ngroups: [*g]\n";
        assert!(load(bomb).is_err());
        let deep = format!("groups: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(load(&deep).is_err());
        assert!(load("").is_ok());
    }
}
