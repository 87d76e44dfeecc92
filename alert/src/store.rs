//! Alert state in redb: the instances of every rule, the aggregation groups
//! (what each receiver was last told), the notifications not yet delivered
//! (the outbox), the delivery log and the history of state changes. A rule's
//! evaluation commits its new states in one transaction; a group's flush
//! commits its new notified state and the notifications it causes in one
//! transaction; a notification leaves the outbox only once delivered (and is
//! logged in the same transaction). A crash anywhere neither loses a
//! notification nor re-sends one already delivered (beyond the one in
//! flight, which keeps its idempotency key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::AlertError;

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SILENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("silences");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const DELIVERY_LOG: TableDefinition<&str, &[u8]> = TableDefinition::new("delivery_log");
/// Keys of notifications taken from the Kafka queue, with when (pruned with
/// the delivery log): the second copy of one is skipped.
const TAKEN: TableDefinition<&str, i64> = TableDefinition::new("taken");

/// Delivery log entries kept, and for how long (Alertmanager keeps its
/// notification log 120 h).
pub const DELIVERY_LOG_LIMIT: usize = 100_000;
pub const DELIVERY_LOG_RETENTION: i64 = 120 * 3600 * 1_000_000_000;

/// History events kept (older ones are dropped as new ones come).
pub const HISTORY_LIMIT: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    /// Resolved, kept a while so receivers and `/api/v1/alerts` see it end.
    Resolved,
}

impl AlertState {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert instance: a rule and one set of labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInstance {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    #[serde(with = "float_text")]
    pub value: f64,
    /// When the condition started to hold (nanoseconds since the epoch).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Since when the condition has not held while `keep_firing_for` keeps the
    /// alert firing.
    pub keep_firing_since: Option<i64>,
    pub last_eval: i64,
}

impl AlertInstance {
    /// An alert whose condition starts to hold at `at`: firing at once when
    /// the rule has no `for`, else pending.
    pub fn starting(
        rule: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        value: f64,
        at: i64,
        firing: bool,
    ) -> AlertInstance {
        AlertInstance {
            rule: rule.to_string(),
            labels,
            annotations,
            state: if firing {
                AlertState::Firing
            } else {
                AlertState::Pending
            },
            value,
            active_at: at,
            fired_at: firing.then_some(at),
            resolved_at: None,
            keep_firing_since: None,
            last_eval: at,
        }
    }

    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.labels)
    }
}

/// Values as JSON: a number, or `"NaN"`, `"+Inf"`, `"-Inf"` (JSON has no
/// such numbers; serde_json would write `null` and refuse to read it back).
mod float_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(match Option::<Stored>::deserialize(d)? {
            Some(Stored::Number(n)) => n,
            Some(Stored::Text(t)) => match t.as_str() {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                _ => f64::NAN,
            },
            Some(Stored::Null(())) | None => f64::NAN,
        })
    }
}

/// FNV-1a over the sorted labels (Alertmanager fingerprints labels the same
/// way): stable across restarts and versions.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A notification waiting for delivery to one endpoint of a receiver: the
/// alerts of one aggregation group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Receivers drop duplicates by it: the same for every attempt, and the
    /// same on every node that evaluates the same rules over the same data.
    pub idempotency_key: String,
    pub receiver: String,
    /// Alertmanager's group key (`{}:{alertname="HighCpu"}`).
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    pub url: String,
    /// The endpoint's format (entries from before it was kept: Alertmanager's).
    #[serde(default)]
    pub kind: vigil_rules::WebhookKind,
    /// Which endpoint of the receiver (a notification taken from the Kafka
    /// queue is sent to this endpoint of the local config).
    #[serde(default)]
    pub endpoint_index: usize,
    /// `firing` while any of the alerts fires, else `resolved`.
    pub status: String,
    /// The group's alerts, firing ones first; each with its own state.
    #[serde(default)]
    pub alerts: Vec<AlertInstance>,
    /// The one alert of a notification queued before grouping existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertInstance>,
    /// Until when a forwarded firing alert holds (Alertmanager's `endsAt`).
    #[serde(default)]
    pub valid_until: Option<i64>,
    pub enqueued_at: i64,
    /// Taken from the Kafka queue: delivered here, not published again.
    #[serde(default)]
    pub from_queue: bool,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_error: Option<String>,
}

/// An aggregation group: the alerts one route sends to one receiver with the
/// same values of its `group_by` labels, and what that receiver was told
/// (Alertmanager's notification log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub receiver: String,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub created_at: i64,
    /// When the group is next looked at (first after `group_wait`, then every
    /// `group_interval`).
    pub next_flush: i64,
    /// When the receiver was last sent this group.
    pub last_sent: Option<i64>,
    /// The alerts last sent as firing: fingerprint and when each started, so
    /// a new incident of the same labels counts as new.
    pub told_firing: BTreeMap<u64, i64>,
    /// When its Alertmanager endpoints were last sent the group.
    #[serde(default)]
    pub last_forwarded: Option<i64>,
}

/// What became of a notification (the delivery log, `system.notifications`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub idempotency_key: String,
    pub receiver: String,
    pub group_key: String,
    pub endpoint: String,
    pub status: String,
    pub alerts: usize,
    /// `delivered`, `dropped` (the receiver refused it), `dead` (retried
    /// until given up), `sent_by_peer` (another node delivered it).
    pub outcome: String,
    pub attempts: u32,
    pub enqueued_at: i64,
    pub finished_at: i64,
    pub last_error: Option<String>,
}

impl Notification {
    /// The endpoint's kind, as `system.notifications` shows it.
    pub fn endpoint(&self) -> &'static str {
        use vigil_rules::WebhookKind as K;
        match self.kind {
            K::Alertmanager => "webhook",
            K::Slack { .. } => "slack",
            K::PagerDuty { .. } => "pagerduty",
            K::Email(_) => "email",
            K::Sms { .. } => "sms",
            K::AlertmanagerApi => "alertmanager",
        }
    }

    pub fn finished(&self, outcome: &str, at: i64, error: Option<String>) -> Delivery {
        Delivery {
            idempotency_key: self.idempotency_key.clone(),
            receiver: self.receiver.clone(),
            group_key: self.group_key.clone(),
            endpoint: self.endpoint().to_string(),
            status: self.status.clone(),
            alerts: self.alerts.len(),
            outcome: outcome.to_string(),
            attempts: self.attempts,
            enqueued_at: self.enqueued_at,
            finished_at: at,
            last_error: error.or_else(|| self.last_error.clone()),
        }
    }
}

/// A state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub time: i64,
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub from: String,
    pub to: String,
    #[serde(with = "float_text")]
    pub value: f64,
}

/// What one rule evaluation changes, committed at once.
#[derive(Debug, Default)]
pub struct Changes {
    pub upserts: Vec<AlertInstance>,
    pub removals: Vec<(String, u64)>,
    pub notifications: Vec<Notification>,
    pub history: Vec<HistoryEvent>,
    /// Aggregation groups changed (by id) and ended.
    pub groups: Vec<(String, GroupState)>,
    pub group_removals: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.removals.is_empty()
            && self.notifications.is_empty()
            && self.history.is_empty()
            && self.groups.is_empty()
            && self.group_removals.is_empty()
    }
}

pub struct AlertStore {
    db: Database,
    path: PathBuf,
}

fn instance_key(rule: &str, fingerprint: u64) -> String {
    format!("{rule}\u{0}{fingerprint:016x}")
}

impl AlertStore {
    pub fn open(path: &Path) -> Result<AlertStore, AlertError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AlertError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let store_err = |e: redb::Error| AlertError::Store {
            path: path.to_path_buf(),
            source: e,
        };
        let db = Database::create(path).map_err(|e| store_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| store_err(e.into()))?;
        {
            txn.open_table(INSTANCES).map_err(|e| store_err(e.into()))?;
            txn.open_table(OUTBOX).map_err(|e| store_err(e.into()))?;
            txn.open_table(HISTORY).map_err(|e| store_err(e.into()))?;
            txn.open_table(COUNTERS).map_err(|e| store_err(e.into()))?;
            txn.open_table(SILENCES).map_err(|e| store_err(e.into()))?;
            txn.open_table(GROUPS).map_err(|e| store_err(e.into()))?;
            txn.open_table(DELIVERY_LOG)
                .map_err(|e| store_err(e.into()))?;
            txn.open_table(TAKEN).map_err(|e| store_err(e.into()))?;
        }
        txn.commit().map_err(|e| store_err(e.into()))?;
        Ok(AlertStore {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> AlertError {
        AlertError::Store {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, bytes: &[u8]) -> Result<T, AlertError> {
        serde_json::from_slice(bytes).map_err(|e| AlertError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Every stored instance.
    pub fn instances(&self) -> Result<Vec<AlertInstance>, AlertError> {
        self.all_values(INSTANCES)
    }

    /// Every value of a table keyed by text, decoded.
    fn all_values<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, AlertError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(def).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(v.value())?);
        }
        Ok(out)
    }

    /// Notifications not delivered yet, by id.
    pub fn outbox(&self) -> Result<Vec<(u64, Notification)>, AlertError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let mut n: Notification = self.decode(v.value())?;
            if let Some(a) = n.alert.take() {
                n.alerts.push(a);
            }
            out.push((k.value(), n));
        }
        Ok(out)
    }

    /// The aggregation groups, by id.
    pub fn groups(&self) -> Result<Vec<(String, GroupState)>, AlertError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(GROUPS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), self.decode(v.value())?));
        }
        Ok(out)
    }

    /// The delivery log, oldest first.
    pub fn deliveries(&self) -> Result<Vec<Delivery>, AlertError> {
        let mut all: Vec<Delivery> = self.all_values(DELIVERY_LOG)?;
        all.sort_by_key(|d| d.finished_at);
        Ok(all)
    }

    /// How the notification with this key ended here, if it did.
    pub fn delivery(&self, key: &str) -> Result<Option<Delivery>, AlertError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(DELIVERY_LOG).map_err(|e| self.err(e))?;
        let got = table.get(key).map_err(|e| self.err(e))?;
        got.map(|v| self.decode(v.value())).transpose()
    }

    /// Takes a notification from the queue into the outbox unless one with
    /// its key was taken or finished here before; whether it was new.
    pub fn enqueue_once(&self, n: &Notification) -> Result<bool, AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let new = {
            let mut taken = txn.open_table(TAKEN).map_err(|e| self.err(e))?;
            let log = txn.open_table(DELIVERY_LOG).map_err(|e| self.err(e))?;
            let key = n.idempotency_key.as_str();
            let seen = taken.get(key).map_err(|e| self.err(e))?.is_some()
                || log.get(key).map_err(|e| self.err(e))?.is_some();
            if !seen {
                taken.insert(key, n.enqueued_at).map_err(|e| self.err(e))?;
                let mut counters = txn.open_table(COUNTERS).map_err(|e| self.err(e))?;
                let id = counters
                    .get("outbox")
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value());
                counters.insert("outbox", id + 1).map_err(|e| self.err(e))?;
                let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
                let bytes = serde_json::to_vec(n).expect("notifications serialize");
                outbox
                    .insert(id, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            !seen
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(new)
    }

    /// Logs how a notification that was never in this outbox ended.
    pub fn record(&self, d: &Delivery) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut log = txn.open_table(DELIVERY_LOG).map_err(|e| self.err(e))?;
            let bytes = serde_json::to_vec(d).expect("deliveries serialize");
            log.insert(d.idempotency_key.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// A notification is in the queue (Kafka has it): it leaves this outbox.
    pub fn published(&self, id: u64) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            outbox.remove(id).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Drops delivery log entries older than the retention, and the oldest
    /// beyond the limit.
    pub fn prune_deliveries(&self, now: i64) -> Result<usize, AlertError> {
        let all = self.deliveries()?;
        let over = all.len().saturating_sub(DELIVERY_LOG_LIMIT);
        let gone: Vec<&Delivery> = all
            .iter()
            .enumerate()
            .filter(|(i, d)| *i < over || now - d.finished_at > DELIVERY_LOG_RETENTION)
            .map(|(_, d)| d)
            .collect();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(DELIVERY_LOG).map_err(|e| self.err(e))?;
            for d in &gone {
                table
                    .remove(d.idempotency_key.as_str())
                    .map_err(|e| self.err(e))?;
            }
            let mut taken = txn.open_table(TAKEN).map_err(|e| self.err(e))?;
            taken
                .retain(|_, at| now - at <= DELIVERY_LOG_RETENTION)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(gone.len())
    }

    /// The last `limit` state changes, oldest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, AlertError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(HISTORY).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))?.rev().take(limit) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Commits one evaluation's changes at once.
    pub fn apply(&self, changes: &Changes) -> Result<(), AlertError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            for a in &changes.upserts {
                let bytes = serde_json::to_vec(a).expect("instances serialize");
                instances
                    .insert(
                        instance_key(&a.rule, a.fingerprint()).as_str(),
                        bytes.as_slice(),
                    )
                    .map_err(|e| self.err(e))?;
            }
            for (rule, fp) in &changes.removals {
                instances
                    .remove(instance_key(rule, *fp).as_str())
                    .map_err(|e| self.err(e))?;
            }
            let mut counters = txn.open_table(COUNTERS).map_err(|e| self.err(e))?;
            let mut next = |name: &str, n: u64| -> Result<u64, AlertError> {
                let start = counters
                    .get(name)
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value());
                counters.insert(name, start + n).map_err(|e| self.err(e))?;
                Ok(start)
            };
            let first_note = next("outbox", changes.notifications.len() as u64)?;
            let first_event = next("history", changes.history.len() as u64)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            for (i, n) in changes.notifications.iter().enumerate() {
                let bytes = serde_json::to_vec(n).expect("notifications serialize");
                outbox
                    .insert(first_note + i as u64, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut history = txn.open_table(HISTORY).map_err(|e| self.err(e))?;
            for (i, h) in changes.history.iter().enumerate() {
                let bytes = serde_json::to_vec(h).expect("events serialize");
                history
                    .insert(first_event + i as u64, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut groups = txn.open_table(GROUPS).map_err(|e| self.err(e))?;
            for (id, g) in &changes.groups {
                let bytes = serde_json::to_vec(g).expect("groups serialize");
                groups
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for id in &changes.group_removals {
                groups.remove(id.as_str()).map_err(|e| self.err(e))?;
            }
            let end = first_event + changes.history.len() as u64;
            if end > HISTORY_LIMIT {
                let cut = end - HISTORY_LIMIT;
                history
                    .retain_in(..cut, |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn silences(&self) -> Result<Vec<crate::silences::Silence>, AlertError> {
        self.all_values(SILENCES)
    }

    /// Stores a silence (new or changed) and drops the ones in `remove`.
    pub fn save_silence(
        &self,
        s: &crate::silences::Silence,
        remove: &[String],
    ) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(SILENCES).map_err(|e| self.err(e))?;
            let bytes = serde_json::to_vec(s).expect("silences serialize");
            table
                .insert(s.id.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            for id in remove {
                table.remove(id.as_str()).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// A notification is done with (delivered, refused, given up): it leaves
    /// the outbox and enters the delivery log, at once.
    pub fn finished(&self, id: u64, record: &Delivery) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            outbox.remove(id).map_err(|e| self.err(e))?;
            let mut log = txn.open_table(DELIVERY_LOG).map_err(|e| self.err(e))?;
            let bytes = serde_json::to_vec(record).expect("deliveries serialize");
            log.insert(record.idempotency_key.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// A delivery failed: it is tried again later.
    pub fn retry_later(&self, id: u64, n: &Notification) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let bytes = serde_json::to_vec(n).expect("notifications serialize");
            outbox
                .insert(id, bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(host: &str) -> AlertInstance {
        AlertInstance {
            rule: "g/HighCpu".into(),
            labels: BTreeMap::from([
                ("alertname".to_string(), "HighCpu".to_string()),
                ("host".to_string(), host.to_string()),
            ]),
            annotations: BTreeMap::new(),
            state: AlertState::Firing,
            value: 93.0,
            active_at: 1,
            fired_at: Some(2),
            resolved_at: None,
            keep_firing_since: None,
            last_eval: 2,
        }
    }

    #[test]
    fn changes_survive_reopening_and_history_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.redb");
        {
            let store = AlertStore::open(&path).unwrap();
            let a = instance("a");
            store
                .apply(&Changes {
                    upserts: vec![a.clone(), instance("b")],
                    notifications: vec![Notification {
                        idempotency_key: "k".into(),
                        receiver: "r".into(),
                        group_key: "{}:{}".into(),
                        group_labels: BTreeMap::new(),
                        url: "http://127.0.0.1:9/".into(),
                        kind: Default::default(),
                        endpoint_index: 0,
                        status: "firing".into(),
                        alerts: vec![a],
                        alert: None,
                        valid_until: None,
                        enqueued_at: 2,
                        from_queue: false,
                        attempts: 0,
                        next_attempt: 2,
                        last_error: None,
                    }],
                    ..Changes::default()
                })
                .unwrap();
            store
                .apply(&Changes {
                    removals: vec![("g/HighCpu".into(), instance("b").fingerprint())],
                    ..Changes::default()
                })
                .unwrap();
        }
        let store = AlertStore::open(&path).unwrap();
        // NaN and infinite values (the synthetic error and nodata alerts are
        // NaN) are stored and read back.
        let mut odd = instance("c");
        odd.value = f64::NAN;
        let mut inf = instance("d");
        inf.value = f64::NEG_INFINITY;
        store
            .apply(&Changes {
                upserts: vec![odd.clone(), inf],
                history: vec![HistoryEvent {
                    time: 1,
                    rule: "g/HighCpu".into(),
                    labels: odd.labels.clone(),
                    from: "inactive".into(),
                    to: "firing".into(),
                    value: f64::NAN,
                }],
                ..Changes::default()
            })
            .unwrap();
        assert!(store.history(10).unwrap()[0].value.is_nan());
        let all = store.instances().unwrap();
        let by_host = |h: &str| all.iter().find(|a| a.labels["host"] == h).cloned();
        assert_eq!(all.len(), 3);
        assert!(by_host("b").is_none());
        assert_eq!(by_host("a").unwrap().value, 93.0);
        assert!(by_host("c").unwrap().value.is_nan());
        assert_eq!(by_host("d").unwrap().value, f64::NEG_INFINITY);
        let outbox = store.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        let record = outbox[0].1.finished("delivered", 5, None);
        store.finished(outbox[0].0, &record).unwrap();
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(store.delivery("k").unwrap().unwrap().outcome, "delivered");
        assert_eq!(store.prune_deliveries(5).unwrap(), 0);
        assert_eq!(
            store
                .prune_deliveries(5 + DELIVERY_LOG_RETENTION + 1)
                .unwrap(),
            1
        );
        assert!(store.delivery("k").unwrap().is_none());
        assert_ne!(
            fingerprint(&instance("a").labels),
            fingerprint(&instance("b").labels)
        );
    }
}
