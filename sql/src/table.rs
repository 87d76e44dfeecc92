//! The table provider: a scan over buffer + Parquet with last-write-wins dedupe.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::execution::context::SessionState;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    ident, lit, Expr, LogicalPlan, LogicalPlanBuilder, SortExpr, TableProviderFilterPushDown,
    TableType,
};
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use vigil_storage::catalog::{ParquetFileMeta, SeriesKey};
use vigil_storage::{
    is_rollup_table, SnapshotFile, Storage, TableSnapshot, SEQ_COLUMN, TIME_COLUMN,
};

use crate::decimal_predicate::DecimalPredicateAdapterFactory;
use crate::dedupe::DeduplicateExec;
use crate::scan::{ScanSummary, VigilScanExec};
use crate::time_range::TimeRange;

/// All tables of the storage engine, listed live (new measurements appear at once).
#[derive(Debug)]
pub struct VigilSchema {
    storage: Arc<Storage>,
    /// `""` for the measurements (schema `public`); `rollup_10m.` or `rollup_1h.`
    /// for a schema of rollup tables (the stored name is prefix + table name).
    prefix: &'static str,
}

impl VigilSchema {
    /// The measurements.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            prefix: "",
        }
    }

    /// The rollup tables stored under `prefix` (one of [`vigil_storage::ROLLUP_PREFIXES`]).
    pub fn rollups(storage: Arc<Storage>, prefix: &'static str) -> Self {
        Self { storage, prefix }
    }

    /// The stored name of `name`, if this schema shows it.
    fn stored_name(&self, name: &str) -> Option<String> {
        if self.prefix.is_empty() {
            (!is_rollup_table(name)).then(|| name.to_string())
        } else {
            Some(format!("{}{name}", self.prefix))
        }
    }
}

#[async_trait]
impl SchemaProvider for VigilSchema {
    fn table_names(&self) -> Vec<String> {
        self.storage
            .table_names()
            .into_iter()
            .filter_map(|n| {
                if self.prefix.is_empty() {
                    (!is_rollup_table(&n)).then_some(n)
                } else {
                    n.strip_prefix(self.prefix).map(str::to_string)
                }
            })
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(stored) = self.stored_name(name) else {
            return Ok(None);
        };
        Ok(self.storage.table_schema(&stored).map(|schema| {
            Arc::new(VigilTable {
                storage: Arc::clone(&self.storage),
                name: stored,
                schema,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.stored_name(name)
            .is_some_and(|n| self.storage.table_schema(&n).is_some())
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
    /// First and last series key in the table's sort-key order, when known (files
    /// sorted by that order); `None` overlaps every key.
    keys: Option<(SeriesKey, SeriesKey)>,
    kind: ChunkKind,
}

impl Chunk {
    /// Where this chunk and an overlapping one may hold the same (series, time).
    fn meet(&self, other: &Chunk) -> Meet {
        let key0 = match (&self.keys, &other.keys) {
            (Some((a_lo, a_hi)), Some((b_lo, b_hi))) => {
                // Nulls sort first: a chunk whose first key starts with a value has
                // no null in that column.
                match (a_lo.first(), a_hi.first(), b_lo.first(), b_hi.first()) {
                    (Some(Some(a_lo)), Some(Some(a_hi)), Some(Some(b_lo)), Some(Some(b_hi))) => {
                        Some((a_lo.max(b_lo).clone(), a_hi.min(b_hi).clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        Meet {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
            key0,
        }
    }

    /// Whether the two chunks may hold the same (series, time).
    fn overlaps(&self, other: &Chunk) -> bool {
        if self.min > other.max || other.min > self.max {
            return false;
        }
        match (&self.keys, &other.keys) {
            (Some((a_min, a_max)), Some((b_min, b_max))) => a_min <= b_max && b_min <= a_max,
            _ => true,
        }
    }
}

/// Whether a file is sorted by the table's sort key `key` (its own key is a prefix:
/// the tags added since are null in it).
fn sorted_by(meta: &ParquetFileMeta, key: &[String]) -> bool {
    !meta.sort_key.is_empty()
        && meta.sort_key.len() <= key.len()
        && key.iter().zip(&meta.sort_key).all(|(a, b)| a == b)
}

enum ChunkKind {
    /// Buffered batches; `duplicate_free`: no (series, time) repeats among them.
    Buffer {
        batches: Vec<RecordBatch>,
        duplicate_free: bool,
    },
    File(Box<SnapshotFile>),
}

impl VigilTable {
    /// The table stored as `name` (a measurement or a rollup table), if it exists.
    pub fn open(storage: Arc<Storage>, name: &str) -> Option<Self> {
        let schema = storage.table_schema(name)?;
        Some(Self {
            storage,
            name: name.to_string(),
            schema,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn chunks(&self, snap: &TableSnapshot, range: TimeRange) -> Result<Vec<Chunk>> {
        let mut chunks = Vec::new();
        let buffered = snap
            .buffered(range.min, range.max)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if let Some(rows) = buffered {
            chunks.push(Chunk {
                min: rows.min_time,
                max: rows.max_time,
                keys: None,
                kind: ChunkKind::Buffer {
                    batches: rows.batches,
                    duplicate_free: snap.buffer_duplicate_free,
                },
            });
        }
        for file in &snap.files {
            let meta = &file.meta;
            if meta.overlaps(range.min, range.max) {
                let keys = match &meta.key_range {
                    Some((lo, hi)) if sorted_by(meta, &snap.sort_key) => {
                        let pad = |k: &SeriesKey| {
                            let mut k = k.clone();
                            k.resize(snap.sort_key.len(), None);
                            k
                        };
                        Some((pad(lo), pad(hi)))
                    }
                    _ => None,
                };
                chunks.push(Chunk {
                    min: meta.min_time,
                    max: meta.max_time,
                    keys,
                    kind: ChunkKind::File(Box::new(file.clone())),
                });
            }
        }
        Ok(chunks)
    }

    /// A scan of Parquet files read as `schema`; `sorted_by` declares the order their
    /// rows are in.
    fn listing(
        &self,
        paths: &[&str],
        schema: &SchemaRef,
        sorted_by: Option<Vec<SortExpr>>,
    ) -> Result<LogicalPlan> {
        let urls = paths
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>>>()?;
        let mut options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        if let Some(order) = sorted_by {
            options = options.with_file_sort_order(vec![order]);
        }
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(Arc::clone(schema))
            .with_expr_adapter_factory(Arc::new(DecimalPredicateAdapterFactory));
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
        // Parquet files are read through the storage engine's object stores (hot
        // and cold); a session this provider was registered with by hand may not
        // know them yet.
        for store in [self.storage.parquet_store(), self.storage.cold_store()] {
            let store_url = ObjectStoreUrl::parse(store.url())?;
            if state.runtime_env().object_store(&store_url).is_err() {
                state
                    .runtime_env()
                    .register_object_store(store_url.as_ref(), store.object_store());
            }
        }
        // Rows past the table's retention are never returned, even while the
        // files holding them wait for deletion: the cutoff is a filter on the key,
        // applied in every part of the scan (and it prunes the parts).
        let mut filters = filters.to_vec();
        if let Some(cutoff) = snap.retention_cutoff {
            let tz = match snap.schema.field_with_name(TIME_COLUMN)?.data_type() {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            let ts = |t: i64| lit(ScalarValue::TimestampNanosecond(Some(t), tz.clone()));
            let time = || datafusion::logical_expr::col(TIME_COLUMN);
            // Restored ranges show whatever the retention.
            let kept = snap
                .restored
                .iter()
                .filter(|(_, to)| *to > i64::MIN)
                .fold(time().gt_eq(ts(cutoff)), |e, &(from, to)| {
                    e.or(time().gt_eq(ts(from)).and(time().lt(ts(to))))
                });
            filters.push(kept);
        }
        let filters = filters.as_slice();
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
                ChunkKind::Buffer { batches, .. } => summary.buffer_batches_read += batches.len(),
                ChunkKind::File(..) => summary.files_read += 1,
            }
        }

        // Filters on tags and time only can run below deduplication: they select whole
        // (series, time) keys. Filters on fields must not (they could unmask an older
        // value): on merged chunks DataFusion applies them above this scan.
        let key_set: HashSet<&str> = snap
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
                    .all(|c| key_set.contains(c.name.as_str()))
            })
            .cloned()
            .collect();
        let key_filter = conjunction(key_filters);
        // Rows read without a merge are the only version of their (series, time):
        // every filter, fields too, can run while their Parquet is decoded, so the
        // other columns are decoded only for rows that match (`high-cpu-all`).
        let plain_filter = conjunction(filters.to_vec());

        // The query was planned against the table as it was (`self.schema`, kept by
        // prepared statements); the merge reads it as it is now (`snap.schema`: a
        // tag added since is part of the series key), and projects back by name.
        // Group chunks that may hold the same (series, time): overlapping in time
        // and, where the files say, in series key. Only those groups are merged and
        // deduplicated; a file alone in its group is read as it is.
        chunks.sort_by_key(|c| (c.min, c.max));
        let mut groups: Vec<Vec<Chunk>> = Vec::new();
        let mut by_time: Vec<Chunk> = Vec::new();
        let mut group_max = i64::MIN;
        for c in chunks {
            if !by_time.is_empty() && c.min > group_max {
                groups.extend(split_by_key(std::mem::take(&mut by_time)));
            }
            group_max = if by_time.is_empty() {
                c.max
            } else {
                group_max.max(c.max)
            };
            by_time.push(c);
        }
        groups.extend(split_by_key(by_time));

        let out_schema = Arc::new(match projection {
            Some(p) => self.schema.project(p)?,
            None => self.schema.as_ref().clone(),
        });
        let out_cols: Vec<Expr> = out_schema
            .fields()
            .iter()
            .map(|f| ident(f.name().as_str()))
            .collect();
        // What a merge reads: the projected columns plus the key.
        let key_cols: Vec<&str> = snap
            .sort_key
            .iter()
            .map(String::as_str)
            .chain([TIME_COLUMN])
            .collect();
        let mut read_cols: Vec<&str> = key_cols.clone();
        for f in out_schema.fields() {
            if !read_cols.contains(&f.name().as_str()) {
                read_cols.push(f.name());
            }
        }
        let file_order: Vec<SortExpr> = key_cols
            .iter()
            .map(|c| ident(*c).sort(true, true))
            .collect();
        // Each merged chunk is planned on one partition so that its order survives.
        let serial = SessionStateBuilder::new_from_existing(state.clone())
            .with_config(state.config().clone().with_target_partitions(1))
            .build();

        let mut plain_files: Vec<String> = Vec::new();
        // Parts of files read without merging (outside their overlap windows).
        let mut plain_parts: Vec<LogicalPlan> = Vec::new();
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for group in groups {
            if group.len() == 1 {
                match &group[0].kind {
                    ChunkKind::File(file) => {
                        plain_files.push(file.url.clone());
                        continue;
                    }
                    ChunkKind::Buffer {
                        batches,
                        duplicate_free: true,
                    } => {
                        // The buffer alone, without a repeated (series, time):
                        // read as it is, like a file alone.
                        summary.plain_buffer = true;
                        let mem = MemTable::try_new(snap.seq_schema(), vec![batches.clone()])?;
                        let mut b = LogicalPlanBuilder::scan(
                            &self.name,
                            provider_as_source(Arc::new(mem)),
                            None,
                        )?;
                        if let Some(f) = &plain_filter {
                            b = b.filter(f.clone())?;
                        }
                        plain_parts.push(b.project(out_cols.clone())?.build()?);
                        continue;
                    }
                    ChunkKind::Buffer { .. } => {}
                }
            }
            summary.deduplicated_chunks += group.len();
            // Only rows at times where a chunk meets another can have a duplicate:
            // a file's rows outside those windows are read as they are, so files
            // written in time order, which touch only at their edges, are merged
            // only there. (The buffer is not deduplicated within itself: all of it
            // goes through the merge.)
            let windows: Vec<Vec<Meet>> = (0..group.len())
                .map(|i| {
                    let meets = (0..group.len())
                        .filter(|j| *j != i && group[i].overlaps(&group[*j]))
                        .map(|j| group[i].meet(&group[j]));
                    merge_meets(meets)
                })
                .collect();
            let key0 = snap.sort_key.first().map(String::as_str);
            let mut logical_inputs: Vec<LogicalPlan> = Vec::new();
            for (chunk, windows) in group.into_iter().zip(windows) {
                let in_windows = windows.iter().map(|m| m.to_expr(key0)).reduce(Expr::or);
                let whole = windows.iter().any(|m| m.covers(&chunk));
                let plan = match chunk.kind {
                    ChunkKind::Buffer {
                        batches,
                        duplicate_free,
                    } => {
                        let mem = Arc::new(MemTable::try_new(snap.seq_schema(), vec![batches])?);
                        let scan = LogicalPlanBuilder::scan(
                            &self.name,
                            provider_as_source(Arc::clone(&mem) as Arc<dyn TableProvider>),
                            None,
                        )?;
                        match (&in_windows, duplicate_free && !whole) {
                            // Without repeats of its own, the buffer merges only
                            // where it meets a file, as files do.
                            (Some(w), true) => {
                                let mut outside = datafusion::logical_expr::not(w.clone());
                                if let Some(f) = &plain_filter {
                                    outside = outside.and(f.clone());
                                }
                                summary.partly_merged_files += 1;
                                plain_parts.push(
                                    LogicalPlanBuilder::scan(
                                        &self.name,
                                        provider_as_source(mem as Arc<dyn TableProvider>),
                                        None,
                                    )?
                                    .filter(outside)?
                                    .project(out_cols.clone())?
                                    .build()?,
                                );
                                scan.filter(w.clone())?
                            }
                            _ => scan,
                        }
                    }
                    ChunkKind::File(file) => {
                        let (meta, path) = (&file.meta, file.url.as_str());
                        if let (Some(w), false) = (&in_windows, whole) {
                            let mut outside = datafusion::logical_expr::not(w.clone());
                            if let Some(f) = &plain_filter {
                                outside = outside.and(f.clone());
                            }
                            summary.partly_merged_files += 1;
                            plain_parts.push(
                                LogicalPlanBuilder::from(self.listing(
                                    &[path],
                                    &self.schema,
                                    None,
                                )?)
                                .filter(outside)?
                                .project(out_cols.clone())?
                                .build()?,
                            );
                        }
                        let order = sorted_by(meta, &snap.sort_key).then(|| file_order.clone());
                        let scan =
                            LogicalPlanBuilder::from(self.listing(&[path], &snap.schema, order)?);
                        let scan = match &in_windows {
                            Some(w) => scan.filter(w.clone())?,
                            None => scan,
                        };
                        scan.project(read_cols.iter().map(|c| ident(*c)).chain([
                            lit(ScalarValue::UInt64(Some(file.row_seq()))).alias(SEQ_COLUMN),
                        ]))?
                    }
                };
                let plan = match &key_filter {
                    Some(f) => plan.filter(f.clone())?,
                    None => plan,
                };
                let plan = plan
                    .project(
                        read_cols
                            .iter()
                            .map(|c| ident(*c))
                            .chain([ident(SEQ_COLUMN)]),
                    )?
                    .build()?;
                logical_inputs.push(plan);
            }
            let inputs = plan_each(&serial, logical_inputs).await?;
            let schema = inputs[0].schema();
            let asc = SortOptions {
                descending: false,
                nulls_first: true,
            };
            let ordering = LexOrdering::new(
                key_cols
                    .iter()
                    .map(|c| Ok(PhysicalSortExpr::new(col(c, &schema)?, asc)))
                    .chain([Ok(PhysicalSortExpr::new(
                        col(SEQ_COLUMN, &schema)?,
                        SortOptions {
                            descending: true,
                            nulls_first: false,
                        },
                    ))])
                    .collect::<Result<Vec<_>>>()?,
            )
            .ok_or_else(|| DataFusionError::Internal("empty sort key".into()))?;
            let inputs = inputs
                .into_iter()
                .map(|p| -> Result<Arc<dyn ExecutionPlan>> {
                    let p = if p
                        .properties()
                        .equivalence_properties()
                        .ordering_satisfy(ordering.clone())?
                    {
                        p
                    } else {
                        summary.sorted_chunks += 1;
                        Arc::new(
                            SortExec::new(ordering.clone(), p).with_preserve_partitioning(true),
                        )
                    };
                    Ok(
                        if p.properties().output_partitioning().partition_count() > 1 {
                            Arc::new(SortPreservingMergeExec::new(ordering.clone(), p))
                        } else {
                            p
                        },
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let merged: Arc<dyn ExecutionPlan> = match inputs.len() {
                1 => inputs.into_iter().next().expect("one input"),
                _ => Arc::new(SortPreservingMergeExec::new(
                    ordering.clone(),
                    UnionExec::try_new(inputs)?,
                )),
            };
            let key: Vec<usize> = key_cols
                .iter()
                .map(|c| schema.index_of(c))
                .collect::<std::result::Result<_, _>>()?;
            let deduped = Arc::new(DeduplicateExec::new(merged, ordering, key));
            let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = out_schema
                .fields()
                .iter()
                .map(|f| Ok((col(f.name(), &schema)?, f.name().clone())))
                .collect::<Result<_>>()?;
            parts.push(Arc::new(ProjectionExec::try_new(exprs, deduped)?));
        }
        // One listing per store: a listing reads all its paths from the store of
        // its first one (a hot file listed with cold ones would be looked for in
        // the cold store, and silently not found).
        let mut by_store: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for url in &plain_files {
            let store = url
                .find("://")
                .and_then(|i| url[i + 3..].find('/').map(|j| &url[..i + 3 + j]))
                .unwrap_or(url.as_str());
            by_store.entry(store).or_default().push(url.as_str());
        }
        for refs in by_store.into_values() {
            let mut b = LogicalPlanBuilder::from(self.listing(&refs, &self.schema, None)?);
            if let Some(f) = &plain_filter {
                b = b.filter(f.clone())?;
            }
            plain_parts.push(b.project(out_cols.clone())?.build()?);
        }
        parts.extend(plan_each(state, plain_parts).await?);
        let plan: Arc<dyn ExecutionPlan> = match parts.len() {
            0 => Arc::new(EmptyExec::new(out_schema)),
            _ => UnionExec::try_new(parts)?,
        };
        Ok(Arc::new(VigilScanExec::new(summary, plan)))
    }
}

/// Physical plans for `plans`, each a stream of its own (order kept within it),
/// made in one planning pass over their union: a scan of a backfill has a part per
/// file, and planning each apart cost ~3 ms a file (67 ms for a one-host query
/// over 9 files, where executing it took 10).
async fn plan_each(
    state: &SessionState,
    plans: Vec<LogicalPlan>,
) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
    let mut plans = plans.into_iter();
    let Some(first) = plans.next() else {
        return Ok(Vec::new());
    };
    let mut union = LogicalPlanBuilder::from(first);
    let mut n = 1;
    for p in plans {
        union = union.union(p)?;
        n += 1;
    }
    let plan = state.create_physical_plan(&union.build()?).await?;
    if n == 1 {
        return Ok(vec![plan]);
    }
    Ok(match plan.downcast_ref::<UnionExec>() {
        Some(u) => u.children().into_iter().cloned().collect(),
        None => vec![plan],
    })
}

/// Where two chunks may hold the same (series, time): a closed time interval
/// and, when both chunks know their series-key range and it starts with a
/// non-null value, the closed range of the first sort-key column both share.
/// Files written host by host share all of their time but only the host at their
/// boundary, so only that host's rows are merged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Meet {
    min: i64,
    max: i64,
    key0: Option<(String, String)>,
}

impl Meet {
    /// Whether every row of `chunk` is in this window.
    fn covers(&self, chunk: &Chunk) -> bool {
        if self.min > chunk.min || self.max < chunk.max {
            return false;
        }
        let Some((lo, hi)) = &self.key0 else {
            return true;
        };
        match &chunk.keys {
            Some((c_lo, c_hi)) => match (c_lo.first(), c_hi.first()) {
                (Some(Some(c_lo)), Some(Some(c_hi))) => lo <= c_lo && c_hi <= hi,
                _ => false,
            },
            None => false,
        }
    }

    /// The rows of a chunk in this window. A row whose first key column is null
    /// counts as inside (so the expression is never null and its negation selects
    /// exactly the rows outside).
    fn to_expr(&self, key0: Option<&str>) -> Expr {
        let ts = |t: i64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(t),
                Some("UTC".into()),
            ))
        };
        let in_time = ident(TIME_COLUMN)
            .gt_eq(ts(self.min))
            .and(ident(TIME_COLUMN).lt_eq(ts(self.max)));
        match (&self.key0, key0) {
            (Some((lo, hi)), Some(column)) => in_time.and(
                ident(column).is_null().or(ident(column)
                    .gt_eq(lit(lo.as_str()))
                    .and(ident(column).lt_eq(lit(hi.as_str())))),
            ),
            _ => in_time,
        }
    }
}

/// Meets with their time windows merged where they touch; meets restricted by key
/// are kept as they are (a few per chunk), unless an unrestricted one covers them.
fn merge_meets(meets: impl Iterator<Item = Meet>) -> Vec<Meet> {
    let mut v: Vec<Meet> = meets.collect();
    v.sort_unstable();
    v.dedup();
    let mut whole: Vec<Meet> = Vec::new();
    let mut keyed: Vec<Meet> = Vec::new();
    for m in v {
        if m.key0.is_some() {
            keyed.push(m);
            continue;
        }
        match whole.last_mut() {
            Some(last) if m.min <= last.max.saturating_add(1) => last.max = last.max.max(m.max),
            _ => whole.push(m),
        }
    }
    keyed.retain(|k| !whole.iter().any(|w| w.min <= k.min && w.max >= k.max));
    whole.extend(keyed);
    whole
}

/// Splits chunks that overlap in time into groups that may share a (series,
/// time): connected by [`Chunk::overlaps`].
fn split_by_key(chunks: Vec<Chunk>) -> Vec<Vec<Chunk>> {
    let n = chunks.len();
    if n <= 1 {
        return if n == 0 { Vec::new() } else { vec![chunks] };
    }
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            if chunks[i].overlaps(&chunks[j]) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: Vec<Vec<Chunk>> = Vec::new();
    let mut slot: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (i, c) in chunks.into_iter().enumerate() {
        let r = root(&mut parent, i);
        let g = *slot.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(c);
    }
    groups
}
