//! The result cache: answers a repeated query (a dashboard refresh, an alert rule)
//! from memory while the data it read cannot have changed.
//!
//! A query is cacheable when it only reads vigil tables, calls nothing volatile,
//! and for every table the time range it asks for holds no buffered (unflushed)
//! rows: its answer then depends only on the Parquet files overlapping that range.
//! The entry remembers those files; a late write into the range (it lands in the
//! buffer), a flush of such a write, or a compaction (new file ids) makes the
//! fingerprint differ, and the query runs again. Entries are keyed by the optimized
//! plan, so two spellings of one query share an entry and `now()` is part of the
//! key.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_storage::Storage;

use crate::table::VigilTable;
use crate::time_range::TimeRange;

/// Per table read: its name and the ids of the files overlapping the range read.
pub(crate) type Fingerprint = Vec<(String, Vec<u64>)>;

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

/// Counters shown on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ResultCacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub bytes: Gauge,
}

impl ResultCacheMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vigil_query_result_cache_hits",
            "Queries answered from the result cache",
            self.hits.clone(),
        );
        registry.register(
            "vigil_query_result_cache_misses",
            "Cacheable queries that had to run",
            self.misses.clone(),
        );
        registry.register(
            "vigil_query_result_cache_bytes",
            "Memory held by cached results",
            self.bytes.clone(),
        );
    }
}

#[derive(Debug)]
pub(crate) struct ResultCache {
    max_bytes: usize,
    inner: Mutex<(HashMap<String, Entry>, VecDeque<String>, usize)>,
    pub(crate) metrics: ResultCacheMetrics,
}

impl ResultCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new((HashMap::new(), VecDeque::new(), 0)),
            metrics: ResultCacheMetrics::default(),
        }
    }

    /// What the answer to `plan` depends on, or `None` if it cannot be cached.
    pub(crate) fn fingerprint(&self, plan: &LogicalPlan, storage: &Storage) -> Option<Fingerprint> {
        if self.max_bytes == 0
            || !matches!(
                plan,
                LogicalPlan::Projection(_)
                    | LogicalPlan::Sort(_)
                    | LogicalPlan::Limit(_)
                    | LogicalPlan::Aggregate(_)
                    | LogicalPlan::Filter(_)
                    | LogicalPlan::Extension(_)
                    | LogicalPlan::Window(_)
                    | LogicalPlan::Distinct(_)
                    | LogicalPlan::Union(_)
                    | LogicalPlan::SubqueryAlias(_)
                    | LogicalPlan::Join(_)
            )
        {
            return None;
        }
        let mut out: Fingerprint = Vec::new();
        let mut ok = true;
        let _ = plan.apply_with_subqueries(|node| {
            if node.expressions().iter().any(|e| e.is_volatile()) {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            match node {
                LogicalPlan::TableScan(scan) => {
                    let table = source_as_provider(&scan.source)
                        .ok()
                        .and_then(|p| p.downcast_ref::<VigilTable>().map(|t| t.name().to_string()));
                    let Some(table) = table else {
                        ok = false;
                        return Ok(TreeNodeRecursion::Stop);
                    };
                    let range = TimeRange::from_filters(&scan.filters);
                    match immutable_files(storage, &table, range) {
                        Some(ids) => out.push((table, ids)),
                        None => {
                            ok = false;
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                }
                LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::DescribeTable(_) => {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        (ok && !out.is_empty()).then(|| {
            out.sort();
            out
        })
    }

    pub(crate) fn get(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
    ) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let inner = self.inner.lock();
        match inner.0.get(key) {
            Some(e) if &e.fingerprint == fingerprint => {
                self.metrics.hits.inc();
                Some((Arc::clone(&e.schema), e.batches.clone()))
            }
            _ => {
                self.metrics.misses.inc();
                None
            }
        }
    }

    /// Largest result worth caching (a quarter of the cache).
    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.max_bytes / 4
    }

    pub(crate) fn put(
        &self,
        key: String,
        fingerprint: Fingerprint,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) {
        let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        if bytes > self.max_bytes / 4 {
            return;
        }
        let mut inner = self.inner.lock();
        let (map, order, total) = &mut *inner;
        if let Some(old) = map.remove(&key) {
            *total -= old.bytes;
            order.retain(|k| k != &key);
        }
        while *total + bytes > self.max_bytes {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            if let Some(e) = map.remove(&oldest) {
                *total -= e.bytes;
            }
        }
        *total += bytes;
        order.push_back(key.clone());
        map.insert(
            key,
            Entry {
                fingerprint,
                schema,
                batches,
                bytes,
            },
        );
        self.metrics.bytes.set(*total as i64);
    }
}

/// Ids of the files of `table` overlapping `range`, if no buffered row does.
fn immutable_files(storage: &Storage, table: &str, range: TimeRange) -> Option<Vec<u64>> {
    let snap = storage.snapshot(table)?;
    if snap.buffer_overlaps(range.min, range.max) {
        return None;
    }
    let files: Vec<_> = snap
        .files
        .iter()
        .filter(|f| f.meta.overlaps(range.min, range.max))
        .collect();
    // A file the retention cutoff cuts into answers differently as the cutoff
    // moves on, under the same ids: such a query is not cached.
    if let Some(cut) = snap.retention_cutoff {
        if files.iter().any(|f| f.meta.min_time < cut) {
            return None;
        }
    }
    let mut ids: Vec<u64> = files.iter().map(|f| f.meta.id).collect();
    ids.sort_unstable();
    Some(ids)
}
