//! Extracting the time range a query asks for from its filters, to skip whole files.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use vigil_storage::TIME_COLUMN;

/// Inclusive nanosecond bounds; `i64::MIN..=i64::MAX` when the filters say nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub(crate) min: i64,
    pub(crate) max: i64,
}

impl Default for TimeRange {
    fn default() -> Self {
        Self {
            min: i64::MIN,
            max: i64::MAX,
        }
    }
}

impl std::fmt::Display for TimeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |t: i64, open: i64| {
            if t == open {
                "*".to_string()
            } else {
                chrono::DateTime::from_timestamp_nanos(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            }
        };
        write!(
            f,
            "[{}, {}]",
            show(self.min, i64::MIN),
            show(self.max, i64::MAX)
        )
    }
}

fn timestamp_nanos(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn is_time(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == TIME_COLUMN,
        // Only a cast that keeps nanoseconds: `CAST(time AS TIMESTAMP(ms)) <= x`
        // also matches times up to x + 999,999 ns, so taking x as the bound would
        // prune files and buffered rows that the predicate matches.
        Expr::Cast(c) => {
            matches!(
                c.field.data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Nanosecond,
                    _
                )
            ) && is_time(&c.expr)
        }
        _ => false,
    }
}

fn literal(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => timestamp_nanos(v),
        _ => None,
    }
}

/// Whether `e` is a bound [`TimeRange::from_filters`] understands whole: a
/// comparison of the time column with a constant, or a `BETWEEN` of constants
/// (or a conjunction of those).
pub(crate) fn is_time_bound(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => is_time_bound(left) && is_time_bound(right),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            matches!(
                op,
                Operator::Gt | Operator::GtEq | Operator::Lt | Operator::LtEq | Operator::Eq
            ) && ((is_time(left) && literal(right).is_some())
                || (is_time(right) && literal(left).is_some()))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => is_time(expr) && literal(low).is_some() && literal(high).is_some(),
        _ => false,
    }
}

impl TimeRange {
    /// Narrows the range with every conjunct of `filters` it understands.
    pub(crate) fn from_filters(filters: &[Expr]) -> Self {
        let mut r = TimeRange::default();
        for f in filters {
            r.apply(f);
        }
        r
    }

    fn apply(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.apply(left);
                self.apply(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, v) = if is_time(left) {
                    match literal(right) {
                        Some(v) => (*op, v),
                        None => return,
                    }
                } else if is_time(right) {
                    match (literal(left), op.swap()) {
                        (Some(v), Some(op)) => (op, v),
                        _ => return,
                    }
                } else {
                    return;
                };
                match op {
                    Operator::Gt => self.min = self.min.max(v.saturating_add(1)),
                    Operator::GtEq => self.min = self.min.max(v),
                    Operator::Lt => self.max = self.max.min(v.saturating_sub(1)),
                    Operator::LtEq => self.max = self.max.min(v),
                    Operator::Eq => {
                        self.min = self.min.max(v);
                        self.max = self.max.min(v);
                    }
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_time(expr) => {
                if let (Some(lo), Some(hi)) = (literal(low), literal(high)) {
                    self.min = self.min.max(lo);
                    self.max = self.max.min(hi);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn bounds_from_comparisons() {
        let r = TimeRange::from_filters(&[
            col("time").gt_eq(ts(10)).and(col("time").lt(ts(20))),
            col("host").eq(lit("a")),
        ]);
        assert_eq!(r, TimeRange { min: 10, max: 19 });
        let r = TimeRange::from_filters(&[ts(5).lt(col("time"))]);
        assert_eq!(
            r,
            TimeRange {
                min: 6,
                max: i64::MAX
            }
        );
        let r = TimeRange::from_filters(&[col("time").between(ts(1), ts(2))]);
        assert_eq!(r, TimeRange { min: 1, max: 2 });
        let r = TimeRange::from_filters(&[col("time").gt(ts(1)).or(col("time").lt(ts(0)))]);
        assert_eq!(r, TimeRange::default());
    }

    /// A cast to milliseconds matches a whole millisecond: no bound from it.
    #[test]
    fn coarsening_casts_give_no_bound() {
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        let ms = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("time")),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ));
        let bound = lit(ScalarValue::TimestampMillisecond(
            Some(10),
            Some("UTC".into()),
        ));
        let r = TimeRange::from_filters(&[ms.lt_eq(bound)]);
        assert_eq!(r, TimeRange::default());
        let ns = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("time")),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
        ));
        let r = TimeRange::from_filters(&[ns.lt_eq(ts(10))]);
        assert_eq!(r.max, 10);
    }
}
