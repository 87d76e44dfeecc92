//! Sort by (tags, time) and keep the last write of each (series, time).

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::kernels::partition::partition;
use arrow::compute::{concat_batches, lexsort_to_indices, take, take_record_batch, SortColumn};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::schema::{SEQ_COLUMN, TIME_COLUMN};

/// Sorts `batches` (all of `schema`, which ends with the `__seq` column) by tags then
/// time then sequence, and keeps the row with the highest sequence of each
/// (tags, time). Returns the batch without the sequence column.
pub fn sort_dedupe(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    tags: &[String],
) -> arrow::error::Result<RecordBatch> {
    let all = concat_batches(schema, batches)?;
    let seq_idx = schema.index_of(SEQ_COLUMN)?;
    if all.num_rows() == 0 {
        let mut b = all;
        b.remove_column(seq_idx);
        return Ok(b);
    }
    let mut key_names: Vec<&str> = tags.iter().map(String::as_str).collect();
    key_names.push(TIME_COLUMN);
    let key_cols: Vec<ArrayRef> = key_names
        .iter()
        .map(|n| all.column_by_name(n).cloned())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("missing key column".into()))?;
    let mut sort_cols: Vec<SortColumn> = key_cols
        .iter()
        .map(|c| SortColumn {
            values: Arc::clone(c),
            options: None,
        })
        .collect();
    sort_cols.push(SortColumn {
        values: Arc::clone(all.column(seq_idx)),
        options: None,
    });
    let order = lexsort_to_indices(&sort_cols, None)?;
    let sorted_keys: Vec<ArrayRef> = key_cols
        .iter()
        .map(|c| take(c.as_ref(), &order, None))
        .collect::<Result<_, _>>()?;
    let ranges = partition(&sorted_keys)?.ranges();
    let keep: UInt32Array = ranges
        .iter()
        .map(|r| order.value(r.end - 1))
        .collect::<Vec<u32>>()
        .into();
    let mut out = take_record_batch(&all, &keep)?;
    out.remove_column(seq_idx);
    Ok(out)
}

/// Orders the tag columns for sorting a file: most distinct values first, so that
/// a series' rows (usually identified by its highest-cardinality tag, such as a
/// host name) are contiguous and row-group and page statistics can prune a query
/// for one series down to a page. Tags that depend on that tag (region, rack...)
/// stay constant within its runs and still compress to almost nothing.
///
/// Counted exactly over all of `batches` (the dictionary keys each batch uses),
/// not on a sample: a backfill written host by host has only a few hosts in its
/// first rows, and rows sampled at a fixed stride can all fall on one host of
/// interleaved writes. Either way a tag such as the data centre would tie with the
/// host name and win on name order, and page statistics could then no longer find
/// one host (measured: a one-host query decoded every page). Ties keep name order.
pub fn sort_key_order(batches: &[RecordBatch], tags: &[String]) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;
    let mut counted: Vec<(usize, &String)> = tags
        .iter()
        .map(|tag| {
            let mut seen = std::collections::HashSet::new();
            for b in batches {
                let Some(dict) = b
                    .column_by_name(tag)
                    .and_then(|c| c.as_dictionary_opt::<Int32Type>())
                else {
                    continue;
                };
                let values = dict.values().as_string::<i32>();
                let mut used = vec![false; values.len()];
                for k in dict.keys().iter().flatten() {
                    // Keys of a valid dictionary array index its values.
                    if let Some(u) = used.get_mut(k as usize) {
                        *u = true;
                    }
                }
                for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
                    if values.is_valid(i) {
                        seen.insert(values.value(i));
                    }
                }
            }
            (seen.len(), tag)
        })
        .collect();
    counted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    counted.into_iter().map(|(_, t)| t.clone()).collect()
}

/// The series keys (tag values in `tags` order) of the first and last row of a
/// batch sorted by `tags`; `None` for an empty batch.
pub fn series_key_range(
    batch: &RecordBatch,
    tags: &[String],
) -> Option<(crate::catalog::SeriesKey, crate::catalog::SeriesKey)> {
    if batch.num_rows() == 0 {
        return None;
    }
    capped_key_range(
        series_key(batch, tags, 0)?,
        series_key(batch, tags, batch.num_rows() - 1)?,
    )
}

/// The series key (tag values in `tags` order) of one row.
pub fn series_key(
    batch: &RecordBatch,
    tags: &[String],
    row: usize,
) -> Option<crate::catalog::SeriesKey> {
    tags.iter()
        .map(|t| match batch.column_by_name(t) {
            None => Some(None),
            Some(c) if c.is_null(row) => Some(None),
            Some(c) => {
                let one = arrow::compute::cast(&c.slice(row, 1), &arrow::datatypes::DataType::Utf8)
                    .ok()?;
                use arrow::array::AsArray;
                Some(Some(one.as_string::<i32>().value(0).to_string()))
            }
        })
        .collect()
}

/// The range as the catalog keeps it, or `None` when it is too big to keep.
pub fn capped_key_range(
    first: crate::catalog::SeriesKey,
    last: crate::catalog::SeriesKey,
) -> Option<(crate::catalog::SeriesKey, crate::catalog::SeriesKey)> {
    // The range is kept in the catalog, rewritten at every flush: series keys of
    // huge tag values are not worth their bytes there (no range = overlaps all).
    let bytes: usize = first
        .iter()
        .chain(&last)
        .map(|v| v.as_ref().map_or(0, String::len))
        .sum();
    (bytes <= MAX_KEY_RANGE_BYTES).then_some((first, last))
}

/// Largest series-key range (both ends' tag values) recorded for a file.
const MAX_KEY_RANGE_BYTES: usize = 1024;

/// Tag column names of an Arrow schema produced by [`crate::TableSchema`].
pub fn tag_columns(schema: &crate::TableSchema) -> Vec<String> {
    schema.tags().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Float64Array, StringDictionaryBuilder, TimestampNanosecondArray, UInt64Array,
    };
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};

    fn batch(hosts: &[&str], times: &[i64], vals: &[f64], seq: u64) -> RecordBatch {
        let mut h = StringDictionaryBuilder::<Int32Type>::new();
        for x in hosts {
            h.append_value(x);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", crate::schema::tag_data_type(), true),
            Field::new("v", DataType::Float64, true),
            Field::new("time", crate::schema::time_data_type(), false),
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(h.finish()),
                Arc::new(Float64Array::from(vals.to_vec())),
                Arc::new(TimestampNanosecondArray::from(times.to_vec()).with_timezone("UTC")),
                Arc::new(UInt64Array::from_value(seq, hosts.len())),
            ],
        )
        .unwrap()
    }

    /// A backfill written host by host: the first 65,536 rows hold one host of
    /// one data centre, the whole flush 20 hosts in 2 data centres. The host
    /// name still leads the key.
    #[test]
    fn sort_key_is_ranked_on_rows_from_the_whole_flush() {
        let mut batches = Vec::new();
        for h in 0..20 {
            let host = format!("host_{h}");
            let dc = format!("dc_{}", h / 10);
            let n = 70_000;
            let hosts: Vec<&str> = vec![host.as_str(); n];
            let dcs: Vec<i64> = vec![0; n];
            let mut b = batch(&hosts, &dcs, &vec![1.0; n], 1);
            // Rename the second column of the helper's schema to a second tag.
            let mut d = StringDictionaryBuilder::<Int32Type>::new();
            for _ in 0..n {
                d.append_value(&dc);
            }
            let schema = Arc::new(Schema::new(vec![
                Field::new("host", crate::schema::tag_data_type(), true),
                Field::new("dc", crate::schema::tag_data_type(), true),
            ]));
            b = RecordBatch::try_new(schema, vec![b.column(0).clone(), Arc::new(d.finish())])
                .unwrap();
            batches.push(b);
        }
        let order = sort_key_order(&batches, &["dc".to_string(), "host".to_string()]);
        assert_eq!(order, ["host", "dc"]);
    }

    /// Interleaved writes (one row per host per timestamp, hosts in a fixed
    /// order), where rows at a fixed stride can all be one host's.
    #[test]
    fn sort_key_counts_every_row_of_interleaved_writes() {
        let n = 655_360;
        let mut h = StringDictionaryBuilder::<Int32Type>::new();
        let mut d = StringDictionaryBuilder::<Int32Type>::new();
        for i in 0..n {
            h.append_value(format!("host_{}", i % 10));
            d.append_value(format!("dc_{}", i % 10 / 5));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", crate::schema::tag_data_type(), true),
            Field::new("dc", crate::schema::tag_data_type(), true),
        ]));
        let b =
            RecordBatch::try_new(schema, vec![Arc::new(h.finish()), Arc::new(d.finish())]).unwrap();
        let order = sort_key_order(&[b], &["dc".to_string(), "host".to_string()]);
        assert_eq!(order, ["host", "dc"]);
    }

    #[test]
    fn sort_key_puts_the_most_distinct_tag_first() {
        let hosts = batch(&["a", "b", "c", "a"], &[1, 1, 1, 2], &[1.0; 4], 1);
        let order = sort_key_order(&[hosts], &["dc".to_string(), "host".to_string()]);
        assert_eq!(order, ["host", "dc"]);
    }

    #[test]
    fn keeps_last_write_per_series_and_time() {
        let a = batch(&["b", "a", "a"], &[1, 2, 1], &[1.0, 2.0, 3.0], 1);
        let b = batch(&["a", "b"], &[1, 5], &[30.0, 50.0], 2);
        let out = sort_dedupe(&a.schema(), &[a.clone(), b], &["host".to_string()]).unwrap();
        let v = out
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        // a@1 -> 30 (seq 2 wins), a@2 -> 2, b@1 -> 1, b@5 -> 50
        assert_eq!(v.values().to_vec(), vec![30.0, 2.0, 1.0, 50.0]);
        assert_eq!(out.num_columns(), 3);
    }
}
