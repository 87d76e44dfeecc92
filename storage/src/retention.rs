//! How long each table's data is kept. Queries never see rows past their table's
//! retention, even before maintenance deletes the files holding them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Retention periods: raw tables' (`default`), each rollup resolution's, and
/// per-table overrides (keyed by the stored name: `cpu`, `rollup_10m.cpu`);
/// `None` keeps data forever.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionPolicy {
    pub default: Option<Duration>,
    pub rollup_10m: Option<Duration>,
    pub rollup_1h: Option<Duration>,
    pub tables: BTreeMap<String, Option<Duration>>,
}

impl RetentionPolicy {
    /// Keeps everything.
    pub fn forever() -> Self {
        Self::default()
    }

    pub fn period(&self, table: &str) -> Option<Duration> {
        if let Some(p) = self.tables.get(table) {
            return *p;
        }
        if table.starts_with("rollup_10m.") {
            self.rollup_10m
        } else if table.starts_with("rollup_1h.") {
            self.rollup_1h
        } else {
            self.default
        }
    }

    /// The oldest time (nanoseconds since the epoch) `table` keeps at `now`:
    /// rows before it are expired.
    pub fn cutoff(&self, table: &str, now: i64) -> Option<i64> {
        let period = self.period(table)?;
        let nanos = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
        Some(now.saturating_sub(nanos))
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_override_the_default() {
        let day = Duration::from_secs(86_400);
        let mut p = RetentionPolicy {
            default: Some(7 * day),
            rollup_10m: Some(30 * day),
            ..Default::default()
        };
        p.tables.insert("audit".into(), None);
        p.tables.insert("debug".into(), Some(day));
        let now = 100 * 86_400_000_000_000;
        assert_eq!(p.cutoff("cpu", now), Some(93 * 86_400_000_000_000));
        assert_eq!(p.cutoff("debug", now), Some(99 * 86_400_000_000_000));
        assert_eq!(p.cutoff("audit", now), None);
        assert_eq!(
            p.cutoff("rollup_10m.cpu", now),
            Some(70 * 86_400_000_000_000)
        );
        assert_eq!(p.cutoff("rollup_1h.cpu", now), None);
        assert_eq!(RetentionPolicy::forever().cutoff("cpu", now), None);
        // A period longer than the epoch does not wrap.
        p.default = Some(Duration::from_secs(u64::MAX));
        assert_eq!(p.cutoff("cpu", 5), Some(5 - i64::MAX));
    }
}
