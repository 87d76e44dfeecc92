//! The one query path: session configuration, read-only check, admission, memory
//! pool, timeout, streaming and the result cache, shared by every front end.

use crate::placeholders::number_placeholders;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_model::TableAccess;
use vigil_storage::Storage;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use datafusion::catalog::default_table_source::source_as_provider;

use crate::error::{Error, Result};
use crate::last_cache::LastCacheTable;
use crate::memory::QueryMemoryPool;
use crate::result_cache::{Fingerprint, ResultCache, ResultCacheMetrics};
use crate::system::{SystemRows, SystemSchema, SYSTEM_SCHEMA};
use crate::table::VigilSchema;

/// Limits every query runs under.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory all running queries together may reserve (sorts, joins, aggregates
    /// and dedupe spill to disk before failing): one pool for the server.
    pub memory_limit_bytes: usize,
    /// Memory one query may reserve out of that pool; a query over it fails alone.
    pub max_query_memory_bytes: usize,
    /// Queries running at once; the next ones wait in line.
    pub max_concurrent: usize,
    /// How long a query waits for a free slot before it is refused.
    pub queue_timeout: Duration,
    /// A query planning or running longer than this is cancelled.
    pub timeout: Duration,
    /// DataFusion target partitions (parallelism); 0 means one per core.
    pub target_partitions: usize,
    /// Memory for cached results of queries over flushed data; 0 turns it off.
    pub result_cache_bytes: usize,
    /// Threads of a runtime of its own that executes queries, so that CPU-heavy
    /// queries cannot starve the runtime serving connections (health checks,
    /// cancel requests, writes); 0 executes on the caller's runtime.
    pub execution_threads: usize,
    /// Aggregates over time buckets read the rollups where they give the raw
    /// answer exactly (see `rollup_selection`).
    pub rollup_reads: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 4 << 30,
            max_query_memory_bytes: 2 << 30,
            max_concurrent: 16,
            queue_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(300),
            target_partitions: 0,
            result_cache_bytes: 64 << 20,
            execution_threads: 0,
            rollup_reads: true,
        }
    }
}

/// Gauges and counters of the query path, for `/metrics`.
#[derive(Debug, Clone, Default)]
struct QueryMetrics {
    running: Gauge,
    queued: Gauge,
    refused_busy: Counter,
    timeouts: Counter,
    result_bytes: Counter,
    result_rows: Counter,
}

/// Owns the DataFusion context every front end queries through, and the one path
/// every query takes: admission (concurrency limit), read-only check, planning and
/// streaming under the deadline, in the shared memory pool, via the result cache.
pub struct QueryEngine {
    ctx: SessionContext,
    system: Arc<SystemSchema>,
    config: QueryConfig,
    storage: Arc<Storage>,
    result_cache: Arc<ResultCache>,
    /// The server-wide pool every query's own pool draws from.
    memory: Arc<dyn MemoryPool>,
    slots: Arc<Semaphore>,
    /// Where queries execute (see [`QueryConfig::execution_threads`]).
    executor: Option<tokio::runtime::Handle>,
    metrics: QueryMetrics,
}

/// Starts the query runtime on a thread that owns it for the life of the process
/// (a runtime cannot be dropped from async code, where the engine would be).
fn execution_runtime(threads: usize) -> Result<tokio::runtime::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vigil-query-rt".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("vigil-query")
                .enable_all()
                .build();
            match rt {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    rx.recv()
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .map_err(|e| Error::DataFusion(DataFusionError::External(Box::new(e))))
}

/// Aborts the execution task when the result stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A query's place among the running ones: its slot, its deadline, and its count
/// in `vigil_queries_running`, all held until its results are read or dropped.
struct Admission {
    _slot: OwnedSemaphorePermit,
    _running: RunningQuery,
    deadline: tokio::time::Instant,
}

enum Source {
    Plan(Arc<dyn ExecutionPlan>),
    /// Answered from the result cache.
    Cached(Vec<RecordBatch>),
}

/// A query planned in its own context (memory pool), ready to run or describe.
pub struct PlannedQuery {
    ctx: SessionContext,
    schema: SchemaRef,
    source: Source,
    admission: Admission,
    /// Where to store the results once they have all been streamed.
    cache_key: Option<(String, Fingerprint)>,
}

impl PlannedQuery {
    /// The schema the results will have (after rewrites such as gap filling, which
    /// change nullability), the one a front end must announce before streaming.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
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
/// The schemas of the 10-minute and 1-hour rollups (`rollup_10m.cpu`).
pub const ROLLUP_10M_SCHEMA: &str = "rollup_10m";
pub const ROLLUP_1H_SCHEMA: &str = "rollup_1h";

/// Refuses anything but reading: DDL (CREATE/DROP of tables, views, schemas,
/// external tables), DML (INSERT, UPDATE, DELETE, COPY ... TO) and statements (SET,
/// transactions, PREPARE), anywhere in the plan, including subqueries and EXPLAIN.
pub fn check_read_only(plan: &LogicalPlan) -> Result<()> {
    let mut refused: Option<String> = None;
    let _ = plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Ddl(d) => Some(format!("{} (DDL)", d.name())),
            LogicalPlan::Dml(d) => Some(format!("{} (DML)", d.op)),
            LogicalPlan::Copy(_) => Some("COPY (writes files)".to_string()),
            LogicalPlan::Statement(s) => Some(format!("{} (statement)", s.name())),
            _ => None,
        };
        match what {
            Some(w) => {
                refused = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    match refused {
        Some(what) => Err(Error::ReadOnly(what)),
        None => Ok(()),
    }
}

/// Refuses a plan that reads a table the client's token does not cover (system
/// schemas such as `information_schema` and `pg_catalog` are open to every client).
pub fn check_access(plan: &LogicalPlan, access: &TableAccess) -> Result<()> {
    if access.is_all() {
        return Ok(());
    }
    let mut refused: Option<String> = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            // `last_cache('t')` reads table t, whatever its scan is called.
            let provider = source_as_provider(&scan.source).ok();
            let cached = provider
                .as_ref()
                .and_then(|p| p.downcast_ref::<LastCacheTable>())
                .map(|c| c.table().to_string());
            let t = &scan.table_name;
            // A rollup of table t is readable by whoever may read t.
            let vigil_table = matches!(
                t.schema(),
                None | Some(SCHEMA) | Some(ROLLUP_10M_SCHEMA) | Some(ROLLUP_1H_SCHEMA)
            ) && matches!(t.catalog(), None | Some(CATALOG));
            // The system tables describe every table (names, files): only for
            // clients that may read them all.
            if t.schema() == Some(SYSTEM_SCHEMA) && matches!(t.catalog(), None | Some(CATALOG)) {
                refused = Some(t.to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
            let table = cached.unwrap_or_else(|| t.table().to_string());
            if (vigil_table || provider.is_none()) && !access.allows(&table) {
                refused = Some(table);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match refused {
        Some(table) => Err(Error::Forbidden(table)),
        None => Ok(()),
    }
}

/// The types of a plan's `$1`, `$2`, ... placeholders, in that order (None where
/// the plan does not say).
pub fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let mut ids: Vec<(usize, Option<DataType>)> = plan
        .get_parameter_types()?
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
    Ok(ids.into_iter().map(|(_, t)| t).collect())
}

impl QueryEngine {
    pub fn new(storage: Arc<Storage>, config: QueryConfig) -> Result<Self> {
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false);
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        // Filters are evaluated while decoding Parquet (late materialization): the
        // tag and time columns first, then the other columns only for the rows that
        // pass. Files are sorted by series, so a query for a few hosts decodes the
        // pages of those hosts, not every column of the whole file.
        session.options_mut().execution.parquet.pushdown_filters = true;
        session.options_mut().execution.parquet.reorder_filters = true;
        let memory: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(config.memory_limit_bytes),
            NonZeroUsize::new(3).expect("3 > 0"),
        ));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&memory))
            .build_arc()?;
        let mut rules = datafusion::optimizer::Optimizer::new().rules;
        if config.rollup_reads {
            // After `now()` and casts of constants are folded, before filters move.
            let at = rules
                .iter()
                .position(|r| r.name() == "simplify_expressions")
                .map_or(0, |i| i + 1);
            rules.insert(
                at,
                Arc::new(crate::rollup_selection::RollupSelection::new(Arc::clone(
                    &storage,
                ))),
            );
        }
        let state = crate::functions::with_planner(
            SessionStateBuilder::new()
                .with_config(session)
                .with_runtime_env(runtime)
                .with_default_features()
                .with_optimizer_rules(rules),
        )
        .build();
        let ctx = SessionContext::new_with_state(state);
        // Parquet files are read through the storage engine's object store.
        let store = storage.parquet_store();
        let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse(store.url())?;
        ctx.register_object_store(store_url.as_ref(), store.object_store());
        crate::functions::register(&ctx);
        ctx.register_udtf(
            "last_cache",
            Arc::new(crate::last_cache::LastCacheFunction::new(Arc::clone(
                &storage,
            ))),
        );
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(SCHEMA, Arc::new(VigilSchema::new(Arc::clone(&storage))))?;
        for (schema, prefix) in [
            (ROLLUP_10M_SCHEMA, "rollup_10m."),
            (ROLLUP_1H_SCHEMA, "rollup_1h."),
        ] {
            catalog.register_schema(
                schema,
                Arc::new(VigilSchema::rollups(Arc::clone(&storage), prefix)),
            )?;
        }
        let system = Arc::new(SystemSchema::new(Arc::clone(&storage)));
        catalog.register_schema(SYSTEM_SCHEMA, Arc::clone(&system) as _)?;
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        let result_cache = Arc::new(ResultCache::new(config.result_cache_bytes));
        let slots = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        let executor = match config.execution_threads {
            0 => None,
            n => Some(execution_runtime(n)?),
        };
        Ok(Self {
            ctx,
            system,
            config,
            storage,
            result_cache,
            memory,
            slots,
            executor,
            metrics: QueryMetrics::default(),
        })
    }

    /// The shared context (catalog, functions, settings), for catalog listings. Every
    /// query runs in a context of its own ([`QueryEngine::plan`]).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A context for one query: the shared catalog and functions with a memory pool
    /// of its own, capped, drawing from the server's pool.
    fn query_context(&self) -> Result<SessionContext> {
        let pool =
            QueryMemoryPool::new(Arc::clone(&self.memory), self.config.max_query_memory_bytes);
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.ctx.runtime_env().as_ref())
            .with_memory_pool(Arc::new(pool))
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Adds a table to the `system` schema whose rows `rows` builds when queried.
    pub fn register_system_table(&self, name: &str, schema: SchemaRef, rows: SystemRows) {
        self.system.register(name, schema, rows);
    }

    /// Hit/miss counters of the result cache, for `/metrics`.
    pub fn result_cache_metrics(&self) -> &ResultCacheMetrics {
        &self.result_cache.metrics
    }

    /// Counts a query that a front end runs itself as running until the returned
    /// guard is dropped.
    pub fn running_query(&self) -> RunningQuery {
        RunningQuery::start(&self.metrics.running)
    }

    /// How long a query may run.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Registers the engine's own gauges and counters for `/metrics`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "vigil_queries_running",
            "Queries planning, executing or streaming results right now",
            m.running.clone(),
        );
        registry.register(
            "vigil_queries_queued",
            "Queries waiting for a free slot (query.max_concurrent)",
            m.queued.clone(),
        );
        registry.register(
            "vigil_queries_refused_busy",
            "Queries refused after waiting query.queue_timeout for a slot",
            m.refused_busy.clone(),
        );
        registry.register(
            "vigil_queries_timed_out",
            "Queries cancelled at query.timeout",
            m.timeouts.clone(),
        );
        registry.register(
            "vigil_query_result_bytes",
            "Bytes of query results produced (Arrow, before encoding)",
            m.result_bytes.clone(),
        );
        registry.register(
            "vigil_query_result_rows",
            "Rows of query results produced",
            m.result_rows.clone(),
        );
        self.result_cache.metrics.register(registry);
    }

    /// Waits (up to the queue timeout) for a slot among the running queries.
    async fn admit(&self) -> Result<Admission> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                self.metrics.queued.inc();
                let waited = tokio::time::timeout(
                    self.config.queue_timeout,
                    Arc::clone(&self.slots).acquire_owned(),
                )
                .await;
                self.metrics.queued.dec();
                match waited {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        self.metrics.refused_busy.inc();
                        return Err(Error::Busy {
                            running: self.config.max_concurrent,
                            waited: self.config.queue_timeout,
                        });
                    }
                }
            }
        };
        Ok(Admission {
            _slot: slot,
            _running: RunningQuery::start(&self.metrics.running),
            // The deadline runs from admission: planning counts, queueing does not.
            deadline: tokio::time::Instant::now() + self.config.timeout,
        })
    }

    /// The logical plan of one SQL statement, refused unless it only reads tables
    /// the client may read.
    pub async fn logical_plan(&self, query: &str, access: &TableAccess) -> Result<LogicalPlan> {
        let query = number_placeholders(query, &GenericDialect {})?;
        let logical = self.ctx.state().create_logical_plan(&query).await?;
        check_read_only(&logical)?;
        check_access(&logical, access)?;
        Ok(logical)
    }

    /// Plans one SQL statement (with `$1`-style parameters bound to `params`, for
    /// prepared statements) in a context of its own. The query takes a slot among
    /// the running ones (waiting in line if need be) until its results are read.
    pub async fn plan(
        &self,
        query: &str,
        params: Option<ParamValues>,
        access: &TableAccess,
    ) -> Result<PlannedQuery> {
        self.plan_sql(query, params, access, None).await
    }

    /// Plans `query` as [`QueryEngine::plan`] does, with `now()` fixed at
    /// `at_nanos` (nanoseconds since the epoch): an alert rule evaluated at a
    /// tick minus its query offset, or a rule test at its evaluation time, sees
    /// the time it is evaluated for.
    pub async fn plan_at(
        &self,
        query: &str,
        at_nanos: i64,
        access: &TableAccess,
    ) -> Result<PlannedQuery> {
        let at = chrono::DateTime::from_timestamp_nanos(at_nanos);
        self.plan_sql(query, None, access, Some(at)).await
    }

    async fn plan_sql(
        &self,
        query: &str,
        params: Option<ParamValues>,
        access: &TableAccess,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<PlannedQuery> {
        let admission = self.admit().await?;
        let deadline = admission.deadline;
        let planning = async {
            let ctx = self.query_context()?;
            let query = number_placeholders(query, &GenericDialect {})?;
            let logical = ctx.state().create_logical_plan(&query).await?;
            check_read_only(&logical)?;
            check_access(&logical, access)?;
            self.plan_at_time(ctx, logical, params, admission, at).await
        };
        self.before_deadline(deadline, planning).await
    }

    /// Plans an already built logical plan (a front end that parsed the SQL itself,
    /// as pgwire's extended protocol does) exactly as [`QueryEngine::plan`] does.
    pub async fn plan_logical(
        &self,
        logical: LogicalPlan,
        params: Option<ParamValues>,
        access: &TableAccess,
    ) -> Result<PlannedQuery> {
        check_read_only(&logical)?;
        check_access(&logical, access)?;
        let admission = self.admit().await?;
        let deadline = admission.deadline;
        let planning = async {
            let ctx = self.query_context()?;
            self.plan_admitted(ctx, logical, params, admission).await
        };
        self.before_deadline(deadline, planning).await
    }

    async fn before_deadline<T>(
        &self,
        deadline: tokio::time::Instant,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.timeouts.inc();
                Err(Error::Timeout(self.config.timeout))
            }
        }
    }

    async fn plan_admitted(
        &self,
        ctx: SessionContext,
        logical: LogicalPlan,
        params: Option<ParamValues>,
        admission: Admission,
    ) -> Result<PlannedQuery> {
        self.plan_at_time(ctx, logical, params, admission, None)
            .await
    }

    async fn plan_at_time(
        &self,
        ctx: SessionContext,
        mut logical: LogicalPlan,
        params: Option<ParamValues>,
        admission: Admission,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<PlannedQuery> {
        if let Some(params) = params {
            logical = logical.with_param_values(params)?;
        }
        let mut state = ctx.state();
        if at.is_some() {
            state.execution_props_mut().query_execution_start_time = at;
        }
        let optimized = state.optimize(&logical)?;
        let fingerprint = self.result_cache.fingerprint(&optimized, &self.storage);
        let cache_key = fingerprint.map(|fp| (optimized.display_indent_schema().to_string(), fp));
        if let Some((key, fp)) = &cache_key {
            if let Some((schema, batches)) = self.result_cache.get(key, fp) {
                return Ok(PlannedQuery {
                    ctx,
                    schema,
                    source: Source::Cached(batches),
                    admission,
                    cache_key: None,
                });
            }
        }
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await?;
        Ok(PlannedQuery {
            ctx,
            // The schema of the planned query, not of the SQL as written: rewrites
            // such as gap filling make columns nullable.
            schema: physical.schema(),
            source: Source::Plan(physical),
            admission,
            cache_key,
        })
    }

    /// The parameter types of a statement with `$1`- or `?`-style placeholders, in order,
    /// and the schema of its result.
    pub async fn describe(
        &self,
        query: &str,
        access: &TableAccess,
    ) -> Result<(Vec<Option<DataType>>, SchemaRef)> {
        let logical = self.logical_plan(query, access).await?;
        let schema = Arc::new(logical.schema().as_arrow().clone());
        Ok((parameter_types(&logical)?, schema))
    }

    /// Runs a planned query as a stream of batches: results are produced as the
    /// client reads them (a large result is never held whole), the query keeps its
    /// slot until the stream is dropped (a client that disconnects frees it), and it
    /// fails with a timeout error once the deadline set at admission has passed.
    /// A cacheable result is kept for the next identical query once fully read.
    pub fn execute(&self, planned: PlannedQuery) -> Result<SendableRecordBatchStream> {
        let PlannedQuery {
            ctx,
            schema,
            source,
            admission,
            cache_key,
        } = planned;
        let mut task = None;
        let inner: SendableRecordBatchStream = match source {
            Source::Plan(physical) => match &self.executor {
                None => datafusion::physical_plan::execute_stream(physical, ctx.task_ctx())?,
                Some(executor) => {
                    // Executed (and its partitions spawned) on the query runtime;
                    // batches cross over a small channel, so a slow reader holds
                    // the query back instead of letting results pile up.
                    let (tx, rx) = tokio::sync::mpsc::channel(2);
                    let task_ctx = ctx.task_ctx();
                    let exec_schema = physical.schema();
                    task = Some(AbortOnDrop(executor.spawn(async move {
                        let mut stream =
                            match datafusion::physical_plan::execute_stream(physical, task_ctx) {
                                Ok(s) => s,
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            };
                        while let Some(item) = stream.next().await {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                    })));
                    let rx = futures::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|item| (item, rx))
                    });
                    Box::pin(RecordBatchStreamAdapter::new(exec_schema, rx))
                }
            },
            Source::Cached(batches) => Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::iter(batches.into_iter().map(Ok)),
            )),
        };
        let timeout = self.config.timeout;
        let metrics = self.metrics.clone();
        let cache = Arc::clone(&self.result_cache);
        let fill = cache_key.map(|(key, fp)| CacheFill {
            key,
            fingerprint: fp,
            batches: Vec::new(),
            bytes: 0,
            max_bytes: cache.max_entry_bytes(),
        });
        let out_schema = Arc::clone(&schema);
        let state = StreamState {
            inner,
            _task: task,
            admission,
            fill,
            done: false,
        };
        let stream = futures::stream::unfold(state, move |mut st| {
            let metrics = metrics.clone();
            let cache = Arc::clone(&cache);
            let schema = Arc::clone(&schema);
            async move {
                if st.done {
                    return None;
                }
                // A stream that is always ready would never let the timer fire
                // (tokio polls the future before the deadline): check it first.
                let next = if tokio::time::Instant::now() >= st.admission.deadline {
                    Err(())
                } else {
                    tokio::time::timeout_at(st.admission.deadline, st.inner.next())
                        .await
                        .map_err(|_| ())
                };
                match next {
                    Ok(Some(Ok(batch))) => {
                        let bytes = batch.get_array_memory_size();
                        metrics.result_bytes.inc_by(bytes as u64);
                        metrics.result_rows.inc_by(batch.num_rows() as u64);
                        if let Some(f) = &mut st.fill {
                            f.bytes += bytes;
                            if f.bytes > f.max_bytes {
                                st.fill = None;
                            } else {
                                f.batches.push(batch.clone());
                            }
                        }
                        Some((Ok(batch), st))
                    }
                    Ok(Some(Err(e))) => {
                        st.done = true;
                        st.fill = None;
                        Some((Err(e), st))
                    }
                    Ok(None) => {
                        if let Some(f) = st.fill.take() {
                            cache.put(f.key, f.fingerprint, schema, f.batches);
                        }
                        None
                    }
                    Err(_) => {
                        metrics.timeouts.inc();
                        st.done = true;
                        st.fill = None;
                        Some((
                            Err(DataFusionError::External(Box::new(Error::Timeout(timeout)))),
                            st,
                        ))
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }

    /// Runs one SQL statement to completion (for the CLI and tests): the same path
    /// as every front end, collected.
    pub async fn sql(&self, query: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let planned = self.plan(query, None, &TableAccess::all()).await?;
        let schema = planned.schema();
        let stream = self.execute(planned)?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok((schema, batches))
    }
}

/// Results being kept for the result cache while they stream.
struct CacheFill {
    key: String,
    fingerprint: Fingerprint,
    batches: Vec<RecordBatch>,
    bytes: usize,
    max_bytes: usize,
}

struct StreamState {
    inner: SendableRecordBatchStream,
    /// The execution task on the query runtime, stopped when the stream is dropped.
    _task: Option<AbortOnDrop>,
    admission: Admission,
    fill: Option<CacheFill>,
    done: bool,
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
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
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

    /// Validates and commits points that must all be accepted.
    async fn store(storage: &Storage, pts: Vec<Point<'static>>) {
        let w = storage.validate(pts.into_iter().enumerate().collect());
        assert!(w.rejected.is_empty());
        storage.commit(w.tables).await.unwrap();
    }

    async fn explain(engine: &QueryEngine, sql: &str) -> String {
        let (_, b) = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
        pretty_format_batches(&b).unwrap().to_string()
    }

    /// Files written in time order touch at their edges: only the rows there are
    /// merged, the rest of each file is read as it is, and the newer write still
    /// wins at the edge.
    #[tokio::test]
    async fn merges_time_ordered_files_only_where_they_meet() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        for pts in [
            (0..=10)
                .map(|t| point("a", t as f64, t))
                .collect::<Vec<_>>(),
            std::iter::once(point("a", 999.0, 10))
                .chain((11..20).map(|t| point("a", t as f64, t)))
                .chain((10..20).map(|t| point("b", 1.0, t)))
                .collect(),
        ] {
            store(&storage, pts).await;
            storage.flush().await.unwrap();
        }
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(
            plan.contains("deduplicated chunks=2 (sorted 0, merged only where they meet 2)"),
            "{plan}"
        );
        let (_, b) = engine
            .sql("SELECT host, count(*) AS n, sum(usage) AS s FROM cpu GROUP BY host ORDER BY host")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        // a: 0..=19 once each, 10 overwritten by 999: 190 - 10 + 999.
        assert!(text.contains("| a    | 20 | 1179.0 |"), "{text}");
        assert!(text.contains("| b    | 10 | 10.0   |"), "{text}");
        // The edge alone, and a range that excludes it.
        let (_, b) = engine
            .sql("SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = 'a' AND time <= '1970-01-01T00:00:00.000000010Z'")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("| 11 | 1044.0 |"), "{text}");
    }

    /// A file is merged against the buffer only where their times meet: the
    /// buffered rewrite of the file's last point wins, the rest of the file is read
    /// as it is, and duplicates within the buffer itself are resolved too.
    #[tokio::test]
    async fn merges_a_file_with_the_buffer_only_where_they_meet() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        store(
            &storage,
            (0..=10).map(|t| point("a", t as f64, t)).collect(),
        )
        .await;
        storage.flush().await.unwrap();
        // Buffered: a@10 written twice (the second wins), then a@11..=14.
        store(&storage, vec![point("a", 500.0, 10)]).await;
        store(
            &storage,
            std::iter::once(point("a", 999.0, 10))
                .chain((11..15).map(|t| point("a", t as f64, t)))
                .collect(),
        )
        .await;
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(
            plan.contains("deduplicated chunks=2 (sorted 1, merged only where they meet 1)"),
            "{plan}"
        );
        let (_, b) = engine
            .sql("SELECT count(*) AS n, sum(usage) AS s, max(usage) AS m FROM cpu")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        // 0..=9 from the file (45), 999 for a@10, 11..=14 (50): 15 rows.
        assert!(text.contains("| 15 | 1094.0 | 999.0 |"), "{text}");
    }

    /// A buffer without a repeated (series, time) is read as it is when nothing
    /// overlaps it, and merged only where it meets a file otherwise; a repeat makes
    /// the query sort and deduplicate it, last write winning.
    #[tokio::test]
    async fn a_buffer_without_repeats_is_read_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        async fn sum(engine: &QueryEngine) -> String {
            let (_, b) = engine
                .sql("SELECT count(*) AS n, sum(usage) AS s FROM cpu")
                .await
                .unwrap();
            pretty_format_batches(&b).unwrap().to_string()
        }
        store(&storage, (0..10).map(|t| point("a", t as f64, t)).collect()).await;
        store(&storage, (0..10).map(|t| point("b", 100.0, t)).collect()).await;
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(plan.contains("buffer read as it is"), "{plan}");
        assert!(!plan.contains("DeduplicateExec"), "{plan}");
        assert!(sum(&engine).await.contains("| 20 | 1045.0 |"));

        // Flushed, then the buffer rewrites the file's last point and goes on.
        storage.flush().await.unwrap();
        store(&storage, (9..15).map(|t| point("a", 1000.0, t)).collect()).await;
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(
            plan.contains("deduplicated chunks=2 (sorted 1, merged only where they meet 2)"),
            "{plan}"
        );
        // a 0..=8 (36) + b (1000) + a 9..=14 at 1000 (6000): 25 rows.
        assert!(sum(&engine).await.contains("| 25 | 7036.0 |"));

        // A repeat within the buffer: sorted and deduplicated, the later write wins.
        store(&storage, vec![point("a", 2000.0, 14)]).await;
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(!plan.contains("buffer read as it is"), "{plan}");
        assert!(
            plan.contains("deduplicated chunks=2 (sorted 1, merged only where they meet 1)"),
            "{plan}"
        );
        assert!(sum(&engine).await.contains("| 25 | 8036.0 |"));
        // Flushed: the buffer is empty, the two files merge where they meet.
        storage.flush().await.unwrap();
        assert!(sum(&engine).await.contains("| 25 | 8036.0 |"));
    }

    /// Field predicates on floats stored as decimals (pushed into the Parquet scan
    /// and compared on the decimals) answer as comparisons of the floats do, at
    /// and between stored values, with the literal on either side; and a newer value that replaced an old one in a
    /// merge is what the predicate sees.
    #[tokio::test]
    async fn field_predicates_on_decimal_columns_compare_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        // -5.0, -4.9, ... 14.9: one decimal, not exact in binary.
        let mut values: Vec<f64> = (0..200).map(|t| (t - 50) as f64 / 10.0).collect();
        store(
            &storage,
            values
                .iter()
                .enumerate()
                .map(|(t, v)| point("a", *v, t as i64))
                .collect(),
        )
        .await;
        storage.flush().await.unwrap();
        let file = storage.snapshot("cpu").unwrap().files[0].meta.path.clone();
        let stored =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(dir.path().join(file)).unwrap(),
            )
            .unwrap()
            .schema()
            .field_with_name("usage")
            .unwrap()
            .data_type()
            .clone();
        assert_eq!(
            stored,
            datafusion::arrow::datatypes::DataType::Decimal128(18, 1)
        );
        async fn check(engine: &QueryEngine, values: &[f64]) {
            use std::cmp::Ordering::*;
            for literal in [
                10.0,
                10.05,
                10.1,
                -1.0,
                0.0,
                -0.0,
                -5.0,
                14.9,
                30.0,
                0.3,
                0.1 + 0.2,
            ] {
                for (op, flipped) in [
                    (">", "<"),
                    (">=", "<="),
                    ("<", ">"),
                    ("<=", ">="),
                    ("=", "="),
                    ("!=", "!="),
                ] {
                    // DataFusion compares a -0.0 literal as 0.0.
                    let as_compared = if literal == 0.0 { 0.0 } else { literal };
                    let want = values
                        .iter()
                        .filter(|v| {
                            let o = v.total_cmp(&as_compared);
                            match op {
                                ">" => o == Greater,
                                ">=" => o != Less,
                                "<" => o == Less,
                                "<=" => o != Greater,
                                "=" => o == Equal,
                                _ => o != Equal,
                            }
                        })
                        .count();
                    for sql in [
                        format!("SELECT count(*) AS n FROM cpu WHERE usage {op} {literal:?}"),
                        format!("SELECT count(*) AS n FROM cpu WHERE {literal:?} {flipped} usage"),
                    ] {
                        let (_, b) = engine.sql(&sql).await.unwrap();
                        let got = pretty_format_batches(&b).unwrap().to_string();
                        assert!(
                            got.contains(&format!("| {want} ")),
                            "{sql}: want {want}\n{got}"
                        );
                    }
                }
            }
        }
        check(&engine, &values).await;
        // The buffer replaces t=150 (10.0): the file is merged there, and the old
        // value must not match `usage = 10.0` any more.
        store(&storage, vec![point("a", 0.5, 150)]).await;
        values[150] = 0.5;
        check(&engine, &values).await;
    }

    /// Files written host by host cover the same times and share only the host at
    /// their boundary: only that host's rows are merged (the rest of each file is
    /// read as it is), and its newer write wins.
    #[tokio::test]
    async fn host_ordered_files_merge_only_the_host_they_share() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        let mut first: Vec<Point<'static>> = (0..10).map(|t| point("a", 1.0, t)).collect();
        first.extend((0..5).map(|t| point("b", 2.0, t)));
        store(&storage, first).await;
        storage.flush().await.unwrap();
        let mut second: Vec<Point<'static>> = (4..10).map(|t| point("b", 20.0, t)).collect();
        second.extend((0..10).map(|t| point("c", 3.0, t)));
        store(&storage, second).await;
        storage.flush().await.unwrap();

        let (_, b) = engine
            .sql("EXPLAIN ANALYZE SELECT count(*) AS n, sum(usage) AS s FROM cpu")
            .await
            .unwrap();
        let plan = pretty_format_batches(&b).unwrap().to_string();
        assert!(plan.contains("deduplicated chunks=2"), "{plan}");
        assert!(plan.contains("merged only where they meet 2"), "{plan}");
        // b's rows of both files: 5 + 6 in, 10 out (b@4 written twice).
        let dedupe = plan
            .lines()
            .find(|l| l.contains("DeduplicateExec"))
            .unwrap_or_else(|| panic!("{plan}"));
        assert!(dedupe.contains("output_rows=10"), "{dedupe}");
        assert!(dedupe.contains("duplicates_removed=1"), "{dedupe}");
        let (_, b) = engine
            .sql("SELECT count(*) AS n, sum(usage) AS s FROM cpu")
            .await
            .unwrap();
        // a: 10 x 1, b: 4 x 2 + 6 x 20, c: 10 x 3.
        let got = pretty_format_batches(&b).unwrap().to_string();
        assert!(got.contains("| 30 | 168.0 |"), "{got}");
        let (_, b) = engine
            .sql("SELECT usage FROM cpu WHERE host = 'b' AND time = arrow_cast(4, 'Timestamp(Nanosecond, Some(\"UTC\"))')")
            .await
            .unwrap();
        let got = pretty_format_batches(&b).unwrap().to_string();
        assert!(got.contains("| 20.0  |"), "{got}");
    }

    /// A backfill written host by host makes files that overlap in time but not in
    /// series: they are read without merging. Files that share a series are merged
    /// (not sorted: they are in the table's order), last write winning, also after
    /// a tag was added to the table between the flushes.
    #[tokio::test]
    async fn merges_only_files_that_share_a_series() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let commit = |pts: Vec<Point<'static>>| {
            let storage = Arc::clone(&storage);
            async move {
                store(&storage, pts).await;
                storage.flush().await.unwrap();
            }
        };
        commit((0..10).map(|t| point("a", t as f64, t)).collect()).await;
        commit((0..10).map(|t| point("b", 100.0 + t as f64, t)).collect()).await;
        let engine = QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap();
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(plan.contains("files=2 of 2"), "{plan}");
        assert!(plan.contains("deduplicated chunks=0"), "{plan}");
        assert!(!plan.contains("DeduplicateExec"), "{plan}");

        // A table provider made before the table gains a tag (a prepared statement
        // keeps one) still reads the table after.
        use datafusion::catalog::SchemaProvider;
        let before = crate::VigilSchema::new(Arc::clone(&storage))
            .table("cpu")
            .await
            .unwrap()
            .unwrap();

        // Rewrite a@5 and add a tag: the new file shares series a with the first.
        let mut p = point("a", 1000.0, 5);
        p.tags.push((Cow::Borrowed("rack"), Cow::Borrowed("r1")));
        let mut q = point("a", 2000.0, 5);
        q.tags.clear();
        q.tags.push((Cow::Borrowed("host"), Cow::Borrowed("a")));
        commit(vec![p, q]).await;
        let plan = explain(&engine, "SELECT sum(usage) FROM cpu").await;
        assert!(
            plan.contains("deduplicated chunks=2 (sorted 0, merged only where they meet 1)"),
            "{plan}"
        );
        assert!(plan.contains("DeduplicateExec"), "{plan}");
        let (_, b) = engine
            .sql("SELECT host, rack, usage FROM cpu WHERE time = '1970-01-01T00:00:00.000000005Z' ORDER BY host, rack")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        // a@5 without rack is overwritten (2000), a@5 with rack r1 is a new series.
        assert!(text.contains("| a    |      | 2000.0 |"), "{text}");
        assert!(text.contains("| a    | r1   | 1000.0 |"), "{text}");
        assert!(text.contains("| b    |      | 105.0  |"), "{text}");
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 3, "{text}");
        let (_, b) = engine.sql("SELECT count(*) AS n FROM cpu").await.unwrap();
        assert!(pretty_format_batches(&b)
            .unwrap()
            .to_string()
            .contains("| 21 |"));

        // A parent's order that shares a prefix with the sort key must not replace
        // the newest-first order below the dedupe.
        let (_, b) = engine
            .sql("SELECT host, usage FROM cpu WHERE host = 'a' ORDER BY host NULLS FIRST, time DESC, usage")
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 11, "{text}");
        assert!(
            text.contains("2000.0") && !text.contains("| 5.0 "),
            "{text}"
        );

        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("cpu_before", before).unwrap();
        let b = ctx
            .sql("SELECT count(*) AS n FROM cpu_before")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("| 21 |"), "{text}");
    }
}
