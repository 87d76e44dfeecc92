//! The `system` schema: vigil's own state as SQL tables, built when queried.
//! `system.files` (every Parquet file: table, tier, level, time range, rows,
//! bytes, object path) is built in; other parts add theirs
//! ([`crate::QueryEngine::register_system_table`], e.g. `system.maintenance`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, StringArray, TimestampNanosecondArray, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::RwLock;
use vigil_storage::Storage;

/// The schema's name.
pub const SYSTEM_SCHEMA: &str = "system";

/// Builds a system table's rows when it is queried.
pub type SystemRows = Arc<dyn Fn() -> Result<RecordBatch> + Send + Sync>;

/// A timestamp column as vigil's tables have it (nanoseconds, UTC).
pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

#[derive(Default)]
pub(crate) struct SystemSchema {
    tables: RwLock<BTreeMap<String, (SchemaRef, SystemRows)>>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema")
            .field("tables", &self.tables.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SystemSchema {
    pub(crate) fn new(storage: Arc<Storage>) -> Self {
        let s = Self::default();
        let schema = files_schema();
        let rows_schema = Arc::clone(&schema);
        s.register(
            "files",
            schema,
            Arc::new(move || files_batch(&storage, &rows_schema)),
        );
        s
    }

    pub(crate) fn register(&self, name: &str, schema: SchemaRef, rows: SystemRows) {
        self.tables.write().insert(name.to_string(), (schema, rows));
    }
}

fn files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("tier", DataType::Utf8, false),
        Field::new("level", DataType::UInt8, false),
        Field::new("min_time", utc_timestamp(), false),
        Field::new("max_time", utc_timestamp(), false),
        Field::new("rows", DataType::Int64, false),
        Field::new("size_bytes", DataType::Int64, false),
        Field::new("path", DataType::Utf8, false),
    ]))
}

fn files_batch(storage: &Storage, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut files = storage.files();
    files.sort_by(|a, b| (&a.table, a.min_time, a.id).cmp(&(&b.table, b.min_time, b.id)));
    let ts = |v: Vec<i64>| TimestampNanosecondArray::from(v).with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.id))),
        Arc::new(StringArray::from_iter_values(
            files.iter().map(|f| f.table.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            files.iter().map(|f| f.tier.as_str()),
        )),
        Arc::new(UInt8Array::from_iter_values(files.iter().map(|f| f.level))),
        Arc::new(ts(files.iter().map(|f| f.min_time).collect())),
        Arc::new(ts(files.iter().map(|f| f.max_time).collect())),
        Arc::new(Int64Array::from_iter_values(
            files.iter().map(|f| f.rows as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            files.iter().map(|f| f.size_bytes as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            files
                .iter()
                .map(|f| storage.store_of(f.tier).file_url(&f.path)),
        )),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.read().keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.tables.read().get(name).map(|(schema, rows)| {
            Arc::new(SystemTable {
                schema: Arc::clone(schema),
                rows: Arc::clone(rows),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.read().contains_key(name)
    }
}

struct SystemTable {
    schema: SchemaRef,
    rows: SystemRows,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable").finish()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = (self.rows)()?;
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
