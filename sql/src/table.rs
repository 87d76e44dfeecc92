//! The table provider: a scan over buffer + Parquet with last-write-wins dedupe.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::execution::context::SessionState;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    ident, lit, Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder,
    TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use vigil_storage::buffer::{file_seq, normalize, with_seq_column};
use vigil_storage::catalog::ParquetFileMeta;
use vigil_storage::{Storage, TableSnapshot, SEQ_COLUMN, TIME_COLUMN};

use crate::scan::{ScanSummary, VigilScanExec};
use crate::time_range::TimeRange;

const ROW_NUMBER: &str = "__row_number";

/// All tables of the storage engine, listed live (new measurements appear at once).
#[derive(Debug)]
pub struct VigilSchema {
    storage: Arc<Storage>,
}

impl VigilSchema {
    pub fn new(storage: Arc<Storage>) -> Self {
        Self { storage }
    }
}

#[async_trait]
impl SchemaProvider for VigilSchema {
    fn table_names(&self) -> Vec<String> {
        self.storage.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.storage.table_schema(name).map(|schema| {
            Arc::new(VigilTable {
                storage: Arc::clone(&self.storage),
                name: name.to_string(),
                schema,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.table_schema(name).is_some()
    }
}

/// One measurement as a DataFusion table.
#[derive(Debug)]
pub struct VigilTable {
    storage: Arc<Storage>,
    name: String,
    schema: SchemaRef,
}

/// A piece of the table a scan reads: the buffer, or one Parquet file.
struct Chunk {
    min: i64,
    max: i64,
    kind: ChunkKind,
}

enum ChunkKind {
    Buffer(Vec<RecordBatch>),
    File(ParquetFileMeta, String),
}

impl VigilTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn chunks(&self, snap: &TableSnapshot, range: TimeRange) -> Result<Vec<Chunk>> {
        let mut chunks = Vec::new();
        if !snap.buffer.is_empty() {
            let mut batches = Vec::with_capacity(snap.buffer.len());
            let (mut min, mut max) = (i64::MAX, i64::MIN);
            for b in &snap.buffer {
                if !b.overlaps(range.min, range.max) {
                    continue;
                }
                min = min.min(b.min_time);
                max = max.max(b.max_time);
                batches.push(normalize(&b.batch, &snap.schema, Some(b.first_row_seq()))?);
            }
            if !batches.is_empty() {
                chunks.push(Chunk {
                    min,
                    max,
                    kind: ChunkKind::Buffer(batches),
                });
            }
        }
        for (meta, path) in &snap.files {
            if meta.overlaps(range.min, range.max) {
                chunks.push(Chunk {
                    min: meta.min_time,
                    max: meta.max_time,
                    kind: ChunkKind::File(meta.clone(), path.to_string_lossy().into_owned()),
                });
            }
        }
        Ok(chunks)
    }

    fn listing(&self, paths: &[&str]) -> Result<LogicalPlan> {
        let urls = paths
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(Arc::clone(&self.schema));
        let table = ListingTable::try_new(config)?;
        LogicalPlanBuilder::scan(&self.name, provider_as_source(Arc::new(table)), None)?.build()
    }
}

#[async_trait]
impl TableProvider for VigilTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("vigil tables need a SessionState".into()))?;
        let Some(snap) = self.storage.snapshot(&self.name) else {
            return Err(DataFusionError::Plan(format!(
                "table '{}' was dropped",
                self.name
            )));
        };
        let range = TimeRange::from_filters(filters);
        let mut chunks = self.chunks(&snap, range)?;
        let mut summary = ScanSummary {
            table: self.name.clone(),
            time_range: range.to_string(),
            files_total: snap.files.len(),
            buffer_batches_total: snap.buffer.len(),
            ..ScanSummary::default()
        };
        for c in &chunks {
            match &c.kind {
                ChunkKind::Buffer(b) => summary.buffer_batches_read += b.len(),
                ChunkKind::File(..) => summary.files_read += 1,
            }
        }

        // Filters on tags and time only can run below deduplication: they select whole
        // (series, time) keys. Filters on fields must not (they could unmask an older
        // value), so DataFusion applies them above this scan.
        let key_cols: HashSet<&str> = snap
            .tags
            .iter()
            .map(String::as_str)
            .chain([TIME_COLUMN])
            .collect();
        let key_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| key_cols.contains(c.name.as_str()))
            })
            .cloned()
            .collect();
        let key_filter = conjunction(key_filters);

        // Group chunks that overlap in time; only those groups need deduplication.
        chunks.sort_by_key(|c| (c.min, c.max));
        let mut groups: Vec<Vec<Chunk>> = Vec::new();
        let mut group_max = i64::MIN;
        for c in chunks {
            match groups.last_mut() {
                Some(g) if c.min <= group_max => {
                    group_max = group_max.max(c.max);
                    g.push(c);
                }
                _ => {
                    group_max = c.max;
                    groups.push(vec![c]);
                }
            }
        }

        let columns: Vec<Expr> = self
            .schema
            .fields()
            .iter()
            .map(|f| ident(f.name().as_str()))
            .collect();
        let mut plain_files: Vec<String> = Vec::new();
        let mut parts: Vec<LogicalPlan> = Vec::new();
        for group in groups {
            if group.len() == 1 {
                if let ChunkKind::File(_, path) = &group[0].kind {
                    plain_files.push(path.clone());
                    continue;
                }
            }
            summary.deduplicated_chunks += group.len();
            let mut inputs = Vec::new();
            for chunk in group {
                let plan = match chunk.kind {
                    ChunkKind::Buffer(batches) => {
                        let mem = MemTable::try_new(with_seq_column(&snap.schema), vec![batches])?;
                        LogicalPlanBuilder::scan(
                            &self.name,
                            provider_as_source(Arc::new(mem)),
                            None,
                        )?
                        .project(columns.iter().cloned().chain([ident(SEQ_COLUMN)]))?
                    }
                    ChunkKind::File(meta, path) => LogicalPlanBuilder::from(
                        self.listing(&[&path])?,
                    )
                    .project(columns.iter().cloned().chain([
                        lit(ScalarValue::UInt64(Some(file_seq(meta.seq)))).alias(SEQ_COLUMN),
                    ]))?,
                };
                let plan = match &key_filter {
                    Some(f) => plan.filter(f.clone())?,
                    None => plan,
                };
                inputs.push(plan.build()?);
            }
            let mut builder = LogicalPlanBuilder::from(inputs.remove(0));
            for i in inputs {
                builder = builder.union(i)?;
            }
            let partition: Vec<Expr> = snap
                .tags
                .iter()
                .map(|t| ident(t.as_str()))
                .chain([ident(TIME_COLUMN)])
                .collect();
            let rn = row_number()
                .partition_by(partition)
                .order_by(vec![ident(SEQ_COLUMN).sort(false, false)])
                .build()?
                .alias(ROW_NUMBER);
            let plan = builder
                .window(vec![rn])?
                .filter(ident(ROW_NUMBER).eq(lit(1u64)))?
                .project(columns.clone())?
                .build()?;
            parts.push(plan);
        }
        if !plain_files.is_empty() {
            let refs: Vec<&str> = plain_files.iter().map(String::as_str).collect();
            let mut b = LogicalPlanBuilder::from(self.listing(&refs)?);
            if let Some(f) = &key_filter {
                b = b.filter(f.clone())?;
            }
            parts.push(b.build()?);
        }
        let mut builder = match parts.len() {
            0 => {
                let empty = MemTable::try_new(Arc::clone(&self.schema), vec![vec![]])?;
                LogicalPlanBuilder::scan(&self.name, provider_as_source(Arc::new(empty)), None)?
            }
            _ => {
                let mut b = LogicalPlanBuilder::from(parts.remove(0));
                for p in parts {
                    b = b.union(p)?;
                }
                b
            }
        };
        let out_cols: Vec<Expr> = match projection {
            Some(p) => p
                .iter()
                .map(|i| ident(self.schema.field(*i).name().as_str()))
                .collect(),
            None => columns,
        };
        builder = builder.project(out_cols)?;
        let plan = state.create_physical_plan(&builder.build()?).await?;
        Ok(Arc::new(VigilScanExec::new(summary, plan)))
    }
}
