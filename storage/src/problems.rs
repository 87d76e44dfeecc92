//! What is failing in the engine right now, by part (the WAL, a table whose flush
//! fails, the flusher, the compactor), for health checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug, Default, Clone)]
pub(crate) struct Problems(Arc<Mutex<BTreeMap<String, String>>>);

impl Problems {
    pub(crate) fn set(&self, part: impl Into<String>, reason: impl Into<String>) {
        self.0.lock().insert(part.into(), reason.into());
    }

    pub(crate) fn clear(&self, part: &str) {
        self.0.lock().remove(part);
    }

    pub(crate) fn list(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
