//! The `FlightSqlService` implementation.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlSupportedCaseSensitivity, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;
use vigil_model::TableAccess;
use vigil_sql::{ErrorKind, QueryEngine};

use crate::auth::FlightAuth;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// Prepared statements a client may hold open at once before the oldest are dropped
/// (clients that never close them must not grow memory without bound).
const MAX_PREPARED: usize = 10_000;

/// vigil's Flight SQL service.
pub struct VigilFlightSqlService {
    engine: Arc<QueryEngine>,
    auth: FlightAuth,
    prepared: Mutex<PreparedStatements>,
}

#[derive(Default)]
struct PreparedStatements {
    by_handle: HashMap<Bytes, Prepared>,
    order: std::collections::VecDeque<Bytes>,
}

#[derive(Clone)]
struct Prepared {
    sql: String,
    param_types: Vec<Option<DataType>>,
    params: Option<Vec<ScalarValue>>,
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "vigil");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlNullOrdering, 1i32);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "database");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlMaxColumnNameLength, 1024i64);
    b.append(SqlInfo::SqlMaxTableNameLength, 1024i64);
    b.append(SqlInfo::SqlKeywords, &[] as &[&str]);
    b.append(
        SqlInfo::SqlNumericFunctions,
        &["abs", "ceil", "floor", "round", "sqrt"] as &[&str],
    );
    b.append(
        SqlInfo::SqlStringFunctions,
        &["lower", "upper", "substr", "trim", "concat"] as &[&str],
    );
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        &[
            "now",
            "date_bin",
            "date_trunc",
            "time_bucket",
            "date_bin_gapfill",
        ] as &[&str],
    );
    b.build().expect("static SqlInfo is valid")
});

impl VigilFlightSqlService {
    pub fn new(engine: Arc<QueryEngine>, auth: FlightAuth) -> Self {
        Self {
            engine,
            auth,
            prepared: Mutex::default(),
        }
    }

    /// Plans `sql` and returns the schema results will be sent with.
    async fn result_schema(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        access: &TableAccess,
    ) -> Result<SchemaRef, Status> {
        let planned = self
            .engine
            .plan(sql, params.map(Into::into), access)
            .await
            .map_err(|e| query_error(sql, e))?;
        Ok(flight_schema(&planned.schema()))
    }

    /// Runs `sql` and streams its results as Flight data.
    async fn stream(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        access: &TableAccess,
    ) -> Result<DoGetStream, Status> {
        let planned = self
            .engine
            .plan(sql, params.map(Into::into), access)
            .await
            .map_err(|e| query_error(sql, e))?;
        let schema = flight_schema(&planned.schema());
        let batches = self
            .engine
            .execute(planned)
            .map_err(|e| query_error(sql, e))?;
        let target = Arc::clone(&schema);
        let batches = batches.map(move |b| {
            b.and_then(|b| hydrate(b, &target).map_err(DataFusionError::from))
                .map_err(|e| FlightError::ExternalError(Box::new(e)))
        });
        let flights = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(e) => Status::internal(format!("query failed: {e}")),
                other => Status::from(other),
            });
        Ok(Box::pin(flights))
    }

    fn prepared(&self, handle: &Bytes) -> Result<Prepared, Status> {
        self.prepared
            .lock()
            .by_handle
            .get(handle)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown or closed prepared statement handle"))
    }

    /// A table listing (GetTables) of every catalog and schema, filtered by the builder.
    async fn tables(&self, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let ctx = self.engine.context();
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    if let Some(table) = schema
                        .table(&table_name)
                        .await
                        .map_err(|e| query_error(&table_name, e.into()))?
                    {
                        builder
                            .append(
                                &catalog_name,
                                &schema_name,
                                &table_name,
                                table_type_name(table.table_type()),
                                &flight_schema(&table.schema()),
                            )
                            .map_err(|e| Status::internal(e.to_string()))?;
                    }
                }
            }
        }
        builder.build().map_err(|e| Status::internal(e.to_string()))
    }
}

fn ticket_info(
    descriptor: FlightDescriptor,
    ticket: Vec<u8>,
    schema: &Schema,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket {
        ticket: ticket.into(),
    });
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn one_batch(schema: SchemaRef, batch: RecordBatch) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// Results are sent without dictionary encoding: clients get plain strings for tags,
/// and the schema in `FlightInfo` is exactly the schema of the stream.
fn flight_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                f.as_ref().clone().with_data_type(value.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn hydrate(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// SQL and planning errors are the client's (InvalidArgument), memory limits and
/// timeouts have codes of their own, anything else is Internal; the message is
/// DataFusion's, with the query.
fn query_error(sql: &str, e: vigil_sql::Error) -> Status {
    let message = match &e {
        vigil_sql::Error::Timeout(_) => format!("{e}: {sql}"),
        _ => e.to_string(),
    };
    match e.kind() {
        ErrorKind::Invalid => Status::invalid_argument(message),
        ErrorKind::ReadOnly | ErrorKind::Forbidden => Status::permission_denied(message),
        ErrorKind::Busy | ErrorKind::ResourcesExhausted => Status::resource_exhausted(message),
        ErrorKind::Timeout => Status::deadline_exceeded(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

#[tonic::async_trait]
impl FlightSqlService for VigilFlightSqlService {
    type FlightService = VigilFlightSqlService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let token = self.auth.handshake(request.metadata())?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(reply)])));
        if !token.is_empty() {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not a valid header"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.auth.check(request.metadata())?;
        debug!(sql = %query.query, "Flight SQL statement");
        let schema = self
            .result_schema(&query.query, None, &principal.tables)
            .await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        ticket_info(
            request.into_inner(),
            ticket.as_any().encode_to_vec(),
            &schema,
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.auth.check(request.metadata())?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement ticket is not UTF-8 SQL"))?;
        Ok(Response::new(
            self.stream(&sql, None, &principal.tables).await?,
        ))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.auth.check(request.metadata())?;
        let (param_types, logical_schema) = self
            .engine
            .describe(&query.query, &principal.tables)
            .await
            .map_err(|e| query_error(&query.query, e))?;
        // Without parameters the result schema is the planned one (as DoGet sends it);
        // with parameters it is known only once they are bound.
        let dataset_schema = if param_types.is_empty() {
            self.result_schema(&query.query, None, &principal.tables)
                .await?
        } else {
            flight_schema(&logical_schema)
        };
        let parameter_schema = Schema::new(
            param_types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    // A tag parameter is inferred as the tag column's dictionary type;
                    // clients bind plain values (and JDBC cannot send dictionaries).
                    let t = match t {
                        Some(DataType::Dictionary(_, value)) => value.as_ref().clone(),
                        Some(t) => t.clone(),
                        None => DataType::Utf8,
                    };
                    Field::new(format!("${}", i + 1), t, true)
                })
                .collect::<Vec<_>>(),
        );
        let handle: Bytes = format!("{:032x}", rand::random::<u128>())
            .into_bytes()
            .into();
        let mut prepared = self.prepared.lock();
        prepared.by_handle.insert(
            handle.clone(),
            Prepared {
                sql: query.query,
                param_types,
                params: None,
            },
        );
        prepared.order.push_back(handle.clone());
        while prepared.order.len() > MAX_PREPARED {
            if let Some(old) = prepared.order.pop_front() {
                prepared.by_handle.remove(&old);
            }
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.auth.check(request.metadata())?;
        let handle = query.prepared_statement_handle;
        let statement = self.prepared(&handle)?;
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                request.into_inner().map_err(FlightError::from),
            )
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("cannot read parameters: {e}")))?;
        let row = batches.iter().find(|b| b.num_rows() > 0);
        let params = match row {
            None => Vec::new(),
            Some(batch) => batch
                .columns()
                .iter()
                .enumerate()
                .map(|(i, column)| {
                    let value = ScalarValue::try_from_array(column, 0).map_err(|e| {
                        Status::invalid_argument(format!("parameter ${}: {e}", i + 1))
                    })?;
                    // Clients bind their own types (a Python str for a timestamp, an
                    // int64 for an int32 column): cast to what the query expects.
                    match statement.param_types.get(i).cloned().flatten() {
                        Some(t) if value.data_type() != t => value.cast_to(&t).map_err(|e| {
                            Status::invalid_argument(format!(
                                "parameter ${}: cannot use {} as {t}: {e}",
                                i + 1,
                                value.data_type()
                            ))
                        }),
                        _ => Ok(value),
                    }
                })
                .collect::<Result<Vec<_>, Status>>()?,
        };
        if params.len() != statement.param_types.len() {
            return Err(Status::invalid_argument(format!(
                "the statement has {} parameter(s), {} were bound",
                statement.param_types.len(),
                params.len()
            )));
        }
        if let Some(p) = self.prepared.lock().by_handle.get_mut(&handle) {
            p.params = Some(params);
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.auth.check(request.metadata())?;
        let statement = self.prepared(&query.prepared_statement_handle)?;
        if statement.params.is_none() && !statement.param_types.is_empty() {
            return Err(Status::invalid_argument(format!(
                "bind the {} parameter(s) of the prepared statement before executing it",
                statement.param_types.len()
            )));
        }
        let schema = self
            .result_schema(&statement.sql, statement.params, &principal.tables)
            .await?;
        ticket_info(
            request.into_inner(),
            query.as_any().encode_to_vec(),
            &schema,
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.auth.check(request.metadata())?;
        let statement = self.prepared(&query.prepared_statement_handle)?;
        Ok(Response::new(
            self.stream(&statement.sql, statement.params, &principal.tables)
                .await?,
        ))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.auth.check(request.metadata())?;
        let mut prepared = self.prepared.lock();
        prepared.by_handle.remove(&query.prepared_statement_handle);
        prepared
            .order
            .retain(|h| h != &query.prepared_statement_handle);
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let ticket = query.as_any().encode_to_vec();
        ticket_info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let mut builder = query.into_builder();
        for name in self.engine.context().catalog_names() {
            builder.append(name);
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let ticket = query.as_any().encode_to_vec();
        ticket_info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let ctx = self.engine.context();
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            if let Some(catalog) = ctx.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(one_batch(schema, batch))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let ticket = query.as_any().encode_to_vec();
        ticket_info(request.into_inner(), ticket, &query.into_builder().schema())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let batch = self.tables(query).await?;
        Ok(one_batch(batch.schema(), batch))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        ticket_info(
            request.into_inner(),
            query.as_any().encode_to_vec(),
            &table_types().schema(),
        )
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let batch = table_types();
        Ok(one_batch(batch.schema(), batch))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(request.metadata())?;
        let ticket = query.as_any().encode_to_vec();
        let schema = query.into_builder(&SQL_INFO).schema();
        ticket_info(request.into_inner(), ticket, &schema)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(one_batch(schema, batch))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(request.metadata())?;
        Err(Status::unimplemented(format!(
            "vigil does not support the Flight SQL request {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The names JDBC and ODBC tools expect (DataFusion displays `Base`, `View`).
fn table_type_name(t: datafusion::datasource::TableType) -> &'static str {
    match t {
        datafusion::datasource::TableType::Base => "BASE TABLE",
        datafusion::datasource::TableType::View => "VIEW",
        datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
    }
}

/// The table types vigil has: measurements are base tables, the
/// `information_schema` and `pg_catalog` tables are views.
fn table_types() -> RecordBatch {
    let types: ArrayRef = Arc::new(StringArray::from(vec!["BASE TABLE", "VIEW"]));
    RecordBatch::try_from_iter(vec![("table_type", types)]).expect("one non-null column")
}
