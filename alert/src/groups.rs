//! Aggregation groups, as Alertmanager's dispatcher makes them: each route
//! that takes an alert puts it in the group of its receiver and its
//! `group_by` label values. A new group waits `group_wait` for more alerts,
//! then is sent as one notification; after that its changes go out at most
//! every `group_interval`, and an unchanged firing group again every
//! `repeat_interval`. Silences, inhibit rules and time intervals are applied
//! when a group is flushed, so they hold for the message as a whole.
//!
//! Groups are derived from the alerts at each pass; what is kept (in redb,
//! with the notifications a flush causes, in one transaction) is when each
//! group is next due and what its receiver was last told.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use vigil_rules::{Destination, Routing, Webhook, WebhookKind};
use vigil_storage::retention::now_nanos;

use crate::evaluator::{dur_nanos, Evaluator, RESOLVED_RETENTION};
use crate::store::{AlertInstance, AlertState, Changes, GroupState, Notification};
use crate::AlertError;

/// Prometheus sends firing alerts to an Alertmanager again every minute and
/// marks them valid for four times that; a receiver with an Alertmanager
/// endpoint is re-sent at least this often so they do not expire there.
const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// FNV-1a, stable across versions and nodes (idempotency keys depend on it).
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// One group as found in a pass: where it goes and its alerts.
pub(crate) struct Group<'a> {
    pub destination: Destination,
    pub labels: BTreeMap<String, String>,
    pub key: String,
    pub alerts: Vec<&'a AlertInstance>,
}

/// The groups of `alerts` (pending ones are in none), by id.
pub(crate) fn group_alerts<'a>(
    alerts: &'a [AlertInstance],
    routing: &Routing,
    direct: &HashMap<String, String>,
) -> BTreeMap<String, Group<'a>> {
    let mut groups: BTreeMap<String, Group<'a>> = BTreeMap::new();
    for a in alerts.iter().filter(|a| a.state != AlertState::Pending) {
        let destinations = match direct.get(&a.rule) {
            Some(receiver) => vec![routing.direct(receiver)],
            None => routing.destinations(&a.labels),
        };
        for d in destinations {
            let labels = d.group_labels(&a.labels);
            let key = d.group_key(&labels);
            let id = format!("{}\u{0}{key}", d.receiver);
            groups
                .entry(id)
                .or_insert_with(|| Group {
                    destination: d,
                    labels,
                    key,
                    alerts: Vec::new(),
                })
                .alerts
                .push(a);
        }
    }
    groups
}

/// What one flush of a group says.
pub(crate) struct FlushPlan<'a> {
    /// Firing alerts not silenced or inhibited.
    pub firing: Vec<&'a AlertInstance>,
    /// Every firing alert (an Alertmanager applies its own silences).
    pub all_firing: Vec<&'a AlertInstance>,
    /// Alerts told as firing that ended.
    pub resolved: Vec<&'a AlertInstance>,
    /// New firing alerts, or the repeat interval passed: every endpoint is
    /// told.
    pub news: bool,
    /// Only the Alertmanager endpoints are due (their minute resend).
    pub forward_only: bool,
    /// Names the message: the same on every node evaluating the same rules.
    pub content: String,
}

/// The notifications of one flush of `group` to each endpoint of its
/// receiver: its firing alerts, and its resolved ones where the endpoint
/// wants them.
pub(crate) fn notifications(
    group: &Group,
    webhooks: &[Webhook],
    plan: &FlushPlan,
    at: i64,
) -> Vec<Notification> {
    let mut out = Vec::new();
    let owned =
        |v: &[&AlertInstance]| -> Vec<AlertInstance> { v.iter().map(|a| (*a).clone()).collect() };
    for (i, w) in webhooks.iter().enumerate() {
        let forward = w.kind == WebhookKind::AlertmanagerApi;
        let mut alerts = if forward {
            owned(&plan.all_firing)
        } else if plan.forward_only {
            continue;
        } else {
            owned(&plan.firing)
        };
        if w.send_resolved {
            alerts.extend(owned(&plan.resolved));
        } else if !plan.news {
            // Only alerts ended: nothing for an endpoint that is not told
            // about those.
            continue;
        }
        if alerts.is_empty() {
            continue;
        }
        let status = if alerts.iter().any(|a| a.state == AlertState::Firing) {
            "firing"
        } else {
            "resolved"
        };
        let valid_until = forward.then(|| {
            let resend = group.destination.group_interval.max(ALERTMANAGER_RESEND);
            at.saturating_add(dur_nanos(resend).saturating_mul(4))
        });
        out.push(Notification {
            idempotency_key: format!(
                "{:016x}-{}-{i}",
                hash(&[group.destination.receiver.as_bytes(), group.key.as_bytes()]),
                plan.content
            ),
            receiver: group.destination.receiver.clone(),
            group_key: group.key.clone(),
            group_labels: group.labels.clone(),
            url: w.url.clone(),
            kind: w.kind.clone(),
            endpoint_index: i,
            status: status.to_string(),
            alerts,
            alert: None,
            valid_until,
            enqueued_at: at,
            from_queue: false,
            attempts: 0,
            next_attempt: at,
            last_error: None,
        });
    }
    out
}

impl Evaluator {
    /// Rules that send straight to a receiver (their `receiver:`), by key.
    fn direct_receivers(&self) -> HashMap<String, String> {
        self.groups
            .read()
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter_map(|r| r.receiver.clone().map(|x| (r.key.clone(), x)))
            .collect()
    }

    /// Runs until `stop` fires: a pass every second, or at once when alerts
    /// change.
    pub(crate) async fn flush_groups(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut pruned = std::time::Instant::now();
        loop {
            if pruned.elapsed() > Duration::from_secs(600) {
                pruned = std::time::Instant::now();
                let store = Arc::clone(&self.store);
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || store.prune_deliveries(now_nanos())).await
                {
                    warn!(error = %e, "pruning the delivery log failed");
                }
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.flush_due(now_nanos())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "flushing alert groups failed"),
                Err(e) => warn!(error = %e, "flushing alert groups failed"),
            }
            tokio::select! {
                _ = self.wake_flusher.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass at `now`: every due group is flushed; the notifications this
    /// queued.
    pub(crate) fn flush_due(&self, now: i64) -> Result<usize, AlertError> {
        let Some(routing) = self.routing.read().clone() else {
            return Ok(0);
        };
        let direct = self.direct_receivers();
        let alerts = self.expire_resolved(now)?;
        let firing_labels: Vec<&BTreeMap<String, String>> = if routing.inhibit_rules.is_empty() {
            Vec::new()
        } else {
            alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| &a.labels)
                .collect()
        };
        let groups = group_alerts(&alerts, &routing, &direct);
        let mut states = self.group_states.lock();
        let mut changes = Changes::default();
        for id in states.keys().filter(|id| !groups.contains_key(*id)) {
            changes.group_removals.push(id.clone());
        }
        for (id, group) in &groups {
            let any_firing = group.alerts.iter().any(|a| a.state == AlertState::Firing);
            let mut st = match states.get(id) {
                Some(s) => s.clone(),
                // A group starts with a firing alert; resolved alerts alone
                // were never told, so there is nothing to say.
                None if !any_firing => continue,
                None => GroupState {
                    receiver: group.destination.receiver.clone(),
                    group_key: group.key.clone(),
                    group_labels: group.labels.clone(),
                    created_at: now,
                    next_flush: now.saturating_add(dur_nanos(group.destination.group_wait)),
                    last_sent: None,
                    told_firing: BTreeMap::new(),
                    last_forwarded: None,
                },
            };
            let before = st.clone();
            if now >= st.next_flush {
                self.flush(group, &mut st, &routing, &firing_labels, now, &mut changes);
            }
            if st.told_firing.is_empty() && !any_firing {
                // Everything it told ended and was said to: the group is done.
                if states.contains_key(id) {
                    changes.group_removals.push(id.clone());
                }
            } else if st != before || !states.contains_key(id) {
                changes.groups.push((id.clone(), st));
            }
        }
        let queued = changes.notifications.len();
        self.store.apply(&changes)?;
        for id in &changes.group_removals {
            states.remove(id);
        }
        for (id, st) in changes.groups {
            states.insert(id, st);
        }
        drop(states);
        if queued > 0 {
            self.metrics.enqueued.inc_by(queued as u64);
            self.wake_dispatcher.notify_one();
        }
        Ok(queued)
    }

    /// Every alert, after dropping resolved ones older than the retention
    /// (a deleted rule's alerts have no evaluation to drop them).
    fn expire_resolved(&self, now: i64) -> Result<Vec<AlertInstance>, AlertError> {
        // A resolved alert a group told as firing stays until the group says
        // it ended (a `group_interval` may be longer than the retention).
        let told: std::collections::HashSet<u64> = self
            .group_states
            .lock()
            .values()
            .flat_map(|g| g.told_firing.keys().copied())
            .collect();
        let mut all = self.instances.lock();
        let old: Vec<(String, u64)> = all
            .iter()
            .flat_map(|(rule, m)| {
                m.iter()
                    .filter(|(_, a)| {
                        a.state == AlertState::Resolved
                            && now - a.resolved_at.unwrap_or(now) > RESOLVED_RETENTION
                            && !told.contains(&a.fingerprint())
                    })
                    .map(move |(fp, _)| (rule.clone(), *fp))
            })
            .collect();
        if !old.is_empty() {
            self.store.apply(&Changes {
                removals: old.clone(),
                ..Default::default()
            })?;
            for (rule, fp) in &old {
                if let Some(m) = all.get_mut(rule) {
                    m.remove(fp);
                }
            }
            all.retain(|_, m| !m.is_empty());
        }
        Ok(all.values().flat_map(|m| m.values().cloned()).collect())
    }

    /// Flushes one due group: decides whether its receiver must hear of it
    /// now, and queues what it must hear.
    fn flush(
        &self,
        group: &Group,
        st: &mut GroupState,
        routing: &Routing,
        firing_labels: &[&BTreeMap<String, String>],
        now: i64,
        changes: &mut Changes,
    ) {
        let d = &group.destination;
        st.next_flush = now.saturating_add(dur_nanos(d.group_interval));
        if let Some(why) = routing.muted(d, now) {
            debug!(
                group = group.key.as_str(),
                why = why.as_str(),
                "group muted"
            );
            return;
        }
        let Some(receiver) = routing.receiver(&d.receiver) else {
            return;
        };
        let mut all_firing: Vec<&AlertInstance> = group
            .alerts
            .iter()
            .copied()
            .filter(|a| a.state == AlertState::Firing)
            .collect();
        all_firing.sort_by(|a, b| a.labels.cmp(&b.labels));
        let firing: Vec<&AlertInstance> = all_firing
            .iter()
            .copied()
            .filter(|a| self.silences.silenced_by(&a.labels, now).is_none())
            .filter(|a| {
                !routing
                    .inhibit_rules
                    .iter()
                    .any(|r| r.inhibits(&a.labels, firing_labels.iter().copied()))
            })
            .collect();
        let mut resolved: Vec<&AlertInstance> = group
            .alerts
            .iter()
            .copied()
            .filter(|a| a.state == AlertState::Resolved)
            .filter(|a| st.told_firing.contains_key(&a.fingerprint()))
            .collect();
        resolved.sort_by(|a, b| a.labels.cmp(&b.labels));
        let now_firing: BTreeMap<u64, i64> = firing
            .iter()
            .map(|a| (a.fingerprint(), a.fired_at.unwrap_or(a.active_at)))
            .collect();
        // New: an alert not told before (or a new incident of one).
        let news = now_firing
            .iter()
            .any(|(fp, start)| st.told_firing.get(fp) != Some(start));
        let repeat_due = !firing.is_empty()
            && st
                .last_sent
                .is_some_and(|t| now - t >= dur_nanos(d.repeat_interval));
        // An Alertmanager forgets a firing alert not sent again within its
        // `endsAt`: those endpoints are sent the group every minute.
        let forwards = receiver
            .webhooks
            .iter()
            .any(|w| w.kind == WebhookKind::AlertmanagerApi);
        let forward_due = forwards
            && !all_firing.is_empty()
            && st
                .last_forwarded
                .is_none_or(|t| now - t >= dur_nanos(ALERTMANAGER_RESEND.max(d.group_interval)));
        if !(news || repeat_due || !resolved.is_empty() || forward_due) {
            // Alerts told as firing and now silenced or inhibited stay told
            // (as in Alertmanager): the end of a silence is no news.
            return;
        }
        let forward_only = !(news || repeat_due || !resolved.is_empty());
        // What is said, the same on every node evaluating the same rules:
        // the alerts (with when each started) and the group's message count.
        let mut parts: Vec<String> = now_firing
            .iter()
            .map(|(fp, start)| format!("f{fp:016x}@{start}"))
            .collect();
        parts.extend(
            resolved
                .iter()
                .map(|a| format!("r{:016x}@{}", a.fingerprint(), a.resolved_at.unwrap_or(0))),
        );
        if forward_only {
            parts.extend(
                all_firing
                    .iter()
                    .map(|a| format!("a{:016x}", a.fingerprint())),
            );
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        // A repeat is named by how many repeat intervals have passed since
        // the group's alerts started: nodes that evaluate the same rules
        // agree on it without counting their own messages (which can drift).
        let nth = if news || !resolved.is_empty() || forward_only {
            0
        } else {
            let start = now_firing.values().min().copied().unwrap_or(now);
            (now - start) / dur_nanos(d.repeat_interval).max(1) + 1
        };
        let plan = FlushPlan {
            content: format!("{:016x}-{nth}", hash(&refs)),
            firing,
            all_firing,
            resolved,
            news: news || repeat_due,
            forward_only,
        };
        let queued = notifications(group, &receiver.webhooks, &plan, now);
        debug!(
            group = group.key.as_str(),
            receiver = d.receiver.as_str(),
            firing = plan.firing.len(),
            resolved = plan.resolved.len(),
            notifications = queued.len(),
            "group flushed"
        );
        changes.notifications.extend(queued);
        if forwards {
            st.last_forwarded = Some(now);
        }
        if !forward_only {
            st.last_sent = Some(now);
            st.told_firing = now_firing;
        }
    }

    /// The receivers a set of alerts would reach (for previews), without
    /// timing: one notification per group and endpoint.
    pub(crate) fn preview_notifications(
        routing: &Routing,
        alerts: &[AlertInstance],
        direct: &HashMap<String, String>,
        at: i64,
    ) -> Vec<Notification> {
        let groups = group_alerts(alerts, routing, direct);
        let mut out = Vec::new();
        for group in groups.values() {
            let Some(r) = routing.receiver(&group.destination.receiver) else {
                continue;
            };
            let plan = FlushPlan {
                firing: group.alerts.clone(),
                all_firing: group.alerts.clone(),
                resolved: Vec::new(),
                news: true,
                forward_only: false,
                content: "preview".into(),
            };
            out.extend(notifications(group, &r.webhooks, &plan, at));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, host: &str, state: AlertState) -> AlertInstance {
        let labels = BTreeMap::from([
            ("alertname".to_string(), name.to_string()),
            ("host".to_string(), host.to_string()),
        ]);
        let mut a = AlertInstance::starting("g/r", labels, BTreeMap::new(), 1.0, 10, true);
        a.state = state;
        a
    }

    const ROUTING: &str = r#"
route:
  receiver: hook
  group_by: [alertname]
  routes:
    - matchers: ['alertname="Each"']
      group_by: ['...']
receivers:
  - name: hook
    webhook_configs: [{ url: "http://127.0.0.1:9/a" }, { url: "http://127.0.0.1:9/b", send_resolved: false }]
"#;

    #[test]
    fn alerts_group_by_route_and_labels_and_pending_ones_wait() {
        let routing = Routing::parse(ROUTING).unwrap();
        let alerts = vec![
            alert("Cpu", "a", AlertState::Firing),
            alert("Cpu", "b", AlertState::Resolved),
            alert("Cpu", "c", AlertState::Pending),
            alert("Each", "a", AlertState::Firing),
            alert("Each", "b", AlertState::Firing),
        ];
        let groups = group_alerts(&alerts, &routing, &HashMap::new());
        let sizes: Vec<(String, usize)> = groups
            .values()
            .map(|g| (g.key.clone(), g.alerts.len()))
            .collect();
        assert_eq!(
            sizes,
            [
                (
                    r#"{}/{alertname="Each"}:{alertname="Each", host="a"}"#.to_string(),
                    1
                ),
                (
                    r#"{}/{alertname="Each"}:{alertname="Each", host="b"}"#.to_string(),
                    1
                ),
                (r#"{}:{alertname="Cpu"}"#.to_string(), 2),
            ]
        );
        // A rule's own receiver takes its alerts past the tree.
        let direct = HashMap::from([("g/r".to_string(), "hook".to_string())]);
        let groups = group_alerts(&alerts[..1], &routing, &direct);
        assert!(groups
            .values()
            .all(|g| g.key.starts_with(r#"{}/receiver="hook""#)));
    }

    #[test]
    fn each_endpoint_gets_what_it_wants_under_a_stable_key() {
        let routing = Routing::parse(ROUTING).unwrap();
        let alerts = vec![
            alert("Cpu", "a", AlertState::Firing),
            alert("Cpu", "b", AlertState::Resolved),
        ];
        let groups = group_alerts(&alerts, &routing, &HashMap::new());
        let g = groups.values().next().unwrap();
        let webhooks = &routing.receiver("hook").unwrap().webhooks;
        fn plan<'a>(
            firing: Vec<&'a AlertInstance>,
            resolved: &'a AlertInstance,
            news: bool,
            content: &str,
        ) -> FlushPlan<'a> {
            FlushPlan {
                all_firing: firing.clone(),
                firing,
                resolved: vec![resolved],
                news,
                forward_only: false,
                content: content.to_string(),
            }
        }
        // Only an alert ended: the endpoint without send_resolved hears nothing.
        let only_resolved = notifications(
            g,
            webhooks,
            &plan(vec![&alerts[0]], &alerts[1], false, "c1"),
            5,
        );
        assert_eq!(only_resolved.len(), 1);
        assert_eq!(only_resolved[0].alerts.len(), 2);
        assert_eq!(only_resolved[0].status, "firing");
        let news = notifications(
            g,
            webhooks,
            &plan(vec![&alerts[0]], &alerts[1], true, "c1"),
            7,
        );
        assert_eq!(news.len(), 2);
        assert_eq!(news[1].alerts.len(), 1);
        // The key names the group, content and endpoint, not the time: two
        // nodes flushing at different moments agree on it.
        assert_eq!(news[0].idempotency_key, only_resolved[0].idempotency_key);
        assert_ne!(news[0].idempotency_key, news[1].idempotency_key);
        let other = notifications(
            g,
            webhooks,
            &plan(vec![&alerts[0]], &alerts[1], true, "c2"),
            7,
        );
        assert_ne!(other[0].idempotency_key, news[0].idempotency_key);
        let all_resolved = notifications(g, webhooks, &plan(vec![], &alerts[1], false, "c3"), 9);
        assert_eq!(all_resolved[0].status, "resolved");
    }
}
