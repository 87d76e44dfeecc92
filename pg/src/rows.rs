//! Result rows for the common column types, encoded a record batch at a time.
//!
//! arrow-pg encodes value by value through pgwire's `DataRowEncoder`: a downcast,
//! a type and an options clone per value, a buffer per row, and for a timestamp
//! with a time zone a parse of the zone's name per value. Here each column is
//! downcast once per batch, and the batch is written into one buffer (values
//! through pgwire's own `ToSql`/`ToSqlText`, or byte for byte what they write) and
//! cut into `DataRow`s that share it. Columns of other types are written value
//! by value by arrow-pg's encoder into the same rows.

use std::str::FromStr;

use bytes::{BufMut, BytesMut};
use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use datafusion::arrow::temporal_conversions::{as_datetime, date32_to_datetime};
use datafusion_postgres::arrow_pg::encoder::{encode_value, Encoder};
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
    /// Any other type, value by value through arrow-pg's encoder.
    Other(&'a ArrayRef, &'a Field),
}

struct Column<'a> {
    values: Values<'a>,
    nulls: Option<&'a NullBuffer>,
    text: bool,
    /// Dates and times in text as PostgreSQL writes them with `DateStyle` ISO
    /// (its default, and what every client here asks for); other styles go
    /// through pgwire.
    iso: bool,
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

/// The rows of `batch`, or `None` when its columns do not match `fields`.
pub(crate) fn encode_batch(
    batch: &RecordBatch,
    fields: &[FieldInfo],
) -> Option<PgWireResult<EncodedRows>> {
    if batch.num_columns() != fields.len() || batch.num_columns() > i16::MAX as usize {
        return None;
    }
    let schema = batch.schema_ref();
    let columns = batch
        .columns()
        .iter()
        .zip(fields)
        .zip(schema.fields().iter())
        .map(|((array, field), arrow_field)| {
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
                    match zone.as_deref().map(Tz::from_str) {
                        None => Values::Timestamp(values, *unit),
                        Some(Ok(zone)) => Values::TimestampTz(values, *unit, zone),
                        // A zone arrow cannot read: arrow-pg reports it.
                        Some(Err(_)) => Values::Other(array, arrow_field),
                    }
                }
                _ => Values::Other(array, arrow_field),
            };
            let nulls = match values {
                // arrow-pg writes the NULLs of the types it encodes itself.
                Values::Other(..) => None,
                _ => array.nulls().filter(|n| n.null_count() > 0),
            };
            Some(Column {
                values,
                nulls,
                text: field.format() == FieldFormat::Text,
                iso: iso_date_style(&field.format_options().date_style),
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
            if let Values::Other(array, arrow_field) = &column.values {
                let mut value = ValueWriter { buf: &mut buf };
                encode_value(&mut value, array, row, arrow_field, column.field)?;
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
                Values::Boolean(a) => value(&a.value(row), column.field, &mut buf)?,
                Values::Date32(v) => {
                    let date = date32_to_datetime(v[row]).map(|d| d.date());
                    match date {
                        Some(date) if column.text && column.iso => {
                            iso_date(date, &mut buf);
                            IsNull::No
                        }
                        _ => value(&date, column.field, &mut buf)?,
                    }
                }
                Values::Timestamp(v, unit) => match naive(v[row], *unit) {
                    Some(t) if column.text && column.iso => {
                        iso_timestamp(t, None, &mut buf);
                        IsNull::No
                    }
                    t => value(&t, column.field, &mut buf)?,
                },
                Values::TimestampTz(v, unit, zone) => {
                    let zoned = naive(v[row], *unit)
                        .map(|n| Utc.from_utc_datetime(&n).with_timezone(zone).fixed_offset());
                    // Local time can be past chrono's range where UTC is not
                    // (its last day at a positive offset): pgwire writes those.
                    let local = zoned.and_then(|t| {
                        let offset = t.offset().local_minus_utc();
                        let local = t
                            .naive_utc()
                            .checked_add_signed(TimeDelta::seconds(offset.into()))?;
                        Some((local, offset))
                    });
                    match (zoned, local) {
                        (Some(_), Some((local, offset))) if column.text && column.iso => {
                            iso_timestamp(local, Some(offset), &mut buf);
                            IsNull::No
                        }
                        (t, _) => value(&t, column.field, &mut buf)?,
                    }
                }
                Values::Other(..) => continue,
            };
            end_value(&mut buf, at, written);
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

/// arrow-pg's encoder writing one value, length first, into the row being built
/// (as pgwire's `DataRowEncoder` writes it).
struct ValueWriter<'b> {
    buf: &'b mut BytesMut,
}

impl Encoder for ValueWriter<'_> {
    type Item = ();

    fn encode_field<T>(&mut self, value: &T, field: &FieldInfo) -> PgWireResult<()>
    where
        T: ToSql + ToSqlText + Sized,
    {
        let at = self.buf.len();
        self.buf.put_i32(0);
        let written = self::value(value, field, self.buf)?;
        end_value(self.buf, at, written);
        Ok(())
    }

    fn take_row(&mut self) {}
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

/// A float in text as PostgreSQL writes it. pgwire wrote `inf` (which JDBC's
/// `Double.parseDouble` refuses), `1.0` for 1, `0` for -0 and `1e300` where
/// PostgreSQL writes `Infinity`, `1`, `-0` and `1e+300`. With
/// `extra_float_digits` at 1 or more (PostgreSQL's default, so what psql, pgx
/// and psycopg get) the shortest digits that read back exactly, from ryu;
/// fewer digits, asked for with a lower setting, come rounded from pgwire.
fn float<T>(v: T, column: &Column<'_>, buf: &mut BytesMut) -> PgWireResult<IsNull>
where
    T: ryu::Float + num_traits::Float + ToSql + ToSqlText,
{
    if v.is_nan() {
        buf.put_slice(b"NaN");
    } else if v.is_infinite() {
        buf.put_slice(if v.is_sign_negative() {
            b"-Infinity"
        } else {
            b"Infinity"
        });
    } else if v.is_zero() {
        buf.put_slice(if v.is_sign_negative() { b"-0" } else { b"0" });
    } else if column.field.format_options().extra_float_digits < 1 {
        return value(&v, column.field, buf);
    } else {
        // PostgreSQL switches to exponents as printf's %g does at its
        // precision: 15 digits for float8, 6 for float4.
        let fixed_below = if std::mem::size_of::<T>() == 8 { 15 } else { 6 };
        shortest_as_postgres(ryu::Buffer::new().format_finite(v), fixed_below, buf);
    }
    Ok(IsNull::No)
}

/// Rewrites ryu's shortest form (`-1.5e-5`, `123.45`, `1e300`, `100.0`) the way
/// PostgreSQL lays out the same digits: fixed notation for decimal exponents from
/// -4 up to `fixed_below`, without a trailing `.0`; otherwise one digit, the
/// rest after a point, and a signed exponent of at least two digits.
fn shortest_as_postgres(ryu: &str, fixed_below: i32, buf: &mut BytesMut) {
    let (negative, ryu) = match ryu.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, ryu),
    };
    let (mantissa, exponent) = match ryu.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (ryu, 0),
    };
    let point = mantissa.find('.').unwrap_or(mantissa.len()) as i32;
    // ryu writes at most 24 bytes; the digits stay on the stack.
    let mut all = [0u8; 32];
    let mut count = 0;
    for b in mantissa.bytes().filter(|b| *b != b'.').take(all.len()) {
        all[count] = b;
        count += 1;
    }
    let all = &all[..count];
    let leading = all.iter().take_while(|b| **b == b'0').count();
    let digits = &all[leading..];
    let digits = &digits[..digits.len() - digits.iter().rev().take_while(|b| **b == b'0').count()];
    if digits.is_empty() {
        buf.put_u8(b'0');
        return;
    }
    let sci = exponent + point - 1 - leading as i32;
    if negative {
        buf.put_u8(b'-');
    }
    let len = digits.len() as i32;
    if (-4..fixed_below).contains(&sci) {
        if sci < 0 {
            buf.put_slice(b"0.");
            for _ in 0..(-sci - 1) {
                buf.put_u8(b'0');
            }
            buf.put_slice(digits);
        } else if len <= sci + 1 {
            buf.put_slice(digits);
            for _ in 0..(sci + 1 - len) {
                buf.put_u8(b'0');
            }
        } else {
            let (int, frac) = digits.split_at(sci as usize + 1);
            buf.put_slice(int);
            buf.put_u8(b'.');
            buf.put_slice(frac);
        }
    } else {
        buf.put_u8(digits[0]);
        if len > 1 {
            buf.put_u8(b'.');
            buf.put_slice(&digits[1..]);
        }
        buf.put_u8(b'e');
        buf.put_u8(if sci < 0 { b'-' } else { b'+' });
        write_padded(sci.unsigned_abs(), 2, buf);
    }
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
    field: &FieldInfo,
    buf: &mut BytesMut,
) -> PgWireResult<IsNull> {
    if field.format() == FieldFormat::Text {
        v.to_sql_text(field.datatype(), buf, field.format_options())
    } else {
        v.to_sql(field.datatype(), buf)
    }
    .map_err(PgWireError::ApiError)
}

/// Fills in the length written ahead of a value at `at`: the value's, or -1
/// for NULL.
fn end_value(buf: &mut BytesMut, at: usize, written: IsNull) {
    let len = match written {
        IsNull::No => (buf.len() - at - 4) as i32,
        IsNull::Yes => -1,
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Whether a `DateStyle` setting is ISO, read as pgwire reads it (an unknown
/// style is ISO).
fn iso_date_style(setting: &str) -> bool {
    let style = setting.split_once(", ").map_or(setting, |(style, _)| style);
    !matches!(
        style.trim().to_ascii_lowercase().as_str(),
        "sql" | "german" | "postgres"
    )
}

/// A date as PostgreSQL writes it in ISO style: the year with at least four
/// digits, and ` BC` after a year before 1 (pgwire wrote chrono's `%Y`: `+10000`,
/// `-0043`).
fn iso_date(date: NaiveDate, buf: &mut BytesMut) {
    let (year, bc) = era_year(date.year());
    write_padded(year, 4, buf);
    buf.put_u8(b'-');
    write_padded(date.month(), 2, buf);
    buf.put_u8(b'-');
    write_padded(date.day(), 2, buf);
    if bc {
        buf.put_slice(b" BC");
    }
}

/// A timestamp as PostgreSQL writes it in ISO style: fractional seconds only
/// when there are some, without trailing zeros; the offset as `+HH`, with
/// `:MM` (and `:SS`) only when not whole (pgwire wrote six zeros for a whole
/// second and `+05` for India's `+05:30`).
fn iso_timestamp(t: NaiveDateTime, offset_seconds: Option<i32>, buf: &mut BytesMut) {
    let (year, bc) = era_year(t.year());
    write_padded(year, 4, buf);
    buf.put_u8(b'-');
    write_padded(t.month(), 2, buf);
    buf.put_u8(b'-');
    write_padded(t.day(), 2, buf);
    buf.put_u8(b' ');
    write_padded(t.hour(), 2, buf);
    buf.put_u8(b':');
    write_padded(t.minute(), 2, buf);
    buf.put_u8(b':');
    // A leap second (nanoseconds past 1e9) is written as second 60.
    let nanos = t.nanosecond();
    write_padded(t.second() + nanos / 1_000_000_000, 2, buf);
    let mut micros = (nanos % 1_000_000_000) / 1_000;
    if micros > 0 {
        let mut digits = 6;
        while micros.is_multiple_of(10) {
            micros /= 10;
            digits -= 1;
        }
        buf.put_u8(b'.');
        write_padded(micros, digits, buf);
    }
    if let Some(offset) = offset_seconds {
        buf.put_u8(if offset < 0 { b'-' } else { b'+' });
        let offset = offset.unsigned_abs();
        write_padded(offset / 3600, 2, buf);
        let (minutes, seconds) = ((offset % 3600) / 60, offset % 60);
        if minutes != 0 || seconds != 0 {
            buf.put_u8(b':');
            write_padded(minutes, 2, buf);
        }
        if seconds != 0 {
            buf.put_u8(b':');
            write_padded(seconds, 2, buf);
        }
    }
    if bc {
        buf.put_slice(b" BC");
    }
}

/// A year as PostgreSQL counts it: no year 0, 1 BC before 1 AD.
fn era_year(year: i32) -> (u32, bool) {
    if year <= 0 {
        ((1 - year as i64) as u32, true)
    } else {
        (year as u32, false)
    }
}

/// `n` in decimal with at least `width` digits.
fn write_padded(n: u32, width: usize, buf: &mut BytesMut) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    for _ in digits.len()..width {
        buf.put_u8(b'0');
    }
    buf.put_slice(digits.as_bytes());
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

    /// The same bytes as arrow-pg's encoder, in text and in binary, nulls included
    /// (with floats both write alike; where they differ, the test below).
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
                    Some(12.75),
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
                    Some(0.0025),
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
            let (ours, theirs) = ours_and_arrow_pgs(&narrow, &fields);
            assert_eq!(ours, theirs, "{format:?}");
        }
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).unwrap());
            let (ours, theirs) = ours_and_arrow_pgs(&batch, &fields);
            assert_eq!(ours, theirs, "{format:?}");
        }
    }

    /// Floats in text as PostgreSQL 15 writes them (checked with psql against a
    /// real server), and the rounded form a lower `extra_float_digits` asks for
    /// as pgwire writes it.
    #[test]
    fn floats_are_the_text_postgres_writes() {
        use datafusion::arrow::array::Float32Array;
        let cases: [(f64, &str); 18] = [
            (1.0, "1"),
            (-0.0, "-0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (123.45, "123.45"),
            (1.5e-5, "1.5e-05"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.1, "0.1"),
            (100.0, "100"),
            (123_456_789_012_345.6, "123456789012345.6"),
            (-2.5e-7, "-2.5e-07"),
        ];
        let floats: [(f32, &str); 9] = [
            (1e5, "100000"),
            (1e6, "1e+06"),
            (123_456.0, "123456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5, "1.5"),
            (f32::INFINITY, "Infinity"),
            (-0.0, "-0"),
            (f32::MAX, "3.4028235e+38"),
        ];
        let column = |array: ArrayRef| RecordBatch::try_from_iter([("v", array)]).unwrap();
        let batch = column(Arc::new(Float64Array::from(
            cases.iter().map(|c| c.0).collect::<Vec<_>>(),
        )));
        let want: Vec<_> = cases.iter().map(|c| vec![Some(c.1.to_owned())]).collect();
        assert_eq!(text_rows(&batch), want);

        let batch = column(Arc::new(Float32Array::from(
            floats.iter().map(|c| c.0).collect::<Vec<_>>(),
        )));
        let want: Vec<_> = floats.iter().map(|c| vec![Some(c.1.to_owned())]).collect();
        assert_eq!(text_rows(&batch), want);
        let schema = batch.schema();

        // Fewer digits: pgwire's rounding, PostgreSQL's special values.
        for digits in [0, -4] {
            let mut options = FormatOptions::default();
            options.extra_float_digits = digits;
            let fields = Arc::new(
                arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, Some(Arc::new(options)))
                    .unwrap(),
            );
            let (ours, theirs) = ours_and_arrow_pgs(&batch, &fields);
            let finite = |rows: &[DataRow]| -> Vec<Vec<Option<String>>> {
                rows.iter()
                    .zip(&floats)
                    .filter(|(_, c)| c.0.is_finite() && c.0 != 0.0)
                    .map(|(r, _)| text_values(r))
                    .collect()
            };
            assert_eq!(
                finite(&ours),
                finite(&theirs),
                "extra_float_digits {digits}"
            );
            assert_eq!(text_values(&ours[6])[0].as_deref(), Some("Infinity"));
        }
    }

    /// Booleans, dates and timestamps (with and without a zone, every unit): in
    /// binary the bytes arrow-pg makes, in text what PostgreSQL writes; nulls and
    /// out-of-range values included.
    #[test]
    fn times_and_booleans_are_written_as_postgres_writes_them() {
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
        let binary =
            Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedBinary, None).unwrap());
        let (ours, theirs) = ours_and_arrow_pgs(&batch, &binary);
        assert_eq!(ours, theirs);

        // In text, what PostgreSQL 15 writes (checked with psql against a real
        // server): arrow-pg wrote `.000000` on whole seconds and `+05` for `+05:30`.
        let rows = text_rows(&batch);
        let want = [
            [
                Some("t"),
                Some("1970-01-01"),
                Some("2023-11-14 22:13:20.123456+00"),
                None,
                Some("2023-11-15 03:43:20.123+05:30"),
                Some("2023-11-14 17:13:20-05"),
            ],
            [
                Some("f"),
                None,
                None,
                Some("2023-11-14 22:13:20.123456"),
                Some("1970-01-01 05:30:00+05:30"),
                None,
            ],
            [
                None,
                Some("2024-10-04"),
                Some("1969-12-31 23:59:59.999999+00"),
                Some("1970-01-01 00:00:00"),
                None,
                // Beyond chrono's range: NULL, as arrow-pg sends it.
                None,
            ],
        ];
        let want: Vec<Vec<Option<String>>> = want
            .iter()
            .map(|row| row.iter().map(|v| v.map(str::to_owned)).collect())
            .collect();
        assert_eq!(rows, want);
    }

    /// Years past 9999 and before 1 AD, and offsets with minutes and seconds, as
    /// PostgreSQL writes them.
    #[test]
    fn dates_and_times_at_the_edges_read_as_postgres_writes_them() {
        let at = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut buf = BytesMut::new();
        iso_date(at(10000, 1, 1), &mut buf);
        buf.put_u8(b'|');
        iso_date(at(-43, 3, 15), &mut buf);
        buf.put_u8(b'|');
        iso_date(at(1, 1, 1), &mut buf);
        buf.put_u8(b'|');
        iso_timestamp(
            at(-43, 3, 15).and_hms_opt(0, 0, 0).unwrap(),
            Some(0),
            &mut buf,
        );
        buf.put_u8(b'|');
        let monrovia = at(1959, 12, 31).and_hms_micro_opt(23, 15, 30, 10).unwrap();
        iso_timestamp(monrovia, Some(-(44 * 60 + 30)), &mut buf);
        buf.put_u8(b'|');
        let st_johns = at(2023, 11, 14).and_hms_opt(18, 43, 20).unwrap();
        iso_timestamp(st_johns, Some(-(3 * 3600 + 30 * 60)), &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "10000-01-01|0044-03-15 BC|0001-01-01|0044-03-15 00:00:00+00 BC\
             |1959-12-31 23:15:30.00001-00:44:30|2023-11-14 18:43:20-03:30"
        );
        assert!(iso_date_style("ISO, MDY") && iso_date_style("iso") && iso_date_style("odd"));
        assert!(!iso_date_style("SQL, DMY") && !iso_date_style("Postgres"));
    }

    /// A column of a type arrow-pg encodes (here a decimal) next to ones vigil
    /// encodes: the decimal as arrow-pg writes it, the timestamp still as
    /// PostgreSQL does. A zoned time whose local time is past chrono's range is
    /// written as pgwire writes it, without a panic.
    #[test]
    fn other_types_are_encoded_by_arrow_pg_beside_the_rest() {
        use datafusion::arrow::array::{Decimal128Array, TimestampSecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Second, Some("+05:30".into())),
                true,
            ),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(
                    TimestampSecondArray::from(vec![
                        Some(1_700_000_000),
                        None,
                        Some(8_210_266_876_799),
                    ])
                    .with_timezone("+05:30"),
                ),
                Arc::new(
                    Decimal128Array::from(vec![Some(150), Some(-1), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let binary =
            Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedBinary, None).unwrap());
        let (ours, theirs) = ours_and_arrow_pgs(&batch, &binary);
        assert_eq!(ours, theirs);

        let text =
            Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None).unwrap());
        let ours = text_rows(&batch);
        let theirs: Vec<Vec<Option<String>>> = encode_recordbatch(Arc::clone(&text), batch.clone())
            .map(|row| text_values(&row.unwrap()))
            .collect();
        assert_eq!(ours[0][0].as_deref(), Some("2023-11-15 03:43:20+05:30"));
        assert_eq!(ours[1][0], None);
        // The last second chrono knows, at +05:30: pgwire's text.
        assert_eq!(ours[2][0], theirs[2][0]);
        assert!(ours[2][0].is_some());
        let decimals: Vec<_> = ours.iter().map(|r| r[1].clone()).collect();
        let want: Vec<_> = theirs.iter().map(|r| r[1].clone()).collect();
        assert_eq!(decimals, want);
        assert_eq!(decimals[0].as_deref(), Some("1.50"));
    }

    /// The rows of `batch` from vigil's encoder and from arrow-pg's.
    fn ours_and_arrow_pgs(
        batch: &RecordBatch,
        fields: &Arc<Vec<FieldInfo>>,
    ) -> (Vec<DataRow>, Vec<DataRow>) {
        let ours = encode_batch(batch, fields).unwrap().unwrap().collect();
        let theirs = encode_recordbatch(Arc::clone(fields), batch.clone())
            .collect::<PgWireResult<_>>()
            .unwrap();
        (ours, theirs)
    }

    /// The rows vigil writes for `batch` in text, as values.
    fn text_rows(batch: &RecordBatch) -> Vec<Vec<Option<String>>> {
        let fields = Arc::new(
            arrow_schema_to_pg_fields(batch.schema_ref(), &Format::UnifiedText, None).unwrap(),
        );
        encode_batch(batch, &fields)
            .unwrap()
            .unwrap()
            .map(|row| text_values(&row))
            .collect()
    }

    /// A text row's values.
    fn text_values(row: &DataRow) -> Vec<Option<String>> {
        let mut data = &row.data[..];
        (0..row.field_count)
            .map(|_| {
                let len = i32::from_be_bytes(data[..4].try_into().unwrap());
                data = &data[4..];
                (len >= 0).then(|| {
                    let (value, rest) = data.split_at(len as usize);
                    data = rest;
                    String::from_utf8(value.to_vec()).unwrap()
                })
            })
            .collect()
    }
}
