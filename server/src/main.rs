//! The `vigil` binary: `serve` runs everything in one process; `query` and `write`
//! talk to a running server over HTTP.

mod cli;
mod config;
mod http;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Metrics monitoring and alerting: ingest, store, query in SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (ingest, storage and SQL in one process).
    Serve(Box<ServeArgs>),
    /// Run a SQL query against a running server.
    Query(cli::QueryArgs),
    /// Send line protocol from a file (or `-` for stdin) to a running server.
    Write(cli::WriteArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            init_logging(&config);
            rt.block_on(serve(config))
        }
        Command::Query(args) => rt.block_on(cli::query(args)),
        Command::Write(args) => rt.block_on(cli::write(args)),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let storage = vigil_storage::Storage::open(config.storage_config())
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    let engine = Arc::new(vigil_sql::QueryEngine::new(
        Arc::clone(&storage),
        config.query_config(),
    )?);
    let metrics = Arc::new(metrics::ServerMetrics::new(storage.metrics(), &engine));
    let forwarder = match (config.mode, &config.kafka.brokers) {
        (config::Mode::Collector, Some(_)) => Some(Arc::new(vigil_kafka::KafkaForwarder::new(
            &config.kafka_config(),
            metrics.kafka.clone(),
        )?)),
        _ => None,
    };
    let state = Arc::new(http::AppState {
        storage: Arc::clone(&storage),
        engine,
        metrics,
        max_body_bytes: config.http.max_body_bytes,
        forwarder,
    });
    let flight = vigil_flight::FlightServer::bind(
        Arc::clone(&state.engine),
        &vigil_flight::FlightConfig {
            addr: config.flight.addr,
            auth: vigil_flight::FlightAuth::new(config.auth.token.clone(), config.credentials()),
            tls: config.tls_files(),
        },
    )
    .await?;
    let pg = vigil_pg::PgServer::bind(
        Arc::clone(&state.engine),
        &vigil_pg::PgConfig {
            addr: config.pg.addr,
            credentials: config.credentials(),
            tls: config.tls_files(),
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http.addr))?;
    info!(
        http = %listener.local_addr()?,
        flight = %flight.local_addr()?,
        pg = %pg.local_addr()?,
        data_dir = %config.data_dir.display(),
        mode = ?config.mode,
        "vigil is serving"
    );
    let flight_task = tokio::spawn(async move {
        if let Err(e) = flight.serve().await {
            error!(error = %e, "Flight SQL server stopped");
        }
    });
    let pg_task = tokio::spawn(pg.serve());
    let (kafka_stop, kafka_stop_rx) = tokio::sync::watch::channel(false);
    let kafka_task = match (config.mode, &config.kafka.brokers) {
        (config::Mode::Standalone, Some(_)) => {
            let ingest = vigil_kafka::KafkaIngest::new(
                Arc::clone(&storage),
                config.kafka_config(),
                state.metrics.kafka.clone(),
            )?;
            Some(tokio::spawn(ingest.run(kafka_stop_rx)))
        }
        _ => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(background_tasks(
        Arc::clone(&storage),
        config.storage.compaction_interval,
        stop_rx,
    ));
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    flight_task.abort();
    pg_task.abort();
    // Let a running flush or compaction finish rather than abandoning it halfway.
    let _ = stop_tx.send(true);
    let _ = background.await;
    info!("shutting down: flushing the buffer");
    // Kafka stops reading first; its offsets are committed once the shutdown flush
    // has persisted what it wrote.
    let _ = kafka_stop.send(true);
    storage.shutdown().await.context("flushing at shutdown")?;
    if let Some(task) = kafka_task {
        let _ = task.await;
    }
    info!("stopped");
    Ok(())
}

/// Flushes when the buffer is full or old, compacts on an interval.
async fn background_tasks(
    storage: Arc<vigil_storage::Storage>,
    compaction_interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_compaction = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = storage.flush_wanted() => {}
            _ = stop.changed() => return,
        }
        if storage.should_flush() {
            if let Err(e) = storage.flush().await {
                error!(error = %e, "flush failed");
            }
        }
        if last_compaction.elapsed() >= compaction_interval {
            last_compaction = tokio::time::Instant::now();
            if let Err(e) = storage.compact().await {
                error!(error = %e, "compaction failed");
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutdown signal received");
}
