//! vigil's configuration: one typed struct, layered defaults < TOML file < `VIGIL_*`
//! environment variables < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// `standalone` stores what it receives; `collector` produces it to Kafka.
    pub mode: Mode,
    /// Where the WAL, Parquet files and catalog live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub flight: FlightSection,
    pub pg: PgSection,
    pub auth: AuthSection,
    pub tls: TlsSection,
    pub kafka: KafkaSection,
    pub storage: StorageSection,
    pub query: QuerySection,
    pub log: LogSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpConfig {
    pub addr: SocketAddr,
    /// Request bodies above this size (after gzip decompression) get 413.
    pub max_body_bytes: usize,
}

/// Arrow Flight SQL (ADBC, JDBC, Grafana FlightSQL).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FlightSection {
    pub addr: SocketAddr,
}

/// The Postgres wire protocol (psql, psycopg, pgx, Grafana's Postgres datasource).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PgSection {
    pub addr: SocketAddr,
}

/// Credentials for the query front ends; none set means no authentication (the
/// default listens on loopback only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// Flight SQL bearer token.
    pub token: Option<String>,
    /// User name for pgwire and Flight SQL basic auth.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What `vigil serve` does with the writes it receives.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Stores writes itself (and consumes Kafka when brokers are set).
    #[default]
    Standalone,
    /// Produces every write to Kafka, keyed by metric name, and stores nothing.
    Collector,
}

/// Kafka: consuming line protocol and remote write as a member of a consumer group
/// (standalone), or producing to it (collector); off unless `brokers` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KafkaSection {
    pub brokers: Option<String>,
    pub topic: String,
    pub group: String,
    /// Messages written in one storage commit at most.
    pub max_batch: usize,
    /// Topic that receives a copy of each message with rejected lines.
    pub dead_letter_topic: Option<String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: "vigil".into(),
            group: "vigil".into(),
            max_batch: 1000,
            dead_letter_topic: None,
        }
    }
}

/// TLS for Flight SQL and pgwire: on when both files are set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for FlightSection {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8182".parse().unwrap(),
        }
    }
}

impl Default for PgSection {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8183".parse().unwrap(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSection {
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    pub flush_max_rows: usize,
    pub flush_max_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub compaction_interval: Duration,
    pub compaction_min_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuerySection {
    pub memory_limit_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub result_cache_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `vigil=debug`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Standalone,
            data_dir: PathBuf::from("./vigil-data"),
            http: HttpConfig::default(),
            flight: FlightSection::default(),
            pg: PgSection::default(),
            auth: AuthSection::default(),
            tls: TlsSection::default(),
            kafka: KafkaSection::default(),
            storage: StorageSection::default(),
            query: QuerySection::default(),
            log: LogSection::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8181".parse().unwrap(),
            max_body_bytes: 64 << 20,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        let s = vigil_storage::StorageConfig::new(".");
        Self {
            flush_interval: s.flush_interval,
            flush_max_rows: s.flush_max_rows,
            flush_max_bytes: s.flush_max_bytes,
            compaction_interval: Duration::from_secs(60),
            compaction_min_files: s.compaction_min_files,
        }
    }
}

impl Default for QuerySection {
    fn default() -> Self {
        let q = vigil_sql::QueryConfig::default();
        Self {
            memory_limit_bytes: q.memory_limit_bytes,
            timeout: q.timeout,
            result_cache_bytes: q.result_cache_bytes,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub(crate) fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.http.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "http.max_body_bytes must be > 0".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be 'text' or 'json', not '{}'",
                self.log.format
            )));
        }
        if self.auth.username.is_some() != self.auth.password.is_some() {
            return Err(ConfigError::Invalid(
                "auth.username and auth.password must be set together".into(),
            ));
        }
        if self.mode == Mode::Collector && self.kafka.brokers.is_none() {
            return Err(ConfigError::Invalid(
                "mode 'collector' produces to Kafka: set kafka.brokers (--kafka-brokers)".into(),
            ));
        }
        if self.kafka.max_batch == 0 {
            return Err(ConfigError::Invalid("kafka.max_batch must be > 0".into()));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set together".into(),
            ));
        }
        if self.storage.flush_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.flush_interval must be > 0".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn storage_config(&self) -> vigil_storage::StorageConfig {
        let mut s = vigil_storage::StorageConfig::new(&self.data_dir);
        s.flush_interval = self.storage.flush_interval;
        s.flush_max_rows = self.storage.flush_max_rows;
        s.flush_max_bytes = self.storage.flush_max_bytes;
        s.compaction_min_files = self.storage.compaction_min_files;
        s
    }

    pub(crate) fn kafka_config(&self) -> vigil_kafka::KafkaConfig {
        vigil_kafka::KafkaConfig {
            brokers: self.kafka.brokers.clone().unwrap_or_default(),
            topic: self.kafka.topic.clone(),
            group: self.kafka.group.clone(),
            max_batch: self.kafka.max_batch,
            dead_letter_topic: self.kafka.dead_letter_topic.clone(),
        }
    }

    /// User and password, when configured.
    pub(crate) fn credentials(&self) -> Option<(String, String)> {
        match (&self.auth.username, &self.auth.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        }
    }

    /// Certificate and key, when TLS is configured.
    pub(crate) fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.tls.cert, &self.tls.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        }
    }

    pub(crate) fn query_config(&self) -> vigil_sql::QueryConfig {
        vigil_sql::QueryConfig {
            memory_limit_bytes: self.query.memory_limit_bytes,
            timeout: self.query.timeout,
            target_partitions: 0,
            result_cache_bytes: self.query.result_cache_bytes,
        }
    }
}

/// Flags of `vigil serve`; each also reads a `VIGIL_*` variable and overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8181].
    #[arg(long, env = "VIGIL_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Arrow Flight SQL listen address [default: 127.0.0.1:8182].
    #[arg(long, env = "VIGIL_FLIGHT_ADDR")]
    pub flight_addr: Option<SocketAddr>,
    /// Postgres wire protocol listen address [default: 127.0.0.1:8183].
    #[arg(long, env = "VIGIL_PG_ADDR")]
    pub pg_addr: Option<SocketAddr>,
    /// Bearer token Flight SQL clients must send [default: none].
    #[arg(long, env = "VIGIL_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// User name for pgwire and Flight SQL basic auth [default: none].
    #[arg(long, env = "VIGIL_AUTH_USERNAME")]
    pub auth_username: Option<String>,
    /// Password for --auth-username.
    #[arg(long, env = "VIGIL_AUTH_PASSWORD")]
    pub auth_password: Option<String>,
    /// PEM certificate chain: TLS for Flight SQL and pgwire (with --tls-key).
    #[arg(long, env = "VIGIL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "VIGIL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// standalone: store writes (and consume Kafka if brokers are set); collector:
    /// produce writes to Kafka keyed by metric [default: standalone].
    #[arg(long, env = "VIGIL_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Kafka bootstrap servers (host:port,...): consume from Kafka (or produce to it
    /// in collector mode).
    #[arg(long, env = "VIGIL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic to consume [default: vigil].
    #[arg(long, env = "VIGIL_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Kafka consumer group [default: vigil].
    #[arg(long, env = "VIGIL_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Kafka topic that gets a copy of each message with rejected lines [default: none].
    #[arg(long, env = "VIGIL_KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Largest accepted request body in bytes [default: 67108864].
    #[arg(long, env = "VIGIL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Flush the buffer to Parquet at least this often [default: 5m].
    #[arg(long, env = "VIGIL_FLUSH_INTERVAL")]
    pub flush_interval: Option<humantime::Duration>,
    /// Flush when the buffer holds this many rows [default: 1000000].
    #[arg(long, env = "VIGIL_FLUSH_MAX_ROWS")]
    pub flush_max_rows: Option<usize>,
    /// Flush when the buffer holds this many bytes [default: 268435456].
    #[arg(long, env = "VIGIL_FLUSH_MAX_BYTES")]
    pub flush_max_bytes: Option<usize>,
    /// How often the compactor looks for small files [default: 1m].
    #[arg(long, env = "VIGIL_COMPACTION_INTERVAL")]
    pub compaction_interval: Option<humantime::Duration>,
    /// Merge a day's small files once there are this many [default: 4].
    #[arg(long, env = "VIGIL_COMPACTION_MIN_FILES")]
    pub compaction_min_files: Option<usize>,
    /// Memory one query may use, in bytes [default: 4294967296].
    #[arg(long, env = "VIGIL_QUERY_MEMORY_LIMIT")]
    pub query_memory_limit: Option<usize>,
    /// Memory for cached results of queries over flushed data, 0 = off [default: 67108864].
    #[arg(long, env = "VIGIL_QUERY_RESULT_CACHE_BYTES")]
    pub query_result_cache_bytes: Option<usize>,
    /// Query timeout [default: 5m].
    #[arg(long, env = "VIGIL_QUERY_TIMEOUT")]
    pub query_timeout: Option<humantime::Duration>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "VIGIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or vigil=debug [default: info].
    #[arg(long, env = "VIGIL_LOG")]
    pub log_filter: Option<String>,
}

impl ServeArgs {
    /// Builds the effective configuration: defaults, then the file, then env/flags.
    pub(crate) fn load(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.http_addr {
            c.http.addr = v;
        }
        if let Some(v) = self.flight_addr {
            c.flight.addr = v;
        }
        if let Some(v) = self.pg_addr {
            c.pg.addr = v;
        }
        if let Some(v) = &self.auth_token {
            c.auth.token = Some(v.clone());
        }
        if let Some(v) = &self.auth_username {
            c.auth.username = Some(v.clone());
        }
        if let Some(v) = &self.auth_password {
            c.auth.password = Some(v.clone());
        }
        if let Some(v) = &self.tls_cert {
            c.tls.cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            c.tls.key = Some(v.clone());
        }
        if let Some(v) = &self.kafka_brokers {
            c.kafka.brokers = Some(v.clone());
        }
        if let Some(v) = &self.kafka_topic {
            c.kafka.topic = v.clone();
        }
        if let Some(v) = &self.kafka_group {
            c.kafka.group = v.clone();
        }
        if let Some(v) = &self.kafka_dead_letter_topic {
            c.kafka.dead_letter_topic = Some(v.clone());
        }
        if let Some(v) = self.mode {
            c.mode = v;
        }
        if let Some(v) = self.max_body_bytes {
            c.http.max_body_bytes = v;
        }
        if let Some(v) = self.flush_interval {
            c.storage.flush_interval = v.into();
        }
        if let Some(v) = self.flush_max_rows {
            c.storage.flush_max_rows = v;
        }
        if let Some(v) = self.flush_max_bytes {
            c.storage.flush_max_bytes = v;
        }
        if let Some(v) = self.compaction_interval {
            c.storage.compaction_interval = v.into();
        }
        if let Some(v) = self.compaction_min_files {
            c.storage.compaction_min_files = v;
        }
        if let Some(v) = self.query_memory_limit {
            c.query.memory_limit_bytes = v;
        }
        if let Some(v) = self.query_result_cache_bytes {
            c.query.result_cache_bytes = v;
        }
        if let Some(v) = self.query_timeout {
            c.query.timeout = v.into();
        }
        if let Some(v) = &self.log_format {
            c.log.format = v.clone();
        }
        if let Some(v) = &self.log_filter {
            c.log.filter = v.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vigil.toml");
        std::fs::write(
            &p,
            "data_dir = \"/tmp/x\"\n[http]\naddr = \"127.0.0.1:9999\"\n[storage]\nflush_interval = \"10s\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(p.clone()),
            http_addr: Some("127.0.0.1:7777".parse().unwrap()),
            ..Default::default()
        };
        let c = args.load().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.http.addr.port(), 7777);
        assert_eq!(c.storage.flush_interval, Duration::from_secs(10));
        std::fs::write(&p, "[http]\nadr = \"x\"\n").unwrap();
        let err = args.load().unwrap_err().to_string();
        assert!(err.contains("unknown field `adr`"), "{err}");
    }
}
