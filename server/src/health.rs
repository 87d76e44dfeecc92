//! What `/health` reports: each background part of the server (flusher, compactor,
//! Kafka consumer, listeners) records here when it fails or stops, so an operator's
//! health check sees a dead part instead of a server that only looks alive.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Failing components and why; empty when all is well.
    failures: Mutex<BTreeMap<&'static str, String>>,
    /// What the storage engine reports failing (the WAL, tables that do not flush).
    storage: Mutex<Vec<(String, String)>>,
}

impl Health {
    /// Marks a component failed (logged by the caller).
    pub(crate) fn fail(&self, component: &'static str, reason: impl Into<String>) {
        self.failures.lock().insert(component, reason.into());
    }

    /// Takes in the storage engine's current problems.
    pub(crate) fn sync_storage(&self, problems: &[(String, String)]) {
        *self.storage.lock() = problems.to_vec();
    }

    pub(crate) fn is_ok(&self) -> bool {
        self.failures.lock().is_empty() && self.storage.lock().is_empty()
    }

    /// The body of `/health`, in the shape InfluxDB's health endpoint uses.
    pub(crate) fn report(&self) -> Value {
        let failures = self.failures.lock();
        let storage = self.storage.lock();
        if failures.is_empty() && storage.is_empty() {
            return json!({"status": "pass"});
        }
        let checks: Vec<Value> = failures
            .iter()
            .map(|(name, reason)| (name.to_string(), reason))
            .chain(storage.iter().map(|(n, r)| (format!("storage:{n}"), r)))
            .map(|(name, reason)| json!({"name": name, "status": "fail", "message": reason}))
            .collect();
        json!({"status": "fail", "checks": checks})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_failed_components_and_storage_problems() {
        let h = Health::default();
        assert!(h.is_ok());
        assert_eq!(h.report()["status"], "pass");
        h.fail("kafka", "broker gone");
        assert!(!h.is_ok());
        assert_eq!(h.report()["checks"][0]["message"], "broker gone");
        h.sync_storage(&[("flush".into(), "disk full".into())]);
        assert_eq!(h.report()["checks"][1]["name"], "storage:flush");
        assert_eq!(h.report()["checks"][1]["message"], "disk full");
    }
}
