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
///
/// Tags are dictionary columns whose values repeat across thousands of small
/// batches: comparing them as strings row by row (`lexsort`) was a quarter of a
/// flush. Each tag's distinct values are ranked once instead, and rows are
/// sorted on their ranks packed into one integer with the time and sequence.
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
    let keep = match packed_sort_keys(&all, tags, seq_idx)? {
        Some(mut rows) => {
            rows.sort_unstable();
            // Sorted by sequence last: the last row of each (series, time) is
            // its latest write.
            let mut keep: Vec<u32> = Vec::with_capacity(rows.len());
            for (i, r) in rows.iter().enumerate() {
                match rows.get(i + 1) {
                    Some(next) if next.0 == r.0 && next.1 == r.1 => {}
                    _ => keep.push(r.3),
                }
            }
            UInt32Array::from(keep)
        }
        None => lexsort_keep(&all, tags, seq_idx)?,
    };
    let mut out = take_record_batch(&all, &keep)?;
    out.remove_column(seq_idx);
    Ok(out)
}

/// A row's packed tag ranks, time, sequence and index.
type SortRow = (u128, i64, u64, u32);

/// Per row: the ranks of its tag values packed into one integer (first tag
/// highest, a NULL lowest), its time, its sequence and its index. `None` when
/// the ranks do not fit in 128 bits or a column is not of the types written.
fn packed_sort_keys(
    all: &RecordBatch,
    tags: &[String],
    seq_idx: usize,
) -> arrow::error::Result<Option<Vec<SortRow>>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, TimestampNanosecondType, UInt64Type};
    let n = all.num_rows();
    let (Some(time), Some(seq)) = (
        all.column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
        all.column(seq_idx).as_primitive_opt::<UInt64Type>(),
    ) else {
        return Ok(None);
    };
    if u32::try_from(n).is_err() || time.null_count() > 0 || seq.null_count() > 0 {
        return Ok(None);
    }
    let mut rows: Vec<SortRow> = time
        .values()
        .iter()
        .zip(seq.values())
        .enumerate()
        .map(|(i, (t, s))| (0, *t, *s, i as u32))
        .collect();
    let mut bits_used = 0u32;
    for tag in tags {
        let col = all.column_by_name(tag).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("missing key column {tag}"))
        })?;
        let Some(dict) = col.as_dictionary_opt::<Int32Type>() else {
            return Ok(None);
        };
        let values = dict.values();
        // Ranks start at 1 (ties share one); 0 is kept for NULL.
        let Ok(mut value_rank) = arrow::compute::rank(values.as_ref(), None) else {
            return Ok(None);
        };
        for (i, r) in value_rank.iter_mut().enumerate() {
            if values.is_null(i) {
                *r = 0;
            }
        }
        let bits = u32::BITS - (values.len() as u32).leading_zeros();
        bits_used += bits;
        if bits_used > u128::BITS {
            return Ok(None);
        }
        let dict_keys = dict.keys();
        for (row, r) in rows.iter_mut().enumerate() {
            let rank = if dict_keys.is_valid(row) {
                value_rank
                    .get(dict_keys.value(row) as usize)
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
            r.0 = (r.0 << bits) | u128::from(rank);
        }
    }
    Ok(Some(rows))
}

/// The rows to keep, found by comparing the key columns themselves.
fn lexsort_keep(
    all: &RecordBatch,
    tags: &[String],
    seq_idx: usize,
) -> arrow::error::Result<UInt32Array> {
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
    Ok(ranges
        .iter()
        .map(|r| order.value(r.end - 1))
        .collect::<Vec<u32>>()
        .into())
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

    /// The packed-rank sort and the column-by-column one agree on random
    /// batches: repeated series and times, NULL tags, dictionaries that differ
    /// between batches (and some that repeat a value).
    #[test]
    fn packed_ranks_sort_and_dedupe_as_the_columns_do() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", crate::schema::tag_data_type(), true),
            Field::new("dc", crate::schema::tag_data_type(), true),
            Field::new("v", DataType::Float64, true),
            Field::new("time", crate::schema::time_data_type(), false),
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
        ]));
        for round in 0..20 {
            let mut batches = Vec::new();
            for b in 0..rng.gen_range(1..40) {
                let n = rng.gen_range(0..30);
                let mut h = StringDictionaryBuilder::<Int32Type>::new();
                let mut d = StringDictionaryBuilder::<Int32Type>::new();
                let (mut t, mut v, mut q) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..n {
                    match rng.gen_range(0..12) {
                        0 => h.append_null(),
                        x => h.append_value(format!("h{x}")),
                    }
                    match rng.gen_range(0..4) {
                        0 => d.append_null(),
                        x => d.append_value(["", "a", "ab"][x - 1]),
                    }
                    t.push(rng.gen_range(-3..4i64) * 1_000_000_000);
                    v.push(f64::from(round * 1000 + b * 100 + i));
                    q.push((b as u64) << 24 | i as u64);
                }
                batches.push(
                    RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![
                            Arc::new(h.finish()),
                            Arc::new(d.finish()),
                            Arc::new(Float64Array::from(v)),
                            Arc::new(TimestampNanosecondArray::from(t).with_timezone("UTC")),
                            Arc::new(UInt64Array::from(q)),
                        ],
                    )
                    .unwrap(),
                );
            }
            let tags = ["host".to_string(), "dc".to_string()];
            let all = concat_batches(&schema, &batches).unwrap();
            assert!(packed_sort_keys(&all, &tags, 4).unwrap().is_some());
            let got = sort_dedupe(&schema, &batches, &tags).unwrap();
            let mut want = take_record_batch(&all, &lexsort_keep(&all, &tags, 4).unwrap()).unwrap();
            want.remove_column(4);
            // Compared as plain strings: the dictionaries may differ.
            let cast = |b: &RecordBatch| -> Vec<ArrayRef> {
                b.columns()
                    .iter()
                    .map(|c| match c.data_type() {
                        DataType::Dictionary(..) => {
                            arrow::compute::cast(c, &DataType::Utf8).unwrap()
                        }
                        _ => Arc::clone(c),
                    })
                    .collect()
            };
            assert_eq!(cast(&got), cast(&want), "round {round}");
        }
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
