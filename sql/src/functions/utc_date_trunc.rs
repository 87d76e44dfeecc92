//! `date_trunc` without the time-zone arithmetic that UTC does not need.
//!
//! vigil's `time` column is `Timestamp(ns, "UTC")`. DataFusion 55 truncates
//! zoned timestamps to an hour or coarser one value at a time through chrono-tz
//! (and formats an error message per value on the way): in a TSBS
//! `double-groupby` over 4.3 M rows that was ~45 % of the query's CPU (`perf`,
//! BENCHMARKS.md). In UTC, local time *is* the instant, so truncating the
//! zone-less value and putting the zone back gives the same answer; DataFusion's
//! own function then takes its arithmetic fast path. Other zones go to
//! DataFusion's function unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};

/// DataFusion's `date_trunc`, with UTC timestamps truncated as zone-less ones.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct UtcDateTrunc {
    inner: Arc<ScalarUDF>,
}

impl UtcDateTrunc {
    pub(crate) fn new() -> Self {
        Self {
            inner: datafusion::functions::datetime::date_trunc(),
        }
    }
}

/// Whether a time zone name means UTC (no offset, ever). Spelled exactly as
/// Arrow accepts it: a name it refuses must still get DataFusion's error.
fn is_utc(tz: &str) -> bool {
    ["UTC", "Etc/UTC", "+00:00", "+0000", "GMT", "Etc/GMT"].contains(&tz)
        && tz.parse::<datafusion::arrow::array::timezone::Tz>().is_ok()
}

/// The array with its time zone replaced (a metadata change, no copy of values).
fn with_zone(array: &ArrayRef, tz: Option<Arc<str>>) -> ArrayRef {
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => Arc::new(
            array
                .as_primitive::<TimestampSecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Arc::new(
            array
                .as_primitive::<TimestampMillisecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Arc::new(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Arc::new(
            array
                .as_primitive::<TimestampNanosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        _ => Arc::clone(array),
    }
}

/// A timestamp scalar with its time zone replaced.
fn scalar_with_zone(value: ScalarValue, tz: Option<Arc<str>>) -> ScalarValue {
    match value {
        ScalarValue::TimestampSecond(v, _) => ScalarValue::TimestampSecond(v, tz),
        ScalarValue::TimestampMillisecond(v, _) => ScalarValue::TimestampMillisecond(v, tz),
        ScalarValue::TimestampMicrosecond(v, _) => ScalarValue::TimestampMicrosecond(v, tz),
        ScalarValue::TimestampNanosecond(v, _) => ScalarValue::TimestampNanosecond(v, tz),
        other => other,
    }
}

/// Replaces the zone of a timestamp value (array or scalar).
fn value_with_zone(value: ColumnarValue, tz: Option<Arc<str>>) -> ColumnarValue {
    match value {
        ColumnarValue::Array(a) => ColumnarValue::Array(with_zone(&a, tz)),
        ColumnarValue::Scalar(s) => ColumnarValue::Scalar(scalar_with_zone(s, tz)),
    }
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let zone = match args.args.get(1).map(ColumnarValue::data_type) {
            Some(DataType::Timestamp(_, Some(tz))) if is_utc(&tz) => Some(tz),
            _ => None,
        };
        let Some(zone) = zone else {
            return self.inner.invoke_with_args(args);
        };
        let value = args.args.remove(1);
        args.args.insert(1, value_with_zone(value, None));
        let out = self.inner.invoke_with_args(args)?;
        Ok(value_with_zone(out, Some(zone)))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// Zone names Arrow refuses (`Z`, lower case) are refused as before.
    #[tokio::test]
    async fn zones_arrow_refuses_still_fail() {
        let ours = SessionContext::new();
        ours.register_udf(ScalarUDF::new_from_impl(UtcDateTrunc::new()));
        for zone in ["Z", "utc"] {
            let sql = format!(
                "SELECT date_trunc('hour', arrow_cast(TIMESTAMP '2023-11-14T07:12:34', \
                 'Timestamp(Nanosecond, Some(\"{zone}\"))')) AS t"
            );
            let builtin = SessionContext::new();
            let want = match builtin.sql(&sql).await {
                Ok(df) => df.collect().await.is_err(),
                Err(_) => true,
            };
            let got = match ours.sql(&sql).await {
                Ok(df) => df.collect().await.is_err(),
                Err(_) => true,
            };
            assert_eq!(got, want, "{zone}");
        }
    }

    /// The same answers as DataFusion's own `date_trunc`, for every granularity,
    /// UTC spelled several ways, other zones, naive timestamps and nulls.
    #[tokio::test]
    async fn answers_like_datafusions_date_trunc() {
        let builtin = SessionContext::new();
        let ours = SessionContext::new();
        ours.register_udf(ScalarUDF::new_from_impl(UtcDateTrunc::new()));
        let values = "('2023-11-14T07:12:34.567891234Z'), ('1969-12-31T23:59:59.999Z'), \
                      ('2024-02-29T23:30:00Z'), ('2021-03-28T01:30:00Z'), (NULL)";
        for zone in [
            "UTC",
            "+00:00",
            "Etc/UTC",
            "GMT",
            "Europe/Berlin",
            "America/St_Johns",
        ] {
            for unit in [
                "microsecond",
                "millisecond",
                "second",
                "minute",
                "hour",
                "day",
                "week",
                "month",
                "quarter",
                "year",
            ] {
                for sql in [
                    format!(
                        "SELECT date_trunc('{unit}', arrow_cast(CAST(v AS TIMESTAMP), \
                         'Timestamp(Nanosecond, Some(\"{zone}\"))')) AS t FROM (VALUES {values}) AS x(v)"
                    ),
                    format!(
                        "SELECT date_trunc('{unit}', CAST(v AS TIMESTAMP)) AS t FROM (VALUES {values}) AS x(v)"
                    ),
                    format!(
                        "SELECT date_trunc('{unit}', arrow_cast(TIMESTAMP '2023-11-14T07:12:34', \
                         'Timestamp(Millisecond, Some(\"{zone}\"))')) AS t"
                    ),
                ] {
                    let want = builtin.sql(&sql).await.unwrap().collect().await.unwrap();
                    let got = ours.sql(&sql).await.unwrap().collect().await.unwrap();
                    assert_eq!(got, want, "{sql}");
                    assert_eq!(got[0].schema(), want[0].schema(), "{sql}");
                }
            }
        }
    }
}
