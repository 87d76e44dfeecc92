//! Persisting buffered data: sorted, deduplicated Parquet files, one per table and UTC day.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, BooleanArray, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
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

/// Writer settings that suit time series: zstd everywhere, dictionary for tags, delta
/// for timestamps and integers, byte-stream-split for floats, page statistics so
/// queries can prune, and the sort order recorded.
pub fn writer_properties(batch: &RecordBatch, tags: &[String]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by("vigil".to_string());
    let schema = batch.schema();
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
            DataType::Timestamp(..) | DataType::Int64 | DataType::UInt64 => b
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

/// Writes `batch` to `path` (through a temporary file and rename, then fsync), returns
/// the file size.
pub fn write_parquet(path: &Path, batch: &RecordBatch, tags: &[String]) -> Result<u64> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let props = writer_properties(batch, tags);
    let perr = |e| Error::Parquet {
        path: tmp.clone(),
        source: e,
    };
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(perr)?;
    w.write(batch).map_err(perr)?;
    let file = w.into_inner().map_err(perr)?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    let size = file.metadata().map_err(|e| Error::io(&tmp, e))?.len();
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        crate::wal::sync_dir(dir)?;
    }
    Ok(size)
}

/// Reads a whole Parquet file (used by compaction).
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let perr = |e| Error::Parquet {
        path: path.to_path_buf(),
        source: e,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(perr)?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(perr)?;
    reader
        .map(|b| b.map_err(|e| Error::arrow(format!("reading {}", path.display()), e)))
        .collect()
}
