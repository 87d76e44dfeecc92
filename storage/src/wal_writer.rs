//! The WAL writer: one thread that sequences writes, appends them to the current
//! [`WalSegment`], fsyncs once per group, applies the group to the buffer and
//! acknowledges it; and the replay that rebuilds the buffer at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::buffer::{TableBuffer, WriteBuffer};
use crate::catalog::CatalogState;
use crate::error::{Error, Result};
use crate::metrics::StorageMetrics;
use crate::problems::Problems;
use crate::tables::TableSchemas;
use crate::wal::{self, WalSegment};

enum WalCommand {
    Write {
        payload: Vec<u8>,
        tables: Vec<(String, RecordBatch)>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Start a new segment and hand the buffer over for flushing.
    Rotate {
        reply: oneshot::Sender<Result<RotateResult>>,
    },
}

/// The buffer handed over for flushing, and the WAL it replaces.
pub(crate) struct RotateResult {
    /// The last record in the handed-over buffer.
    pub(crate) last_seq: u64,
    /// Segments that start before this sequence are flushed once the buffer is.
    pub(crate) new_segment_first_seq: u64,
    pub(crate) snapshot: HashMap<String, TableBuffer>,
}

/// The running WAL writer.
pub(crate) struct WalWriter {
    tx: Mutex<Option<mpsc::Sender<WalCommand>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WalWriter {
    /// Starts writing a new segment in `dir` at `next_seq`.
    pub(crate) fn start(
        dir: &Path,
        next_seq: u64,
        buffer: Arc<Mutex<WriteBuffer>>,
        metrics: StorageMetrics,
        problems: Problems,
    ) -> Result<Self> {
        let segment = WalSegment::create(dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let dir = dir.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("vigil-wal".into())
            .spawn(move || wal_loop(rx, segment, next_seq, dir, buffer, metrics, problems))
            .map_err(|e| Error::io("wal thread", e))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(handle)),
        })
    }

    fn send(&self, cmd: WalCommand) -> Result<()> {
        self.tx
            .lock()
            .as_ref()
            .ok_or(Error::WalClosed)?
            .send(cmd)
            .map_err(|_| Error::WalClosed)
    }

    /// Queues a write (sequenced in the order of these calls); the receiver gets
    /// its sequence number once it is fsynced with its group and in the buffer.
    pub(crate) fn submit(
        &self,
        payload: Vec<u8>,
        tables: Vec<(String, RecordBatch)>,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.send(WalCommand::Write {
            payload,
            tables,
            reply,
        })?;
        Ok(rx)
    }

    /// Starts a new segment and takes the buffer for flushing.
    pub(crate) async fn rotate(&self) -> Result<RotateResult> {
        let (reply, rx) = oneshot::channel();
        self.send(WalCommand::Rotate { reply })?;
        rx.await.map_err(|_| Error::WalClosed)?
    }

    /// Stops the thread once it has answered what was sent before.
    pub(crate) async fn close(&self) {
        self.tx.lock().take();
        let thread = self.thread.lock().take();
        if let Some(h) = thread {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Replays what was acknowledged but not yet flushed into `buffer` (and the
/// columns it adds into `schemas`); returns the next sequence number.
pub(crate) fn replay(
    config: &crate::StorageConfig,
    catalog: &CatalogState,
    schemas: &TableSchemas,
    buffer: &mut WriteBuffer,
) -> Result<u64> {
    let dir = &config.data_dir;
    // Replay what was acknowledged but not yet flushed.
    let wal_dir = dir.join("wal");
    let mut next_seq = catalog.flushed_seq + 1;
    let mut replayed = 0usize;
    let segments = wal::list_segments(&wal_dir)?;
    let last = segments.len().saturating_sub(1);
    for (i, (_, path)) in segments.iter().enumerate() {
        let (records, warning) = wal::read_segment(path, i == last, config.wal_recovery)?;
        if let Some(w) = warning {
            warn!(segment = %path.display(), "WAL tail cut off: {w}");
        }
        for r in records {
            next_seq = next_seq.max(r.seq + 1);
            if r.seq <= catalog.flushed_seq {
                continue;
            }
            let mut tables =
                wal::decode_payload(&r.payload).map_err(|message| Error::CorruptWal {
                    path: path.clone(),
                    offset: 0,
                    message: format!("record {}: {message}", r.seq),
                })?;
            // Tables whose flush succeeded while another's failed are in Parquet.
            tables.retain(|(t, _)| r.seq > catalog.table_flushed_seq.get(t).copied().unwrap_or(0));
            for (t, b) in &tables {
                schemas.learn_columns(t, b);
            }
            replayed += tables.iter().map(|(_, b)| b.num_rows()).sum::<usize>();
            buffer.apply(r.seq, &tables);
        }
    }
    if replayed > 0 {
        info!(rows = replayed, "replayed WAL");
    }
    Ok(next_seq)
}

/// The WAL sequencer: appends records in arrival order, fsyncs once per group, then
/// applies the group to the buffer in sequence order and acknowledges it.
fn wal_loop(
    rx: mpsc::Receiver<WalCommand>,
    segment: WalSegment,
    mut next_seq: u64,
    dir: PathBuf,
    buffer: Arc<Mutex<WriteBuffer>>,
    metrics: StorageMetrics,
    problems: Problems,
) {
    type Pending = Vec<(
        u64,
        Vec<(String, RecordBatch)>,
        oneshot::Sender<Result<u64>>,
    )>;
    // Syncs and acknowledges the pending writes; false if they failed.
    let commit = |segment: &mut WalSegment, pending: &mut Pending, failed: &mut Option<String>| {
        if pending.is_empty() {
            return failed.is_none();
        }
        let synced = match failed.clone() {
            Some(e) => Err(e),
            None => segment.sync().map_err(|e| e.to_string()),
        };
        metrics.wal_fsyncs.inc();
        match synced {
            Ok(()) => {
                let mut b = buffer.lock();
                for (seq, tables, _) in pending.iter() {
                    b.apply(*seq, tables);
                }
                drop(b);
                for (seq, _, reply) in pending.drain(..) {
                    let _ = reply.send(Ok(seq));
                }
                true
            }
            Err(e) => {
                for (_, _, reply) in pending.drain(..) {
                    let _ = reply.send(Err(Error::io(
                        segment.path(),
                        std::io::Error::other(e.clone()),
                    )));
                }
                *failed = Some(e);
                false
            }
        }
    };
    // After a failed append or fsync nothing more is appended to that segment: what
    // was not synced is cut off and writing goes on in a new segment. If even that
    // fails the log stops taking writes (and says so on /health).
    let mut segment = Some(segment);
    let mut broken: Option<String> = None;
    let replace = |old: WalSegment, next_seq: u64, why: &str| -> Result<WalSegment> {
        warn!(segment = %old.path().display(), error = why, "WAL write failed; continuing in a new segment");
        old.abandon()?;
        WalSegment::create(&dir, next_seq)
    };
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        while cmds.len() < 10_000 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        let mut pending: Pending = Vec::new();
        let mut failed: Option<String> = None;
        for cmd in cmds {
            let Some(seg) = segment.as_mut() else {
                let why = broken.clone().unwrap_or_default();
                match cmd {
                    WalCommand::Write { reply, .. } => {
                        let _ = reply.send(Err(Error::WalFailed(why)));
                    }
                    WalCommand::Rotate { reply } => {
                        let _ = reply.send(Err(Error::WalFailed(why)));
                    }
                }
                continue;
            };
            match cmd {
                WalCommand::Write {
                    payload,
                    tables,
                    reply,
                } => {
                    if failed.is_some() {
                        let _ = reply.send(Err(Error::WalClosed));
                        continue;
                    }
                    let seq = next_seq;
                    next_seq += 1;
                    match seg.append(seq, &payload) {
                        Ok(()) => {
                            metrics.wal_records.inc();
                            metrics.wal_bytes.inc_by(payload.len() as u64 + 16);
                            pending.push((seq, tables, reply));
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                WalCommand::Rotate { reply } => {
                    if !commit(seg, &mut pending, &mut failed) {
                        let _ =
                            reply.send(Err(Error::WalFailed(failed.clone().unwrap_or_default())));
                        continue;
                    }
                    let r = WalSegment::create(&dir, next_seq).map(|s| {
                        let _ = seg.sync();
                        *seg = s;
                        RotateResult {
                            last_seq: next_seq - 1,
                            new_segment_first_seq: next_seq,
                            snapshot: buffer.lock().start_flush(),
                        }
                    });
                    let _ = reply.send(r);
                }
            }
        }
        if let Some(seg) = segment.as_mut() {
            commit(seg, &mut pending, &mut failed);
        }
        if let Some(why) = failed {
            let old = segment.take().expect("a failure needs a segment");
            match replace(old, next_seq, &why) {
                Ok(s) => segment = Some(s),
                Err(e) => {
                    let reason = format!("{why}; then could not start a new segment: {e}");
                    tracing::error!(error = %reason, "the WAL takes no more writes");
                    problems.set("wal", reason.clone());
                    broken = Some(reason);
                }
            }
        }
    }
}
