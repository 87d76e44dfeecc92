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
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::kernels::cmp::not_distinct;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
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
        Ok(Box::pin(DeduplicateStream {
            input: self.input.execute(0, context)?,
            schema: self.input.schema(),
            key: self.key.clone(),
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
    /// The key columns (time first) of the previous batch's last row.
    last: Option<Vec<ArrayRef>>,
    baseline: BaselineMetrics,
    duplicates: Count,
}

impl DeduplicateStream {
    /// Which rows repeat the key of the row before them (the first row: of the last
    /// row of the previous batch). Column by column, time first: in sorted data a
    /// time rarely equals the previous row's, so most batches are settled by one
    /// vectorized comparison and never look at the tags.
    fn repeats(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let n = batch.num_rows();
        let mut repeat = vec![false; n];
        // Key columns, the last one (time) first.
        let columns: Vec<&ArrayRef> = self.key.iter().rev().map(|i| batch.column(*i)).collect();
        if n > 1 {
            let mut same: Option<BooleanArray> = None;
            for c in &columns {
                let eq = not_distinct(&c.slice(1, n - 1), &c.slice(0, n - 1))?;
                let eq = match same {
                    None => eq,
                    Some(prev) => and(&prev, &eq)?,
                };
                if eq.true_count() == 0 {
                    same = None;
                    break;
                }
                same = Some(eq);
            }
            if let Some(same) = same {
                for (i, r) in same.values().iter().enumerate() {
                    repeat[i + 1] = r;
                }
            }
        }
        if let Some(last) = &self.last {
            let mut equal = true;
            for (c, l) in columns.iter().zip(last) {
                if !not_distinct(&c.slice(0, 1), l)?.value(0) {
                    equal = false;
                    break;
                }
            }
            repeat[0] = equal;
        }
        Ok(repeat)
    }

    fn dedupe(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(batch);
        }
        let repeat = self.repeats(&batch)?;
        self.last = Some(
            self.key
                .iter()
                .rev()
                .map(|i| batch.column(*i).slice(n - 1, 1))
                .collect(),
        );
        let kept = repeat.iter().filter(|r| !**r).count();
        self.duplicates.add(n - kept);
        if kept == n {
            return Ok(batch);
        }
        let keep: BooleanArray = repeat.iter().map(|r| Some(!r)).collect();
        Ok(filter_record_batch(&batch, &keep)?)
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
        dedupes(DataType::Utf8, |h| Arc::new(StringArray::from(h))).await;
    }

    /// Tags are dictionaries, and batches of different files have different ones.
    #[tokio::test]
    async fn compares_dictionary_tags_by_value() {
        use datafusion::arrow::array::DictionaryArray;
        use datafusion::arrow::datatypes::Int32Type;
        let mut flip = false;
        dedupes(
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            move |h| {
                // Every other batch gets its dictionary in another order.
                flip = !flip;
                let mut values = h.clone();
                if flip {
                    values.reverse();
                }
                let d: DictionaryArray<Int32Type> = values.into_iter().collect();
                if !flip {
                    return Arc::new(d);
                }
                let keys = datafusion::arrow::array::Int32Array::from(
                    (0..d.len() as i32).rev().collect::<Vec<_>>(),
                );
                datafusion::arrow::compute::take(&d, &keys, None).unwrap()
            },
        )
        .await;
    }

    async fn dedupes(host_type: DataType, mut host: impl FnMut(Vec<Option<&str>>) -> ArrayRef) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", host_type, true),
            Field::new("time", DataType::Int64, false),
            Field::new("seq", DataType::UInt64, false),
        ]));
        let mut batch = |h: Vec<Option<&str>>, t: Vec<i64>, s: Vec<u64>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    host(h),
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
