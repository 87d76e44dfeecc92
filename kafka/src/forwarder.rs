//! The collector's side: what arrives over HTTP is produced to Kafka, keyed by
//! metric name, and acknowledged only once Kafka has it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tracing::info;
use vigil_ingest::{
    encode_line_protocol, encode_remote_write, split_by_metric, TimeSeries, WriteRequest,
};
use vigil_model::Point;

use crate::format::{CONTENT_TYPE_HEADER, REMOTE_WRITE_CONTENT_TYPE};
use crate::{Error, KafkaConfig, KafkaMetrics};

/// Points per produced line protocol message (about 100 B each: well under Kafka's
/// default 1 MB message limit).
const POINTS_PER_MESSAGE: usize = 2000;

/// Why a write was not acknowledged by Kafka; the client should retry it.
#[derive(Debug, thiserror::Error)]
#[error("Kafka (topic '{topic}') did not acknowledge the write: {source}")]
pub struct ForwardError {
    topic: String,
    source: KafkaError,
}

/// The settings every vigil producer shares: acks from all in-sync replicas and
/// idempotence, so a retried send is neither lost nor written twice.
pub(crate) fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        // A write waits at most this long for Kafka before its client gets an error.
        .set("message.timeout.ms", "30000")
        .set("client.id", "vigil-collector");
    config.apply_properties(&mut c);
    c
}

/// Messages ready to produce: (key, payload, headers). Built without the producer
/// (on a blocking thread, where the request body is parsed).
#[derive(Debug, Default)]
pub struct ForwardBatch {
    messages: Vec<(String, Vec<u8>, Option<OwnedHeaders>)>,
}

impl ForwardBatch {
    /// Points as line protocol (nanosecond timestamps), one message per table and
    /// up to [`POINTS_PER_MESSAGE`] points, keyed by the table name.
    pub fn line_protocol(points: &[(usize, Point<'_>)]) -> Self {
        let mut by_table: BTreeMap<&str, Vec<&Point<'_>>> = BTreeMap::new();
        for (_, p) in points {
            by_table.entry(p.table.as_ref()).or_default().push(p);
        }
        let mut messages = Vec::new();
        for (table, points) in by_table {
            for chunk in points.chunks(POINTS_PER_MESSAGE) {
                for payload in encode_within(chunk, MAX_MESSAGE_BYTES, &|c: &[&Point<'_>]| {
                    encode_line_protocol(c.iter().copied())
                }) {
                    messages.push((table.to_string(), payload, None));
                }
            }
        }
        Self { messages }
    }

    /// A remote-write request as one remote-write message per metric, keyed by the
    /// metric name and marked `content-type: application/x-protobuf`.
    pub fn remote_write(request: WriteRequest) -> Self {
        let mut messages = Vec::new();
        for (metric, part) in split_by_metric(request) {
            let encode = |series: &[TimeSeries]| {
                encode_remote_write(&WriteRequest {
                    timeseries: series.to_vec(),
                })
            };
            for payload in encode_within(&part.timeseries, MAX_MESSAGE_BYTES, &encode) {
                let headers = OwnedHeaders::new().insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(REMOTE_WRITE_CONTENT_TYPE),
                });
                messages.push((metric.clone(), payload, Some(headers)));
            }
        }
        Self { messages }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Largest message the collector produces, below Kafka's default `message.max.bytes`
/// (1 MB) with room for the key and headers.
pub(crate) const MAX_MESSAGE_BYTES: usize = 900 << 10;

/// Encodes `items` as one payload, or, if that is over `max`, as payloads of halves
/// (recursively), so every message fits the broker's limit. A single item over the
/// limit is sent alone (and the broker's refusal reaches the client).
fn encode_within<T>(items: &[T], max: usize, encode: &dyn Fn(&[T]) -> Vec<u8>) -> Vec<Vec<u8>> {
    let payload = encode(items);
    if payload.len() <= max || items.len() <= 1 {
        return vec![payload];
    }
    let (a, b) = items.split_at(items.len() / 2);
    let mut out = encode_within(a, max, encode);
    out.extend(encode_within(b, max, encode));
    out
}

/// Produces writes to the topic (collector mode).
pub struct KafkaForwarder {
    producer: FutureProducer,
    topic: String,
    metrics: KafkaMetrics,
}

impl KafkaForwarder {
    pub fn new(config: &KafkaConfig, metrics: KafkaMetrics) -> Result<Self, Error> {
        let producer = producer_config(config)
            .create()
            .map_err(|e| Error::client(config, e))?;
        info!(topic = %config.topic, brokers = %config.brokers, "collector mode: writes go to Kafka");
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            metrics,
        })
    }

    /// Sends what [`ForwardBatch::line_protocol`] or [`ForwardBatch::remote_write`]
    /// prepared; returns once Kafka acknowledged every message.
    pub async fn send(&self, batch: ForwardBatch) -> Result<(), ForwardError> {
        self.produce_all(batch.messages).await
    }

    /// Enqueues every message, then waits for every acknowledgement.
    async fn produce_all(
        &self,
        messages: Vec<(String, Vec<u8>, Option<OwnedHeaders>)>,
    ) -> Result<(), ForwardError> {
        let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(messages.len());
        let mut failure = None;
        for (key, payload, headers) in &messages {
            match self.enqueue(key, payload, headers.clone()).await {
                Ok(d) => deliveries.push(d),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {
                    self.metrics.produced.inc();
                }
                Ok(Err((e, _))) => failure = Some(e),
                Err(_) => failure = Some(KafkaError::Canceled),
            }
        }
        match failure {
            None => Ok(()),
            Some(source) => {
                self.metrics.produce_errors.inc();
                Err(ForwardError {
                    topic: self.topic.clone(),
                    source,
                })
            }
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    async fn enqueue(
        &self,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
            if let Some(h) = &headers {
                record = record.headers(h.clone());
            }
            match self.producer.send_result(record) {
                Ok(d) => return Ok(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}
