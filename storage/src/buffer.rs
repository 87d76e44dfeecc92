//! The in-memory write buffer: Arrow batches per table, in WAL order, queryable at once.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    new_null_array, ArrayBuilder, ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder,
    Int32Array, Int64Builder, StringArray, StringBuilder, TimestampNanosecondBuilder, UInt64Array,
    UInt64Builder,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::schema::{ColumnKind, FieldType, SEQ_COLUMN, TIME_COLUMN};
use vigil_model::{FieldValue, Point};

/// A batch in the buffer, with the WAL sequence number of the write it came from
/// and its time range (computed once here, read by every query that prunes).
#[derive(Debug, Clone)]
pub struct BufferedBatch {
    pub seq: u64,
    /// Rows of the same table earlier in the same write (a sparse write is split
    /// into several batches), so row numbers, and with them last-write-wins, run on
    /// across the batches of one request.
    pub row_base: usize,
    pub batch: RecordBatch,
    pub min_time: i64,
    pub max_time: i64,
    /// The hidden sequence value of each row when the batch holds the rows of
    /// several writes (merged in the buffer, see [`TableBuffer::push`]); `seq`
    /// is then the last of them. `None`: the rows run on from
    /// [`BufferedBatch::first_row_seq`].
    pub row_seqs: Option<Arc<UInt64Array>>,
}

impl BufferedBatch {
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        self.min_time <= max && self.max_time >= min
    }

    /// The hidden sequence value of this batch's first row, for a batch of one
    /// write (a merged batch has `row_seqs`).
    fn first_row_seq(&self) -> u64 {
        debug_assert!(self.row_seqs.is_none());
        row_seq(self.seq, self.row_base)
    }

    /// The batch widened to `schema`, with the hidden sequence column
    /// (`seq_schema` is [`with_seq_column`] of `schema`).
    pub fn normalized(
        &self,
        schema: &SchemaRef,
        seq_schema: &SchemaRef,
    ) -> arrow::error::Result<RecordBatch> {
        match &self.row_seqs {
            None => normalize_with_seq(&self.batch, schema, seq_schema, self.first_row_seq()),
            Some(seqs) => with_seqs(
                &self.batch,
                schema,
                seq_schema,
                Arc::clone(seqs) as ArrayRef,
            ),
        }
    }

    /// Bytes the batch holds in memory, its sequences included.
    pub fn memory_size(&self) -> usize {
        self.batch.get_array_memory_size()
            + self.row_seqs.as_ref().map_or(0, |s| {
                arrow::array::Array::get_array_memory_size(s.as_ref())
            })
    }

    fn extend_row_seqs(&self, out: &mut Vec<u64>) {
        match &self.row_seqs {
            Some(seqs) => out.extend_from_slice(seqs.values()),
            None => extend_row_seqs(out, self.first_row_seq(), self.batch.num_rows()),
        }
    }
}

/// Batches of one write that a table's buffer gathers before merging them into
/// one (see [`TableBuffer::push`]).
const MERGE_BATCHES: usize = 64;
/// A write's batch with at most this many rows counts as small.
const SMALL_BATCH_ROWS: usize = 4096;

/// Everything buffered for one table since its last flush.
#[derive(Debug, Default, Clone)]
pub struct TableBuffer {
    pub batches: Vec<BufferedBatch>,
    pub rows: usize,
    pub bytes: usize,
    /// Small batches of one write and one schema at the end of `batches`.
    small_tail: usize,
}

impl TableBuffer {
    /// Adds a batch. Every [`MERGE_BATCHES`] small batches in a row (of one
    /// schema) are merged into one, dictionaries deduplicated: a remote-write
    /// request adds about 25 rows to each of 80 tables, and kept apart, each
    /// such batch costs some 60 allocations and a few KiB (1 GB for 4 M
    /// samples), which the flush then had to concatenate and free cold.
    pub fn push(&mut self, seq: u64, row_base: usize, batch: RecordBatch) {
        let bytes = batch.get_array_memory_size();
        self.rows += batch.num_rows();
        self.bytes += bytes;
        // Validated writes always have a time column; without one, the batch is
        // taken to span all time, so no query prunes it.
        let (min_time, max_time) = crate::flush::time_range(&batch).unwrap_or((i64::MIN, i64::MAX));
        let small = batch.num_rows() <= SMALL_BATCH_ROWS;
        let same_schema = self.small_tail > 0
            && self.batches.last().is_some_and(|last| {
                let (a, b) = (last.batch.schema_ref(), batch.schema_ref());
                Arc::ptr_eq(a, b) || a == b
            });
        self.small_tail = match (small, same_schema) {
            (false, _) => 0,
            (true, true) => self.small_tail + 1,
            (true, false) => 1,
        };
        self.batches.push(BufferedBatch {
            seq,
            row_base,
            batch,
            min_time,
            max_time,
            row_seqs: None,
        });
        if self.small_tail >= MERGE_BATCHES {
            let from = self.batches.len() - self.small_tail;
            match merge_batches(&self.batches[from..]) {
                Ok(merged) => {
                    let old: usize = self.batches[from..].iter().map(|b| b.memory_size()).sum();
                    self.bytes = self.bytes.saturating_sub(old) + merged.memory_size();
                    self.batches.truncate(from);
                    self.batches.push(merged);
                }
                // Cannot happen to batches of one schema; should it, they stay
                // as they are, which is correct, only larger.
                Err(e) => tracing::warn!(error = %e, "could not merge buffered batches"),
            }
            self.small_tail = 0;
        }
    }
}

/// One batch holding the rows of `batches` (of one schema), in order, with
/// each row's sequence value; tag dictionaries are merged to their distinct
/// values.
fn merge_batches(batches: &[BufferedBatch]) -> arrow::error::Result<BufferedBatch> {
    use arrow::array::{Array, AsArray};
    let schema = batches[0].batch.schema();
    let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (c, f) in schema.fields().iter().enumerate() {
        let merged = match f.data_type() {
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let mut tags = TagBuilder::with_capacity(rows);
                let mut map: Vec<Option<i32>> = Vec::new();
                for b in batches {
                    let d = b.batch.column(c).as_dictionary::<Int32Type>();
                    let values = d.values().as_string::<i32>();
                    map.clear();
                    map.extend(
                        (0..values.len())
                            .map(|i| values.is_valid(i).then(|| tags.intern(values.value(i)))),
                    );
                    for key in d.keys() {
                        match key.and_then(|k| map.get(k as usize).copied().flatten()) {
                            Some(k) => tags.push_key(k),
                            None => tags.append_nulls(1),
                        }
                    }
                }
                tags.finish()?
            }
            _ => {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.batch.column(c).as_ref()).collect();
                arrow::compute::concat(&arrays)?
            }
        };
        columns.push(merged);
    }
    let mut seqs = Vec::with_capacity(rows);
    for b in batches {
        b.extend_row_seqs(&mut seqs);
    }
    let last = &batches[batches.len() - 1];
    Ok(BufferedBatch {
        seq: last.seq,
        row_base: 0,
        batch: RecordBatch::try_new(schema, columns)?,
        min_time: batches.iter().map(|b| b.min_time).min().unwrap_or(i64::MIN),
        max_time: batches.iter().map(|b| b.max_time).max().unwrap_or(i64::MAX),
        row_seqs: Some(Arc::new(UInt64Array::from(seqs))),
    })
}

/// All tables' buffers. `flushing` holds what a running flush is writing, still visible
/// to queries until the flushed files are in the catalog.
#[derive(Debug, Default)]
pub struct WriteBuffer {
    pub active: HashMap<String, TableBuffer>,
    pub flushing: HashMap<String, TableBuffer>,
    pub active_rows: usize,
    pub active_bytes: usize,
    /// Updated here, where writes become visible, so it never lags a query.
    pub last_values: crate::last_values::LastValueCache,
    /// Per table, the time range each buffered series covers: a query over a
    /// buffer where no row can repeat another's series and time needs neither to
    /// sort nor to deduplicate it.
    keys: HashMap<String, BufferedKeys>,
}

/// Per generation of a table's buffered rows (written since the last flush
/// began; being flushed): each series' (by hash) earliest and latest time, and
/// whether a row may repeat another's series and time.
///
/// Ranges, not the set of every (series, time): series are few and fit in
/// cache, rows are millions (a set of them cost 7 % of remote-write CPU in
/// cache misses, and 16 bytes a row). A series written in time order, as
/// agents and Prometheus send it, never falls inside its own range; a row that
/// does (written out of order, or a true repeat) marks the generation as maybe
/// repeating, and queries then take the slower, always correct path. A hash
/// collision can only do the same.
#[derive(Debug, Default)]
struct BufferedKeys {
    active: HashMap<u64, (i64, i64), BuildHasherDefault<PrehashedHasher>>,
    flushing: HashMap<u64, (i64, i64), BuildHasherDefault<PrehashedHasher>>,
    /// A row of the active generation may repeat one of the active generation...
    active_repeats: bool,
    /// ...or one being flushed (until that flush ends)...
    repeats_flushing: bool,
    /// ...or the flushing generation may repeat within itself.
    flushing_repeats: bool,
}

/// The keys are hashes already.
#[derive(Debug, Default)]
struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A 64-bit finalizer (splitmix64): spreads the bits of a combined hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of each row's series: the tags by name and value (a tag the row
/// lacks counts as absent, as in the series key).
fn series_hashes(batch: &RecordBatch) -> Vec<u64> {
    use arrow::array::{Array, AsArray};
    use std::hash::{BuildHasher, Hash, Hasher};
    let n = batch.num_rows();
    let mut hashes = vec![0u64; n];
    // One seed for the process: the same key hashes the same in every batch,
    // and clients cannot know it to pick colliding tags. foldhash, not SipHash:
    // this runs for every value of every write, under the buffer's lock.
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| foldhash::fast::RandomState::default().hash_one(0u64));
    let state = foldhash::fast::FixedState::with_seed(seed);
    let schema = batch.schema();
    for (f, col) in schema.fields().iter().zip(batch.columns()) {
        let DataType::Dictionary(..) = f.data_type() else {
            continue;
        };
        let Some(dict) = col.as_dictionary_opt::<Int32Type>() else {
            continue;
        };
        let Some(values) = dict.values().as_string_opt::<i32>() else {
            continue;
        };
        let value_hashes: Vec<u64> = (0..values.len())
            .map(|i| {
                let mut h = state.build_hasher();
                f.name().hash(&mut h);
                values.is_valid(i).then(|| values.value(i)).hash(&mut h);
                mix(h.finish())
            })
            .collect();
        for (row, key) in dict.keys().iter().enumerate() {
            if let Some(k) = key {
                if values.is_valid(k as usize) {
                    // Added: the order of the tag columns does not matter.
                    hashes[row] = hashes[row].wrapping_add(value_hashes[k as usize]);
                }
            }
        }
    }
    hashes.iter_mut().for_each(|h| *h = mix(*h));
    hashes
}

impl BufferedKeys {
    fn add(&mut self, batch: &RecordBatch) {
        let series = series_hashes(batch);
        let Some(times) = crate::flush::time_values(batch) else {
            // Validated writes always have a time; without one, nothing is known.
            self.active_repeats = true;
            return;
        };
        for (s, &t) in series.into_iter().zip(times) {
            if let Some(&(min, max)) = self.flushing.get(&s) {
                if (min..=max).contains(&t) {
                    self.repeats_flushing = true;
                }
            }
            match self.active.entry(s) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((t, t));
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let (min, max) = e.get_mut();
                    if t > *max {
                        *max = t;
                    } else if t < *min {
                        *min = t;
                    } else {
                        self.active_repeats = true;
                    }
                }
            }
        }
    }

    fn start_flush(&mut self) {
        let active = std::mem::take(&mut self.active);
        self.flushing_repeats |= self.active_repeats || self.repeats_flushing;
        if self.flushing.is_empty() {
            self.flushing = active;
        } else {
            // An earlier flush of the table failed: its rows are flushed again.
            for (s, (min, max)) in active {
                let r = self.flushing.entry(s).or_insert((min, max));
                r.0 = r.0.min(min);
                r.1 = r.1.max(max);
            }
        }
        self.active_repeats = false;
        self.repeats_flushing = false;
    }

    fn finish_flush(&mut self) {
        self.flushing = Default::default();
        self.flushing_repeats = false;
        self.repeats_flushing = false;
    }

    fn repeats(&self) -> bool {
        self.active_repeats || self.repeats_flushing || self.flushing_repeats
    }
}

impl WriteBuffer {
    pub fn apply(&mut self, seq: u64, tables: &[(String, RecordBatch)]) {
        // Several batches of one table in one write number their rows on from each
        // other, in the order they were written (replay sees the same order).
        let mut row_bases: HashMap<&str, usize> = HashMap::new();
        for (table, batch) in tables {
            let base = row_bases.entry(table.as_str()).or_default();
            let row_base = *base;
            *base += batch.num_rows();
            self.active_rows += batch.num_rows();
            self.last_values.observe(table, batch);
            self.keys.entry(table.clone()).or_default().add(batch);
            let tb = self.active.entry(table.clone()).or_default();
            let before = tb.bytes;
            tb.push(seq, row_base, batch.clone());
            self.active_bytes = self.active_bytes - before + tb.bytes;
        }
    }

    /// Moves the active buffer to `flushing` and returns everything in `flushing` to
    /// persist: that includes what an earlier, failed flush left there, so a later
    /// flush never drops WAL segments whose data is not in Parquet.
    pub fn start_flush(&mut self) -> HashMap<String, TableBuffer> {
        let taken = std::mem::take(&mut self.active);
        for (t, k) in self.keys.iter_mut() {
            if taken.contains_key(t) {
                k.start_flush();
            }
        }
        self.active_rows = 0;
        self.active_bytes = 0;
        for (t, b) in taken {
            let e = self.flushing.entry(t).or_default();
            e.rows += b.rows;
            e.bytes += b.bytes;
            e.batches.extend(b.batches);
        }
        self.flushing.clone()
    }

    /// Drops the flushed tables' data from `flushing`; a table whose flush failed
    /// stays there, visible to queries, for the next flush to try again.
    pub fn finish_flush(&mut self, flushed: &[String]) {
        for t in flushed {
            self.flushing.remove(t);
            if let Some(k) = self.keys.get_mut(t) {
                k.finish_flush();
            }
        }
        self.keys.retain(|t, k| {
            !k.active.is_empty()
                || !k.flushing.is_empty()
                || k.repeats()
                || self.active.contains_key(t)
                || self.flushing.contains_key(t)
        });
    }

    /// Whether no two buffered rows of `table` have the same series and time.
    pub fn duplicate_free(&self, table: &str) -> bool {
        self.keys.get(table).is_none_or(|k| !k.repeats())
    }

    /// Batches of one table, flushing ones first (they are older).
    pub fn table_batches(&self, table: &str) -> Vec<BufferedBatch> {
        let mut out = Vec::new();
        for m in [&self.flushing, &self.active] {
            if let Some(b) = m.get(table) {
                out.extend(b.batches.iter().cloned());
            }
        }
        out
    }
}

/// Bits of the hidden sequence column that number the rows within one write, so that
/// of two points with the same series and time in one request the later line wins.
pub const ROW_BITS: u32 = 24;
/// Most rows one table may receive in a single write.
pub const MAX_ROWS_PER_WRITE: usize = (1 << ROW_BITS) - 1;

/// The sequence value of row `row` of the write with WAL sequence `seq`.
pub fn row_seq(seq: u64, row: usize) -> u64 {
    (seq << ROW_BITS) | row.min(MAX_ROWS_PER_WRITE) as u64
}

/// The sequence value of every row of a Parquet file holding writes up to `seq`:
/// above all of those writes' rows, below every later write's.
pub fn file_seq(seq: u64) -> u64 {
    (seq << ROW_BITS) | MAX_ROWS_PER_WRITE as u64
}

/// Widens `batch` to `schema` (missing columns become NULL) and optionally appends the
/// hidden sequence column, numbering the rows on from `first_row_seq` (see
/// [`row_seq`]).
pub fn normalize(
    batch: &RecordBatch,
    schema: &SchemaRef,
    first_row_seq: Option<u64>,
) -> arrow::error::Result<RecordBatch> {
    match first_row_seq {
        Some(first) => normalize_with_seq(batch, schema, &with_seq_column(schema), first),
        None => RecordBatch::try_new(Arc::clone(schema), widen(batch, schema)?),
    }
}

/// [`normalize`] with the sequence column, for many batches of one table:
/// `seq_schema` is [`with_seq_column`] of `schema`, built once by the caller
/// (a flush or a query reads thousands of small batches).
pub fn normalize_with_seq(
    batch: &RecordBatch,
    schema: &SchemaRef,
    seq_schema: &SchemaRef,
    first_row_seq: u64,
) -> arrow::error::Result<RecordBatch> {
    let mut seqs = Vec::with_capacity(batch.num_rows());
    extend_row_seqs(&mut seqs, first_row_seq, batch.num_rows());
    with_seqs(batch, schema, seq_schema, Arc::new(UInt64Array::from(seqs)))
}

/// `batch` widened to `schema`, with `seqs` as its hidden sequence column.
fn with_seqs(
    batch: &RecordBatch,
    schema: &SchemaRef,
    seq_schema: &SchemaRef,
    seqs: ArrayRef,
) -> arrow::error::Result<RecordBatch> {
    let mut columns = widen(batch, schema)?;
    columns.push(seqs);
    RecordBatch::try_new(Arc::clone(seq_schema), columns)
}

/// Every buffered batch of a table widened to `schema` with the hidden
/// sequence column, for a flush. The buffer merges small batches (see
/// [`TableBuffer::push`]), so these are few; they are concatenated once, by
/// the sort that follows.
pub fn normalize_buffered(
    batches: &[BufferedBatch],
    schema: &SchemaRef,
    seq_schema: &SchemaRef,
) -> arrow::error::Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|b| b.normalized(schema, seq_schema))
        .collect()
}

/// Appends the sequence values of `n` rows numbered on from `first_row_seq`.
fn extend_row_seqs(out: &mut Vec<u64>, first_row_seq: u64, n: usize) {
    // Row numbers run within the write's sequence and stop at its last
    // value (rows of a file past 2^24 share it), never spilling into the
    // next write's range.
    let base = first_row_seq >> ROW_BITS << ROW_BITS;
    let row0 = first_row_seq - base;
    let max = MAX_ROWS_PER_WRITE as u64;
    out.extend((0..n as u64).map(|i| base | (row0 + i).min(max)));
}

/// The columns of `schema` taken from `batch`, NULL where it lacks them.
fn widen(batch: &RecordBatch, schema: &SchemaRef) -> arrow::error::Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            // Files store decimal-valued float columns as decimals.
            Some(c) if c.data_type() != f.data_type() => arrow::compute::cast(c, f.data_type()),
            Some(c) => Ok(Arc::clone(c)),
            None => Ok(new_null_array(f.data_type(), n)),
        })
        .collect()
}

pub fn with_seq_column(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// The bytes of value `i` of a tag builder's values.
fn value_bytes<'a>(offsets: &[i32], data: &'a [u8], i: i32) -> &'a [u8] {
    let i = i as usize;
    &data[offsets[i] as usize..offsets[i + 1] as usize]
}

/// A tag column: distinct values and a key per row.
///
/// Not Arrow's `StringDictionaryBuilder`: its `finish` goes through `ArrayData`
/// twice and reallocates, which for a write of 25 rows to each of 80 tables cost
/// more than appending the values (6 % of remote-write CPU). This builds the
/// key and value buffers as plain vectors and hands them to Arrow as they are.
struct TagBuilder {
    keys: Vec<i32>,
    nulls: NullBufferBuilder,
    offsets: Vec<i32>,
    data: Vec<u8>,
    /// Index of each distinct value, by the value's hash.
    dedup: hashbrown::HashTable<i32>,
    /// Seeded per builder: tag values come from clients, and a fixed seed
    /// would let one pick values that all collide.
    state: foldhash::fast::RandomState,
    /// The values outgrew 32-bit offsets (2 GiB): `finish` fails.
    overflowed: bool,
}

impl TagBuilder {
    fn with_capacity(rows: usize) -> Self {
        let distinct = rows.min(64);
        let mut offsets = Vec::with_capacity(distinct + 1);
        offsets.push(0);
        Self {
            keys: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
            offsets,
            data: Vec::with_capacity(distinct * 16),
            dedup: hashbrown::HashTable::with_capacity(distinct),
            state: foldhash::fast::RandomState::default(),
            overflowed: false,
        }
    }

    fn append_value(&mut self, v: &str) {
        let key = self.intern(v);
        self.push_key(key);
    }

    fn push_key(&mut self, key: i32) {
        self.keys.push(key);
        self.nulls.append_non_null();
    }

    /// The key of value `v`, added if new.
    fn intern(&mut self, v: &str) -> i32 {
        use std::hash::BuildHasher;
        let hash = self.state.hash_one(v.as_bytes());
        let Self {
            dedup,
            offsets,
            data,
            state,
            ..
        } = self;
        let found = dedup
            .find(hash, |&i| value_bytes(offsets, data, i) == v.as_bytes())
            .copied();
        if let Some(k) = found {
            return k;
        }
        if data.len() + v.len() > i32::MAX as usize {
            self.overflowed = true;
            return 0;
        }
        let k = (offsets.len() - 1) as i32;
        data.extend_from_slice(v.as_bytes());
        offsets.push(data.len() as i32);
        dedup.insert_unique(hash, k, |&i| state.hash_one(value_bytes(offsets, data, i)));
        k
    }

    fn append_nulls(&mut self, n: usize) {
        self.keys.extend(std::iter::repeat_n(0, n));
        self.nulls.append_n_nulls(n);
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn finish(&mut self) -> arrow::error::Result<ArrayRef> {
        let overflowed = std::mem::take(&mut self.overflowed);
        let values = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut self.offsets))),
            Buffer::from_vec(std::mem::take(&mut self.data)),
            None,
        );
        let keys = Int32Array::new(
            ScalarBuffer::from(std::mem::take(&mut self.keys)),
            self.nulls.finish(),
        );
        self.offsets.push(0);
        self.dedup.clear();
        if overflowed {
            return Err(arrow::error::ArrowError::InvalidArgumentError(
                "a tag column's distinct values exceed 2 GiB in one batch".into(),
            ));
        }
        // Every value came in as a `&str` and every key from the table it
        // indexes, so neither check fails; should one, the batch is not built
        // (validation reports it, a merge keeps the batches apart).
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
            keys,
            Arc::new(values?),
        )?))
    }
}

enum ColumnBuilder {
    Tag(TagBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl ColumnBuilder {
    /// A builder sized for `rows` values. Arrow's default (1,024 values, several
    /// KiB per column) made a write of 25 rows per table cost 60 KiB per table in
    /// the buffer, and the buffer full long before its rows said so.
    fn new(kind: ColumnKind, rows: usize) -> Self {
        match kind {
            ColumnKind::Tag => ColumnBuilder::Tag(TagBuilder::with_capacity(rows)),
            ColumnKind::Field(FieldType::Float) => {
                ColumnBuilder::F64(Float64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::Integer) => {
                ColumnBuilder::I64(Int64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::UInteger) => {
                ColumnBuilder::U64(UInt64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::Boolean) => {
                ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::String) => {
                ColumnBuilder::Str(StringBuilder::with_capacity(rows, rows * 16))
            }
            ColumnKind::Time => unreachable!("time has its own builder"),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColumnBuilder::Tag(b) => b.len(),
            ColumnBuilder::F64(b) => b.len(),
            ColumnBuilder::I64(b) => b.len(),
            ColumnBuilder::U64(b) => b.len(),
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Str(b) => b.len(),
        }
    }

    fn pad_nulls(&mut self, to: usize) {
        let missing = to.saturating_sub(self.len());
        if missing == 0 {
            return;
        }
        match self {
            ColumnBuilder::Tag(b) => b.append_nulls(missing),
            ColumnBuilder::F64(b) => b.append_nulls(missing),
            ColumnBuilder::I64(b) => b.append_nulls(missing),
            ColumnBuilder::U64(b) => b.append_nulls(missing),
            ColumnBuilder::Bool(b) => b.append_nulls(missing),
            ColumnBuilder::Str(b) => {
                for _ in 0..missing {
                    b.append_null()
                }
            }
        }
    }

    fn finish(&mut self) -> arrow::error::Result<ArrayRef> {
        Ok(match self {
            ColumnBuilder::Tag(b) => return b.finish(),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::U64(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
        })
    }
}

/// Builds one Arrow batch for one table from already validated points. Only the
/// columns that occur in these points are present; missing values are NULL.
///
/// A column that first appears after many rows is padded with NULLs for all of
/// them; on sparse data (every line with fields of its own) that padding grows
/// with rows x columns, so [`BatchBuilder::append`] refuses a point whose new
/// columns would make the batch mostly padding, and the caller starts a new batch.
pub struct BatchBuilder {
    columns: Vec<(String, ColumnKind, ColumnBuilder)>,
    /// Column by name, built only past [`LINEAR_LOOKUP_COLUMNS`]: below it,
    /// comparing names is cheaper than hashing one (and a write of 25 rows to
    /// each of 80 tables paid a name copy and an insert per column per table).
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    time: TimestampNanosecondBuilder,
    rows: usize,
    /// Values actually written (tags, fields and times), against which the dense
    /// size rows x columns is bounded.
    cells: usize,
    /// Column indexes of the last point appended, by its tags then fields.
    resolved: Vec<Option<usize>>,
    /// The same for the point being appended (kept to avoid allocating).
    scratch: Vec<Option<usize>>,
    /// Rows the columns are sized for.
    capacity: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

/// The columns a point names: its tags, then its fields.
fn column_names<'p>(point: &'p Point<'_>) -> impl Iterator<Item = &'p str> {
    let tags = point.tags.iter().map(|(k, _)| k.as_ref());
    tags.chain(point.fields.iter().map(|(k, _)| k.as_ref()))
}

/// Columns up to which a batch builder finds a column by comparing names.
const LINEAR_LOOKUP_COLUMNS: usize = 16;

/// Padding allowed beyond real values: a batch stays at most this many times its
/// values (plus a fixed allowance) when laid out densely.
const MAX_PADDING_FACTOR: usize = 4;
const PADDING_ALLOWANCE: usize = 1 << 12;

impl BatchBuilder {
    /// A builder whose columns are sized for `rows` rows (they grow past it).
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            columns: Vec::new(),
            index: HashMap::default(),
            time: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            rows: 0,
            cells: 0,
            resolved: Vec::new(),
            scratch: Vec::new(),
            capacity: rows,
        }
    }

    fn add_column(&mut self, name: &str, kind: ColumnKind) -> usize {
        // The first point's columns are sized for the batch; a column that
        // appears later (sparse data) starts small and grows as it is used.
        let size = if self.rows == 0 {
            self.capacity
        } else {
            (self.rows * 2).min(self.capacity.max(self.rows + 1))
        };
        let mut b = ColumnBuilder::new(kind, size);
        b.pad_nulls(self.rows);
        self.columns.push((name.to_string(), kind, b));
        let i = self.columns.len() - 1;
        if self.columns.len() > LINEAR_LOOKUP_COLUMNS {
            if self.index.is_empty() {
                for (j, (n, _, _)) in self.columns.iter().enumerate() {
                    self.index.insert(n.clone(), j);
                }
            } else {
                self.index.insert(name.to_string(), i);
            }
        }
        i
    }

    /// The index of column `name`, if the batch has it.
    fn find(&self, name: &str) -> Option<usize> {
        if self.columns.len() > LINEAR_LOOKUP_COLUMNS {
            self.index.get(name).copied()
        } else {
            self.columns.iter().position(|(n, _, _)| n == name)
        }
    }

    /// Appends a point whose fields have been checked against `kind_of`. Returns
    /// false, changing nothing, when the point's new columns would make this batch
    /// mostly NULL padding: the point belongs in a new batch.
    pub fn append(&mut self, point: &Point<'_>, field_kinds: &[ColumnKind]) -> bool {
        let previous = std::mem::take(&mut self.resolved);
        let mut resolved = std::mem::take(&mut self.scratch);
        resolved.clear();
        let mut missing = 0usize;
        for (j, k) in column_names(point).enumerate() {
            // Points of one table mostly name the same columns in the same
            // order: the previous point's column at this position is checked
            // by name before the index is hashed.
            let i = match previous.get(j) {
                Some(&Some(i)) if self.columns[i].0 == k => Some(i),
                _ => self.find(k),
            };
            missing += usize::from(i.is_none());
            resolved.push(i);
        }
        self.scratch = previous;
        let cells = point.tags.len() + point.fields.len() + 1;
        if missing > 0 && self.rows > 0 {
            let dense = (self.rows + 1) * (self.columns.len() + missing + 1);
            if dense > MAX_PADDING_FACTOR * (self.cells + cells) + PADDING_ALLOWANCE {
                // Nothing was appended: the point's columns are not the ones
                // the next point is compared with.
                self.resolved = std::mem::take(&mut self.scratch);
                self.resolved.clear();
                self.scratch = resolved;
                return false;
            }
        }
        let rows = self.rows;
        let n_tags = point.tags.len();
        for (j, (k, v)) in point.tags.iter().enumerate() {
            let i = match resolved[j] {
                Some(i) => i,
                // A key repeated within the point resolves to the column added for
                // its first occurrence (validation rejects such points anyway).
                None => match self.find(k) {
                    Some(i) => i,
                    None => self.add_column(k, ColumnKind::Tag),
                },
            };
            // Kept for the next point, which finds the column by position.
            resolved[j] = Some(i);
            let b = &mut self.columns[i].2;
            b.pad_nulls(rows);
            if b.len() > rows {
                continue;
            }
            match b {
                ColumnBuilder::Tag(b) => b.append_value(v.as_ref()),
                other => other.pad_nulls(rows + 1),
            }
        }
        for (j, ((k, v), kind)) in point.fields.iter().zip(field_kinds).enumerate() {
            let i = match resolved[n_tags + j] {
                Some(i) => i,
                None => match self.find(k) {
                    Some(i) => i,
                    None => self.add_column(k, *kind),
                },
            };
            resolved[n_tags + j] = Some(i);
            let b = &mut self.columns[i].2;
            b.pad_nulls(rows);
            // Should a repeated key slip through, the first value is kept rather
            // than shifting the column.
            if b.len() > rows {
                continue;
            }
            match (b, v) {
                (ColumnBuilder::F64(b), FieldValue::F64(x)) => b.append_value(*x),
                (ColumnBuilder::I64(b), FieldValue::I64(x)) => b.append_value(*x),
                (ColumnBuilder::U64(b), FieldValue::U64(x)) => b.append_value(*x),
                (ColumnBuilder::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
                (ColumnBuilder::Str(b), FieldValue::Str(x)) => b.append_value(x.as_ref()),
                (b, _) => b.pad_nulls(rows + 1),
            }
        }
        self.time.append_value(point.time);
        self.rows += 1;
        self.cells += cells;
        self.resolved = resolved;
        true
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Finishes the batch with columns in table order (tags, fields, time).
    pub fn finish(self) -> arrow::error::Result<RecordBatch> {
        self.finish_reusing(None)
    }

    /// [`BatchBuilder::finish`], taking `previous` as the batch's schema when
    /// it names the same columns of the same types: a table's writes mostly
    /// have one schema, and building it anew (a field, a name and a type per
    /// column) for every small batch, and freeing it at the flush, cost more
    /// than the rows.
    pub fn finish_reusing(
        mut self,
        previous: Option<&SchemaRef>,
    ) -> arrow::error::Result<RecordBatch> {
        let rows = self.rows;
        let rank = |k: &ColumnKind| match k {
            ColumnKind::Tag => 0,
            ColumnKind::Field(_) => 1,
            ColumnKind::Time => 2,
        };
        let mut order: Vec<usize> = (0..self.columns.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.columns[a], &self.columns[b]);
            (rank(&a.1), &a.0).cmp(&(rank(&b.1), &b.0))
        });
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(order.len() + 1);
        for &i in &order {
            let b = &mut self.columns[i].2;
            b.pad_nulls(rows);
            arrays.push(b.finish()?);
        }
        arrays.push(Arc::new(self.time.finish()));
        let reusable = previous.filter(|s| {
            s.fields().len() == arrays.len()
                && order
                    .iter()
                    .zip(s.fields().iter())
                    .zip(&arrays)
                    .all(|((&i, f), a)| {
                        f.name() == &self.columns[i].0 && f.data_type() == a.data_type()
                    })
                && s.fields().last().is_some_and(|f| {
                    f.name() == TIME_COLUMN && f.data_type() == arrays[arrays.len() - 1].data_type()
                })
        });
        let schema = match reusable {
            Some(s) => Arc::clone(s),
            None => {
                let mut fields: Vec<Field> = order
                    .iter()
                    .zip(&arrays)
                    .map(|(&i, a)| {
                        Field::new(self.columns[i].0.clone(), a.data_type().clone(), true)
                    })
                    .collect();
                fields.push(Field::new(
                    TIME_COLUMN,
                    crate::schema::time_data_type(),
                    false,
                ));
                Arc::new(Schema::new(fields))
            }
        };
        RecordBatch::try_new(schema, arrays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A batch of points `(tags, time)` of table `m` with one float field.
    fn batch(points: &[(&[(&str, &str)], i64)]) -> RecordBatch {
        let mut b = BatchBuilder::default();
        for (tags, time) in points {
            let p = Point {
                table: Cow::Borrowed("m"),
                tags: tags
                    .iter()
                    .map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string())))
                    .collect(),
                fields: vec![(Cow::Borrowed("v"), FieldValue::F64(1.0))],
                time: *time,
            };
            assert!(b.append(&p, &[ColumnKind::Field(FieldType::Float)]));
        }
        b.finish().unwrap()
    }

    /// Points naming their columns in the same order, in another order, fewer
    /// or new ones: each value lands in its own column (the builder checks the
    /// previous point's columns by position before it hashes a name).
    #[test]
    fn values_land_in_their_columns_whatever_the_order_of_names() {
        use arrow::array::{AsArray, Float64Array};
        let p = |tags: &[(&'static str, &'static str)], fields: &[(&'static str, f64)]| Point {
            table: Cow::Borrowed("m"),
            tags: tags
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
                .collect(),
            fields: fields
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), FieldValue::F64(*v)))
                .collect(),
            time: 1,
        };
        let float = ColumnKind::Field(FieldType::Float);
        let mut b = BatchBuilder::with_capacity(4);
        for (tags, fields) in [
            (vec![("a", "1"), ("b", "2")], vec![("x", 1.0), ("y", 2.0)]),
            (vec![("a", "3"), ("b", "4")], vec![("x", 3.0), ("y", 4.0)]),
            (vec![("b", "6"), ("a", "5")], vec![("y", 6.0), ("x", 5.0)]),
            (vec![("a", "7")], vec![("y", 8.0)]),
            (vec![("c", "9"), ("a", "10")], vec![("z", 9.0), ("x", 10.0)]),
            (
                vec![("c", "11"), ("a", "12")],
                vec![("z", 11.0), ("x", 12.0)],
            ),
        ] {
            assert!(b.append(&p(&tags, &fields), &vec![float; fields.len()]));
        }
        let batch = b.finish().unwrap();
        let tag = |n: &str| -> Vec<Option<String>> {
            let c =
                arrow::compute::cast(batch.column_by_name(n).unwrap(), &DataType::Utf8).unwrap();
            c.as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        };
        let field = |n: &str| -> Vec<Option<f64>> {
            batch
                .column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .iter()
                .collect()
        };
        let s = |v: &[Option<&str>]| -> Vec<Option<String>> {
            v.iter().map(|x| x.map(str::to_string)).collect()
        };
        assert_eq!(
            tag("a"),
            s(&[
                Some("1"),
                Some("3"),
                Some("5"),
                Some("7"),
                Some("10"),
                Some("12")
            ])
        );
        assert_eq!(
            tag("b"),
            s(&[Some("2"), Some("4"), Some("6"), None, None, None])
        );
        assert_eq!(
            tag("c"),
            s(&[None, None, None, None, Some("9"), Some("11")])
        );
        assert_eq!(
            field("x"),
            [
                Some(1.0),
                Some(3.0),
                Some(5.0),
                None,
                Some(10.0),
                Some(12.0)
            ]
        );
        assert_eq!(
            field("y"),
            [Some(2.0), Some(4.0), Some(6.0), Some(8.0), None, None]
        );
        assert_eq!(field("z"), [None, None, None, None, Some(9.0), Some(11.0)]);
    }

    fn write(buf: &mut WriteBuffer, seq: u64, b: RecordBatch) {
        buf.apply(seq, &[("m".to_string(), b)]);
    }

    #[test]
    fn distinct_series_and_times_need_no_dedupe() {
        let mut buf = WriteBuffer::default();
        write(
            &mut buf,
            1,
            batch(&[(&[("host", "a")], 1), (&[("host", "b")], 1)]),
        );
        // Same time, another series (more tags, or a tag absent) is not a repeat.
        write(
            &mut buf,
            2,
            batch(&[
                (&[("host", "a"), ("dc", "x")], 1),
                (&[], 1),
                (&[("host", "a")], 2),
            ]),
        );
        assert!(buf.duplicate_free("m"));
        assert!(buf.duplicate_free("unknown"));
    }

    #[test]
    fn a_repeated_series_and_time_is_noticed_whatever_the_tag_order() {
        let mut buf = WriteBuffer::default();
        write(&mut buf, 1, batch(&[(&[("host", "a"), ("dc", "x")], 5)]));
        assert!(buf.duplicate_free("m"));
        write(&mut buf, 2, batch(&[(&[("dc", "x"), ("host", "a")], 5)]));
        assert!(!buf.duplicate_free("m"));
        // Within one write too.
        let mut buf = WriteBuffer::default();
        write(
            &mut buf,
            1,
            batch(&[(&[("host", "a")], 5), (&[("host", "a")], 5)]),
        );
        assert!(!buf.duplicate_free("m"));
    }

    #[test]
    fn tag_builder_keeps_each_distinct_value_once_and_nulls_where_padded() {
        use arrow::array::{Array, AsArray};
        let mut b = TagBuilder::with_capacity(2);
        for round in 0..2 {
            b.append_nulls(2);
            // More distinct values than the capacity, repeats, an empty value.
            let input: Vec<String> = (0..300).map(|i| format!("v{}", i % 100)).collect();
            for v in &input {
                b.append_value(v);
            }
            b.append_value("");
            let a = b.finish().unwrap();
            let d = a.as_dictionary::<Int32Type>();
            assert_eq!(d.len(), 303, "round {round}");
            assert_eq!(d.values().len(), 101, "one value per distinct string");
            assert_eq!(d.null_count(), 2);
            let values = d.values().as_string::<i32>();
            let got: Vec<Option<&str>> = d
                .keys()
                .iter()
                .map(|k| k.map(|k| values.value(k as usize)))
                .collect();
            let mut want = vec![None, None];
            want.extend(input.iter().map(|v| Some(v.as_str())));
            want.push(Some(""));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn small_batches_merge_into_one_that_reads_as_they_did() {
        let tags: [&[(&str, &str)]; 4] =
            [&[("host", "a")], &[("host", "b")], &[], &[("host", "a")]];
        let mut tb = TableBuffer::default();
        let mut originals = Vec::new();
        for w in 0..150u64 {
            let rows: Vec<(&[(&str, &str)], i64)> = (0..3)
                .map(|r| (tags[(w as usize + r) % 4], (w * 3 + r as u64) as i64))
                .collect();
            let b = batch(&rows);
            originals.push(b.clone());
            // Every write's rows number on from 0 (a second batch of the same
            // write from 3).
            tb.push(w + 1, (w as usize % 2) * 3, b);
        }
        // A batch without the host column breaks the run: it is not merged.
        let narrow = batch(&[(&[], 1000)]);
        tb.push(151, 0, narrow.clone());
        // 150 = 64 + 64 + 22 batches of one schema.
        assert_eq!(tb.batches.len(), 2 + 22 + 1);
        assert!(tb.batches[0].row_seqs.is_some() && tb.batches[2].row_seqs.is_none());
        assert_eq!(tb.rows, 451);
        assert_eq!(
            tb.bytes,
            tb.batches.iter().map(|b| b.memory_size()).sum::<usize>()
        );
        let merged_values = tb.batches[0]
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .unwrap()
            .values()
            .len();
        assert_eq!(merged_values, 2, "the dictionary holds each host once");
        assert_eq!(
            (tb.batches[0].min_time, tb.batches[0].max_time),
            (0, 64 * 3 - 1)
        );
        let schema = originals[0].schema();
        let seq_schema = with_seq_column(&schema);
        let read: Vec<RecordBatch> = tb.batches[..24]
            .iter()
            .map(|b| b.normalized(&schema, &seq_schema).unwrap())
            .collect();
        let want: Vec<RecordBatch> = originals
            .iter()
            .enumerate()
            .map(|(w, b)| {
                normalize_with_seq(b, &schema, &seq_schema, row_seq(w as u64 + 1, (w % 2) * 3))
                    .unwrap()
            })
            .collect();
        // Tags compared by value (the merged dictionary is laid out anew).
        let as_text = |batches: &[RecordBatch]| {
            let all = arrow::compute::concat_batches(&seq_schema, batches).unwrap();
            all.columns()
                .iter()
                .map(|c| {
                    let c = match c.data_type() {
                        DataType::Timestamp(..) => {
                            arrow::compute::cast(c, &DataType::Int64).unwrap()
                        }
                        _ => Arc::clone(c),
                    };
                    let c = arrow::compute::cast(&c, &DataType::Utf8).unwrap();
                    let c = c.as_any().downcast_ref::<StringArray>().unwrap();
                    c.iter()
                        .map(|v| format!("{v:?}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(as_text(&read), as_text(&want));
        let together = normalize_buffered(&tb.batches, &schema, &seq_schema).unwrap();
        let mut want_all = want;
        want_all.push(normalize_with_seq(&narrow, &schema, &seq_schema, row_seq(151, 0)).unwrap());
        assert_eq!(as_text(&together), as_text(&want_all));
    }

    #[test]
    fn batches_normalized_together_read_as_each_normalized_alone() {
        // Runs of one schema, a narrower batch between them, a write whose
        // rows start past zero (second batch of a table in one write).
        let mut tb = TableBuffer::default();
        tb.push(1, 0, batch(&[(&[("host", "a")], 1), (&[("host", "b")], 2)]));
        tb.push(2, 0, batch(&[(&[("host", "c")], 3)]));
        tb.push(2, 1, batch(&[(&[], 4)]));
        tb.push(3, 0, batch(&[(&[("host", "a"), ("dc", "x")], 5)]));
        tb.push(4, 0, batch(&[(&[("host", "d"), ("dc", "y")], 6)]));
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new(
                "dc",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
        ]));
        let seq_schema = with_seq_column(&schema);
        let together = normalize_buffered(&tb.batches, &schema, &seq_schema).unwrap();
        assert_eq!(together.len(), 5);
        let alone: Vec<RecordBatch> = tb
            .batches
            .iter()
            .map(|b| normalize_with_seq(&b.batch, &schema, &seq_schema, b.first_row_seq()))
            .collect::<Result<_, _>>()
            .unwrap();
        let together = arrow::compute::concat_batches(&seq_schema, &together).unwrap();
        let alone = arrow::compute::concat_batches(&seq_schema, &alone).unwrap();
        assert_eq!(together, alone);
        let seqs = together
            .column(4)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(
            seqs.values().to_vec(),
            vec![
                row_seq(1, 0),
                row_seq(1, 1),
                row_seq(2, 0),
                row_seq(2, 1),
                row_seq(3, 0),
                row_seq(4, 0)
            ]
        );
    }

    #[test]
    fn series_in_time_order_need_no_dedupe_and_out_of_order_rows_take_the_safe_path() {
        let mut buf = WriteBuffer::default();
        for t in 0..100 {
            write(
                &mut buf,
                t as u64 + 1,
                batch(&[(&[("host", "a")], t), (&[("host", "b")], 1000 - t)]),
            );
        }
        // host=a rises and host=b falls: neither falls inside its own range.
        assert!(buf.duplicate_free("m"));
        // Inside host=a's range, at a time it does not hold: cannot be told from
        // a repeat without keeping every row's key, so queries deduplicate.
        write(&mut buf, 200, batch(&[(&[("host", "a")], 50)]));
        assert!(!buf.duplicate_free("m"));
        // A row inside a flushing range is a possible repeat until that flush ends.
        let mut buf = WriteBuffer::default();
        write(
            &mut buf,
            1,
            batch(&[(&[("host", "a")], 1), (&[("host", "a")], 9)]),
        );
        buf.start_flush();
        write(&mut buf, 2, batch(&[(&[("host", "a")], 10)]));
        assert!(buf.duplicate_free("m"));
        write(&mut buf, 3, batch(&[(&[("host", "a")], 4)]));
        assert!(!buf.duplicate_free("m"));
        buf.finish_flush(&["m".to_string()]);
        assert!(buf.duplicate_free("m"));
    }

    #[test]
    fn repeats_last_until_the_rows_are_flushed() {
        let mut buf = WriteBuffer::default();
        write(&mut buf, 1, batch(&[(&[("host", "a")], 5)]));
        buf.start_flush();
        // Repeats a row being flushed: both are visible until the flush ends.
        write(&mut buf, 2, batch(&[(&[("host", "a")], 5)]));
        assert!(!buf.duplicate_free("m"));
        buf.finish_flush(&["m".to_string()]);
        assert!(buf.duplicate_free("m"));
        // A failed flush keeps its rows (and what is known of them) for the next.
        write(&mut buf, 3, batch(&[(&[("host", "a")], 5)]));
        assert!(!buf.duplicate_free("m"));
        buf.start_flush();
        buf.finish_flush(&[]);
        write(&mut buf, 4, batch(&[(&[("host", "b")], 5)]));
        assert!(!buf.duplicate_free("m"));
        buf.start_flush();
        buf.finish_flush(&["m".to_string()]);
        assert!(buf.duplicate_free("m"));
    }
}
