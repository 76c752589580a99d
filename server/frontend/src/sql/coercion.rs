//! Comparing a timestamp column with a bare integer, as HoraeDB and InfluxDB
//! users write it: `WHERE ts >= 1700000000000`. DataFusion has no common
//! type for `Timestamp(ms)` and `Int64`, so this analyzer rule, run before
//! type coercion, reads integer literals compared with a timestamp column as
//! timestamps in that column's unit.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::{
    common::{
        config::ConfigOptions,
        tree_node::{Transformed, TreeNode},
        DFSchema, Result, ScalarValue,
    },
    logical_expr::{expr::InList, Between, BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator},
    optimizer::AnalyzerRule,
};

#[derive(Debug, Default)]
pub struct IntegerAsTimestamp;

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int64(Some(x)) => Some(*x),
        ScalarValue::Int32(Some(x)) => Some(i64::from(*x)),
        ScalarValue::Int16(Some(x)) => Some(i64::from(*x)),
        ScalarValue::Int8(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
        ScalarValue::UInt32(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt16(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt8(Some(x)) => Some(i64::from(*x)),
        _ => None,
    }
}

fn timestamp_literal(unit: &TimeUnit, tz: &Option<std::sync::Arc<str>>, v: i64) -> ScalarValue {
    let tz = tz.clone();
    match unit {
        TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz),
        TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), tz),
        TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), tz),
        TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), tz),
    }
}

/// If `lit` is an integer literal and `other` a timestamp, the literal as a
/// timestamp of the same type.
fn convert(other: &Expr, lit: &Expr, schema: &DFSchema) -> Option<Expr> {
    let Expr::Literal(value, _) = lit else {
        return None;
    };
    let v = as_i64(value)?;
    match other.get_type(schema).ok()? {
        DataType::Timestamp(unit, tz) => {
            Some(Expr::Literal(timestamp_literal(&unit, &tz, v), None))
        }
        _ => None,
    }
}

fn is_comparison(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
    )
}

fn rewrite(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    match &expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_comparison(op) => {
            if let Some(new_right) = convert(left, right, schema) {
                return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                    left.clone(),
                    *op,
                    Box::new(new_right),
                ))));
            }
            if let Some(new_left) = convert(right, left, schema) {
                return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(new_left),
                    *op,
                    right.clone(),
                ))));
            }
            Ok(Transformed::no(expr))
        }
        Expr::Between(Between {
            expr: inner,
            negated,
            low,
            high,
        }) => {
            let low2 = convert(inner, low, schema);
            let high2 = convert(inner, high, schema);
            if low2.is_none() && high2.is_none() {
                return Ok(Transformed::no(expr));
            }
            Ok(Transformed::yes(Expr::Between(Between::new(
                inner.clone(),
                *negated,
                Box::new(low2.unwrap_or_else(|| (**low).clone())),
                Box::new(high2.unwrap_or_else(|| (**high).clone())),
            ))))
        }
        Expr::InList(InList {
            expr: inner,
            list,
            negated,
        }) => {
            let converted: Vec<Option<Expr>> =
                list.iter().map(|e| convert(inner, e, schema)).collect();
            if converted.iter().all(Option::is_none) {
                return Ok(Transformed::no(expr));
            }
            let list = converted
                .into_iter()
                .zip(list)
                .map(|(c, orig)| c.unwrap_or_else(|| orig.clone()))
                .collect();
            Ok(Transformed::yes(Expr::InList(InList::new(
                inner.clone(),
                list,
                *negated,
            ))))
        }
        _ => Ok(Transformed::no(expr)),
    }
}

impl AnalyzerRule for IntegerAsTimestamp {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let inputs = node.inputs();
            if inputs.is_empty() {
                return Ok(Transformed::no(node));
            }
            let mut schema = DFSchema::empty();
            for input in inputs {
                schema.merge(input.schema());
            }
            node.map_expressions(|e| e.transform_up(|e| rewrite(e, &schema)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "integer_as_timestamp"
    }
}
