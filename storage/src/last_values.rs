//! The last-value cache: the latest row of every series of the tables someone asked
//! about, kept in memory and updated by every write as it becomes visible.
//!
//! "Latest" follows the read path's rules: the row with the greatest time wins, and
//! of two rows with the same series and time the later write wins (the whole row,
//! as in deduplication). Rows are kept in small batches of winners copied out of
//! the writes (never slices, which would pin whole write batches in memory).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};

use crate::buffer::normalize;
use crate::schema::TIME_COLUMN;

/// Identifies a series: its non-null tags, sorted by name.
type SeriesKey = Vec<(String, String)>;

#[derive(Debug, Default)]
struct TableLatest {
    /// Batches holding winners; entries point into them.
    batches: Vec<RecordBatch>,
    rows: HashMap<SeriesKey, (i64, usize, usize)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LastValueCache {
    tables: HashMap<String, TableLatest>,
}

fn series_keys(batch: &RecordBatch) -> Vec<SeriesKey> {
    let schema = batch.schema();
    let tags: Vec<(String, &ArrayRef)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| matches!(f.data_type(), DataType::Dictionary(..)))
        .map(|(f, c)| (f.name().clone(), c))
        .collect();
    let mut keys = vec![Vec::with_capacity(tags.len()); batch.num_rows()];
    for (name, col) in &tags {
        let dict = col.as_dictionary::<Int32Type>();
        let values = dict.values().as_string::<i32>();
        for (row, key) in dict.keys().iter().enumerate() {
            if let Some(k) = key {
                keys[row].push((name.clone(), values.value(k as usize).to_string()));
            }
        }
    }
    for k in &mut keys {
        k.sort();
    }
    keys
}

fn times(batch: &RecordBatch) -> Option<Vec<i64>> {
    let t = batch.column_by_name(TIME_COLUMN)?;
    let t = t.as_primitive_opt::<arrow::datatypes::TimestampNanosecondType>()?;
    Some(t.values().to_vec())
}

impl LastValueCache {
    pub fn is_tracked(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// Starts keeping the latest rows of `table`; returns false if it already was.
    pub fn track(&mut self, table: &str) -> bool {
        if self.is_tracked(table) {
            return false;
        }
        self.tables
            .insert(table.to_string(), TableLatest::default());
        true
    }

    pub fn untrack(&mut self, table: &str) {
        self.tables.remove(table);
    }

    /// A write became visible: its rows win over the cache at equal or later time.
    pub fn observe(&mut self, table: &str, batch: &RecordBatch) {
        self.merge(table, batch, true);
    }

    /// Rows read from older data (filling the cache when tracking starts): they win
    /// only at a strictly later time, since the cache holds newer writes.
    pub fn offer(&mut self, table: &str, batch: &RecordBatch) {
        self.merge(table, batch, false);
    }

    fn merge(&mut self, table: &str, batch: &RecordBatch, newer: bool) {
        let Some(t) = self.tables.get_mut(table) else {
            return;
        };
        let Some(times) = times(batch) else {
            return;
        };
        let keys = series_keys(batch);
        // Winners of this batch, in the batch: later rows of one series win ties.
        let mut winners: HashMap<SeriesKey, usize> = HashMap::new();
        for (row, key) in keys.into_iter().enumerate() {
            let beats_cache = match t.rows.get(&key) {
                None => true,
                Some((time, _, _)) => times[row] > *time || (newer && times[row] == *time),
            };
            if !beats_cache {
                continue;
            }
            match winners.get_mut(&key) {
                Some(w) if times[row] >= times[*w] => *w = row,
                Some(_) => {}
                None => {
                    winners.insert(key, row);
                }
            }
        }
        if winners.is_empty() {
            return;
        }
        let mut entries: Vec<(SeriesKey, usize)> = winners.into_iter().collect();
        entries.sort_by_key(|(_, row)| *row);
        let indices = UInt32Array::from_iter_values(entries.iter().map(|(_, r)| *r as u32));
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| take(c, &indices, None).expect("indices are in bounds"))
            .collect();
        let held = RecordBatch::try_new(batch.schema(), columns).expect("same schema");
        let b = t.batches.len();
        t.batches.push(held);
        for (i, (key, row)) in entries.into_iter().enumerate() {
            t.rows.insert(key, (times[row], b, i));
        }
        if t.batches.len() > 64 {
            t.compact();
        }
    }

    /// The latest row of every series of `table`, in the table's current `schema`;
    /// `None` if the table is not tracked.
    pub fn rows(
        &self,
        table: &str,
        schema: &SchemaRef,
    ) -> Option<arrow::error::Result<RecordBatch>> {
        let t = self.tables.get(table)?;
        Some(t.materialize(schema))
    }
}

impl TableLatest {
    fn materialize(&self, schema: &SchemaRef) -> arrow::error::Result<RecordBatch> {
        let normalized = self
            .batches
            .iter()
            .map(|b| normalize(b, schema, None))
            .collect::<arrow::error::Result<Vec<_>>>()?;
        let mut index: Vec<(usize, usize)> = self.rows.values().map(|(_, b, r)| (*b, *r)).collect();
        index.sort_unstable();
        let columns = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    normalized.iter().map(|b| b.column(c).as_ref()).collect();
                if arrays.is_empty() {
                    Ok(arrow::array::new_empty_array(schema.field(c).data_type()))
                } else {
                    interleave(&arrays, &index)
                }
            })
            .collect::<arrow::error::Result<Vec<_>>>()?;
        RecordBatch::try_new(Arc::clone(schema), columns)
    }

    /// Copies the live rows into one batch so replaced rows stop taking memory.
    fn compact(&mut self) {
        let Some(schema) = self.union_schema() else {
            return;
        };
        let Ok(one) = self.materialize(&schema) else {
            return;
        };
        let mut keys: Vec<(SeriesKey, (i64, usize, usize))> = self.rows.drain().collect();
        keys.sort_by_key(|(_, (_, b, r))| (*b, *r));
        for (i, (key, (time, _, _))) in keys.into_iter().enumerate() {
            self.rows.insert(key, (time, 0, i));
        }
        self.batches = vec![one];
    }

    /// All columns of the held batches (the newest batch's schema is a superset:
    /// tables only gain columns).
    fn union_schema(&self) -> Option<SchemaRef> {
        let mut fields: Vec<arrow::datatypes::FieldRef> = Vec::new();
        for b in &self.batches {
            for f in b.schema().fields() {
                if !fields.iter().any(|g| g.name() == f.name()) {
                    fields.push(Arc::clone(f));
                }
            }
        }
        (!fields.is_empty()).then(|| Arc::new(arrow::datatypes::Schema::new(fields)))
    }
}
