//! Running queries for pgwire clients: `datafusion-postgres` plans and encodes them;
//! this wrapper makes them stoppable. pgwire races a cancel request only against
//! planning, while DataFusion does its work as rows are sent, so a cancel (psql's
//! Ctrl-C, `conn.cancel()`) or the query timeout would otherwise never stop a long
//! query. Each result stream here ends with SQLSTATE 57014 when either fires, and
//! counts as a running query until it ends.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::{Format, Portal, PortalExecutionState};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Tag;
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::Entry;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore};
use datafusion_postgres::pgwire::api::{PgWireConnectionState, DEFAULT_NAME};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::cancel::CancelRequest;
use datafusion_postgres::pgwire::messages::extendedquery::{Execute, Sync as PgSync};
use datafusion_postgres::pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use datafusion_postgres::pgwire::messages::data::DataRow;
use futures::{Sink, SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;
use vigil_sql::{PlannedQuery, QueryEngine};

type Key = (i32, Bytes);

/// The open connections, by the (pid, secret key) a cancel request names.
#[derive(Default)]
pub(crate) struct Connections {
    by_key: Mutex<HashMap<Key, Arc<watch::Sender<u64>>>>,
}

/// Lives in a connection's session extensions; unregisters it when dropped.
pub(crate) struct ConnectionCancel {
    key: Key,
    signal: Arc<watch::Sender<u64>>,
    connections: Arc<Connections>,
}

impl Drop for ConnectionCancel {
    fn drop(&mut self) {
        self.connections.by_key.lock().remove(&self.key);
    }
}

impl Connections {
    /// Registers an authenticated connection (once).
    pub(crate) fn register<C: ClientInfo>(self: &Arc<Self>, client: &C) {
        if client
            .session_extensions()
            .get::<ConnectionCancel>()
            .is_some()
        {
            return;
        }
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        let signal = Arc::new(watch::channel(0u64).0);
        self.by_key.lock().insert(key.clone(), Arc::clone(&signal));
        client.session_extensions().insert(ConnectionCancel {
            key,
            signal,
            connections: Arc::clone(self),
        });
    }
}

/// The portals a connection's Executes with a row limit may have left suspended,
/// each holding its query (and query slot). PostgreSQL closes them when their
/// transaction ends; pgwire closes only the unnamed portal at Sync. Cursors
/// (`DECLARE`, which datafusion-postgres keeps as portals too) are not listed:
/// `WITH HOLD` ones outlive the transaction.
#[derive(Default)]
struct SuspendedPortals(Mutex<HashSet<String>>);

impl SuspendedPortals {
    fn of<C: ClientInfo>(client: &C) -> Arc<SuspendedPortals> {
        let extensions = client.session_extensions();
        if let Some(listed) = extensions.get::<SuspendedPortals>() {
            return listed;
        }
        extensions.insert(SuspendedPortals::default());
        extensions.get::<SuspendedPortals>().unwrap_or_default()
    }

    /// Closes the listed portals: their transaction has ended.
    fn close<C>(client: &C)
    where
        C: ClientInfo + ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        let Some(listed) = client.session_extensions().get::<SuspendedPortals>() else {
            return;
        };
        for name in listed.0.lock().drain() {
            client.portal_store().rm_portal(&name);
        }
    }
}

/// Cancel requests arrive on a connection of their own; they stop the query running
/// on the connection they name (both while it is planned and while rows stream).
pub(crate) struct VigilCancel {
    pub(crate) connections: Arc<Connections>,
    pub(crate) planning: DefaultCancelHandler,
}

#[async_trait]
impl CancelHandler for VigilCancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let signal = self.connections.by_key.lock().get(&key).cloned();
        if let Some(signal) = signal {
            signal.send_modify(|n| *n += 1);
        }
        self.planning.on_cancel_request(request).await;
    }
}

/// `datafusion-postgres`'s parser, handed the SQL as [`crate::compat`] rewrites it.
pub(crate) struct VigilParser {
    inner: Arc<Parser>,
    engine: Arc<QueryEngine>,
}

#[async_trait]
impl QueryParser for VigilParser {
    type Statement = <Parser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = crate::compat::rewrite(sql, self.engine.context())
            .map_err(crate::query::engine_error)?;
        self.inner.parse_sql(client, &sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = column_format.unwrap_or(&Format::UnifiedText);
        match stmt {
            (_, Some((statement, plan))) if crate::query::runs_on_engine(statement) => {
                let schema = crate::compat::client_schema(plan.schema().as_arrow());
                crate::query::check_result_formats(format, schema.fields().len())?;
                Ok(arrow_schema_to_pg_fields(&schema, format, None)?)
            }
            _ => {
                // The columns in text first: asked with too few formats, the
                // schema would be built by indexing past their end.
                // Statements without columns here (FETCH sends rows it encoded
                // itself, as text) take any formats.
                let columns = self.inner.get_result_schema(stmt, None)?.len();
                if columns > 0 {
                    crate::query::check_result_formats(format, columns)?;
                }
                self.inner.get_result_schema(stmt, column_format)
            }
        }
    }
}

/// The connection's cancel signal, counting only cancels sent from now on.
fn cancel_signal<C: ClientInfo>(client: &C) -> Option<watch::Receiver<u64>> {
    client
        .session_extensions()
        .get::<ConnectionCancel>()
        .map(|c| {
            let mut rx = c.signal.subscribe();
            rx.mark_unchanged();
            rx
        })
}

/// Resolves once the connection's query is cancelled (never without a signal).
async fn cancelled(signal: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = signal {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// A result stream that ends with SQLSTATE 57014 once the connection's query is
/// cancelled or the deadline passes. (A query on the engine counts as running
/// from its admission until its stream is dropped; counting it here too counted
/// it twice.)
/// The timers are set up once per stream, not per row.
struct Guarded<S> {
    rows: S,
    cancelled: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
    done: bool,
    polled: u32,
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = PgWireResult<DataRow>> + Unpin,
{
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Rows that are ready go out with the signals looked at every 256 rows;
        // a stream that has to wait registers for both before it sleeps.
        this.polled = this.polled.wrapping_add(1);
        if !this.polled.is_multiple_of(256) {
            match this.rows.poll_next_unpin(cx) {
                Poll::Pending => {}
                ready => return ready,
            }
        }
        if let Some(cancelled) = this.cancelled.as_mut() {
            if cancelled.as_mut().poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(Some(Err(PgWireError::QueryCanceled)));
            }
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "57014".into(),
                // Worded like the engine's own timeout error, which races this
                // deadline and may be the one the client sees.
                format!(
                    "canceling statement due to statement timeout: query timed out after {:?} (query.timeout)",
                    this.timeout
                ),
            ))))));
        }
        this.rows.poll_next_unpin(cx)
    }
}

/// `DfSessionService` with stoppable, counted result streams.
pub(crate) struct VigilSession {
    pub(crate) inner: Arc<DfSessionService>,
    pub(crate) engine: Arc<QueryEngine>,
}

impl VigilSession {
    /// Executes a prepared query on the engine with the portal's parameters, in the
    /// result format the portal asks for (text or binary per column).
    async fn run_portal<C: ClientInfo>(
        &self,
        client: &C,
        portal: &Portal<<DfSessionService as ExtendedQueryHandler>::Statement>,
        plan: &LogicalPlan,
    ) -> PgWireResult<Response> {
        let (planned, options) = self.plan_portal(client, portal, plan).await?;
        crate::query::respond(&self.engine, planned, &portal.result_column_format, options)
    }

    /// Plans a prepared query with the portal's parameters.
    async fn plan_portal<C: ClientInfo>(
        &self,
        client: &C,
        portal: &Portal<<DfSessionService as ExtendedQueryHandler>::Statement>,
        plan: &LogicalPlan,
    ) -> PgWireResult<(PlannedQuery, Arc<FormatOptions>)> {
        let ordered: Vec<Option<DataType>> = vigil_sql::parameter_types(plan)
            .map_err(crate::query::engine_error)?
            .into_iter()
            // Clients bind plain values to tag (dictionary) parameters.
            .map(|t| match t {
                Some(DataType::Dictionary(_, value)) => Some(*value),
                other => other,
            })
            .collect();
        let refs: Vec<Option<&DataType>> = ordered.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &refs)?;
        let planned = self
            .engine
            .plan_logical(plan.clone(), Some(params), &crate::query::access(client))
            .await
            .map_err(crate::query::engine_error)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Ok((planned, options))
    }

    fn guard<C: ClientInfo>(&self, client: &C, response: Response) -> Response {
        let Response::Query(query) = response else {
            return response;
        };
        let cancelled = cancel_signal(client);
        let timeout = self.engine.timeout();
        let QueryResponse {
            command_tag,
            row_schema,
            data_rows,
            ..
        } = query;
        let rows = Guarded {
            rows: data_rows,
            cancelled: cancelled.map(|rx| {
                Box::pin(async move { self::cancelled(&mut Some(rx)).await })
                    as Pin<Box<dyn Future<Output = ()> + Send>>
            }),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            done: false,
            polled: 0,
        };
        let mut query = QueryResponse::new(row_schema, rows);
        query.command_tag = command_tag;
        Response::Query(query)
    }
}

#[async_trait]
impl SimpleQueryHandler for VigilSession {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = crate::compat::rewrite(query, self.engine.context())
            .map_err(crate::query::engine_error)?;
        let responses = SimpleQueryHandler::do_query(self.inner.as_ref(), client, &query).await?;
        if responses
            .iter()
            .any(|r| matches!(r, Response::TransactionEnd(_)))
        {
            SuspendedPortals::close(client);
        }
        Ok(responses
            .into_iter()
            .map(|r| self.guard(client, r))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for VigilSession {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = VigilParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(VigilParser {
            inner: self.inner.query_parser(),
            engine: Arc::clone(&self.engine),
        })
    }

    /// pgwire answers an Execute that asks for every row (max_rows 0, as pgx,
    /// psycopg and JDBC send it) by collecting the whole result in memory first:
    /// 1.6 GB for a 10M-row result, and nothing reaches the client until the
    /// last row is made. A query on the engine streams instead; anything else
    /// (a row limit, a resumed portal, session statements) runs as pgwire runs it.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => Some(portal),
            _ => None,
        };
        let streams = match &portal {
            Some(portal) if message.max_rows == 0 => {
                matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && matches!(&portal.statement.statement, (_, Some((statement, _))) if crate::query::runs_on_engine(statement))
                    && matches!(*portal.state().lock().await, PortalExecutionState::Initial)
            }
            _ => false,
        };
        let (true, Some(portal)) = (streams, portal) else {
            if message.max_rows > 0 {
                SuspendedPortals::of(client)
                    .0
                    .lock()
                    .insert(name.to_owned());
            }
            return self._on_execute(client, message).await;
        };
        let (_, Some((_, plan))) = &portal.statement.statement else {
            return self._on_execute(client, message).await;
        };
        let transaction_status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        // A cancel while the query waits for a slot or is planned stops it, and so
        // does one between record batches.
        let mut cancel = cancel_signal(client);
        let planned = tokio::select! {
            r = self.plan_portal(client, portal.as_ref(), plan) => r,
            _ = cancelled(&mut cancel) => Err(PgWireError::QueryCanceled),
        };
        let encoded = match planned {
            Ok((planned, options)) => {
                crate::query::encode(&self.engine, planned, &portal.result_column_format, options)
            }
            Err(e) => Err(e),
        };
        // A portal that failed before any row was made can be executed again
        // (a retry after a "busy" refusal plans it again).
        let mut batches = encoded?.batches;
        let mut sent = 0;
        let timeout = self.engine.timeout();
        // The deadline holds while the client is slow to read too: a stalled
        // client must not keep its query (and slot) forever. The rows of a batch
        // are fed one after another, with no stream or timer between them.
        let streamed = tokio::time::timeout(timeout, async {
            loop {
                let rows = tokio::select! {
                    biased;
                    _ = cancelled(&mut cancel) => return Err(PgWireError::QueryCanceled),
                    rows = batches.next() => rows,
                };
                let Some(rows) = rows else {
                    return Ok(());
                };
                for row in rows? {
                    client.feed(PgWireBackendMessage::DataRow(row)).await?;
                    sent += 1;
                }
            }
        })
        .await;
        // Executed once, whatever happened: executing it again must not resend rows.
        *portal.state().lock().await = PortalExecutionState::Finished;
        match streamed {
            Ok(r) => r?,
            Err(_) => {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "57014".into(),
                    format!(
                        "canceling statement due to statement timeout: query timed out after {timeout:?} (query.timeout)"
                    ),
                ))))
            }
        }
        client
            .send(PgWireBackendMessage::CommandComplete(
                // What pgwire tags every query result with.
                Tag::new("SELECT").with_rows(sent).into(),
            ))
            .await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction_status);
        Ok(())
    }

    /// PostgreSQL closes a transaction's portals when it ends, at Sync for the
    /// implicit transaction of an extended-query series. pgwire drops only the
    /// unnamed one, so a named portal suspended by a row limit kept its query,
    /// and its query slot, until the connection closed: a client could hold
    /// every slot.
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.portal_store().rm_portal(DEFAULT_NAME);
        if matches!(client.transaction_status(), TransactionStatus::Idle) {
            SuspendedPortals::close(client);
        }
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                client.transaction_status(),
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let (_, Some((statement, plan))) = &portal.statement.statement {
            if crate::query::runs_on_engine(statement) {
                let response = self.run_portal(client, portal, plan).await?;
                return Ok(self.guard(client, response));
            }
        }
        let columns = self
            .inner
            .query_parser()
            .get_result_schema(&portal.statement.statement, None)?
            .len();
        if columns > 0 {
            crate::query::check_result_formats(&portal.result_column_format, columns)?;
        }
        let response =
            ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows).await?;
        Ok(self.guard(client, response))
    }
}
