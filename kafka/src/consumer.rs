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
use vigil_storage::{EncodedWrite, ValidatedWrite};

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

/// Per partition, the offset of a batch's first message: where to seek back to
/// read the batch again.
type Firsts = BTreeMap<i32, i64>;

/// A batch being parsed: its first offsets (known before parsing, so even a
/// batch whose parser panicked can be read again) and the parsed batch.
type Parsing = BoxFuture<'static, (Firsts, Result<PreparedBatch, tokio::task::JoinError>)>;

/// A batch in the WAL, fsynced.
struct Written {
    pending: Pending,
    firsts: Firsts,
    rows: usize,
}

/// A batch submitted to the WAL: written once fsynced, or (failed) where to read
/// it again from.
type Commit = BoxFuture<'static, Result<Written, Firsts>>;

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
        let mut parsing: FuturesOrdered<Parsing> = FuturesOrdered::new();
        // Batches handed to the WAL (sequenced in the order received), waiting
        // for their fsync: the loop receives and parses the next ones meanwhile,
        // and the WAL writer can put several in one fsync.
        let mut committing: FuturesOrdered<Commit> = FuturesOrdered::new();
        loop {
            paused = self.apply_backpressure(paused);
            // Where to read again from after a failure, and whether the batches
            // still in `committing` come after it (an acknowledgement failed) or
            // before it (the failed batch never reached the WAL).
            let failed: Option<(Firsts, bool)> = tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => None,
                _ = persisted.changed() => {
                    let upto = *persisted.borrow_and_update();
                    self.commit_persisted(&mut pending, upto, CommitMode::Async);
                    None
                }
                Some((firsts, prepared)) = parsing.next(), if committing.len() < MAX_COMMITTING => {
                    match prepared {
                        Ok(prepared) => match self.submit_batch(prepared, firsts).await {
                            Ok(commit) => {
                                committing.push_back(commit);
                                None
                            }
                            Err(firsts) => Some((firsts, false)),
                        },
                        Err(e) => {
                            // Stop consuming, but commit what is persisted first
                            // (the batch and those after it are read again by
                            // whoever consumes next).
                            failure = Some(Error::Parse(e.to_string()));
                            break;
                        }
                    }
                }
                Some(done) = committing.next() => match done {
                    Ok(written) => {
                        self.written(written, &mut pending);
                        let upto = *persisted.borrow();
                        self.commit_persisted(&mut pending, upto, CommitMode::Async);
                        None
                    }
                    Err(firsts) => Some((firsts, true)),
                },
                first = self.consumer.recv(), if parsing.len() < parsers => {
                    match first {
                        Ok(m) => {
                            let batch = self.receive_batch(m).await;
                            let mut firsts = Firsts::new();
                            for m in &batch {
                                firsts.entry(m.partition).or_insert(m.offset);
                            }
                            let pipeline = Arc::clone(&self.pipeline);
                            let parse =
                                tokio::task::spawn_blocking(move || prepare_batch(&pipeline, batch));
                            parsing.push_back(async move { (firsts, parse.await) }.boxed());
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
            if let Some((firsts, committing_after)) = failed {
                // The failed batch and every batch after it (submitted or being
                // parsed) are read again: no offset past it may be committed
                // before it is stored. Submitted batches before it finish as usual.
                let mut again = vec![firsts];
                let mut after = committing_after;
                while let Some(done) = committing.next().await {
                    match done {
                        Ok(written) if !after => self.written(written, &mut pending),
                        Ok(written) => again.push(written.firsts),
                        Err(firsts) => {
                            after = true;
                            again.push(firsts);
                        }
                    }
                }
                while let Some((firsts, _)) = parsing.next().await {
                    again.push(firsts);
                }
                if let Err(e) = self.seek_back(&again) {
                    failure = Some(e);
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // Batches being parsed are dropped (not stored, not committed: read again
        // by whoever consumes next). Those submitted to the WAL are stored by the
        // shutdown flush: their offsets are committed below once persisted, up to
        // the first that failed.
        drop(parsing);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, committing.next()).await {
            match done {
                Ok(written) => self.written(written, &mut pending),
                Err(_) => break,
            }
        }
        drop(committing);
        if let Some(e) = failure {
            // What is persisted already is committed; the rest is read again.
            let upto = *persisted.borrow_and_update();
            self.commit_persisted(&mut pending, upto, CommitMode::Sync);
            return Err(e);
        }
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

    /// Counts a batch's rows as written and queues its offsets for committing
    /// once persisted.
    fn written(&self, written: Written, pending: &mut VecDeque<Pending>) {
        self.metrics.rows.inc_by(written.rows as u64);
        pending.push_back(written.pending);
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
    /// and submits its rows to the WAL (one record, or several when one would be
    /// over the WAL's record limit). The returned future gives the offsets to
    /// commit once the records are fsynced. Fails (where to read the batch again
    /// from) before anything of the batch reaches the WAL.
    async fn submit_batch(
        &self,
        prepared: PreparedBatch,
        firsts: Firsts,
    ) -> Result<Commit, Firsts> {
        let PreparedBatch {
            batch,
            problems,
            rejected,
            accepted,
            writes,
        } = prepared;
        // First the failure that re-reads the batch without dead-lettering
        // anything, so a re-read does not copy the same message twice.
        let writes = match writes {
            Ok(writes) => writes,
            Err(e) => {
                warn!(error = %e, "could not write Kafka messages; re-reading them");
                return Err(firsts);
            }
        };
        if !self.report_problems(&batch, &problems).await {
            // A rejected message that did not reach the dead-letter topic must not
            // have its offset committed: read the batch again.
            warn!("a rejected message could not be dead-lettered; re-reading the batch");
            return Err(firsts);
        }
        self.metrics.lines_rejected.inc_by(rejected as u64);
        let mut offsets = BTreeMap::new();
        for m in &batch {
            offsets.insert(m.partition, m.offset + 1);
        }
        drop(batch);
        let storage = Arc::clone(self.pipeline.storage());
        let mut acks = Vec::with_capacity(writes.len());
        for write in writes {
            match storage.submit(write) {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    warn!(error = %e, "could not write Kafka messages; re-reading them");
                    if acks.is_empty() {
                        return Err(firsts);
                    }
                    // Part of the batch is in the WAL: it fails in order, behind
                    // the batches submitted before it.
                    return Ok(future::ready(Err(firsts)).boxed());
                }
            }
        }
        Ok(async move {
            // With no write (every line rejected) sequence 0, persisted already:
            // the offsets are committed with the next commit.
            let mut seq = 0;
            for ack in acks {
                match storage.acknowledged(ack).await {
                    Ok(s) => seq = s,
                    Err(e) => {
                        warn!(error = %e, "could not write Kafka messages; re-reading them");
                        return Err(firsts);
                    }
                }
            }
            Ok(Written {
                pending: Pending { seq, offsets },
                firsts,
                rows: accepted,
            })
        }
        .boxed())
    }

    /// Moves each partition back to the first message of the earliest of
    /// `batches` that holds it. If that fails the consumer's position is past
    /// data that is not stored, and any later commit would skip it: consumption
    /// stops instead.
    fn seek_back(&self, batches: &[Firsts]) -> Result<(), Error> {
        let mut first = Firsts::new();
        for (partition, offset) in batches.iter().flatten() {
            let e = first.entry(*partition).or_insert(*offset);
            *e = (*e).min(*offset);
        }
        // A partition revoked by a rebalance while the batches were in flight
        // is not this node's to seek (librdkafka refuses it): its new owner
        // starts from the last commit, which is not past these batches, since
        // no offset past a failed batch is committed.
        if let Ok(assignment) = self.consumer.assignment() {
            first.retain(|partition, _| {
                assignment
                    .find_partition(&self.config.topic, *partition)
                    .is_some()
            });
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
    /// Rows in `writes`.
    accepted: usize,
    /// The rows encoded for the WAL, in order: one record, or more when one
    /// would be over the WAL's record limit (none: no row to store).
    writes: Result<Vec<EncodedWrite>, vigil_storage::Error>,
}

/// Parses, validates and encodes a batch (CPU work, on a blocking thread).
fn prepare_batch(pipeline: &WritePipeline, batch: Vec<Received>) -> PreparedBatch {
    let mut problems: Vec<Vec<LineError>> = vec![Vec::new(); batch.len()];
    let mut writes = Vec::new();
    let counts = prepare_messages(pipeline, &batch, &mut problems, &mut writes);
    let (rejected, accepted) = counts.as_ref().map_or((0, 0), |c| *c);
    PreparedBatch {
        batch,
        problems,
        rejected,
        accepted,
        writes: counts.map(|_| writes),
    }
}

/// Parses and validates `messages` and encodes their rows as one WAL record
/// (appended to `writes`); returns the lines rejected and the rows accepted.
/// Messages whose rows together are over the WAL's record limit are split in
/// halves, each parsed again; a single message over it is rejected whole
/// (dead-lettered like any rejected message), so it cannot stop the consumer.
fn prepare_messages(
    pipeline: &WritePipeline,
    messages: &[Received],
    problems: &mut [Vec<LineError>],
    writes: &mut Vec<EncodedWrite>,
) -> Result<(usize, usize), vigil_storage::Error> {
    problems.iter_mut().for_each(Vec::clear);
    let (rejected, write) = parse_messages(pipeline, messages, problems);
    let accepted = write.accepted;
    match pipeline.storage().encode_write(write.tables) {
        Ok(Some(write)) => {
            writes.push(write);
            Ok((rejected, accepted))
        }
        Ok(None) => Ok((rejected, accepted)),
        Err(vigil_storage::Error::WriteTooLarge { .. }) if messages.len() > 1 => {
            let mid = messages.len() / 2;
            let (problems_a, problems_b) = problems.split_at_mut(mid);
            let a = prepare_messages(pipeline, &messages[..mid], problems_a, writes)?;
            let b = prepare_messages(pipeline, &messages[mid..], problems_b, writes)?;
            Ok((a.0 + b.0, a.1 + b.1))
        }
        Err(vigil_storage::Error::WriteTooLarge { size, limit }) => {
            problems[0] = vec![LineError {
                line: 1,
                reason: format!(
                    "message too large to store: its {accepted} rows take {size} bytes in the \
                     WAL, over storage.max_wal_record_bytes ({limit})"
                ),
            }];
            Ok((rejected + accepted.max(1), 0))
        }
        Err(e) => Err(e),
    }
}

/// Parses and validates messages (CPU work). Every message's lines (or
/// remote-write series) get numbers in one space, `bases[i]` being the first of
/// message i, so errors lead back to it; every rejected line is mapped back to
/// its message in `problems` (not only the first reasons the capped HTTP report
/// keeps), since a message with a rejected line must be dead-lettered before its
/// offset is committed. Returns the lines rejected and the validated rows.
fn parse_messages(
    pipeline: &WritePipeline,
    batch: &[Received],
    problems: &mut [Vec<LineError>],
) -> (usize, ValidatedWrite) {
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
    (rejected, write)
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
