//! The `vigil` binary: `serve` runs everything in one process; `query` and `write`
//! talk to a running server over HTTP.

mod cli;
mod config;
mod health;
mod http;
mod metrics;
mod restore;
mod tls;
mod udp;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ServeArgs};

/// mimalloc instead of glibc's malloc: ingest builds and drops many small Arrow
/// buffers and strings per request, and glibc spent a quarter of the remote-write
/// receive CPU in malloc/free and kept freed memory fragmented across its arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the kernel from backing mimalloc's arenas with transparent huge pages.
/// mimalloc asks for them, and every fresh or purged region then faulted in a
/// whole 2 MiB page the kernel zeroed first: 14 % of vigil's CPU while receiving
/// remote write (`clear_page_erms` under `do_huge_pmd_anonymous_page`), about
/// 2 of 18 CPU-seconds in `benches/run-remote-write.py`; without them those runs
/// were no slower (measured with `MIMALLOC_ALLOW_THP=0`, then with this call).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a
    // flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

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
    /// Administration of a running server: `vigil admin maintenance` runs
    /// compaction, retention and tiering now and prints what they did.
    #[command(subcommand)]
    Admin(cli::AdminCommand),
    /// Bring archived data back (`[cold_tier] archive = true`) on a running
    /// server: `--table T --from TS --to TS`, `--list`, `--drop ID`, `--resume ID`.
    Restore(cli::RestoreArgs),
    /// Alert and recording rules: `vigil rules check FILE... [--url URL]`,
    /// `vigil rules test TESTFILE...`.
    #[command(subcommand)]
    Rules(cli::RulesCommand),
    /// Silences: `vigil silence add MATCHER... --duration 2h`, `list`,
    /// `expire ID` (Alertmanager's v2 API on the server).
    #[command(subcommand)]
    Silence(cli::SilenceCommand),
    /// Tokens: `vigil auth hash` reads a secret on stdin and prints the hash to put
    /// in `[[auth.tokens]] secret_hash`.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Hash a secret (read from stdin, first line) for `secret_hash`.
    Hash,
    /// Make a new random secret and print it with its hash.
    New,
}

fn main() -> anyhow::Result<()> {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            configure_failpoints()?;
            let config = args.load()?;
            init_logging(&config);
            rt.block_on(serve(config))
        }
        Command::Query(args) => rt.block_on(cli::query(args)),
        Command::Write(args) => rt.block_on(cli::write(args)),
        Command::Admin(cli::AdminCommand::Maintenance(args)) => rt.block_on(cli::maintenance(args)),
        Command::Restore(args) => rt.block_on(cli::restore(args)),
        Command::Rules(cli::RulesCommand::Check(args)) => rt.block_on(cli::rules_check(args)),
        Command::Rules(cli::RulesCommand::Test(args)) => rt.block_on(cli::rules_test(args)),
        Command::Silence(cmd) => rt.block_on(cli::silence(cmd)),
        Command::Auth(AuthCommand::Hash) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let secret = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            println!("{}", vigil_auth::SecretHash::new(secret).encode());
            Ok(())
        }
        Command::Auth(AuthCommand::New) => {
            let secret = format!("vt_{:032x}", rand::random::<u128>());
            println!("secret:      {secret}");
            println!(
                "secret_hash: {}",
                vigil_auth::SecretHash::new(&secret).encode()
            );
            Ok(())
        }
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
    // A scrape config with errors stops the start before anything runs.
    let scrape_jobs = match &config.scrape.config {
        Some(path) => Some(vigil_scrape::load(path)?),
        None => None,
    };
    let tokens = Arc::new(config.token_store()?);
    config.check_exposure(tokens.enabled())?;
    if !tokens.enabled() {
        info!("no tokens configured: authentication is off and vigil serves loopback clients only");
    }
    let mut storage_config = config.storage_config();
    if let Some(options) = config.cold_store_options() {
        storage_config.cold_store = Some(vigil_cold_tier::open_cold_store(&options)?);
    }
    let storage = vigil_storage::Storage::open(storage_config)
        .await
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    let engine = Arc::new(vigil_sql::QueryEngine::new(
        Arc::clone(&storage),
        config.query_config(),
    )?);
    let mut maintenance = vigil_cold_tier::Maintenance::new(
        Arc::clone(&storage),
        vigil_cold_tier::MaintenancePolicy {
            hot_window: config.cold_tier.hot_window,
        },
    );
    if config.rollups.enabled {
        maintenance = maintenance.with_step(Arc::new(vigil_rollup::Rollups::new(
            Arc::clone(&engine),
            Arc::clone(&storage),
            config.rollups.delay,
        )));
    }
    let maintenance = Arc::new(maintenance);
    {
        let s = Arc::clone(&storage);
        engine.register_system_table(
            "rollups",
            vigil_rollup::Rollups::watermark_schema(),
            Arc::new(move || Ok(vigil_rollup::Rollups::watermarks(&s)?)),
        );
    }
    {
        let m = Arc::clone(&maintenance);
        engine.register_system_table(
            "maintenance",
            vigil_cold_tier::MaintenanceReport::schema(),
            Arc::new(move || Ok(vigil_cold_tier::MaintenanceReport::to_batch(&m.history())?)),
        );
    }
    let pipeline = Arc::new(vigil_ingest::WritePipeline::new(
        Arc::clone(&storage),
        config.write_limits(),
    ));
    // Rules evaluate through the one query path; recording rules write
    // through the one write pipeline.
    let alerting = vigil_alert::Alerting::open(
        config.alerting_config(),
        Arc::clone(&engine),
        Arc::clone(&pipeline),
    )?;
    {
        let a = Arc::clone(&alerting);
        engine.register_system_table(
            "alerts",
            vigil_alert::Alerting::alerts_schema(),
            Arc::new(move || Ok(a.alerts_batch()?)),
        );
        let a = Arc::clone(&alerting);
        engine.register_system_table(
            "rules",
            vigil_alert::Alerting::rules_schema(),
            Arc::new(move || Ok(a.rules_batch()?)),
        );
        let a = Arc::clone(&alerting);
        engine.register_system_table(
            "notifications",
            vigil_alert::Alerting::notifications_schema(),
            Arc::new(move || Ok(a.notifications_batch()?)),
        );
        let a = Arc::clone(&alerting);
        engine.register_system_table(
            "alert_history",
            vigil_alert::Alerting::history_schema(),
            Arc::new(move || Ok(a.history_batch()?)),
        );
    }
    let metrics = Arc::new(metrics::ServerMetrics::new(&storage, &engine, &alerting));
    let forwarder = match (config.mode, &config.kafka.brokers) {
        (config::Mode::Collector, Some(_)) => Some(Arc::new(vigil_kafka::KafkaForwarder::new(
            &config.kafka_config(),
            metrics.kafka.clone(),
        )?)),
        _ => None,
    };
    let health = Arc::new(health::Health::default());
    let state = Arc::new(http::AppState {
        storage: Arc::clone(&storage),
        tokens: Arc::clone(&tokens),
        insecure: config.auth.insecure,
        health: Arc::clone(&health),
        pipeline: Arc::clone(&pipeline),
        engine,
        metrics,
        max_body_bytes: config.http.max_body_bytes,
        forwarder,
        maintenance: Arc::clone(&maintenance),
        restores: Arc::default(),
        alerting: Arc::clone(&alerting),
    });
    state.restores.resume_all(&state.storage);
    let flight = vigil_flight::FlightServer::bind(
        Arc::clone(&state.engine),
        &vigil_flight::FlightConfig {
            addr: config.flight.addr,
            auth: vigil_flight::FlightAuth::new(Arc::clone(&tokens)),
            tls: config.tls_files(),
        },
    )
    .await?;
    let pg = vigil_pg::PgServer::bind(
        Arc::clone(&state.engine),
        &vigil_pg::PgConfig {
            addr: config.pg.addr,
            tokens: Arc::clone(&tokens),
            tls: config.tls_files(),
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http.addr))?;
    let https = match config.tls_files() {
        Some((cert, key)) => Some(tls::acceptor(&cert, &key)?),
        None => None,
    };
    info!(
        http = %listener.local_addr()?,
        flight = %flight.local_addr()?,
        pg = %pg.local_addr()?,
        data_dir = %config.data_dir.display(),
        mode = ?config.mode,
        "vigil is serving"
    );
    let flight_health = Arc::clone(&health);
    let flight_task = tokio::spawn(async move {
        if let Err(e) = flight.serve().await {
            error!(error = %e, "Flight SQL server stopped");
            flight_health.fail("flight", format!("Flight SQL server stopped: {e}"));
        }
    });
    let pg_task = tokio::spawn(pg.serve());
    let (kafka_stop, kafka_stop_rx) = tokio::sync::watch::channel(false);
    let kafka_task = match (config.mode, &config.kafka.brokers) {
        (config::Mode::Standalone, Some(_)) => {
            let ingest = vigil_kafka::KafkaIngest::new(
                Arc::clone(&pipeline),
                config.kafka_config(),
                state.metrics.kafka.clone(),
            )?;
            let run = tokio::spawn(ingest.run(kafka_stop_rx));
            let kafka_health = Arc::clone(&health);
            // A consumer that stops (or panics) on its own is reported, never lost.
            Some(tokio::spawn(async move {
                let reason = match run.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("Kafka consumer task failed: {e}"),
                };
                error!(error = %reason, "Kafka consumption stopped");
                kafka_health.fail("kafka", reason);
            }))
        }
        _ => None,
    };

    // Flushing, compaction and deleting replaced files; their failures show on
    // /health through the storage engine's problems.
    let jobs = storage.start_jobs(config.storage.compaction_interval);
    let maintenance_schedule = maintenance.start(config.maintenance.interval);
    let alerting_tasks = alerting.start();
    // Scraped samples go through the one write pipeline's limits; a collector
    // produces them to Kafka as remote write, as it does with pushed writes.
    let scrape_writer = match &state.forwarder {
        Some(forwarder) => {
            let forwarder = Arc::clone(forwarder);
            let forward: vigil_scrape::Forward = Arc::new(move |request| {
                let forwarder = Arc::clone(&forwarder);
                Box::pin(async move {
                    // Encoding is CPU work: off the async workers.
                    let batch = tokio::task::spawn_blocking(move || {
                        vigil_kafka::ForwardBatch::remote_write(request)
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    forwarder.send(batch).await.map_err(|e| e.to_string())
                })
            });
            vigil_scrape::ScrapeWriter::forwarding(Arc::clone(&pipeline), forward)
        }
        None => vigil_scrape::ScrapeWriter::storage(Arc::clone(&pipeline)),
    };
    let scrapes = scrape_jobs.map(|jobs| {
        vigil_scrape::start(
            jobs,
            Arc::new(scrape_writer),
            state.metrics.scrape.clone(),
            config.scrape_ring(),
        )
    });
    let udp = match config.udp.addr {
        Some(addr) => Some(
            udp::UdpListener::start(
                addr,
                config.udp.hmac_key.clone(),
                config
                    .udp
                    .precision
                    .parse()
                    .unwrap_or(vigil_ingest::Precision::Nanosecond),
                Arc::clone(&pipeline),
                state.metrics.udp.clone(),
            )
            .await
            .with_context(|| format!("binding UDP address {addr}"))?,
        ),
        None => None,
    };
    let app = http::router(state);
    match https {
        Some(acceptor) => {
            axum::serve(tls::TlsListener::new(listener, acceptor)?, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?
        }
    }
    flight_task.abort();
    pg_task.abort();
    // Let a running flush finish rather than abandoning it halfway.
    maintenance_schedule.stop().await;
    alerting_tasks.stop().await;
    if let Some(u) = udp {
        u.stop().await;
    }
    if let Some(s) = scrapes {
        s.stop().await;
    }
    jobs.stop().await;
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

/// Crash tests pause the server at named points of a flush or compaction
/// (`VIGIL_FAILPOINTS="compaction-before-commit=sleep(60000)"`, several separated
/// by `;`) and kill it there; without the variable no point does anything.
fn configure_failpoints() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("VIGIL_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let (name, action) = item
            .split_once('=')
            .with_context(|| format!("VIGIL_FAILPOINTS: '{item}' is not name=action"))?;
        fail::cfg(name.trim(), action.trim())
            .map_err(|e| anyhow::anyhow!("VIGIL_FAILPOINTS: '{item}': {e}"))?;
    }
    Ok(())
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
