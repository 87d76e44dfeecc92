//! Result rows for the common column types, encoded a record batch at a time.
//!
//! arrow-pg encodes value by value through pgwire's `DataRowEncoder`: a downcast,
//! a type and an options clone per value, a buffer per row, and for a timestamp
//! with a time zone a parse of the zone's name per value. Here each column is
//! downcast once per batch, and the batch is written into one buffer (values
//! through pgwire's own `ToSql`/`ToSqlText`, or byte for byte what they write) and
//! cut into `DataRow`s that share it. Other types go through arrow-pg.

use std::str::FromStr;

use bytes::{BufMut, BytesMut};
use chrono::{NaiveDateTime, TimeZone, Utc};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use datafusion::arrow::temporal_conversions::{as_datetime, date32_to_datetime};
use datafusion_postgres::pgwire::api::results::{FieldFormat, FieldInfo};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql};

/// One column's values, downcast once for the whole batch.
enum Values<'a> {
    Int16(&'a [i16]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Float32(&'a [f32]),
    Float64(&'a [f64]),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Boolean(&'a BooleanArray),
    Date32(&'a [i32]),
    Timestamp(&'a [i64], TimeUnit),
    /// arrow-pg sends a zoned timestamp as a `DateTime` at the zone's offset.
    TimestampTz(&'a [i64], TimeUnit, Tz),
}

struct Column<'a> {
    values: Values<'a>,
    nulls: Option<&'a NullBuffer>,
    text: bool,
    field: &'a FieldInfo,
}

/// A record batch's rows, written into one buffer and cut into `DataRow`s as
/// they are sent (a `Vec` of 8,192 `DataRow`s made up front was a fifth of the
/// encoding time, in writes to fresh memory).
pub(crate) struct EncodedRows {
    buf: BytesMut,
    /// Where each row ends, relative to the row before it.
    lens: std::vec::IntoIter<u32>,
    columns: i16,
}

impl Iterator for EncodedRows {
    type Item = DataRow;

    fn next(&mut self) -> Option<DataRow> {
        let len = self.lens.next()?;
        Some(DataRow::new(self.buf.split_to(len as usize), self.columns))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.lens.size_hint()
    }
}

impl ExactSizeIterator for EncodedRows {}

/// The rows of `batch`, or `None` when a column has a type this encoder leaves to
/// arrow-pg.
pub(crate) fn encode_batch(
    batch: &RecordBatch,
    fields: &[FieldInfo],
) -> Option<PgWireResult<EncodedRows>> {
    if batch.num_columns() != fields.len() || batch.num_columns() > i16::MAX as usize {
        return None;
    }
    let columns = batch
        .columns()
        .iter()
        .zip(fields)
        .map(|(array, field)| {
            let values = match array.data_type() {
                DataType::Int16 => Values::Int16(array.as_primitive::<Int16Type>().values()),
                DataType::Int32 => Values::Int32(array.as_primitive::<Int32Type>().values()),
                DataType::Int64 => Values::Int64(array.as_primitive::<Int64Type>().values()),
                DataType::Float32 => Values::Float32(array.as_primitive::<Float32Type>().values()),
                DataType::Float64 => Values::Float64(array.as_primitive::<Float64Type>().values()),
                DataType::Utf8 => Values::Utf8(array.as_string::<i32>()),
                DataType::LargeUtf8 => Values::LargeUtf8(array.as_string::<i64>()),
                DataType::Utf8View => Values::Utf8View(array.as_string_view()),
                DataType::Boolean => Values::Boolean(array.as_boolean()),
                DataType::Date32 => Values::Date32(array.as_primitive::<Date32Type>().values()),
                DataType::Timestamp(unit, zone) => {
                    let values = match unit {
                        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
                        TimeUnit::Millisecond => {
                            array.as_primitive::<TimestampMillisecondType>().values()
                        }
                        TimeUnit::Microsecond => {
                            array.as_primitive::<TimestampMicrosecondType>().values()
                        }
                        TimeUnit::Nanosecond => {
                            array.as_primitive::<TimestampNanosecondType>().values()
                        }
                    };
                    match zone {
                        None => Values::Timestamp(values, *unit),
                        // A zone arrow cannot read: arrow-pg reports it.
                        Some(zone) => Values::TimestampTz(values, *unit, Tz::from_str(zone).ok()?),
                    }
                }
                _ => return None,
            };
            Some(Column {
                values,
                nulls: array.nulls().filter(|n| n.null_count() > 0),
                text: field.format() == FieldFormat::Text,
                field,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(encode(batch.num_rows(), &columns))
}

fn encode(rows: usize, columns: &[Column<'_>]) -> PgWireResult<EncodedRows> {
    let mut buf = BytesMut::with_capacity(rows * (2 + columns.len() * 14));
    let mut lens = Vec::with_capacity(rows);
    for row in 0..rows {
        let start = buf.len();
        for column in columns {
            if column.nulls.is_some_and(|n| n.is_null(row)) {
                buf.put_i32(-1);
                continue;
            }
            let at = buf.len();
            buf.put_i32(0);
            let written = match &column.values {
                Values::Int16(v) => integer(v[row], column, &mut buf),
                Values::Int32(v) => integer(v[row], column, &mut buf),
                Values::Int64(v) => integer(v[row], column, &mut buf),
                Values::Float32(v) if !column.text => put(&v[row].to_be_bytes(), &mut buf),
                Values::Float64(v) if !column.text => put(&v[row].to_be_bytes(), &mut buf),
                Values::Float32(v) => float(v[row], column, &mut buf)?,
                Values::Float64(v) => float(v[row], column, &mut buf)?,
                // Text is its UTF-8 bytes in both formats.
                Values::Utf8(a) => put(a.value(row).as_bytes(), &mut buf),
                Values::LargeUtf8(a) => put(a.value(row).as_bytes(), &mut buf),
                Values::Utf8View(a) => put(a.value(row).as_bytes(), &mut buf),
                Values::Boolean(a) => value(&a.value(row), column, &mut buf)?,
                Values::Date32(v) => {
                    let date = date32_to_datetime(v[row]).map(|d| d.date());
                    value(&date, column, &mut buf)?
                }
                Values::Timestamp(v, unit) => value(&naive(v[row], *unit), column, &mut buf)?,
                Values::TimestampTz(v, unit, zone) => {
                    let zoned = naive(v[row], *unit)
                        .map(|n| Utc.from_utc_datetime(&n).with_timezone(zone).fixed_offset());
                    value(&zoned, column, &mut buf)?
                }
            };
            match written {
                IsNull::No => {
                    let len = (buf.len() - at - 4) as i32;
                    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                IsNull::Yes => buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let len = u32::try_from(buf.len() - start).map_err(|_| {
            PgWireError::ApiError("a result row longer than 4 GiB cannot be sent".into())
        })?;
        lens.push(len);
    }
    Ok(EncodedRows {
        buf,
        lens: lens.into_iter(),
        columns: columns.len() as i16,
    })
}

fn put(bytes: &[u8], buf: &mut BytesMut) -> IsNull {
    buf.put_slice(bytes);
    IsNull::No
}

/// An integer in text is its decimal digits (what pgwire's `write!` makes) and
/// in binary its big-endian bytes.
fn integer<T: itoa::Integer + ToBigEndian>(
    v: T,
    column: &Column<'_>,
    buf: &mut BytesMut,
) -> IsNull {
    if column.text {
        buf.put_slice(itoa::Buffer::new().format(v).as_bytes());
    } else {
        v.put_be(buf);
    }
    IsNull::No
}

/// A float in text. With `extra_float_digits` at 1 or more (Postgres's default,
/// so what psql, pgx and psycopg get) pgwire writes ryu's shortest form through a
/// `SmolStr`; here ryu writes it straight into the row. Fewer digits, asked for
/// with a lower setting, go through pgwire.
fn float<T>(v: T, column: &Column<'_>, buf: &mut BytesMut) -> PgWireResult<IsNull>
where
    T: ryu::Float + num_traits::Float + ToSql + ToSqlText,
{
    if column.field.format_options().extra_float_digits < 1 || !v.is_finite() || v.is_zero() {
        return value(&v, column, buf);
    }
    buf.put_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    Ok(IsNull::No)
}

trait ToBigEndian {
    fn put_be(self, buf: &mut BytesMut);
}

impl ToBigEndian for i16 {
    fn put_be(self, buf: &mut BytesMut) {
        buf.put_i16(self)
    }
}

impl ToBigEndian for i32 {
    fn put_be(self, buf: &mut BytesMut) {
        buf.put_i32(self)
    }
}

impl ToBigEndian for i64 {
    fn put_be(self, buf: &mut BytesMut) {
        buf.put_i64(self)
    }
}

/// A value as pgwire writes it in the column's format.
fn value<T: ToSql + ToSqlText>(
    v: &T,
    column: &Column<'_>,
    buf: &mut BytesMut,
) -> PgWireResult<IsNull> {
    let field = column.field;
    if column.text {
        v.to_sql_text(field.datatype(), buf, field.format_options())
    } else {
        v.to_sql(field.datatype(), buf)
    }
    .map_err(PgWireError::ApiError)
}

fn naive(v: i64, unit: TimeUnit) -> Option<NaiveDateTime> {
    match unit {
        TimeUnit::Second => as_datetime::<TimestampSecondType>(v),
        TimeUnit::Millisecond => as_datetime::<TimestampMillisecondType>(v),
        TimeUnit::Microsecond => as_datetime::<TimestampMicrosecondType>(v),
        TimeUnit::Nanosecond => as_datetime::<TimestampNanosecondType>(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
    use datafusion_postgres::pgwire::api::portal::Format;
    use datafusion_postgres::pgwire::types::format::FormatOptions;

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
            let ours: Vec<DataRow> = encode_batch(&narrow, &fields).unwrap().unwrap().collect();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), narrow.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "{format:?}");
        }
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).unwrap());
            let ours: Vec<DataRow> = encode_batch(&batch, &fields).unwrap().unwrap().collect();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), batch.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "{format:?}");
        }
    }

    /// Floats in text as pgwire writes them: shortest form, specials, zeros,
    /// subnormals, and the rounded form a lower `extra_float_digits` asks for.
    #[test]
    fn floats_are_the_text_arrow_pg_makes() {
        use datafusion::arrow::array::Float32Array;
        let values = [
            1.0,
            -0.0,
            0.1,
            1e-7,
            123_456_789.125,
            -2.5e300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::NEG_INFINITY,
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("d", DataType::Float64, false),
            Field::new("f", DataType::Float32, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Float64Array::from(values.to_vec())),
                Arc::new(Float32Array::from(
                    values.iter().map(|v| *v as f32).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        for digits in [3, 1, 0, -4] {
            let mut options = FormatOptions::default();
            options.extra_float_digits = digits;
            let fields = Arc::new(
                arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, Some(Arc::new(options)))
                    .unwrap(),
            );
            let ours: Vec<DataRow> = encode_batch(&batch, &fields).unwrap().unwrap().collect();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), batch.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "extra_float_digits {digits}");
        }
    }

    /// Booleans, dates and timestamps (with and without a zone, every unit) as
    /// arrow-pg writes them, in text and binary, nulls and out-of-range values
    /// included.
    #[test]
    fn times_and_booleans_are_the_bytes_arrow_pg_makes() {
        use datafusion::arrow::array::{
            BooleanArray, Date32Array, TimestampMicrosecondArray, TimestampMillisecondArray,
            TimestampNanosecondArray, TimestampSecondArray,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("ok", DataType::Boolean, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "naive",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new(
                "india",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+05:30".into())),
                true,
            ),
            Field::new(
                "ny",
                DataType::Timestamp(TimeUnit::Second, Some("America/New_York".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(Date32Array::from(vec![Some(0), None, Some(20_000)])),
                Arc::new(
                    TimestampNanosecondArray::from(vec![
                        Some(1_700_000_000_123_456_789),
                        None,
                        Some(-1),
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    None,
                    Some(1_700_000_000_123_456),
                    Some(0),
                ])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), Some(0), None])
                        .with_timezone("+05:30"),
                ),
                Arc::new(
                    TimestampSecondArray::from(vec![Some(1_700_000_000), None, Some(i64::MAX)])
                        .with_timezone("America/New_York"),
                ),
            ],
        )
        .unwrap();
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).unwrap());
            let ours: Vec<DataRow> = encode_batch(&batch, &fields).unwrap().unwrap().collect();
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), batch.clone())
                .collect::<PgWireResult<_>>()
                .unwrap();
            assert_eq!(ours, theirs, "{format:?}");
        }
    }
}
