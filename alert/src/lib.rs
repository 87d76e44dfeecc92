//! Alerting: SQL rules evaluated on a schedule through the one query path,
//! alert state, aggregation groups and the notification outbox in redb,
//! routing and grouping in Alertmanager's format, at-least-once delivery to
//! webhooks, Slack, PagerDuty, e-mail, SMS and Alertmanager, recording rules
//! through the write pipeline.

mod email;
pub mod evaluator;
pub mod groups;
pub mod notify;
pub mod queue;
pub mod rule_test;
pub mod silences;
pub mod store;
pub mod tables;

pub use vigil_rules::{routing, rules, template};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{error, info};
use vigil_ingest::WritePipeline;
use vigil_sql::QueryEngine;
use vigil_storage::retention::now_nanos;

pub use evaluator::{Evaluator, RuleStatus};
pub use store::{AlertInstance, AlertState, AlertStore};
pub use vigil_rules::{Routing, RuleFileError, RuleGroup};

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("alert store {path}: unreadable entry: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid rule files:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<RuleFileError>),
    #[error(transparent)]
    Routing(#[from] routing::RoutingError),
    #[error("a rule sends to receiver {receiver:?}, {problem}")]
    Receiver { receiver: String, problem: String },
    #[error("alerting task failed: {0}")]
    Task(String),
    #[error("notification queue: {0}")]
    Queue(String),
}

#[derive(Clone, Default)]
pub struct AlertMetrics {
    pub evaluations: Counter,
    pub failures: Counter,
    pub enqueued: Counter,
    pub sent: Counter,
    pub send_failures: Counter,
    pub dropped: Counter,
    pub dead: Counter,
    pub sent_by_peer: Counter,
    pub published: Counter,
    pub duplicates: Counter,
    pub outbox: Gauge,
    pub reload_failures: Counter,
}

/// Rules one preview may hold.
const MAX_PREVIEW_RULES: usize = 100;

/// `[alerting]` of vigil.toml, resolved.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// Rule files (`*.yml`, `*.yaml`) are read from here and watched.
    pub rules_dir: PathBuf,
    /// Routing and receivers (Alertmanager's format); none: alerts are
    /// evaluated and kept, not sent.
    pub routing_file: Option<PathBuf>,
    /// The redb file of alert state.
    pub state_path: PathBuf,
    pub default_interval: Duration,
    pub eval_timeout: Duration,
    /// Links in notifications point here.
    pub external_url: String,
    /// Other nodes evaluating the same rules (high availability).
    pub peers: Peers,
    /// A notification still failing after this long is given up (a dead
    /// letter in `system.notifications`).
    pub give_up_after: Duration,
    /// Notifications travel through this Kafka topic (none: straight from
    /// the outbox in redb).
    pub queue: Option<queue::QueueConfig>,
}

/// The other nodes that evaluate the same rules, so that one of them, not
/// each, notifies (Alertmanager's HA scheme without gossip): the node at
/// position `p` waits `p × timeout` before sending, and no node sends what a
/// peer reports as already delivered.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Base URLs (`http://host:8181`) of the other nodes.
    pub urls: Vec<String>,
    /// This node's place among all of them (0 sends at once).
    pub position: u32,
    pub timeout: Duration,
    /// A bearer token accepted by the peers (when they require one).
    pub token: Option<String>,
}

impl Peers {
    /// The peers of a node that calls itself `me` among `all` (which may
    /// include `me`); the position is `me`'s place in the sorted list.
    pub fn among(me: &str, all: &[String], timeout: Duration, token: Option<String>) -> Peers {
        let norm = |u: &str| u.trim_end_matches('/').to_string();
        let me = norm(me);
        let mut members: Vec<String> = all.iter().map(|u| norm(u)).collect();
        members.push(me.clone());
        members.sort();
        members.dedup();
        let position = members.iter().position(|m| *m == me).unwrap_or(0) as u32;
        Peers {
            urls: members.into_iter().filter(|m| *m != me).collect(),
            position,
            timeout,
            token,
        }
    }
}

/// The alerting service of a running server.
pub struct Alerting {
    config: AlertingConfig,
    evaluator: Arc<Evaluator>,
    /// What the rule files looked like when last loaded (path, length, mtime).
    seen: Mutex<Vec<(PathBuf, u64, Option<SystemTime>)>>,
    last_reload_error: Mutex<Option<String>>,
}

/// The running tasks; stopped at shutdown.
pub struct AlertingTasks {
    stop: tokio::sync::watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl AlertingTasks {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

fn rule_keys(groups: &[RuleGroup]) -> std::collections::HashSet<String> {
    groups
        .iter()
        .flat_map(|g| g.rules.iter().map(|r| r.key.clone()))
        .collect()
}

fn check_receivers(groups: &[RuleGroup], routing: Option<&Routing>) -> Result<(), AlertError> {
    for g in groups {
        for r in &g.rules {
            if let Some(name) = &r.receiver {
                match routing {
                    None => {
                        return Err(AlertError::Receiver {
                            receiver: name.clone(),
                            problem: "but there is no [alerting] config with receivers".into(),
                        })
                    }
                    Some(rt) if rt.receiver(name).is_none() => {
                        return Err(AlertError::Receiver {
                            receiver: name.clone(),
                            problem: "which the [alerting] config does not define".into(),
                        })
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

impl Alerting {
    /// Loads the rules and routing (refusing to start on any error, with
    /// file:line) and the stored alert state.
    pub fn open(
        config: AlertingConfig,
        engine: Arc<QueryEngine>,
        pipeline: Arc<WritePipeline>,
    ) -> Result<Arc<Alerting>, AlertError> {
        std::fs::create_dir_all(&config.rules_dir).map_err(|e| AlertError::Io {
            path: config.rules_dir.clone(),
            source: e,
        })?;
        let seen = Self::scan(&config.rules_dir, config.routing_file.as_deref());
        let groups = rules::load_dir(&config.rules_dir, config.default_interval)
            .map_err(AlertError::Rules)?;
        let routing = match &config.routing_file {
            Some(p) => Some(Arc::new(Routing::load(p)?)),
            None => None,
        };
        check_receivers(&groups, routing.as_deref())?;
        let store = Arc::new(AlertStore::open(&config.state_path)?);
        let mut instances: HashMap<String, HashMap<u64, AlertInstance>> = HashMap::new();
        for a in store.instances()? {
            instances
                .entry(a.rule.clone())
                .or_default()
                .insert(a.fingerprint(), a);
        }
        let n_rules: usize = groups.iter().map(|g| g.rules.len()).sum();
        info!(
            groups = groups.len(),
            rules = n_rules,
            alerts = instances.values().map(|m| m.len()).sum::<usize>(),
            "alerting loaded"
        );
        let silences = silences::Silences::load(&store)?;
        let group_states = store.groups()?.into_iter().collect();
        let evaluator = Arc::new(Evaluator {
            engine,
            pipeline,
            store,
            instances: Mutex::new(instances),
            groups: RwLock::new(Arc::new(groups)),
            statuses: Mutex::new(HashMap::new()),
            routing: RwLock::new(routing),
            silences,
            eval_timeout: config.eval_timeout,
            group_states: Mutex::new(group_states),
            wake_dispatcher: tokio::sync::Notify::new(),
            wake_flusher: tokio::sync::Notify::new(),
            peers: config.peers.clone(),
            queue: match &config.queue {
                Some(q) => Some(queue::QueueProducer::new(q.clone())?),
                None => None,
            },
            give_up_after: config.give_up_after,
            metrics: AlertMetrics::default(),
        });
        let alerting = Alerting {
            config,
            evaluator,
            seen: Mutex::new(seen),
            last_reload_error: Mutex::new(None),
        };
        // Rules deleted while the server was down take their alerts along.
        alerting.prune(&rule_keys(&alerting.groups()));
        Ok(Arc::new(alerting))
    }

    pub fn evaluator(&self) -> &Arc<Evaluator> {
        &self.evaluator
    }

    pub fn groups(&self) -> Arc<Vec<RuleGroup>> {
        Arc::clone(&self.evaluator.groups.read())
    }

    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error.lock().clone()
    }

    /// The rule files and the routing file as they are now (a change in
    /// another file of the directory, an editor's swap file, is no reload).
    fn scan(
        dir: &std::path::Path,
        routing: Option<&std::path::Path>,
    ) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let stat = |p: PathBuf| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let modified = m.and_then(|m| m.modified().ok());
            (p, len, modified)
        };
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
            .map(stat)
            .collect();
        out.sort();
        out.extend(routing.map(|p| stat(p.to_path_buf())));
        out
    }

    /// Re-reads the rule files (and routing) if they changed. An invalid file
    /// changes nothing: the rules running keep running, and the errors are
    /// logged and kept for `/api/v1/rules`. The new rules, to
    /// [`Alerting::install`] once the old groups have stopped.
    pub fn load_if_changed(&self) -> Option<(Vec<RuleGroup>, Option<Arc<Routing>>)> {
        let now = Self::scan(&self.config.rules_dir, self.config.routing_file.as_deref());
        if *self.seen.lock() == now {
            return None;
        }
        *self.seen.lock() = now;
        let loaded = rules::load_dir(&self.config.rules_dir, self.config.default_interval)
            .map_err(AlertError::Rules)
            .and_then(|groups| {
                let routing = match &self.config.routing_file {
                    Some(p) => Some(Arc::new(Routing::load(p)?)),
                    None => None,
                };
                check_receivers(&groups, routing.as_deref())?;
                Ok((groups, routing))
            });
        match loaded {
            Ok(l) => Some(l),
            Err(e) => {
                self.evaluator.metrics.reload_failures.inc();
                error!(error = %e, "rule files not reloaded; the previous rules keep running");
                *self.last_reload_error.lock() = Some(e.to_string());
                None
            }
        }
    }

    /// Puts new rules in force (no group task of the old ones may be running):
    /// alerts of rules that are gone go with them.
    pub fn install(&self, groups: Vec<RuleGroup>, routing: Option<Arc<Routing>>) {
        self.prune(&rule_keys(&groups));
        info!(groups = groups.len(), "rule files reloaded");
        *self.evaluator.groups.write() = Arc::new(groups);
        *self.evaluator.routing.write() = routing;
        *self.last_reload_error.lock() = None;
    }

    /// Ends the alerts of rules not in `keys`, in the store and memory at
    /// once (under the instances lock): pending ones go, firing ones are
    /// resolved (their rule is gone), so their groups tell the receivers, and
    /// expire with the other resolved alerts.
    fn prune(&self, keys: &std::collections::HashSet<String>) {
        let mut all = self.evaluator.instances.lock();
        let now = now_nanos();
        let mut changes = store::Changes::default();
        for (k, m) in all.iter().filter(|(k, _)| !keys.contains(*k)) {
            for (fp, a) in m {
                match a.state {
                    AlertState::Pending => changes.removals.push((k.clone(), *fp)),
                    AlertState::Firing => {
                        let mut a = a.clone();
                        a.state = AlertState::Resolved;
                        a.resolved_at = Some(now);
                        a.keep_firing_since = None;
                        changes.history.push(store::HistoryEvent {
                            time: now,
                            rule: k.clone(),
                            labels: a.labels.clone(),
                            from: "firing".into(),
                            to: "resolved".into(),
                            value: a.value,
                        });
                        changes.upserts.push(a);
                    }
                    AlertState::Resolved => {}
                }
            }
        }
        if !changes.is_empty() {
            match self.evaluator.store.apply(&changes) {
                Ok(()) => {
                    for (k, fp) in &changes.removals {
                        if let Some(m) = all.get_mut(k) {
                            m.remove(fp);
                        }
                    }
                    for a in changes.upserts {
                        all.entry(a.rule.clone())
                            .or_default()
                            .insert(a.fingerprint(), a);
                    }
                    all.retain(|_, m| !m.is_empty());
                    self.evaluator.wake_flusher.notify_one();
                }
                Err(e) => error!(error = %e, "ending the alerts of deleted rules failed"),
            }
        }
        self.evaluator
            .statuses
            .lock()
            .retain(|k, _| keys.contains(k));
    }

    /// Starts the group schedules, the file watcher and the dispatcher.
    pub fn start(self: &Arc<Self>) -> AlertingTasks {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        handles.push(tokio::spawn(
            Arc::clone(&self.evaluator).dispatch(self.config.external_url.clone(), stop_rx.clone()),
        ));
        handles.push(tokio::spawn(
            Arc::clone(&self.evaluator).flush_groups(stop_rx.clone()),
        ));
        if let Some(q) = &self.config.queue {
            handles.push(tokio::spawn(
                Arc::clone(&self.evaluator).consume_queue(q.clone(), stop_rx.clone()),
            ));
        }
        let this = Arc::clone(self);
        let mut stop_sup = stop_rx.clone();
        handles.push(tokio::spawn(async move {
            let mut running = this.spawn_groups(&stop_rx);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop_sup.changed() => break,
                }
                let t = Arc::clone(&this);
                let loaded = tokio::task::spawn_blocking(move || t.load_if_changed())
                    .await
                    .ok()
                    .flatten();
                if let Some((groups, routing)) = loaded {
                    // The old groups stop before the new rules are in force, so
                    // no evaluation of a removed rule lands after the pruning.
                    for h in running.drain(..) {
                        h.abort();
                        let _ = h.await;
                    }
                    let t = Arc::clone(&this);
                    let _ = tokio::task::spawn_blocking(move || t.install(groups, routing)).await;
                    running = this.spawn_groups(&stop_rx);
                }
            }
            for h in running {
                h.abort();
                let _ = h.await;
            }
        }));
        AlertingTasks { stop, handles }
    }

    fn spawn_groups(
        self: &Arc<Self>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let groups = self.groups();
        (0..groups.len())
            .map(|i| {
                let groups = Arc::clone(&groups);
                let evaluator = Arc::clone(&self.evaluator);
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let g = &groups[i];
                    let step = evaluator::dur_nanos(g.interval).max(1);
                    let mut last = i64::MIN;
                    loop {
                        // The next multiple of the interval (evaluation is
                        // aligned, so every server evaluates at the same ticks).
                        let now = now_nanos();
                        let mut tick = (now / step + 1) * step;
                        if tick <= last {
                            tick = last + step;
                        }
                        let wait = Duration::from_nanos((tick - now).max(0) as u64);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.changed() => return,
                        }
                        last = tick;
                        let at = tick - evaluator::dur_nanos(g.query_offset);
                        for rule in &g.rules {
                            evaluator.evaluate(g, rule, at).await;
                        }
                    }
                })
            })
            .collect()
    }

    /// Every alert instance (pending, firing, recently resolved).
    pub fn alerts(&self) -> Vec<AlertInstance> {
        let mut out: Vec<AlertInstance> = self
            .evaluator
            .instances
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        out.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
        out
    }

    pub fn statuses(&self) -> HashMap<String, RuleStatus> {
        self.evaluator.statuses.lock().clone()
    }

    /// Renders the rules of a rule file (its text) for the data as it is now,
    /// without sending or storing anything: each alerting rule's alerts
    /// (labels, annotations, value) and the webhook bodies they would cause,
    /// each recording rule's rows. Invalid text: its file:line errors.
    pub async fn preview(
        &self,
        text: &str,
        access: &vigil_model::TableAccess,
    ) -> Result<serde_json::Value, Vec<RuleFileError>> {
        let groups = rules::load_file(
            std::path::Path::new("preview.yml"),
            text,
            self.config.default_interval,
        )?;
        let routing = self.evaluator.routing.read().clone();
        let now = now_nanos();
        let mut out = Vec::new();
        let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
        if rules > MAX_PREVIEW_RULES {
            return Err(vec![RuleFileError {
                file: "preview.yml".into(),
                line: 1,
                message: format!("{rules} rules: a preview takes at most {MAX_PREVIEW_RULES}"),
            }]);
        }
        for g in &groups {
            for r in &g.rules {
                let at = now - evaluator::dur_nanos(g.query_offset);
                let mut entry = serde_json::json!({ "group": g.name, "name": r.name });
                let timeout = self.config.eval_timeout;
                let result =
                    match tokio::time::timeout(timeout, self.evaluator.query_as(r, at, access))
                        .await
                    {
                        Ok(Ok(rows)) if rows.len() > evaluator::DEFAULT_MAX_ALERTS.max(g.limit) => {
                            Err(format!("{} rows: more than a rule may give", rows.len()))
                        }
                        Ok(r) => r,
                        Err(_) => Err(format!("evaluation timed out after {timeout:?}")),
                    };
                match result {
                    Err(e) => entry["error"] = e.into(),
                    Ok(rows) if r.kind == rules::RuleKind::Recording => {
                        entry["rows"] = rows
                            .iter()
                            .map(|(labels, value)| serde_json::json!({ "labels": labels, "value": value.to_string() }))
                            .collect();
                    }
                    Ok(rows) => {
                        let mut alerts = Vec::new();
                        let mut instances = Vec::new();
                        for (row, value) in rows {
                            let (labels, annotations) = Evaluator::instance_labels(r, &row, value);
                            let firing = r.for_.is_zero();
                            let instance = AlertInstance::starting(
                                &r.key,
                                labels,
                                annotations,
                                value,
                                at,
                                firing,
                            );
                            alerts.push(serde_json::json!({
                                "labels": instance.labels,
                                "annotations": instance.annotations,
                                "value": value.to_string(),
                                "state": instance.state.as_str(),
                            }));
                            // Pending ones would be sent once `for` has
                            // passed: preview them as firing.
                            let mut instance = instance;
                            instance.state = AlertState::Firing;
                            instances.push(instance);
                        }
                        let direct: HashMap<String, String> = r
                            .receiver
                            .iter()
                            .map(|x| (r.key.clone(), x.clone()))
                            .collect();
                        let notifications: Vec<serde_json::Value> = routing
                            .as_deref()
                            .map(|routing| {
                                Evaluator::preview_notifications(routing, &instances, &direct, at)
                            })
                            .unwrap_or_default()
                            .iter()
                            // Not the URL: a webhook URL is often a secret.
                            .map(|n| {
                                serde_json::json!({
                                    "receiver": n.receiver,
                                    "group_key": n.group_key,
                                    "endpoint": n.endpoint(),
                                    "body": notify::body(n, &self.config.external_url),
                                })
                            })
                            .collect();
                        entry["alerts"] = alerts.into();
                        entry["notifications"] = notifications.into();
                    }
                }
                out.push(entry);
            }
        }
        Ok(serde_json::json!({ "status": "success", "data": { "rules": out } }))
    }

    pub fn silences(&self) -> &silences::Silences {
        &self.evaluator.silences
    }

    pub fn store(&self) -> &AlertStore {
        &self.evaluator.store
    }

    pub fn history(&self, limit: usize) -> Result<Vec<store::HistoryEvent>, AlertError> {
        self.evaluator.store.history(limit)
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.evaluator.metrics;
        registry.register(
            "vigil_rule_evaluations",
            "Rule evaluations",
            m.evaluations.clone(),
        );
        registry.register(
            "vigil_rule_evaluation_failures",
            "Rule evaluations that failed (query error, timeout, bad rows)",
            m.failures.clone(),
        );
        registry.register(
            "vigil_rule_reload_failures",
            "Rule file reloads refused (the previous rules kept running)",
            m.reload_failures.clone(),
        );
        registry.register(
            "vigil_notifications_queued",
            "Notifications queued for delivery",
            m.enqueued.clone(),
        );
        registry.register(
            "vigil_notifications_sent",
            "Notifications delivered (2xx from the receiver)",
            m.sent.clone(),
        );
        registry.register(
            "vigil_notification_send_failures",
            "Delivery attempts that failed (retried)",
            m.send_failures.clone(),
        );
        registry.register(
            "vigil_notifications_dropped",
            "Notifications a receiver refused with a 4xx (not retried)",
            m.dropped.clone(),
        );
        registry.register(
            "vigil_notifications_dead",
            "Notifications given up after retrying (dead letters)",
            m.dead.clone(),
        );
        registry.register(
            "vigil_notifications_sent_by_peer",
            "Notifications not sent because a peer node had delivered them",
            m.sent_by_peer.clone(),
        );
        registry.register(
            "vigil_notifications_published",
            "Notifications published to the Kafka notification queue",
            m.published.clone(),
        );
        registry.register(
            "vigil_notifications_duplicates",
            "Notifications taken from the queue twice (another node's copy, a re-read) and skipped",
            m.duplicates.clone(),
        );
        registry.register(
            "vigil_notification_outbox",
            "Notifications waiting for delivery",
            m.outbox.clone(),
        );
    }

    /// Instance labels as one text, for the SQL tables.
    pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
        serde_json::to_string(labels).unwrap_or_default()
    }
}
