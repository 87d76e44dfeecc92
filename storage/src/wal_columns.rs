//! The WAL payload as raw column buffers: what a write's batches hold, copied
//! out with a few bytes of framing, and checked by Arrow's validation when read.
//!
//! Arrow IPC was the payload before. A remote-write request names about 80
//! tables of 25 rows each, and IPC wrote for each of them a schema message, a
//! dictionary message per tag column and the batch, each built as a flatbuffer:
//! 14 % of the receive CPU. The columns vigil writes are few (dictionary tags,
//! 64-bit numbers, booleans, strings, the time), so their buffers are written
//! as they are. A payload with any other type is still written as IPC, and
//! both are read ([`crate::wal::decode_payload`] tells them apart by the first
//! four bytes).
//!
//! Layout, little-endian: `u32::MAX | u32 tables`, then per table
//! `str name | u32 rows | u32 columns`, then per column
//! `str name | u8 type | u8 nullable | u8 has_nulls | [validity bits] | data`.
//! `str` is `u32 length | UTF-8 bytes`. Data by type: numbers and times
//! `rows x 8` bytes (a time also has `str timezone`), booleans their bits,
//! strings `u32 bytes | (rows + 1) x i32 offsets | bytes`, tags `u32 values |`
//! the values as strings `| rows x i32 keys`.

use std::sync::Arc;

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, GenericStringArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit, TimestampNanosecondType,
    UInt64Type,
};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// First four bytes of a payload in this layout; an IPC payload starts with its
/// table count, which can never be this high.
pub(crate) const MAGIC: u32 = u32::MAX;

const TAG: u8 = 0;
const F64: u8 = 1;
const I64: u8 = 2;
const U64: u8 = 3;
const BOOL: u8 = 4;
const UTF8: u8 = 5;
const TIME_NS: u8 = 6;

fn type_code(dt: &DataType) -> Option<u8> {
    Some(match dt {
        // Matched, not compared with `tag_data_type()`: that would allocate for
        // every column of every write.
        DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => TAG,
        DataType::Float64 => F64,
        DataType::Int64 => I64,
        DataType::UInt64 => U64,
        DataType::Boolean => BOOL,
        DataType::Utf8 => UTF8,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => TIME_NS,
        _ => return None,
    })
}

/// Whether every column of every batch can be written in this layout: of the
/// types above, without metadata, tags without NULL among their values (the
/// layout keeps NULL tags as NULL keys only), times with a zone or none.
pub(crate) fn supports(tables: &[(String, RecordBatch)]) -> bool {
    tables.iter().all(|(_, b)| {
        b.schema().metadata().is_empty()
            && b.schema().fields().iter().zip(b.columns()).all(|(f, c)| {
                f.metadata().is_empty()
                    && match type_code(f.data_type()) {
                        Some(TAG) => c
                            .as_dictionary_opt::<Int32Type>()
                            .is_some_and(|d| d.values().null_count() == 0),
                        // An empty zone name is written as no zone.
                        Some(TIME_NS) => {
                            !matches!(f.data_type(), DataType::Timestamp(_, Some(tz)) if tz.is_empty())
                        }
                        Some(_) => true,
                        None => false,
                    }
            })
    })
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    // Callers bound sizes far below 4 GiB (a record is at most 1 GiB).
    out.extend_from_slice(&(v as u32).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The bits of `bits` from bit 0, `ceil(len / 8)` bytes.
fn put_bits(out: &mut Vec<u8>, bits: &arrow::buffer::BooleanBuffer) {
    let n = bits.len().div_ceil(8);
    let sliced = bits.sliced();
    let have = sliced.as_slice().get(..n).unwrap_or(sliced.as_slice());
    out.extend_from_slice(have);
    out.resize(out.len() + (n - have.len()), 0);
}

fn put_strings(out: &mut Vec<u8>, a: &GenericStringArray<i32>) {
    let offsets = a.value_offsets();
    let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
    put_u32(out, (last - first) as usize);
    for o in offsets {
        out.extend_from_slice(&(o - first).to_le_bytes());
    }
    out.extend_from_slice(&a.values()[first as usize..last as usize]);
}

fn put_values<T: arrow::datatypes::ArrowPrimitiveType>(
    out: &mut Vec<u8>,
    a: &arrow::array::PrimitiveArray<T>,
) {
    // `values()` is already cut to the array's rows.
    out.extend_from_slice(a.values().inner().as_slice());
}

/// Appends the tables to `out`; the caller checked [`supports`].
pub(crate) fn encode(out: &mut Vec<u8>, tables: &[(String, RecordBatch)]) {
    put_u32(out, MAGIC as usize);
    put_u32(out, tables.len());
    for (name, batch) in tables {
        put_str(out, name);
        put_u32(out, batch.num_rows());
        put_u32(out, batch.num_columns());
        for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
            let code = type_code(field.data_type()).expect("checked by supports()");
            put_str(out, field.name());
            out.push(code);
            out.push(u8::from(field.is_nullable()));
            match col.nulls().filter(|n| n.null_count() > 0) {
                Some(nulls) => {
                    out.push(1);
                    put_bits(out, nulls.inner());
                }
                None => out.push(0),
            }
            match code {
                TAG => {
                    let dict = col.as_dictionary::<Int32Type>();
                    let values = dict.values().as_string::<i32>();
                    put_u32(out, values.len());
                    put_strings(out, values);
                    put_values(out, dict.keys());
                }
                F64 => put_values(out, col.as_primitive::<Float64Type>()),
                I64 => put_values(out, col.as_primitive::<Int64Type>()),
                U64 => put_values(out, col.as_primitive::<UInt64Type>()),
                TIME_NS => {
                    let DataType::Timestamp(_, tz) = field.data_type() else {
                        unreachable!("TIME_NS is a timestamp")
                    };
                    put_str(out, tz.as_deref().unwrap_or(""));
                    put_values(out, col.as_primitive::<TimestampNanosecondType>());
                }
                BOOL => put_bits(out, col.as_boolean().values()),
                _ => put_strings(out, col.as_string::<i32>()),
            }
        }
    }
}

/// A cursor over payload bytes (either layout); every read checks the length
/// first and names what it was reading.
pub(crate) struct Reader<'a> {
    pub(crate) p: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.p.len() < n {
            return Err(format!(
                "payload truncated in {what}: need {n} bytes, have {}",
                self.p.len()
            ));
        }
        let (a, b) = self.p.split_at(n);
        self.p = b;
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(
            b.try_into().expect("take(8) is 8 bytes"),
        ))
    }

    pub(crate) fn str(&mut self, what: &str) -> Result<&'a str, String> {
        let n = self.u32(what)?;
        std::str::from_utf8(self.take(n, what)?).map_err(|e| format!("{what} is not UTF-8: {e}"))
    }

    /// `n` items of `width` bytes; the product is checked against what is left
    /// before anything is allocated.
    fn items(&mut self, n: usize, width: usize, what: &str) -> Result<Buffer, String> {
        let bytes = n
            .checked_mul(width)
            .ok_or_else(|| format!("{what}: {n} items overflow"))?;
        Ok(Buffer::from_slice_ref(self.take(bytes, what)?))
    }

    fn strings(&mut self, n: usize, what: &str) -> Result<ArrayData, String> {
        let data_len = self.u32(what)?;
        let offsets = self.items(n.checked_add(1).ok_or("overflow")?, 4, what)?;
        let data = self.items(data_len, 1, what)?;
        ArrayData::builder(DataType::Utf8)
            .len(n)
            .add_buffer(offsets)
            .add_buffer(data)
            .build()
            .map_err(|e| format!("{what}: {e}"))
    }
}

/// Reads a payload written by [`encode`] (after its magic number).
pub(crate) fn decode(p: &[u8]) -> Result<Vec<(String, RecordBatch)>, String> {
    let mut r = Reader { p };
    let count = r.u32("table count")?;
    let mut out = Vec::new();
    for _ in 0..count {
        let table = r.str("table name")?.to_string();
        let rows = r.u32("row count")?;
        let columns = r.u32("column count")?;
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for _ in 0..columns {
            let name = r.str("column name")?;
            let what = format!("column '{name}' of table '{table}'");
            let (code, nullable, has_nulls) = (r.u8(&what)?, r.u8(&what)?, r.u8(&what)?);
            let nulls = match has_nulls {
                0 => None,
                _ => Some(r.items(rows.div_ceil(8), 1, &what)?),
            };
            let (data_type, buffers, children) = match code {
                TAG => {
                    let n = r.u32(&what)?;
                    let values = r.strings(n, &what)?;
                    let keys = r.items(rows, 4, &what)?;
                    (crate::schema::tag_data_type(), vec![keys], vec![values])
                }
                F64 => (DataType::Float64, vec![r.items(rows, 8, &what)?], vec![]),
                I64 => (DataType::Int64, vec![r.items(rows, 8, &what)?], vec![]),
                U64 => (DataType::UInt64, vec![r.items(rows, 8, &what)?], vec![]),
                TIME_NS => {
                    let tz = r.str(&what)?;
                    let tz = (!tz.is_empty()).then(|| Arc::from(tz));
                    let dt = DataType::Timestamp(TimeUnit::Nanosecond, tz);
                    (dt, vec![r.items(rows, 8, &what)?], vec![])
                }
                BOOL => (
                    DataType::Boolean,
                    vec![r.items(rows.div_ceil(8), 1, &what)?],
                    vec![],
                ),
                UTF8 => {
                    let a = r.strings(rows, &what)?;
                    (DataType::Utf8, a.buffers().to_vec(), vec![])
                }
                other => return Err(format!("{what}: unknown column type {other}")),
            };
            let data = ArrayData::builder(data_type.clone())
                .len(rows)
                .buffers(buffers)
                .child_data(children)
                .null_bit_buffer(nulls)
                .build()
                .map_err(|e| format!("{what}: {e}"))?;
            fields.push(Field::new(name, data_type, nullable != 0));
            arrays.push(arrow::array::make_array(data));
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| format!("table '{table}': {e}"))?;
        out.push((table, batch));
    }
    if !r.p.is_empty() {
        return Err(format!("{} bytes after the last table", r.p.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, StringDictionaryBuilder,
        TimestampNanosecondArray, UInt64Array,
    };

    fn all_types(offset: usize) -> RecordBatch {
        let mut tags = StringDictionaryBuilder::<Int32Type>::new();
        for t in [
            Some("a"),
            None,
            Some("béta"),
            Some("a"),
            Some(""),
            None,
            Some("z"),
        ] {
            match t {
                Some(t) => tags.append_value(t),
                None => tags.append_null(),
            }
        }
        let n = 7;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("host", crate::schema::tag_data_type(), true),
                Field::new("f", DataType::Float64, true),
                Field::new("i", DataType::Int64, true),
                Field::new("u", DataType::UInt64, true),
                Field::new("b", DataType::Boolean, true),
                Field::new("s", DataType::Utf8, true),
                Field::new("time", crate::schema::time_data_type(), false),
            ])),
            vec![
                Arc::new(tags.finish()),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    None,
                    Some(f64::NAN),
                    Some(-0.0),
                    Some(f64::INFINITY),
                    Some(2.0),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(i64::MIN),
                    Some(0),
                    None,
                    Some(i64::MAX),
                    Some(1),
                    Some(2),
                    Some(3),
                ])),
                Arc::new(UInt64Array::from(vec![
                    Some(u64::MAX),
                    None,
                    Some(0),
                    Some(1),
                    Some(2),
                    Some(3),
                    Some(4),
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(true),
                    Some(false),
                    Some(true),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    None,
                    Some(""),
                    Some("long string ✓"),
                    Some("y"),
                    None,
                    Some("z"),
                ])),
                Arc::new(
                    TimestampNanosecondArray::from(
                        (0..n as i64).map(|i| i * 1_000_000_007).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        batch.slice(offset, n - offset)
    }

    fn roundtrip(tables: &[(String, RecordBatch)]) -> Vec<(String, RecordBatch)> {
        assert!(supports(tables));
        let mut out = Vec::new();
        encode(&mut out, tables);
        decode(&out[4..]).unwrap()
    }

    /// Every type vigil writes, with NULLs, NaN and -0, and sliced at offsets
    /// that do and do not fall on a byte of the bitmaps.
    #[test]
    fn every_column_type_roundtrips_sliced_or_not() {
        for offset in [0, 1, 3] {
            let tables = vec![
                ("cpu".to_string(), all_types(offset)),
                ("empty".to_string(), all_types(0).slice(2, 0)),
                ("ünï".to_string(), all_types(offset).slice(1, 2)),
            ];
            let back = roundtrip(&tables);
            assert_eq!(back.len(), 3);
            for ((n, a), (m, b)) in tables.iter().zip(&back) {
                assert_eq!(n, m);
                assert_eq!(a.schema(), b.schema());
                for (x, y) in a.columns().iter().zip(b.columns()) {
                    // NaN != NaN: compared as data, bit for bit.
                    assert_eq!(x.to_data(), y.to_data(), "table {n} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn other_types_are_left_to_ipc() {
        let b =
            RecordBatch::try_from_iter([("n", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef)])
                .unwrap();
        assert!(!supports(&[("t".to_string(), b)]));
        // A tag whose dictionary holds a NULL value (vigil's builders never
        // make one) would read back as "": IPC keeps it.
        let values = StringArray::from(vec![Some("a"), None]);
        let keys = Int32Array::from(vec![0, 1]);
        let dict =
            arrow::array::DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).unwrap();
        let b = RecordBatch::try_from_iter([("host", Arc::new(dict) as ArrayRef)]).unwrap();
        let tables = vec![("t".to_string(), b)];
        assert!(!supports(&tables));
        let t = TimestampNanosecondArray::from(vec![1]).with_timezone("");
        let b = RecordBatch::try_from_iter([("time", Arc::new(t) as ArrayRef)]).unwrap();
        assert!(!supports(&[("t".to_string(), b)]));
        let payload = crate::wal::encode_payload(&tables).unwrap();
        assert_ne!(&payload[..4], &MAGIC.to_le_bytes());
        assert_eq!(crate::wal::decode_payload(&payload).unwrap(), tables);
    }

    /// Damage (a flipped byte, a cut) is an error or a batch Arrow has
    /// validated, never a panic, an overrun or an allocation the bytes do not
    /// hold. (The record's checksum catches damage before this in the WAL.)
    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let tables = vec![
            ("cpu".to_string(), all_types(0)),
            ("mem".to_string(), all_types(1)),
        ];
        let mut good = Vec::new();
        encode(&mut good, &tables);
        let body = &good[4..];
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bad = body.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] = next() as u8;
            }
            if let Ok(decoded) = decode(&bad) {
                for (_, b) in decoded {
                    for c in b.columns() {
                        c.to_data().validate_full().unwrap();
                    }
                }
            }
        }
    }
}
