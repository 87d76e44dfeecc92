//! Delivery of queued notifications. Each goes to its endpoint in the
//! endpoint's format: Alertmanager's webhook (version 4), Slack, PagerDuty
//! Events v2, an Alertmanager's `/api/v2/alerts`, a Twilio-style SMS
//! gateway, or e-mail over SMTP. HTTP requests carry an `Idempotency-Key`
//! header (e-mails use it as their Message-ID). A notification leaves the
//! outbox once delivered, refused for good (a 4xx, a permanent SMTP error)
//! or retried with backoff until given up (a dead letter); every outcome is
//! logged in the delivery log (`system.notifications`). Nothing is dropped
//! silently: at least once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tracing::{debug, warn};
use vigil_storage::retention::now_nanos;

use std::collections::BTreeMap;

use crate::evaluator::Evaluator;
use crate::store::{AlertInstance, AlertState, Notification};
use vigil_rules::{Data, Template, WebhookKind};

/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;

pub fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The alert as Alertmanager's webhook and API show it.
pub fn alert_json(a: &AlertInstance, generator_url: &str) -> serde_json::Value {
    let status = status_of(a);
    json!({
        "status": status,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_at)),
        "endsAt": match (status, a.resolved_at) {
            ("resolved", Some(t)) => rfc3339(t),
            _ => "0001-01-01T00:00:00Z".to_string(),
        },
        "generatorURL": generator_url,
        "fingerprint": format!("{:016x}", a.fingerprint()),
    })
}

fn status_of(a: &AlertInstance) -> &'static str {
    if a.state == AlertState::Resolved {
        "resolved"
    } else {
        "firing"
    }
}

/// The labels (or annotations) every alert of the notification has, with
/// the same value.
fn common(
    n: &Notification,
    of: impl Fn(&AlertInstance) -> &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut alerts = n.alerts.iter();
    let Some(first) = alerts.next() else {
        return BTreeMap::new();
    };
    let mut out = of(first).clone();
    for a in alerts {
        let other = of(a);
        out.retain(|k, v| other.get(k) == Some(v));
    }
    out
}

fn firing(n: &Notification) -> impl Iterator<Item = &AlertInstance> {
    n.alerts.iter().filter(|a| a.state != AlertState::Resolved)
}

fn resolved(n: &Notification) -> impl Iterator<Item = &AlertInstance> {
    n.alerts.iter().filter(|a| a.state == AlertState::Resolved)
}

/// Alertmanager's default subject: `[FIRING:2] HighCpu (eu web)`, the group
/// label values, then the other common label values.
pub fn subject(n: &Notification) -> String {
    let status = if n.status == "resolved" {
        "RESOLVED".to_string()
    } else {
        format!("FIRING:{}", firing(n).count())
    };
    let mut parts = vec![format!("[{status}]")];
    parts.extend(n.group_labels.values().cloned());
    let rest: Vec<String> = common(n, |a| &a.labels)
        .into_iter()
        .filter(|(k, _)| !n.group_labels.contains_key(k))
        .map(|(_, v)| v)
        .collect();
    if !rest.is_empty() {
        parts.push(format!("({})", rest.join(" ")));
    }
    parts.join(" ")
}

/// The webhook body (Alertmanager's version 4): the group and its alerts.
pub fn webhook_body(n: &Notification, external_url: &str) -> serde_json::Value {
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": common(n, |a| &a.labels),
        "commonAnnotations": common(n, |a| &a.annotations),
        "externalURL": external_url,
        "alerts": n.alerts.iter().map(|a| alert_json(a, external_url)).collect::<Vec<_>>(),
    })
}

/// What an alert is about, in one line: its summary (or description), else
/// its labels.
fn summary(a: &AlertInstance) -> String {
    let name = a.labels.get("alertname").cloned().unwrap_or_default();
    let about = a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
        .cloned()
        .unwrap_or_else(|| {
            a.labels
                .iter()
                .filter(|(k, _)| *k != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
    format!("{name}: {about}")
}

/// Each alert by a receiver's text template (`$labels`, `$value`), one line
/// each; without a template, the subject and each alert's summary.
fn text_lines(n: &Notification, template: Option<&str>) -> String {
    match template.and_then(|t| Template::parse(t).ok()) {
        Some(t) => n
            .alerts
            .iter()
            .map(|a| {
                t.render(&Data {
                    labels: &a.labels,
                    value: a.value,
                })
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => {
            let mut lines = vec![subject(n)];
            lines.extend(n.alerts.iter().map(|a| format!("- {}", summary(a))));
            lines.join("\n")
        }
    }
}

/// The JSON body for an HTTP endpoint (not e-mail, not SMS).
pub fn body(n: &Notification, external_url: &str) -> serde_json::Value {
    match &n.kind {
        WebhookKind::Slack {
            channel,
            username,
            text,
        } => slack_body(n, channel.as_deref(), username.as_deref(), text.as_deref()),
        WebhookKind::PagerDuty {
            routing_key,
            severity,
        } => pagerduty_body(n, routing_key, severity, external_url),
        WebhookKind::AlertmanagerApi => alertmanager_body(n, external_url),
        WebhookKind::Sms { .. } => json!({ "body": sms_text(n) }),
        WebhookKind::Email(e) => json!({
            "subject": e.headers.get("Subject").cloned().unwrap_or_else(|| subject(n)),
            "text": email_text(n, external_url),
        }),
        WebhookKind::Alertmanager => webhook_body(n, external_url),
    }
}

/// A Slack incoming-webhook message: a line of text and an attachment with
/// the group's alerts, red while any fires, green when resolved.
fn slack_body(
    n: &Notification,
    channel: Option<&str>,
    username: Option<&str>,
    text: Option<&str>,
) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = common(n, |a| &a.labels)
        .iter()
        .map(|(k, v)| json!({ "title": k, "value": v, "short": true }))
        .collect();
    let details: Vec<String> = n
        .alerts
        .iter()
        .map(|a| format!("[{}] {}", status_of(a), summary(a)))
        .collect();
    let mut body = json!({
        "text": text_lines(n, text),
        "attachments": [{
            "color": if n.status == "resolved" { "good" } else { "danger" },
            "title": subject(n),
            "text": details.join("\n"),
            "fields": fields,
        }],
    });
    if let Some(c) = channel {
        body["channel"] = c.into();
    }
    if let Some(u) = username {
        body["username"] = u.into();
    }
    body
}

/// A PagerDuty Events API v2 event for the group: `trigger` while any alert
/// fires, `resolve` once all ended, deduplicated by the group (as
/// Alertmanager does).
fn pagerduty_body(
    n: &Notification,
    routing_key: &str,
    severity: &str,
    external_url: &str,
) -> serde_json::Value {
    let dedup_key = format!(
        "{:016x}",
        crate::store::fingerprint(&BTreeMap::from([
            ("receiver".to_string(), n.receiver.clone()),
            ("group".to_string(), n.group_key.clone()),
        ]))
    );
    if n.status == "resolved" {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let labels = common(n, |a| &a.labels);
    let source = ["instance", "host", "hostname", "job"]
        .iter()
        .find_map(|k| labels.get(*k).cloned())
        .unwrap_or_else(|| "vigil".to_string());
    let list = |it: &mut dyn Iterator<Item = &AlertInstance>| -> Vec<serde_json::Value> {
        it.map(|a| json!({ "labels": a.labels, "annotations": a.annotations, "value": a.value.to_string() }))
            .collect()
    };
    let summary: String = subject(n).chars().take(1024).collect();
    let first = n.alerts.first();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": source,
            "severity": severity,
            "timestamp": rfc3339(first.map_or(n.enqueued_at, |a| a.fired_at.unwrap_or(a.active_at))),
            "custom_details": {
                "num_firing": firing(n).count(),
                "num_resolved": resolved(n).count(),
                "firing": list(&mut firing(n)),
                "resolved": list(&mut resolved(n)),
            },
        },
        "client": "vigil",
        "client_url": external_url,
    })
}

/// Alerts as Prometheus posts them to an Alertmanager: a firing alert holds
/// until `valid_until` unless sent again, a resolved one ended when it did.
fn alertmanager_body(n: &Notification, external_url: &str) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = n
        .alerts
        .iter()
        .map(|a| {
            let ends = match (a.state, a.resolved_at) {
                (AlertState::Resolved, Some(t)) => t,
                _ => n.valid_until.unwrap_or(n.enqueued_at + 4 * 60_000_000_000),
            };
            json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_at)),
                "endsAt": rfc3339(ends),
                "generatorURL": external_url,
            })
        })
        .collect();
    serde_json::Value::Array(alerts)
}

/// An SMS: the receiver's template per alert, or the subject and summaries;
/// at most 1,600 characters (Twilio's limit).
fn sms_text(n: &Notification) -> String {
    let template = match &n.kind {
        WebhookKind::Sms { text, .. } => text.as_deref(),
        _ => None,
    };
    // Gateways count UTF-16 units (an emoji is two).
    let mut units = 0;
    text_lines(n, template)
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= 1600
        })
        .collect()
}

/// A plain-text e-mail: the subject, each alert with its labels, value and
/// annotations, and where to look.
fn email_text(n: &Notification, external_url: &str) -> String {
    let mut out = format!("{}\n", subject(n));
    for (title, alerts) in [
        ("Firing", firing(n).collect::<Vec<_>>()),
        ("Resolved", resolved(n).collect::<Vec<_>>()),
    ] {
        if alerts.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title}:\n"));
        for a in alerts {
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("- {}  value={}\n", labels.join(" "), a.value));
            for (k, v) in &a.annotations {
                out.push_str(&format!("  {k}: {v}\n"));
            }
            out.push_str(&format!(
                "  since {}\n",
                rfc3339(a.fired_at.unwrap_or(a.active_at))
            ));
        }
    }
    out.push_str(&format!("\nSource: {external_url}\n"));
    out
}

/// What a delivery attempt came to.
pub(crate) enum Attempt {
    Delivered,
    /// Refused in a way retrying cannot change.
    Refused(String),
    Failed(String),
}

/// Delay before attempt `n + 1`: 1 s doubling, at most 5 minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
}

/// `scheme://host:port` of an endpoint URL, without path and user info.
pub(crate) fn endpoint_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "the endpoint".to_string(),
    }
}

/// ±20 %, so receivers coming back are not hit by every sender at once.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

impl Evaluator {
    /// Runs until `stop` fires: delivers what is due, then sleeps until woken
    /// by a new notification or the next retry.
    pub(crate) async fn dispatch(
        self: Arc<Self>,
        external_url: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client builds");
        loop {
            let wait = match self.deliver_due(&client, &external_url).await {
                Ok(wait) => wait,
                Err(e) => {
                    warn!(error = %e, "reading the alert outbox failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.wake_dispatcher.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// When a notification may go: at its next attempt, and a node that is
    /// not first among its peers first gives the ones before it their turn
    /// (Alertmanager's HA: position × peer timeout).
    fn due_at(&self, n: &Notification) -> i64 {
        // With a queue, Kafka's partitions decide who sends, not turns.
        let turn = if n.attempts == 0 && self.queue.is_none() {
            n.enqueued_at
                + crate::evaluator::dur_nanos(self.peers.timeout) * i64::from(self.peers.position)
        } else {
            i64::MIN
        };
        n.next_attempt.max(turn)
    }

    /// Delivers every due notification; how long until the next one is due.
    async fn deliver_due(
        self: &Arc<Self>,
        client: &reqwest::Client,
        external_url: &str,
    ) -> Result<Duration, crate::AlertError> {
        let store = Arc::clone(&self.store);
        let outbox = tokio::task::spawn_blocking(move || store.outbox())
            .await
            .map_err(|e| crate::AlertError::Task(e.to_string()))??;
        self.metrics.outbox.set(outbox.len() as i64);
        let now = now_nanos();
        let next = outbox
            .iter()
            .map(|(_, n)| self.due_at(n))
            .filter(|t| *t > now)
            .map(|t| t - now)
            .min()
            .map_or(Duration::from_secs(5), |d| Duration::from_nanos(d as u64))
            .min(Duration::from_secs(5));
        // One group's notifications reach an endpoint in order: only the
        // oldest waiting for a (receiver, group, endpoint) goes, the next once
        // it is done (a resolved message never overtakes a firing one being
        // retried).
        let mut first = std::collections::HashSet::new();
        let due: Vec<_> = outbox
            .into_iter()
            .filter(|(_, n)| first.insert((n.receiver.clone(), n.group_key.clone(), n.url.clone())))
            .filter(|(_, n)| self.due_at(n) <= now)
            .collect();
        let mut due = due;
        if let Some(q) = &self.queue {
            self.publish_due(q, &mut due).await;
        }
        // A delivery failing now is due again in a second at the earliest.
        let next = if due.is_empty() {
            next
        } else {
            next.min(backoff(0))
        };
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |(id, n)| {
                let this = Arc::clone(self);
                async move { this.deliver(client, external_url, id, n).await }
            })
            .await;
        Ok(next)
    }

    /// Whether a peer already delivered the notification with this key.
    async fn sent_by_peer(&self, client: &reqwest::Client, key: &str) -> Option<String> {
        if !crate::queue::valid_key(key) {
            return None;
        }
        for peer in &self.peers.urls {
            let url = format!(
                "{}/api/v1/alerts/notifications/{key}",
                peer.trim_end_matches('/')
            );
            let mut req = client.get(&url).timeout(Duration::from_secs(2));
            if let Some(t) = &self.peers.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let done: serde_json::Value = r.json().await.unwrap_or_default();
                    if done["outcome"] == "delivered" {
                        return Some(peer.clone());
                    }
                }
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {}
                Ok(r) => {
                    debug!(peer = peer.as_str(), status = %r.status(), "peer did not answer for a notification")
                }
                Err(e) => debug!(peer = peer.as_str(), error = %e, "peer unreachable"),
            }
        }
        None
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        external_url: &str,
        n: &Notification,
    ) -> Attempt {
        // Errors name the endpoint's host only: its path and user info are
        // often secrets (a Slack webhook token) and errors are shown.
        let host = endpoint_host(&n.url);
        let http = |r: Result<reqwest::Response, reqwest::Error>| match r {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            // A refusal that retrying cannot change (a 4xx other than timeout
            // and rate limit): not retried, as Alertmanager does.
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                Attempt::Refused(format!("{host} answered {}", r.status()))
            }
            Ok(r) => Attempt::Failed(format!("{host} answered {}", r.status())),
            Err(e) => Attempt::Failed(format!("{host}: {}", e.without_url())),
        };
        match &n.kind {
            WebhookKind::Email(e) => {
                crate::email::send(e, n, &subject(n), &email_text(n, external_url)).await
            }
            WebhookKind::Sms {
                to,
                from,
                username,
                password,
                ..
            } => {
                let mut req = client
                    .post(&n.url)
                    .header("Idempotency-Key", &n.idempotency_key)
                    .form(&[
                        ("To", to.as_str()),
                        ("From", from.as_str()),
                        ("Body", &sms_text(n)),
                    ]);
                if let Some(u) = username {
                    req = req.basic_auth(u, password.as_deref());
                }
                http(req.send().await)
            }
            _ => http(
                client
                    .post(&n.url)
                    .header("Idempotency-Key", &n.idempotency_key)
                    .json(&body(n, external_url))
                    .send()
                    .await,
            ),
        }
    }

    /// With a Kafka queue, this node's own notifications are published (the
    /// oldest of each group and endpoint, so order holds) and leave the outbox
    /// once the broker has them. A failure is retried with backoff like a
    /// delivery, and given up after `give_up_after` (a dead letter); after
    /// one failure the rest of the pass is not tried (the broker is likely
    /// down) but counts as failed too.
    async fn publish_due(
        &self,
        q: &crate::queue::QueueProducer,
        due: &mut Vec<(u64, Notification)>,
    ) {
        let mut rest = Vec::new();
        let mut failure: Option<String> = None;
        for (id, mut n) in due.drain(..) {
            if n.from_queue {
                rest.push((id, n));
                continue;
            }
            let result = match &failure {
                Some(e) => Err(crate::queue::PublishError {
                    message: e.clone(),
                    permanent: false,
                }),
                None => q.publish(&n).await,
            };
            let store = Arc::clone(&self.store);
            let done = match result {
                Ok(()) => {
                    self.metrics.published.inc();
                    tokio::task::spawn_blocking(move || store.published(id)).await
                }
                Err(e) => {
                    n.attempts += 1;
                    let now = now_nanos();
                    let late =
                        now - n.enqueued_at >= crate::evaluator::dur_nanos(self.give_up_after);
                    if e.permanent || late {
                        self.metrics.dead.inc();
                        warn!(receiver = n.receiver.as_str(), error = e.message.as_str(), "notification given up: not published to Kafka (a dead letter in system.notifications)");
                        let record = n.finished("dead", now, Some(e.message));
                        tokio::task::spawn_blocking(move || store.finished(id, &record)).await
                    } else {
                        // The broker is likely down: the rest of this pass is
                        // not tried, and counts as failed too.
                        failure.get_or_insert_with(|| e.message.clone());
                        warn!(
                            receiver = n.receiver.as_str(),
                            error = e.message.as_str(),
                            "notification not published; will retry"
                        );
                        n.next_attempt =
                            now + crate::evaluator::dur_nanos(jitter(backoff(n.attempts - 1)));
                        n.last_error = Some(e.message);
                        tokio::task::spawn_blocking(move || store.retry_later(id, &n)).await
                    }
                }
            };
            if let Ok(Err(e)) | Err(e) = done.map_err(|e| crate::AlertError::Task(e.to_string())) {
                warn!(error = %e, "updating the alert outbox failed");
            }
        }
        *due = rest;
    }

    async fn deliver(
        &self,
        client: &reqwest::Client,
        external_url: &str,
        id: u64,
        mut n: Notification,
    ) {
        let outcome = match self.sent_by_peer(client, &n.idempotency_key).await {
            Some(peer) => {
                debug!(
                    key = n.idempotency_key.as_str(),
                    peer = peer.as_str(),
                    "notification already delivered by a peer"
                );
                self.metrics.sent_by_peer.inc();
                Ok(n.finished(
                    "sent_by_peer",
                    now_nanos(),
                    Some(format!("delivered by {peer}")),
                ))
            }
            None => match self.attempt(client, external_url, &n).await {
                Attempt::Delivered => {
                    self.metrics.sent.inc();
                    n.attempts += 1;
                    debug!(
                        receiver = n.receiver.as_str(),
                        key = n.idempotency_key.as_str(),
                        "notification delivered"
                    );
                    Ok(n.finished("delivered", now_nanos(), None))
                }
                Attempt::Refused(e) => {
                    self.metrics.dropped.inc();
                    n.attempts += 1;
                    warn!(
                        receiver = n.receiver.as_str(),
                        error = e.as_str(),
                        "notification refused by the receiver; not retried"
                    );
                    Ok(n.finished("dropped", now_nanos(), Some(e)))
                }
                Attempt::Failed(e) => {
                    self.metrics.send_failures.inc();
                    n.attempts += 1;
                    let now = now_nanos();
                    if now - n.enqueued_at >= crate::evaluator::dur_nanos(self.give_up_after) {
                        self.metrics.dead.inc();
                        warn!(receiver = n.receiver.as_str(), attempts = n.attempts, error = e.as_str(), "notification given up after retrying (a dead letter in system.notifications)");
                        Ok(n.finished("dead", now, Some(e)))
                    } else {
                        warn!(
                            receiver = n.receiver.as_str(),
                            attempts = n.attempts,
                            error = e.as_str(),
                            "notification not delivered; will retry"
                        );
                        n.next_attempt =
                            now + crate::evaluator::dur_nanos(jitter(backoff(n.attempts - 1)));
                        n.last_error = Some(e);
                        Err(n)
                    }
                }
            },
        };
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || match outcome {
            Ok(record) => store.finished(id, &record),
            Err(n) => store.retry_later(id, &n),
        })
        .await;
        if let Ok(Err(e)) | Err(e) = done.map_err(|e| crate::AlertError::Task(e.to_string())) {
            warn!(error = %e, "updating the alert outbox failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_errors_hide_paths_and_credentials() {
        assert_eq!(
            endpoint_host("https://user:pw@hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            endpoint_host("http://127.0.0.1:9093/api/v2/alerts"),
            "http://127.0.0.1:9093"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
