//! The shared query engine: session configuration, memory limit, timeout.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_storage::Storage;

use crate::error::{Error, Result};
use crate::result_cache::{ResultCache, ResultCacheMetrics};
use crate::table::VigilSchema;

/// Limits every query runs under.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory one query may use (sorts, joins and aggregates spill to disk before
    /// failing); a query over it fails alone, the others keep running.
    pub memory_limit_bytes: usize,
    /// A query running longer than this is cancelled.
    pub timeout: Duration,
    /// DataFusion target partitions (parallelism); 0 means one per core.
    pub target_partitions: usize,
    /// Memory for cached results of queries over flushed data; 0 turns it off.
    pub result_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 4 << 30,
            timeout: Duration::from_secs(300),
            target_partitions: 0,
            result_cache_bytes: 64 << 20,
        }
    }
}

/// Owns the DataFusion context every front end queries through.
pub struct QueryEngine {
    ctx: SessionContext,
    config: QueryConfig,
    storage: Arc<Storage>,
    result_cache: ResultCache,
    running: Gauge,
}

/// A query planned in its own context (memory pool), ready to run or describe.
pub struct PlannedQuery {
    ctx: SessionContext,
    physical: Arc<dyn ExecutionPlan>,
}

impl PlannedQuery {
    /// The schema the results will have (after rewrites such as gap filling, which
    /// change nullability), the one a front end must announce before streaming.
    pub fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.physical.schema()
    }
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish()
    }
}

/// The catalog every table lives in (Postgres clients see it as the database).
pub const CATALOG: &str = "vigil";
/// The schema every table lives in.
pub const SCHEMA: &str = "public";

impl QueryEngine {
    pub fn new(storage: Arc<Storage>, config: QueryConfig) -> Result<Self> {
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false);
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(config.memory_limit_bytes)))
            .build_arc()?;
        let state = crate::functions::with_planner(
            SessionStateBuilder::new()
                .with_config(session)
                .with_runtime_env(runtime)
                .with_default_features(),
        )
        .build();
        let ctx = SessionContext::new_with_state(state);
        crate::functions::register(&ctx);
        ctx.register_udtf(
            "last_cache",
            Arc::new(crate::last_cache::LastCacheFunction::new(Arc::clone(
                &storage,
            ))),
        );
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(SCHEMA, Arc::new(VigilSchema::new(Arc::clone(&storage))))?;
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        let result_cache = ResultCache::new(config.result_cache_bytes);
        Ok(Self {
            ctx,
            config,
            storage,
            result_cache,
            running: Gauge::default(),
        })
    }

    /// The shared context (catalog, functions, settings). Front ends that drive
    /// DataFusion themselves run each query in [`QueryEngine::query_context`].
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A context for one query: the shared catalog and functions with a memory pool
    /// of its own, so that one heavy query cannot starve the others. The pool names
    /// its largest consumers when a query runs out.
    pub fn query_context(&self) -> Result<SessionContext> {
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(self.config.memory_limit_bytes),
            NonZeroUsize::new(3).expect("3 > 0"),
        );
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.ctx.runtime_env().as_ref())
            .with_memory_pool(Arc::new(pool))
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Hit/miss counters of the result cache, for `/metrics`.
    pub fn result_cache_metrics(&self) -> &ResultCacheMetrics {
        &self.result_cache.metrics
    }

    /// Counts a query that a front end runs itself (pgwire) as running until the
    /// returned guard is dropped.
    pub fn running_query(&self) -> RunningQuery {
        RunningQuery::start(&self.running)
    }

    /// How long a query may run.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Registers the engine's own gauges (queries running now) for `/metrics`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "vigil_queries_running",
            "Queries executing or streaming results right now",
            self.running.clone(),
        );
        self.result_cache.metrics.register(registry);
    }

    /// Plans one SQL statement (with `$1`-style parameters bound to `params`, for
    /// prepared statements) in a context of its own.
    pub async fn plan(&self, query: &str, params: Option<ParamValues>) -> Result<PlannedQuery> {
        let ctx = self.query_context()?;
        let state = ctx.state();
        let mut logical = state.create_logical_plan(query).await?;
        if let Some(params) = params {
            logical = logical.with_param_values(params)?;
        }
        self.plan_logical(ctx, logical).await
    }

    async fn plan_logical(
        &self,
        ctx: SessionContext,
        logical: LogicalPlan,
    ) -> Result<PlannedQuery> {
        // DDL/DML-like statements (SET, CREATE VIEW, ...) run through the DataFrame
        // API, which executes them; queries go through the optimizer and planner.
        let df = ctx.execute_logical_plan(logical).await?;
        let physical = df.create_physical_plan().await?;
        Ok(PlannedQuery { ctx, physical })
    }

    /// The parameter types of a statement with `$1`-style placeholders, in order,
    /// and the schema of its result.
    pub async fn describe(
        &self,
        query: &str,
    ) -> Result<(
        Vec<Option<datafusion::arrow::datatypes::DataType>>,
        datafusion::arrow::datatypes::SchemaRef,
    )> {
        let ctx = self.query_context()?;
        let logical = ctx.state().create_logical_plan(query).await?;
        let types = logical.get_parameter_types()?;
        let mut ids: Vec<(usize, Option<datafusion::arrow::datatypes::DataType>)> = types
            .into_iter()
            .map(|(id, t)| {
                let n = id
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .unwrap_or(usize::MAX);
                (n, t)
            })
            .collect();
        ids.sort_by_key(|(n, _)| *n);
        let schema = Arc::new(logical.schema().as_arrow().clone());
        Ok((ids.into_iter().map(|(_, t)| t).collect(), schema))
    }

    /// Runs a planned query as a stream of batches: results are produced as the
    /// client reads them (a large result is never held whole), the query counts as
    /// running until the stream is dropped (a client that disconnects frees it),
    /// and it fails with a timeout error once it has run longer than the limit.
    pub fn execute(&self, planned: PlannedQuery) -> Result<SendableRecordBatchStream> {
        let schema = planned.physical.schema();
        let inner = datafusion::physical_plan::execute_stream(
            Arc::clone(&planned.physical),
            planned.ctx.task_ctx(),
        )?;
        let guard = RunningQuery::start(&self.running);
        let timeout = self.config.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = futures::stream::unfold(
            (inner, guard, false),
            move |(mut inner, guard, done)| async move {
                if done {
                    return None;
                }
                match tokio::time::timeout_at(deadline, inner.next()).await {
                    Ok(Some(item)) => Some((item, (inner, guard, false))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(DataFusionError::External(Box::new(Error::Timeout(timeout)))),
                        (inner, guard, true),
                    )),
                }
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// Runs one SQL statement to completion under the timeout; repeated queries over
    /// flushed data are answered from the result cache.
    pub async fn sql(
        &self,
        query: &str,
    ) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
        let _running = RunningQuery::start(&self.running);
        let run = async {
            let ctx = self.query_context()?;
            let df = ctx.sql(query).await?;
            let state = ctx.state();
            let optimized = state.optimize(df.logical_plan())?;
            let fingerprint = self.result_cache.fingerprint(&optimized, &self.storage);
            let key = fingerprint
                .as_ref()
                .map(|_| optimized.display_indent_schema().to_string());
            if let (Some(key), Some(fp)) = (&key, &fingerprint) {
                if let Some(hit) = self.result_cache.get(key, fp) {
                    return Ok(hit);
                }
            }
            let plan = state
                .query_planner()
                .create_physical_plan(&optimized, &state)
                .await?;
            // The schema of the planned query, not of the SQL as written: rewrites such
            // as gap filling make columns nullable.
            let schema = plan.schema();
            let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
            if let (Some(key), Some(fp)) = (key, fingerprint) {
                self.result_cache
                    .put(key, fp, Arc::clone(&schema), batches.clone());
            }
            Ok::<_, Error>((schema, batches))
        };
        match tokio::time::timeout(self.config.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.config.timeout)),
        }
    }
}

/// Counts a query as running for as long as it lives.
pub struct RunningQuery(Gauge);

impl RunningQuery {
    fn start(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use std::borrow::Cow;
    use vigil_storage::{FieldValue, Point, StorageConfig};

    fn point(host: &'static str, v: f64, t: i64) -> Point<'static> {
        Point {
            table: Cow::Borrowed("cpu"),
            tags: vec![(Cow::Borrowed("host"), Cow::Borrowed(host))],
            fields: vec![(Cow::Borrowed("usage"), FieldValue::F64(v))],
            time: t,
        }
    }

    #[tokio::test]
    async fn dedupes_across_buffer_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let write = |pts: Vec<Point<'static>>| {
            let w = storage.validate(pts.into_iter().enumerate().collect());
            assert!(w.rejected.is_empty());
            w.tables
        };
        storage
            .commit(write(vec![point("a", 1.0, 1), point("b", 2.0, 1)]))
            .await
            .unwrap();
        storage.flush().await.unwrap();
        // Overwrite a@1 in the buffer, add a new point, and write a far-away file.
        storage
            .commit(write(vec![point("a", 10.0, 1), point("a", 3.0, 2)]))
            .await
            .unwrap();
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        let (_, b) = engine
            .sql("SELECT host, usage, time FROM cpu ORDER BY host, time")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(
            text.contains("| a    | 10.0  | 1970-01-01T00:00:00.000000001Z |"),
            "{text}"
        );
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 3, "{text}");
        let (_, b) = engine
            .sql("SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = 'a'")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("| 2 | 13.0 |"), "{text}");
        let (_, b) = engine.sql("SHOW TABLES").await.unwrap();
        assert!(pretty_format_batches(&b)
            .unwrap()
            .to_string()
            .contains("cpu"));
        // After a second flush both files overlap and are deduplicated.
        storage.flush().await.unwrap();
        let (_, b) = engine.sql("SELECT sum(usage) AS s FROM cpu").await.unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("| 15.0 |"), "{text}");
        let (_, b) = engine
            .sql("SELECT count(*) FROM cpu WHERE time > '1970-01-01T00:00:00.000000001Z'")
            .await
            .unwrap();
        assert!(pretty_format_batches(&b)
            .unwrap()
            .to_string()
            .contains("| 1 "));
    }
}
