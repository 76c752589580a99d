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
    let mut encoder = DataRowEncoder::new(schema.clone());
    for r in 0..batch.num_rows() {
        for col in &cols {
            encode_value(&mut encoder, col, r)?;
        }
        rows.push(Ok(encoder.take_row()));
    }
    Ok(())
}

pub(super) fn encode_value(enc: &mut DataRowEncoder, col: &ArrayRef, r: usize) -> PgWireResult<()> {
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
