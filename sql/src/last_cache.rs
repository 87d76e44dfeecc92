//! `last_cache('table')`: the latest row of every series of a table, answered from
//! the storage engine's in-memory last-value cache instead of scanning files.
//!
//! The first call for a table starts the cache and fills it from the stored data
//! (one deduplicated scan); from then on every write updates it as it becomes
//! visible, so a query sees exactly what `SELECT DISTINCT ON (tags) * ... ORDER BY
//! tags, time DESC` would, without reading Parquet. The cache lives in memory and
//! is filled again after a restart.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use vigil_storage::{Storage, TIME_COLUMN};

/// The table function; one per engine.
#[derive(Debug)]
pub(crate) struct LastCacheFunction {
    storage: Arc<Storage>,
    /// Per table: set once the cache has been filled from stored data.
    filled: Arc<Mutex<HashMap<String, Arc<OnceCell<()>>>>>,
}

impl LastCacheFunction {
    pub(crate) fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            filled: Arc::default(),
        }
    }
}

impl TableFunctionImpl for LastCacheFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let table = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(t)) | ScalarValue::Utf8View(Some(t)), _)] => {
                t.clone()
            }
            _ => return plan_err!("last_cache('table') takes one table name as a string literal"),
        };
        let Some(schema) = self.storage.table_schema(&table) else {
            return plan_err!("last_cache: table '{table}' not found");
        };
        let filled = Arc::clone(self.filled.lock().entry(table.clone()).or_default());
        Ok(Arc::new(LastCacheTable {
            storage: Arc::clone(&self.storage),
            table,
            schema,
            filled,
        }))
    }
}

#[derive(Debug)]
pub(crate) struct LastCacheTable {
    storage: Arc<Storage>,
    table: String,
    schema: SchemaRef,
    filled: Arc<OnceCell<()>>,
}

impl LastCacheTable {
    /// Fills the cache from stored data. Tracking starts first, so writes that land
    /// during the scan are kept, and the scanned rows only replace older ones.
    async fn fill(&self, state: &SessionState) -> Result<()> {
        if !self.storage.track_last_values(&self.table) {
            return Ok(());
        }
        let tags: Vec<String> = self
            .schema
            .fields()
            .iter()
            .filter(|f| {
                matches!(
                    f.data_type(),
                    datafusion::arrow::datatypes::DataType::Dictionary(..)
                )
            })
            .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
            .collect();
        let table = format!("\"{}\"", self.table.replace('"', "\"\""));
        let sql = if tags.is_empty() {
            format!("SELECT * FROM {table} ORDER BY {TIME_COLUMN} DESC LIMIT 1")
        } else {
            let tags = tags.join(", ");
            format!(
                "SELECT DISTINCT ON ({tags}) * FROM {table} ORDER BY {tags}, {TIME_COLUMN} DESC"
            )
        };
        let result = async {
            let ctx = SessionContext::new_with_state(state.clone());
            ctx.sql(&sql).await?.collect().await
        }
        .await;
        match result {
            Ok(batches) => {
                for b in &batches {
                    self.storage.offer_last_values(&self.table, b);
                }
                Ok(())
            }
            Err(e) => {
                self.storage.untrack_last_values(&self.table);
                Err(e)
            }
        }
    }
}

impl LastCacheTable {
    /// The table whose latest values this reads (what access checks must look at).
    pub(crate) fn table(&self) -> &str {
        &self.table
    }
}

#[async_trait]
impl TableProvider for LastCacheTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let session = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("last_cache needs a SessionState".into()))?;
        self.filled.get_or_try_init(|| self.fill(session)).await?;
        // The table may have gained columns since planning: the planned ones.
        let rows = match self.storage.last_values(&self.table, &self.schema) {
            Some(rows) => rows.map_err(|e| DataFusionError::External(Box::new(e)))?,
            None => {
                return Err(DataFusionError::Internal(format!(
                    "last_cache of '{}' is not kept",
                    self.table
                )))
            }
        };
        // A series whose latest row is past the table's retention is gone, as it
        // is from the table.
        let rows = match self.storage.retention_cutoff(&self.table) {
            Some(cutoff) => keep_from(rows, cutoff)?,
            None => rows,
        };
        MemTable::try_new(Arc::clone(&self.schema), vec![vec![rows]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The rows of `rows` at or after `cutoff`.
fn keep_from(rows: RecordBatch, cutoff: i64) -> Result<RecordBatch> {
    let Some(time) = rows.column_by_name(TIME_COLUMN) else {
        return Ok(rows);
    };
    let time =
        datafusion::arrow::compute::cast(time, &datafusion::arrow::datatypes::DataType::Int64)?;
    let keep = datafusion::arrow::compute::kernels::cmp::gt_eq(
        &time,
        &datafusion::arrow::array::Int64Array::new_scalar(cutoff),
    )?;
    Ok(datafusion::arrow::compute::filter_record_batch(
        &rows, &keep,
    )?)
}

#[cfg(test)]
mod retention_tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    #[test]
    fn rows_past_the_cutoff_are_dropped() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["old", "edge", "new"])),
                Arc::new(TimestampNanosecondArray::from(vec![5, 10, 20]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let kept = keep_from(rows, 10).unwrap();
        let hosts = kept
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            hosts.iter().flatten().collect::<Vec<_>>(),
            vec!["edge", "new"]
        );
    }
}
