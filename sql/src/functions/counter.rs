//! Counter and gauge functions over `(value, time)`: `increase`, `rate`, `irate`,
//! `delta`. They are aggregates (one result per `GROUP BY` bucket) and, because
//! they can retract rows, also sliding window functions
//! (`rate(v, time) OVER (PARTITION BY host ORDER BY time ROWS 5 PRECEDING)`).
//!
//! Counter resets are handled as in Prometheus: when a counter goes down, it is
//! taken to have restarted from zero, so the increase across the reset is the new
//! value. Unlike Prometheus, results are not extrapolated to the edges of the
//! bucket: an SQL aggregate does not know its bucket's bounds, and the exact
//! increase between the first and last sample is what a reader can check by hand.
//! Input order does not matter (samples are sorted by time); NULL values or times
//! are skipped; fewer than two samples give NULL.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// Which counter function an accumulator computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CounterKind {
    /// Total increase, reset-aware.
    Increase,
    /// Increase per second between the first and last sample.
    Rate,
    /// Per-second rate between the last two samples.
    IRate,
    /// Last minus first value (gauges: no reset handling).
    Delta,
}

impl CounterKind {
    fn name(self) -> &'static str {
        match self {
            CounterKind::Increase => "increase",
            CounterKind::Rate => "rate",
            CounterKind::IRate => "irate",
            CounterKind::Delta => "delta",
        }
    }

    /// Computes the function over samples sorted by time.
    pub(crate) fn compute(self, samples: &[(i64, f64)]) -> Option<f64> {
        if samples.len() < 2 {
            return None;
        }
        let increase = |s: &[(i64, f64)]| {
            s.windows(2)
                .map(|w| {
                    let (prev, cur) = (w[0].1, w[1].1);
                    if cur >= prev {
                        cur - prev
                    } else {
                        cur
                    }
                })
                .sum::<f64>()
        };
        let seconds = |a: i64, b: i64| (b - a) as f64 / 1e9;
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        match self {
            CounterKind::Increase => Some(increase(samples)),
            CounterKind::Rate => {
                let span = seconds(first.0, last.0);
                (span > 0.0).then(|| increase(samples) / span)
            }
            CounterKind::IRate => {
                let pair = &samples[samples.len() - 2..];
                let span = seconds(pair[0].0, pair[1].0);
                (span > 0.0).then(|| increase(pair) / span)
            }
            CounterKind::Delta => Some(last.1 - first.1),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct CounterFunction {
    kind: CounterKind,
    signature: Signature,
}

impl CounterFunction {
    pub(crate) fn new(kind: CounterKind) -> Self {
        Self {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn time_ns_type() -> DataType {
    super::time_arg_type()
}

impl AggregateUDFImpl for CounterFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let value = super::value_and_time_args(self.name(), arg_types)?;
        if !(value.is_numeric() || value.is_null()) {
            return plan_err!("{}: value must be numeric, got {value}", self.name());
        }
        Ok(vec![DataType::Float64, time_ns_type()])
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CounterAccumulator {
            kind: self.kind,
            samples: VecDeque::new(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[times]", args.name),
                DataType::new_list(DataType::Int64, true),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[values]", args.name),
                DataType::new_list(DataType::Float64, true),
                true,
            )),
        ])
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.accumulator(args)
    }
}

/// Samples in arrival order: retraction (sliding windows) removes from the front.
#[derive(Debug)]
struct CounterAccumulator {
    kind: CounterKind,
    samples: VecDeque<(Option<i64>, Option<f64>)>,
}

fn as_pairs(values: &[ArrayRef]) -> Result<(Float64Array, Int64Array)> {
    let v = cast(&values[0], &DataType::Float64)?;
    let t = cast(&cast(&values[1], &time_ns_type())?, &DataType::Int64)?;
    Ok((
        v.as_primitive::<Float64Type>().clone(),
        t.as_primitive::<Int64Type>().clone(),
    ))
}

impl Accumulator for CounterAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (v, t) = as_pairs(values)?;
        self.samples.extend(t.iter().zip(v.iter()));
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for _ in 0..values[0].len() {
            self.samples.pop_front();
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut s: Vec<(i64, f64)> = self
            .samples
            .iter()
            .filter_map(|(t, v)| Some(((*t)?, (*v)?)))
            .collect();
        s.sort_by_key(|(t, _)| *t);
        Ok(ScalarValue::Float64(self.kind.compute(&s)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.samples.capacity() * 32
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let times = Int64Array::from_iter(self.samples.iter().map(|(t, _)| *t));
        let values = Float64Array::from_iter(self.samples.iter().map(|(_, v)| *v));
        Ok(vec![
            ScalarValue::List(Arc::new(single_list(Arc::new(times))?)),
            ScalarValue::List(Arc::new(single_list(Arc::new(values))?)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let times = states[0].as_list::<i32>();
        let values = states[1].as_list::<i32>();
        for i in 0..times.len() {
            if times.is_null(i) {
                continue;
            }
            let t = times.value(i);
            let v = values.value(i);
            let (t, v) = (
                t.as_primitive::<Int64Type>(),
                v.as_primitive::<Float64Type>(),
            );
            self.samples.extend(t.iter().zip(v.iter()));
        }
        Ok(())
    }
}

fn single_list(values: ArrayRef) -> Result<ListArray> {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let offsets = datafusion::arrow::buffer::OffsetBuffer::from_lengths([values.len()]);
    Ok(ListArray::try_new(field, offsets, values, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn increase_handles_resets_like_prometheus() {
        // 10 -> 15 (+5), reset to 3 (+3), -> 7 (+4)
        let s = [(0, 10.0), (10 * S, 15.0), (20 * S, 3.0), (30 * S, 7.0)];
        assert_eq!(CounterKind::Increase.compute(&s), Some(12.0));
        assert_eq!(CounterKind::Rate.compute(&s), Some(12.0 / 30.0));
        assert_eq!(CounterKind::IRate.compute(&s), Some(4.0 / 10.0));
        assert_eq!(CounterKind::Delta.compute(&s), Some(-3.0));
    }

    #[test]
    fn irate_across_a_reset_uses_the_new_value() {
        let s = [(0, 100.0), (5 * S, 2.0)];
        assert_eq!(CounterKind::IRate.compute(&s), Some(2.0 / 5.0));
    }

    #[test]
    fn fewer_than_two_samples_give_null() {
        assert_eq!(CounterKind::Rate.compute(&[]), None);
        assert_eq!(CounterKind::Increase.compute(&[(0, 1.0)]), None);
        // Two samples at the same instant have no rate.
        assert_eq!(CounterKind::Rate.compute(&[(0, 1.0), (0, 2.0)]), None);
    }
}
