//! Maintenance: compaction, retention and tiering, on a schedule and on demand.
//! Each run is reported (what it did, how long it took, what failed) and the last
//! runs are kept for `system.maintenance`.
//!
//! Order matters: compaction first (so that what moves to the cold tier is
//! compacted once, not again there), then retention (a file past retention is
//! deleted, never moved), then tiering, then the sweep of cold objects a crash
//! left unnamed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use vigil_storage::retention::now_nanos;
use vigil_storage::{is_rollup_table, Storage, Tier};

/// A step maintenance runs after compaction and before retention, defined above
/// this crate (rollups read through the query engine): it must be done before
/// retention deletes the data it reads.
#[async_trait::async_trait]
pub trait MaintenanceStep: Send + Sync {
    /// What the step is called in reports.
    fn name(&self) -> &'static str;
    /// Runs the step; returns the rows it wrote.
    async fn run(&self) -> Result<u64, String>;
}

/// Runs kept for `system.maintenance`.
const HISTORY: usize = 200;

/// What maintenance does.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenancePolicy {
    /// Files whose newest row is older than this move to the cold tier.
    pub hot_window: Duration,
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MaintenanceReport {
    pub id: u64,
    /// `schedule` or `request`.
    pub trigger: String,
    /// Start, in nanoseconds since the epoch.
    pub started: i64,
    pub duration_ms: u64,
    pub days_compacted: usize,
    pub rollup_rows_written: u64,
    pub files_expired: usize,
    pub rows_expired: u64,
    pub bytes_expired: u64,
    /// Of the expired files, those kept in the archive.
    pub files_archived: usize,
    pub files_moved_to_cold: usize,
    pub bytes_moved_to_cold: u64,
    pub move_failures: usize,
    pub cold_orphans_removed: usize,
    /// The steps that failed, `step: error`; empty when all succeeded.
    pub errors: Vec<String>,
}

impl MaintenanceReport {
    /// The columns of `system.maintenance`.
    pub fn schema() -> SchemaRef {
        let n = |name: &str| Field::new(name, DataType::Int64, false);
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("trigger", DataType::Utf8, false),
            Field::new(
                "started",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            n("duration_ms"),
            n("days_compacted"),
            n("rollup_rows_written"),
            n("files_expired"),
            n("rows_expired"),
            n("bytes_expired"),
            n("files_archived"),
            n("files_moved_to_cold"),
            n("bytes_moved_to_cold"),
            n("move_failures"),
            n("cold_orphans_removed"),
            Field::new("errors", DataType::Utf8, true),
        ]))
    }

    /// `reports` as rows of `system.maintenance`.
    pub fn to_batch(reports: &[MaintenanceReport]) -> Result<RecordBatch, ArrowError> {
        let int = |f: &dyn Fn(&MaintenanceReport) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(reports.iter().map(f)))
        };
        RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(UInt64Array::from_iter_values(reports.iter().map(|r| r.id))),
                Arc::new(StringArray::from_iter_values(
                    reports.iter().map(|r| r.trigger.as_str()),
                )),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(reports.iter().map(|r| r.started))
                        .with_timezone("UTC"),
                ),
                int(&|r| r.duration_ms as i64),
                int(&|r| r.days_compacted as i64),
                int(&|r| r.rollup_rows_written as i64),
                int(&|r| r.files_expired as i64),
                int(&|r| r.rows_expired as i64),
                int(&|r| r.bytes_expired as i64),
                int(&|r| r.files_archived as i64),
                int(&|r| r.files_moved_to_cold as i64),
                int(&|r| r.bytes_moved_to_cold as i64),
                int(&|r| r.move_failures as i64),
                int(&|r| r.cold_orphans_removed as i64),
                Arc::new(StringArray::from_iter(
                    reports
                        .iter()
                        .map(|r| (!r.errors.is_empty()).then(|| r.errors.join("; "))),
                )),
            ],
        )
    }
}

/// Runs maintenance; one run at a time.
pub struct Maintenance {
    storage: Arc<Storage>,
    policy: MaintenancePolicy,
    steps: Vec<Arc<dyn MaintenanceStep>>,
    running: tokio::sync::Mutex<()>,
    history: Mutex<VecDeque<MaintenanceReport>>,
    next_id: Mutex<u64>,
}

impl Maintenance {
    pub fn new(storage: Arc<Storage>, policy: MaintenancePolicy) -> Self {
        Self {
            storage,
            policy,
            steps: Vec::new(),
            running: tokio::sync::Mutex::new(()),
            history: Mutex::new(VecDeque::new()),
            next_id: Mutex::new(1),
        }
    }

    /// Adds a step run after compaction, before retention.
    pub fn with_step(mut self, step: Arc<dyn MaintenanceStep>) -> Self {
        self.steps.push(step);
        self
    }

    /// The last runs, oldest first.
    pub fn history(&self) -> Vec<MaintenanceReport> {
        self.history.lock().iter().cloned().collect()
    }

    /// Runs every step now (after a run in progress finishes) and reports.
    pub async fn run(&self, trigger: &str) -> MaintenanceReport {
        let _one = self.running.lock().await;
        let started = Instant::now();
        let mut r = MaintenanceReport {
            id: {
                let mut n = self.next_id.lock();
                *n += 1;
                *n - 1
            },
            trigger: trigger.to_string(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            ..Default::default()
        };
        let s = &self.storage;
        match s.compact().await {
            Ok(n) => r.days_compacted = n,
            Err(e) => r.errors.push(format!("compaction: {e}")),
        }
        for step in &self.steps {
            match step.run().await {
                Ok(rows) => r.rollup_rows_written += rows,
                Err(e) => r.errors.push(format!("{}: {e}", step.name())),
            }
        }

        let now = now_nanos();
        let files = s.files();
        // With rollups, raw data is kept until it is rolled up, even past its
        // retention (queries do not show it): a failed rollup must not turn into
        // a gap in the rollups.
        let rolled_up = |table: &str, max_time: i64| {
            self.steps.is_empty()
                || is_rollup_table(table)
                || s.rollup_watermark(table)
                    .is_some_and(|w| max_time < w.rolled_10m)
        };
        let expired: Vec<u64> = files
            .iter()
            // Restored files go when their restore is dropped.
            .filter(|f| f.tier != Tier::Restored)
            .filter(|f| {
                s.retention_cutoff(&f.table)
                    .is_some_and(|cut| f.max_time < cut)
            })
            .filter(|f| rolled_up(&f.table, f.max_time))
            .map(|f| f.id)
            .collect();
        if !expired.is_empty() {
            match s.expire_files(&expired).await {
                Ok(o) => {
                    r.files_expired = o.files;
                    r.rows_expired = o.rows;
                    r.bytes_expired = o.bytes;
                    r.files_archived = o.archived;
                    if let Some(e) = o.error {
                        r.errors.push(format!("archive: {e}"));
                    }
                }
                Err(e) => r.errors.push(format!("retention: {e}")),
            }
        }

        // Before moving: a copy a crash left is removed first (a move of the same
        // file would overwrite it anyway).
        match s.remove_cold_orphans().await {
            Ok(n) => r.cold_orphans_removed = n,
            Err(e) => r.errors.push(format!("cold tier sweep: {e}")),
        }
        let window = i64::try_from(self.policy.hot_window.as_nanos()).unwrap_or(i64::MAX);
        let hot_cutoff = now.saturating_sub(window);
        let to_move: Vec<u64> = files
            .iter()
            .filter(|f| f.tier == Tier::Hot && f.max_time < hot_cutoff)
            .filter(|f| !expired.contains(&f.id))
            .map(|f| f.id)
            .collect();
        if !to_move.is_empty() {
            match s.move_to_cold(&to_move).await {
                Ok(o) => {
                    r.files_moved_to_cold = o.files;
                    r.bytes_moved_to_cold = o.bytes;
                    r.move_failures = o.failed;
                    if let Some(e) = o.error {
                        r.errors.push(format!(
                            "tiering: {} files stay hot and are tried again: {e}",
                            o.failed
                        ));
                    }
                }
                Err(e) => r.errors.push(format!("tiering: {e}")),
            }
        }

        s.delete_replaced_files(false).await;

        r.duration_ms = started.elapsed().as_millis() as u64;
        if r.errors.is_empty() {
            s.clear_problem("maintenance");
            info!(
                id = r.id,
                trigger,
                duration_ms = r.duration_ms,
                days_compacted = r.days_compacted,
                rollup_rows_written = r.rollup_rows_written,
                files_expired = r.files_expired,
                files_moved_to_cold = r.files_moved_to_cold,
                bytes_moved_to_cold = r.bytes_moved_to_cold,
                "maintenance done"
            );
        } else {
            let joined = r.errors.join("; ");
            warn!(
                id = r.id,
                trigger,
                errors = joined,
                "maintenance failed in part"
            );
            s.set_problem("maintenance", format!("maintenance failed: {joined}"));
        }
        let mut h = self.history.lock();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r.clone());
        r
    }

    /// Runs maintenance every `interval` until stopped.
    #[must_use = "the schedule stops when this is dropped"]
    pub fn start(self: &Arc<Self>, interval: Duration) -> MaintenanceSchedule {
        let (stop, mut stopped) = watch::channel(false);
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return,
                    _ = tick.tick() => {}
                }
                // In a task of its own: a panic is reported, not the end of the
                // schedule.
                let running = Arc::clone(&this);
                if let Err(e) = tokio::spawn(async move { running.run("schedule").await }).await {
                    if e.is_cancelled() {
                        return;
                    }
                    warn!(error = %e, "maintenance panicked");
                    this.storage
                        .set_problem("maintenance", format!("maintenance panicked: {e}"));
                }
            }
        });
        MaintenanceSchedule { stop, task }
    }
}

/// The running schedule; [`MaintenanceSchedule::stop`] ends it.
pub struct MaintenanceSchedule {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MaintenanceSchedule {
    /// Ends the schedule; a run in progress finishes first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_storage::{RetentionPolicy, StorageConfig};

    const DAY: i64 = 86_400_000_000_000;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_expires_then_tiers_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = StorageConfig::new(dir.path());
        c.deletion_grace = Duration::ZERO;
        c.retention = RetentionPolicy {
            default: Some(Duration::from_secs(7 * 86_400)),
            ..Default::default()
        };
        let s = Storage::open(c).await.unwrap();
        let now = now_nanos();
        for (t, v) in [(now - 10 * DAY, 1.0), (now - 3 * DAY, 2.0), (now, 3.0)] {
            let point = vigil_storage::Point {
                table: "cpu".into(),
                tags: vec![("host".into(), "a".into())],
                fields: vec![("v".into(), vigil_storage::FieldValue::F64(v))],
                time: t,
            };
            let w = s.validate(vec![(1, point)]);
            s.commit(w.tables).await.unwrap();
            s.flush().await.unwrap();
        }
        let m = Maintenance::new(
            Arc::clone(&s),
            MaintenancePolicy {
                hot_window: Duration::from_secs(86_400),
            },
        );
        let r = m.run("request").await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.files_expired, r.rows_expired), (1, 1));
        assert_eq!(r.files_moved_to_cold, 1);
        let tiers: Vec<Tier> = {
            let mut f = s.files();
            f.sort_by_key(|f| f.min_time);
            f.iter().map(|f| f.tier).collect()
        };
        assert_eq!(tiers, vec![Tier::Cold, Tier::Hot]);
        let again = m.run("schedule").await;
        assert_eq!((again.files_expired, again.files_moved_to_cold), (0, 0));
        assert_eq!(
            m.history().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let rows = MaintenanceReport::to_batch(&m.history()).unwrap();
        assert_eq!(rows.num_rows(), 2);
        assert!(rows.column_by_name("errors").unwrap().is_null(0));
    }
}
