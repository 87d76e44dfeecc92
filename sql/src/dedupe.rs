//! [`DeduplicateExec`]: last-write-wins deduplication of a stream that is already
//! sorted by (series key, time, sequence descending), as InfluxDB 3 does it.
//!
//! Overlapping chunks (buffer, Parquet files) are each sorted by the table's sort
//! key, so a streaming merge of them puts every copy of a (series, time) next to
//! each other, newest first; keeping the first row of each run is then one
//! comparison per row with memory for one key, where a window function over the
//! union re-sorts every overlapping row with all its columns.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{LexOrdering, OrderingRequirements, PhysicalExpr};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{Stream, StreamExt};

/// Keeps the first row of each run of equal key columns (`key`: column indexes of
/// the input). The input must be one partition sorted by `ordering`, which starts
/// with the key columns and ends with the sequence descending.
#[derive(Debug)]
pub(crate) struct DeduplicateExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    key: Vec<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DeduplicateExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        ordering: LexOrdering,
        key: Vec<usize>,
    ) -> Self {
        let input_props = input.properties();
        let properties = PlanProperties::new(
            input_props.equivalence_properties().clone(),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(1),
            input_props.emission_type,
            input_props.boundedness,
        );
        Self {
            input,
            ordering,
            key,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for DeduplicateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = self.input.schema();
        let names: Vec<&str> = self
            .key
            .iter()
            .map(|i| schema.field(*i).name().as_str())
            .collect();
        write!(f, "DeduplicateExec: key=[{}]", names.join(", "))
    }
}

impl ExecutionPlan for DeduplicateExec {
    fn name(&self) -> &str {
        "DeduplicateExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }
    /// `false` although the output keeps the input's order (the properties say
    /// so): `true` would let DataFusion push a parent's sort requirement below this
    /// node, replacing the newest-first order the dedupe needs.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "DeduplicateExec has one input, given {}",
                children.len()
            )));
        }
        Ok(Arc::new(DeduplicateExec::new(
            children.swap_remove(0),
            self.ordering.clone(),
            self.key.clone(),
        )))
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DeduplicateExec has one partition, asked for {partition}"
            )));
        }
        let schema = self.input.schema();
        let fields = self
            .key
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        Ok(Box::pin(DeduplicateStream {
            input: self.input.execute(0, context)?,
            schema,
            key: self.key.clone(),
            converter: RowConverter::new(fields)?,
            last: None,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            duplicates: MetricBuilder::new(&self.metrics).counter("duplicates_removed", partition),
        }))
    }
}

struct DeduplicateStream {
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    key: Vec<usize>,
    converter: RowConverter,
    /// The key of the last row kept, carried across batches.
    last: Option<OwnedRow>,
    baseline: BaselineMetrics,
    duplicates: Count,
}

impl DeduplicateStream {
    fn dedupe(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(batch);
        }
        let columns: Vec<ArrayRef> = self
            .key
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        let rows = self.converter.convert_columns(&columns)?;
        let mut keep = Vec::with_capacity(n);
        let first_new = match &self.last {
            Some(last) => last.row() != rows.row(0),
            None => true,
        };
        keep.push(first_new);
        for i in 1..n {
            keep.push(rows.row(i) != rows.row(i - 1));
        }
        self.last = Some(rows.row(n - 1).owned());
        let kept = keep.iter().filter(|k| **k).count();
        self.duplicates.add(n - kept);
        if kept == n {
            return Ok(batch);
        }
        Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
    }
}

impl Stream for DeduplicateStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let poll = match self.input.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(batch))) => {
                    let elapsed = self.baseline.elapsed_compute().clone();
                    let timer = elapsed.timer();
                    let out = self.dedupe(batch);
                    timer.done();
                    match out {
                        Ok(b) if b.num_rows() == 0 => continue,
                        other => Poll::Ready(Some(other)),
                    }
                }
                other => other,
            };
            return self.baseline.record_poll(poll);
        }
    }
}

impl RecordBatchStream for DeduplicateStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray, UInt64Array};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::PhysicalSortExpr;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn keeps_the_newest_row_of_each_key_across_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("time", DataType::Int64, false),
            Field::new("seq", DataType::UInt64, false),
        ]));
        let batch = |h: Vec<Option<&str>>, t: Vec<i64>, s: Vec<u64>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(h)),
                    Arc::new(Int64Array::from(t)),
                    Arc::new(UInt64Array::from(s)),
                ],
            )
            .unwrap()
        };
        // Sorted by host, time, seq desc; a run of "b"@2 spans the batch boundary.
        let b1 = batch(
            vec![None, Some("a"), Some("a"), Some("b")],
            vec![1, 1, 1, 2],
            vec![5, 9, 3, 8],
        );
        let b2 = batch(
            vec![Some("b"), Some("b"), Some("c")],
            vec![2, 3, 1],
            vec![4, 1, 1],
        );
        let source =
            MemorySourceConfig::try_new_exec(&[vec![b1, b2]], Arc::clone(&schema), None).unwrap();
        let asc = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let ordering = LexOrdering::new([
            PhysicalSortExpr::new(col("host", &schema).unwrap(), asc),
            PhysicalSortExpr::new(col("time", &schema).unwrap(), asc),
            PhysicalSortExpr::new(
                col("seq", &schema).unwrap(),
                SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            ),
        ])
        .unwrap();
        let exec = Arc::new(DeduplicateExec::new(source, ordering, vec![0, 1]));
        let out = datafusion::physical_plan::collect(exec, SessionContext::new().task_ctx())
            .await
            .unwrap();
        let all = datafusion::arrow::compute::concat_batches(&schema, &out).unwrap();
        let seqs: Vec<u64> = all
            .column(2)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(seqs, [5, 9, 8, 1, 1]);
    }
}
