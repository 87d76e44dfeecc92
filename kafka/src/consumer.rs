//! The storage node's side: a consumer group member writing messages to storage.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use vigil_ingest::{now_nanos, Precision, RemoteWriteBody, WritePipeline};
use vigil_model::{LineError, Point};
use vigil_storage::EncodedWrite;

use crate::format::MessageFormat;
use crate::{Error, KafkaConfig, KafkaMetrics, PartitionLabels};

/// Exports consumer lag from librdkafka's statistics and the assignment size.
struct IngestContext {
    metrics: KafkaMetrics,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &self.metrics.consumer_lag;
        lag.clear();
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1
                // means "not known yet" (no position or watermark).
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: partition.into(),
                    })
                    .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = ?partitions(tpl), "Kafka partitions assigned");
                self.metrics.assigned.set(tpl.count() as i64);
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = ?partitions(tpl), "Kafka partitions revoked");
                self.metrics.assigned.set(0);
                self.metrics.consumer_lag.clear();
            }
            Rebalance::Error(e) => warn!(error = %e, "Kafka rebalance failed"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// A joined consumer, ready to run.
pub struct KafkaIngest {
    consumer: StreamConsumer<IngestContext>,
    dead_letters: Option<FutureProducer>,
    pipeline: Arc<WritePipeline>,
    config: KafkaConfig,
    metrics: KafkaMetrics,
}

/// Offsets (next to read, per partition) of messages written with WAL sequence
/// `seq`, waiting for that sequence to be persisted.
struct Pending {
    seq: u64,
    offsets: BTreeMap<i32, i64>,
}

/// A batch in the WAL: its offsets, and its messages (read again if a batch
/// before it failed).
struct Written {
    pending: Pending,
    batch: Vec<Received>,
}

/// A batch submitted to the WAL: written once fsynced, or its messages to read
/// again.
type Commit = BoxFuture<'static, Result<Written, Vec<Received>>>;

/// Batches submitted to the WAL and not yet acknowledged, at most: their rows are
/// memory the buffer's backpressure does not see yet.
const MAX_COMMITTING: usize = 4;

/// Payload bytes after which a batch stops gathering messages: enough for one
/// WAL record to amortize its fsync, small enough that the parsers take turns.
const BATCH_BYTES: usize = 8 << 20;

/// One message of a batch, copied out of the consumer's buffer.
struct Received {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    format: Result<MessageFormat, String>,
    payload: Vec<u8>,
}

/// A message read for writing: its text or request, once decoded.
enum Decoded<'a> {
    Lines(&'a str, Precision),
    Request(RemoteWriteBody<'a>),
    Unreadable,
}

impl KafkaIngest {
    /// Creates the consumer and subscribes to the topic (the group assigns
    /// partitions once [`KafkaIngest::run`] polls).
    pub fn new(
        pipeline: Arc<WritePipeline>,
        config: KafkaConfig,
        metrics: KafkaMetrics,
    ) -> Result<Self, Error> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "2000")
            // What librdkafka prefetches per partition: the memory a paused or slow
            // node holds beyond its buffer.
            .set("queued.max.messages.kbytes", "16384")
            // Once that much is queued librdkafka postpones the partition's next
            // fetch by this long (1 s by default): a consumer that parses faster
            // than one queue per second would sit idle, waiting for data the
            // broker has.
            .set("fetch.queue.backoff.ms", "10")
            .set("client.id", "vigil");
        config.apply_properties(&mut client);
        let consumer: StreamConsumer<IngestContext> = client
            .create_with_context(IngestContext {
                metrics: metrics.clone(),
            })
            .map_err(|e| Error::client(&config, e))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| Error::client(&config, e))?;
        let dead_letters = match &config.dead_letter_topic {
            Some(_) => Some(
                crate::forwarder::producer_config(&config)
                    .create()
                    .map_err(|e| Error::client(&config, e))?,
            ),
            None => None,
        };
        Ok(Self {
            consumer,
            dead_letters,
            pipeline,
            config,
            metrics,
        })
    }

    /// Consumes until `stop` turns true; then waits (up to 60 s) for the data already
    /// written to be persisted by the shutdown flush, and commits its offsets.
    /// Returns an error when consuming cannot go on without risking that a later
    /// commit skips data (a batch that could not be re-read): the caller reports
    /// it, and the uncommitted messages are read again after a restart.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        info!(topic = %self.config.topic, group = %self.config.group, brokers = %self.config.brokers, "consuming from Kafka");
        let mut persisted = self.pipeline.storage().persisted_seq();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut paused = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // Batches being parsed and validated on blocking threads, one per core
        // and one more (so a core that finishes a batch finds the next one
        // received), while the loop receives the next and commits the previous
        // ones; they are committed in the order they were received. At most
        // five: batches in flight are memory the buffer's backpressure does not
        // see.
        let parsers = std::thread::available_parallelism().map_or(3, |n| n.get().clamp(2, 4) + 1);
        let mut failure = None;
        let mut parsing: FuturesOrdered<tokio::task::JoinHandle<PreparedBatch>> =
            FuturesOrdered::new();
        // Batches handed to the WAL (sequenced in the order received), waiting
        // for their fsync: the loop receives and parses the next ones meanwhile,
        // and the WAL writer can put several in one fsync.
        let mut committing: FuturesOrdered<Commit> = FuturesOrdered::new();
        loop {
            paused = self.apply_backpressure(paused);
            let failed = tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => None,
                _ = persisted.changed() => {
                    let upto = *persisted.borrow_and_update();
                    self.commit_persisted(&mut pending, upto, CommitMode::Async);
                    None
                }
                Some(prepared) = parsing.next() => match prepared {
                    Ok(prepared) => {
                        // Behind the batches submitted before it, so a failure
                        // surfaces in order (below).
                        committing.push_back(self.submit_batch(prepared).await);
                        None
                    }
                    Err(e) => {
                        // Stop consuming, but commit what is persisted first.
                        failure = Some(Error::Parse(e.to_string()));
                        break;
                    }
                },
                Some(done) = committing.next() => match done {
                    Ok(written) => {
                        pending.push_back(written.pending);
                        let upto = *persisted.borrow();
                        self.commit_persisted(&mut pending, upto, CommitMode::Async);
                        None
                    }
                    Err(failed) => Some(failed),
                },
                first = self.consumer.recv(),
                    if parsing.len() < parsers && committing.len() < MAX_COMMITTING =>
                {
                    match first {
                        Ok(m) => {
                            let batch = self.receive_batch(m).await;
                            let pipeline = Arc::clone(&self.pipeline);
                            parsing.push_back(tokio::task::spawn_blocking(move || {
                                prepare_batch(&pipeline, batch)
                            }));
                        }
                        Err(e) => {
                            // The client reconnects by itself; back off so a dead
                            // broker is not polled in a tight loop.
                            warn!(error = %e, "Kafka receive failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    None
                }
            };
            if let Some(failed) = failed {
                // Every batch after the failed one (submitted or being parsed) is
                // read again with it: no offset past it may be committed before
                // it is stored. Those already stored are written twice; the
                // dedupe keeps one.
                let mut again = failed;
                while let Some(later) = committing.next().await {
                    again.extend(match later {
                        Ok(written) => written.batch,
                        Err(batch) => batch,
                    });
                }
                while let Some(later) = parsing.next().await {
                    match later {
                        Ok(later) => again.extend(later.batch),
                        // Its messages come after the failed batch's in each
                        // partition: the seek covers them.
                        Err(e) => warn!(error = %e, "parsing a Kafka batch failed"),
                    }
                }
                if let Err(e) = self.seek_back(&again) {
                    failure = Some(e);
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if let Some(e) = failure {
            // What is persisted already is committed; the rest is read again.
            let upto = *persisted.borrow_and_update();
            self.commit_persisted(&mut pending, upto, CommitMode::Sync);
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let upto = *persisted.borrow_and_update();
            // Synchronous: the commit must reach the broker before the consumer
            // leaves the group, or the next owner re-reads what is stored here.
            self.commit_persisted(&mut pending, upto, CommitMode::Sync);
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
        Ok(())
    }

    /// Pauses every assigned partition while the buffer is over twice its flush
    /// limits (flushing behind), resumes once it is not. Returns the new state.
    fn apply_backpressure(&self, paused: bool) -> bool {
        let over = self.pipeline.storage().over_capacity();
        if !over && !paused {
            return false;
        }
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading the Kafka assignment failed");
                return paused;
            }
        };
        if over {
            // Again on every tick: partitions assigned by a rebalance start unpaused.
            if let Err(e) = self.consumer.pause(&assignment) {
                warn!(error = %e, "pausing Kafka partitions failed");
            }
            if !paused {
                info!("buffer over twice its flush limits: pausing Kafka consumption");
                self.metrics.pauses.inc();
                self.metrics.paused.set(1);
            }
            true
        } else {
            if let Err(e) = self.consumer.resume(&assignment) {
                warn!(error = %e, "resuming Kafka partitions failed");
                return true;
            }
            info!("buffer drained: resuming Kafka consumption");
            self.metrics.paused.set(0);
            false
        }
    }

    /// Reads more messages (up to the batch size or 50 ms) after `first`.
    async fn receive_batch(&self, first: BorrowedMessage<'_>) -> Vec<Received> {
        let mut batch = vec![received(&first)];
        drop(first);
        let mut bytes = batch[0].payload.len();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while batch.len() < self.config.max_batch && bytes < BATCH_BYTES {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    batch.push(received(&m));
                    bytes += batch[batch.len() - 1].payload.len();
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "Kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        self.metrics.messages.inc_by(batch.len() as u64);
        batch
    }

    /// Reports a prepared batch's rejected lines (dead-lettering their messages)
    /// and submits its rows to the WAL in one record. The returned future gives
    /// the offsets to commit once the record is fsynced, or the batch's messages
    /// when they must be read again.
    async fn submit_batch(&self, prepared: PreparedBatch) -> Commit {
        let PreparedBatch {
            batch,
            problems,
            rejected,
            accepted,
            write,
        } = prepared;
        self.metrics.lines_rejected.inc_by(rejected as u64);
        if !self.report_problems(&batch, &problems).await {
            // A rejected message that did not reach the dead-letter topic must not
            // have its offset committed: read the batch again.
            warn!("a rejected message could not be dead-lettered; re-reading the batch");
            return future::ready(Err(batch)).boxed();
        }
        let mut offsets = BTreeMap::new();
        for m in &batch {
            offsets.insert(m.partition, m.offset + 1);
        }
        let storage = Arc::clone(self.pipeline.storage());
        let ack = match write.and_then(|w| w.map(|w| storage.submit(w)).transpose()) {
            Ok(Some(ack)) => ack,
            // Nothing to store (every line rejected): done once persisted
            // catches up with nothing.
            Ok(None) => {
                let pending = Pending { seq: 0, offsets };
                return future::ready(Ok(Written { pending, batch })).boxed();
            }
            Err(e) => {
                // Not acknowledged to Kafka: seek back so the batch is read again.
                warn!(error = %e, "could not write Kafka messages; re-reading them");
                return future::ready(Err(batch)).boxed();
            }
        };
        let rows = self.metrics.rows.clone();
        async move {
            match storage.acknowledged(ack).await {
                Ok(seq) => {
                    rows.inc_by(accepted as u64);
                    Ok(Written {
                        pending: Pending { seq, offsets },
                        batch,
                    })
                }
                Err(e) => {
                    warn!(error = %e, "could not write Kafka messages; re-reading them");
                    Err(batch)
                }
            }
        }
        .boxed()
    }

    /// Moves each partition of a batch back to the batch's first message. If that
    /// fails the consumer's position is past data that is not stored, and any later
    /// commit would skip it: consumption stops instead.
    fn seek_back(&self, batch: &[Received]) -> Result<(), Error> {
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        for m in batch {
            first.entry(m.partition).or_insert(m.offset);
        }
        for (partition, offset) in first {
            self.consumer
                .seek(
                    &self.config.topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                )
                .map_err(|e| Error::Seek {
                    topic: self.config.topic.clone(),
                    partition,
                    offset,
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Logs and counts each rejected line with the message it came from, and copies
    /// those messages to the dead-letter topic (awaited, so a message is in the
    /// dead-letter topic before its offset can be committed).
    /// Returns false when a message could not be copied (the batch must be re-read).
    async fn report_problems(&self, batch: &[Received], problems: &[Vec<LineError>]) -> bool {
        let mut delivered_all = true;
        let mut deliveries = Vec::new();
        for (m, errors) in batch.iter().zip(problems) {
            if errors.is_empty() {
                continue;
            }
            for e in errors.iter().take(10) {
                warn!(topic = %self.config.topic, partition = m.partition, offset = m.offset, line = e.line, reason = %e.reason, "line of a Kafka message rejected");
            }
            let (Some(producer), Some(topic)) =
                (&self.dead_letters, &self.config.dead_letter_topic)
            else {
                continue;
            };
            // Headers stay far below the broker's message size: the first rejected
            // lines are named, and the count says whether there were more.
            let mut lines: Vec<String> = errors
                .iter()
                .take(100)
                .map(|e| e.line.to_string())
                .collect();
            if errors.len() > 100 {
                lines.push(format!("... ({} in all)", errors.len()));
            }
            let reason = truncate(&errors[0].reason, 1000);
            let partition = m.partition.to_string();
            let offset = m.offset.to_string();
            let mut headers = m.headers.clone().unwrap_or_default();
            for (key, value) in [
                ("vigil-error", reason.as_str()),
                ("vigil-rejected-lines", lines.join(",").as_str()),
                ("vigil-source-topic", self.config.topic.as_str()),
                ("vigil-source-partition", partition.as_str()),
                ("vigil-source-offset", offset.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record = FutureRecord::to(topic).payload(&m.payload).headers(headers);
            if let Some(key) = &m.key {
                record = record.key(key);
            }
            match producer.send_result(record) {
                Ok(d) => deliveries.push((m, d)),
                Err((e, _)) => {
                    self.metrics.produce_errors.inc();
                    delivered_all = false;
                    warn!(partition = m.partition, offset = m.offset, error = %e, "could not copy a rejected Kafka message to the dead-letter topic");
                }
            }
        }
        for (m, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {
                    self.metrics.dead_lettered.inc();
                }
                Ok(Err((e, _))) => {
                    self.metrics.produce_errors.inc();
                    delivered_all = false;
                    warn!(partition = m.partition, offset = m.offset, error = %e, "could not copy a rejected Kafka message to the dead-letter topic");
                }
                Err(_) => {
                    self.metrics.produce_errors.inc();
                    delivered_all = false;
                    warn!(
                        partition = m.partition,
                        offset = m.offset,
                        "dead-letter delivery canceled"
                    );
                }
            }
        }
        delivered_all
    }

    /// Commits the offsets of every batch whose data is persisted.
    fn commit_persisted(&self, pending: &mut VecDeque<Pending>, persisted: u64, mode: CommitMode) {
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
        match self.consumer.commit(&tpl, mode) {
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

/// A received batch, parsed and validated, ready to be written.
struct PreparedBatch {
    batch: Vec<Received>,
    /// Per message, its rejected lines (numbered within the message).
    problems: Vec<Vec<LineError>>,
    rejected: usize,
    /// Rows in `write`.
    accepted: usize,
    /// The rows encoded for the WAL (None: no row to store).
    write: Result<Option<EncodedWrite>, vigil_storage::Error>,
}

/// Parses and validates a batch (CPU work, on a blocking thread). Every
/// message's lines (or remote-write series) get numbers in one space, `bases[i]`
/// being the first of message i, so errors lead back to it; every rejected line
/// is mapped back to its message (not only the first reasons the capped HTTP
/// report keeps), since a message with a rejected line must be dead-lettered
/// before its offset is committed.
fn prepare_batch(pipeline: &WritePipeline, batch: Vec<Received>) -> PreparedBatch {
    let mut problems: Vec<Vec<LineError>> = vec![Vec::new(); batch.len()];
    let mut rejected = 0usize;
    // Remote-write messages are decompressed first: the requests read from
    // them borrow their labels from these buffers.
    let raws: Vec<Option<Vec<u8>>> = batch
        .iter()
        .zip(problems.iter_mut())
        .map(|(m, problems)| decompress(pipeline, m, problems))
        .collect();
    let decoded: Vec<Decoded<'_>> = batch
        .iter()
        .zip(&raws)
        .zip(problems.iter_mut())
        .map(|((m, raw), problems)| decode(pipeline, m, raw.as_deref(), problems))
        .collect();
    let now = now_nanos();
    let mut bases = Vec::with_capacity(batch.len());
    let mut next = 1usize;
    let mut points: Vec<(usize, Point<'_>)> = Vec::new();
    for (i, d) in decoded.iter().enumerate() {
        bases.push(next);
        let (mut parsed, span) = match d {
            Decoded::Lines(text, precision) => (
                pipeline.parse_lines(text, *precision, now),
                text.split('\n').count(),
            ),
            Decoded::Request(r) => (pipeline.remote_write_points(r), r.len()),
            Decoded::Unreadable => {
                rejected += 1;
                next += 1;
                continue;
            }
        };
        pipeline.limit_days(&mut parsed);
        rejected += parsed.error_count;
        problems[i].extend(parsed.errors);
        points.extend(parsed.points.into_iter().map(|(n, p)| (next + n - 1, p)));
        next += span.max(1);
    }
    let mut write = pipeline.storage().validate(points);
    rejected += write.rejected_count;
    for e in std::mem::take(&mut write.rejected) {
        // Line 0 (a failure of the whole write) belongs to the first message.
        let i = bases.partition_point(|b| *b <= e.line).saturating_sub(1);
        problems[i].push(LineError {
            line: (e.line + 1).saturating_sub(bases[i]).max(1),
            reason: e.reason,
        });
    }
    drop(decoded);
    drop(raws);
    PreparedBatch {
        batch,
        problems,
        rejected,
        accepted: write.accepted,
        write: pipeline.storage().encode_write(write.tables),
    }
}

fn received(m: &BorrowedMessage<'_>) -> Received {
    Received {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        headers: m.headers().map(|h| h.detach()),
        format: MessageFormat::of(m),
        payload: m.payload().unwrap_or_default().to_vec(),
    }
}

/// Reads a message's payload as its headers say; a message that cannot be read at
/// all is one problem, at line 1.
fn decode<'a>(
    pipeline: &WritePipeline,
    m: &'a Received,
    raw: Option<&'a [u8]>,
    problems: &mut Vec<LineError>,
) -> Decoded<'a> {
    let problem = |reason: String| LineError { line: 1, reason };
    match &m.format {
        Err(e) => problems.push(problem(e.clone())),
        Ok(MessageFormat::LineProtocol(precision)) => match std::str::from_utf8(&m.payload) {
            Ok(text) => return Decoded::Lines(text, *precision),
            Err(e) => problems.push(problem(format!(
                "message is not UTF-8 line protocol (bad byte at {})",
                e.valid_up_to()
            ))),
        },
        Ok(MessageFormat::RemoteWrite) => match raw.map(|raw| pipeline.read_remote_write(raw)) {
            Some(Ok(r)) => return Decoded::Request(r),
            Some(Err(e)) => problems.push(problem(e.to_string())),
            // Not decompressed: its problem is noted already.
            None => {}
        },
    }
    Decoded::Unreadable
}

/// The protobuf of a remote-write message (None for other formats, or when it
/// does not decompress, which is noted as its problem).
fn decompress(
    pipeline: &WritePipeline,
    m: &Received,
    problems: &mut Vec<LineError>,
) -> Option<Vec<u8>> {
    if !matches!(m.format, Ok(MessageFormat::RemoteWrite)) {
        return None;
    }
    match pipeline.decompress_remote_write(&m.payload) {
        Ok(raw) => Some(raw),
        Err(e) => {
            problems.push(LineError {
                line: 1,
                reason: e.to_string(),
            });
            None
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
