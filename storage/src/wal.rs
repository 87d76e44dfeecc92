//! The write-ahead log: numbered segment files of checksummed records.
//!
//! Record layout: `len: u32 LE | crc32(seq ++ payload): u32 LE | seq: u64 LE | payload`.
//! The payload is a list of (table, Arrow IPC stream) pairs, so replay does not parse
//! line protocol again and yields exactly the batches that were acknowledged.
//! A torn record at the end of the last segment (crash during a write that was never
//! acknowledged) is cut off on replay.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

const HEADER: usize = 16;
/// Records larger than this are treated as corruption rather than allocated.
const MAX_RECORD: u32 = 1 << 30;

/// Encodes the tables of one write as a WAL payload.
pub fn encode_payload(tables: &[(String, RecordBatch)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(tables.len() as u32).to_le_bytes());
    for (name, batch) in tables {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &batch.schema())
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
            w.write(batch)
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
            w.finish()
                .map_err(|e| Error::arrow("encoding WAL record", e))?;
        }
        out.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        out.extend_from_slice(&ipc);
    }
    Ok(out)
}

/// Decodes a payload written by [`encode_payload`].
pub fn decode_payload(mut p: &[u8]) -> std::result::Result<Vec<(String, RecordBatch)>, String> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if p.len() < n {
            return Err(format!(
                "payload truncated: need {n} bytes, have {}",
                p.len()
            ));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    let count = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap());
    let mut out = Vec::new();
    for _ in 0..count {
        let nlen = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize;
        let name = std::str::from_utf8(take(&mut p, nlen)?)
            .map_err(|e| format!("table name is not UTF-8: {e}"))?
            .to_string();
        let ilen = u64::from_le_bytes(take(&mut p, 8)?.try_into().unwrap()) as usize;
        let ipc = take(&mut p, ilen)?;
        let reader = StreamReader::try_new(Cursor::new(ipc), None)
            .map_err(|e| format!("bad Arrow IPC for table {name}: {e}"))?;
        for b in reader {
            out.push((
                name.clone(),
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
        Ok(Self {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            first_seq,
        })
    }

    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
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
        .map_err(|e| Error::io(&self.path, e))
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
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

/// Reads all intact records of a segment. A torn or corrupt tail is cut off (the file
/// is truncated to the last good record) and reported in the returned warning.
pub fn read_segment(path: &Path) -> Result<(Vec<WalRecord>, Option<String>)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut off = 0usize;
    let mut warning = None;
    while off < data.len() {
        if data.len() - off < HEADER {
            warning = Some(format!("torn record header at offset {off}"));
            break;
        }
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap());
        if len > MAX_RECORD || data.len() - off - HEADER < len as usize {
            warning = Some(format!("torn record (length {len}) at offset {off}"));
            break;
        }
        let payload = &data[off + HEADER..off + HEADER + len as usize];
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            warning = Some(format!("checksum mismatch at offset {off}"));
            break;
        }
        records.push(WalRecord {
            seq,
            payload: payload.to_vec(),
        });
        off += HEADER + len as usize;
    }
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
        let (recs, warn) = read_segment(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(warn.unwrap().contains("torn"));
        assert_eq!(recs[1].seq, 2);
        let tables = decode_payload(&recs[0].payload).unwrap();
        assert_eq!(tables[0].0, "t");
        assert_eq!(tables[0].1, b);
        // The tail was truncated, so a second read is clean.
        let (recs, warn) = read_segment(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(warn.is_none());
        assert!(decode_payload(&[1, 2]).is_err());
    }
}
