//! The Postgres wire protocol front end: psql, psycopg, pgx (Grafana's Postgres
//! datasource), JDBC and every other Postgres client talk to vigil through it.
//!
//! Query handling, type mapping and the `pg_catalog` / `information_schema` shims
//! come from `datafusion-postgres`; this crate adds what a server needs around
//! them: password authentication, TLS that fails loudly when misconfigured,
//! connection cancellation, and the engine's shared session (every table, every
//! time-series function) so that pgwire sees exactly what HTTP and Flight see.

mod compat;
mod functions;
mod query;
mod rows;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use datafusion_postgres::pgwire::tokio::{process_socket, TlsAcceptor};
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::Sink;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use vigil_auth::{Permission, Principal, SecretHash, TokenStore};
use vigil_sql::QueryEngine;

/// What the Postgres front end listens on and whom it lets in.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub addr: SocketAddr,
    /// When tokens are configured, clients log in with SCRAM-SHA-256 as a token's
    /// name, with its secret as the password, and need the `query` permission.
    pub tokens: Arc<TokenStore>,
    /// PEM certificate chain and private key; both set turns TLS on, and then a
    /// client that does not start TLS is refused.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Errors of starting the Postgres front end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the Postgres address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: cannot read {path}: {message}")]
    TlsFile { path: PathBuf, message: String },
    #[error("TLS: invalid certificate or key: {0}")]
    Tls(String),
    #[error("cannot install the pg_catalog schema: {0}")]
    Catalog(String),
}

/// A bound Postgres listener, ready to serve.
pub struct PgServer {
    listener: TcpListener,
    handlers: Arc<VigilPgHandlers>,
    tls: Option<TlsAcceptor>,
}

impl PgServer {
    /// Installs `pg_catalog` and the Postgres compatibility functions in the
    /// engine's session and binds the address, so that a port in use or a bad
    /// certificate stops `vigil serve` at startup rather than at the first client.
    pub async fn bind(engine: Arc<QueryEngine>, config: &PgConfig) -> Result<Self, Error> {
        install_pg_compatibility(&engine)?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let connections = Arc::new(ConnectionManager::new());
        let cancels = Arc::new(session::Connections::default());
        // vigil's hook first: it runs every query on the engine and refuses shared
        // SETs; datafusion-postgres's own hooks answer the per-session statements.
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(query::EngineHook {
                engine: Arc::clone(&engine),
            }),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let session = Arc::new(session::VigilSession {
            inner: Arc::new(DfSessionService::new_with_hooks(
                Arc::new(engine.context().clone()),
                hooks,
            )),
            engine: Arc::clone(&engine),
        });
        let handlers = Arc::new(VigilPgHandlers {
            session,
            login: Arc::new(Login {
                tokens: Arc::clone(&config.tokens),
                secrets: Arc::new(ScramSecrets::new(Arc::clone(&config.tokens))),
                tls_required: tls.is_some(),
                connections: Arc::clone(&connections),
                cancels: Arc::clone(&cancels),
            }),
            cancel: Arc::new(session::VigilCancel {
                connections: cancels,
                planning: DefaultCancelHandler::new(connections),
            }),
        });
        Ok(Self {
            listener,
            handlers,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped; each connection runs on a task
    /// of its own, so idle connections cost a socket and a little memory each.
    pub async fn serve(self) {
        info!(addr = ?self.listener.local_addr().ok(), tls = self.tls.is_some(), "Postgres wire protocol listening");
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = Arc::clone(&self.handlers);
                    let tls = self.tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = process_socket(socket, tls, handlers).await {
                            debug!(%peer, error = %e, "Postgres connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a Postgres connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// `pg_catalog`, `current_setting`, `quote_ident`, `parse_ident`, ... in the shared
/// session, and a `version()` that Postgres clients recognise.
fn install_pg_compatibility(engine: &QueryEngine) -> Result<(), Error> {
    let ctx = engine.context();
    if ctx
        .catalog(vigil_sql::CATALOG)
        .and_then(|c| c.schema("pg_catalog"))
        .is_some()
    {
        return Ok(());
    }
    setup_pg_catalog(ctx, vigil_sql::CATALOG, EmptyContextProvider)
        .map_err(|e| Error::Catalog(e.to_string()))?;
    ctx.register_udf(version_udf());
    ctx.register_udf(current_setting_udf());
    ctx.register_udf(functions::quote_ident_udf());
    ctx.register_udf(functions::to_regtype_udf());
    ctx.register_udf(functions::information_schema_type_udf());
    ctx.register_udf(functions::information_schema_udt_udf());
    Ok(())
}

/// The server settings clients read at connect time (Grafana's schema browser reads
/// `search_path`); vigil's are fixed, so they are answered without a session.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "search_path" => "\"$user\", public",
        "server_version" => "16.0",
        "server_version_num" => "160000",
        "server_encoding" | "client_encoding" => "UTF8",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "max_identifier_length" => "63",
        "default_transaction_read_only" | "transaction_read_only" => "on",
        "is_superuser" => "on",
        _ => return None,
    })
}

/// `current_setting(name)`; an unknown name is an error, as in Postgres.
fn current_setting_udf() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            functions::over_text(&args[0], |names| {
                let values = names
                    .iter()
                    .map(|n| match n {
                        None => Ok(None),
                        Some(n) => setting(n).map(Some).ok_or_else(|| {
                            datafusion::error::DataFusionError::Plan(format!(
                                "unrecognized configuration parameter \"{n}\""
                            ))
                        }),
                    })
                    .collect::<datafusion::error::Result<StringArray>>()?;
                Ok(Arc::new(values))
            })
        }),
    )
}

/// Tools parse `version()` for "PostgreSQL <major>.<minor>" to pick their dialect.
fn version_udf() -> datafusion::logical_expr::ScalarUDF {
    let text = format!(
        "PostgreSQL 16.0 (vigil {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![
                text.clone(),
            ]))))
        }),
    )
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.0".to_string();
    p
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::TlsFile {
            path: cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::TlsFile {
            path: cert.clone(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::TlsFile {
        path: key.clone(),
        message: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// SCRAM-SHA-256 secrets: each token's salted hash, by token name. An unknown user
/// gets a made-up salt and hash, so the exchange fails exactly as for a wrong
/// password and says nothing about which names exist.
struct ScramSecrets {
    tokens: Arc<TokenStore>,
    unknown: SecretHash,
}

impl std::fmt::Debug for ScramSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecrets").finish_non_exhaustive()
    }
}

impl ScramSecrets {
    fn new(tokens: Arc<TokenStore>) -> Self {
        let unknown = SecretHash::new(&format!("{:032x}", rand::random::<u128>()));
        Self { tokens, unknown }
    }
}

#[async_trait]
impl AuthSource for ScramSecrets {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let secret = login
            .user()
            .and_then(|u| self.tokens.by_name(u))
            .map(|t| &t.secret)
            .unwrap_or(&self.unknown);
        Ok(Password::new(
            Some(secret.salt.clone()),
            secret.hash.clone(),
        ))
    }
}

/// Logging in: TLS when configured (a plaintext startup is refused), SCRAM-SHA-256
/// when tokens are configured, then the token's `query` permission. Every
/// connection gets a handler of its own (SCRAM keeps its exchange's state in it);
/// the login registers the connection so that a cancel request reaches its query.
struct Login {
    tokens: Arc<TokenStore>,
    secrets: Arc<ScramSecrets>,
    tls_required: bool,
    connections: Arc<ConnectionManager>,
    cancels: Arc<session::Connections>,
}

struct VigilStartup {
    login: Arc<Login>,
    scram: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
}

struct OpenStartup(Arc<ConnectionManager>);

impl NoopStartupHandler for OpenStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(Arc::clone(&self.0))
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for VigilStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.login.tls_required
            && matches!(message, PgWireFrontendMessage::Startup(_))
            && !client.is_secure()
        {
            // FATAL closes the connection; a lesser error would let the client in.
            return Err(fatal(
                "28000",
                "this server requires TLS: connect with sslmode=require (or verify-full)".into(),
            ));
        }
        match &self.scram {
            Some(handler) => handler.on_startup(client, message).await?,
            None => {
                OpenStartup(Arc::clone(&self.login.connections))
                    .on_startup(client, message)
                    .await?
            }
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && client.session_extensions().get::<Principal>().is_none()
        {
            let principal = match client.metadata().get("user").map(String::as_str) {
                _ if !self.login.tokens.enabled() => Principal::anonymous(),
                Some(user) => match self.login.tokens.by_name(user) {
                    Some(t) => t.principal.as_ref().clone(),
                    None => return Err(fatal("28P01", "authentication failed".into())),
                },
                None => return Err(fatal("28P01", "authentication failed".into())),
            };
            if let Err(e) = principal.require(Permission::Query) {
                return Err(fatal("42501", e.to_string()));
            }
            client.session_extensions().insert(principal);
            self.login.cancels.register(client);
        }
        Ok(())
    }
}

struct VigilPgHandlers {
    session: Arc<session::VigilSession>,
    login: Arc<Login>,
    cancel: Arc<session::VigilCancel>,
}

impl PgWireServerHandlers for VigilPgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let scram = self.login.tokens.enabled().then(|| {
            let mut scram = ScramAuth::new(Arc::clone(&self.login.secrets) as Arc<dyn AuthSource>);
            scram.set_iterations(vigil_auth::ITERATIONS as usize);
            SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                .with_scram(scram)
                .with_connection_manager(Arc::clone(&self.login.connections))
        });
        Arc::new(VigilStartup {
            login: Arc::clone(&self.login),
            scram,
        })
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LoggedErrors)
    }
}

/// Every error sent to a client is also logged, with the client's address.
struct LoggedErrors;

impl ErrorHandler for LoggedErrors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        debug!(peer = %client.socket_addr(), error = %error, "Postgres error sent to client");
    }
}
