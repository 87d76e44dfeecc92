//! The Arrow Flight SQL front end: ADBC and JDBC clients, notebooks and Grafana's
//! FlightSQL datasource read query results as Arrow, streamed batch by batch.
//!
//! Every query goes through [`QueryEngine::plan`] and [`QueryEngine::execute`], so it
//! gets the same tables and time-series functions as HTTP and pgwire, a memory pool
//! of its own, the query timeout, and is freed when the client stops reading.
//! `datafusion-flight-sql-server` was the model; vigil implements the service itself
//! because it needs `GetSqlInfo`, the basic-auth handshake, schemas listed without a
//! catalog filter (JDBC's `getSchemas()`), and dictionary-free result schemas that
//! match the announced `FlightInfo` exactly (ADBC checks).

mod auth;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;
use vigil_sql::QueryEngine;

pub use auth::FlightAuth;
pub use service::VigilFlightSqlService;

/// What the Flight SQL front end listens on and whom it lets in.
#[derive(Debug, Clone)]
pub struct FlightConfig {
    pub addr: SocketAddr,
    pub auth: FlightAuth,
    /// PEM certificate chain and private key; both set turns TLS on.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Errors of starting the Flight SQL front end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the Flight SQL address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Flight SQL server failed: {0}")]
    Serve(String),
}

/// A bound Flight SQL listener, ready to serve.
pub struct FlightServer {
    listener: TcpListener,
    service: VigilFlightSqlService,
    tls: Option<ServerTlsConfig>,
}

impl FlightServer {
    /// Binds the address and reads the TLS files, so that a port in use or a missing
    /// certificate stops `vigil serve` at startup.
    pub async fn bind(engine: Arc<QueryEngine>, config: &FlightConfig) -> Result<Self, Error> {
        let tls = match &config.tls {
            Some((cert, key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| Error::TlsFile {
                        path: path.clone(),
                        source,
                    })
                };
                Some(ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)))
            }
            None => None,
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        Ok(Self {
            listener,
            service: VigilFlightSqlService::new(engine, config.auth.clone()),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped or the server fails.
    pub async fn serve(self) -> Result<(), Error> {
        info!(addr = ?self.listener.local_addr().ok(), tls = self.tls.is_some(), "Flight SQL listening");
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| Error::Tls(e.to_string()))?;
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        builder
            .add_service(FlightServiceServer::new(self.service).max_decoding_message_size(64 << 20))
            .serve_with_incoming(incoming)
            .await
            .map_err(|e| Error::Serve(e.to_string()))
    }
}
