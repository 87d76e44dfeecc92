//! Persisting buffered data: sorted, deduplicated Parquet files, one per table and UTC day.

use std::collections::BTreeSet;

use arrow::array::{Array, BooleanArray, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::parquet_store::ParquetStore;
use crate::schema::TIME_COLUMN;

pub const NANOS_PER_DAY: i64 = 86_400_000_000_000;

fn time_column(batch: &RecordBatch) -> Result<&TimestampNanosecondArray> {
    batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| {
            Error::arrow(
                "reading time column",
                arrow::error::ArrowError::SchemaError("no nanosecond time column".into()),
            )
        })
}

/// Min and max of the time column.
/// The time of each row, if the batch has a time column.
pub(crate) fn time_values(batch: &RecordBatch) -> Option<&[i64]> {
    time_column(batch).ok().map(|t| t.values().as_ref())
}

pub fn time_range(batch: &RecordBatch) -> Result<(i64, i64)> {
    let t = time_column(batch)?;
    let min = arrow::compute::min(t).unwrap_or(0);
    let max = arrow::compute::max(t).unwrap_or(0);
    Ok((min, max))
}

/// Splits a batch by UTC day of `time`, keeping row order within each part.
pub fn split_by_day(batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>> {
    let t = time_column(batch)?;
    let days: BTreeSet<i64> = t
        .values()
        .iter()
        .map(|v| v.div_euclid(NANOS_PER_DAY))
        .collect();
    if days.len() <= 1 {
        return Ok(days.into_iter().map(|d| (d, batch.clone())).collect());
    }
    days.into_iter()
        .map(|d| {
            let mask: BooleanArray = t
                .values()
                .iter()
                .map(|v| Some(v.div_euclid(NANOS_PER_DAY) == d))
                .collect();
            filter_record_batch(batch, &mask)
                .map(|b| (d, b))
                .map_err(|e| Error::arrow("splitting batch by day", e))
        })
        .collect()
}

/// The largest decimal scale tried for float columns.
const MAX_DECIMAL_SCALE: i32 = 9;

/// The smallest scale `s` at which every value of `values` is exactly
/// `m / 10^s` for an integer `m` below 2^53, or `None`.
///
/// Most metrics are written with a few decimals (`usage=12.345`). Stored as
/// scaled integers, consecutive values of a series differ by small integers that
/// delta encoding packs into a few bits, where the float bit patterns of the same
/// numbers are nearly random. The check uses the very expression Arrow's
/// decimal-to-float cast computes, so reading gives back the identical `f64`
/// (bit for bit; -0.0, NaN and infinities keep the float encoding).
fn decimal_scale(values: &arrow::array::Float64Array) -> Option<i32> {
    let mut scale = 0;
    for v in values.iter().flatten() {
        loop {
            // Exactly what encoding and Arrow's cast back will compute.
            let m = (v * 10f64.powi(scale)).round() as i128;
            if m.abs() < 1 << 53 && (m as f64 / 10f64.powi(scale)).to_bits() == v.to_bits() {
                break;
            }
            scale += 1;
            if scale > MAX_DECIMAL_SCALE {
                return None;
            }
        }
    }
    Some(scale)
}

/// Replaces float columns whose values are all short decimals by
/// `Decimal128(18, scale)` columns (Parquet INT64 + DECIMAL), see
/// [`decimal_scale`]. Readers cast them back to `Float64` losslessly.
pub fn encode_decimal_floats(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{ArrayRef, AsArray, Decimal128Array};
    use arrow::datatypes::{Field, Float64Type};
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.data_type() == &DataType::Float64 {
            let values = c.as_primitive::<Float64Type>();
            if let Some(scale) = decimal_scale(values) {
                let mul = 10f64.powi(scale);
                let d: Decimal128Array = values
                    .unary::<_, arrow::datatypes::Decimal128Type>(|v| (v * mul).round() as i128)
                    .with_precision_and_scale(18, scale as i8)
                    .map_err(|e| Error::arrow(format!("encoding column {}", f.name()), e))?;
                fields.push(Field::new(f.name(), d.data_type().clone(), f.is_nullable()));
                columns.push(std::sync::Arc::new(d));
                continue;
            }
        }
        fields.push(f.as_ref().clone());
        columns.push(std::sync::Arc::clone(c));
    }
    RecordBatch::try_new(
        std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
    .map_err(|e| Error::arrow("encoding float columns as decimals", e))
}

/// Writer settings that suit time series: zstd everywhere, dictionary for tags, delta
/// for timestamps and integers, byte-stream-split for floats, page statistics so
/// queries can prune, and the sort order recorded.
pub fn writer_properties(schema: &Schema, tags: &[String]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by("vigil".to_string());
    let mut sorting = Vec::new();
    for t in tags {
        if let Ok(i) = schema.index_of(t) {
            sorting.push(SortingColumn {
                column_idx: i as i32,
                descending: false,
                nulls_first: true,
            });
        }
    }
    if let Ok(i) = schema.index_of(TIME_COLUMN) {
        sorting.push(SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: true,
        });
    }
    b = b.set_sorting_columns(Some(sorting));
    for f in schema.fields() {
        let col = ColumnPath::from(f.name().as_str());
        b = match f.data_type() {
            DataType::Timestamp(..)
            | DataType::Int64
            | DataType::UInt64
            | DataType::Decimal128(..) => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED),
            DataType::Float64 => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT),
            _ => b,
        };
    }
    b.build()
}

/// Writes `batch` as the Parquet file `path` of `store` (durable once this
/// returns), returns the file size.
pub fn write_parquet(
    store: &ParquetStore,
    path: &str,
    batch: &RecordBatch,
    tags: &[String],
) -> Result<u64> {
    let batch = &encode_decimal_floats(batch)?;
    let props = writer_properties(&batch.schema(), tags);
    let mut w = store.create(path, batch.schema(), props)?;
    if let Err(e) = w.write(batch) {
        w.abandon();
        return Err(e);
    }
    w.finish()
}

#[cfg(test)]
mod decimal_tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array};
    use arrow::compute::cast;
    use std::sync::Arc;

    fn roundtrip(values: Vec<Option<f64>>) -> (DataType, Vec<Option<u64>>) {
        let a: ArrayRef = Arc::new(Float64Array::from(values));
        let batch = RecordBatch::try_from_iter([("v", a)]).unwrap();
        let enc = encode_decimal_floats(&batch).unwrap();
        let back = cast(enc.column(0), &DataType::Float64).unwrap();
        let back = back.as_any().downcast_ref::<Float64Array>().unwrap();
        (
            enc.column(0).data_type().clone(),
            back.iter().map(|v| v.map(f64::to_bits)).collect(),
        )
    }

    #[test]
    fn short_decimals_become_exact_scaled_integers() {
        let vals = vec![
            Some(12.345),
            None,
            Some(0.1),
            Some(-7.0),
            Some(99.999),
            Some(0.0),
        ];
        let (t, back) = roundtrip(vals.clone());
        assert_eq!(t, DataType::Decimal128(18, 3));
        assert_eq!(
            back,
            vals.iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn values_that_would_change_keep_the_float_encoding() {
        for v in [f64::NAN, f64::INFINITY, -0.0, 1.0 / 3.0, 1e300, 0.1 + 0.2] {
            let (t, back) = roundtrip(vec![Some(1.5), Some(v)]);
            assert_eq!(t, DataType::Float64, "{v}");
            assert_eq!(back[1], Some(v.to_bits()));
        }
    }

    #[test]
    fn random_short_decimals_roundtrip_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for scale in 0..=6 {
            let vals: Vec<Option<f64>> = (0..10_000)
                .map(|_| {
                    let m: i64 = rng.gen_range(-10_000_000_000..10_000_000_000);
                    Some(format!("{}e-{scale}", m).parse::<f64>().unwrap())
                })
                .collect();
            let (t, back) = roundtrip(vals.clone());
            assert!(
                matches!(t, DataType::Decimal128(18, s) if s as i32 <= scale),
                "{t}"
            );
            assert_eq!(
                back,
                vals.iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>()
            );
        }
    }
}
