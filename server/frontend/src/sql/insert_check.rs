//! Checks the literal values of `INSERT … VALUES` against the table's column
//! types before DataFusion runs the statement, so that a wrong value gets an
//! error naming the column and the row, instead of a bare cast failure.

use datafusion::{
    common::ScalarValue,
    sql::{
        parser::Statement as DfStatement,
        sqlparser::ast::{Expr, SetExpr, Statement, TableObject, UnaryOperator, Value},
    },
};
use strata_engine::{schema::ColumnType, Engine};

use crate::error::{Error, Result};

enum Literal {
    Number(String),
    Text(String),
    Bool(bool),
    Null,
}

fn literal(expr: &Expr) -> Option<Literal> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(Literal::Number(n.to_string())),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Literal::Text(s.clone()))
            }
            Value::Boolean(b) => Some(Literal::Bool(*b)),
            Value::Null => Some(Literal::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr) {
            Some(Literal::Number(n)) => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Nested(inner) => literal(inner),
        _ => None,
    }
}

fn is_numeric(t: ColumnType) -> bool {
    !matches!(
        t,
        ColumnType::String | ColumnType::Varbinary | ColumnType::Boolean | ColumnType::Timestamp
    )
}

/// Returns an error for the first VALUES cell that cannot be stored in its
/// column. Statements other than `INSERT … VALUES` pass unchecked.
pub fn check(stmt: &DfStatement, engine: &Engine, database: &str) -> Result<()> {
    let DfStatement::Statement(stmt) = stmt else {
        return Ok(());
    };
    let Statement::Insert(insert) = stmt.as_ref() else {
        return Ok(());
    };
    let TableObject::TableName(name) = &insert.table else {
        return Ok(());
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_lowercase()
            }
        })
        .collect();
    let (db, table) = match parts.as_slice() {
        [t] => (database.to_string(), t.clone()),
        [d, t] => (d.clone(), t.clone()),
        _ => return Ok(()),
    };
    let Ok(entry) = engine.entry(&db, &table) else {
        return Ok(());
    };
    let schema = &entry.schema;
    let targets: Vec<usize> = if insert.columns.is_empty() {
        (0..schema.columns.len()).collect()
    } else {
        let mut out = Vec::new();
        for c in &insert.columns {
            let name =
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map(|i| {
                        if i.quote_style.is_some() {
                            i.value.clone()
                        } else {
                            i.value.to_lowercase()
                        }
                    })
                    .unwrap_or_default();
            match schema.index_of(&name) {
                Some(i) => out.push(i),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "column {name} does not exist in table {}",
                        table
                    )))
                }
            }
        }
        out
    };
    for (i, col) in schema.columns.iter().enumerate() {
        if !col.nullable && !targets.contains(&i) {
            return Err(Error::InvalidArgument(format!(
                "column {} cannot be null; give it a value",
                col.name
            )));
        }
    }
    let Some(source) = &insert.source else {
        return Ok(());
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return Ok(());
    };
    for (r, row) in values.rows.iter().enumerate() {
        let cells = &row.content;
        if cells.len() != targets.len() {
            return Err(Error::InvalidArgument(format!(
                "row {} has {} values but {} columns are being inserted",
                r + 1,
                cells.len(),
                targets.len()
            )));
        }
        for (cell, &idx) in cells.iter().zip(&targets) {
            let col = &schema.columns[idx];
            let Some(lit) = literal(cell) else { continue };
            let bad = |got: String| {
                Error::InvalidArgument(format!(
                    "column {} expects {}, but row {} has {got}",
                    col.name,
                    col.column_type,
                    r + 1
                ))
            };
            match lit {
                Literal::Null if !col.nullable => {
                    return Err(Error::InvalidArgument(format!(
                        "column {} cannot be null (row {})",
                        col.name,
                        r + 1
                    )))
                }
                Literal::Null => {}
                Literal::Bool(b)
                    if is_numeric(col.column_type) || col.column_type == ColumnType::Timestamp =>
                {
                    return Err(bad(format!("boolean {b}")))
                }
                Literal::Bool(_) => {}
                Literal::Number(_) => {}
                Literal::Text(s) => {
                    if col.column_type == ColumnType::String
                        || col.column_type == ColumnType::Varbinary
                    {
                        continue;
                    }
                    if ScalarValue::Utf8(Some(s.clone()))
                        .cast_to(&col.column_type.to_arrow())
                        .is_err()
                    {
                        return Err(bad(format!("'{s}'")));
                    }
                }
            }
        }
    }
    Ok(())
}
