//! Rollups: 10-minute and 1-hour aggregates of every numeric field of every
//! series, kept as tables of their own (`rollup_10m.<table>`, `rollup_1h.<table>`)
//! so that data can be kept far longer than raw samples.
//!
//! Each row holds one series' bucket: the series' tags, `time` (the bucket's
//! start) and per field `f` the mergeable state of [`BucketState`]: `f_count`,
//! `f_sum`, `f_min`, `f_max`, `f_first`, `f_first_time`, `f_last`,
//! `f_last_time` and `f_increase`. 10-minute rows are built from the raw rows
//! (read through the query engine: deduplicated, every tier); 1-hour rows are
//! merged from the 10-minute rows, exactly. Rows are written through the storage
//! engine like any write (WAL, buffer, Parquet), so a bucket rolled up again
//! replaces its earlier row (last write wins on series and time).
//!
//! A bucket is rolled up once it is `delay` old. How far each table is rolled
//! up is its watermark (in the catalog, `system.rollups` in SQL); a Parquet file
//! of the table newer than the watermark's sequence that reaches back before it
//! holds late writes, and the buckets it touches are rolled up again.

mod state;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::common::{ParamValues, ScalarValue};
use futures::TryStreamExt;
use tokio::sync::Mutex;
use tracing::info;
use vigil_model::{FieldValue, Point, TableAccess};
use vigil_sql::QueryEngine;
use vigil_storage::retention::now_nanos;
use vigil_storage::{is_rollup_table, RollupWatermark, Storage, TIME_COLUMN};

pub use state::{counter_step, BucketState};

use vigil_sql::ranges::{ceil_to, coalesce, floor_to};
pub use vigil_sql::ranges::{HOUR, TEN_MINUTES};
/// Raw time read per query while rolling up.
const READ_SPAN: i64 = 6 * HOUR;
/// Rollup rows per storage commit.
const COMMIT_ROWS: usize = 20_000;

/// The state columns each rolled-up field `f` has, as `f_<suffix>`.
pub const STATE_COLUMNS: [&str; 9] = [
    "count",
    "sum",
    "min",
    "max",
    "first",
    "first_time",
    "last",
    "last_time",
    "increase",
];

#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("rolling up {table}: {source}")]
    Query {
        table: String,
        source: vigil_sql::Error,
    },
    #[error("rolling up {table}: {source}")]
    Storage {
        table: String,
        source: vigil_storage::Error,
    },
    #[error("rolling up {table}: {message}")]
    Rows { table: String, message: String },
}

pub type Result<T, E = RollupError> = std::result::Result<T, E>;

/// Builds the rollups; one run at a time.
pub struct Rollups {
    engine: Arc<QueryEngine>,
    storage: Arc<Storage>,
    delay: Duration,
    running: Mutex<()>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The rows of `source` in `[$1, $2)`: its tags, time and `values`, in series
/// then time order (as [`RowBuilder`] takes them).
fn series_query(source: &str, tags: &[String], values: impl Iterator<Item = String>) -> String {
    let key: Vec<String> = tags
        .iter()
        .map(|t| quote(t))
        .chain([quote(TIME_COLUMN)])
        .collect();
    let select: Vec<String> = key.iter().cloned().chain(values).collect();
    format!(
        "SELECT {} FROM {source} WHERE time >= $1 AND time < $2 ORDER BY {}",
        select.join(", "),
        key.join(", ")
    )
}

fn ts(t: i64) -> ScalarValue {
    ScalarValue::TimestampNanosecond(Some(t), Some("UTC".into()))
}

/// Which of a table's columns are rolled up.
struct Columns {
    tags: Vec<String>,
    fields: Vec<String>,
}

impl Rollups {
    /// `delay`: how old a bucket must be before it is rolled up (writes arriving
    /// later re-roll it).
    pub fn new(engine: Arc<QueryEngine>, storage: Arc<Storage>, delay: Duration) -> Self {
        Self {
            engine,
            storage,
            delay,
            running: Mutex::new(()),
        }
    }

    /// Rolls up every table as far as it is due; returns the rollup rows written.
    pub async fn run(&self) -> Result<u64> {
        self.run_at(now_nanos()).await
    }

    /// [`Rollups::run`] as if it were `now`.
    pub async fn run_at(&self, now: i64) -> Result<u64> {
        let _one = self.running.lock().await;
        let mut rows = 0;
        let mut first_error = None;
        for table in self.storage.table_names() {
            if is_rollup_table(&table) {
                continue;
            }
            match self.roll_table(&table, now).await {
                Ok(n) => rows += n,
                Err(e) => {
                    tracing::warn!(table, error = %e, "rollup failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(rows),
            Some(e) => Err(e),
        }
    }

    fn columns(&self, table: &str) -> Option<Columns> {
        let snap = self.storage.snapshot(table)?;
        let fields = snap
            .schema
            .fields()
            .iter()
            .filter(|f| f.name() != TIME_COLUMN && !snap.tags.contains(f.name()))
            .filter(|f| {
                matches!(
                    f.data_type(),
                    DataType::Float64
                        | DataType::Int64
                        | DataType::UInt64
                        | DataType::Decimal128(..)
                )
            })
            .map(|f| f.name().clone())
            // A field whose state columns would be named like a tag cannot be
            // rolled up (the row would have a tag and a field of one name).
            .filter(|f: &String| {
                let clash = STATE_COLUMNS
                    .iter()
                    .any(|s| snap.tags.contains(&format!("{f}_{s}")));
                if clash {
                    tracing::warn!(
                        table,
                        field = f.as_str(),
                        "not rolled up: a tag is named like one of its rollup columns"
                    );
                }
                !clash
            })
            .collect();
        Some(Columns {
            tags: snap.tags,
            fields,
        })
    }

    async fn roll_table(&self, table: &str, now: i64) -> Result<u64> {
        let files: Vec<_> = self
            .storage
            .files()
            .into_iter()
            .filter(|f| f.table == table)
            .collect();
        let Some(data_start) = files.iter().map(|f| f.min_time).min() else {
            return Ok(0);
        };
        let Some(columns) = self.columns(table) else {
            return Ok(0);
        };
        if columns.fields.is_empty() {
            return Ok(0);
        }
        let max_seq = files.iter().map(|f| f.seq).max().unwrap_or(0);
        let old = self.storage.rollup_watermark(table);
        // Buckets cut by the raw retention would be rolled up partially.
        let keep_from = self
            .storage
            .retention_cutoff(table)
            .map(|c| ceil_to(c, TEN_MINUTES))
            .unwrap_or(i64::MIN);
        let delay = i64::try_from(self.delay.as_nanos()).unwrap_or(i64::MAX);
        let due_10m = floor_to(now.saturating_sub(delay), TEN_MINUTES);
        let from_10m = old
            .map(|w| w.rolled_10m)
            .unwrap_or_else(|| floor_to(data_start, TEN_MINUTES))
            .max(keep_from);
        let mut ranges = vec![(from_10m, due_10m)];
        // Raw rows older than the first rollup that are still kept (a backfill,
        // rows still buffered at the first run) are rolled up too, and the
        // lower edge moves down to them. A catalog from before the lower edge
        // was kept had rollups that skipped NaN and rows without values: the
        // range whose raw rows are kept is rolled up again, and the edge starts
        // there.
        let lower = floor_to(data_start, TEN_MINUTES).max(keep_from);
        let rolled_from = match old {
            None => from_10m,
            Some(w) if w.rolled_from == i64::MIN => {
                ranges.push((lower, w.rolled_10m));
                lower
            }
            Some(w) => {
                ranges.push((lower, w.rolled_from));
                w.rolled_from.min(lower)
            }
        };
        if let Some(w) = old {
            // Late writes: flushed after the last run, into buckets it rolled up.
            for f in files
                .iter()
                .filter(|f| f.seq > w.rolled_seq && f.min_time < w.rolled_10m)
            {
                ranges.push((
                    floor_to(f.min_time, TEN_MINUTES).max(keep_from),
                    ceil_to(f.max_time.saturating_add(1), TEN_MINUTES).min(w.rolled_10m),
                ));
            }
        }
        let ranges = coalesce(ranges);
        let rolled_10m = old.map(|w| w.rolled_10m).unwrap_or(from_10m).max(due_10m);
        let mut written = 0u64;
        for &(a, b) in &ranges {
            let mut start = a;
            while start < b {
                let end = (start + READ_SPAN).min(b);
                written += self.roll_10m(table, &columns, start, end).await?;
                start = end;
            }
        }
        // Hours whose 10-minute buckets are all rolled up: those not rolled yet,
        // and those a re-rolled bucket belongs to.
        let due_1h = floor_to(rolled_10m, HOUR);
        let from_1h = old
            .map(|w| w.rolled_1h)
            .unwrap_or_else(|| floor_to(from_10m, HOUR));
        let mut hours = vec![(from_1h, due_1h)];
        hours.extend(
            ranges
                .iter()
                .map(|&(a, b)| (floor_to(a, HOUR), ceil_to(b, HOUR).min(due_1h))),
        );
        for (a, b) in coalesce(hours) {
            let mut start = a;
            while start < b {
                let end = (start + 4 * READ_SPAN).min(b);
                written += self.roll_1h(table, &columns, start, end).await?;
                start = end;
            }
        }
        let watermark = RollupWatermark {
            rolled_from,
            rolled_10m,
            rolled_1h: due_1h.max(from_1h),
            rolled_seq: max_seq.max(old.map_or(0, |w| w.rolled_seq)),
        };
        if old != Some(watermark) {
            self.storage
                .set_rollup_watermark(table, watermark)
                .map_err(|source| RollupError::Storage {
                    table: table.to_string(),
                    source,
                })?;
        }
        if written > 0 {
            info!(table, rows = written, "rolled up");
        }
        Ok(written)
    }

    /// Reads `query` (ordered by series, then time) and hands each batch to `f`.
    async fn read(
        &self,
        table: &str,
        query: &str,
        from: i64,
        to: i64,
        mut f: impl FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let qerr = |source: vigil_sql::Error| RollupError::Query {
            table: table.to_string(),
            source,
        };
        let planned = self
            .engine
            .plan(
                query,
                Some(ParamValues::List(vec![ts(from).into(), ts(to).into()])),
                &TableAccess::all(),
            )
            .await
            .map_err(qerr)?;
        let mut stream = self.engine.execute(planned).map_err(qerr)?;
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| qerr(vigil_sql::Error::from(e)))?
        {
            f(&batch)?;
        }
        Ok(())
    }

    async fn roll_10m(&self, table: &str, c: &Columns, from: i64, to: i64) -> Result<u64> {
        let values = c
            .fields
            .iter()
            .map(|f| format!("CAST({} AS DOUBLE) AS {}", quote(f), quote(f)));
        let query = series_query(&format!("public.{}", quote(table)), &c.tags, values);
        let mut builder = RowBuilder::new(table, "rollup_10m.", TEN_MINUTES, c);
        self.read(table, &query, from, to, |batch| builder.add_raw(batch))
            .await?;
        self.commit(table, builder.finish()).await
    }

    async fn roll_1h(&self, table: &str, c: &Columns, from: i64, to: i64) -> Result<u64> {
        let stored = format!("rollup_10m.{table}");
        let Some(schema) = self.storage.table_schema(&stored) else {
            return Ok(0);
        };
        // Fields whose 10-minute columns exist (a field never seen has none).
        let fields: Vec<String> = c
            .fields
            .iter()
            .filter(|f| {
                STATE_COLUMNS
                    .iter()
                    .all(|s| schema.field_with_name(&format!("{f}_{s}")).is_ok())
            })
            .cloned()
            .collect();
        let tags: Vec<String> = c
            .tags
            .iter()
            .filter(|t| schema.field_with_name(t).is_ok())
            .cloned()
            .collect();
        let cols = Columns { tags, fields };
        let values = cols.fields.iter().flat_map(|f| {
            STATE_COLUMNS
                .iter()
                .map(move |s| quote(&format!("{f}_{s}")))
        });
        let query = series_query(&format!("rollup_10m.{}", quote(table)), &cols.tags, values);
        let mut builder = RowBuilder::new(table, "rollup_1h.", HOUR, &cols);
        self.read(table, &query, from, to, |batch| builder.add_states(batch))
            .await?;
        self.commit(table, builder.finish()).await
    }

    async fn commit(&self, table: &str, points: Vec<Point<'static>>) -> Result<u64> {
        let total = points.len() as u64;
        let mut points = points.into_iter().enumerate();
        loop {
            let chunk: Vec<(usize, Point<'static>)> = points.by_ref().take(COMMIT_ROWS).collect();
            if chunk.is_empty() {
                return Ok(total);
            }
            let w = self.storage.validate_rollups(chunk);
            if let Some(e) = w.rejected.first() {
                return Err(RollupError::Rows {
                    table: table.to_string(),
                    message: format!("{} rollup rows refused: {}", w.rejected_count, e.reason),
                });
            }
            self.storage
                .commit(w.tables)
                .await
                .map_err(|source| RollupError::Storage {
                    table: table.to_string(),
                    source,
                })?;
        }
    }
}

impl Rollups {
    /// The columns of `system.rollups`.
    pub fn watermark_schema() -> arrow::datatypes::SchemaRef {
        use arrow::datatypes::{Field, Schema};
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("rolled_10m", ts.clone(), false),
            Field::new("rolled_1h", ts.clone(), false),
            Field::new("rolled_seq", DataType::UInt64, false),
            // Where the first rollup began (NULL: not known yet, a catalog
            // from before it was kept).
            Field::new("rolled_from", ts, true),
        ]))
    }

    /// `system.rollups`: how far each table's rollups are built (every bucket
    /// before the watermark is rolled up; late writes into it are re-rolled at the
    /// next maintenance run).
    pub fn watermarks(
        storage: &Storage,
    ) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        use arrow::array::{StringArray, TimestampNanosecondArray, UInt64Array};
        let w = storage.rollup_watermarks();
        RecordBatch::try_new(
            Self::watermark_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    w.iter().map(|(t, _)| t.as_str()),
                )),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(w.iter().map(|(_, w)| w.rolled_10m))
                        .with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(w.iter().map(|(_, w)| w.rolled_1h))
                        .with_timezone("UTC"),
                ),
                Arc::new(UInt64Array::from_iter_values(
                    w.iter().map(|(_, w)| w.rolled_seq),
                )),
                Arc::new(
                    TimestampNanosecondArray::from_iter(
                        w.iter()
                            .map(|(_, w)| (w.rolled_from != i64::MIN).then_some(w.rolled_from)),
                    )
                    .with_timezone("UTC"),
                ),
            ],
        )
    }
}

#[async_trait]
impl vigil_cold_tier::MaintenanceStep for Rollups {
    fn name(&self) -> &'static str {
        "rollups"
    }

    async fn run(&self) -> std::result::Result<u64, String> {
        Rollups::run(self).await.map_err(|e| e.to_string())
    }
}

/// Turns rows sorted by series and time into one rollup row per series and
/// bucket.
struct RowBuilder<'c> {
    table: String,
    resolution: i64,
    columns: &'c Columns,
    key: Vec<Option<String>>,
    bucket: Option<i64>,
    states: Vec<BucketState>,
    out: Vec<Point<'static>>,
}

/// A column as strings (tags may be dictionary-encoded).
fn strings(batch: &RecordBatch, name: &str, table: &str) -> Result<arrow::array::StringArray> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| RollupError::Rows {
            table: table.to_string(),
            message: format!("no column {name}"),
        })?;
    let utf8 = cast(col, &DataType::Utf8).map_err(|e| RollupError::Rows {
        table: table.to_string(),
        message: e.to_string(),
    })?;
    Ok(utf8.as_string::<i32>().clone())
}

impl<'c> RowBuilder<'c> {
    fn new(table: &str, prefix: &str, resolution: i64, columns: &'c Columns) -> Self {
        Self {
            table: format!("{prefix}{table}"),
            resolution,
            columns,
            key: Vec::new(),
            bucket: None,
            states: vec![BucketState::default(); columns.fields.len()],
            out: Vec::new(),
        }
    }

    fn err(&self, message: impl Into<String>) -> RollupError {
        RollupError::Rows {
            table: self.table.clone(),
            message: message.into(),
        }
    }

    fn times(&self, batch: &RecordBatch) -> Result<Vec<i64>> {
        let col = batch
            .column_by_name(TIME_COLUMN)
            .ok_or_else(|| self.err("no time column"))?;
        let t = cast(col, &DataType::Timestamp(TimeUnit::Nanosecond, None))
            .map_err(|e| self.err(e.to_string()))?;
        Ok(t.as_primitive::<TimestampNanosecondType>()
            .values()
            .to_vec())
    }

    /// Moves to the row's series and bucket, emitting the finished one.
    fn advance(&mut self, tags: &[arrow::array::StringArray], row: usize, time: i64) {
        let bucket = floor_to(time, self.resolution);
        let same_key = self.bucket.is_some()
            && tags.iter().zip(&self.key).all(|(col, k)| {
                let v = (!col.is_null(row)).then(|| col.value(row));
                v == k.as_deref()
            });
        if same_key && self.bucket == Some(bucket) {
            return;
        }
        self.emit();
        if !same_key {
            self.key = tags
                .iter()
                .map(|c| (!c.is_null(row)).then(|| c.value(row).to_string()))
                .collect();
        }
        self.bucket = Some(bucket);
    }

    fn add_raw(&mut self, batch: &RecordBatch) -> Result<()> {
        let table = self.table.clone();
        let tags = self
            .columns
            .tags
            .iter()
            .map(|t| strings(batch, t, &table))
            .collect::<Result<Vec<_>>>()?;
        let times = self.times(batch)?;
        let values = self
            .columns
            .fields
            .iter()
            .map(|f| {
                let col = batch
                    .column_by_name(f)
                    .ok_or_else(|| self.err(format!("no column {f}")))?;
                Ok(col.as_primitive::<Float64Type>().clone())
            })
            .collect::<Result<Vec<_>>>()?;
        for (row, &time) in times.iter().enumerate() {
            self.advance(&tags, row, time);
            for (state, col) in self.states.iter_mut().zip(&values) {
                if !col.is_null(row) {
                    state.push(col.value(row), time);
                }
            }
        }
        Ok(())
    }

    fn add_states(&mut self, batch: &RecordBatch) -> Result<()> {
        let table = self.table.clone();
        let tags = self
            .columns
            .tags
            .iter()
            .map(|t| strings(batch, t, &table))
            .collect::<Result<Vec<_>>>()?;
        let times = self.times(batch)?;
        let col = |name: String| -> Result<arrow::array::ArrayRef> {
            let c = batch
                .column_by_name(&name)
                .ok_or_else(|| self.err(format!("no column {name}")))?;
            Ok(c.clone())
        };
        let mut per_field = Vec::new();
        for f in &self.columns.fields {
            let get = |s: &str| col(format!("{f}_{s}"));
            let float = |s: &str| -> Result<arrow::array::Float64Array> {
                let c = cast(&get(s)?, &DataType::Float64).map_err(|e| self.err(e.to_string()))?;
                Ok(c.as_primitive::<Float64Type>().clone())
            };
            let int = |s: &str| -> Result<arrow::array::Int64Array> {
                let c = cast(&get(s)?, &DataType::Int64).map_err(|e| self.err(e.to_string()))?;
                Ok(c.as_primitive::<Int64Type>().clone())
            };
            per_field.push((
                int("count")?,
                float("sum")?,
                float("min")?,
                float("max")?,
                float("first")?,
                int("first_time")?,
                float("last")?,
                int("last_time")?,
                float("increase")?,
            ));
        }
        for (row, &time) in times.iter().enumerate() {
            self.advance(&tags, row, time);
            for (state, c) in self.states.iter_mut().zip(&per_field) {
                if c.0.is_null(row) || c.0.value(row) == 0 {
                    continue;
                }
                state.merge(&BucketState {
                    count: c.0.value(row),
                    sum: c.1.value(row),
                    min: c.2.value(row),
                    max: c.3.value(row),
                    first: c.4.value(row),
                    first_time: c.5.value(row),
                    last: c.6.value(row),
                    last_time: c.7.value(row),
                    increase: c.8.value(row),
                });
            }
        }
        Ok(())
    }

    fn emit(&mut self) {
        let Some(bucket) = self.bucket else {
            return;
        };
        // A row per series and bucket that had raw rows, even with no value of
        // any field counted: the raw rows make a group (count 0) in SQL, so
        // the rollup must too.
        let mut fields = Vec::new();
        for (name, s) in self.columns.fields.iter().zip(&self.states) {
            let f = |suffix: &str| std::borrow::Cow::Owned(format!("{name}_{suffix}"));
            if s.count == 0 {
                fields.push((f("count"), FieldValue::I64(0)));
                continue;
            }
            fields.extend([
                (f("count"), FieldValue::I64(s.count)),
                (f("sum"), FieldValue::F64(s.sum)),
                (f("min"), FieldValue::F64(s.min)),
                (f("max"), FieldValue::F64(s.max)),
                (f("first"), FieldValue::F64(s.first)),
                (f("first_time"), FieldValue::I64(s.first_time)),
                (f("last"), FieldValue::F64(s.last)),
                (f("last_time"), FieldValue::I64(s.last_time)),
                (f("increase"), FieldValue::F64(s.increase)),
            ]);
        }
        self.states
            .iter_mut()
            .for_each(|s| *s = BucketState::default());
        if fields.is_empty() {
            return;
        }
        let tags = self
            .columns
            .tags
            .iter()
            .zip(&self.key)
            .filter_map(|(name, v)| v.as_ref().map(|v| (name.clone().into(), v.clone().into())))
            .collect();
        self.out.push(Point {
            table: self.table.clone().into(),
            tags,
            fields,
            time: bucket,
        });
    }

    fn finish(mut self) -> Vec<Point<'static>> {
        self.emit();
        self.out
    }
}
