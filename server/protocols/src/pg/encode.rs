//! Arrow to PostgreSQL: column types, text and binary values, command tags.

use super::user_error;
use std::sync::Arc;

use arrow::{
    array::{Array, ArrayRef, AsArray, RecordBatch},
    datatypes::{
        DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
        Int64Type, Schema, TimeUnit, TimestampMicrosecondType, UInt64Type,
    },
    util::display::{ArrayFormatter, FormatOptions},
};
use futures::stream;
use pgwire::{
    api::{
        portal::Format,
        results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag},
        Type,
    },
    error::{PgWireError, PgWireResult},
    messages::data::DataRow,
};
use rust_decimal::Decimal;

use crate::sql::Output;

/// The PostgreSQL type an Arrow column is sent as.
pub(super) fn pg_type(dt: &DataType) -> Type {
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

pub(super) fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
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
pub(super) fn canonical(col: &ArrayRef) -> PgWireResult<ArrayRef> {
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

pub(super) fn encode_batch(
    batch: &RecordBatch,
    schema: &Arc<Vec<FieldInfo>>,
    rows: &mut Vec<PgWireResult<DataRow>>,
) -> PgWireResult<()> {
    let cols = batch
        .columns()
        .iter()
        .map(canonical)
        .collect::<PgWireResult<Vec<_>>>()?;
    // Each column's type is matched once per batch, not once per value.
    let typed = cols
        .iter()
        .map(|c| Typed::of(c.as_ref()))
        .collect::<PgWireResult<Vec<_>>>()?;
    let mut encoder = DataRowEncoder::new(schema.clone());
    rows.reserve(batch.num_rows());
    for r in 0..batch.num_rows() {
        for col in &typed {
            col.encode(&mut encoder, r)?;
        }
        rows.push(Ok(encoder.take_row()));
    }
    Ok(())
}

/// A column of one of the types [`canonical`] leaves, downcast.
enum Typed<'a> {
    Bool(&'a arrow::array::BooleanArray),
    I16(&'a arrow::array::PrimitiveArray<Int16Type>),
    I32(&'a arrow::array::PrimitiveArray<Int32Type>),
    I64(&'a arrow::array::PrimitiveArray<Int64Type>),
    U64(&'a arrow::array::PrimitiveArray<UInt64Type>),
    Decimal(&'a arrow::array::PrimitiveArray<Decimal128Type>, i8),
    F32(&'a arrow::array::PrimitiveArray<Float32Type>),
    F64(&'a arrow::array::PrimitiveArray<Float64Type>),
    Utf8(&'a arrow::array::StringArray),
    Binary(&'a arrow::array::BinaryArray),
    Date(&'a arrow::array::PrimitiveArray<Date32Type>),
    /// With a time zone (`TIMESTAMPTZ`) when `bool`.
    Timestamp(
        &'a arrow::array::PrimitiveArray<TimestampMicrosecondType>,
        bool,
    ),
}

impl<'a> Typed<'a> {
    fn of(col: &'a dyn Array) -> PgWireResult<Self> {
        Ok(match col.data_type() {
            DataType::Boolean => Self::Bool(col.as_boolean()),
            DataType::Int16 => Self::I16(col.as_primitive()),
            DataType::Int32 => Self::I32(col.as_primitive()),
            DataType::Int64 => Self::I64(col.as_primitive()),
            DataType::UInt64 => Self::U64(col.as_primitive()),
            DataType::Decimal128(_, scale) => Self::Decimal(col.as_primitive(), *scale),
            DataType::Float32 => Self::F32(col.as_primitive()),
            DataType::Float64 => Self::F64(col.as_primitive()),
            DataType::Utf8 => Self::Utf8(col.as_string()),
            DataType::Binary => Self::Binary(col.as_binary()),
            DataType::Date32 => Self::Date(col.as_primitive()),
            DataType::Timestamp(_, tz) => Self::Timestamp(col.as_primitive(), tz.is_some()),
            other => {
                return Err(user_error(
                    "XX000",
                    format!("cannot send a column of type {other} over the PostgreSQL protocol"),
                ))
            }
        })
    }

    fn encode(&self, enc: &mut DataRowEncoder, r: usize) -> PgWireResult<()> {
        macro_rules! put {
            ($a:expr, $v:expr) => {
                enc.encode_field(&(if $a.is_null(r) { None } else { Some($v) }))
            };
        }
        match self {
            Self::Bool(a) => put!(a, a.value(r)),
            Self::I16(a) => put!(a, a.value(r)),
            Self::I32(a) => put!(a, a.value(r)),
            Self::I64(a) => put!(a, a.value(r)),
            Self::U64(a) => put!(a, Decimal::from(a.value(r))),
            Self::Decimal(a, scale) => {
                if a.is_null(r) {
                    return enc.encode_field(&None::<Decimal>);
                }
                let v = a.value(r);
                match Decimal::try_from_i128_with_scale(v, (*scale).max(0) as u32) {
                    Ok(d) => enc.encode_field(&d),
                    Err(_) => {
                        // Beyond rust_decimal's 28 digits: send the text.
                        let s = arrow::array::Decimal128Array::from(vec![v])
                            .with_precision_and_scale(38, *scale)
                            .map(|a| a.value_as_string(0))
                            .unwrap_or_default();
                        enc.encode_field(&s)
                    }
                }
            }
            Self::F32(a) => put!(a, a.value(r)),
            Self::F64(a) => put!(a, a.value(r)),
            Self::Utf8(a) => put!(a, a.value(r)),
            Self::Binary(a) => put!(a, a.value(r)),
            Self::Date(a) => enc.encode_field(
                &(if a.is_null(r) {
                    None
                } else {
                    a.value_as_date(r)
                }),
            ),
            Self::Timestamp(a, tz) => {
                let tz = *tz;
                enc.encode_field(
                    &(if a.is_null(r) {
                        None
                    } else {
                        a.value_as_datetime(r)
                    })
                    .map(|t| PgTimestamp { t, tz }),
                )
            }
        }
    }
}

/// A timestamp, sent exactly as pgwire sends a `NaiveDateTime` (`tz`:
/// a `DateTime<Utc>`), but formatted without parsing a chrono format
/// string per value when the session's DateStyle is ISO (the default).
#[derive(Debug)]
pub(super) struct PgTimestamp {
    pub(super) t: chrono::NaiveDateTime,
    pub(super) tz: bool,
}

impl pgwire::types::ToSqlText for PgTimestamp {
    fn to_sql_text(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
        format_options: &pgwire::types::format::FormatOptions,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use chrono::{Datelike, Timelike};
        let style = format_options
            .date_style
            .split_once(", ")
            .map_or(format_options.date_style.as_str(), |(s, _)| s)
            .trim();
        // pgwire reads an unknown style as ISO.
        let iso = !["sql", "german", "postgres"]
            .iter()
            .any(|s| style.eq_ignore_ascii_case(s));
        let t = self.t;
        let plain = if self.tz {
            *ty == Type::TIMESTAMPTZ
        } else {
            *ty == Type::TIMESTAMP
        };
        if !(iso && plain && (0..=9999).contains(&t.year())) {
            return if self.tz {
                t.and_utc().to_sql_text(ty, out, format_options)
            } else {
                t.to_sql_text(ty, out, format_options)
            };
        }
        // "%Y-%m-%d %H:%M:%S%.6f", then "+00" for UTC.
        let micros = t.nanosecond() / 1000;
        let mut b = *b"0000-00-00 00:00:00.000000+00";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, t.year() as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 6, micros);
        out.extend_from_slice(if self.tz { &b[..] } else { &b[..26] });
        Ok(postgres_types::IsNull::No)
    }
}

impl postgres_types::ToSql for PgTimestamp {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if self.tz {
            self.t.and_utc().to_sql(ty, out)
        } else {
            self.t.to_sql(ty, out)
        }
    }

    fn accepts(ty: &Type) -> bool {
        <chrono::NaiveDateTime as postgres_types::ToSql>::accepts(ty)
            || <chrono::DateTime<chrono::Utc> as postgres_types::ToSql>::accepts(ty)
    }

    postgres_types::to_sql_checked!();
}

/// Turns an output into a PostgreSQL response.
pub(super) fn response(output: Output, format: &Format, sql: &str) -> PgWireResult<Response> {
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
pub(super) fn command_tag(sql: &str) -> (String, bool) {
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

/// A one-row, one-column text answer (`SHOW name`).
pub(super) fn one_text_value(name: &str, value: &str) -> PgWireResult<Response> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        pgwire::api::results::FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(fields.clone());
    encoder.encode_field(&value)?;
    let row = encoder.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(vec![Ok::<DataRow, PgWireError>(row)]),
    )))
}
