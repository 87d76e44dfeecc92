//! The write-ahead log: numbered segment files of checksummed records.
//!
//! Record layout: `len: u32 LE | crc32(seq ++ payload): u32 LE | seq: u64 LE | payload`.
//! The payload holds each table's Arrow batch (its column buffers, see
//! [`crate::wal_columns`]; Arrow IPC in older logs), so replay does not parse
//! line protocol again and yields exactly the batches that were acknowledged.
//! A torn record at the end of the last segment (crash during a write that was never
//! acknowledged) is cut off on replay. Damage anywhere else is corruption of
//! acknowledged data: start-up stops and names the segment and offset, unless the
//! operator asks for recovery (`--wal-recovery truncate`), which drops the damaged
//! record and everything after it in that segment.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

const HEADER: usize = 16;
/// Largest record the log holds: writes are refused above it before they are
/// acknowledged, and a longer length on replay is damage, not an allocation.
pub const MAX_RECORD_BYTES: usize = 1 << 30;

/// Encodes the tables of one write as a WAL payload: their column buffers as
/// they are (see [`crate::wal_columns`]), or Arrow IPC for a column of another
/// type.
pub fn encode_payload(tables: &[(String, RecordBatch)]) -> Result<Vec<u8>> {
    let estimate: usize = tables
        .iter()
        .map(|(name, batch)| {
            // Framing (or IPC's flatbuffers and padding) per table and column.
            name.len() + batch.get_array_memory_size() + 64 * batch.num_columns() + 1024
        })
        .sum();
    let mut out = Vec::with_capacity(8 + estimate);
    if crate::wal_columns::supports(tables) {
        crate::wal_columns::encode(&mut out, tables);
        return Ok(out);
    }
    encode_payload_ipc(&mut out, tables)?;
    Ok(out)
}

/// The payload as a list of (table, Arrow IPC stream), each stream written
/// straight into `out`.
fn encode_payload_ipc(out: &mut Vec<u8>, tables: &[(String, RecordBatch)]) -> Result<()> {
    out.extend_from_slice(&(tables.len() as u32).to_le_bytes());
    for (name, batch) in tables {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let len_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        {
            let mut w = StreamWriter::try_new(&mut *out, &batch.schema())
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
            w.write(batch)
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
            w.finish()
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
        }
        let ipc_len = (out.len() - len_at - 8) as u64;
        out[len_at..len_at + 8].copy_from_slice(&ipc_len.to_le_bytes());
    }
    Ok(())
}

/// Decodes a payload written by [`encode_payload`], in either layout (WALs
/// written before the column layout are IPC).
pub fn decode_payload(p: &[u8]) -> std::result::Result<Vec<(String, RecordBatch)>, String> {
    match p.get(..4) {
        Some(m) if m == crate::wal_columns::MAGIC.to_le_bytes() => {
            crate::wal_columns::decode(&p[4..])
        }
        _ => decode_payload_ipc(p),
    }
}

fn decode_payload_ipc(p: &[u8]) -> std::result::Result<Vec<(String, RecordBatch)>, String> {
    let mut r = crate::wal_columns::Reader { p };
    let count = r.u32("table count")?;
    let mut out = Vec::new();
    for _ in 0..count {
        let name = r.str("table name")?;
        let ilen = usize::try_from(r.u64("IPC length")?).unwrap_or(usize::MAX);
        let ipc = r.take(ilen, "IPC stream")?;
        let reader = StreamReader::try_new(Cursor::new(ipc), None)
            .map_err(|e| format!("bad Arrow IPC for table {name}: {e}"))?;
        for b in reader {
            out.push((
                name.to_string(),
                b.map_err(|e| format!("bad Arrow IPC for table {name}: {e}"))?,
            ));
        }
    }
    Ok(out)
}

/// An open segment being appended to.
pub struct WalSegment {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes of the file known to be durable (after the last successful sync).
    synced_len: u64,
    /// Bytes appended so far, synced or not.
    written_len: u64,
    /// First sequence number this segment may contain (also its file name).
    pub first_seq: u64,
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

impl WalSegment {
    pub fn create(dir: &Path, first_seq: u64) -> Result<Self> {
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Ok(Self {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            synced_len: len,
            written_len: len,
            first_seq,
        })
    }

    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(Error::WriteTooLarge {
                size: payload.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(payload);
        let len = payload.len() as u32;
        let w = &mut self.file;
        (|| {
            w.write_all(&len.to_le_bytes())?;
            w.write_all(&h.finalize().to_le_bytes())?;
            w.write_all(&seq.to_le_bytes())?;
            w.write_all(payload)
        })()
        .map_err(|e| Error::io(&self.path, e))?;
        self.written_len += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))?;
        self.synced_len = self.written_len;
        Ok(())
    }

    /// Gives the segment up after a failed append or sync: what was not synced is
    /// cut off (it was never acknowledged), so the segment ends cleanly and no later
    /// record is ever appended after a failure. The caller continues in a new one.
    pub fn abandon(self) -> Result<()> {
        let path = self.path;
        // The unwritten buffer is discarded, not flushed.
        let (file, _unwritten) = self.file.into_parts();
        file.set_len(self.synced_len)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Segment files in `dir`, oldest first, with their first sequence numbers.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("wal") {
            continue;
        }
        if let Some(seq) = p
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out)
}

/// One record read back from a segment.
pub struct WalRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// How replay treats a damaged record that is not a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalRecovery {
    /// Stop start-up with an error naming the segment and offset.
    #[default]
    Refuse,
    /// Drop the damaged record and the rest of its segment, with a warning.
    Truncate,
}

/// Reads all intact records of a segment. In the last segment a torn tail (a record
/// cut short, or a zero-filled end, from a crash during a write that was never
/// acknowledged) is cut off and reported in the returned warning; any other damage is
/// an error, unless `recovery` says to truncate.
pub fn read_segment(
    path: &Path,
    is_last: bool,
    recovery: WalRecovery,
) -> Result<(Vec<WalRecord>, Option<String>)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut off = 0usize;
    let mut damage: Option<(String, bool)> = None;
    while off < data.len() {
        // A zero-filled rest of the file is space the crash left unwritten.
        let zero_tail = data[off..].iter().all(|b| *b == 0);
        if data.len() - off < HEADER {
            damage = Some((format!("torn record header at offset {off}"), true));
            break;
        }
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap());
        if len > MAX_RECORD_BYTES {
            damage = Some((
                format!("record length {len} at offset {off} is over the maximum"),
                zero_tail,
            ));
            break;
        }
        if data.len() - off - HEADER < len {
            damage = Some((format!("torn record (length {len}) at offset {off}"), true));
            break;
        }
        let payload = &data[off + HEADER..off + HEADER + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            // The last record written, perhaps followed by never-written (zero)
            // space: a write that was cut short by a crash.
            let nothing_after = data[off + HEADER + len..].iter().all(|b| *b == 0);
            damage = Some((
                format!("checksum mismatch at offset {off}"),
                nothing_after || zero_tail,
            ));
            break;
        }
        records.push(WalRecord {
            seq,
            payload: payload.to_vec(),
        });
        off += HEADER + len;
    }
    let warning = match damage {
        None => None,
        Some((what, tail)) if tail && is_last => Some(what),
        Some((what, _)) if recovery == WalRecovery::Truncate => {
            tracing::error!(segment = %path.display(), offset = off, "WAL damaged ({what}); recovery drops this record and the rest of the segment");
            Some(format!("{what}; dropped the rest of the segment (WAL recovery)"))
        }
        Some((what, _)) => {
            return Err(Error::CorruptWal {
                path: path.to_path_buf(),
                offset: off as u64,
                message: format!(
                    "{what}, with {} more bytes after it: acknowledged data may be damaged. Keep a copy of the data directory, then start with --wal-recovery truncate to drop the damaged record and the rest of this segment",
                    data.len() - off
                ),
            })
        }
    };
    if warning.is_some() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(off as u64).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    Ok((records, warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn roundtrip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let b =
            RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
                .unwrap();
        let payload = encode_payload(&[("t".into(), b.clone())]).unwrap();
        let mut seg = WalSegment::create(dir.path(), 1).unwrap();
        seg.append(1, &payload).unwrap();
        seg.append(2, &payload).unwrap();
        seg.sync().unwrap();
        let path = seg.path().to_path_buf();
        drop(seg);
        // Simulate a crash in the middle of a third record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 9, 9, 0, 1]).unwrap();
        drop(f);
        let e = read_segment(&path, false, WalRecovery::Refuse)
            .err()
            .unwrap();
        assert!(e.to_string().contains("torn"), "not the last segment: {e}");
        let (recs, warn) = read_segment(&path, true, WalRecovery::Refuse).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(warn.unwrap().contains("torn"));
        assert_eq!(recs[1].seq, 2);
        let tables = decode_payload(&recs[0].payload).unwrap();
        assert_eq!(tables[0].0, "t");
        assert_eq!(tables[0].1, b);
        // The tail was truncated, so a second read is clean.
        let (recs, warn) = read_segment(&path, true, WalRecovery::Refuse).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(warn.is_none());
        assert!(decode_payload(&[1, 2]).is_err());
    }

    fn two_records(dir: &Path) -> (PathBuf, usize) {
        let b =
            RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
                .unwrap();
        let payload = encode_payload(&[("t".into(), b)]).unwrap();
        let mut seg = WalSegment::create(dir, 1).unwrap();
        seg.append(1, &payload).unwrap();
        seg.append(2, &payload).unwrap();
        seg.sync().unwrap();
        (seg.path().to_path_buf(), HEADER + payload.len())
    }

    #[test]
    fn damage_before_the_tail_stops_replay_unless_recovering() {
        let dir = tempfile::tempdir().unwrap();
        let (path, record) = two_records(dir.path());
        let mut data = fs::read(&path).unwrap();
        data[HEADER + 3] ^= 0xff; // inside the first record's payload
        fs::write(&path, &data).unwrap();
        let e = read_segment(&path, true, WalRecovery::Refuse)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("offset 0") && e.contains("--wal-recovery"),
            "{e}"
        );
        assert_eq!(
            fs::read(&path).unwrap().len(),
            2 * record,
            "nothing cut off"
        );
        let (recs, warn) = read_segment(&path, true, WalRecovery::Truncate).unwrap();
        assert!(recs.is_empty());
        assert!(warn.unwrap().contains("recovery"));
    }

    #[test]
    fn checksum_damage_in_the_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, record) = two_records(dir.path());
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        // A zero-filled block after it, as a crash can leave.
        data.extend_from_slice(&[0; 4096]);
        fs::write(&path, &data).unwrap();
        let (recs, warn) = read_segment(&path, true, WalRecovery::Refuse).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(warn.unwrap().contains("checksum"));
        assert_eq!(
            fs::read(&path).unwrap().len(),
            record,
            "cut at the torn record"
        );
    }

    #[test]
    fn abandon_cuts_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (path, record) = two_records(dir.path());
        let mut seg = WalSegment::create(dir.path(), 1).unwrap();
        assert_eq!(seg.synced_len as usize, 2 * record);
        seg.append(3, b"not synced").unwrap();
        seg.abandon().unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), 2 * record);
    }

    #[test]
    fn payload_roundtrips_several_tables_with_dictionaries() {
        use arrow::array::{Float64Array, StringDictionaryBuilder};
        use arrow::datatypes::Int32Type;
        let batch = |hosts: &[&str], v: f64| {
            let mut tags = StringDictionaryBuilder::<Int32Type>::new();
            for h in hosts {
                tags.append_value(h);
            }
            RecordBatch::try_from_iter([
                ("host", Arc::new(tags.finish()) as arrow::array::ArrayRef),
                (
                    "value",
                    Arc::new(Float64Array::from(vec![v; hosts.len()])) as _,
                ),
            ])
            .unwrap()
        };
        let tables = vec![
            ("cpu".to_string(), batch(&["a", "b", "a"], 1.5)),
            ("mem".to_string(), batch(&["c"], 2.0)),
            ("cpu".to_string(), batch(&[], 0.0)),
            ("cpu".to_string(), batch(&["b", "z"], -1.0)),
        ];
        let payload = encode_payload(&tables).unwrap();
        assert_eq!(&payload[..4], &u32::MAX.to_le_bytes());
        assert_eq!(decode_payload(&payload).unwrap(), tables);
        // Logs written before the column layout hold IPC, and still replay.
        let mut ipc = Vec::new();
        encode_payload_ipc(&mut ipc, &tables).unwrap();
        assert_eq!(decode_payload(&ipc).unwrap(), tables);
        // A payload cut anywhere is an error, never a panic or a short read.
        for cut in [1, 4, 10, payload.len() / 2, payload.len() - 1] {
            assert!(decode_payload(&payload[..cut]).is_err(), "cut at {cut}");
        }
    }
}
