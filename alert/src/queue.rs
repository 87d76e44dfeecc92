//! The notification queue on Kafka, when `[alerting] queue = "kafka"`: the
//! nodes that evaluate rules publish each notification of their outbox to a
//! topic, keyed by receiver and group, so one partition (one consumer of the
//! group `vigil-notifiers`) sees every message of a group in order. The
//! consumer takes a message into its own outbox (skipping a key it has seen:
//! the same message from a peer evaluating the same rules, or a re-read after
//! a crash) and commits the offset after that; its dispatcher delivers,
//! retries and logs as without Kafka.
//!
//! At least once: a notification leaves an evaluator's outbox only once the
//! broker has it (acks=all), and an offset is committed only once the
//! notification is in the notifier's outbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{info, warn};

use crate::evaluator::Evaluator;
use crate::store::Notification;
use crate::AlertError;

/// Where notifications travel when Kafka carries them.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub brokers: String,
    pub topic: String,
    /// The consumer group of the notifiers.
    pub group: String,
    /// librdkafka properties (TLS, SASL) over vigil's own.
    pub properties: BTreeMap<String, String>,
}

impl QueueConfig {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "vigil-alerts");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn error(&self, e: impl std::fmt::Display) -> AlertError {
        AlertError::Queue(format!(
            "Kafka topic '{}' (brokers {}): {e}",
            self.topic, self.brokers
        ))
    }
}

/// The producing side, held by the dispatcher.
pub(crate) struct QueueProducer {
    producer: FutureProducer,
    config: QueueConfig,
}

impl QueueProducer {
    pub(crate) fn new(config: QueueConfig) -> Result<QueueProducer, AlertError> {
        let producer = config
            .client()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(|e| config.error(e))?;
        Ok(QueueProducer { producer, config })
    }

    /// Publishes one notification; `Ok` once the broker has it. Its endpoint
    /// travels as the receiver's name and the endpoint's position, never its
    /// URL or credentials: the consumer sends to its own config's endpoint,
    /// so whoever can write to the topic cannot point vigil elsewhere.
    pub(crate) async fn publish(&self, n: &Notification) -> Result<(), PublishError> {
        let key = format!("{}\u{0}{}", n.receiver, n.group_key);
        let mut wire = n.clone();
        wire.url = String::new();
        wire.kind = vigil_rules::WebhookKind::default();
        let payload = serde_json::to_vec(&wire).map_err(|e| PublishError {
            message: e.to_string(),
            permanent: true,
        })?;
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(PublishError {
                message: format!(
                    "a notification of {} bytes is more than a Kafka message takes ({MAX_MESSAGE_BYTES}); group its alerts more finely",
                    payload.len()
                ),
                permanent: true,
            });
        }
        self.producer
            .send(
                FutureRecord::to(&self.config.topic)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| PublishError {
                message: format!("publishing to Kafka topic '{}': {e}", self.config.topic),
                permanent: false,
            })
    }
}

/// Kafka's default largest message (`message.max.bytes`), less headroom.
const MAX_MESSAGE_BYTES: usize = 900_000;

/// Why a notification was not published; a permanent failure is not retried.
pub(crate) struct PublishError {
    pub message: String,
    pub permanent: bool,
}

/// Keys are made by vigil (hex and dashes); anything else on the topic is not
/// taken (and never reaches a URL path).
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl Evaluator {
    /// The notifier: consumes the topic until `stop` fires, taking each
    /// notification into this node's outbox once.
    pub(crate) async fn consume_queue(
        self: Arc<Self>,
        config: QueueConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let consumer: StreamConsumer = match config
            .client()
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %config.error(e), "the notification queue consumer cannot start");
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&config.topic]) {
            warn!(error = %config.error(e), "the notification queue consumer cannot subscribe");
            return;
        }
        info!(topic = %config.topic, group = %config.group, "consuming notifications from Kafka");
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                m = consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "receiving notifications from Kafka failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let parsed: Result<Notification, _> =
                serde_json::from_slice(msg.payload().unwrap_or_default());
            // The endpoint as this node's config has it.
            let parsed = parsed.map_err(|e| e.to_string()).and_then(|mut n| {
                if !valid_key(&n.idempotency_key) {
                    return Err(format!(
                        "idempotency key {:?} was not made by vigil",
                        n.idempotency_key.chars().take(64).collect::<String>()
                    ));
                }
                let routing = self.routing.read().clone();
                let endpoint = routing
                    .as_deref()
                    .and_then(|r| r.receiver(&n.receiver))
                    .and_then(|r| r.webhooks.get(n.endpoint_index))
                    .ok_or_else(|| {
                        format!(
                            "receiver {:?} has no endpoint {} here",
                            n.receiver, n.endpoint_index
                        )
                    })?;
                n.url = endpoint.url.clone();
                n.kind = endpoint.kind.clone();
                Ok(n)
            });
            match parsed {
                Ok(mut n) => {
                    n.from_queue = true;
                    n.attempts = 0;
                    n.last_error = None;
                    // Its turn is counted from now: the peers' wait does not
                    // apply to what Kafka already gave to one consumer.
                    n.enqueued_at = vigil_storage::retention::now_nanos();
                    n.next_attempt = n.enqueued_at;
                    let store = Arc::clone(&self.store);
                    let taken = loop {
                        let s = Arc::clone(&store);
                        let n2 = n.clone();
                        match tokio::task::spawn_blocking(move || s.enqueue_once(&n2)).await {
                            Ok(Ok(new)) => break new,
                            Ok(Err(e)) => {
                                warn!(error = %e, "taking a notification from Kafka failed; retrying")
                            }
                            Err(e) => {
                                warn!(error = %e, "taking a notification from Kafka failed; retrying")
                            }
                        }
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    };
                    if taken {
                        self.metrics.enqueued.inc();
                        self.wake_dispatcher.notify_one();
                    } else {
                        self.metrics.duplicates.inc();
                    }
                }
                Err(e) => {
                    // Retrying cannot help: logged, kept as a dead letter
                    // (system.notifications) when it names a notification,
                    // and skipped.
                    warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "a message on the notification topic cannot be delivered here; skipped");
                    self.metrics.dead.inc();
                    let dead: Option<Notification> =
                        serde_json::from_slice(msg.payload().unwrap_or_default()).ok();
                    if let Some(n) = dead.filter(|n| valid_key(&n.idempotency_key)) {
                        let record =
                            n.finished("dead", vigil_storage::retention::now_nanos(), Some(e));
                        let store = Arc::clone(&self.store);
                        let _ = tokio::task::spawn_blocking(move || store.record(&record)).await;
                    }
                }
            }
            // Async: the notification is in the outbox already; a commit lost
            // only makes the message read again, and skipped as seen.
            if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
                warn!(error = %e, "committing the notification offset failed (it may be taken again, and then skipped as seen)");
            }
        }
    }
}
