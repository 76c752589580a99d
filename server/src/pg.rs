//! The PostgreSQL wire protocol (`--pg-addr`, default 127.0.0.1:5433), on
//! the `pgwire` crate, so that `psql`, `psycopg` and Grafana's PostgreSQL
//! data source can query Strata.
//!
//! - **Sessions.** Authentication is off: any user name is accepted. The
//!   connection's database name selects the Strata database (`public` when
//!   it names none or `postgres`).
//! - **Simple protocol.** Each statement of a query string runs through the
//!   same SQL front end as gRPC and HTTP, and gets its own response.
//! - **Extended protocol** (prepared statements). `$n` parameters are
//!   bound as values, never pasted into the SQL text: the statement is
//!   planned by DataFusion with its placeholders, each parameter is decoded
//!   (text or binary) by its declared type and cast to the type DataFusion
//!   inferred for its placeholder, and the plan's placeholders are replaced
//!   by those values. One statement per Parse; several are refused
//!   (SQLSTATE 42601). Describe plans the statement to report its columns
//!   without running it.
//! - **Session statements** that Strata has no use for are accepted and
//!   ignored: `SET`, `RESET`, `DISCARD`, `DEALLOCATE`, and transaction
//!   control (`BEGIN`, `COMMIT`, `ROLLBACK`): every statement commits on
//!   its own. `SHOW` of the usual PostgreSQL settings answers constants.
//! - **Types.** Arrow types map to PostgreSQL ones (see
//!   `docs/protocols/postgresql.md`), in text or binary format as the client
//!   asks.

use std::{net::SocketAddr, sync::Arc};

use arrow::{
    array::{Array, ArrayRef, AsArray, RecordBatch},
    datatypes::{
        DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
        Int64Type, Schema, TimeUnit, TimestampMicrosecondType, UInt64Type,
    },
    util::display::{ArrayFormatter, FormatOptions},
};
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::common::ScalarValue;
use futures::stream;
use pgwire::{
    api::{
        auth::noop::NoopStartupHandler,
        portal::{Format, Portal},
        query::{ExtendedQueryHandler, SimpleQueryHandler},
        results::{
            DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo,
            QueryResponse, Response, Tag,
        },
        stmt::{NoopQueryParser, StoredStatement},
        ClientInfo, PgWireServerHandlers, Type,
    },
    error::{ErrorInfo, PgWireError, PgWireResult},
    messages::data::DataRow,
};
use rust_decimal::Decimal;
use strata_engine::{catalog::DEFAULT_DATABASE, ErrorKind};
use tokio::net::TcpListener;

use crate::{
    error::Error,
    sql::{Output, QueryEngine},
};

/// The PostgreSQL version Strata reports (`server_version`, `SHOW`).
pub use crate::sql::pg_compat::SERVER_VERSION;

/// One handler for all connections; per-connection state is the client's
/// metadata (its database).
pub struct PgHandler {
    query: QueryEngine,
    parser: Arc<NoopQueryParser>,
}

#[async_trait]
impl NoopStartupHandler for PgHandler {
    /// Refuses a connection to a database that does not exist, as
    /// PostgreSQL does.
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<pgwire::messages::PgWireBackendMessage> + Unpin + Send,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        let db = database(client);
        let engine = self.query.engine();
        if !engine.database_exists(&db) {
            if let Some(c) = self.query.cluster() {
                let _ = c.refresh_catalog().await;
            }
        }
        if engine.database_exists(&db) {
            Ok(())
        } else {
            Err(user_error(
                "3D000",
                format!("database \"{db}\" does not exist"),
            ))
        }
    }
}

impl PgWireServerHandlers for PgHandler {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone_handler())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone_handler())
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(self.clone_handler())
    }
}

impl PgHandler {
    pub fn new(query: QueryEngine) -> Self {
        Self {
            query,
            parser: Arc::new(NoopQueryParser::new()),
        }
    }

    fn clone_handler(&self) -> Self {
        Self {
            query: self.query.clone(),
            parser: self.parser.clone(),
        }
    }
}

/// Accepts connections until `stop` fires; each runs on its own task.
pub async fn serve(
    listener: TcpListener,
    query: QueryEngine,
    limits: crate::pg_conn::PgLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handler = Arc::new(PgHandler::new(query));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handler = handler.clone();
                    let limits = limits.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::pg_conn::serve_connection(socket, handler, limits).await {
                            tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a PostgreSQL connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Binds the PostgreSQL listener.
pub async fn bind(addr: SocketAddr) -> crate::error::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("binding PostgreSQL to {addr}: {e}")))
}

/// The Strata database a connection uses.
fn database<C: ClientInfo>(client: &C) -> String {
    match client.metadata().get("database").map(String::as_str) {
        None | Some("") | Some("postgres") => DEFAULT_DATABASE.to_string(),
        Some(db) => db.to_string(),
    }
}

/// A Strata error as a PostgreSQL error with a fitting SQLSTATE.
fn pg_error(e: Error) -> PgWireError {
    let code = match e.kind() {
        _ if matches!(e, Error::TooComplex(_)) => "54001",
        ErrorKind::InvalidArgument => "42601",
        ErrorKind::TableNotFound => "42P01",
        ErrorKind::DatabaseNotFound => "3D000",
        ErrorKind::AlreadyExists => "42P07",
        ErrorKind::Unsupported => "0A000",
        ErrorKind::Unavailable | ErrorKind::ShardMoving | ErrorKind::NotLeader => "57P03",
        // out_of_memory, query_canceled (as for statement_timeout) and
        // insufficient_resources.
        ErrorKind::ResourcesExhausted => "53200",
        ErrorKind::Timeout => "57014",
        ErrorKind::Overloaded => "53000",
        ErrorKind::Internal => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        e.to_string(),
    )))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// Statements answered here rather than by the SQL front end.
fn session_statement(sql: &str) -> Option<Response> {
    let text = sql.trim().trim_end_matches(';').trim();
    let lower = text.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let first = words.next()?;
    Some(match first {
        "begin" | "start" => Response::TransactionStart(Tag::new("BEGIN")),
        "commit" | "end" => Response::TransactionEnd(Tag::new("COMMIT")),
        "rollback" | "abort" => Response::TransactionEnd(Tag::new("ROLLBACK")),
        "set" => Response::Execution(Tag::new("SET")),
        "reset" => Response::Execution(Tag::new("RESET")),
        "discard" => Response::Execution(Tag::new("DISCARD ALL")),
        "deallocate" => Response::Execution(Tag::new("DEALLOCATE")),
        "show" => {
            let name = lower["show".len()..].trim().to_string();
            let value = crate::sql::pg_compat::pg_setting(&name)?;
            let fields = Arc::new(vec![FieldInfo::new(
                name.replace(' ', "_"),
                None,
                None,
                Type::TEXT,
                pgwire::api::results::FieldFormat::Text,
            )]);
            let mut encoder = DataRowEncoder::new(fields.clone());
            encoder.encode_field(&value).ok()?;
            let row = encoder.take_row();
            Response::Query(QueryResponse::new(
                fields,
                stream::iter(vec![Ok::<DataRow, PgWireError>(row)]),
            ))
        }
        _ => return None,
    })
}

/// The PostgreSQL type an Arrow column is sent as.
fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(_, _) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        _ => Type::TEXT,
    }
}

fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

/// A column in the Arrow type its PostgreSQL type is encoded from.
fn canonical(col: &ArrayRef) -> PgWireResult<ArrayRef> {
    let target = match col.data_type() {
        DataType::Int8 | DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Date64 => DataType::Date32,
        DataType::Boolean
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(_, _)
        | DataType::Date32
        | DataType::Utf8 => return Ok(col.clone()),
        // A NULL without a type (an untyped NULL parameter): text NULLs.
        DataType::Null => return Ok(arrow::array::new_null_array(&DataType::Utf8, col.len())),
        _ => DataType::Utf8,
    };
    let castable = matches!(
        col.data_type(),
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
    );
    if target == DataType::Utf8 && !castable {
        // Lists, structs, intervals…: their display text.
        let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let strings: arrow::array::StringArray = (0..col.len())
            .map(|i| (!col.is_null(i)).then(|| fmt.value(i).to_string()))
            .collect();
        return Ok(Arc::new(strings));
    }
    arrow::compute::cast(col, &target).map_err(|e| PgWireError::ApiError(Box::new(e)))
}

fn encode_batch(
    batch: &RecordBatch,
    schema: &Arc<Vec<FieldInfo>>,
    rows: &mut Vec<PgWireResult<DataRow>>,
) -> PgWireResult<()> {
    let cols = batch
        .columns()
        .iter()
        .map(canonical)
        .collect::<PgWireResult<Vec<_>>>()?;
    let mut encoder = DataRowEncoder::new(schema.clone());
    for r in 0..batch.num_rows() {
        for col in &cols {
            encode_value(&mut encoder, col, r)?;
        }
        rows.push(Ok(encoder.take_row()));
    }
    Ok(())
}

fn encode_value(enc: &mut DataRowEncoder, col: &ArrayRef, r: usize) -> PgWireResult<()> {
    let null = col.is_null(r);
    macro_rules! put {
        ($v:expr) => {
            enc.encode_field(&(if null { None } else { Some($v) }))
        };
    }
    match col.data_type() {
        DataType::Boolean => put!(col.as_boolean().value(r)),
        DataType::Int16 => put!(col.as_primitive::<Int16Type>().value(r)),
        DataType::Int32 => put!(col.as_primitive::<Int32Type>().value(r)),
        DataType::Int64 => put!(col.as_primitive::<Int64Type>().value(r)),
        DataType::UInt64 => put!(Decimal::from(col.as_primitive::<UInt64Type>().value(r))),
        DataType::Decimal128(_, scale) => {
            let v = col.as_primitive::<Decimal128Type>().value(r);
            let d = Decimal::try_from_i128_with_scale(v, (*scale).max(0) as u32).ok();
            match d {
                Some(d) => put!(d),
                None => {
                    // Beyond rust_decimal's 28 digits: send the text.
                    let s = arrow::array::Decimal128Array::from(vec![v])
                        .with_precision_and_scale(38, *scale)
                        .map(|a| a.value_as_string(0))
                        .unwrap_or_default();
                    enc.encode_field(&(if null { None } else { Some(s) }))
                }
            }
        }
        DataType::Float32 => put!(col.as_primitive::<Float32Type>().value(r)),
        DataType::Float64 => put!(col.as_primitive::<Float64Type>().value(r)),
        DataType::Utf8 => put!(col.as_string::<i32>().value(r).to_string()),
        DataType::Binary => put!(col.as_binary::<i32>().value(r).to_vec()),
        DataType::Date32 => {
            let d = col.as_primitive::<Date32Type>().value_as_date(r);
            enc.encode_field(&(if null { None } else { d }))
        }
        DataType::Timestamp(_, None) => {
            let t = col
                .as_primitive::<TimestampMicrosecondType>()
                .value_as_datetime(r);
            enc.encode_field(&(if null { None } else { t }))
        }
        DataType::Timestamp(_, Some(_)) => {
            let t = col
                .as_primitive::<TimestampMicrosecondType>()
                .value_as_datetime(r)
                .map(|n| n.and_utc());
            enc.encode_field(&(if null { None } else { t }))
        }
        other => Err(user_error(
            "XX000",
            format!("cannot send a column of type {other} over the PostgreSQL protocol"),
        )),
    }
}

/// Turns an output into a PostgreSQL response.
fn response(output: Output, format: &Format, sql: &str) -> PgWireResult<Response> {
    match output {
        Output::AffectedRows(n) => {
            let (tag, rows) = command_tag(sql);
            let tag = Tag::new(&tag);
            Ok(Response::Execution(if rows {
                tag.with_rows(usize::try_from(n).unwrap_or(usize::MAX))
            } else {
                tag
            }))
        }
        Output::Rows { schema, batches } => {
            let fields = Arc::new(fields(&schema, format));
            let mut rows = Vec::new();
            for b in &batches {
                encode_batch(b, &fields, &mut rows)?;
            }
            Ok(Response::Query(QueryResponse::new(
                fields,
                stream::iter(rows),
            )))
        }
    }
}

/// The command tag PostgreSQL clients expect for a statement, and whether
/// it carries a row count.
fn command_tag(sql: &str) -> (String, bool) {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    match first {
        "INSERT" => ("INSERT 0".to_string(), true),
        "DELETE" | "UPDATE" => (first.to_string(), true),
        "CREATE" | "DROP" | "ALTER" => (words.join(" "), false),
        "" => ("OK".to_string(), false),
        other => (other.to_string(), false),
    }
}

/// Replaces `current_database()` and `current_schema()` (a Strata database
/// is a schema in DataFusion's catalog) with the connection's database.
fn session_functions(sql: &str, db: &str) -> String {
    let lit = format!("'{}'", db.replace('\'', "''"));
    let mut out = sql.to_string();
    for f in [
        "current_database()",
        "current_schema()",
        "CURRENT_DATABASE()",
        "CURRENT_SCHEMA()",
    ] {
        out = out.replace(f, &lit);
    }
    out
}

impl PgHandler {
    async fn run(&self, db: &str, sql: &str, format: &Format) -> PgWireResult<Response> {
        if let Some(r) = session_statement(sql) {
            return Ok(r);
        }
        let sql = &session_functions(sql, db);
        let started = std::time::Instant::now();
        let result = self
            .query
            .limited(false, |q| async move {
                let output = q.execute(db, sql).await?;
                // A forwarded query with no rows comes back without its
                // columns.
                Ok(match output {
                    Output::Rows { schema, batches }
                        if schema.fields().is_empty() && batches.is_empty() =>
                    {
                        match q.describe(db, sql).await {
                            Ok(Some(schema)) => Output::Rows { schema, batches },
                            _ => Output::Rows { schema, batches },
                        }
                    }
                    other => other,
                })
            })
            .await;
        crate::metrics::observe_request("pg_query", started, result.is_ok());
        let output = result.map_err(pg_error)?;
        response(output, format, sql)
    }

    async fn describe_sql(
        &self,
        db: &str,
        sql: &str,
        format: &Format,
    ) -> PgWireResult<Vec<FieldInfo>> {
        if session_statement(sql).is_some() {
            let text = sql.trim().to_ascii_lowercase();
            if let Some(name) = text.strip_prefix("show") {
                let name = name.trim().trim_end_matches(';').trim().replace(' ', "_");
                return Ok(vec![FieldInfo::new(
                    name,
                    None,
                    None,
                    Type::TEXT,
                    format.format_for(0),
                )]);
            }
            return Ok(Vec::new());
        }
        let sql = session_functions(sql, db);
        match self
            .query
            .limited(false, |q| async move { q.describe(db, &sql).await })
            .await
            .map_err(pg_error)?
        {
            Some(schema) => Ok(fields(&schema, format)),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let db = database(client);
        let statements = strata_client::split::split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            // PostgreSQL stops at the first failing statement.
            match self.run(&db, &s, &Format::UnifiedText).await {
                Ok(r) => out.push(r),
                Err(PgWireError::UserError(info)) => {
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Decodes parameter `i` of a portal into a value of its declared type:
/// text or binary format, as the client sent it. Parameters of undeclared
/// type (and text types) become strings, which binding casts to the type
/// the statement needs. Values never become SQL text.
fn param_value(portal: &Portal<String>, i: usize) -> PgWireResult<ScalarValue> {
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
fn one_statement(sql: &str) -> PgWireResult<()> {
    if strata_client::split::split_statements(sql).len() > 1 {
        return Err(user_error(
            "42601",
            "cannot insert multiple commands into a prepared statement".to_string(),
        ));
    }
    Ok(())
}

/// Every parameter of a portal, decoded.
fn param_values(portal: &Portal<String>) -> PgWireResult<Vec<ScalarValue>> {
    (0..portal.parameter_len())
        .map(|i| param_value(portal, i))
        .collect()
}

/// Replaces `$1`, `$2`, … outside string literals, quoted identifiers and
/// comments with the given text. Only for markers the server makes (to count
/// a statement's parameters): client values are bound on the plan.
fn bind_parameters(sql: &str, values: &[String]) -> Result<String, String> {
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

fn parameter_count(sql: &str) -> usize {
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
        if portal.parameter_len() == 0 {
            return self.run(&db, sql, &portal.result_column_format).await;
        }
        // Parameters are bound as values on the plan, never into the text.
        let values = param_values(portal)?;
        let sql = &session_functions(sql, &db);
        let started = std::time::Instant::now();
        let db = &db;
        let result = self
            .query
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
            let (db, sql) = (&db, &session_functions(sql, &db));
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
        let (db, sql) = (&db, &session_functions(sql, &db));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parameters_are_bound_outside_quotes_and_comments() {
        let v = vec!["42".to_string(), "'it''s'".to_string()];
        assert_eq!(
            bind_parameters("SELECT * FROM t WHERE a = $1 AND b = $2", &v).unwrap(),
            "SELECT * FROM t WHERE a = 42 AND b = 'it''s'"
        );
        assert_eq!(
            bind_parameters("SELECT '$1', \"$2\" -- $1\n, $1 /* $2 */", &v).unwrap(),
            "SELECT '$1', \"$2\" -- $1\n, 42 /* $2 */"
        );
        assert!(bind_parameters("SELECT $3", &v).is_err());
        assert_eq!(parameter_count("SELECT $1, $2, '$5'"), 2);
        assert_eq!(parameter_count("SELECT 1"), 0);
    }

    #[test]
    fn session_statements_are_answered_here() {
        assert!(matches!(
            session_statement("BEGIN"),
            Some(Response::TransactionStart(_))
        ));
        assert!(matches!(
            session_statement("set extra_float_digits = 3"),
            Some(Response::Execution(_))
        ));
        assert!(matches!(
            session_statement("SHOW transaction isolation level"),
            Some(Response::Query(_))
        ));
        // Strata's own SHOW statements go to the SQL front end.
        assert!(session_statement("SHOW TABLES").is_none());
        assert!(session_statement("SELECT 1").is_none());
    }

    #[test]
    fn arrow_types_map_to_postgres_types() {
        assert_eq!(pg_type(&DataType::Int64), Type::INT8);
        assert_eq!(pg_type(&DataType::UInt64), Type::NUMERIC);
        assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
        assert_eq!(
            pg_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            Type::TIMESTAMP
        );
        assert_eq!(pg_type(&DataType::Float64), Type::FLOAT8);
    }
}
