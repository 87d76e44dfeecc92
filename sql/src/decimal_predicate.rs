//! Field predicates compared on the stored decimals, not on floats cast from them.
//!
//! vigil stores a float field whose values are all short decimals as
//! `Decimal128(18, s)` (storage's `encode_decimal_floats`); the table says
//! `Float64`. DataFusion adapts a predicate to such a file by casting the column:
//! `CAST(usage_user AS Float64) > 90.0`, a cast of every value of every row the
//! scan reaches before the comparison. This adapter moves the conversion to the
//! literal instead, `usage_user > 90.000` on the decimals, which is exact:
//!
//! The cast `c(d)` of a decimal `d` to a float is monotone (never decreasing in
//! `d`), so for a float `L` the decimals with `c(d) > L` are exactly those above
//! `k`, the largest decimal with `c(d) <= L`; likewise `>=`/`<` use `j`, the
//! smallest decimal with `c(d) >= L`, and `=` holds only between `j` and `k`.
//! `j` and `k` are found by casting candidates with Arrow's own cast, so they
//! agree with what the cast-then-compare predicate would decide, value by value.
//! Anything else (NaN or infinite literals, a bound outside the decimal's range,
//! other expressions) is left to DataFusion's cast.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Decimal128Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

/// DataFusion's adapter, then comparisons of cast decimal columns with float
/// literals rewritten to compare decimals.
#[derive(Debug, Default)]
pub(crate) struct DecimalPredicateAdapterFactory;

impl PhysicalExprAdapterFactory for DecimalPredicateAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(DecimalPredicateAdapter {
            inner: DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, Arc::clone(&physical_file_schema))?,
            physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct DecimalPredicateAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    physical_file_schema: SchemaRef,
}

impl PhysicalExprAdapter for DecimalPredicateAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = self.inner.rewrite(expr)?;
        expr.transform_up(|e| {
            Ok(self
                .compare_decimals(&e)
                .map_or(Transformed::no(e), Transformed::yes))
        })
        .data()
    }
}

impl DecimalPredicateAdapter {
    /// `CAST(decimal_col AS Float64) <op> float` (either side) as a comparison of
    /// decimals, when it can be written exactly.
    fn compare_decimals(&self, expr: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
        let binary = expr.downcast_ref::<BinaryExpr>()?;
        let (column, value, op) = match (
            self.cast_decimal_column(binary.left()),
            float_literal(binary.right()),
        ) {
            (Some(c), Some(v)) => (c, v, *binary.op()),
            _ => (
                self.cast_decimal_column(binary.right())?,
                float_literal(binary.left())?,
                binary.op().swap()?,
            ),
        };
        let (column, precision, scale) = column;
        let bounds = DecimalBounds::of(value, precision, scale)?;
        let decimal = |v: i128| -> Arc<dyn PhysicalExpr> {
            Arc::new(Literal::new(ScalarValue::Decimal128(
                Some(v),
                precision,
                scale,
            )))
        };
        let col: Arc<dyn PhysicalExpr> = Arc::new(column);
        let (op, bound) = match op {
            Operator::Gt => (Operator::Gt, bounds.at_most),
            Operator::LtEq => (Operator::LtEq, bounds.at_most),
            Operator::GtEq => (Operator::GtEq, bounds.at_least),
            Operator::Lt => (Operator::Lt, bounds.at_least),
            // Equality is exact only when one decimal casts to the literal.
            Operator::Eq | Operator::NotEq if bounds.at_least == bounds.at_most => {
                (op, bounds.at_least)
            }
            _ => return None,
        };
        Some(Arc::new(BinaryExpr::new(col, op, decimal(bound))))
    }

    /// The column of `CAST(column AS Float64)` where the file stores it as a
    /// decimal, with its precision and scale.
    fn cast_decimal_column(&self, expr: &Arc<dyn PhysicalExpr>) -> Option<(Column, u8, i8)> {
        let cast = expr.downcast_ref::<CastExpr>()?;
        if cast.cast_type() != &DataType::Float64 {
            return None;
        }
        let column = cast.expr().downcast_ref::<Column>()?;
        let field = self
            .physical_file_schema
            .field_with_name(column.name())
            .ok()?;
        match field.data_type() {
            DataType::Decimal128(p, s) if *s >= 0 => Some((column.clone(), *p, *s)),
            _ => None,
        }
    }
}

fn float_literal(expr: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    match expr.downcast_ref::<Literal>()?.value() {
        // -0.0 is left to DataFusion, which may treat it as 0.0 or order it
        // before 0.0 depending on the operator.
        ScalarValue::Float64(Some(v)) if v.is_finite() && !(*v == 0.0 && v.is_sign_negative()) => {
            Some(*v)
        }
        _ => None,
    }
}

/// For a float `L`: `at_most`, the largest decimal whose cast is `<= L`, and
/// `at_least`, the smallest whose cast is `>= L`.
#[derive(Debug, PartialEq)]
struct DecimalBounds {
    at_most: i128,
    at_least: i128,
}

impl DecimalBounds {
    fn of(value: f64, precision: u8, scale: i8) -> Option<Self> {
        let limit = 10i128.checked_pow(u32::from(precision))? - 1;
        let guess = (value * 10f64.powi(i32::from(scale))).floor();
        // Bounds at or past the decimal's range would make the predicate always
        // true or false: left to the cast.
        if !guess.is_finite() || guess.abs() >= (limit - 2) as f64 {
            return None;
        }
        let to_float = |d: i128| -> Option<f64> {
            let a = Decimal128Array::from(vec![d])
                .with_precision_and_scale(precision, scale)
                .ok()?;
            let f = cast(&a, &DataType::Float64).ok()?;
            let f = f.as_primitive::<Float64Type>();
            (!f.is_null(0)).then(|| f.value(0))
        };
        // Arrow compares floats in IEEE total order (-0.0 < 0.0), and so must the
        // bounds.
        let cmp = |d: i128| to_float(d).map(|f| f.total_cmp(&value));
        use std::cmp::Ordering::{Equal, Greater};
        let mut at_most = guess as i128;
        // The guess is off by rounding only; a few steps settle it.
        for _ in 0..64 {
            if cmp(at_most)? == Greater {
                at_most -= 1;
            } else if cmp(at_most + 1)? != Greater {
                at_most += 1;
            } else {
                let at_least = if cmp(at_most)? == Equal {
                    // The smallest decimal that casts to `value` (several may).
                    let mut j = at_most;
                    for _ in 0..64 {
                        if cmp(j - 1)? == Equal {
                            j -= 1;
                        } else {
                            return Some(Self {
                                at_most,
                                at_least: j,
                            });
                        }
                    }
                    return None;
                } else {
                    at_most + 1
                };
                return Some(Self { at_most, at_least });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BooleanArray, Float64Array};
    use datafusion::arrow::compute::kernels::cmp::{eq, gt, gt_eq, lt, lt_eq};

    fn cast_value(d: i128, p: u8, s: i8) -> f64 {
        let a = Decimal128Array::from(vec![d])
            .with_precision_and_scale(p, s)
            .unwrap();
        cast(&a, &DataType::Float64)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0)
    }

    /// The bounds decide every comparison exactly as cast-then-compare does, on
    /// decimals around each literal, for literals on, between and far from the
    /// grid, negative ones and scale 0.
    #[test]
    fn bounds_agree_with_cast_then_compare() {
        for (p, s) in [(18u8, 3i8), (18, 0), (18, 9), (10, 2)] {
            for value in [
                90.0,
                90.0005,
                89.9995,
                -0.001,
                0.0,
                -0.0,
                0.1 + 0.2,
                1e-12,
                -12.345,
                7.0,
                123456.789,
            ] {
                let Some(b) = DecimalBounds::of(value, p, s) else {
                    panic!("no bounds for {value} at ({p},{s})");
                };
                let mid = (value * 10f64.powi(s as i32)).round() as i128;
                for d in mid - 50..mid + 50 {
                    // What Arrow's comparison kernels decide on the cast value.
                    let f = Float64Array::from(vec![cast_value(d, p, s)]);
                    let l = Float64Array::new_scalar(value);
                    let holds = |r: BooleanArray| r.value(0);
                    assert_eq!(
                        holds(gt(&f, &l).unwrap()),
                        d > b.at_most,
                        "{d} > {value} ({p},{s})"
                    );
                    assert_eq!(
                        holds(lt_eq(&f, &l).unwrap()),
                        d <= b.at_most,
                        "{d} <= {value}"
                    );
                    assert_eq!(
                        holds(gt_eq(&f, &l).unwrap()),
                        d >= b.at_least,
                        "{d} >= {value}"
                    );
                    assert_eq!(holds(lt(&f, &l).unwrap()), d < b.at_least, "{d} < {value}");
                    if b.at_least == b.at_most {
                        assert_eq!(holds(eq(&f, &l).unwrap()), d == b.at_least, "{d} = {value}");
                    }
                }
            }
        }
    }

    fn adapter() -> DecimalPredicateAdapter {
        use datafusion::arrow::datatypes::{Field, Schema};
        let logical = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let physical = Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::Decimal128(18, 3),
            true,
        )]));
        DecimalPredicateAdapter {
            inner: DefaultPhysicalExprAdapterFactory
                .create(logical, Arc::clone(&physical))
                .unwrap(),
            physical_file_schema: physical,
        }
    }

    /// The adapter turns `v > 90.0` and `90.0 < v` (the literal on either side)
    /// into a comparison with the decimal 90.000; what it cannot write exactly
    /// (an equality no decimal casts to, -0.0, NaN) keeps the cast.
    #[test]
    fn rewrites_comparisons_with_the_literal_on_either_side() {
        let col = || -> Arc<dyn PhysicalExpr> { Arc::new(Column::new("v", 0)) };
        let f = |v: f64| -> Arc<dyn PhysicalExpr> {
            Arc::new(Literal::new(ScalarValue::Float64(Some(v))))
        };
        let rewrite = |e: BinaryExpr| adapter().rewrite(Arc::new(e)).unwrap().to_string();
        assert_eq!(
            rewrite(BinaryExpr::new(col(), Operator::Gt, f(90.0))),
            "v@0 > 90.000"
        );
        assert_eq!(
            rewrite(BinaryExpr::new(f(90.0), Operator::Lt, col())),
            "v@0 > 90.000"
        );
        assert_eq!(
            rewrite(BinaryExpr::new(col(), Operator::GtEq, f(90.0005))),
            "v@0 >= 90.001"
        );
        assert_eq!(
            rewrite(BinaryExpr::new(col(), Operator::LtEq, f(-0.0005))),
            "v@0 <= -0.001"
        );
        assert_eq!(
            rewrite(BinaryExpr::new(col(), Operator::Eq, f(1.5))),
            "v@0 = 1.500"
        );
        for kept in [
            BinaryExpr::new(col(), Operator::Eq, f(1.0005)),
            BinaryExpr::new(col(), Operator::Gt, f(f64::NAN)),
            BinaryExpr::new(col(), Operator::Gt, f(1e300)),
            BinaryExpr::new(col(), Operator::Gt, f(-0.0)),
        ] {
            let out = rewrite(kept);
            assert!(out.contains("CAST"), "{out}");
        }
    }

    #[test]
    fn literals_outside_the_decimal_range_are_left_alone() {
        assert_eq!(DecimalBounds::of(1e30, 18, 3), None);
        assert_eq!(DecimalBounds::of(-1e16, 18, 3), None);
    }
}
