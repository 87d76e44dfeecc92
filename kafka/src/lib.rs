//! vigil and Kafka, both ways.
//!
//! [`KafkaIngest`]: a storage node is a member of a consumer group and reads line
//! protocol and Prometheus remote-write messages from the partitions assigned to it.
//! Offsets are committed only for messages whose data is in Parquet and the catalog
//! (`Storage::persisted_seq`), not merely in the WAL: a node that dies (or loses
//! its disk's WAL) resumes from the committed offsets and re-reads what it had not
//! persisted; the last-write-wins dedupe makes the replay invisible.
//!
//! [`KafkaForwarder`]: a collector (`--mode collector`) produces what it receives to
//! the topic keyed by metric name, so a metric always lands in the same partition
//! and so on the same storage node, and answers its client only once Kafka has
//! acknowledged (acks=all, idempotent producer).

mod consumer;
mod format;
mod forwarder;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::error::KafkaError;

pub use consumer::KafkaIngest;
pub use format::{MessageFormat, CONTENT_TYPE_HEADER, PRECISION_HEADER, REMOTE_WRITE_CONTENT_TYPE};
pub use forwarder::{ForwardBatch, ForwardError, KafkaForwarder};

/// Where to consume from (storage node) or produce to (collector).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Messages gathered into one storage commit at most.
    pub max_batch: usize,
    /// Where messages with rejected lines (or that cannot be read at all) are
    /// copied, with the reason and their origin in headers.
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties set on every client (TLS, SASL: `security.protocol`,
    /// `sasl.mechanisms`, `ssl.ca.location`, ...), over vigil's own settings.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl KafkaConfig {
    pub(crate) fn apply_properties(&self, c: &mut rdkafka::config::ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }
}

/// Errors of creating a Kafka client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka client for topic '{topic}' (brokers {brokers}): {source}")]
    Client {
        topic: String,
        brokers: String,
        source: Box<KafkaError>,
    },
    #[error("cannot seek {topic} partition {partition} back to offset {offset} to re-read a batch that was not stored: {message}")]
    Seek {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("parsing a batch of Kafka messages failed; it is not stored and its offsets are not committed: {0}")]
    Parse(String),
}

impl Error {
    fn client(config: &KafkaConfig, source: KafkaError) -> Self {
        Error::Client {
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        }
    }
}

/// A partition of a topic, as a metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i64,
}

/// Kafka's counters and gauges for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct KafkaMetrics {
    pub messages: Counter,
    pub rows: Counter,
    pub lines_rejected: Counter,
    pub commits: Counter,
    pub dead_lettered: Counter,
    /// 1 while consumption is paused because flushing is behind.
    pub paused: Gauge,
    pub pauses: Counter,
    /// Partitions assigned to this node by the group.
    pub assigned: Gauge,
    /// Messages not yet consumed, per assigned partition (librdkafka statistics).
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Collector mode: messages produced and acknowledged by Kafka.
    pub produced: Counter,
    pub produce_errors: Counter,
}

impl KafkaMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "vigil_kafka_messages",
                "Kafka messages consumed",
                &self.messages,
            ),
            (
                "vigil_kafka_rows",
                "Rows written from Kafka messages",
                &self.rows,
            ),
            (
                "vigil_kafka_lines_rejected",
                "Lines (or remote-write series) of Kafka messages rejected",
                &self.lines_rejected,
            ),
            (
                "vigil_kafka_offset_commits",
                "Offset commits after data reached Parquet",
                &self.commits,
            ),
            (
                "vigil_kafka_dead_lettered",
                "Messages copied to the dead-letter topic",
                &self.dead_lettered,
            ),
            (
                "vigil_kafka_pauses",
                "Times consumption was paused because flushing fell behind",
                &self.pauses,
            ),
            (
                "vigil_kafka_produced",
                "Messages produced to Kafka and acknowledged (collector mode)",
                &self.produced,
            ),
            (
                "vigil_kafka_produce_errors",
                "Messages Kafka did not acknowledge (collector mode)",
                &self.produce_errors,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "vigil_kafka_paused",
            "1 while Kafka consumption is paused (buffer over twice its flush limits)",
            self.paused.clone(),
        );
        registry.register(
            "vigil_kafka_assigned_partitions",
            "Partitions of the topic assigned to this node by the consumer group",
            self.assigned.clone(),
        );
        registry.register(
            "vigil_kafka_consumer_lag",
            "Messages behind the partition's end, per assigned partition",
            self.consumer_lag.clone(),
        );
    }
}
