//! Kafka ingest: vigil as a member of a consumer group, reading line protocol from
//! the partitions assigned to it.
//!
//! Offsets are committed only for messages whose data is in Parquet and the catalog
//! ([`Storage::persisted_seq`]), not merely in the WAL: a node that dies (or loses
//! its disk's WAL) resumes from the committed offsets and re-reads what it had not
//! persisted; the last-write-wins dedupe makes the replay invisible. Messages are
//! batched (up to [`KafkaConfig::max_batch`] messages or 50 ms) into one storage
//! commit, so one WAL fsync covers many messages.
//!
//! Not yet: the Prometheus remote-write header, backpressure (pausing partitions
//! when flushing falls behind), consumer-lag metrics, a dead-letter topic, and the
//! collector mode that produces to Kafka.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use vigil_ingest::{now_nanos, parse_line_protocol, Precision};
use vigil_storage::Storage;

/// Where to consume from.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Messages gathered into one storage commit at most.
    pub max_batch: usize,
}

/// Errors of starting the consumer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka consumer for topic '{topic}' (brokers {brokers}): {source}")]
    Client {
        topic: String,
        brokers: String,
        source: Box<KafkaError>,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct KafkaMetrics {
    pub messages: Counter,
    pub rows: Counter,
    pub lines_rejected: Counter,
    pub commits: Counter,
}

impl KafkaMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vigil_kafka_messages",
            "Kafka messages consumed",
            self.messages.clone(),
        );
        registry.register(
            "vigil_kafka_rows",
            "Rows written from Kafka messages",
            self.rows.clone(),
        );
        registry.register(
            "vigil_kafka_lines_rejected",
            "Lines of Kafka messages rejected (parse errors, type conflicts)",
            self.lines_rejected.clone(),
        );
        registry.register(
            "vigil_kafka_offset_commits",
            "Offset commits after data reached Parquet",
            self.commits.clone(),
        );
    }
}

/// A joined consumer, ready to run.
pub struct KafkaIngest {
    consumer: StreamConsumer,
    storage: Arc<Storage>,
    config: KafkaConfig,
    metrics: KafkaMetrics,
}

/// Offsets (next to read, per partition) of messages written with WAL sequence
/// `seq`, waiting for that sequence to be persisted.
struct Pending {
    seq: u64,
    offsets: BTreeMap<i32, i64>,
}

impl KafkaIngest {
    /// Creates the consumer and subscribes to the topic (the group assigns
    /// partitions once [`KafkaIngest::run`] polls).
    pub fn new(
        storage: Arc<Storage>,
        config: KafkaConfig,
        metrics: KafkaMetrics,
    ) -> Result<Self, Error> {
        let err = |source| Error::Client {
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        };
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("client.id", "vigil")
            .create()
            .map_err(err)?;
        consumer.subscribe(&[&config.topic]).map_err(err)?;
        Ok(Self {
            consumer,
            storage,
            config,
            metrics,
        })
    }

    /// Consumes until `stop` turns true; then waits (up to 60 s) for the data already
    /// written to be persisted by the shutdown flush, and commits its offsets.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        info!(topic = %self.config.topic, group = %self.config.group, brokers = %self.config.brokers, "consuming from Kafka");
        let mut persisted = self.storage.persisted_seq();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = persisted.changed() => {
                    let upto = *persisted.borrow_and_update();
                    self.commit_persisted(&mut pending, upto);
                }
                first = self.consumer.recv() => match first {
                    Ok(m) => {
                        if let Some(p) = self.ingest_batch(m).await {
                            pending.push_back(p);
                            let upto = *persisted.borrow();
                            self.commit_persisted(&mut pending, upto);
                        }
                    }
                    Err(e) => {
                        // The client reconnects by itself; back off so a dead broker
                        // is not polled in a tight loop.
                        warn!(error = %e, "Kafka receive failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() {
            let upto = *persisted.borrow_and_update();
            self.commit_persisted(&mut pending, upto);
            if pending.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, persisted.changed())
                .await
                .is_err()
            {
                warn!(
                    batches = pending.len(),
                    "stopping with Kafka offsets uncommitted (data not flushed); they will be re-read"
                );
                break;
            }
        }
    }

    /// Reads more messages (up to the batch size or 50 ms) after `first`, writes
    /// them in one storage commit, and returns the offsets to commit once persisted.
    async fn ingest_batch(&self, first: BorrowedMessage<'_>) -> Option<Pending> {
        let mut text = String::new();
        // (first line number, partition, offset) of each message in `text`.
        let mut origins: Vec<(usize, i32, i64)> = Vec::new();
        let mut offsets = BTreeMap::new();
        let mut line = 1usize;
        let mut add = |m: &BorrowedMessage<'_>, text: &mut String| {
            self.metrics.messages.inc();
            offsets.insert(m.partition(), m.offset() + 1);
            let payload = m.payload().unwrap_or_default();
            match std::str::from_utf8(payload) {
                Ok(body) => {
                    origins.push((line, m.partition(), m.offset()));
                    text.push_str(body);
                    if !body.ends_with('\n') {
                        text.push('\n');
                    }
                    line += body.lines().count().max(1);
                }
                Err(e) => {
                    self.metrics.lines_rejected.inc();
                    warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e, "Kafka message is not UTF-8; skipped");
                }
            }
        };
        add(&first, &mut text);
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        for _ in 1..self.config.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => add(&m, &mut text),
                Ok(Err(e)) => {
                    warn!(error = %e, "Kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let parsed = parse_line_protocol(&text, Precision::Nanosecond, now_nanos());
        let mut errors = parsed.errors;
        let w = self.storage.validate(parsed.points);
        errors.extend(w.rejected);
        for e in &errors {
            let (first_line, partition, offset) = origins
                .iter()
                .rev()
                .find(|(l, _, _)| *l <= e.line)
                .copied()
                .unwrap_or((1, -1, -1));
            warn!(
                topic = %self.config.topic,
                partition,
                offset,
                line = e.line + 1 - first_line,
                reason = %e.reason,
                "line of a Kafka message rejected"
            );
        }
        self.metrics.lines_rejected.inc_by(errors.len() as u64);
        match self.storage.commit(w.tables).await {
            Ok(seq) => {
                self.metrics.rows.inc_by(w.accepted as u64);
                Some(Pending { seq, offsets })
            }
            Err(e) => {
                // Not acknowledged to Kafka: seek back so the batch is read again.
                warn!(error = %e, "could not write Kafka messages; re-reading them");
                for (partition, next) in &offsets {
                    let _ = self.consumer.seek(
                        &self.config.topic,
                        *partition,
                        Offset::Offset(next - 1),
                        Duration::from_secs(5),
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        }
    }

    /// Commits the offsets of every batch whose data is persisted.
    fn commit_persisted(&self, pending: &mut VecDeque<Pending>, persisted: u64) {
        let mut done: BTreeMap<i32, i64> = BTreeMap::new();
        while pending.front().is_some_and(|p| p.seq <= persisted) {
            let p = pending.pop_front().expect("checked");
            for (partition, next) in p.offsets {
                let e = done.entry(partition).or_insert(next);
                *e = (*e).max(next);
            }
        }
        if done.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in &done {
            if let Err(e) =
                tpl.add_partition_offset(&self.config.topic, *partition, Offset::Offset(*next))
            {
                warn!(error = %e, partition, "bad offset");
            }
        }
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                self.metrics.commits.inc();
                debug!(?done, "committed Kafka offsets of persisted data");
            }
            // After a rebalance the partition may belong to another member, which
            // re-reads from the last commit; the dedupe absorbs the overlap.
            Err(e) => warn!(error = %e, "committing Kafka offsets failed"),
        }
    }
}
