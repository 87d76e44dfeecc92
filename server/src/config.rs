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
    pub write: WriteSection,
    pub query: QuerySection,
    pub log: LogSection,
    pub retention: RetentionSection,
    pub rollups: RollupSection,
    pub cold_tier: ColdTierSection,
    pub maintenance: MaintenanceSection,
    pub alerting: AlertingSection,
    pub udp: UdpSection,
    pub scrape: ScrapeSection,
}

/// A retention period: a duration (`7d`, `36h`) or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Forever,
    For(Duration),
}

impl Period {
    pub(crate) fn duration(self) -> Option<Duration> {
        match self {
            Period::Forever => None,
            Period::For(d) => Some(d),
        }
    }
}

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Period::Forever);
        }
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("'{s}' is not a duration (like 7d or 36h) or 'forever': {e}"))?;
        if d < Duration::from_secs(60) {
            return Err(format!(
                "'{s}' is shorter than a minute; write 'forever' to keep data without end"
            ));
        }
        Ok(Period::For(d))
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Forever => f.write_str("forever"),
            Period::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[retention]`: how long raw data is kept, with per-table overrides
/// (`[retention.tables.debug] raw = "1d"`). Queries never return older rows;
/// maintenance deletes the files holding them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetentionSection {
    pub raw: Period,
    pub rollup_10m: Period,
    pub rollup_1h: Period,
    pub tables: std::collections::BTreeMap<String, TableRetention>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TableRetention {
    pub raw: Option<Period>,
    pub rollup_10m: Option<Period>,
    pub rollup_1h: Option<Period>,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            raw: Period::For(Duration::from_secs(7 * 86_400)),
            rollup_10m: Period::For(Duration::from_secs(30 * 86_400)),
            rollup_1h: Period::For(Duration::from_secs(365 * 86_400)),
            tables: Default::default(),
        }
    }
}

/// `[rollups]`: 10-minute and 1-hour rollups of every table, built by
/// maintenance once a bucket is `delay` old (later writes re-roll it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RollupSection {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Aggregates over time buckets of 10 minutes or more read the rollups where
    /// they answer exactly (raw rows elsewhere); off reads raw rows only.
    pub read: bool,
}

impl Default for RollupSection {
    fn default() -> Self {
        Self {
            enabled: true,
            delay: Duration::from_secs(900),
            read: true,
        }
    }
}

/// `[cold_tier]`: where files older than `hot_window` go. Without `url`, the
/// directory `cold` of the data directory; `s3://bucket/prefix` for any
/// S3-compatible store (credentials here or in the `AWS_*` environment variables).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ColdTierSection {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (a server on this machine).
    pub allow_http: bool,
    #[serde(with = "humantime_serde")]
    pub hot_window: Duration,
    /// Bytes of cold reads kept in memory for repeated queries (0: none).
    pub cache_bytes: usize,
    /// Keep raw files leaving retention in the cold store under `archive/`
    /// (restorable with `vigil restore`) instead of deleting them.
    pub archive: bool,
}

impl Default for ColdTierSection {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            hot_window: Duration::from_secs(86_400),
            cache_bytes: 64 << 20,
            archive: false,
        }
    }
}

/// `[alerting]`: SQL alert and recording rules (Prometheus-style group files in
/// `rules_dir`, watched), routing and receivers in Alertmanager's format
/// (`config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AlertingSection {
    /// Rule files; none: `<data_dir>/rules`.
    pub rules_dir: Option<PathBuf>,
    /// `alerting.yml` (Alertmanager's `route` and `receivers`); none: alerts
    /// are evaluated and kept but not sent.
    pub config: Option<PathBuf>,
    /// A group's interval when it names none.
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
    /// Longest evaluation of one rule (and never longer than its interval).
    #[serde(with = "humantime_serde")]
    pub eval_timeout: Duration,
    /// Base of the links in notifications; none: the HTTP address.
    pub external_url: Option<String>,
    /// The HTTP base URLs of every node evaluating the same rules (this one
    /// may be listed too), so exactly one of them notifies.
    pub peers: Vec<String>,
    /// How this node is reached by its peers; none: `http://<http.addr>`.
    pub advertise_url: Option<String>,
    /// How long each node in turn waits for the ones before it to notify.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// A token (query permission) to read the peers' delivery logs when they
    /// require authentication.
    pub peer_token: Option<String>,
    /// A notification failing for this long is given up (a dead letter in
    /// `system.notifications`).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Where notifications wait for delivery: this node's redb outbox, or a
    /// Kafka topic (`[kafka] brokers`) that notifier nodes consume.
    pub queue: NotificationQueue,
    pub queue_topic: String,
    /// The consumer group of the nodes that deliver notifications.
    pub queue_group: String,
}

/// `[alerting] queue`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NotificationQueue {
    #[default]
    Redb,
    Kafka,
}

impl Default for AlertingSection {
    fn default() -> Self {
        Self {
            rules_dir: None,
            config: None,
            default_interval: Duration::from_secs(60),
            eval_timeout: Duration::from_secs(30),
            external_url: None,
            peers: Vec::new(),
            advertise_url: None,
            peer_timeout: Duration::from_secs(15),
            peer_token: None,
            give_up_after: Duration::from_secs(24 * 3600),
            queue: NotificationQueue::Redb,
            queue_topic: "vigil-notifications".into(),
            queue_group: "vigil-notifiers".into(),
        }
    }
}

/// `[maintenance]`: how often compaction, retention and tiering run on their own
/// (`vigil admin maintenance` runs them now).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MaintenanceSection {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for MaintenanceSection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(600),
        }
    }
}

/// Limits of one write (HTTP, Kafka message); a line over a per-line limit is
/// rejected alone, naming the limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WriteSection {
    pub max_line_bytes: usize,
    pub max_tags_per_line: usize,
    pub max_fields_per_line: usize,
    pub max_tag_value_bytes: usize,
    /// Rejected lines listed in a reply (the rest are counted).
    pub max_reported_errors: usize,
    pub max_days_per_write: usize,
    pub max_series_per_request: usize,
    pub max_label_values_per_request: usize,
}

impl Default for WriteSection {
    fn default() -> Self {
        let w = vigil_ingest::WriteLimits::default();
        Self {
            max_line_bytes: w.line.max_line_bytes,
            max_tags_per_line: w.line.max_tags_per_line,
            max_fields_per_line: w.line.max_fields_per_line,
            max_tag_value_bytes: w.line.max_tag_value_bytes,
            max_reported_errors: w.line.max_errors,
            max_days_per_write: w.max_days_per_write,
            max_series_per_request: w.max_series_per_request,
            max_label_values_per_request: w.max_label_values_per_request,
        }
    }
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

/// Who may use vigil. No token configured means no authentication, and then vigil
/// listens on loopback only unless `insecure` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// Tokens with permissions (`[[auth.tokens]]`).
    pub tokens: Vec<TokenSection>,
    /// Shortcut: one token (named `token`) with every permission.
    pub token: Option<String>,
    /// Shortcut: one token named `username` with secret `password` and every
    /// permission.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Listen on non-loopback addresses without authentication.
    pub insecure: bool,
}

/// One `[[auth.tokens]]` entry. The secret is given as a hash (`vigil auth hash`),
/// or read from a file or an environment variable, never written here in clear.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TokenSection {
    /// The token's name: the user name for basic auth, Flight SQL and Postgres.
    pub name: String,
    /// `pbkdf2-sha256$4096$<salt>$<hash>`, as `vigil auth hash` prints.
    pub secret_hash: Option<String>,
    /// A file holding the secret (first line).
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub secret_env: Option<String>,
    /// `write`, `query`, `admin`.
    pub permissions: Vec<vigil_auth::Permission>,
    /// Table name prefixes the token is limited to (all tables when absent).
    pub tables: Option<Vec<String>>,
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
    /// librdkafka properties passed through to every Kafka client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanisms" = "SCRAM-SHA-512"`.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: "vigil".into(),
            group: "vigil".into(),
            max_batch: 1000,
            dead_letter_topic: None,
            properties: Default::default(),
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
    /// Compacted files each hold one window of this length of a day.
    #[serde(with = "humantime_serde")]
    pub compaction_window: Duration,
    /// Most tables; a line creating one more is rejected.
    pub max_tables: usize,
    /// Most tag + field columns per table.
    pub max_columns_per_table: usize,
    /// Largest write once encoded for the WAL (at most 1 GiB).
    pub max_wal_record_bytes: usize,
    /// What start-up does with a damaged WAL record that is not a torn tail.
    pub wal_recovery: WalRecovery,
}

/// `refuse` (default): stop start-up, naming segment and offset; `truncate`: drop the
/// damaged record and the rest of its segment, and start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WalRecovery {
    #[default]
    Refuse,
    Truncate,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuerySection {
    /// Memory all running queries together may reserve.
    pub memory_limit_bytes: usize,
    /// Memory one query may reserve (out of `memory_limit_bytes`).
    pub max_query_memory_bytes: usize,
    /// Queries running at once; more wait in line.
    pub max_concurrent: usize,
    /// How long a query waits in line before it is refused.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
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
            write: WriteSection::default(),
            query: QuerySection::default(),
            log: LogSection::default(),
            retention: RetentionSection::default(),
            rollups: RollupSection::default(),
            cold_tier: ColdTierSection::default(),
            maintenance: MaintenanceSection::default(),
            alerting: AlertingSection::default(),
            udp: UdpSection::default(),
            scrape: ScrapeSection::default(),
        }
    }
}

/// `[scrape]`: pull collection; off unless `config` names a file of
/// Prometheus `scrape_configs`. With `ring_etcd_endpoints` (or
/// `ring_members`) several collectors split the targets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ScrapeSection {
    pub config: Option<PathBuf>,
    /// This collector's name in the ring, unique among its members
    /// [default: `<hostname>:<http port>`].
    pub collector_name: Option<String>,
    /// etcd endpoints (`host:port`): membership by leases.
    pub ring_etcd_endpoints: Vec<String>,
    /// Each collector holds the key `<prefix><name>` under its lease.
    pub ring_etcd_prefix: String,
    /// How long a dead collector keeps its targets.
    #[serde(with = "humantime_serde")]
    pub ring_lease_ttl: Duration,
    /// A static member list (names), instead of etcd: no failover.
    pub ring_members: Vec<String>,
    /// A collector takes at most this times its fair share of a job's targets.
    pub ring_load_factor: f64,
}

impl Default for ScrapeSection {
    fn default() -> Self {
        Self {
            config: None,
            collector_name: None,
            ring_etcd_endpoints: Vec::new(),
            ring_etcd_prefix: "/vigil/collectors/".into(),
            ring_lease_ttl: Duration::from_secs(10),
            ring_members: Vec::new(),
            ring_load_factor: 1.25,
        }
    }
}

/// `[udp]`: line protocol pushed over UDP; off unless `addr` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct UdpSection {
    pub addr: Option<SocketAddr>,
    /// Timestamps of the lines: `ns`, `us`, `ms` or `s`.
    pub precision: String,
    /// A shared key: each datagram must start with the hex HMAC-SHA256 of the
    /// rest and a newline (better given as `VIGIL_UDP_HMAC_KEY`).
    pub hmac_key: Option<String>,
}

impl Default for UdpSection {
    fn default() -> Self {
        Self {
            addr: None,
            precision: "ns".into(),
            hmac_key: None,
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
            compaction_window: s.compaction_window,
            max_tables: s.max_tables,
            max_columns_per_table: s.max_columns_per_table,
            max_wal_record_bytes: s.max_wal_record_bytes,
            wal_recovery: WalRecovery::Refuse,
        }
    }
}

impl Default for QuerySection {
    fn default() -> Self {
        let q = vigil_sql::QueryConfig::default();
        Self {
            memory_limit_bytes: q.memory_limit_bytes,
            max_query_memory_bytes: q.max_query_memory_bytes,
            max_concurrent: q.max_concurrent,
            queue_timeout: q.queue_timeout,
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

    /// This collector's name in the scrape ring.
    pub(crate) fn collector_name(&self) -> String {
        if let Some(n) = &self.scrape.collector_name {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", self.http.addr.port())
    }

    /// The scrape ring, if this collector is in one.
    pub(crate) fn scrape_ring(&self) -> Option<vigil_scrape::RingConfig> {
        let sc = &self.scrape;
        let membership = if !sc.ring_etcd_endpoints.is_empty() {
            vigil_scrape::Membership::Etcd {
                endpoints: sc.ring_etcd_endpoints.clone(),
                prefix: sc.ring_etcd_prefix.clone(),
                lease_ttl: sc.ring_lease_ttl,
            }
        } else if !sc.ring_members.is_empty() {
            vigil_scrape::Membership::Static(sc.ring_members.clone())
        } else {
            return None;
        };
        Some(vigil_scrape::RingConfig {
            name: self.collector_name(),
            membership,
            load_factor: sc.ring_load_factor,
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
        if !self.alerting.peers.is_empty() {
            let me = self.advertise_url();
            let norm = |u: &str| u.trim_end_matches('/').to_string();
            if !self.alerting.peers.iter().any(|p| norm(p) == norm(&me)) {
                return Err(ConfigError::Invalid(format!(
                    "alerting.peers must list this node as its peers reach it ({me}); set alerting.advertise_url to that URL"
                )));
            }
        }
        if self
            .udp
            .precision
            .parse::<vigil_ingest::Precision>()
            .is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "udp.precision {:?} is not ns, us, ms or s",
                self.udp.precision
            )));
        }
        let sc = &self.scrape;
        if !sc.ring_etcd_endpoints.is_empty() && !sc.ring_members.is_empty() {
            return Err(ConfigError::Invalid(
                "scrape.ring_etcd_endpoints and scrape.ring_members are exclusive (membership from etcd or a static list)".into(),
            ));
        }
        if !sc.ring_members.is_empty() {
            let me = self.collector_name();
            if !sc.ring_members.contains(&me) {
                return Err(ConfigError::Invalid(format!(
                    "scrape.ring_members must list this collector's name {me:?} (set scrape.collector_name)"
                )));
            }
        }
        if !(1.0..=10.0).contains(&sc.ring_load_factor) {
            return Err(ConfigError::Invalid(format!(
                "scrape.ring_load_factor {} must be between 1 and 10",
                sc.ring_load_factor
            )));
        }
        if sc.ring_lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "scrape.ring_lease_ttl must be at least 2s".into(),
            ));
        }
        if !sc.ring_etcd_prefix.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "scrape.ring_etcd_prefix {:?} must end with '/' (or it also matches its siblings' keys)",
                sc.ring_etcd_prefix
            )));
        }
        let name = self.collector_name();
        if name.trim().is_empty() || name.contains(['/', '\n']) {
            return Err(ConfigError::Invalid(format!(
                "scrape.collector_name {name:?} must be non-empty, without '/' or a newline"
            )));
        }
        if self.udp.addr.is_some() && self.mode == Mode::Collector {
            return Err(ConfigError::Invalid(
                "udp.addr is not available in collector mode (UDP writes are stored, not forwarded)".into(),
            ));
        }
        if self.udp.hmac_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::Invalid(
                "udp.hmac_key must be at least 16 characters".into(),
            ));
        }
        if self.alerting.queue == NotificationQueue::Kafka && self.kafka.brokers.is_none() {
            return Err(ConfigError::Invalid(
                "alerting.queue = \"kafka\" needs kafka.brokers".into(),
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
        for (name, v) in [
            ("write.max_line_bytes", self.write.max_line_bytes),
            ("write.max_fields_per_line", self.write.max_fields_per_line),
            ("write.max_tag_value_bytes", self.write.max_tag_value_bytes),
            ("write.max_days_per_write", self.write.max_days_per_write),
            (
                "write.max_series_per_request",
                self.write.max_series_per_request,
            ),
            (
                "write.max_label_values_per_request",
                self.write.max_label_values_per_request,
            ),
            ("storage.max_tables", self.storage.max_tables),
            (
                "storage.max_columns_per_table",
                self.storage.max_columns_per_table,
            ),
            (
                "storage.max_wal_record_bytes",
                self.storage.max_wal_record_bytes,
            ),
            ("query.max_concurrent", self.query.max_concurrent),
            (
                "query.max_query_memory_bytes",
                self.query.max_query_memory_bytes,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        let window = self.storage.compaction_window.as_secs();
        if window < 600
            || 86_400 % window != 0
            || self.storage.compaction_window.subsec_nanos() != 0
        {
            return Err(ConfigError::Invalid(format!(
                "storage.compaction_window must be whole seconds, at least 10m, and divide a day (1h, 2h, 15m...), got {}",
                humantime::format_duration(self.storage.compaction_window)
            )));
        }
        if self.rollups.enabled {
            self.check_retention_covers_rollups()?;
        }
        if let Some(url) = &self.cold_tier.url {
            // The cold tier's sweep deletes what its catalog does not name there:
            // inside the data directory it would take the hot files.
            if let Some(path) = url.strip_prefix("file://") {
                let cold = std::path::Path::new(path);
                let data = std::fs::canonicalize(&self.data_dir).unwrap_or(self.data_dir.clone());
                let cold_abs = std::fs::canonicalize(cold).unwrap_or(cold.to_path_buf());
                if cold_abs.starts_with(&data) || data.starts_with(&cold_abs) {
                    return Err(ConfigError::Invalid(format!(
                        "cold_tier.url {url} overlaps the data directory {}: give the cold tier a directory of its own",
                        self.data_dir.display()
                    )));
                }
            }
        }
        if self.cold_tier.hot_window < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "cold_tier.hot_window must be at least a minute".into(),
            ));
        }
        if self.maintenance.interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "maintenance.interval must be at least a second".into(),
            ));
        }
        if self.storage.compaction_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.compaction_interval must be > 0".into(),
            ));
        }
        if self.storage.flush_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.flush_interval must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Data must outlive the rollups built from it: a 10-minute bucket is rolled
    /// up at the first maintenance run after it is `delay` old, and an hour once
    /// its 10-minute buckets are. A shorter retention would expire raw (or
    /// 10-minute) data that was never rolled up.
    fn check_retention_covers_rollups(&self) -> Result<(), ConfigError> {
        let lag = self.rollups.delay.saturating_add(self.maintenance.interval);
        let check = |what: String, period: Period, bucket: Duration| {
            let need = lag.saturating_add(bucket);
            match period {
                Period::For(p) if p < need => Err(ConfigError::Invalid(format!(
                    "{what} = \"{period}\" would expire data before it is rolled up: \
                     it must be at least {} (a {} bucket + rollups.delay + maintenance.interval)",
                    humantime::format_duration(need),
                    humantime::format_duration(bucket),
                ))),
                _ => Ok(()),
            }
        };
        let r = &self.retention;
        check("retention.raw".into(), r.raw, Duration::from_secs(600))?;
        check(
            "retention.rollup_10m".into(),
            r.rollup_10m,
            Duration::from_secs(3600),
        )?;
        for (t, o) in &r.tables {
            if let Some(p) = o.raw {
                check(
                    format!("retention.tables.{t}.raw"),
                    p,
                    Duration::from_secs(600),
                )?;
            }
            if let Some(p) = o.rollup_10m {
                check(
                    format!("retention.tables.{t}.rollup_10m"),
                    p,
                    Duration::from_secs(3600),
                )?;
            }
        }
        Ok(())
    }

    /// How peers reach this node: `[alerting] advertise_url`, else the HTTP
    /// address.
    fn advertise_url(&self) -> String {
        let scheme = if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        };
        self.alerting
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.http.addr))
    }

    pub(crate) fn alerting_config(&self) -> vigil_alert::AlertingConfig {
        let a = &self.alerting;
        let scheme = if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        };
        vigil_alert::AlertingConfig {
            rules_dir: a
                .rules_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("rules")),
            routing_file: a.config.clone(),
            state_path: self.data_dir.join("alerts.redb"),
            default_interval: a.default_interval,
            eval_timeout: a.eval_timeout,
            external_url: a
                .external_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{}", self.http.addr)),
            peers: if a.peers.is_empty() {
                vigil_alert::Peers::default()
            } else {
                vigil_alert::Peers::among(
                    &self.advertise_url(),
                    &a.peers,
                    a.peer_timeout,
                    a.peer_token.clone(),
                )
            },
            give_up_after: a.give_up_after,
            queue: match (a.queue, &self.kafka.brokers) {
                (NotificationQueue::Kafka, Some(brokers)) => {
                    Some(vigil_alert::queue::QueueConfig {
                        brokers: brokers.clone(),
                        topic: a.queue_topic.clone(),
                        group: a.queue_group.clone(),
                        properties: self.kafka.properties.clone(),
                    })
                }
                _ => None,
            },
        }
    }

    pub(crate) fn storage_config(&self) -> vigil_storage::StorageConfig {
        let mut s = vigil_storage::StorageConfig::new(&self.data_dir);
        s.flush_interval = self.storage.flush_interval;
        s.flush_max_rows = self.storage.flush_max_rows;
        s.flush_max_bytes = self.storage.flush_max_bytes;
        s.compaction_min_files = self.storage.compaction_min_files;
        s.compaction_window = self.storage.compaction_window;
        s.max_tables = self.storage.max_tables;
        s.max_columns_per_table = self.storage.max_columns_per_table;
        s.max_wal_record_bytes = self.storage.max_wal_record_bytes;
        s.wal_recovery = match self.storage.wal_recovery {
            WalRecovery::Refuse => vigil_storage::wal::WalRecovery::Refuse,
            WalRecovery::Truncate => vigil_storage::wal::WalRecovery::Truncate,
        };
        s.cold_cache_bytes = self.cold_tier.cache_bytes;
        s.archive = self.cold_tier.archive;
        let r = &self.retention;
        let mut tables = std::collections::BTreeMap::new();
        for (t, o) in &r.tables {
            if let Some(p) = o.raw {
                tables.insert(t.clone(), p.duration());
            }
            if let Some(p) = o.rollup_10m {
                tables.insert(format!("rollup_10m.{t}"), p.duration());
            }
            if let Some(p) = o.rollup_1h {
                tables.insert(format!("rollup_1h.{t}"), p.duration());
            }
        }
        s.retention = vigil_storage::RetentionPolicy {
            default: r.raw.duration(),
            rollup_10m: r.rollup_10m.duration(),
            rollup_1h: r.rollup_1h.duration(),
            tables,
        };
        s
    }

    /// The cold tier's store options, when `[cold_tier] url` is set.
    pub(crate) fn cold_store_options(&self) -> Option<vigil_cold_tier::ColdStoreOptions> {
        let c = &self.cold_tier;
        c.url.as_ref().map(|url| vigil_cold_tier::ColdStoreOptions {
            url: url.clone(),
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            allow_http: c.allow_http,
        })
    }

    pub(crate) fn write_limits(&self) -> vigil_ingest::WriteLimits {
        let w = &self.write;
        vigil_ingest::WriteLimits {
            max_body_bytes: self.http.max_body_bytes,
            line: vigil_ingest::LineLimits {
                max_line_bytes: w.max_line_bytes,
                max_tags_per_line: w.max_tags_per_line,
                max_fields_per_line: w.max_fields_per_line,
                max_tag_value_bytes: w.max_tag_value_bytes,
                max_errors: w.max_reported_errors,
            },
            max_days_per_write: w.max_days_per_write,
            max_series_per_request: w.max_series_per_request,
            max_label_values_per_request: w.max_label_values_per_request,
        }
    }

    pub(crate) fn kafka_config(&self) -> vigil_kafka::KafkaConfig {
        vigil_kafka::KafkaConfig {
            brokers: self.kafka.brokers.clone().unwrap_or_default(),
            topic: self.kafka.topic.clone(),
            group: self.kafka.group.clone(),
            max_batch: self.kafka.max_batch,
            dead_letter_topic: self.kafka.dead_letter_topic.clone(),
            properties: self.kafka.properties.clone(),
        }
    }

    /// The configured tokens (secrets read from files and variables now, hashed).
    pub(crate) fn token_store(&self) -> Result<vigil_auth::TokenStore, ConfigError> {
        use vigil_auth::{Permission, Principal, SecretHash, Token};
        let all = |name: &str, secret: &str| Token {
            principal: std::sync::Arc::new(Principal {
                name: name.to_string(),
                permissions: vec![Permission::Admin],
                tables: vigil_model::TableAccess::all(),
            }),
            secret: SecretHash::new(secret),
        };
        let mut tokens = Vec::new();
        if let Some(t) = &self.auth.token {
            tokens.push(all("token", t));
        }
        if let (Some(u), Some(p)) = (&self.auth.username, &self.auth.password) {
            tokens.push(all(u, p));
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let what = format!("auth.tokens[{i}] ('{}')", t.name);
            if t.name.is_empty() {
                return Err(ConfigError::Invalid(format!("{what}: name must be set")));
            }
            if t.permissions.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{what}: permissions must list at least one of write, query, admin"
                )));
            }
            let secret = match (&t.secret_hash, &t.secret_file, &t.secret_env) {
                (Some(h), None, None) => {
                    let h = SecretHash::parse(h)
                        .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
                    if h.iterations != vigil_auth::ITERATIONS {
                        return Err(ConfigError::Invalid(format!(
                            "{what}: the hash uses {} iterations; Postgres logins (SCRAM) need {} (make it with `vigil auth hash`)",
                            h.iterations,
                            vigil_auth::ITERATIONS
                        )));
                    }
                    h
                }
                (None, Some(f), None) => {
                    let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Read {
                        path: f.clone(),
                        source,
                    })?;
                    let secret = text.lines().next().unwrap_or("").trim();
                    if secret.is_empty() {
                        return Err(ConfigError::Invalid(format!(
                            "{what}: {} is empty",
                            f.display()
                        )));
                    }
                    SecretHash::new(secret)
                }
                (None, None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => SecretHash::new(v.trim()),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "{what}: environment variable {var} is not set"
                        )))
                    }
                },
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: set exactly one of secret_hash, secret_file, secret_env"
                    )))
                }
            };
            if tokens.iter().any(|x: &Token| x.principal.name == t.name) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: another token has the same name"
                )));
            }
            tokens.push(Token {
                principal: std::sync::Arc::new(Principal {
                    name: t.name.clone(),
                    permissions: t.permissions.clone(),
                    tables: match &t.tables {
                        Some(p) => vigil_model::TableAccess::prefixes(p.clone()),
                        None => vigil_model::TableAccess::all(),
                    },
                }),
                secret,
            });
        }
        Ok(vigil_auth::TokenStore::new(tokens))
    }

    /// Without authentication vigil serves loopback clients only: a public address
    /// needs tokens, or `--insecure` to say that this is meant.
    pub(crate) fn check_exposure(&self, auth_enabled: bool) -> Result<(), ConfigError> {
        if auth_enabled || self.auth.insecure {
            return Ok(());
        }
        for (name, addr) in [
            ("http.addr", self.http.addr),
            ("flight.addr", self.flight.addr),
            ("pg.addr", self.pg.addr),
        ] {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "{name} {addr} is not a loopback address and no authentication is configured: add [[auth.tokens]] (see README, Authentication), or pass --insecure to serve without it"
                )));
            }
        }
        Ok(())
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
            // A per-query cap above the total is the total.
            max_query_memory_bytes: self
                .query
                .max_query_memory_bytes
                .min(self.query.memory_limit_bytes),
            max_concurrent: self.query.max_concurrent,
            queue_timeout: self.query.queue_timeout,
            timeout: self.query.timeout,
            target_partitions: 0,
            execution_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            result_cache_bytes: self.query.result_cache_bytes,
            rollup_reads: self.rollups.enabled && self.rollups.read,
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
    /// A token with every permission, for all listeners (prefer [[auth.tokens]] or
    /// the environment variable: a flag is visible in `ps`) [default: none].
    #[arg(long, env = "VIGIL_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// User name of a token with every permission (its secret: --auth-password or,
    /// better, VIGIL_AUTH_PASSWORD) [default: none].
    #[arg(long, env = "VIGIL_AUTH_USERNAME")]
    pub auth_username: Option<String>,
    /// Password for --auth-username.
    #[arg(long, env = "VIGIL_AUTH_PASSWORD")]
    pub auth_password: Option<String>,
    /// Serve on non-loopback addresses without authentication (not recommended).
    #[arg(long, env = "VIGIL_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain: TLS for HTTP, Flight SQL and pgwire (with --tls-key).
    #[arg(long, env = "VIGIL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "VIGIL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// standalone: store writes (and consume Kafka if brokers are set); collector:
    /// produce writes to Kafka keyed by metric [default: standalone].
    #[arg(long, env = "VIGIL_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Prometheus `scrape_configs` file: scrape its targets [default: none].
    #[arg(long, env = "VIGIL_SCRAPE_CONFIG")]
    pub scrape_config: Option<PathBuf>,
    /// This collector's name in the scrape ring [default: <hostname>:<http port>].
    #[arg(long, env = "VIGIL_COLLECTOR_NAME")]
    pub collector_name: Option<String>,
    /// etcd endpoints (host:port, comma-separated): share scrape targets with
    /// the other collectors registered there [default: off].
    #[arg(long, env = "VIGIL_SCRAPE_RING_ETCD", value_delimiter = ',')]
    pub scrape_ring_etcd: Vec<String>,
    /// Receive line protocol over UDP on this address [default: off].
    #[arg(long, env = "VIGIL_UDP_ADDR")]
    pub udp_addr: Option<SocketAddr>,
    /// The shared key UDP datagrams are signed with (HMAC-SHA256) [default: none,
    /// unsigned datagrams are taken].
    #[arg(long, env = "VIGIL_UDP_HMAC_KEY", hide_env_values = true)]
    pub udp_hmac_key: Option<String>,
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
    /// Damaged WAL record (not a torn tail) at start-up: refuse to start, or truncate
    /// the segment there and start [default: refuse].
    #[arg(long, env = "VIGIL_WAL_RECOVERY", value_enum)]
    pub wal_recovery: Option<WalRecovery>,
    /// Flush the buffer to Parquet at least this often [default: 5m].
    #[arg(long, env = "VIGIL_FLUSH_INTERVAL")]
    pub flush_interval: Option<humantime::Duration>,
    /// Flush when the buffer holds this many rows [default: 1000000].
    #[arg(long, env = "VIGIL_FLUSH_MAX_ROWS")]
    pub flush_max_rows: Option<usize>,
    /// Flush when the buffer holds this many bytes [default: 268435456].
    #[arg(long, env = "VIGIL_FLUSH_MAX_BYTES")]
    pub flush_max_bytes: Option<usize>,
    /// How often the compactor looks for files to merge [default: 1m].
    #[arg(long, env = "VIGIL_COMPACTION_INTERVAL")]
    pub compaction_interval: Option<humantime::Duration>,
    /// Compact a table's day once it has this many freshly flushed files, or
    /// sooner if they overlap [default: 4].
    #[arg(long, env = "VIGIL_COMPACTION_MIN_FILES")]
    pub compaction_min_files: Option<usize>,
    /// Time window each compacted file holds, dividing a day [default: 1h].
    #[arg(long, env = "VIGIL_COMPACTION_WINDOW")]
    pub compaction_window: Option<humantime::Duration>,
    /// How long raw data is kept: a duration or `forever` [default: 7d].
    #[arg(long, env = "VIGIL_RETENTION_RAW")]
    pub retention_raw: Option<Period>,
    /// Whether aggregates over time buckets read the rollups where they answer
    /// exactly [default: true].
    #[arg(long, env = "VIGIL_ROLLUP_READS")]
    pub rollup_reads: Option<bool>,
    /// Directory of alert and recording rule files [default: <data dir>/rules].
    #[arg(long, env = "VIGIL_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Alertmanager-format routing and receivers file [default: none, nothing sent].
    #[arg(long, env = "VIGIL_ALERTING_CONFIG")]
    pub alerting_config: Option<PathBuf>,
    /// The cold tier: `s3://bucket/prefix` or `file:///path` [default: <data dir>/cold].
    #[arg(long, env = "VIGIL_COLD_URL")]
    pub cold_url: Option<String>,
    /// Keep raw data leaving retention in the cold tier's archive [default: false].
    #[arg(long, env = "VIGIL_ARCHIVE")]
    pub archive: Option<bool>,
    /// Files older than this move to the cold tier [default: 1d].
    #[arg(long, env = "VIGIL_HOT_WINDOW")]
    pub hot_window: Option<humantime::Duration>,
    /// How often maintenance (compaction, retention, tiering) runs [default: 10m].
    #[arg(long, env = "VIGIL_MAINTENANCE_INTERVAL")]
    pub maintenance_interval: Option<humantime::Duration>,
    /// Memory all queries together may use, in bytes [default: 4294967296].
    #[arg(long, env = "VIGIL_QUERY_MEMORY_LIMIT")]
    pub query_memory_limit: Option<usize>,
    /// Memory for cached results of queries over flushed data, 0 = off [default: 67108864].
    #[arg(long, env = "VIGIL_QUERY_RESULT_CACHE_BYTES")]
    pub query_result_cache_bytes: Option<usize>,
    /// Memory one query may use, in bytes [default: 2147483648].
    #[arg(long, env = "VIGIL_QUERY_MAX_MEMORY")]
    pub query_max_memory: Option<usize>,
    /// Queries running at once; more wait in line [default: 16].
    #[arg(long, env = "VIGIL_QUERY_MAX_CONCURRENT")]
    pub query_max_concurrent: Option<usize>,
    /// How long a query waits for a slot before it is refused [default: 30s].
    #[arg(long, env = "VIGIL_QUERY_QUEUE_TIMEOUT")]
    pub query_queue_timeout: Option<humantime::Duration>,
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
        if self.insecure {
            c.auth.insecure = true;
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
        if let Some(v) = &self.scrape_config {
            c.scrape.config = Some(v.clone());
        }
        if let Some(v) = &self.collector_name {
            c.scrape.collector_name = Some(v.clone());
        }
        if !self.scrape_ring_etcd.is_empty() {
            c.scrape.ring_etcd_endpoints = self.scrape_ring_etcd.clone();
        }
        if let Some(v) = self.udp_addr {
            c.udp.addr = Some(v);
        }
        if let Some(v) = &self.udp_hmac_key {
            c.udp.hmac_key = Some(v.clone());
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
        if let Some(v) = self.wal_recovery {
            c.storage.wal_recovery = v;
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
        if let Some(v) = self.compaction_window {
            c.storage.compaction_window = v.into();
        }
        if let Some(v) = self.retention_raw {
            c.retention.raw = v;
        }
        if let Some(v) = self.rollup_reads {
            c.rollups.read = v;
        }
        if let Some(v) = &self.rules_dir {
            c.alerting.rules_dir = Some(v.clone());
        }
        if let Some(v) = &self.alerting_config {
            c.alerting.config = Some(v.clone());
        }
        if let Some(v) = &self.cold_url {
            c.cold_tier.url = Some(v.clone());
        }
        if let Some(v) = self.archive {
            c.cold_tier.archive = v;
        }
        if let Some(v) = self.hot_window {
            c.cold_tier.hot_window = v.into();
        }
        if let Some(v) = self.maintenance_interval {
            c.maintenance.interval = v.into();
        }
        if let Some(v) = self.query_memory_limit {
            c.query.memory_limit_bytes = v;
        }
        if let Some(v) = self.query_result_cache_bytes {
            c.query.result_cache_bytes = v;
        }
        if let Some(v) = self.query_max_memory {
            c.query.max_query_memory_bytes = v;
        }
        if let Some(v) = self.query_max_concurrent {
            c.query.max_concurrent = v;
        }
        if let Some(v) = self.query_queue_timeout {
            c.query.queue_timeout = v.into();
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
