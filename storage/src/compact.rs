//! Compaction: turning a day's freshly flushed files into files that do not overlap.
//!
//! A flush writes one level-0 file per table and UTC day, sorted by (series key,
//! time). Level-0 files of one day may overlap each other: a backfill written host by
//! host, late data, a Kafka replay or two flushes that straddle the same minutes.
//! Queries then have to merge and deduplicate them. The compactor merges a day's
//! level-0 files with the level-1 files of the time windows they touch into new
//! level-1 files, one per window (`compaction_window`, 1 h by default), so that
//! level-1 files never overlap and the day converges to the case queries read
//! without merging. Time-ordered data only ever rewrites the window at the edge
//! of the previous flush.
//!
//! The merge streams: every input is read a batch at a time in its sort order and
//! merged k-way (rows compared in Arrow's row format), with the last write of each
//! (series, time) kept; memory is bounded by a batch per input (at most 64 fresh
//! files plus the compacted files of the windows they touch), 32 batches more, and
//! the output row groups in progress (256 MiB together), not by the size of the day.
//!
//! Sequence numbers: a level-1 file takes the highest sequence of its inputs. That
//! is right because a plan takes the day's *oldest* level-0 files and every level-1
//! file of the windows they touch; any level-0 file left out (or written later) has
//! a higher sequence and wins, as it should.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, TimestampNanosecondArray};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use crate::catalog::{ParquetFileMeta, SeriesKey, Tier};
use crate::dedupe::{capped_key_range, series_key};
use crate::error::Error;
use crate::flush::writer_properties;
use crate::parquet_store::{ParquetFileWriter, ParquetStore};
use crate::schema::TIME_COLUMN;

/// Most fresh files one merge takes (each is an open file and a batch in memory).
pub const MAX_LEVEL0_INPUTS: usize = 64;

/// One merge to run: every level-0 file of a table's day plus the level-1 files
/// of the windows they touch.
#[derive(Debug, Clone)]
pub struct CompactionPlan {
    pub table: String,
    pub day: i64,
    pub inputs: Vec<ParquetFileMeta>,
    /// Bytes of level-0 files waiting (the debt this plan pays off).
    pub level0_bytes: u64,
}

/// Plans the merges due: a table's day is compacted once it has `min_files`
/// level-0 files, or as soon as one of its level-0 files may share rows with
/// another file of the day (queries would have to merge them).
pub fn plan_compactions(
    files: &[ParquetFileMeta],
    min_files: usize,
    window_nanos: i64,
) -> Vec<CompactionPlan> {
    let window = window_nanos.max(1);
    let mut groups: BTreeMap<(&str, i64), Vec<&ParquetFileMeta>> = BTreeMap::new();
    for f in files {
        groups.entry((f.table.as_str(), f.day)).or_default().push(f);
    }
    let mut plans = Vec::new();
    for ((table, day), group) in groups {
        let mut level0: Vec<&ParquetFileMeta> =
            group.iter().copied().filter(|f| f.level == 0).collect();
        if level0.is_empty() {
            continue;
        }
        let overlapping = level0
            .iter()
            .any(|f| group.iter().any(|g| g.id != f.id && f.may_share_rows(g)));
        if level0.len() < min_files.max(2) && !overlapping {
            continue;
        }
        let level0_bytes = level0.iter().map(|f| f.size_bytes).sum();
        // Bounded work per merge: the oldest fresh files first. Any left out have
        // higher sequences than the merge's output, so they still win on a
        // duplicate, and the next merge takes them.
        level0.sort_by_key(|f| (f.seq, f.id));
        level0.truncate(MAX_LEVEL0_INPUTS);
        let touched: BTreeSet<i64> = level0
            .iter()
            .filter(|f| f.min_time <= f.max_time)
            .flat_map(|f| f.min_time.div_euclid(window)..=f.max_time.div_euclid(window))
            .collect();
        let mut inputs: Vec<ParquetFileMeta> = group
            .iter()
            .filter(|f| {
                (f.level == 0 && level0.iter().any(|l| l.id == f.id))
                    || f.level > 0
                        && f.min_time <= f.max_time
                        && touched
                            .range(f.min_time.div_euclid(window)..=f.max_time.div_euclid(window))
                            .next()
                            .is_some()
            })
            .map(|f| (*f).clone())
            .collect();
        inputs.sort_by_key(|f| (f.seq, f.id));
        plans.push(CompactionPlan {
            table: table.to_string(),
            day,
            level0_bytes,
            inputs,
        });
    }
    plans
}

/// What a merge needs besides its inputs.
pub struct MergeSpec<'a> {
    /// Where the inputs are and the outputs go.
    pub store: &'a ParquetStore,
    pub table: &'a str,
    pub day: i64,
    /// The table's Arrow schema (float fields as `Float64`).
    pub schema: &'a SchemaRef,
    /// The tags the output is sorted by (then time); the table's persisted sort key.
    pub sort_key: &'a [String],
    pub window_nanos: i64,
    /// Float columns to write as floats even if every input stores them as
    /// decimals (set when rescaling a decimal column would lose its exactness).
    pub force_float: &'a HashSet<String>,
    /// Set when the server is stopping: the merge gives up between batches.
    pub cancel: &'a AtomicBool,
}

/// Why a merge did not finish.
#[derive(Debug)]
pub enum MergeError {
    /// A decimal column could not be rescaled exactly: retry with it as floats.
    Rescale(String),
    Cancelled,
    Failed(Error),
}

impl From<Error> for MergeError {
    fn from(e: Error) -> Self {
        MergeError::Failed(e)
    }
}

/// Rows gathered before they are copied into output batches.
const OUTPUT_BATCH_ROWS: usize = 64 * 1024;
/// Most bytes the output files' row groups in progress may hold together.
const WRITE_BUFFER_BYTES: usize = 256 << 20;
/// Batches kept beyond each input's current one before the pending rows are
/// copied out (rows skipped as duplicates do not count as pending).
const MAX_EXTRA_BATCHES: usize = 32;
/// Rows read from an input at a time.
const INPUT_BATCH_ROWS: usize = 8 * 1024;

/// Merges `inputs` (each sorted by `spec.sort_key` then time, without duplicates)
/// into one file per time window, keeping the input with the highest sequence on
/// a duplicate (series, time). `new_file` names each output (id, relative path).
pub fn merge_files(
    spec: &MergeSpec<'_>,
    inputs: &[ParquetFileMeta],
    new_file: &mut dyn FnMut() -> (u64, String),
) -> std::result::Result<Vec<ParquetFileMeta>, MergeError> {
    let out_schema = output_schema(spec, inputs)?;
    let mut sort_fields = Vec::new();
    let mut key_cols = Vec::new();
    for name in spec
        .sort_key
        .iter()
        .map(String::as_str)
        .chain([TIME_COLUMN])
    {
        let i = out_schema
            .index_of(name)
            .map_err(|e| Error::arrow(format!("sort key of table {}", spec.table), e))?;
        sort_fields.push(SortField::new(out_schema.field(i).data_type().clone()));
        key_cols.push(i);
    }
    let time_idx = *key_cols.last().expect("time is in the key");
    let converter = RowConverter::new(sort_fields)
        .map_err(|e| Error::arrow(format!("sort key of table {}", spec.table), e))?;
    let mut merge = Merge {
        spec,
        out_schema,
        converter,
        key_cols,
        time_idx,
        retained: Vec::new(),
        windows: BTreeMap::new(),
        pending_rows: 0,
        outputs: Vec::new(),
        new_file,
    };
    let result = merge.run(inputs);
    if result.is_err() {
        merge.abandon();
    }
    result
}

/// The output schema: the table's, except that a float column every input stores
/// as decimals stays decimal (at the largest scale of the inputs), so compaction
/// keeps the compact encoding flushes chose.
fn output_schema(
    spec: &MergeSpec<'_>,
    inputs: &[ParquetFileMeta],
) -> std::result::Result<SchemaRef, MergeError> {
    let mut stored: HashMap<String, Vec<DataType>> = HashMap::new();
    for f in inputs {
        let meta = spec.store.metadata(&f.path, Some(f.size_bytes))?;
        for field in meta.schema().fields() {
            stored
                .entry(field.name().clone())
                .or_default()
                .push(field.data_type().clone());
        }
    }
    let fields: Vec<Field> = spec
        .schema
        .fields()
        .iter()
        .map(|f| {
            if f.data_type() != &DataType::Float64 || spec.force_float.contains(f.name()) {
                return f.as_ref().clone();
            }
            let types = stored.get(f.name()).map(Vec::as_slice).unwrap_or(&[]);
            let scales: Option<Vec<i8>> = types
                .iter()
                .map(|t| match t {
                    DataType::Decimal128(18, s) => Some(*s),
                    _ => None,
                })
                .collect();
            match scales.and_then(|s| s.into_iter().max()) {
                Some(scale) => {
                    Field::new(f.name(), DataType::Decimal128(18, scale), f.is_nullable())
                }
                None => f.as_ref().clone(),
            }
        })
        .collect();
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        spec.schema.metadata().clone(),
    )))
}

/// Largest mantissa a stored decimal may have: beyond it the value read back as a
/// float would no longer be the one written (see `flush::decimal_scale`).
const MAX_EXACT_MANTISSA: i128 = 1 << 53;

/// Widens an input batch to the output schema.
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, MergeError> {
    let n = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> std::result::Result<ArrayRef, MergeError> {
            let Some(c) = batch.column_by_name(f.name()) else {
                return Ok(new_null_array(f.data_type(), n));
            };
            match (c.data_type(), f.data_type()) {
                (a, b) if a == b => Ok(Arc::clone(c)),
                (DataType::Decimal128(_, from), DataType::Decimal128(p, to)) if from < to => {
                    let mul = 10i128.pow((to - from) as u32);
                    let d = c.as_primitive::<Decimal128Type>();
                    if !d
                        .iter()
                        .flatten()
                        .all(|v| v.saturating_mul(mul).abs() < MAX_EXACT_MANTISSA)
                    {
                        return Err(MergeError::Rescale(f.name().clone()));
                    }
                    let scaled = d
                        .unary::<_, Decimal128Type>(|v| v.wrapping_mul(mul))
                        .with_precision_and_scale(*p, *to)
                        .map_err(|e| Error::arrow(format!("rescaling column {}", f.name()), e))?;
                    Ok(Arc::new(scaled))
                }
                (_, to) => arrow::compute::cast(c, to)
                    .map_err(|e| Error::arrow(format!("converting column {}", f.name()), e).into()),
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::arrow("widening a batch to the merged schema", e).into())
}

/// One input being read in order.
struct Cursor {
    batches: Box<dyn Iterator<Item = crate::error::Result<RecordBatch>> + Send>,
    path: String,
    seq: u64,
    batch: RecordBatch,
    rows: Rows,
    times: TimestampNanosecondArray,
    pos: usize,
    /// Index of `batch` in the merge's retained batches.
    retained: usize,
    /// The input is read to its end.
    done: bool,
}

/// One output window: the rows waiting to be copied, and its file.
struct WindowOutput {
    pending: Vec<(usize, usize)>,
    writer: Option<(u64, String, ParquetFileWriter)>,
    rows: u64,
    min_time: i64,
    max_time: i64,
    first_key: Option<SeriesKey>,
    last_key: Option<SeriesKey>,
}

struct Merge<'a, 'b> {
    spec: &'a MergeSpec<'a>,
    out_schema: SchemaRef,
    converter: RowConverter,
    key_cols: Vec<usize>,
    time_idx: usize,
    /// Batches that pending rows point into.
    retained: Vec<RecordBatch>,
    windows: BTreeMap<i64, WindowOutput>,
    pending_rows: usize,
    /// Files written (renamed into place, not yet in the catalog).
    outputs: Vec<ParquetFileMeta>,
    new_file: &'b mut dyn FnMut() -> (u64, String),
}

impl Merge<'_, '_> {
    fn run(
        &mut self,
        inputs: &[ParquetFileMeta],
    ) -> std::result::Result<Vec<ParquetFileMeta>, MergeError> {
        // Each output holds the newest of its inputs' writes (see the module doc).
        let seq = inputs.iter().map(|f| f.seq).max().unwrap_or(0);
        let mut cursors = Vec::with_capacity(inputs.len());
        for f in inputs {
            if let Some(c) = self.open(f)? {
                cursors.push(c);
            }
        }
        // Duplicates across inputs: the input with the higher sequence comes first
        // and wins; the others skip their copy of the row.
        while !cursors.is_empty() {
            if self.spec.cancel.load(Ordering::Relaxed) {
                return Err(MergeError::Cancelled);
            }
            let mut best = 0;
            for j in 1..cursors.len() {
                if before(&cursors[j], &cursors[best]) {
                    best = j;
                }
            }
            for j in 0..cursors.len() {
                if j != best && same_row(&cursors[j], &cursors[best]) {
                    self.advance(&mut cursors[j])?;
                }
            }
            // Then take rows from the winner while they come before every other
            // input's next row: a run of one series (or a whole input) at a time.
            let next_other = (0..cursors.len())
                .filter(|&j| j != best && !cursors[j].done)
                .reduce(|a, b| {
                    if before(&cursors[b], &cursors[a]) {
                        b
                    } else {
                        a
                    }
                });
            loop {
                self.emit(&cursors[best]);
                self.advance(&mut cursors[best])?;
                if cursors[best].done || self.must_materialize(cursors.len()) {
                    break;
                }
                if let Some(o) = next_other {
                    let (b, o) = (&cursors[best], &cursors[o]);
                    if b.rows.row(b.pos) >= o.rows.row(o.pos) {
                        break;
                    }
                }
            }
            cursors.retain(|c| !c.done);
            if self.must_materialize(cursors.len()) {
                self.materialize(&mut cursors)?;
            }
        }
        self.materialize(&mut cursors)?;
        // Windows not yet finished stay in `self.windows`, so a failure removes them.
        while let Some((_, w)) = self.windows.pop_first() {
            let Some((id, rel, writer)) = w.writer else {
                continue;
            };
            let size = writer.finish()?;
            self.outputs.push(ParquetFileMeta {
                id,
                table: self.spec.table.to_string(),
                path: rel,
                min_time: w.min_time,
                max_time: w.max_time,
                rows: w.rows,
                size_bytes: size,
                seq,
                day: self.spec.day,
                sort_key: self.spec.sort_key.to_vec(),
                key_range: match (w.first_key, w.last_key) {
                    (Some(a), Some(b)) => capped_key_range(a, b),
                    _ => None,
                },
                level: 1,
                tier: Tier::Hot,
            });
        }
        Ok(std::mem::take(&mut self.outputs))
    }

    /// Opens an input at its first row; `None` if it is empty.
    fn open(&mut self, f: &ParquetFileMeta) -> std::result::Result<Option<Cursor>, MergeError> {
        let reader = self
            .spec
            .store
            .open(&f.path, Some(f.size_bytes), INPUT_BATCH_ROWS)?;
        // A file records the key it is sorted by, a prefix of the table's (tags added
        // later are null in it); a table without tags sorts by time alone.
        let sorted = self.spec.sort_key.is_empty()
            || (!f.sort_key.is_empty() && self.spec.sort_key.starts_with(&f.sort_key));
        let batches: Box<dyn Iterator<Item = _> + Send> = if sorted {
            Box::new(reader)
        } else {
            // Written before files recorded their order: sorted here, whole (such
            // a file is one flush, bounded by the flush limits).
            let all = reader
                .map(|b| {
                    b.map_err(MergeError::from)
                        .and_then(|b| conform(&b, &self.out_schema))
                })
                .collect::<std::result::Result<Vec<_>, MergeError>>()?;
            let all = arrow::compute::concat_batches(&self.out_schema, &all)
                .map_err(|e| Error::arrow(format!("reading {}", f.path), e))?;
            let sort: Vec<arrow::compute::SortColumn> = self
                .key_cols
                .iter()
                .map(|&i| arrow::compute::SortColumn {
                    values: Arc::clone(all.column(i)),
                    options: None,
                })
                .collect();
            let order = arrow::compute::lexsort_to_indices(&sort, None)
                .and_then(|order| arrow::compute::take_record_batch(&all, &order))
                .map_err(|e| Error::arrow(format!("sorting {}", f.path), e))?;
            Box::new(std::iter::once(Ok(order)))
        };
        let mut c = Cursor {
            batches,
            path: f.path.clone(),
            seq: f.seq,
            batch: RecordBatch::new_empty(Arc::clone(&self.out_schema)),
            rows: self.converter.empty_rows(0, 0),
            times: TimestampNanosecondArray::from(Vec::<i64>::new()),
            pos: 0,
            retained: 0,
            done: false,
        };
        Ok(self.load(&mut c)?.then_some(c))
    }

    /// Loads the cursor's next non-empty batch; false at the end of its input.
    fn load(&mut self, c: &mut Cursor) -> std::result::Result<bool, MergeError> {
        for b in c.batches.by_ref() {
            let b = b?;
            if b.num_rows() == 0 {
                continue;
            }
            let b = conform(&b, &self.out_schema)?;
            let cols: Vec<ArrayRef> = self
                .key_cols
                .iter()
                .map(|&i| Arc::clone(b.column(i)))
                .collect();
            c.rows = self
                .converter
                .convert_columns(&cols)
                .map_err(|e| Error::arrow(format!("sort key of {}", c.path), e))?;
            c.times = b
                .column(self.time_idx)
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                .clone();
            c.batch = b;
            c.pos = 0;
            c.retained = self.retained.len();
            self.retained.push(c.batch.clone());
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the rows gathered (or the batches they point into) are enough to be
    /// copied out now: what bounds the merge's memory.
    fn must_materialize(&self, inputs: usize) -> bool {
        self.pending_rows >= OUTPUT_BATCH_ROWS || self.retained.len() > inputs + MAX_EXTRA_BATCHES
    }

    /// Moves a cursor on by a row, loading its next batch when needed; at the end
    /// of its input it is marked done.
    fn advance(&mut self, c: &mut Cursor) -> std::result::Result<(), MergeError> {
        c.pos += 1;
        if c.pos >= c.batch.num_rows() && !self.load(c)? {
            c.done = true;
        }
        Ok(())
    }

    fn emit(&mut self, c: &Cursor) {
        let t = c.times.value(c.pos);
        let w = t.div_euclid(self.spec.window_nanos.max(1));
        let out = self.windows.entry(w).or_insert_with(|| WindowOutput {
            pending: Vec::new(),
            writer: None,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            first_key: None,
            last_key: None,
        });
        out.pending.push((c.retained, c.pos));
        out.min_time = out.min_time.min(t);
        out.max_time = out.max_time.max(t);
        self.pending_rows += 1;
    }

    /// Copies the pending rows of every window into batches and writes them.
    fn materialize(&mut self, cursors: &mut [Cursor]) -> std::result::Result<(), MergeError> {
        if self.pending_rows > 0 {
            let refs: Vec<&RecordBatch> = self.retained.iter().collect();
            for out in self.windows.values_mut() {
                if out.pending.is_empty() {
                    continue;
                }
                let batch = interleave_record_batch(&refs, &out.pending).map_err(|e| {
                    Error::arrow(format!("merging files of table {}", self.spec.table), e)
                })?;
                out.pending.clear();
                if out.writer.is_none() {
                    let (id, rel) = (self.new_file)();
                    let props = writer_properties(&self.out_schema, self.spec.sort_key);
                    let w = self
                        .spec
                        .store
                        .create(&rel, Arc::clone(&self.out_schema), props)?;
                    out.writer = Some((id, rel, w));
                    out.first_key = series_key(&batch, self.spec.sort_key, 0);
                }
                out.last_key = series_key(&batch, self.spec.sort_key, batch.num_rows() - 1);
                out.rows += batch.num_rows() as u64;
                out.writer.as_mut().expect("opened above").2.write(&batch)?;
            }
            self.pending_rows = 0;
            // Every window's file stays open to the end (rows come series by
            // series, each across all windows): bound what their row groups in
            // progress hold by closing the biggest early.
            loop {
                let in_progress: usize = self
                    .windows
                    .values()
                    .filter_map(|w| w.writer.as_ref())
                    .map(|w| w.2.in_progress_bytes())
                    .sum();
                if in_progress <= WRITE_BUFFER_BYTES {
                    break;
                }
                let biggest = self
                    .windows
                    .values_mut()
                    .filter_map(|w| w.writer.as_mut())
                    .max_by_key(|w| w.2.in_progress_bytes())
                    .expect("some writer holds the bytes");
                biggest.2.flush_row_group()?;
            }
        }
        // Keep only the batches the cursors still read.
        self.retained.clear();
        for c in cursors.iter_mut() {
            c.retained = self.retained.len();
            self.retained.push(c.batch.clone());
        }
        Ok(())
    }

    /// Removes what a failed merge wrote.
    fn abandon(&mut self) {
        for (_, w) in std::mem::take(&mut self.windows) {
            if let Some((_, _, writer)) = w.writer {
                writer.abandon();
            }
        }
        let outputs = std::mem::take(&mut self.outputs);
        self.spec.store.discard(
            outputs.iter().map(|f| f.path.as_str()),
            "the output of a failed merge",
        );
    }
}

/// Whether `a`'s current row goes before `b`'s: by (series key, time), and on a
/// duplicate the higher sequence (the later write) first.
fn before(a: &Cursor, b: &Cursor) -> bool {
    match a.rows.row(a.pos).cmp(&b.rows.row(b.pos)) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => a.seq > b.seq,
    }
}

fn same_row(a: &Cursor, b: &Cursor) -> bool {
    a.rows.row(a.pos) == b.rows.row(b.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000_000;

    fn f(id: u64, level: u8, hours: (i64, i64), keys: (&str, &str)) -> ParquetFileMeta {
        ParquetFileMeta {
            id,
            table: "cpu".into(),
            path: String::new(),
            min_time: hours.0 * HOUR,
            max_time: hours.1 * HOUR - 1,
            rows: 1,
            size_bytes: 100,
            seq: id,
            day: 0,
            sort_key: vec!["host".into()],
            key_range: Some((vec![Some(keys.0.into())], vec![Some(keys.1.into())])),
            level,
            tier: Tier::Hot,
        }
    }

    fn ids(plans: &[CompactionPlan]) -> Vec<Vec<u64>> {
        plans
            .iter()
            .map(|p| p.inputs.iter().map(|f| f.id).collect())
            .collect()
    }

    #[test]
    fn a_single_fresh_file_that_overlaps_nothing_waits() {
        let files = vec![f(1, 1, (0, 1), ("a", "z")), f(2, 0, (5, 6), ("a", "z"))];
        assert!(plan_compactions(&files, 4, HOUR).is_empty());
    }

    #[test]
    fn overlap_takes_the_windows_it_touches_only() {
        let files = vec![
            f(1, 1, (0, 1), ("a", "z")),
            f(2, 1, (1, 2), ("a", "z")),
            f(3, 1, (2, 3), ("a", "z")),
            // Touches windows 1 and 2 and overlaps file 2 in time and key.
            f(4, 0, (1, 3), ("m", "n")),
        ];
        let plans = plan_compactions(&files, 4, HOUR);
        assert_eq!(ids(&plans), vec![vec![2, 3, 4]]);
        assert_eq!(plans[0].level0_bytes, 100);
    }

    #[test]
    fn fresh_files_that_share_no_series_do_not_overlap() {
        // Host-by-host backfill: same times, disjoint hosts.
        let files = vec![f(1, 0, (0, 24), ("a", "c")), f(2, 0, (0, 24), ("d", "f"))];
        assert!(plan_compactions(&files, 4, HOUR).is_empty());
        let more: Vec<_> = (0..4)
            .map(|i| {
                let k = ["a", "d", "g", "j"][i];
                f(i as u64 + 1, 0, (0, 24), (k, k))
            })
            .collect();
        assert_eq!(
            ids(&plan_compactions(&more, 4, HOUR)),
            vec![vec![1, 2, 3, 4]]
        );
    }

    #[test]
    fn a_merge_takes_the_oldest_fresh_files_and_only_their_windows() {
        // 70 fresh files of one series, each an hour of its own, in seq order;
        // plus a compacted file in the window of the newest one.
        let mut files: Vec<ParquetFileMeta> = (1..=70)
            .map(|i| f(i, 0, (i as i64 - 1, i as i64), ("a", "a")))
            .collect();
        files.push(f(100, 1, (69, 70), ("a", "a")));
        let plans = plan_compactions(&files, 4, HOUR);
        assert_eq!(plans.len(), 1);
        let ids: Vec<u64> = plans[0].inputs.iter().map(|f| f.id).collect();
        // The 64 oldest by seq; file 100's window (hour 69) is touched only by file
        // 70, which waits for the next merge, so file 100 waits too.
        assert_eq!(ids, (1..=64).collect::<Vec<u64>>());
        assert_eq!(
            plans[0].level0_bytes,
            70 * 100,
            "the debt counts every fresh file"
        );
    }

    #[test]
    fn a_damaged_time_range_is_skipped_not_a_panic() {
        let mut bad = f(2, 1, (0, 1), ("a", "z"));
        bad.min_time = 10 * HOUR;
        let files = vec![
            f(1, 0, (0, 1), ("a", "z")),
            f(3, 0, (0, 1), ("a", "z")),
            bad,
        ];
        let plans = plan_compactions(&files, 4, HOUR);
        assert_eq!(ids(&plans), vec![vec![1, 3]]);
    }
}
