//! `time_bucket(interval, time [, origin])`: TimescaleDB's bucketing function.
//!
//! Grafana's PostgreSQL datasource in TimescaleDB mode sends
//! `time_bucket('60s', "time")` with the interval as a *string*, so strings in
//! Grafana's shorthand (`60s`, `5m`, `1h`, `1d`, `1w`) are accepted as well as
//! Postgres intervals (`'5 minutes'`, `interval '1 month'`). Like TimescaleDB, the
//! default origin is Monday 2000-01-03 (so weekly buckets start on Mondays) and
//! 2000-01-01 for month-based intervals.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, TimestampNanosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano, IntervalUnit, TimeUnit};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// 2000-01-03T00:00:00Z, a Monday: TimescaleDB's default origin.
pub(crate) const TIMESCALE_ORIGIN_NS: i64 = 946_857_600_000_000_000;
/// 2000-01-01T00:00:00Z: TimescaleDB's default origin for month intervals.
pub(crate) const TIMESCALE_MONTH_ORIGIN_NS: i64 = 946_684_800_000_000_000;

/// The width of a bucket: a fixed number of nanoseconds, or calendar months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stride {
    Nanos(i64),
    Months(i32),
}

impl Stride {
    /// Reads an interval given as a literal: a string or an SQL interval.
    pub(crate) fn from_scalar(value: &ScalarValue) -> Result<Self> {
        let interval = match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => parse_interval(s)?,
            ScalarValue::IntervalMonthDayNano(Some(i)) => *i,
            ScalarValue::IntervalDayTime(Some(i)) => IntervalMonthDayNano::new(
                0,
                i.days,
                i.milliseconds as i64 * 1_000_000,
            ),
            ScalarValue::IntervalYearMonth(Some(m)) => IntervalMonthDayNano::new(*m, 0, 0),
            other => {
                return plan_err!(
                    "bucket interval must be a constant interval such as '5 minutes' or '1h', got {other}"
                )
            }
        };
        Self::from_interval(interval)
    }

    fn from_interval(i: IntervalMonthDayNano) -> Result<Self> {
        if i.months != 0 {
            if i.days != 0 || i.nanoseconds != 0 {
                return plan_err!("bucket interval cannot mix months with days or time");
            }
            if i.months < 0 {
                return plan_err!("bucket interval must be positive");
            }
            return Ok(Stride::Months(i.months));
        }
        let nanos = (i.days as i64)
            .checked_mul(86_400_000_000_000)
            .and_then(|d| d.checked_add(i.nanoseconds));
        match nanos {
            Some(n) if n > 0 => Ok(Stride::Nanos(n)),
            Some(_) => plan_err!("bucket interval must be positive"),
            None => plan_err!("bucket interval is too large"),
        }
    }
}

/// Parses Grafana's shorthand (`500ms`, `60s`, `5m`, `1h`, `1d`, `1w`, `1y`) or a
/// Postgres interval string (`5 minutes`, `1 month`).
pub(crate) fn parse_interval(s: &str) -> Result<IntervalMonthDayNano> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        if let Ok(n) = t[..digits].parse::<i64>() {
            let unit_ns: Option<i64> = match &t[digits..] {
                "ns" => Some(1),
                "us" | "µs" => Some(1_000),
                "ms" => Some(1_000_000),
                "s" => Some(1_000_000_000),
                "m" => Some(60_000_000_000),
                "h" => Some(3_600_000_000_000),
                "d" => Some(86_400_000_000_000),
                "w" => Some(7 * 86_400_000_000_000),
                _ => None,
            };
            if let Some(unit) = unit_ns {
                return match n.checked_mul(unit) {
                    Some(ns) => Ok(IntervalMonthDayNano::new(0, 0, ns)),
                    None => plan_err!("interval '{s}' is too large"),
                };
            }
            if &t[digits..] == "y" {
                return Ok(IntervalMonthDayNano::new(n as i32 * 12, 0, 0));
            }
        }
    }
    datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano(t).map_err(|e| {
        datafusion::error::DataFusionError::Plan(format!("invalid interval '{s}': {e}"))
    })
}

/// Maps timestamps (ns since the epoch, UTC) to the start of their bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucketer {
    pub(crate) stride: Stride,
    pub(crate) origin: i64,
}

impl Bucketer {
    pub(crate) fn bucket(&self, t: i64) -> Option<i64> {
        match self.stride {
            Stride::Nanos(n) => {
                let offset = (t as i128 - self.origin as i128).div_euclid(n as i128) * n as i128;
                i64::try_from(self.origin as i128 + offset).ok()
            }
            Stride::Months(m) => {
                let k = (month_index(t) - month_index(self.origin)).div_euclid(m as i64) * m as i64;
                // A bucket starts at the origin's day-of-month offset; if t lies before
                // that offset within its month, it belongs to the previous bucket.
                let start = add_months(self.origin, k)?;
                if start > t {
                    add_months(self.origin, k - m as i64)
                } else {
                    Some(start)
                }
            }
        }
    }

    /// The start of the bucket after the one starting at `b`.
    pub(crate) fn next(&self, b: i64) -> Option<i64> {
        match self.stride {
            Stride::Nanos(n) => b.checked_add(n),
            Stride::Months(m) => {
                let k = month_index(b) - month_index(self.origin) + m as i64;
                add_months(self.origin, k)
            }
        }
    }
}

fn month_index(t: i64) -> i64 {
    use chrono::Datelike;
    let dt = chrono::DateTime::from_timestamp_nanos(t);
    dt.year() as i64 * 12 + dt.month0() as i64
}

fn add_months(t: i64, months: i64) -> Option<i64> {
    let dt = chrono::DateTime::from_timestamp_nanos(t);
    let shifted = if months >= 0 {
        dt.checked_add_months(chrono::Months::new(u32::try_from(months).ok()?))
    } else {
        dt.checked_sub_months(chrono::Months::new(u32::try_from(-months).ok()?))
    }?;
    shifted.timestamp_nanos_opt()
}

/// Applies `bucketer` to a timestamp column of any unit; the result is ns with the
/// input's time zone.
pub(crate) fn bucket_array(
    bucketer: &Bucketer,
    times: &ArrayRef,
    tz: Option<Arc<str>>,
) -> Result<ArrayRef> {
    let ns = cast(
        times,
        &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
    )?;
    let ns = ns
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("cast to timestamp(ns)");
    let out: TimestampNanosecondArray = ns
        .iter()
        .map(|t| t.and_then(|t| bucketer.bucket(t)))
        .collect();
    Ok(Arc::new(out.with_timezone_opt(tz)))
}

/// Reads an origin argument (a scalar timestamp or timestamp string) as ns.
pub(crate) fn origin_from_scalar(value: &ScalarValue) -> Result<i64> {
    let ns = value.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    match ns {
        ScalarValue::TimestampNanosecond(Some(t), _) => Ok(t),
        _ => exec_err!("bucket origin must be a non-null timestamp, got {value}"),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimeBucket {
    signature: Signature,
}

impl TimeBucket {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The timestamp type a bucketing function returns for a time argument.
pub(crate) fn bucket_return_type(name: &str, time: &DataType) -> Result<DataType> {
    match time {
        DataType::Timestamp(_, tz) => Ok(DataType::Timestamp(TimeUnit::Nanosecond, tz.clone())),
        DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::Utf8View => {
            Ok(DataType::Timestamp(TimeUnit::Nanosecond, None))
        }
        other => plan_err!("{name}: time argument must be a timestamp, got {other}"),
    }
}

pub(crate) fn coerce_bucket_args(name: &str, args: &[DataType]) -> Result<Vec<DataType>> {
    if !(2..=3).contains(&args.len()) {
        return plan_err!(
            "{name}(interval, time [, origin]) takes 2 or 3 arguments, got {}",
            args.len()
        );
    }
    let interval = match &args[0] {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Interval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
        DataType::Null => DataType::Utf8,
        other => {
            return plan_err!(
            "{name}: interval argument must be an interval or a string such as '5m', got {other}"
        )
        }
    };
    let time = bucket_return_type(name, &args[1])?;
    let mut out = vec![interval, time.clone()];
    if args.len() == 3 {
        out.push(time);
    }
    Ok(out)
}

/// Evaluates a bucketing call: constant interval and origin, array or scalar time.
pub(crate) fn invoke_bucket(
    name: &str,
    args: &ScalarFunctionArgs,
    default_origin: impl Fn(Stride) -> i64,
) -> Result<ColumnarValue> {
    let ColumnarValue::Scalar(interval) = &args.args[0] else {
        return exec_err!("{name}: the interval must be a constant");
    };
    let stride = Stride::from_scalar(interval)?;
    let origin = match args.args.get(2) {
        Some(ColumnarValue::Scalar(o)) => origin_from_scalar(o)?,
        Some(_) => return exec_err!("{name}: the origin must be a constant"),
        None => default_origin(stride),
    };
    let bucketer = Bucketer { stride, origin };
    let tz = match args.return_field.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    match &args.args[1] {
        ColumnarValue::Array(a) => Ok(ColumnarValue::Array(bucket_array(&bucketer, a, tz)?)),
        ColumnarValue::Scalar(s) => {
            let a = s.to_array()?;
            let out = bucket_array(&bucketer, &a, tz)?;
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        }
    }
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        "time_bucket"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_bucket_args(self.name(), arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(1) {
            Some(t) => bucket_return_type(self.name(), t),
            None => plan_err!("time_bucket(interval, time [, origin]) needs a time argument"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        invoke_bucket(self.name(), &args, |stride| match stride {
            Stride::Nanos(_) => TIMESCALE_ORIGIN_NS,
            Stride::Months(_) => TIMESCALE_MONTH_ORIGIN_NS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    #[test]
    fn parses_grafana_and_postgres_intervals() {
        assert_eq!(parse_interval("60s").unwrap().nanoseconds, 60_000_000_000);
        assert_eq!(parse_interval("5m").unwrap().nanoseconds, 300_000_000_000);
        assert_eq!(
            parse_interval("5 minutes").unwrap().nanoseconds,
            300_000_000_000
        );
        assert_eq!(parse_interval("1 month").unwrap().months, 1);
        assert_eq!(
            parse_interval("1d").unwrap().nanoseconds,
            86_400_000_000_000
        );
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn buckets_fixed_strides_including_before_origin() {
        let b = Bucketer {
            stride: Stride::Nanos(10),
            origin: 0,
        };
        assert_eq!(b.bucket(0), Some(0));
        assert_eq!(b.bucket(9), Some(0));
        assert_eq!(b.bucket(10), Some(10));
        assert_eq!(b.bucket(-1), Some(-10));
        assert_eq!(b.next(10), Some(20));
        // Weekly buckets from the Timescale origin start on Mondays.
        let w = Bucketer {
            stride: Stride::Nanos(7 * 86_400_000_000_000),
            origin: TIMESCALE_ORIGIN_NS,
        };
        assert_eq!(
            w.bucket(ns("2026-11-25T13:00:00Z")),
            Some(ns("2026-11-23T00:00:00Z"))
        );
    }

    #[test]
    fn buckets_calendar_months() {
        let b = Bucketer {
            stride: Stride::Months(1),
            origin: TIMESCALE_MONTH_ORIGIN_NS,
        };
        assert_eq!(
            b.bucket(ns("2026-02-28T23:59:59Z")),
            Some(ns("2026-02-01T00:00:00Z"))
        );
        assert_eq!(
            b.next(ns("2026-02-01T00:00:00Z")),
            Some(ns("2026-03-01T00:00:00Z"))
        );
        let q = Bucketer {
            stride: Stride::Months(3),
            origin: TIMESCALE_MONTH_ORIGIN_NS,
        };
        assert_eq!(
            q.bucket(ns("2026-05-15T00:00:00Z")),
            Some(ns("2026-04-01T00:00:00Z"))
        );
        assert_eq!(
            q.bucket(ns("1999-12-31T00:00:00Z")),
            Some(ns("1999-10-01T00:00:00Z"))
        );
        // An origin in mid-month shifts every bucket.
        let m = Bucketer {
            stride: Stride::Months(1),
            origin: ns("2000-01-15T00:00:00Z"),
        };
        assert_eq!(
            m.bucket(ns("2026-03-10T00:00:00Z")),
            Some(ns("2026-02-15T00:00:00Z"))
        );
    }
}
