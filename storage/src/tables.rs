//! The table schemas: which columns each table has and of which kind, the order its
//! files are sorted by, and the checks every write goes through against them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Looked up by table name for every point written: foldhash, not SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use vigil_model::{LineError, Point};

use crate::buffer::BatchBuilder;
use crate::dedupe::sort_key_order;
use crate::error::{Error, Result};
use crate::schema::{ColumnKind, FieldType, TableSchema, TIME_COLUMN};

/// Points checked against the schemas and turned into Arrow batches, ready to commit.
#[derive(Debug, Default)]
pub struct ValidatedWrite {
    /// One or more batches per table (a sparse write is split), in line order.
    pub tables: Vec<(String, RecordBatch)>,
    pub accepted: usize,
    /// The first rejected lines (up to the `max_errors` asked for), by line.
    pub rejected: Vec<LineError>,
    /// How many lines were rejected in all.
    pub rejected_count: usize,
}

impl ValidatedWrite {
    fn reject(&mut self, max_errors: usize, line: usize, reason: impl FnOnce() -> String) {
        self.rejected_count += 1;
        if self.rejected.len() < max_errors {
            self.rejected.push(LineError {
                line,
                reason: reason(),
            });
        }
    }
}

/// The schemas of all tables, with the limits that keep a careless or hostile
/// writer from creating tables and columns without end.
#[derive(Debug)]
pub struct TableSchemas {
    schemas: RwLock<FastMap<String, TableSchema>>,
    /// Per table, the schema of the last batch built for it, which the next
    /// batch takes when it has the same columns (see
    /// [`BatchBuilder::finish_reusing`]): one shared schema, not one per write.
    batch_schemas: Mutex<FastMap<String, SchemaRef>>,
    max_tables: usize,
    max_columns_per_table: usize,
}

/// What a query needs of a table's schema.
#[derive(Debug, Clone)]
pub struct TableDescription {
    pub schema: SchemaRef,
    pub tags: Vec<String>,
    /// Every tag in the order files are sorted by (see [`TableSchema::full_sort_key`]).
    pub sort_key: Vec<String>,
}

impl TableSchemas {
    pub(crate) fn new(
        tables: &BTreeMap<String, TableSchema>,
        max_tables: usize,
        max_columns_per_table: usize,
    ) -> Self {
        Self {
            schemas: RwLock::new(tables.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            batch_schemas: Mutex::new(FastMap::default()),
            max_tables,
            max_columns_per_table,
        }
    }

    /// Adds the columns of a batch read back from the WAL that the schema lacks
    /// (the catalog is saved at flushes only, the WAL at every write).
    pub(crate) fn learn_columns(&self, table: &str, batch: &RecordBatch) {
        let mut schemas = self.schemas.write();
        let s = schemas.entry(table.to_string()).or_default();
        for f in batch.schema().fields() {
            if s.column(f.name()).is_none() {
                if let Some(k) = kind_of(f.name(), f.data_type()) {
                    s.add_column(f.name(), k);
                }
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.schemas.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn contains(&self, table: &str) -> bool {
        self.schemas.read().contains_key(table)
    }

    pub fn arrow_schema(&self, table: &str) -> Option<SchemaRef> {
        self.schemas
            .write()
            .get_mut(table)
            .map(|s| s.arrow_schema())
    }

    pub fn describe(&self, table: &str) -> Option<TableDescription> {
        let mut s = self.schemas.write();
        let ts = s.get_mut(table)?;
        Some(TableDescription {
            schema: ts.arrow_schema(),
            tags: ts.tags().map(str::to_string).collect(),
            sort_key: ts.full_sort_key(),
        })
    }

    /// The schemas as the catalog keeps them (with their sort keys).
    pub(crate) fn snapshot(&self) -> BTreeMap<String, TableSchema> {
        self.schemas
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The table's Arrow schema and its sort key, extended (and so fixed) by the
    /// tags it lacks, taken together so that the key names no column the schema
    /// lacks. New tags are ranked on `batches` before the lock is taken.
    pub(crate) fn schema_and_sort_key(
        &self,
        table: &str,
        batches: &[RecordBatch],
    ) -> Result<(SchemaRef, Vec<String>)> {
        let no_schema = || Error::FlushFailed {
            table: table.to_string(),
            message: "table has no schema".into(),
        };
        let missing = self
            .schemas
            .read()
            .get(table)
            .ok_or_else(no_schema)?
            .unsorted_tags();
        let ranked = if missing.is_empty() {
            missing
        } else {
            sort_key_order(batches, &missing)
        };
        let mut s = self.schemas.write();
        let ts = s.get_mut(table).ok_or_else(no_schema)?;
        let key = ts.extend_sort_key(&ranked);
        Ok((ts.arrow_schema(), key))
    }

    /// Checks points against the table schemas, adds new tables and columns, and
    /// builds Arrow batches per table. Lines that conflict are rejected one by one.
    pub fn validate<'a>(&self, points: Vec<(usize, Point<'a>)>) -> ValidatedWrite {
        self.validate_capped(points, usize::MAX)
    }

    /// [`TableSchemas::validate`], keeping the reasons of the first `max_errors` rejected
    /// lines only (the others are counted), so that a flood of bad lines cannot
    /// build a reply larger than the request.
    pub fn validate_capped<'a>(
        &self,
        points: Vec<(usize, Point<'a>)>,
        max_errors: usize,
    ) -> ValidatedWrite {
        self.validate_as(points, max_errors, false)
    }

    /// [`TableSchemas::validate`] for the engine's own rollup tables: their names
    /// are reserved to it, and they are not counted against the table and column
    /// limits (they follow the tables they roll up, which are).
    pub fn validate_rollups<'a>(&self, points: Vec<(usize, Point<'a>)>) -> ValidatedWrite {
        self.validate_as(points, usize::MAX, true)
    }

    fn validate_as<'a>(
        &self,
        points: Vec<(usize, Point<'a>)>,
        max_errors: usize,
        rollups: bool,
    ) -> ValidatedWrite {
        let mut out = ValidatedWrite::default();
        // A client may not write into (or create) a rollup table; the engine
        // writes nothing else through this path.
        let (points, misnamed): (Vec<_>, Vec<_>) = points
            .into_iter()
            .partition(|(_, p)| is_rollup_table(&p.table) == rollups);
        for (line, p) in misnamed {
            out.reject(max_errors, line, || {
                if rollups {
                    format!("'{}' is not a rollup table", p.table)
                } else {
                    format!(
                        "table names starting with {} are reserved for rollups",
                        ROLLUP_PREFIXES
                            .iter()
                            .find(|x| p.table.starts_with(*x))
                            .copied()
                            .unwrap_or("rollup_")
                    )
                }
            });
        }
        let (misnamed_shown, misnamed_count) = (out.rejected.len(), out.rejected_count);
        // Per point, the index of its field kinds in `kinds` (None: rejected).
        let mut checked: Vec<Option<usize>> = Vec::with_capacity(points.len());
        let mut kinds: Vec<Vec<ColumnKind>> = Vec::new();
        let mut needs_write = false;
        {
            let schemas = self.schemas.read();
            // Per table, the last accepted point and its kinds: a point naming
            // the same columns with the same types checks the same, and
            // comparing a few names is cheaper than a lookup for each (remote
            // write sends the same label names for every sample of a metric).
            let mut last_ok: FastMap<&str, (usize, usize)> = FastMap::default();
            for (n, (line, p)) in points.iter().enumerate() {
                if let Some(&(prev, k)) = last_ok.get(p.table.as_ref()) {
                    if same_columns(&points[prev].1, p) {
                        checked.push(Some(k));
                        continue;
                    }
                }
                match check_point(schemas.get(p.table.as_ref()), p) {
                    Check::Ok(k) => {
                        kinds.push(k);
                        checked.push(Some(kinds.len() - 1));
                        last_ok.insert(p.table.as_ref(), (n, kinds.len() - 1));
                    }
                    Check::NeedsNewColumns => {
                        needs_write = true;
                        break;
                    }
                    Check::Rejected(reason) => {
                        out.reject(max_errors, *line, || reason);
                        checked.push(None);
                    }
                }
            }
        }
        if needs_write {
            checked.clear();
            kinds.clear();
            // Start over, keeping only the rejections of misnamed tables.
            out.rejected.truncate(misnamed_shown);
            out.rejected_count = misnamed_count;
            let mut schemas = self.schemas.write();
            for (line, p) in &points {
                if p.table.is_empty() {
                    out.reject(max_errors, *line, || "measurement name is empty".into());
                    checked.push(None);
                    continue;
                }
                let existing = schemas.get(p.table.as_ref());
                match check_point(existing, p) {
                    Check::Ok(k) => {
                        kinds.push(k);
                        checked.push(Some(kinds.len() - 1));
                    }
                    Check::Rejected(reason) => {
                        out.reject(max_errors, *line, || reason);
                        checked.push(None);
                    }
                    Check::NeedsNewColumns => {
                        if existing.is_none()
                            && !rollups
                            && schemas.keys().filter(|t| !is_rollup_table(t)).count()
                                >= self.max_tables
                        {
                            out.reject(max_errors, *line, || {
                                format!(
                                    "table '{}' would exceed the limit of {} tables (storage.max_tables)",
                                    p.table, self.max_tables
                                )
                            });
                            checked.push(None);
                            continue;
                        }
                        let have = existing.map_or(0, |s| s.column_count());
                        let new = p
                            .tags
                            .iter()
                            .map(|(k, _)| k)
                            .chain(p.fields.iter().map(|(k, _)| k))
                            .filter(|k| existing.and_then(|s| s.column(k)).is_none())
                            .count();
                        if !rollups && have + new > self.max_columns_per_table {
                            out.reject(max_errors, *line, || {
                                format!(
                                    "table '{}' would have {} columns, over the limit of {} (storage.max_columns_per_table)",
                                    p.table,
                                    have + new,
                                    self.max_columns_per_table
                                )
                            });
                            checked.push(None);
                            continue;
                        }
                        let s = schemas.entry(p.table.to_string()).or_default();
                        let mut point_kinds = Vec::with_capacity(p.fields.len());
                        for (k, _) in &p.tags {
                            if s.column(k).is_none() {
                                s.add_column(k, ColumnKind::Tag);
                            }
                        }
                        for (k, v) in &p.fields {
                            let kind = ColumnKind::Field(FieldType::of(v));
                            if s.column(k).is_none() {
                                s.add_column(k, kind);
                            }
                            point_kinds.push(kind);
                        }
                        kinds.push(point_kinds);
                        checked.push(Some(kinds.len() - 1));
                    }
                }
            }
        }
        // Per table: finished batches, the batch being built, and its row count.
        struct TableBuild {
            name: String,
            done: Vec<BatchBuilder>,
            current: BatchBuilder,
            rows: usize,
        }
        let mut builders: Vec<TableBuild> = Vec::new();
        let mut index: FastMap<&str, usize> = FastMap::default();
        // Rows per table, so that each batch's columns are allocated once at
        // their size.
        let mut rows_of: FastMap<&str, usize> = FastMap::default();
        for ((_, p), k) in points.iter().zip(&checked) {
            if k.is_some() {
                *rows_of.entry(p.table.as_ref()).or_default() += 1;
            }
        }
        for ((line, p), k) in points.iter().zip(&checked) {
            let Some(k) = *k else { continue };
            let kinds = &kinds[k];
            let i = match index.get(p.table.as_ref()) {
                Some(i) => *i,
                None => {
                    let rows = rows_of
                        .get(p.table.as_ref())
                        .copied()
                        .unwrap_or(0)
                        .min(crate::buffer::MAX_ROWS_PER_WRITE);
                    builders.push(TableBuild {
                        name: p.table.to_string(),
                        done: Vec::new(),
                        current: BatchBuilder::with_capacity(rows),
                        rows: 0,
                    });
                    index.insert(p.table.as_ref(), builders.len() - 1);
                    builders.len() - 1
                }
            };
            let t = &mut builders[i];
            if t.rows >= crate::buffer::MAX_ROWS_PER_WRITE {
                out.reject(max_errors, *line, || {
                    format!(
                        "more than {} rows for table '{}' in one request",
                        crate::buffer::MAX_ROWS_PER_WRITE,
                        p.table
                    )
                });
                continue;
            }
            if !t.current.append(p, kinds) {
                // A split happens on sparse data, whose batches stay small: the
                // next is sized like this one, not for all the rows left.
                let left = rows_of.get(p.table.as_ref()).copied().unwrap_or(0) - t.rows;
                let size = left.min(t.current.rows().max(1024));
                let full = std::mem::replace(&mut t.current, BatchBuilder::with_capacity(size));
                t.done.push(full);
                let appended = t.current.append(p, kinds);
                debug_assert!(appended, "an empty batch takes any point");
            }
            t.rows += 1;
            out.accepted += 1;
        }
        let previous: Vec<Option<SchemaRef>> = {
            let cache = self.batch_schemas.lock();
            builders
                .iter()
                .map(|t| cache.get(&t.name).cloned())
                .collect()
        };
        let mut learned: Vec<(usize, SchemaRef)> = Vec::new();
        for (n, t) in builders.into_iter().enumerate() {
            for b in t.done.into_iter().chain(std::iter::once(t.current)) {
                if b.rows() == 0 {
                    continue;
                }
                match b.finish_reusing(previous[n].as_ref()) {
                    Ok(batch) => {
                        if !previous[n]
                            .as_ref()
                            .is_some_and(|p| Arc::ptr_eq(p, batch.schema_ref()))
                        {
                            learned.push((out.tables.len(), batch.schema()));
                        }
                        out.tables.push((t.name.clone(), batch));
                    }
                    // Validated points always build; should one not, the whole
                    // write fails rather than acknowledging lines it dropped.
                    Err(e) => {
                        out.tables.clear();
                        out.rejected_count += out.accepted;
                        out.accepted = 0;
                        out.rejected.push(LineError {
                            line: 0,
                            reason: format!("could not build batch for table '{}': {e}", t.name),
                        });
                        return out;
                    }
                }
            }
        }
        if !learned.is_empty() {
            let mut cache = self.batch_schemas.lock();
            // Bounded by the tables there are; tables come and go rarely, so
            // starting over now and then costs only fresh schemas.
            if cache.len() > 2 * self.max_tables.max(1024) {
                cache.clear();
            }
            for (i, schema) in learned {
                cache.insert(out.tables[i].0.clone(), schema);
            }
        }
        out.rejected.sort_by_key(|e| e.line);
        out
    }
}

/// Infers a column kind from an Arrow type written by [`BatchBuilder`].
fn kind_of(name: &str, dt: &DataType) -> Option<ColumnKind> {
    Some(match dt {
        _ if name == TIME_COLUMN => ColumnKind::Time,
        DataType::Dictionary(..) => ColumnKind::Tag,
        DataType::Float64 => ColumnKind::Field(FieldType::Float),
        DataType::Int64 => ColumnKind::Field(FieldType::Integer),
        DataType::UInt64 => ColumnKind::Field(FieldType::UInteger),
        DataType::Boolean => ColumnKind::Field(FieldType::Boolean),
        DataType::Utf8 => ColumnKind::Field(FieldType::String),
        _ => return None,
    })
}

enum Check {
    Ok(Vec<ColumnKind>),
    NeedsNewColumns,
    Rejected(String),
}

fn reserved(key: &str, what: &str) -> String {
    if key == TIME_COLUMN {
        format!("{what} key '{key}' is reserved: every table has a '{TIME_COLUMN}' column")
    } else {
        format!(
            "{what} key '{key}' is reserved: names starting with '__' are vigil's internal columns"
        )
    }
}

/// Whether two points of one table name the same tags and the same fields of
/// the same types, in the same order (then they check the same).
fn same_columns(a: &Point<'_>, b: &Point<'_>) -> bool {
    a.tags.len() == b.tags.len()
        && a.fields.len() == b.fields.len()
        && a.tags.iter().zip(&b.tags).all(|(x, y)| x.0 == y.0)
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|(x, y)| x.0 == y.0 && FieldType::of(&x.1) == FieldType::of(&y.1))
}

/// Checks one point against a table schema. With `schema` = None the table is new.
/// Keys given twice in one point (two tags, two fields, or a tag and a field of one
/// name) are rejected by the parsers, which every input goes through; should one
/// reach here, the batch builder keeps the first value.
fn check_point(schema: Option<&TableSchema>, p: &Point<'_>) -> Check {
    let mut new_cols = false;
    for (k, _) in &p.tags {
        if k == TIME_COLUMN || k.starts_with("__") {
            return Check::Rejected(reserved(k, "tag"));
        }
        match schema.and_then(|s| s.column(k)) {
            Some(ColumnKind::Tag) => {}
            Some(ColumnKind::Field(t)) => {
                return Check::Rejected(format!(
                    "tag '{k}' conflicts with existing {} field '{k}' in table '{}'",
                    t.name(),
                    p.table
                ))
            }
            Some(ColumnKind::Time) => unreachable!(),
            None => new_cols = true,
        }
    }
    let mut kinds = Vec::with_capacity(p.fields.len());
    for (k, v) in &p.fields {
        if k == TIME_COLUMN || k.starts_with("__") {
            return Check::Rejected(reserved(k, "field"));
        }
        let t = FieldType::of(v);
        match schema.and_then(|s| s.column(k)) {
            Some(ColumnKind::Field(existing)) if existing == t => {}
            Some(ColumnKind::Field(existing)) => {
                return Check::Rejected(format!(
                    "field '{k}' of table '{}' is {}, got {}",
                    p.table,
                    existing.name(),
                    t.name()
                ))
            }
            Some(ColumnKind::Tag) => {
                return Check::Rejected(format!(
                    "field '{k}' conflicts with existing tag '{k}' in table '{}'",
                    p.table
                ))
            }
            Some(ColumnKind::Time) => unreachable!(),
            None => new_cols = true,
        }
        kinds.push(ColumnKind::Field(t));
    }
    if new_cols {
        Check::NeedsNewColumns
    } else {
        Check::Ok(kinds)
    }
}
/// The schemas (in SQL) and storage-name prefixes of the rollup tables: the
/// 10-minute rollup of table `cpu` is stored as `rollup_10m.cpu` and queried as
/// `rollup_10m.cpu`.
pub const ROLLUP_PREFIXES: [&str; 2] = ["rollup_10m.", "rollup_1h."];

/// Whether `table` is one of the engine's rollup tables.
pub fn is_rollup_table(table: &str) -> bool {
    ROLLUP_PREFIXES.iter().any(|p| table.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use vigil_model::FieldValue;

    fn schemas() -> TableSchemas {
        TableSchemas::new(&BTreeMap::new(), 100, 100_000)
    }

    /// Builders are sized from the rows of the write: a sparse write (every line
    /// with a field of its own, which splits into many batches) must not give
    /// each batch room for all the rows left, and a small write must not cost
    /// Arrow's default 1,024 values per column.
    #[test]
    fn batches_are_sized_by_their_rows() {
        let n = 20_000;
        let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
        let points = names
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let p = Point {
                    table: Cow::Borrowed("sparse"),
                    tags: vec![(Cow::Borrowed("host"), Cow::Borrowed("a"))],
                    fields: vec![(Cow::Borrowed(f.as_str()), FieldValue::F64(1.0))],
                    time: i as i64,
                };
                (i + 1, p)
            })
            .collect();
        let w = schemas().validate_capped(points, 10);
        assert_eq!(w.accepted, n);
        assert!(w.tables.len() > 10, "a sparse write splits");
        let bytes: usize = w
            .tables
            .iter()
            .map(|(_, b)| b.get_array_memory_size())
            .sum();
        // Each value is a few bytes of data and validity; 64 MB would mean the
        // capacity of every split batch grew with the rows left.
        assert!(bytes < 64 << 20, "{bytes} bytes for {n} sparse rows");

        let small: Vec<(usize, Point<'_>)> = (0..25)
            .map(|i| {
                let p = Point {
                    table: Cow::Borrowed("small"),
                    tags: vec![(Cow::Borrowed("host"), Cow::Owned(format!("h{i}")))],
                    fields: vec![(Cow::Borrowed("value"), FieldValue::F64(1.0))],
                    time: i,
                };
                (i as usize + 1, p)
            })
            .collect();
        let w = schemas().validate_capped(small, 10);
        let bytes = w.tables[0].1.get_array_memory_size();
        assert!(bytes < 8 << 10, "{bytes} bytes for 25 rows");
    }
}
