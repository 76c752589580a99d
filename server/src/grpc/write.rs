//! Converting HoraeDB-style series-oriented writes into Arrow batches.
//!
//! A `WriteTableRequest` names its tags and fields once and refers to them by
//! index; each series entry carries tag values and groups of (timestamp,
//! fields). Rows are built column by column straight into Arrow builders.

use std::{collections::HashMap, sync::Arc};

use arrow::{
    array::{
        ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder,
        Int16Builder, Int32Builder, Int64Builder, Int8Builder, RecordBatch, StringBuilder,
        TimestampMillisecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
    },
    datatypes::SchemaRef,
};
use strata_engine::{
    schema::{ColumnSchema, ColumnType, TableSchema},
    table::Table,
};
use strata_proto::storage::{value::Value as V, WriteTableRequest};

use crate::error::{Error, Result};

fn value_type_name(v: &V) -> &'static str {
    match v {
        V::Float64Value(_) => "double",
        V::StringValue(_) => "string",
        V::Int64Value(_) => "int64",
        V::Float32Value(_) => "float",
        V::Int32Value(_) => "int32",
        V::Int16Value(_) => "int16",
        V::Int8Value(_) => "int8",
        V::BoolValue(_) => "boolean",
        V::Uint64Value(_) => "uint64",
        V::Uint32Value(_) => "uint32",
        V::Uint16Value(_) => "uint16",
        V::Uint8Value(_) => "uint8",
        V::TimestampValue(_) => "timestamp",
        V::VarbinaryValue(_) => "varbinary",
    }
}

/// The column type a value creates when a table is created by a write.
pub fn column_type_of(v: &V) -> ColumnType {
    match v {
        V::Float64Value(_) => ColumnType::Double,
        V::StringValue(_) => ColumnType::String,
        V::Int64Value(_) => ColumnType::Int64,
        V::Float32Value(_) => ColumnType::Float,
        V::Int32Value(_) => ColumnType::Int32,
        V::Int16Value(_) => ColumnType::Int16,
        V::Int8Value(_) => ColumnType::Int8,
        V::BoolValue(_) => ColumnType::Boolean,
        V::Uint64Value(_) => ColumnType::UInt64,
        V::Uint32Value(_) => ColumnType::UInt32,
        V::Uint16Value(_) => ColumnType::UInt16,
        V::Uint8Value(_) => ColumnType::UInt8,
        V::TimestampValue(_) => ColumnType::Timestamp,
        V::VarbinaryValue(_) => ColumnType::Varbinary,
    }
}

/// Integer value of any integer-like variant.
fn as_i128(v: &V) -> Option<i128> {
    Some(match v {
        V::Int64Value(x) | V::TimestampValue(x) => i128::from(*x),
        V::Int32Value(x) | V::Int16Value(x) | V::Int8Value(x) => i128::from(*x),
        V::Uint64Value(x) => i128::from(*x),
        V::Uint32Value(x) | V::Uint16Value(x) | V::Uint8Value(x) => i128::from(*x),
        _ => return None,
    })
}

enum Builder {
    Ts(TimestampMillisecondBuilder),
    F64(Float64Builder),
    F32(Float32Builder),
    I64(Int64Builder),
    I32(Int32Builder),
    I16(Int16Builder),
    I8(Int8Builder),
    U64(UInt64Builder),
    U32(UInt32Builder),
    U16(UInt16Builder),
    U8(UInt8Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
}

/// The most rows a column builder is sized for up front: the row count
/// comes from the request, and one small message can declare many empty
/// rows per column of a wide table.
const MAX_PRESIZED_ROWS: usize = 8192;

impl Builder {
    fn new(t: ColumnType, rows: usize) -> Self {
        let rows = rows.min(MAX_PRESIZED_ROWS);
        match t {
            ColumnType::Timestamp => Builder::Ts(TimestampMillisecondBuilder::with_capacity(rows)),
            ColumnType::Double => Builder::F64(Float64Builder::with_capacity(rows)),
            ColumnType::Float => Builder::F32(Float32Builder::with_capacity(rows)),
            ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(rows)),
            ColumnType::Int32 => Builder::I32(Int32Builder::with_capacity(rows)),
            ColumnType::Int16 => Builder::I16(Int16Builder::with_capacity(rows)),
            ColumnType::Int8 => Builder::I8(Int8Builder::with_capacity(rows)),
            ColumnType::UInt64 => Builder::U64(UInt64Builder::with_capacity(rows)),
            ColumnType::UInt32 => Builder::U32(UInt32Builder::with_capacity(rows)),
            ColumnType::UInt16 => Builder::U16(UInt16Builder::with_capacity(rows)),
            ColumnType::UInt8 => Builder::U8(UInt8Builder::with_capacity(rows)),
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::String => Builder::Str(StringBuilder::with_capacity(rows, rows * 8)),
            ColumnType::Varbinary => Builder::Bin(BinaryBuilder::with_capacity(rows, rows * 8)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Ts(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I8(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::U32(b) => b.append_null(),
            Builder::U16(b) => b.append_null(),
            Builder::U8(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::Bin(b) => b.append_null(),
        }
    }

    /// Appends `v`, converting it when no precision is lost. Returns false
    /// when the value does not fit the column.
    fn append(&mut self, v: &V) -> bool {
        macro_rules! int {
            ($b:expr, $t:ty) => {
                match as_i128(v).and_then(|x| <$t>::try_from(x).ok()) {
                    Some(x) => {
                        $b.append_value(x);
                        true
                    }
                    None => false,
                }
            };
        }
        match self {
            Builder::Ts(b) => match v {
                V::TimestampValue(x) | V::Int64Value(x) => {
                    b.append_value(*x);
                    true
                }
                _ => false,
            },
            Builder::F64(b) => match v {
                V::Float64Value(x) => {
                    b.append_value(*x);
                    true
                }
                V::Float32Value(x) => {
                    b.append_value(f64::from(*x));
                    true
                }
                _ => match as_i128(v) {
                    Some(x) if x.unsigned_abs() < (1u128 << 53) => {
                        b.append_value(x as f64);
                        true
                    }
                    _ => false,
                },
            },
            Builder::F32(b) => match v {
                V::Float32Value(x) => {
                    b.append_value(*x);
                    true
                }
                _ => false,
            },
            Builder::I64(b) => int!(b, i64),
            Builder::I32(b) => int!(b, i32),
            Builder::I16(b) => int!(b, i16),
            Builder::I8(b) => int!(b, i8),
            Builder::U64(b) => int!(b, u64),
            Builder::U32(b) => int!(b, u32),
            Builder::U16(b) => int!(b, u16),
            Builder::U8(b) => int!(b, u8),
            Builder::Bool(b) => match v {
                V::BoolValue(x) => {
                    b.append_value(*x);
                    true
                }
                _ => false,
            },
            Builder::Str(b) => match v {
                V::StringValue(s) => {
                    b.append_value(s);
                    true
                }
                _ => false,
            },
            Builder::Bin(b) => match v {
                V::VarbinaryValue(x) => {
                    b.append_value(x);
                    true
                }
                V::StringValue(s) => {
                    b.append_value(s.as_bytes());
                    true
                }
                _ => false,
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Builder::Ts(b) => b.len(),
            Builder::F64(b) => b.len(),
            Builder::F32(b) => b.len(),
            Builder::I64(b) => b.len(),
            Builder::I32(b) => b.len(),
            Builder::I16(b) => b.len(),
            Builder::I8(b) => b.len(),
            Builder::U64(b) => b.len(),
            Builder::U32(b) => b.len(),
            Builder::U16(b) => b.len(),
            Builder::U8(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::Bin(b) => b.len(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I8(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::U32(b) => Arc::new(b.finish()),
            Builder::U16(b) => Arc::new(b.finish()),
            Builder::U8(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bin(b) => Arc::new(b.finish()),
        }
    }
}

/// The schema of a table created by its first write: tags as given (string
/// tags unless the values say otherwise), fields typed by their first value,
/// and the timestamp in a column named `timestamp`.
pub fn schema_for_new_table(req: &WriteTableRequest) -> Result<TableSchema> {
    let mut columns: Vec<ColumnSchema> = Vec::new();
    for (i, name) in req.tag_names.iter().enumerate() {
        let t = req
            .entries
            .iter()
            .flat_map(|e| &e.tags)
            .find(|t| t.name_index as usize == i)
            .and_then(|t| t.value.as_ref()?.value.as_ref())
            .map(column_type_of)
            .filter(|t| t.is_key_type())
            .unwrap_or(ColumnType::String);
        columns.push(ColumnSchema {
            name: name.clone(),
            column_type: t,
            is_tag: true,
            nullable: true,
            comment: String::new(),
        });
    }
    for (i, name) in req.field_names.iter().enumerate() {
        let t = req
            .entries
            .iter()
            .flat_map(|e| &e.field_groups)
            .flat_map(|g| &g.fields)
            .find(|f| f.name_index as usize == i)
            .and_then(|f| f.value.as_ref()?.value.as_ref())
            .map(column_type_of)
            .unwrap_or(ColumnType::Double);
        columns.push(ColumnSchema {
            name: name.clone(),
            column_type: t,
            is_tag: false,
            nullable: true,
            comment: String::new(),
        });
    }
    let ts = if columns.iter().any(|c| c.name == "timestamp") {
        "__timestamp"
    } else {
        "timestamp"
    };
    columns.push(ColumnSchema {
        name: ts.to_string(),
        column_type: ColumnType::Timestamp,
        is_tag: false,
        nullable: false,
        comment: String::new(),
    });
    Ok(TableSchema::try_new(columns, ts, &[])?)
}

/// Builds the rows of `req` in `table`'s schema.
pub fn to_batch(table: &Table, req: &WriteTableRequest) -> Result<RecordBatch> {
    let meta = table.meta();
    let schema = meta.schema();
    let arrow_schema: SchemaRef = meta.arrow_schema.clone();
    let invalid = |reason: String| {
        Error::InvalidArgument(format!("Invalid write to table {}: {reason}", table.name()))
    };
    let index: HashMap<&str, usize> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let resolve = |names: &[String]| -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                index
                    .get(n.as_str())
                    .copied()
                    .ok_or_else(|| invalid(format!("column {n} does not exist")))
            })
            .collect()
    };
    let tag_cols = resolve(&req.tag_names)?;
    let field_cols = resolve(&req.field_names)?;

    let rows: usize = req.entries.iter().map(|e| e.field_groups.len()).sum();
    let mut builders: Vec<Builder> = schema
        .columns
        .iter()
        .map(|c| Builder::new(c.column_type, rows))
        .collect();
    let ts_col = schema.timestamp_index;
    let mut row_values: Vec<Option<&V>> = vec![None; schema.columns.len()];

    for entry in &req.entries {
        let mut tag_values: Vec<Option<&V>> = vec![None; schema.columns.len()];
        for tag in &entry.tags {
            let col = *tag_cols.get(tag.name_index as usize).ok_or_else(|| {
                invalid(format!("tag name index {} is out of range", tag.name_index))
            })?;
            tag_values[col] = tag.value.as_ref().and_then(|v| v.value.as_ref());
        }
        for group in &entry.field_groups {
            row_values.clone_from(&tag_values);
            for field in &group.fields {
                let col = *field_cols.get(field.name_index as usize).ok_or_else(|| {
                    invalid(format!(
                        "field name index {} is out of range",
                        field.name_index
                    ))
                })?;
                row_values[col] = field.value.as_ref().and_then(|v| v.value.as_ref());
            }
            for (i, builder) in builders.iter_mut().enumerate() {
                if i == ts_col {
                    if let Builder::Ts(b) = builder {
                        b.append_value(group.timestamp);
                    }
                    continue;
                }
                let col = &schema.columns[i];
                match row_values[i] {
                    Some(v) => {
                        if !builder.append(v) {
                            return Err(invalid(format!(
                                "column {} expects {}, got a {} value",
                                col.name,
                                col.column_type,
                                value_type_name(v)
                            )));
                        }
                    }
                    None if !col.nullable => {
                        return Err(invalid(format!("column {} cannot be null", col.name)));
                    }
                    None => builder.append_null(),
                }
            }
        }
    }
    debug_assert!(builders.iter().all(|b| b.len() == rows));
    let columns: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
    RecordBatch::try_new(arrow_schema, columns).map_err(|e| invalid(e.to_string()))
}
