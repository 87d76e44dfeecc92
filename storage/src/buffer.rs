//! The in-memory write buffer: Arrow batches per table, in WAL order, queryable at once.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder,
    StringBuilder, StringDictionaryBuilder, TimestampNanosecondBuilder, UInt64Array, UInt64Builder,
};
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
}

impl BufferedBatch {
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        self.min_time <= max && self.max_time >= min
    }

    /// The hidden sequence value of this batch's first row.
    pub fn first_row_seq(&self) -> u64 {
        row_seq(self.seq, self.row_base)
    }
}

/// Everything buffered for one table since its last flush.
#[derive(Debug, Default, Clone)]
pub struct TableBuffer {
    pub batches: Vec<BufferedBatch>,
    pub rows: usize,
    pub bytes: usize,
}

impl TableBuffer {
    pub fn push(&mut self, seq: u64, row_base: usize, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        // Validated writes always have a time column; without one, the batch is
        // taken to span all time, so no query prunes it.
        let (min_time, max_time) = crate::flush::time_range(&batch).unwrap_or((i64::MIN, i64::MAX));
        self.batches.push(BufferedBatch {
            seq,
            row_base,
            batch,
            min_time,
            max_time,
        });
    }
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
            self.active_bytes += batch.get_array_memory_size();
            self.last_values.observe(table, batch);
            self.active
                .entry(table.clone())
                .or_default()
                .push(seq, row_base, batch.clone());
        }
    }

    /// Moves the active buffer to `flushing` and returns everything in `flushing` to
    /// persist: that includes what an earlier, failed flush left there, so a later
    /// flush never drops WAL segments whose data is not in Parquet.
    pub fn start_flush(&mut self) -> HashMap<String, TableBuffer> {
        let taken = std::mem::take(&mut self.active);
        self.active_rows = 0;
        self.active_bytes = 0;
        for (t, b) in taken {
            let e = self.flushing.entry(t).or_default();
            for bb in b.batches {
                e.push(bb.seq, bb.row_base, bb.batch);
            }
        }
        self.flushing.clone()
    }

    /// Drops the flushed tables' data from `flushing`; a table whose flush failed
    /// stays there, visible to queries, for the next flush to try again.
    pub fn finish_flush(&mut self, flushed: &[String]) {
        for t in flushed {
            self.flushing.remove(t);
        }
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
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            // Files store decimal-valued float columns as decimals.
            Some(c) if c.data_type() != f.data_type() => arrow::compute::cast(c, f.data_type()),
            Some(c) => Ok(Arc::clone(c)),
            None => Ok(new_null_array(f.data_type(), n)),
        })
        .collect::<arrow::error::Result<_>>()?;
    let out_schema = match first_row_seq {
        Some(first) => {
            // Row numbers run within the write's sequence and stop at its last
            // value (rows of a file past 2^24 share it), never spilling into the
            // next write's range.
            let base = first >> ROW_BITS << ROW_BITS;
            let row0 = first - base;
            let max = MAX_ROWS_PER_WRITE as u64;
            columns.push(Arc::new(UInt64Array::from_iter_values(
                (0..n as u64).map(|i| base | (row0 + i).min(max)),
            )));
            with_seq_column(schema)
        }
        None => Arc::clone(schema),
    };
    RecordBatch::try_new(out_schema, columns)
}

pub fn with_seq_column(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

enum ColumnBuilder {
    Tag(StringDictionaryBuilder<Int32Type>),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl ColumnBuilder {
    fn new(kind: ColumnKind) -> Self {
        match kind {
            ColumnKind::Tag => ColumnBuilder::Tag(StringDictionaryBuilder::new()),
            ColumnKind::Field(FieldType::Float) => ColumnBuilder::F64(Float64Builder::new()),
            ColumnKind::Field(FieldType::Integer) => ColumnBuilder::I64(Int64Builder::new()),
            ColumnKind::Field(FieldType::UInteger) => ColumnBuilder::U64(UInt64Builder::new()),
            ColumnKind::Field(FieldType::Boolean) => ColumnBuilder::Bool(BooleanBuilder::new()),
            ColumnKind::Field(FieldType::String) => ColumnBuilder::Str(StringBuilder::new()),
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
            ColumnBuilder::Tag(b) => {
                for _ in 0..missing {
                    b.append_null()
                }
            }
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

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Tag(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::U64(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
        }
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
    index: HashMap<String, usize>,
    time: TimestampNanosecondBuilder,
    rows: usize,
    /// Values actually written (tags, fields and times), against which the dense
    /// size rows x columns is bounded.
    cells: usize,
    /// Column indexes of the point being appended (reused to avoid allocating).
    resolved: Vec<Option<usize>>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            index: HashMap::new(),
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            rows: 0,
            cells: 0,
            resolved: Vec::new(),
        }
    }
}

/// Padding allowed beyond real values: a batch stays at most this many times its
/// values (plus a fixed allowance) when laid out densely.
const MAX_PADDING_FACTOR: usize = 4;
const PADDING_ALLOWANCE: usize = 1 << 12;

impl BatchBuilder {
    fn add_column(&mut self, name: &str, kind: ColumnKind) -> usize {
        let mut b = ColumnBuilder::new(kind);
        b.pad_nulls(self.rows);
        self.columns.push((name.to_string(), kind, b));
        self.index.insert(name.to_string(), self.columns.len() - 1);
        self.columns.len() - 1
    }

    /// Appends a point whose fields have been checked against `kind_of`. Returns
    /// false, changing nothing, when the point's new columns would make this batch
    /// mostly NULL padding: the point belongs in a new batch.
    pub fn append(&mut self, point: &Point<'_>, field_kinds: &[ColumnKind]) -> bool {
        let mut resolved = std::mem::take(&mut self.resolved);
        resolved.clear();
        let mut missing = 0usize;
        for k in point
            .tags
            .iter()
            .map(|(k, _)| k)
            .chain(point.fields.iter().map(|(k, _)| k))
        {
            let i = self.index.get(k.as_ref()).copied();
            missing += usize::from(i.is_none());
            resolved.push(i);
        }
        let cells = point.tags.len() + point.fields.len() + 1;
        if missing > 0 && self.rows > 0 {
            let dense = (self.rows + 1) * (self.columns.len() + missing + 1);
            if dense > MAX_PADDING_FACTOR * (self.cells + cells) + PADDING_ALLOWANCE {
                self.resolved = resolved;
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
                None => match self.index.get(k.as_ref()) {
                    Some(i) => *i,
                    None => self.add_column(k, ColumnKind::Tag),
                },
            };
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
                None => match self.index.get(k.as_ref()) {
                    Some(i) => *i,
                    None => self.add_column(k, *kind),
                },
            };
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
    pub fn finish(mut self) -> arrow::error::Result<RecordBatch> {
        let rows = self.rows;
        let mut cols: Vec<(String, ColumnKind, ArrayRef)> = self
            .columns
            .iter_mut()
            .map(|(n, k, b)| {
                b.pad_nulls(rows);
                (n.clone(), *k, b.finish())
            })
            .collect();
        cols.sort_by(|a, b| {
            let rank = |k: &ColumnKind| match k {
                ColumnKind::Tag => 0,
                ColumnKind::Field(_) => 1,
                ColumnKind::Time => 2,
            };
            (rank(&a.1), &a.0).cmp(&(rank(&b.1), &b.0))
        });
        let mut fields = Vec::with_capacity(cols.len() + 1);
        let mut arrays = Vec::with_capacity(cols.len() + 1);
        for (n, _, a) in cols {
            fields.push(Field::new(n, a.data_type().clone(), true));
            arrays.push(a);
        }
        fields.push(Field::new(
            TIME_COLUMN,
            crate::schema::time_data_type(),
            false,
        ));
        arrays.push(Arc::new(self.time.finish()));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
    }
}
