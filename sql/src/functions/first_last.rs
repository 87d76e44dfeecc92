//! `first(value, time)` and `last(value, time)`: the value at the earliest / latest
//! time in the group, as in InfluxDB. NULL values are skipped (fields of a
//! measurement are sparse, and "the last reported usage" is what is meant).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Selector {
    last: bool,
    signature: Signature,
}

impl Selector {
    pub(crate) fn first() -> Self {
        Self {
            last: false,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
    pub(crate) fn last() -> Self {
        Self {
            last: true,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Selector {
    fn name(&self) -> &str {
        if self.last {
            "last"
        } else {
            "first"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let value = super::value_and_time_args(self.name(), arg_types)?;
        Ok(vec![value.clone(), super::time_arg_type()])
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SelectorAccumulator {
            last: self.last,
            best: None,
            data_type: args.return_field.data_type().clone(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[value]", args.name),
                args.return_type().clone(),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[time]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
}

#[derive(Debug)]
struct SelectorAccumulator {
    last: bool,
    best: Option<(i64, ScalarValue)>,
    data_type: DataType,
}

impl SelectorAccumulator {
    fn offer(&mut self, values: &ArrayRef, times: &ArrayRef) -> Result<()> {
        let times = cast(times, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut pick: Option<(i64, usize)> = self.best.as_ref().map(|(t, _)| (*t, usize::MAX));
        for i in 0..values.len() {
            if values.is_null(i) || times.is_null(i) {
                continue;
            }
            let t = times.value(i);
            let better = match pick {
                None => true,
                Some((bt, _)) if self.last => t >= bt,
                Some((bt, _)) => t < bt,
            };
            if better {
                pick = Some((t, i));
            }
        }
        if let Some((t, i)) = pick {
            if i != usize::MAX {
                self.best = Some((t, ScalarValue::try_from_array(values, i)?));
            }
        }
        Ok(())
    }
}

impl Accumulator for SelectorAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let t = cast(&values[1], &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        self.offer(&values[0], &t)
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        match &self.best {
            Some((_, v)) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.best.as_ref().map_or(0, |(_, v)| v.size())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(match &self.best {
            Some((t, v)) => vec![v.clone(), ScalarValue::Int64(Some(*t))],
            None => vec![
                ScalarValue::try_from(&self.data_type)?,
                ScalarValue::Int64(None),
            ],
        })
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.offer(&states[0], &states[1])
    }
}
