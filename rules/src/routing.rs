//! Routing in Alertmanager's configuration format (`alerting.yml`): a `route`
//! tree with `matchers` (also the older `match`/`match_re`), `continue`,
//! `group_by`, `group_wait`, `group_interval`, `repeat_interval` and time
//! intervals, `receivers` (webhook, Slack, PagerDuty, e-mail, and vigil's SMS
//! gateway and Alertmanager forwarding), `inhibit_rules` and the `global`
//! defaults they use. An existing `alertmanager.yml` loads as is when it uses
//! what is here; anything vigil does not do (other receivers, templates) is
//! refused by name rather than silently not done.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::rules::parse_duration;
use crate::time_interval::{TimeInterval, TimeIntervalDoc};

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

    /// As Alertmanager writes it: `name="value"`, `name=~"regex"`.
    pub fn display(&self) -> String {
        let op = match self.op {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        };
        format!("{}{op}{:?}", self.name, self.value)
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
    /// E-mail over SMTP; `url` is `smtp://smarthost`.
    Email(EmailConfig),
    /// An SMS gateway taking a Twilio-style form post (`To`, `From`, `Body`,
    /// basic auth).
    Sms {
        to: String,
        from: String,
        username: Option<String>,
        password: Option<String>,
        /// A template of the message (`$labels`, `$value`) for each alert.
        text: Option<String>,
    },
    /// A Prometheus Alertmanager: alerts are posted to `url`
    /// (`.../api/v2/alerts`) as Prometheus posts them.
    AlertmanagerApi,
}

/// How to reach a mailbox (Alertmanager's `email_configs`, with the `global`
/// `smtp_*` defaults filled in).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct EmailConfig {
    /// Addresses, comma-separated.
    pub to: String,
    pub from: String,
    /// `host:port`.
    pub smarthost: String,
    pub hello: Option<String>,
    pub auth_username: Option<String>,
    pub auth_password: Option<String>,
    /// STARTTLS is required (the default); port 465 means TLS from the start.
    pub require_tls: bool,
    /// A PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<String>,
    pub insecure_skip_verify: bool,
    /// Extra headers; `Subject` replaces the default subject.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub webhooks: Vec<Webhook>,
}

/// Where an alert goes (the route that took it): its receiver, how its
/// alerts are grouped into notifications, when those are sent and muted.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub receiver: String,
    /// The route as Alertmanager names it (`{}/{severity="page"}`), with the
    /// route's position so equal siblings differ.
    pub route_key: String,
    /// Labels that split the route's alerts into groups; `None`: every label
    /// (`group_by: ['...']`), so each alert is its own group.
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first message.
    pub group_wait: Duration,
    /// How long after a message a group's changes are sent.
    pub group_interval: Duration,
    /// How often an unchanged firing group is sent again.
    pub repeat_interval: Duration,
    pub mute_time_intervals: Vec<String>,
    pub active_time_intervals: Vec<String>,
}

impl Destination {
    /// The labels of `labels` that name its group.
    pub fn group_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        match &self.group_by {
            None => labels.clone(),
            Some(by) => by
                .iter()
                .filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
        }
    }

    /// Alertmanager's group key: `{route}:{label="value", ...}`.
    pub fn group_key(&self, group_labels: &BTreeMap<String, String>) -> String {
        let labels: Vec<String> = group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}:{{{}}}", self.route_key, labels.join(", "))
    }
}

#[derive(Debug, Clone)]
struct Route {
    receiver: String,
    key: String,
    matchers: Vec<Matcher>,
    continue_: bool,
    group_by: Option<Vec<String>>,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
    mute_time_intervals: Vec<String>,
    active_time_intervals: Vec<String>,
    routes: Vec<Route>,
}

/// The loaded `alerting.yml`.
#[derive(Debug, Clone)]
pub struct Routing {
    route: Route,
    pub inhibit_rules: Vec<InhibitRule>,
    pub receivers: BTreeMap<String, Receiver>,
    pub time_intervals: BTreeMap<String, TimeInterval>,
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
    #[serde(default)]
    email_configs: Vec<EmailDoc>,
    #[serde(default)]
    sms_configs: Vec<SmsDoc>,
    #[serde(default)]
    alertmanager_configs: Vec<AlertmanagerDoc>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailDoc {
    to: String,
    from: Option<String>,
    smarthost: Option<String>,
    hello: Option<String>,
    auth_username: Option<String>,
    auth_password: Option<String>,
    require_tls: Option<bool>,
    #[serde(default)]
    tls_config: TlsDoc,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Alertmanager's default for e-mail: resolved alerts are not sent.
    #[serde(default)]
    send_resolved: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsDoc {
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsDoc {
    url: String,
    to: String,
    from: String,
    username: Option<String>,
    password: Option<String>,
    text: Option<String>,
    #[serde(default)]
    send_resolved: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertmanagerDoc {
    /// The Alertmanager's base URL (`http://host:9093`).
    url: String,
}

/// The `global` defaults vigil uses; the others (for receivers vigil does
/// not have) are ignored.
#[derive(Deserialize, Default)]
struct GlobalDoc {
    smtp_from: Option<String>,
    smtp_smarthost: Option<String>,
    smtp_hello: Option<String>,
    smtp_auth_username: Option<String>,
    smtp_auth_password: Option<String>,
    smtp_require_tls: Option<bool>,
    slack_api_url: Option<String>,
    pagerduty_url: Option<String>,
    #[serde(flatten)]
    _other: BTreeMap<String, serde_norway::Value>,
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
    api_url: Option<String>,
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
    url: Option<String>,
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
    #[serde(default)]
    global: GlobalDoc,
    #[serde(default)]
    time_intervals: Vec<TimeIntervalDoc>,
    /// The older name of `time_intervals`.
    #[serde(default)]
    mute_time_intervals: Vec<TimeIntervalDoc>,
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

/// Alertmanager's defaults: a firing group is sent again every 4 hours, a
/// new group waits 30 s for more alerts, changes go out every 5 minutes.
const DEFAULT_REPEAT: Duration = Duration::from_secs(4 * 3600);
const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);

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
        if let Some(key) = doc.other.keys().next() {
            let message = if key == "templates" {
                format!("`{key}` (Go template files) is not supported by vigil: use the receivers' text fields")
            } else {
                format!("unknown key `{key}`")
            };
            return Err((line_of(&format!("{key}:")), message));
        }
        let mut receivers = BTreeMap::new();
        for r in doc.receivers {
            if let Some((kind, _)) = r.other.iter().next() {
                return Err((
                    line_of(&format!("{kind}:")),
                    format!(
                        "receiver {:?}: `{kind}` is not supported by vigil yet (webhook_configs, slack_configs, pagerduty_configs, email_configs, sms_configs and alertmanager_configs are)",
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
                let api_url = s
                    .api_url
                    .or_else(|| doc.global.slack_api_url.clone())
                    .ok_or_else(|| {
                        (
                            line_of("slack_configs:"),
                            format!(
                                "receiver {:?}: slack needs api_url (or global slack_api_url)",
                                r.name
                            ),
                        )
                    })?;
                check_url(&r.name, &api_url).map_err(|e| (line_of("api_url:"), e))?;
                if let Some(t) = &s.text {
                    crate::template::Template::parse(t).map_err(|e| {
                        (
                            line_of("text:"),
                            format!("receiver {:?}: slack text: {e}", r.name),
                        )
                    })?;
                }
                webhooks.push(Webhook {
                    url: api_url,
                    send_resolved: s.send_resolved,
                    kind: WebhookKind::Slack {
                        channel: s.channel,
                        username: s.username,
                        text: s.text,
                    },
                });
            }
            for p in r.pagerduty_configs {
                let url = p
                    .url
                    .or_else(|| doc.global.pagerduty_url.clone())
                    .unwrap_or_else(pagerduty_url);
                check_url(&r.name, &url).map_err(|e| (line_of("url:"), e))?;
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
                    url,
                    send_resolved: p.send_resolved,
                    kind: WebhookKind::PagerDuty {
                        routing_key: p.routing_key,
                        severity: p.severity,
                    },
                });
            }
            for e in r.email_configs {
                webhooks.push(
                    email(&r.name, e, &doc.global).map_err(|m| (line_of("email_configs:"), m))?,
                );
            }
            for s in r.sms_configs {
                check_url(&r.name, &s.url).map_err(|e| (line_of("url:"), e))?;
                if let Some(t) = &s.text {
                    crate::template::Template::parse(t).map_err(|e| {
                        (
                            line_of("text:"),
                            format!("receiver {:?}: sms text: {e}", r.name),
                        )
                    })?;
                }
                webhooks.push(Webhook {
                    url: s.url,
                    send_resolved: s.send_resolved,
                    kind: WebhookKind::Sms {
                        to: s.to,
                        from: s.from,
                        username: s.username,
                        password: s.password,
                        text: s.text,
                    },
                });
            }
            for a in r.alertmanager_configs {
                check_url(&r.name, &a.url).map_err(|e| (line_of("url:"), e))?;
                webhooks.push(Webhook {
                    url: format!("{}/api/v2/alerts", a.url.trim_end_matches('/')),
                    // Alertmanager must hear that an alert ended.
                    send_resolved: true,
                    kind: WebhookKind::AlertmanagerApi,
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
        let mut time_intervals = BTreeMap::new();
        for t in doc
            .time_intervals
            .into_iter()
            .chain(doc.mute_time_intervals)
        {
            let at = line_of(&format!("- name: {}", t.name)).max(line_of("time_intervals:"));
            let t = t.build().map_err(|e| (at, e))?;
            if time_intervals.contains_key(&t.name) {
                return Err((at, format!("time interval {:?} is defined twice", t.name)));
            }
            time_intervals.insert(t.name.clone(), t);
        }
        let parent = Route {
            receiver: root_receiver,
            key: String::new(),
            matchers: Vec::new(),
            continue_: false,
            group_by: Some(Vec::new()),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT,
            mute_time_intervals: Vec::new(),
            active_time_intervals: Vec::new(),
            routes: Vec::new(),
        };
        let route = build_route(root, &parent, 0, &receivers, &time_intervals, text)?;
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
            time_intervals,
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

    /// Where a rule's own `receiver:` sends: that receiver, with the root
    /// route's grouping and timing.
    pub fn direct(&self, receiver: &str) -> Destination {
        let mut d = self.route.destination();
        d.route_key = format!("{{}}/receiver={receiver:?}");
        d.receiver = receiver.to_string();
        d
    }

    /// Why `d`'s notifications are muted at `at` (nanoseconds since the
    /// epoch): a mute interval in force, or no active interval in force.
    pub fn muted(&self, d: &Destination, at: i64) -> Option<String> {
        let holds = |name: &String| {
            self.time_intervals
                .get(name)
                .is_some_and(|t| t.contains(at))
        };
        if let Some(m) = d.mute_time_intervals.iter().find(|n| holds(n)) {
            return Some(format!("mute time interval {m:?}"));
        }
        if !d.active_time_intervals.is_empty() && !d.active_time_intervals.iter().any(holds) {
            return Some("outside its active time intervals".into());
        }
        None
    }
}

impl Route {
    fn destination(&self) -> Destination {
        Destination {
            receiver: self.receiver.clone(),
            route_key: self.key.clone(),
            group_by: self.group_by.clone(),
            group_wait: self.group_wait,
            group_interval: self.group_interval,
            repeat_interval: self.repeat_interval,
            mute_time_intervals: self.mute_time_intervals.clone(),
            active_time_intervals: self.active_time_intervals.clone(),
        }
    }
}

/// An e-mail receiver, with the `global` `smtp_*` defaults.
fn email(receiver: &str, e: EmailDoc, global: &GlobalDoc) -> Result<Webhook, String> {
    let missing =
        |what: &str| format!("receiver {receiver:?}: email needs `{what}` (or global smtp_{what})");
    let smarthost = e
        .smarthost
        .or_else(|| global.smtp_smarthost.clone())
        .ok_or_else(|| missing("smarthost"))?;
    let port_ok = smarthost
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!(
            "receiver {receiver:?}: smarthost {smarthost:?} is not host:port"
        ));
    }
    let from = e
        .from
        .or_else(|| global.smtp_from.clone())
        .ok_or_else(|| missing("from"))?;
    for name in e.headers.keys() {
        if name.is_empty()
            || name.len() > 76
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
            return Err(format!(
                "receiver {receiver:?}: {name:?} is not an e-mail header name"
            ));
        }
    }
    if let Some(ca) = &e.tls_config.ca_file {
        std::fs::metadata(ca)
            .map_err(|err| format!("receiver {receiver:?}: tls_config ca_file {ca}: {err}"))?;
    }
    for addr in e.to.split(',').map(str::trim).chain([from.as_str()]) {
        if !addr.contains('@') {
            return Err(format!(
                "receiver {receiver:?}: {addr:?} is not an e-mail address"
            ));
        }
    }
    Ok(Webhook {
        url: format!("smtp://{smarthost}"),
        send_resolved: e.send_resolved,
        kind: WebhookKind::Email(EmailConfig {
            to: e.to,
            from,
            smarthost,
            hello: e.hello.or_else(|| global.smtp_hello.clone()),
            auth_username: e
                .auth_username
                .or_else(|| global.smtp_auth_username.clone()),
            auth_password: e
                .auth_password
                .or_else(|| global.smtp_auth_password.clone()),
            require_tls: e.require_tls.or(global.smtp_require_tls).unwrap_or(true),
            ca_file: e.tls_config.ca_file,
            insecure_skip_verify: e.tls_config.insecure_skip_verify,
            headers: e.headers,
        }),
    })
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
        out.push(route.destination());
    }
    true
}

fn build_route(
    doc: RouteDoc,
    parent: &Route,
    index: usize,
    receivers: &BTreeMap<String, Receiver>,
    time_intervals: &BTreeMap<String, TimeInterval>,
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
    if parent.key.is_empty()
        && !(doc.mute_time_intervals.is_empty() && doc.active_time_intervals.is_empty())
    {
        return Err((
            line_of("time_intervals"),
            "route: the root route cannot have mute or active time intervals (as in Alertmanager)"
                .into(),
        ));
    }
    for name in doc
        .mute_time_intervals
        .iter()
        .chain(&doc.active_time_intervals)
    {
        if !time_intervals.contains_key(name) {
            return Err((
                line_of(name),
                format!("route: time interval {name:?} is not defined under `time_intervals`"),
            ));
        }
    }
    let duration = |d: &Option<String>, inherited: Duration| match d {
        Some(d) => parse_duration(d).map_err(|e| (line_of(d), format!("route: {e}"))),
        None => Ok(inherited),
    };
    let group_wait = duration(&doc.group_wait, parent.group_wait)?;
    let group_interval = duration(&doc.group_interval, parent.group_interval)?;
    let repeat_interval = duration(&doc.repeat_interval, parent.repeat_interval)?;
    if group_interval.is_zero() || repeat_interval.is_zero() {
        return Err((
            line_of("_interval"),
            "route: group_interval and repeat_interval must be more than 0".into(),
        ));
    }
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
    // Alertmanager's route key: the parent's, then this route's matchers; the
    // root is `{}`. A sibling with the same matchers as an earlier one gets
    // its position added, so the two keep their groups apart (and adding a
    // route does not rename the groups of the others).
    let key = if parent.key.is_empty() {
        "{}".to_string()
    } else {
        let m: Vec<String> = matchers.iter().map(Matcher::display).collect();
        let key = format!("{}/{{{}}}", parent.key, m.join(","));
        if parent.routes.iter().any(|r| r.key == key) {
            format!("{key}/{index}")
        } else {
            key
        }
    };
    if doc
        .group_by
        .as_ref()
        .is_some_and(|by| by.len() > 1 && by.iter().any(|l| l == "..."))
    {
        return Err((
            line_of("group_by"),
            "route: group_by '...' (every label) cannot be listed with other labels".into(),
        ));
    }
    let group_by = match doc.group_by {
        Some(by) if by.iter().any(|l| l == "...") => None,
        Some(by) => Some(by),
        None => parent.group_by.clone(),
    };
    let mut route = Route {
        receiver,
        key,
        matchers,
        continue_: doc.continue_,
        group_by,
        group_wait,
        group_interval,
        repeat_interval,
        // Not inherited from the parent (as in Alertmanager).
        mute_time_intervals: doc.mute_time_intervals,
        active_time_intervals: doc.active_time_intervals,
        routes: Vec::new(),
    };
    for (i, child) in doc.routes.into_iter().enumerate() {
        let built = build_route(child, &route, i, receivers, time_intervals, text)?;
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
            ("route: { receiver: a }\nreceivers: [{ name: a }]\ntemplates: ['x.tmpl']\n", "templates"),
            ("route: { receiver: a, routes: [{ mute_time_intervals: [nope] }] }\nreceivers: [{ name: a }]\n", "not defined under `time_intervals`"),
            ("route: { receiver: a, mute_time_intervals: [x] }\nreceivers: [{ name: a }]\ntime_intervals: [{ name: x }]\n", "root route"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    email_configs: [{ to: 'ops@example.com' }]\n", "smarthost"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    email_configs: [{ to: ops, from: a@b, smarthost: 'h:25' }]\n", "not an e-mail address"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    email_configs: [{ to: a@b, from: a@b, smarthost: 'nohost' }]\n", "host:port"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    sms_configs: [{ url: 'x', to: '1', from: '2' }]\n", "url"),
            ("route: { receiver: a, group_interval: 0s }\nreceivers: [{ name: a }]\n", "more than 0"),
            ("route: { receiver: a }\nreceivers:\n  - name: a\n    opsgenie_configs: [{}]\n", "opsgenie_configs"),
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
    fn groups_timing_and_mutes_as_alertmanager() {
        let r = Routing::parse(
            r#"
global:
  smtp_smarthost: 'mail.example.com:587'
  smtp_from: 'vigil@example.com'
  smtp_auth_username: vigil
  smtp_auth_password: secret
time_intervals:
  - name: weekends
    time_intervals: [{ weekdays: ['saturday', 'sunday'] }]
route:
  receiver: mail
  group_by: [alertname]
  group_wait: 10s
  routes:
    - matchers: ['severity="page"']
      receiver: mail
      group_by: ['...']
      group_interval: 1m
      mute_time_intervals: [weekends]
    - matchers: ['team="db"']
      receiver: mail
      active_time_intervals: [weekends]
receivers:
  - name: mail
    email_configs: [{ to: 'ops@example.com, dba@example.com', headers: { Subject: 'db alert' } }]
"#,
        )
        .unwrap();
        let page = labels(&[("alertname", "Down"), ("severity", "page"), ("host", "a")]);
        let d = &r.destinations(&page)[0];
        assert_eq!(d.group_by, None);
        assert_eq!(d.group_labels(&page), page);
        assert_eq!(
            (
                d.group_wait.as_secs(),
                d.group_interval.as_secs(),
                d.repeat_interval.as_secs()
            ),
            (10, 60, 4 * 3600)
        );
        assert_eq!(d.route_key, r#"{}/{severity="page"}"#);
        // 2026-11-28 is a Saturday, 2026-11-30 a Monday.
        let sat = 1_795_867_200_000_000_000;
        let mon = sat + 2 * 86_400_000_000_000;
        assert!(r.muted(d, sat).unwrap().contains("weekends"));
        assert!(r.muted(d, mon).is_none());
        let db = labels(&[("alertname", "Slow"), ("team", "db")]);
        let d = &r.destinations(&db)[0];
        assert!(r.muted(d, sat).is_none());
        assert!(r.muted(d, mon).unwrap().contains("active"));
        let other = labels(&[("alertname", "Slow"), ("host", "b")]);
        let d = &r.destinations(&other)[0];
        assert_eq!(
            d.group_key(&d.group_labels(&other)),
            r#"{}:{alertname="Slow"}"#
        );
        assert_eq!(d.group_interval.as_secs(), 300);
        let WebhookKind::Email(e) = &r.receiver("mail").unwrap().webhooks[0].kind else {
            panic!("an e-mail receiver")
        };
        assert_eq!(e.smarthost, "mail.example.com:587");
        assert_eq!(e.auth_password.as_deref(), Some("secret"));
        assert!(e.require_tls);
        assert_eq!(e.headers["Subject"], "db alert");
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
