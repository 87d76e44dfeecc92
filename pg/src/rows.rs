//! Result rows for the common column types, encoded a record batch at a time.
//!
//! arrow-pg encodes value by value through pgwire's `DataRowEncoder`: a downcast,
//! a type and an options clone per value and a buffer per row. Here a batch of
//! integer, float and text columns is written into one buffer (values in text
//! through pgwire's own `ToSqlText`, so the text is the same; in binary as
//! Postgres lays out int2/int4/int8/float4/float8/text) and cut into `DataRow`s
//! that share it. Other types go through arrow-pg.

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
};
use datafusion_postgres::pgwire::api::results::{FieldFormat, FieldInfo};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::ToSqlText;

/// The rows of `batch`, or `None` when a column has a type this encoder leaves to
/// arrow-pg.
pub(crate) fn encode_batch(
    batch: &RecordBatch,
    fields: &[FieldInfo],
) -> Option<PgWireResult<Vec<DataRow>>> {
    if batch.num_columns() != fields.len() || batch.num_columns() > i16::MAX as usize {
        return None;
    }
    let supported = batch.columns().iter().all(|c| {
        matches!(
            c.data_type(),
            DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        )
    });
    if !supported {
        return None;
    }
    Some(encode(batch, fields))
}

fn encode(batch: &RecordBatch, fields: &[FieldInfo]) -> PgWireResult<Vec<DataRow>> {
    let rows = batch.num_rows();
    let columns = batch.num_columns();
    let mut buf = BytesMut::with_capacity(rows * (columns * 16));
    let mut ends = Vec::with_capacity(rows);
    let text: Vec<bool> = fields
        .iter()
        .map(|f| f.format() == FieldFormat::Text)
        .collect();
    for row in 0..rows {
        for (c, column) in batch.columns().iter().enumerate() {
            if column.is_null(row) {
                buf.put_i32(-1);
                continue;
            }
            let at = buf.len();
            buf.put_i32(0);
            let field = &fields[c];
            match column.data_type() {
                DataType::Int16 => {
                    let v = column.as_primitive::<Int16Type>().value(row);
                    if text[c] {
                        as_text(v, field, &mut buf)?
                    } else {
                        buf.put_i16(v)
                    }
                }
                DataType::Int32 => {
                    let v = column.as_primitive::<Int32Type>().value(row);
                    if text[c] {
                        as_text(v, field, &mut buf)?
                    } else {
                        buf.put_i32(v)
                    }
                }
                DataType::Int64 => {
                    let v = column.as_primitive::<Int64Type>().value(row);
                    if text[c] {
                        as_text(v, field, &mut buf)?
                    } else {
                        buf.put_i64(v)
                    }
                }
                DataType::Float32 => {
                    let v = column.as_primitive::<Float32Type>().value(row);
                    if text[c] {
                        as_text(v, field, &mut buf)?
                    } else {
                        buf.put_f32(v)
                    }
                }
                DataType::Float64 => {
                    let v = column.as_primitive::<Float64Type>().value(row);
                    if text[c] {
                        as_text(v, field, &mut buf)?
                    } else {
                        buf.put_f64(v)
                    }
                }
                // Text is its UTF-8 bytes in both formats.
                DataType::Utf8 => buf.put_slice(column.as_string::<i32>().value(row).as_bytes()),
                DataType::LargeUtf8 => {
                    buf.put_slice(column.as_string::<i64>().value(row).as_bytes())
                }
                DataType::Utf8View => buf.put_slice(column.as_string_view().value(row).as_bytes()),
                other => {
                    return Err(PgWireError::ApiError(
                        format!("no row encoding for {other}").into(),
                    ))
                }
            }
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        ends.push(buf.len());
    }
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    for end in ends {
        out.push(DataRow::new(buf.split_to(end - start), columns as i16));
        start = end;
    }
    Ok(out)
}

/// A value in Postgres's text format, as pgwire writes it.
fn as_text<T: ToSqlText>(v: T, field: &FieldInfo, buf: &mut BytesMut) -> PgWireResult<()> {
    v.to_sql_text(field.datatype(), buf, field.format_options())
        .map(|_| ())
        .map_err(PgWireError::ApiError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
    use datafusion_postgres::pgwire::api::portal::Format;

    /// The same bytes as arrow-pg's encoder, in text and in binary, nulls included.
    #[test]
    fn rows_are_the_bytes_arrow_pg_makes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Float64, true),
            Field::new("host", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(-42),
                    Some(i64::MAX),
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(0.5),
                    Some(f64::NAN),
                    None,
                    Some(1e300),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("host_1"),
                    Some(""),
                    Some("é"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let narrow_schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int16, true),
            Field::new("b", DataType::Int32, true),
            Field::new("c", DataType::Float32, true),
            Field::new("d", DataType::LargeUtf8, true),
            Field::new("e", DataType::Utf8View, true),
        ]));
        let narrow = RecordBatch::try_new(
            Arc::clone(&narrow_schema),
            vec![
                Arc::new(datafusion::arrow::array::Int16Array::from(vec![
                    Some(-7),
                    None,
                ])),
                Arc::new(datafusion::arrow::array::Int32Array::from(vec![
                    None,
                    Some(70_000),
                ])),
                Arc::new(datafusion::arrow::array::Float32Array::from(vec![
                    Some(1.25),
                    Some(f32::INFINITY),
                ])),
                Arc::new(datafusion::arrow::array::LargeStringArray::from(vec![
                    Some("x"),
                    None,
                ])),
                Arc::new(datafusion::arrow::array::StringViewArray::from(vec![
                    None,
                    Some("a longer string than twelve bytes"),
                ])),
            ],
        )
        .unwrap();
        // Text and binary column by column, as a portal may ask.
        let mixed = Format::Individual(vec![0, 1, 0, 1, 0]);
        for format in [Format::UnifiedText, Format::UnifiedBinary, mixed] {
            let fields =
                Arc::new(arrow_schema_to_pg_fields(&narrow_schema, &format, None).unwrap());
            let ours = encode_batch(&narrow, &fields).unwrap().unwrap();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), narrow.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "{format:?}");
        }
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).unwrap());
            let ours = encode_batch(&batch, &fields).unwrap().unwrap();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), batch.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "{format:?}");
        }
    }
}
