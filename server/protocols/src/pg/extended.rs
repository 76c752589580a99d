//! The extended protocol: Parse, Bind (parameters decoded by type and bound
//! as values), Describe and Execute.

use std::sync::Arc;

use arrow::datatypes::{DataType, Date32Type, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::common::ScalarValue;
use pgwire::{
    api::{
        portal::{Format, Portal},
        query::ExtendedQueryHandler,
        results::{DescribePortalResponse, DescribeStatementResponse, Response},
        stmt::{NoopQueryParser, StoredStatement},
        ClientInfo, Type,
    },
    error::PgWireResult,
};
use rust_decimal::Decimal;

use super::encode::{fields, response};
use super::{database, pg_error, user_error, PgHandler};

/// Decodes parameter `i` of a portal into a value of its declared type:
/// text or binary format, as the client sent it. Parameters of undeclared
/// type (and text types) become strings, which binding casts to the type
/// the statement needs. Values never become SQL text.
pub(super) fn param_value(portal: &Portal<String>, i: usize) -> PgWireResult<ScalarValue> {
    let ty = portal
        .statement
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .unwrap_or(Type::UNKNOWN);
    let Some(Some(raw)) = portal.parameters.get(i) else {
        return Ok(ScalarValue::Null);
    };
    let bad = |what: &str| {
        user_error(
            "22P02",
            format!("parameter ${}: invalid {what} value", i + 1),
        )
    };
    let micros = |t: NaiveDateTime| t.and_utc().timestamp_micros();
    let utc = || Some(Arc::from("+00:00"));
    if portal.parameter_format.is_binary(i) {
        return Ok(match ty {
            Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &ty)?),
            Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, &ty)?),
            Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, &ty)?),
            Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &ty)?),
            Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, &ty)?),
            Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &ty)?),
            Type::NUMERIC => match portal.parameter::<Decimal>(i, &ty)? {
                Some(d) => ScalarValue::Decimal128(
                    Some(d.mantissa()),
                    38,
                    i8::try_from(d.scale()).map_err(|_| bad("numeric"))?,
                ),
                None => ScalarValue::Decimal128(None, 38, 0),
            },
            Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
                portal.parameter::<NaiveDateTime>(i, &ty)?.map(micros),
                None,
            ),
            Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
                portal
                    .parameter::<DateTime<FixedOffset>>(i, &ty)?
                    .map(|t| t.timestamp_micros()),
                utc(),
            ),
            Type::DATE => ScalarValue::Date32(
                portal
                    .parameter::<NaiveDate>(i, &ty)?
                    .map(Date32Type::from_naive_date),
            ),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                ScalarValue::Utf8(portal.parameter::<String>(i, &ty)?)
            }
            other => {
                return Err(user_error(
                    "0A000",
                    format!(
                    "parameter ${}: binary values of type {} are not supported; send it as text",
                    i + 1,
                    other.name()
                ),
                ))
            }
        });
    }
    let text = std::str::from_utf8(raw).map_err(|_| bad("UTF-8"))?;
    let t = text.trim();
    let int = || t.parse::<i64>().map_err(|_| bad("integer"));
    let cast = |to: DataType, what: &str| {
        ScalarValue::Utf8(Some(t.to_string()))
            .cast_to(&to)
            .map_err(|_| bad(what))
    };
    Ok(match ty {
        Type::INT2 => ScalarValue::Int16(Some(i16::try_from(int()?).map_err(|_| bad("int2"))?)),
        Type::INT4 => ScalarValue::Int32(Some(i32::try_from(int()?).map_err(|_| bad("int4"))?)),
        Type::INT8 | Type::OID => ScalarValue::Int64(Some(int()?)),
        Type::FLOAT4 => ScalarValue::Float32(Some(t.parse::<f32>().map_err(|_| bad("float4"))?)),
        Type::FLOAT8 => ScalarValue::Float64(Some(t.parse::<f64>().map_err(|_| bad("float8"))?)),
        Type::NUMERIC => {
            let d: Decimal = t.parse().map_err(|_| bad("numeric"))?;
            ScalarValue::Decimal128(
                Some(d.mantissa()),
                38,
                i8::try_from(d.scale()).map_err(|_| bad("numeric"))?,
            )
        }
        Type::BOOL => ScalarValue::Boolean(Some(match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" | "y" => true,
            "f" | "false" | "0" | "no" | "off" | "n" => false,
            _ => return Err(bad("boolean")),
        })),
        Type::TIMESTAMP => cast(
            DataType::Timestamp(TimeUnit::Microsecond, None),
            "timestamp",
        )?,
        Type::TIMESTAMPTZ => cast(
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
            "timestamptz",
        )?,
        Type::DATE => cast(DataType::Date32, "date")?,
        // Text, and types sent as text that the statement decides.
        _ => ScalarValue::Utf8(Some(text.to_string())),
    })
}

/// Refuses several statements in one extended-protocol query, as
/// PostgreSQL does: parameters bind to one statement.
pub(super) fn one_statement(sql: &str) -> PgWireResult<()> {
    if strata_client::split::split_statements(sql).len() > 1 {
        return Err(user_error(
            "42601",
            "cannot insert multiple commands into a prepared statement".to_string(),
        ));
    }
    Ok(())
}

/// Every parameter of a portal, decoded.
pub(super) fn param_values(portal: &Portal<String>) -> PgWireResult<Vec<ScalarValue>> {
    (0..portal.parameter_len())
        .map(|i| param_value(portal, i))
        .collect()
}

/// Replaces `$1`, `$2`, … outside string literals, quoted identifiers and
/// comments with the given text. Only for markers the server makes (to count
/// a statement's parameters): client values are bound on the plan.
pub(super) fn bind_parameters(sql: &str, values: &[String]) -> Result<String, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // Copy the quoted text; a doubled quote stays inside.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == c {
                        if i + 1 < chars.len() && chars[i + 1] == c {
                            out.push(c);
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    out.push(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    out.push_str("*/");
                    i += 2;
                }
            }
            '$' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let n: usize = chars[i + 1..j]
                    .iter()
                    .collect::<String>()
                    .parse()
                    .map_err(|_| "bad parameter number".to_string())?;
                let v = n
                    .checked_sub(1)
                    .and_then(|k| values.get(k))
                    .ok_or_else(|| format!("there is no parameter ${n}"))?;
                out.push_str(v);
                i = j;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

pub(super) fn parameter_count(sql: &str) -> usize {
    let markers: Vec<String> = (1..=256).map(|n| format!("\u{0}{n}\u{0}")).collect();
    let bound = bind_parameters(sql, &markers).unwrap_or_default();
    (1..=256)
        .filter(|n| bound.contains(&format!("\u{0}{n}\u{0}")))
        .max()
        .unwrap_or(0)
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let db = database(client);
        let sql = &portal.statement.statement;
        if sql.trim().is_empty() {
            return Ok(Response::EmptyQuery);
        }
        one_statement(sql)?;
        if let Some(r) = self.read_preference_statement(client, sql)? {
            return Ok(r);
        }
        let query = self.query_for(client);
        if portal.parameter_len() == 0 {
            return self
                .run(&query, &db, sql, &portal.result_column_format)
                .await;
        }
        // Parameters are bound as values on the plan, never into the text.
        let values = param_values(portal)?;
        let started = std::time::Instant::now();
        let db = &db;
        let result = query
            .limited(false, |q| async move {
                q.execute_bound(db, sql, crate::sql::cast_binder(values))
                    .await
            })
            .await;
        crate::metrics::observe_request("pg_query", started, result.is_ok());
        response(result.map_err(pg_error)?, &portal.result_column_format, sql)
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let db = database(client);
        one_statement(&stmt.statement)?;
        // Parameters of undeclared type are described as text: the client
        // then sends text, which binding casts to the type the statement
        // needs.
        let count = parameter_count(&stmt.statement).max(stmt.parameter_types.len());
        let params = (0..count)
            .map(|i| {
                stmt.parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let sql = &stmt.statement;
        let fields = if count == 0 {
            self.describe_sql(&db, sql, &Format::UnifiedBinary).await?
        } else {
            // Planned with a NULL of the inferred type for each parameter.
            let nulls = crate::sql::cast_binder(vec![ScalarValue::Null; count]);
            let db = &db;
            self.query
                .limited(
                    false,
                    |q| async move { q.describe_bound(db, sql, nulls).await },
                )
                .await
                .map_err(pg_error)?
                .map(|s| fields(&s, &Format::UnifiedBinary))
                .unwrap_or_default()
        };
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let db = database(client);
        let sql = &portal.statement.statement;
        one_statement(sql)?;
        if portal.parameter_len() == 0 {
            let fields = self
                .describe_sql(&db, sql, &portal.result_column_format)
                .await?;
            return Ok(DescribePortalResponse::new(fields));
        }
        let values = param_values(portal)?;
        let db = &db;
        let schema = self
            .query
            .limited(false, |q| async move {
                q.describe_bound(db, sql, crate::sql::cast_binder(values))
                    .await
            })
            .await
            .map_err(pg_error)?;
        let fields = schema
            .map(|s| fields(&s, &portal.result_column_format))
            .unwrap_or_default();
        Ok(DescribePortalResponse::new(fields))
    }
}
