//! Alert state in redb: the instances of every rule, the notifications not yet
//! delivered (the outbox) and the history of state changes. A rule's
//! evaluation commits its new states and the notifications they cause in one
//! transaction, and a notification leaves the outbox only once delivered: a
//! crash anywhere neither loses a notification nor re-sends one for an alert
//! that was already notified (beyond the one in flight, which keeps its
//! idempotency key).

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
    /// When each destination (receiver) was last sent a firing notification.
    #[serde(default)]
    pub last_sent: BTreeMap<String, i64>,
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
            last_sent: BTreeMap::new(),
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

/// A notification waiting for delivery to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Receivers drop duplicates by it: the same for every attempt.
    pub idempotency_key: String,
    pub receiver: String,
    pub url: String,
    /// The endpoint's format (entries from before it was kept: Alertmanager's).
    #[serde(default)]
    pub kind: vigil_rules::WebhookKind,
    pub status: String,
    pub alert: AlertInstance,
    pub enqueued_at: i64,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_error: Option<String>,
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
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.removals.is_empty()
            && self.notifications.is_empty()
            && self.history.is_empty()
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
            out.push((k.value(), self.decode(v.value())?));
        }
        Ok(out)
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

    /// A notification was delivered: it leaves the outbox.
    pub fn delivered(&self, id: u64) -> Result<(), AlertError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            outbox.remove(id).map_err(|e| self.err(e))?;
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
            last_sent: BTreeMap::new(),
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
                        url: "http://127.0.0.1:9/".into(),
                        kind: Default::default(),
                        status: "firing".into(),
                        alert: a,
                        enqueued_at: 2,
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
        store.delivered(outbox[0].0).unwrap();
        assert!(store.outbox().unwrap().is_empty());
        assert_ne!(
            fingerprint(&instance("a").labels),
            fingerprint(&instance("b").labels)
        );
    }
}
