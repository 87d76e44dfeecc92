//! [`VigilScanExec`]: the root of every table scan, so that `EXPLAIN` and
//! `EXPLAIN ANALYZE` say what the scan read and what it skipped.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// What a scan chose to read, for display.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScanSummary {
    pub(crate) table: String,
    pub(crate) time_range: String,
    pub(crate) files_total: usize,
    pub(crate) files_read: usize,
    pub(crate) buffer_batches_total: usize,
    pub(crate) buffer_batches_read: usize,
    /// Chunks that overlap in time and so are deduplicated (last write wins).
    pub(crate) deduplicated_chunks: usize,
    /// Of those, chunks not stored in the table's sort order, sorted by the query
    /// (the buffer; files written before sort keys were recorded).
    pub(crate) sorted_chunks: usize,
    /// Chunks (files, a buffer without repeats) merged only where they meet another
    /// chunk in time, the rest read as they are.
    pub(crate) partly_merged_files: usize,
    /// The buffer was read without sorting or deduplicating it (nothing else
    /// overlaps it and no (series, time) repeats in it).
    pub(crate) plain_buffer: bool,
}

/// Passes its child's batches through unchanged; exists to be displayed.
#[derive(Debug)]
pub(crate) struct VigilScanExec {
    summary: ScanSummary,
    input: Arc<dyn ExecutionPlan>,
}

impl VigilScanExec {
    pub(crate) fn new(summary: ScanSummary, input: Arc<dyn ExecutionPlan>) -> Self {
        Self { summary, input }
    }
}

impl DisplayAs for VigilScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        write!(
            f,
            "VigilScan: table={}, time={}, files={} of {} ({} pruned), buffer batches={} of {}, deduplicated chunks={} (sorted {}, merged only where they meet {}){}",
            s.table,
            s.time_range,
            s.files_read,
            s.files_total,
            s.files_total - s.files_read,
            s.buffer_batches_read,
            s.buffer_batches_total,
            s.deduplicated_chunks,
            s.sorted_chunks,
            s.partly_merged_files,
            if s.plain_buffer {
                ", buffer read as it is"
            } else {
                ""
            }
        )
    }
}

impl ExecutionPlan for VigilScanExec {
    fn name(&self) -> &str {
        "VigilScanExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(VigilScanExec {
            summary: self.summary.clone(),
            input: children.swap_remove(0),
        }))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}
