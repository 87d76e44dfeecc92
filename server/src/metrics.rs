//! vigil's own metrics, served on `/metrics` in Prometheus text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub(crate) struct ServerMetrics {
    registry: Registry,
    pub write_requests: Counter,
    pub write_errors: Counter,
    /// HTTP requests refused for missing, wrong or insufficient credentials.
    pub auth_failures: Counter,
    /// Whole writes refused, by the limit or failure that refused them.
    pub writes_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub rows_written: Counter,
    pub lines_rejected: Counter,
    pub bytes_received: Counter,
    pub queries: Counter,
    pub query_errors: Counter,
    pub query_duration: Histogram,
    pub kafka: vigil_kafka::KafkaMetrics,
    pub udp: crate::udp::UdpMetrics,
    pub scrape: vigil_scrape::ScrapeMetrics,
}

impl ServerMetrics {
    pub(crate) fn new(
        storage: &vigil_storage::Storage,
        engine: &vigil_sql::QueryEngine,
        alerting: &vigil_alert::Alerting,
    ) -> Self {
        let mut registry = Registry::default();
        alerting.register_metrics(&mut registry);
        let m = Self {
            write_requests: Counter::default(),
            write_errors: Counter::default(),
            auth_failures: Counter::default(),
            writes_refused: Family::default(),
            rows_written: Counter::default(),
            lines_rejected: Counter::default(),
            bytes_received: Counter::default(),
            queries: Counter::default(),
            query_errors: Counter::default(),
            query_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            kafka: vigil_kafka::KafkaMetrics::default(),
            udp: crate::udp::UdpMetrics::default(),
            scrape: vigil_scrape::ScrapeMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "vigil_write_requests",
            "Write requests received",
            m.write_requests.clone(),
        );
        registry.register(
            "vigil_write_errors",
            "Write requests that failed entirely",
            m.write_errors.clone(),
        );
        registry.register(
            "vigil_http_auth_failures",
            "HTTP requests refused for missing, wrong or insufficient credentials (or a non-loopback Host without authentication)",
            m.auth_failures.clone(),
        );
        registry.register(
            "vigil_writes_refused",
            "Write requests refused whole, by reason (body_too_large, bad_gzip, bad_utf8, bad_remote_write, backpressure, storage)",
            m.writes_refused.clone(),
        );
        registry.register(
            "vigil_rows_written",
            "Rows acknowledged to writers",
            m.rows_written.clone(),
        );
        registry.register(
            "vigil_lines_rejected",
            "Lines rejected (parse errors, type conflicts)",
            m.lines_rejected.clone(),
        );
        registry.register(
            "vigil_write_bytes",
            "Bytes of write request bodies as received (before decompression)",
            m.bytes_received.clone(),
        );
        registry.register("vigil_queries", "SQL queries run", m.queries.clone());
        registry.register(
            "vigil_query_errors",
            "SQL queries that failed",
            m.query_errors.clone(),
        );
        registry.register(
            "vigil_query_duration_seconds",
            "SQL query latency",
            m.query_duration.clone(),
        );
        storage.metrics().register(&mut registry);
        storage.cold_metrics().register(&mut registry);
        engine.register_metrics(&mut registry);
        m.kafka.register(&mut registry);
        m.udp.register(&mut registry);
        m.scrape.register(&mut registry);
        Self { registry, ..m }
    }

    pub(crate) fn count_refused_write(&self, e: &vigil_ingest::WriteError) {
        use vigil_ingest::{RemoteWriteError, WriteError};
        let reason = match e {
            WriteError::TooLarge { .. }
            | WriteError::RemoteWrite(RemoteWriteError::TooLarge { .. }) => "body_too_large",
            WriteError::Gzip(_) => "bad_gzip",
            WriteError::NotUtf8 { .. } => "bad_utf8",
            WriteError::RemoteWrite(
                RemoteWriteError::TooManySeries { .. }
                | RemoteWriteError::TooManyLabelValues { .. },
            ) => "request_too_big",
            WriteError::RemoteWrite(_) => "bad_remote_write",
            WriteError::Backpressure => "backpressure",
            WriteError::Storage(_) => "storage",
        };
        self.writes_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
