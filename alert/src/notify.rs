//! Delivery of queued notifications: each is POSTed to its webhook in
//! Alertmanager's webhook format (version 4) with an `Idempotency-Key` header,
//! removed from the outbox on a 2xx answer, and retried with backoff
//! otherwise; nothing is dropped (at least once).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tracing::{debug, warn};
use vigil_storage::retention::now_nanos;

use crate::evaluator::Evaluator;
use crate::store::{AlertInstance, Notification};
use vigil_rules::{Data, Template, WebhookKind};

/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;

pub fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The alert as Alertmanager's webhook and API show it.
pub fn alert_json(a: &AlertInstance, status: &str, generator_url: &str) -> serde_json::Value {
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

/// The webhook body: one alert per notification (grouping is not done yet).
pub fn webhook_body(n: &Notification, external_url: &str) -> serde_json::Value {
    let labels = &n.alert.labels;
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname={:?}, fingerprint=\"{:016x}\"}}", labels.get("alertname").cloned().unwrap_or_default(), n.alert.fingerprint()),
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": labels,
        "commonLabels": labels,
        "commonAnnotations": n.alert.annotations,
        "externalURL": external_url,
        "alerts": [alert_json(&n.alert, &n.status, external_url)],
    })
}

/// The body for the notification's endpoint.
pub fn body(n: &Notification, external_url: &str) -> serde_json::Value {
    match &n.kind {
        WebhookKind::Alertmanager => webhook_body(n, external_url),
        WebhookKind::Slack {
            channel,
            username,
            text,
        } => slack_body(n, channel.as_deref(), username.as_deref(), text.as_deref()),
        WebhookKind::PagerDuty {
            routing_key,
            severity,
        } => pagerduty_body(n, routing_key, severity, external_url),
    }
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

/// A Slack incoming-webhook message: a line of text and an attachment with
/// the labels, red while firing, green when resolved.
fn slack_body(
    n: &Notification,
    channel: Option<&str>,
    username: Option<&str>,
    text: Option<&str>,
) -> serde_json::Value {
    let a = &n.alert;
    let status = if n.status == "resolved" {
        "RESOLVED"
    } else {
        "FIRING"
    };
    let text = match text.and_then(|t| Template::parse(t).ok()) {
        Some(t) => t.render(&Data {
            labels: &a.labels,
            value: a.value,
        }),
        None => format!("[{status}] {}", summary(a)),
    };
    let fields: Vec<serde_json::Value> = a
        .labels
        .iter()
        .map(|(k, v)| json!({ "title": k, "value": v, "short": true }))
        .collect();
    let mut body = json!({
        "text": text,
        "attachments": [{
            "color": if n.status == "resolved" { "good" } else { "danger" },
            "title": format!("[{status}] {}", a.labels.get("alertname").cloned().unwrap_or_default()),
            "text": a.annotations.get("description").or_else(|| a.annotations.get("summary")).cloned().unwrap_or_default(),
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

/// A PagerDuty Events API v2 event: `trigger` while firing, `resolve` after,
/// deduplicated by the alert (rule and labels).
fn pagerduty_body(
    n: &Notification,
    routing_key: &str,
    severity: &str,
    external_url: &str,
) -> serde_json::Value {
    let a = &n.alert;
    let dedup_key = format!("{}/{:016x}", a.rule, a.fingerprint());
    if n.status == "resolved" {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let source = ["instance", "host", "hostname", "job"]
        .iter()
        .find_map(|k| a.labels.get(*k).cloned())
        .unwrap_or_else(|| "vigil".to_string());
    let summary: String = summary(a).chars().take(1024).collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": source,
            "severity": severity,
            "timestamp": rfc3339(a.fired_at.unwrap_or(a.active_at)),
            "custom_details": {
                "labels": a.labels,
                "annotations": a.annotations,
                "value": a.value.to_string(),
            },
        },
        "client": "vigil",
        "client_url": external_url,
    })
}

/// Delay before attempt `n + 1`: 1 s doubling, at most 5 minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
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
            .filter(|(_, n)| n.next_attempt > now)
            .map(|(_, n)| n.next_attempt - now)
            .min()
            .map_or(Duration::from_secs(5), |d| Duration::from_nanos(d as u64))
            .min(Duration::from_secs(5));
        // One alert's notifications reach a webhook in order: only the oldest
        // waiting for a (rule, alert, url) goes, the next once it is delivered
        // (a resolved message never overtakes a firing one being retried).
        let mut first = std::collections::HashSet::new();
        let due: Vec<_> = outbox
            .into_iter()
            .filter(|(_, n)| {
                first.insert((n.alert.rule.clone(), n.alert.fingerprint(), n.url.clone()))
            })
            .filter(|(_, n)| n.next_attempt <= now)
            .collect();
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

    async fn deliver(
        &self,
        client: &reqwest::Client,
        external_url: &str,
        id: u64,
        mut n: Notification,
    ) {
        let body = body(&n, external_url);
        let sent = client
            .post(&n.url)
            .header("Idempotency-Key", &n.idempotency_key)
            .json(&body)
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            // A refusal that retrying cannot change (a 4xx other than timeout
            // and rate limit): dropped, as Alertmanager does, and counted.
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                self.metrics.dropped.inc();
                warn!(receiver = n.receiver.as_str(), url = n.url.as_str(), status = %r.status(), "notification refused by the receiver; dropped");
                let store = Arc::clone(&self.store);
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.delivered(id)).await {
                    warn!(error = %e, "updating the alert outbox failed");
                }
                return;
            }
            Ok(r) => Some(format!("{} answered {}", n.url, r.status())),
            Err(e) => Some(format!("{}: {e}", n.url)),
        };
        let store = Arc::clone(&self.store);
        let done = match failure {
            None => {
                self.metrics.sent.inc();
                debug!(
                    receiver = n.receiver.as_str(),
                    key = n.idempotency_key.as_str(),
                    "notification delivered"
                );
                tokio::task::spawn_blocking(move || store.delivered(id)).await
            }
            Some(e) => {
                self.metrics.send_failures.inc();
                warn!(
                    receiver = n.receiver.as_str(),
                    attempts = n.attempts + 1,
                    error = e.as_str(),
                    "notification not delivered; will retry"
                );
                n.next_attempt = now_nanos() + crate::evaluator::dur_nanos(backoff(n.attempts));
                n.attempts += 1;
                n.last_error = Some(e);
                tokio::task::spawn_blocking(move || store.retry_later(id, &n)).await
            }
        };
        if let Ok(Err(e)) | Err(e) = done.map_err(|e| crate::AlertError::Task(e.to_string())) {
            warn!(error = %e, "updating the alert outbox failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
