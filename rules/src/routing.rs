//! Routing in Alertmanager's configuration format (`alerting.yml`): a `route`
//! tree with `matchers` (also the older `match`/`match_re`), `continue`,
//! `group_by` and `repeat_interval`, and `receivers`. An existing
//! `alertmanager.yml` loads as is when it uses what is here; anything vigil
//! does not do yet (time intervals, Slack, PagerDuty and
//! e-mail receivers) is refused by name rather than silently not done.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::rules::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// A label matcher: `severity="page"`, `team!=db`, `host=~"web-.*"`, `env!~dev|test`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    op: MatchOp,
    value: String,
    regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

impl Matcher {
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let t = text.trim();
        let at = t
            .find(['=', '!'])
            .ok_or_else(|| format!("matcher {text:?}: no =, !=, =~ or !~"))?;
        let name = t[..at].trim().to_string();
        let rest = &t[at..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Re, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRe, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::Ne, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Eq, v)
        } else {
            return Err(format!("matcher {text:?}: no =, !=, =~ or !~"));
        };
        if name.is_empty() {
            return Err(format!("matcher {text:?}: no label name"));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
            .unwrap_or_else(|| value.to_string());
        Self::new(name, op, value).map_err(|e| format!("matcher {text:?}: {e}"))
    }

    /// A matcher as Alertmanager's API sends it (`isRegex`, `isEqual`).
    pub fn from_parts(
        name: &str,
        value: &str,
        is_regex: bool,
        is_equal: bool,
    ) -> Result<Matcher, String> {
        if name.is_empty() {
            return Err("a matcher needs a label name".into());
        }
        let op = match (is_regex, is_equal) {
            (false, true) => MatchOp::Eq,
            (false, false) => MatchOp::Ne,
            (true, true) => MatchOp::Re,
            (true, false) => MatchOp::NotRe,
        };
        Self::new(name.to_string(), op, value.to_string())
    }

    fn new(name: String, op: MatchOp, value: String) -> Result<Matcher, String> {
        let regex = match op {
            MatchOp::Re | MatchOp::NotRe => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name,
            op,
            value,
            regex,
        })
    }

    /// Name, value, whether a regex, whether equality (Alertmanager's API form).
    pub fn parts(&self) -> (&str, &str, bool, bool) {
        let (re, eq) = match self.op {
            MatchOp::Eq => (false, true),
            MatchOp::Ne => (false, false),
            MatchOp::Re => (true, true),
            MatchOp::NotRe => (true, false),
        };
        (&self.name, &self.value, re, eq)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", |s| s.as_str());
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Ne, _) => v != self.value,
            (MatchOp::Re, Some(r)) => r.is_match(v),
            (MatchOp::NotRe, Some(r)) => !r.is_match(v),
            _ => false,
        }
    }
}

/// A receiver's webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: String,
    pub send_resolved: bool,
    pub kind: WebhookKind,
}

/// The body a receiver's endpoint takes.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    /// Alertmanager's webhook format (version 4).
    #[default]
    Alertmanager,
    /// A Slack incoming webhook (or anything that takes its format).
    Slack {
        channel: Option<String>,
        username: Option<String>,
        /// A template of the message's text (`$labels`, `$value`).
        text: Option<String>,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        routing_key: String,
        severity: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub webhooks: Vec<Webhook>,
}

/// Where an alert goes: receivers, each with how often a firing alert is sent
/// again.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub receiver: String,
    pub repeat_interval: Duration,
    pub group_by: Vec<String>,
}

#[derive(Debug, Clone)]
struct Route {
    receiver: String,
    matchers: Vec<Matcher>,
    continue_: bool,
    group_by: Vec<String>,
    repeat_interval: Duration,
    routes: Vec<Route>,
}

/// The loaded `alerting.yml`.
#[derive(Debug, Clone)]
pub struct Routing {
    route: Route,
    pub inhibit_rules: Vec<InhibitRule>,
    pub receivers: BTreeMap<String, Receiver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    receiver: Option<String>,
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default, rename = "match")]
    match_eq: BTreeMap<String, String>,
    #[serde(default)]
    match_re: BTreeMap<String, String>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    group_by: Option<Vec<String>>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    #[serde(default)]
    routes: Vec<RouteDoc>,
    #[serde(default)]
    mute_time_intervals: Vec<String>,
    #[serde(default)]
    active_time_intervals: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverDoc {
    name: String,
    #[serde(default)]
    webhook_configs: Vec<WebhookDoc>,
    #[serde(default)]
    slack_configs: Vec<SlackDoc>,
    #[serde(default)]
    pagerduty_configs: Vec<PagerDutyDoc>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDoc {
    url: String,
    #[serde(default = "yes")]
    send_resolved: bool,
    #[serde(default)]
    max_alerts: usize,
    #[serde(default)]
    http_config: Option<serde_norway::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackDoc {
    api_url: String,
    channel: Option<String>,
    username: Option<String>,
    text: Option<String>,
    /// Alertmanager's default for Slack: resolved alerts are not sent.
    #[serde(default)]
    send_resolved: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PagerDutyDoc {
    routing_key: String,
    #[serde(default = "pagerduty_url")]
    url: String,
    #[serde(default = "critical")]
    severity: String,
    #[serde(default = "yes")]
    send_resolved: bool,
}

fn pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

fn critical() -> String {
    "critical".into()
}

/// An endpoint URL must be http(s).
fn check_url(receiver: &str, url: &str) -> Result<(), String> {
    let parsed =
        url::Url::parse(url).map_err(|e| format!("receiver {receiver:?}: url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("receiver {receiver:?}: url {url:?} is not http(s)"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ConfigDoc {
    route: Option<RouteDoc>,
    #[serde(default)]
    receivers: Vec<ReceiverDoc>,
    #[serde(default)]
    inhibit_rules: Vec<InhibitDoc>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InhibitDoc {
    #[serde(default)]
    source_matchers: Vec<String>,
    #[serde(default)]
    target_matchers: Vec<String>,
    #[serde(default)]
    source_match: BTreeMap<String, String>,
    #[serde(default)]
    source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    target_match: BTreeMap<String, String>,
    #[serde(default)]
    target_match_re: BTreeMap<String, String>,
    #[serde(default)]
    equal: Vec<String>,
}

/// An inhibit rule: while an alert matching `source` fires, alerts matching
/// `target` with the same values of the `equal` labels are not sent.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    /// Whether `target` is inhibited by one of the firing alerts (an alert
    /// does not inhibit itself, as in Alertmanager).
    pub fn inhibits<'a>(
        &self,
        target: &BTreeMap<String, String>,
        firing: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
    ) -> bool {
        if !self.target.iter().all(|m| m.matches(target)) {
            return false;
        }
        // As Alertmanager: when the target matches both sides, a source that
        // also matches both cannot inhibit it (two such alerts would mute each
        // other); a missing label equals an empty one.
        let two_sided = self.source.iter().all(|m| m.matches(target));
        firing.into_iter().any(|source| {
            source != target
                && self.source.iter().all(|m| m.matches(source))
                && !(two_sided && self.target.iter().all(|m| m.matches(source)))
                && self
                    .equal
                    .iter()
                    .all(|l| label(source, l) == label(target, l))
        })
    }
}

/// A label's value; a missing label is empty.
fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map_or("", |v| v.as_str())
}

fn matchers(
    list: &[String],
    eq: BTreeMap<String, String>,
    re: BTreeMap<String, String>,
) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    for m in list {
        let inner = m.trim().trim_start_matches('{').trim_end_matches('}');
        for part in split_matchers(inner) {
            out.push(Matcher::parse(&part)?);
        }
    }
    for (k, v) in eq {
        out.push(Matcher::new(k, MatchOp::Eq, v)?);
    }
    for (k, v) in re {
        out.push(Matcher::new(k.clone(), MatchOp::Re, v).map_err(|e| format!("{k}: {e}"))?);
    }
    Ok(out)
}

/// Alertmanager's default: a firing alert is sent again every 4 hours.
const DEFAULT_REPEAT: Duration = Duration::from_secs(4 * 3600);

impl Routing {
    pub fn load(path: &Path) -> Result<Routing, RoutingError> {
        let text = std::fs::read_to_string(path).map_err(|e| RoutingError::Invalid {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|(line, message)| RoutingError::Invalid {
            file: path.display().to_string(),
            line,
            message,
        })
    }

    /// Parses the text of an `alerting.yml`; errors are `(line, message)`.
    pub fn parse(text: &str) -> Result<Routing, (usize, String)> {
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().trim_start_matches("- ").starts_with(key))
                .map_or(1, |i| i + 1)
        };
        let doc: ConfigDoc = serde_norway::from_str(text).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line());
            let m = e.to_string();
            (line, m.split(" at line ").next().unwrap_or(&m).to_string())
        })?;
        for (key, _) in doc.other {
            let message = match key.as_str() {
                "global" | "templates" => continue,
                "time_intervals" | "mute_time_intervals" => {
                    format!("`{key}` is not supported by vigil yet (remove it to load this file)")
                }
                _ => format!("unknown key `{key}`"),
            };
            return Err((line_of(&format!("{key}:")), message));
        }
        let mut receivers = BTreeMap::new();
        for r in doc.receivers {
            if let Some((kind, _)) = r.other.iter().next() {
                return Err((
                    line_of(&format!("{kind}:")),
                    format!(
                        "receiver {:?}: `{kind}` is not supported by vigil yet (webhook_configs, slack_configs and pagerduty_configs are)",
                        r.name
                    ),
                ));
            }
            let mut webhooks = Vec::new();
            for w in r.webhook_configs {
                if w.http_config.is_some() || w.max_alerts != 0 {
                    return Err((
                        line_of("http_config:").max(line_of("max_alerts:")),
                        format!(
                            "receiver {:?}: http_config and max_alerts are not supported yet",
                            r.name
                        ),
                    ));
                }
                check_url(&r.name, &w.url).map_err(|e| (line_of("url:"), e))?;
                webhooks.push(Webhook {
                    url: w.url,
                    send_resolved: w.send_resolved,
                    kind: WebhookKind::Alertmanager,
                });
            }
            for s in r.slack_configs {
                check_url(&r.name, &s.api_url).map_err(|e| (line_of("api_url:"), e))?;
                if let Some(t) = &s.text {
                    crate::template::Template::parse(t).map_err(|e| {
                        (
                            line_of("text:"),
                            format!("receiver {:?}: slack text: {e}", r.name),
                        )
                    })?;
                }
                webhooks.push(Webhook {
                    url: s.api_url,
                    send_resolved: s.send_resolved,
                    kind: WebhookKind::Slack {
                        channel: s.channel,
                        username: s.username,
                        text: s.text,
                    },
                });
            }
            for p in r.pagerduty_configs {
                check_url(&r.name, &p.url).map_err(|e| (line_of("url:"), e))?;
                if !matches!(
                    p.severity.as_str(),
                    "critical" | "error" | "warning" | "info"
                ) {
                    return Err((
                        line_of("severity:"),
                        format!(
                            "receiver {:?}: pagerduty severity is critical, error, warning or info",
                            r.name
                        ),
                    ));
                }
                webhooks.push(Webhook {
                    url: p.url,
                    send_resolved: p.send_resolved,
                    kind: WebhookKind::PagerDuty {
                        routing_key: p.routing_key,
                        severity: p.severity,
                    },
                });
            }
            if receivers.contains_key(&r.name) {
                return Err((
                    line_of("- name:"),
                    format!("receiver {:?} is defined twice", r.name),
                ));
            }
            receivers.insert(
                r.name.clone(),
                Receiver {
                    name: r.name,
                    webhooks,
                },
            );
        }
        let root = doc.route.ok_or_else(|| {
            (
                1,
                "no `route` (Alertmanager's config needs one)".to_string(),
            )
        })?;
        let root_receiver = root.receiver.clone().ok_or_else(|| {
            (
                line_of("route:"),
                "the root route needs a receiver".to_string(),
            )
        })?;
        let parent = Route {
            receiver: root_receiver,
            matchers: Vec::new(),
            continue_: false,
            group_by: Vec::new(),
            repeat_interval: DEFAULT_REPEAT,
            routes: Vec::new(),
        };
        let route = build_route(root, &parent, &receivers, text)?;
        let mut inhibit_rules = Vec::new();
        for i in doc.inhibit_rules {
            let at = line_of("inhibit_rules:");
            let source = matchers(&i.source_matchers, i.source_match, i.source_match_re)
                .map_err(|e| (at, format!("inhibit_rules: source: {e}")))?;
            let target = matchers(&i.target_matchers, i.target_match, i.target_match_re)
                .map_err(|e| (at, format!("inhibit_rules: target: {e}")))?;
            if source.is_empty() || target.is_empty() {
                return Err((
                    at,
                    "inhibit_rules: a rule needs source and target matchers".into(),
                ));
            }
            inhibit_rules.push(InhibitRule {
                source,
                target,
                equal: i.equal,
            });
        }
        Ok(Routing {
            route,
            inhibit_rules,
            receivers,
        })
    }

    /// The destinations of an alert with these labels (Alertmanager's tree walk:
    /// the first matching child, and the next ones while `continue` is set; a
    /// node no child takes is the destination).
    pub fn destinations(&self, labels: &BTreeMap<String, String>) -> Vec<Destination> {
        let mut out = Vec::new();
        walk(&self.route, labels, &mut out);
        out
    }

    /// A receiver by name (a rule's `receiver:` sends there directly).
    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.get(name)
    }

    /// The repeat interval of the root route (for a rule's direct receiver).
    pub fn default_repeat(&self) -> Duration {
        self.route.repeat_interval
    }
}

fn walk(route: &Route, labels: &BTreeMap<String, String>, out: &mut Vec<Destination>) -> bool {
    if !route.matchers.iter().all(|m| m.matches(labels)) {
        return false;
    }
    let mut taken = false;
    for child in &route.routes {
        if walk(child, labels, out) {
            taken = true;
            if !child.continue_ {
                break;
            }
        }
    }
    if !taken {
        out.push(Destination {
            receiver: route.receiver.clone(),
            repeat_interval: route.repeat_interval,
            group_by: route.group_by.clone(),
        });
    }
    true
}

fn build_route(
    doc: RouteDoc,
    parent: &Route,
    receivers: &BTreeMap<String, Receiver>,
    text: &str,
) -> Result<Route, (usize, String)> {
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map_or(1, |i| i + 1)
    };
    let receiver = doc.receiver.unwrap_or_else(|| parent.receiver.clone());
    if !receivers.contains_key(&receiver) {
        return Err((
            line_of(&receiver),
            format!("route: receiver {receiver:?} is not defined under `receivers`"),
        ));
    }
    if !doc.mute_time_intervals.is_empty() || !doc.active_time_intervals.is_empty() {
        return Err((
            line_of("time_intervals"),
            "route: time intervals are not supported by vigil yet".into(),
        ));
    }
    for d in [&doc.group_wait, &doc.group_interval].into_iter().flatten() {
        parse_duration(d).map_err(|e| (line_of(d), format!("route: {e}")))?;
    }
    let repeat_interval = match &doc.repeat_interval {
        Some(d) => parse_duration(d).map_err(|e| (line_of(d), format!("route: {e}")))?,
        None => parent.repeat_interval,
    };
    let mut matchers = Vec::new();
    for m in &doc.matchers {
        // One string may hold several: `severity="page", team="db"` or `{...}`.
        let inner = m.trim().trim_start_matches('{').trim_end_matches('}');
        for part in split_matchers(inner) {
            matchers.push(Matcher::parse(&part).map_err(|e| (line_of(m), format!("route: {e}")))?);
        }
    }
    for (k, v) in doc.match_eq {
        matchers.push(Matcher::new(k, MatchOp::Eq, v).map_err(|e| (1, e))?);
    }
    for (k, v) in doc.match_re {
        matchers.push(
            Matcher::new(k.clone(), MatchOp::Re, v)
                .map_err(|e| (line_of(&k), format!("route: match_re {k}: {e}")))?,
        );
    }
    let mut route = Route {
        receiver,
        matchers,
        continue_: doc.continue_,
        group_by: doc.group_by.unwrap_or_else(|| parent.group_by.clone()),
        repeat_interval,
        routes: Vec::new(),
    };
    for child in doc.routes {
        let built = build_route(child, &route, receivers, text)?;
        route.routes.push(built);
    }
    Ok(route)
}

/// Splits on commas outside double quotes.
fn split_matchers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        match c {
            '\\' if quoted && !escaped => {
                escaped = true;
                cur.push(c);
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        escaped = false;
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONFIG: &str = r#"
global:
  resolve_timeout: 5m
route:
  receiver: default
  group_by: [alertname]
  repeat_interval: 1h
  routes:
    - matchers: ['severity="page"', 'team=~"db|infra"']
      receiver: pager
      continue: true
    - match: { team: db }
      receiver: db
      repeat_interval: 10m
    - matchers: ["host!~web-.*"]
      receiver: hosts
receivers:
  - name: default
    webhook_configs: [{ url: "http://127.0.0.1:9/default" }]
  - name: pager
    webhook_configs: [{ url: "http://127.0.0.1:9/pager", send_resolved: false }]
  - name: db
    webhook_configs: [{ url: "http://127.0.0.1:9/db" }]
  - name: hosts
    webhook_configs: [{ url: "http://127.0.0.1:9/hosts" }]
"#;

    #[test]
    fn routes_as_alertmanager_does() {
        let r = Routing::parse(CONFIG).unwrap();
        let names = |l: &[(&str, &str)]| -> Vec<(String, u64)> {
            r.destinations(&labels(l))
                .into_iter()
                .map(|d| (d.receiver, d.repeat_interval.as_secs()))
                .collect()
        };
        assert_eq!(
            names(&[("severity", "page"), ("team", "db"), ("host", "web-1")]),
            [("pager".to_string(), 3600), ("db".to_string(), 600)]
        );
        assert_eq!(
            names(&[("team", "infra"), ("host", "web-2")]),
            [("default".to_string(), 3600)]
        );
        assert_eq!(names(&[("host", "db-1")]), [("hosts".to_string(), 3600)]);
        assert!(!r.receiver("pager").unwrap().webhooks[0].send_resolved);
    }

    #[test]
    fn unsupported_and_wrong_configs_are_refused_by_name() {
        for (text, what) in [
            ("route: { receiver: a }\nreceivers: [{ name: a }]\ntime_intervals: []\n", "time_intervals"),
            ("route: { receiver: a }\nreceivers: [{ name: a }]\ninhibit_rules: [{ equal: [x] }]\n", "source and target"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    email_configs: [{}]\n", "email_configs"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    slack_configs: [{ api_url: 'http://x/', actions: [] }]\n", "actions"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    pagerduty_configs: [{ routing_key: k, severity: huge }]\n", "severity"),
            ("route: { receiver: nope }\nreceivers: [{ name: a }]\n", "not defined"),
            ("route: { receiver: a, repeat_interval: soon }\nreceivers: [{ name: a }]\n", "not a duration"),
            ("route: { receiver: a, matchers: ['x=~(('] }\nreceivers: [{ name: a }]\n", "matcher"),
            ("receivers: [{ name: a }]\n", "no `route`"),
            ("route: { receiver: a }\nreceivers: [{ name: a, webhook_configs: [{ url: 'ftp://x' }] }]\n", "not http"),
        ] {
            let (_, m) = Routing::parse(text).expect_err(text);
            assert!(m.contains(what), "{text}: {m}");
        }
    }

    #[test]
    fn inhibit_rules_as_alertmanager() {
        let r = Routing::parse(
            "route: { receiver: a }\nreceivers: [{ name: a }]\ninhibit_rules:\n  - source_matchers: ['severity=\"critical\"']\n    target_matchers: ['severity=~\"warning|info\"']\n    equal: [cluster]\n",
        )
        .unwrap();
        let rule = &r.inhibit_rules[0];
        let critical = labels(&[("severity", "critical"), ("cluster", "eu")]);
        let warn_eu = labels(&[("severity", "warning"), ("cluster", "eu")]);
        let warn_us = labels(&[("severity", "warning"), ("cluster", "us")]);
        assert!(rule.inhibits(&warn_eu, [&critical]));
        assert!(!rule.inhibits(&warn_us, [&critical]));
        assert!(!rule.inhibits(&critical, [&critical]));
        assert!(!rule.inhibits(&warn_eu, [&warn_us]));
        // Two alerts matching both sides do not mute each other.
        let r = Routing::parse(
            "route: { receiver: a }\nreceivers: [{ name: a }]\ninhibit_rules:\n  - source_matchers: ['alertname=NodeDown']\n    target_matchers: ['instance=~\".+\"']\n    equal: [instance, zone]\n",
        )
        .unwrap();
        let a = labels(&[("alertname", "NodeDown"), ("instance", "i1"), ("job", "a")]);
        let b = labels(&[("alertname", "NodeDown"), ("instance", "i1"), ("job", "b")]);
        let other = labels(&[("alertname", "DiskFull"), ("instance", "i1"), ("zone", "")]);
        assert!(!r.inhibit_rules[0].inhibits(&a, [&b]));
        assert!(r.inhibit_rules[0].inhibits(&other, [&a]));
    }

    #[test]
    fn matchers_parse_quotes_and_lists() {
        let m = Matcher::parse(r#"msg="a, \"b\"""#).unwrap();
        assert!(m.matches(&labels(&[("msg", "a, \"b\"")])));
        assert_eq!(split_matchers(r#"a="x,y", b!=z"#), [r#"a="x,y""#, "b!=z"]);
        assert!(Matcher::parse("novalue").is_err());
        assert!(Matcher::parse("=x").is_err());
    }
}
