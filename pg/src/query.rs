//! pgwire queries run on vigil's one query path.
//!
//! `datafusion-postgres` would run statements on the shared `SessionContext` itself:
//! DDL and COPY included, `SET datafusion.*` changing the settings every front end
//! shares, outside the engine's memory pool and concurrency limit. Here every
//! statement that reads data is planned and streamed by [`QueryEngine`] (read-only
//! check, admission, per-query pool, timeout, result cache); only the session
//! statements Postgres clients send at connect time (`SET` of per-connection
//! settings, `SHOW`, `BEGIN`/`COMMIT`, cursors over read-only queries) are left to
//! `datafusion-postgres`'s own hooks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::rows::EncodedRows;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::QueryHook;
use futures::{ready, Stream, StreamExt};
use vigil_auth::Principal;
use vigil_model::TableAccess;
use vigil_sql::{ErrorKind, PlannedQuery, QueryEngine};

/// What a statement is, for deciding who runs it.
enum Kind<'a> {
    /// Runs on the engine (a query; anything else is refused there as not read-only).
    Engine,
    /// A `SET` that changes settings shared by every session: refused.
    SharedSet(String),
    /// Session statements `datafusion-postgres` answers per connection.
    Session,
    /// `DECLARE c CURSOR FOR <query>`: allowed when the query only reads.
    Cursor(&'a Statement),
}

fn kind(statement: &Statement) -> Kind<'_> {
    match statement {
        Statement::Set(set) => match set {
            Set::SingleAssignment { variable, .. } => {
                let name = variable.to_string();
                // Only settings datafusion-postgres keeps per connection (or that
                // nothing maps to) pass; anything DataFusion knows (`datafusion.*`,
                // and `timezone`, its alias for the execution time zone) would
                // change the context every session shares.
                let per_connection = [
                    "statement_timeout",
                    "datestyle",
                    "bytea_output",
                    "intervalstyle",
                    "application_name",
                    "extra_float_digits",
                    "search_path",
                    "client_encoding",
                    "client_min_messages",
                    "standard_conforming_strings",
                ];
                if per_connection.contains(&name.to_ascii_lowercase().as_str()) {
                    Kind::Session
                } else {
                    Kind::SharedSet(name)
                }
            }
            Set::SetTimeZone { .. }
            | Set::SetNames { .. }
            | Set::SetNamesDefault {}
            | Set::SetTransaction { .. } => Kind::Session,
            other => Kind::SharedSet(other.to_string()),
        },
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Kind::Session,
        Statement::Declare { stmts } => match stmts.first().and_then(|d| d.for_query.as_deref()) {
            Some(_) => Kind::Cursor(statement),
            None => Kind::Session,
        },
        _ => Kind::Engine,
    }
}

fn shared_set_error(name: &str) -> PgWireError {
    user_error(
        "42501",
        format!(
            "SET {name} is not allowed: it would change settings shared by every session (only per-connection settings such as statement_timeout, search_path and application_name can be set; vigil answers in UTC)"
        ),
    )
}

pub(crate) fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The SQLSTATE a client can act on: 25006 (read-only), 53300 (too many), 57014
/// (timeout), 53200 (out of memory), 42000 otherwise.
pub(crate) fn engine_error(e: vigil_sql::Error) -> PgWireError {
    let code = match e.kind() {
        ErrorKind::ReadOnly => "25006",
        ErrorKind::Forbidden => "42501",
        ErrorKind::Busy => "53300",
        ErrorKind::Timeout => "57014",
        ErrorKind::ResourcesExhausted => "53200",
        ErrorKind::Internal => "XX000",
        ErrorKind::Invalid => "42000",
    };
    user_error(code, e.to_string())
}

/// Refuses a Bind whose result formats do not fit the columns, as PostgreSQL
/// does: none, one for all, or one per column (pgwire indexes the list by
/// column and panicked on a short one).
pub(crate) fn check_result_formats(format: &Format, columns: usize) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != columns => Err(user_error(
            "08P01",
            format!(
                "bind message has {} result formats but query has {columns} columns",
                codes.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// A result's rows, a record batch at a time.
pub(crate) type RowBatches = Pin<Box<dyn Stream<Item = PgWireResult<BatchRows>> + Send>>;

/// One record batch's rows: vigil's own encoding, or arrow-pg's for the types
/// it leaves to arrow-pg.
pub(crate) enum BatchRows {
    Encoded(EncodedRows),
    ArrowPg(std::vec::IntoIter<DataRow>),
}

impl Iterator for BatchRows {
    type Item = DataRow;

    fn next(&mut self) -> Option<DataRow> {
        match self {
            BatchRows::Encoded(rows) => rows.next(),
            BatchRows::ArrowPg(rows) => rows.next(),
        }
    }
}

/// A planned query's columns and its rows, encoded as they are made.
pub(crate) struct EncodedResult {
    pub(crate) fields: Arc<Vec<FieldInfo>>,
    pub(crate) batches: RowBatches,
}

/// Streams a planned query as pgwire rows in the given format (text for the simple
/// protocol, what the portal asks for in the extended one).
pub(crate) fn encode(
    engine: &QueryEngine,
    planned: PlannedQuery,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<EncodedResult> {
    let schema = crate::compat::client_schema(&planned.schema());
    check_result_formats(format, schema.fields().len())?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
    let stream = engine.execute(planned).map_err(engine_error)?;
    let row_fields = Arc::clone(&fields);
    let batches = stream.map(move |batch| {
        let batch = batch.map_err(|e| engine_error(e.into()))?;
        match crate::rows::encode_batch(&batch, &row_fields) {
            Some(rows) => rows.map(BatchRows::Encoded),
            None => encode_recordbatch(Arc::clone(&row_fields), batch)
                .collect::<PgWireResult<Vec<_>>>()
                .map(|rows| BatchRows::ArrowPg(rows.into_iter())),
        }
    });
    Ok(EncodedResult {
        fields,
        batches: Box::pin(batches),
    })
}

/// [`encode`] as the row stream pgwire sends.
pub(crate) fn respond(
    engine: &QueryEngine,
    planned: PlannedQuery,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<Response> {
    let encoded = encode(engine, planned, format, options)?;
    let rows = Rows {
        batches: encoded.batches,
        rows: None,
    };
    Ok(Response::Query(QueryResponse::new(encoded.fields, rows)))
}

/// Rows out of their batches, without a boxed iterator per batch and a dynamic
/// call per row.
struct Rows {
    batches: RowBatches,
    rows: Option<BatchRows>,
}

impl Stream for Rows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(row) = self.rows.as_mut().and_then(Iterator::next) {
                return Poll::Ready(Some(Ok(row)));
            }
            match ready!(self.batches.poll_next_unpin(cx)) {
                Some(Ok(rows)) => self.rows = Some(rows),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A DataFusion error met while streaming, with vigil's own (timeout) unwrapped.
/// The hook that routes pgwire statements (installed first, before
/// `datafusion-postgres`'s own).
pub(crate) struct EngineHook {
    pub(crate) engine: Arc<QueryEngine>,
}

#[async_trait]
impl QueryHook for EngineHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match kind(statement) {
            Kind::Session => None,
            Kind::SharedSet(name) => Some(Err(shared_set_error(&name))),
            Kind::Cursor(declare) => match cursor_query(declare) {
                Some(q) => match self.engine.logical_plan(&q, &access(&*client)).await {
                    Ok(_) => None,
                    Err(e) => Some(Err(engine_error(e))),
                },
                None => None,
            },
            Kind::Engine => {
                let sql = statement.to_string();
                let planned = match self.engine.plan(&sql, None, &access(&*client)).await {
                    Ok(p) => p,
                    Err(e) => return Some(Err(engine_error(e))),
                };
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                Some(respond(
                    &self.engine,
                    planned,
                    &Format::UnifiedText,
                    options,
                ))
            }
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match kind(statement) {
            Kind::Session => None,
            Kind::Cursor(declare) => match cursor_query(declare) {
                // Checked like every query before datafusion-postgres prepares it.
                Some(q) => match self.engine.logical_plan(&q, &access(client)).await {
                    Ok(_) => None,
                    Err(e) => Some(Err(engine_error(e))),
                },
                None => None,
            },
            Kind::SharedSet(name) => Some(Err(shared_set_error(&name))),
            Kind::Engine => {
                // Planned as datafusion-postgres plans it (so parameter types are
                // inferred the same way), then checked: nothing but reading is
                // prepared.
                let plan = session_context
                    .state()
                    .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                        statement.clone(),
                    )))
                    .await
                    .map_err(|e| engine_error(e.into()))
                    .and_then(|plan| {
                        vigil_sql::check_read_only(&plan)
                            .and_then(|_| vigil_sql::check_access(&plan, &access(client)))
                            .map(|_| plan)
                            .map_err(engine_error)
                    });
                Some(plan)
            }
        }
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // Queries are executed by `VigilSession::do_query`, which knows the
        // portal's result format; session statements fall through.
        None
    }
}

/// The tables the logged-in token may read (all, without tokens).
pub(crate) fn access<C: ClientInfo + ?Sized>(client: &C) -> TableAccess {
    client
        .session_extensions()
        .get::<Principal>()
        .map(|p| p.tables.clone())
        .unwrap_or_else(TableAccess::all)
}

/// The query of a `DECLARE ... CURSOR FOR <query>`.
fn cursor_query(statement: &Statement) -> Option<String> {
    match statement {
        Statement::Declare { stmts } => stmts
            .first()
            .and_then(|d| d.for_query.as_ref())
            .map(|q| q.to_string()),
        _ => None,
    }
}

/// True for statements [`VigilSession`](crate::session::VigilSession) runs on the
/// engine in the extended protocol.
pub(crate) fn runs_on_engine(statement: &Statement) -> bool {
    matches!(kind(statement), Kind::Engine)
}
