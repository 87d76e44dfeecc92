//! `moving_average(expr, n) OVER (PARTITION BY ... ORDER BY time)`: the mean of the
//! current row and the `n - 1` rows before it. It is rewritten into DataFusion's
//! sliding `avg` over `ROWS BETWEEN n-1 PRECEDING AND CURRENT ROW`, so it runs in
//! O(rows) whatever `n` is.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::functions_aggregate::average::avg_udaf;
use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::function::{
    PartitionEvaluatorArgs, WindowFunctionSimplification, WindowUDFFieldArgs,
};
use datafusion::logical_expr::{
    Expr, PartitionEvaluator, Signature, Volatility, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition, WindowUDFImpl,
};

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct MovingAverage {
    signature: Signature,
}

impl MovingAverage {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

fn window_size(arg: &Expr) -> Result<u64> {
    let n = match arg {
        Expr::Literal(v, _) => v.cast_to(&DataType::Int64).ok(),
        _ => None,
    };
    match n {
        Some(ScalarValue::Int64(Some(n))) if n >= 1 => Ok(n as u64),
        _ => plan_err!("moving_average(expr, n): n must be a constant integer >= 1, got {arg}"),
    }
}

impl WindowUDFImpl for MovingAverage {
    fn name(&self) -> &str {
        "moving_average"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        exec_err!("moving_average must be rewritten to a sliding avg before execution")
    }
    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
    }
    fn simplify(&self) -> Option<WindowFunctionSimplification> {
        Some(Box::new(|wf: WindowFunction, _info| {
            let WindowFunctionParams {
                args,
                partition_by,
                order_by,
                filter,
                null_treatment,
                distinct,
                ..
            } = wf.params;
            if args.len() != 2 {
                return plan_err!(
                    "moving_average(expr, n) takes 2 arguments, got {}",
                    args.len()
                );
            }
            if order_by.is_empty() {
                return plan_err!(
                    "moving_average needs an ORDER BY in its OVER clause (usually ORDER BY time)"
                );
            }
            let n = window_size(&args[1])?;
            let frame = WindowFrame::new_bounds(
                WindowFrameUnits::Rows,
                WindowFrameBound::Preceding(ScalarValue::UInt64(Some(n - 1))),
                WindowFrameBound::CurrentRow,
            );
            let value = args.into_iter().next().expect("two args");
            Ok(Expr::WindowFunction(Box::new(WindowFunction {
                fun: WindowFunctionDefinition::AggregateUDF(avg_udaf()),
                params: WindowFunctionParams {
                    args: vec![value],
                    partition_by,
                    order_by,
                    window_frame: frame,
                    filter,
                    null_treatment,
                    distinct,
                },
            })))
        }))
    }
}
