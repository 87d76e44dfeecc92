//! Time-series SQL functions, registered in every session (HTTP, CLI, Flight SQL,
//! Postgres wire), and the planner pieces gap filling needs.

pub(crate) mod bucket;
mod counter;
mod first_last;
mod gapfill;
mod moving_average;
#[cfg(test)]
mod tests;
mod utc_date_trunc;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::prelude::SessionContext;

use counter::{CounterFunction, CounterKind};
use gapfill::{DateBinGapfill, Fill, FillFunction, GapFillRule, VigilQueryPlanner};

/// Checks the `(value, time)` arguments of a selector or counter aggregate and
/// returns the value's type; the time argument is coerced to naive ns.
pub(crate) fn value_and_time_args<'a>(
    name: &str,
    arg_types: &'a [DataType],
) -> datafusion::common::Result<&'a DataType> {
    let [value, time] = arg_types else {
        return datafusion::common::plan_err!(
            "{name}(value, time) takes 2 arguments, got {}",
            arg_types.len()
        );
    };
    if !matches!(time, DataType::Timestamp(..)) {
        return datafusion::common::plan_err!(
            "{name}: second argument must be the time column, got {time}"
        );
    }
    Ok(value)
}

/// The type the time argument of `(value, time)` aggregates is coerced to.
pub(crate) fn time_arg_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

/// Adds vigil's query planner (it plans gap filling) to a session being built.
pub(crate) fn with_planner(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder.with_query_planner(Arc::new(VigilQueryPlanner))
}

/// Registers every time-series function and the gap-filling rule in `ctx`.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(bucket::TimeBucket::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(utc_date_trunc::UtcDateTrunc::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(DateBinGapfill::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(FillFunction::new(Fill::Locf)));
    ctx.register_udf(ScalarUDF::new_from_impl(FillFunction::new(
        Fill::Interpolate,
    )));
    for kind in [
        CounterKind::Increase,
        CounterKind::Rate,
        CounterKind::IRate,
        CounterKind::Delta,
    ] {
        ctx.register_udaf(AggregateUDF::new_from_impl(CounterFunction::new(kind)));
    }
    ctx.register_udaf(AggregateUDF::new_from_impl(first_last::Selector::first()));
    ctx.register_udaf(AggregateUDF::new_from_impl(first_last::Selector::last()));
    ctx.register_udwf(WindowUDF::new_from_impl(
        moving_average::MovingAverage::new(),
    ));
    ctx.add_analyzer_rule(Arc::new(GapFillRule));
}
