//! Extracting the queried time range from filters, to skip memtables and
//! SSTs whose rows all lie outside it.

use datafusion::{
    common::ScalarValue,
    logical_expr::{expr::InList, Between, BinaryExpr, Expr, Operator},
};
use strata_sst::TimeRange;

/// A timestamp literal in milliseconds, rounded down (`floor`) or up.
fn literal_ms(value: &ScalarValue, floor: bool) -> Option<i64> {
    let (v, per_ms): (i64, i64) = match value {
        ScalarValue::TimestampMillisecond(Some(v), _) => (*v, 1),
        ScalarValue::TimestampSecond(Some(v), _) => return v.checked_mul(1000),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1_000_000),
        ScalarValue::Int64(Some(v)) => (*v, 1),
        _ => return None,
    };
    Some(if floor {
        v.div_euclid(per_ms)
    } else {
        v.div_euclid(per_ms) + i64::from(v.rem_euclid(per_ms) != 0)
    })
}

fn unwrap_literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => unwrap_literal(&c.expr),
        Expr::TryCast(c) => unwrap_literal(&c.expr),
        _ => None,
    }
}

fn is_column(expr: &Expr, name: &str) -> bool {
    match expr {
        Expr::Column(c) => c.name == name,
        _ => false,
    }
}

/// Narrows `range` by one filter, conservatively: the result always contains
/// every timestamp the filter accepts.
fn narrow(range: &mut TimeRange, expr: &Expr, ts: &str) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(range, left, ts);
                narrow(range, right, ts);
                return;
            }
            let (op, lit) = if is_column(left, ts) {
                (*op, unwrap_literal(right))
            } else if is_column(right, ts) {
                match op.swap() {
                    Some(swapped) => (swapped, unwrap_literal(left)),
                    None => return,
                }
            } else {
                return;
            };
            let Some(lit) = lit else { return };
            match op {
                Operator::Gt | Operator::GtEq => {
                    if let Some(v) = literal_ms(lit, true) {
                        range.start = range.start.max(v);
                    }
                }
                Operator::Lt | Operator::LtEq => {
                    if let Some(v) = literal_ms(lit, false) {
                        range.end = range.end.min(v.saturating_add(1));
                    }
                }
                Operator::Eq => {
                    if let (Some(lo), Some(hi)) = (literal_ms(lit, true), literal_ms(lit, false)) {
                        range.start = range.start.max(lo);
                        range.end = range.end.min(hi.saturating_add(1));
                    }
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, ts) => {
            if let Some(v) = unwrap_literal(low).and_then(|l| literal_ms(l, true)) {
                range.start = range.start.max(v);
            }
            if let Some(v) = unwrap_literal(high).and_then(|l| literal_ms(l, false)) {
                range.end = range.end.min(v.saturating_add(1));
            }
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if is_column(expr, ts) => {
            let values: Option<Vec<i64>> = list
                .iter()
                .map(|e| unwrap_literal(e).and_then(|l| literal_ms(l, true)))
                .collect();
            if let Some(values) = values {
                if let (Some(lo), Some(hi)) = (values.iter().min(), values.iter().max()) {
                    range.start = range.start.max(*lo);
                    range.end = range.end.min(hi.saturating_add(1));
                }
            }
        }
        _ => {}
    }
}

/// The range of timestamps that can satisfy all of `filters`.
pub fn extract(filters: &[Expr], ts_column: &str) -> TimeRange {
    let mut range = TimeRange::ALL;
    for f in filters {
        narrow(&mut range, f, ts_column);
    }
    range
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(Some(v), None))
    }

    #[test]
    fn extracts_bounds_from_comparisons() {
        let f = vec![
            col("ts").gt_eq(ts(100)),
            col("ts").lt(ts(200)),
            col("v").gt(lit(3)),
        ];
        assert_eq!(extract(&f, "ts"), TimeRange::new(100, 201));
        let f = vec![ts(150).lt_eq(col("ts")).and(col("ts").lt_eq(ts(160)))];
        assert_eq!(extract(&f, "ts"), TimeRange::new(150, 161));
        let f = vec![col("ts").between(ts(1), ts(2))];
        assert_eq!(extract(&f, "ts"), TimeRange::new(1, 3));
        let ns = lit(ScalarValue::TimestampNanosecond(Some(1_500_000), None));
        assert_eq!(extract(&[col("ts").gt(ns)], "ts").start, 1);
        assert_eq!(extract(&[col("v").gt(lit(1))], "ts"), TimeRange::ALL);
    }
}
