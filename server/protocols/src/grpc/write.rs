//! Converting HoraeDB-style series-oriented writes into Arrow batches.
//!
//! A `WriteTableRequest` names its tags and fields once and refers to them by
//! index; each series entry carries tag values and groups of (timestamp,
//! fields). Rows are built column by column straight into Arrow builders.

use std::collections::HashMap;

use arrow::{array::RecordBatch, datatypes::SchemaRef};
use strata_engine::schema::{ColumnSchema, ColumnType, TableSchema};
use strata_proto::storage::{value::Value as V, WriteTableRequest};

use crate::{
    error::{Error, Result},
    writer::columns::{BatchBuilder, ColumnBuilder},
};

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

/// Appends `v` to `b` by the write path's type rules; false when it does
/// not fit the column.
fn append(b: &mut ColumnBuilder, v: &V) -> bool {
    match v {
        V::Float64Value(x) => b.append_f64(*x),
        V::Float32Value(x) => b.append_f32(*x),
        V::Int64Value(x) | V::TimestampValue(x) => b.append_int(i128::from(*x), true),
        V::BoolValue(x) => b.append_bool(*x),
        V::StringValue(s) => b.append_str(s),
        V::VarbinaryValue(x) => b.append_bytes(x),
        _ => match as_i128(v) {
            Some(x) => b.append_int(x, false),
            None => false,
        },
    }
}

/// The schema of a table created by its first write: tags as given (string
/// tags unless the values say otherwise), fields typed by their first value,
/// and the timestamp in a column named `timestamp`.
pub fn schema_for_new_table(req: &WriteTableRequest) -> Result<TableSchema> {
    // Counted before a column is built: a request can name millions.
    let width = req.tag_names.len() + req.field_names.len() + 1;
    if width > strata_engine::schema::MAX_COLUMNS {
        return Err(strata_engine::schema::too_many_columns(width).into());
    }
    // The type of each name's first value, in one pass over the rows (the
    // first cell naming it decides, with a value or not).
    let mut tag_types: Vec<Option<Option<ColumnType>>> = vec![None; req.tag_names.len()];
    for t in req.entries.iter().flat_map(|e| &e.tags) {
        if let Some(slot @ None) = tag_types.get_mut(t.name_index as usize) {
            *slot = Some(
                t.value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                    .map(column_type_of),
            );
        }
    }
    let mut field_types: Vec<Option<Option<ColumnType>>> = vec![None; req.field_names.len()];
    for f in req
        .entries
        .iter()
        .flat_map(|e| &e.field_groups)
        .flat_map(|g| &g.fields)
    {
        if let Some(slot @ None) = field_types.get_mut(f.name_index as usize) {
            *slot = Some(
                f.value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                    .map(column_type_of),
            );
        }
    }
    let mut columns: Vec<ColumnSchema> = Vec::with_capacity(width);
    for (name, t) in req.tag_names.iter().zip(tag_types) {
        let t = t
            .flatten()
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
    for (name, t) in req.field_names.iter().zip(field_types) {
        columns.push(ColumnSchema {
            name: name.clone(),
            column_type: t.flatten().unwrap_or(ColumnType::Double),
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

/// Builds the rows of `req` in the columns of `table` (`schema`, whose
/// Arrow form is `arrow_schema`).
pub fn to_batch(
    table: &str,
    schema: &TableSchema,
    arrow_schema: SchemaRef,
    req: &WriteTableRequest,
    max_decoded: usize,
) -> Result<RecordBatch> {
    let invalid = |reason: String| {
        Error::InvalidArgument(format!("Invalid write to table {table}: {reason}"))
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
    let mut batch = BatchBuilder::new(schema, rows, max_decoded)?;
    let mut row_values: Vec<Option<&V>> = vec![None; schema.columns.len()];

    // One entry's tags, reset entry to entry by the columns the last one
    // set: an entry without rows costs its tags, not the table's width.
    let mut tag_values: Vec<Option<&V>> = vec![None; schema.columns.len()];
    let mut tags_set: Vec<usize> = Vec::new();
    for entry in &req.entries {
        for &col in &tags_set {
            tag_values[col] = None;
        }
        tags_set.clear();
        for tag in &entry.tags {
            let col = *tag_cols.get(tag.name_index as usize).ok_or_else(|| {
                invalid(format!("tag name index {} is out of range", tag.name_index))
            })?;
            tag_values[col] = tag.value.as_ref().and_then(|v| v.value.as_ref());
            tags_set.push(col);
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
            batch
                .append_row(
                    group.timestamp,
                    &row_values,
                    |b, v| append(b, v),
                    |v| value_type_name(v),
                )
                .map_err(invalid)?;
        }
    }
    batch
        .finish(arrow_schema)
        .map_err(|e| invalid(e.to_string()))
}
