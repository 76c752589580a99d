//! Table schemas: one `TIMESTAMP KEY` column, `TAG` columns and fields.
//!
//! The primary key is (tags…, timestamp) unless the table declares an
//! explicit `PRIMARY KEY`, which must include the timestamp key. Rows are
//! sorted by the primary key in SSTs, and in `OVERWRITE` mode the newest
//! write of a primary key wins.

use std::{fmt, sync::Arc};

use arrow::{
    array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
};
use serde::{Deserialize, Serialize};
use strata_sst::SEQ_COLUMN;

use crate::{Error, Result};

/// The most columns a table may have (PostgreSQL allows 1,600). Writes
/// create tables and add columns from what a request names, and a row is
/// built in every column of its table: the bound keeps what one request
/// costs bounded.
pub const MAX_COLUMNS: usize = 4096;

/// The error for a table of `n` columns.
pub fn too_many_columns(n: usize) -> Error {
    Error::InvalidSchema(format!(
        "a table may have at most {MAX_COLUMNS} columns, not {n}"
    ))
}

/// The column types Strata stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    Timestamp,
    Double,
    Float,
    Int64,
    Int32,
    Int16,
    Int8,
    UInt64,
    UInt32,
    UInt16,
    UInt8,
    Boolean,
    String,
    Varbinary,
}

impl ColumnType {
    /// Parses a SQL type name, case-insensitively. Accepts HoraeDB's names and
    /// the common SQL synonyms.
    pub fn from_sql_name(name: &str) -> Option<Self> {
        let t = match name.to_ascii_lowercase().as_str() {
            "timestamp" => ColumnType::Timestamp,
            "double" | "float64" | "double precision" => ColumnType::Double,
            "float" | "float32" | "real" => ColumnType::Float,
            "bigint" | "int64" => ColumnType::Int64,
            "int" | "integer" | "int32" => ColumnType::Int32,
            "smallint" | "int16" => ColumnType::Int16,
            "tinyint" | "int8" => ColumnType::Int8,
            "uint64" | "bigint unsigned" => ColumnType::UInt64,
            "uint32" | "int unsigned" => ColumnType::UInt32,
            "uint16" | "smallint unsigned" => ColumnType::UInt16,
            "uint8" | "tinyint unsigned" => ColumnType::UInt8,
            "boolean" | "bool" => ColumnType::Boolean,
            "string" | "varchar" | "text" => ColumnType::String,
            "varbinary" | "binary" | "bytes" | "bytea" => ColumnType::Varbinary,
            _ => return None,
        };
        Some(t)
    }

    /// The canonical SQL name, as `DESCRIBE` and `SHOW CREATE TABLE` print it.
    pub fn sql_name(&self) -> &'static str {
        match self {
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Double => "DOUBLE",
            ColumnType::Float => "FLOAT",
            ColumnType::Int64 => "BIGINT",
            ColumnType::Int32 => "INT",
            ColumnType::Int16 => "SMALLINT",
            ColumnType::Int8 => "TINYINT",
            ColumnType::UInt64 => "UINT64",
            ColumnType::UInt32 => "UINT32",
            ColumnType::UInt16 => "UINT16",
            ColumnType::UInt8 => "UINT8",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::String => "STRING",
            ColumnType::Varbinary => "VARBINARY",
        }
    }

    pub fn to_arrow(&self) -> DataType {
        match self {
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            ColumnType::Double => DataType::Float64,
            ColumnType::Float => DataType::Float32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int8 => DataType::Int8,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::UInt32 => DataType::UInt32,
            ColumnType::UInt16 => DataType::UInt16,
            ColumnType::UInt8 => DataType::UInt8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::String => DataType::Utf8,
            ColumnType::Varbinary => DataType::Binary,
        }
    }

    /// Whether the type may be part of a primary key (floats may not: their
    /// equality is not a good identity).
    pub fn is_key_type(&self) -> bool {
        !matches!(self, ColumnType::Double | ColumnType::Float)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    pub column_type: ColumnType,
    pub is_tag: bool,
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

/// The schema of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub columns: Vec<ColumnSchema>,
    /// Index of the `TIMESTAMP KEY` column.
    pub timestamp_index: usize,
    /// Indices of the primary key columns, in key order.
    pub primary_key: Vec<usize>,
    /// Bumped by every schema change.
    pub version: u32,
}

impl TableSchema {
    /// Builds and validates a schema. `primary_key` names the key columns; when
    /// empty the key is (tags…, timestamp).
    pub fn try_new(
        columns: Vec<ColumnSchema>,
        timestamp_key: &str,
        primary_key: &[String],
    ) -> Result<Self> {
        if columns.is_empty() {
            return Err(Error::InvalidSchema(
                "a table needs at least one column".into(),
            ));
        }
        if columns.len() > MAX_COLUMNS {
            return Err(too_many_columns(columns.len()));
        }
        for (i, c) in columns.iter().enumerate() {
            if c.name.is_empty() {
                return Err(Error::InvalidSchema(
                    "column names must not be empty".into(),
                ));
            }
            if c.name == SEQ_COLUMN {
                return Err(Error::InvalidSchema(format!(
                    "column name {SEQ_COLUMN} is reserved"
                )));
            }
            if columns[..i].iter().any(|o| o.name == c.name) {
                return Err(Error::InvalidSchema(format!("duplicate column {}", c.name)));
            }
            if c.is_tag && !c.column_type.is_key_type() {
                return Err(Error::InvalidSchema(format!(
                    "tag column {} cannot be of type {}",
                    c.name, c.column_type
                )));
            }
        }
        let timestamp_index = columns
            .iter()
            .position(|c| c.name == timestamp_key)
            .ok_or_else(|| {
                Error::InvalidSchema(format!(
                    "timestamp key column {timestamp_key} is not defined"
                ))
            })?;
        if columns[timestamp_index].column_type != ColumnType::Timestamp {
            return Err(Error::InvalidSchema(format!(
                "timestamp key column {timestamp_key} must be of type TIMESTAMP, not {}",
                columns[timestamp_index].column_type
            )));
        }
        if columns[timestamp_index].is_tag {
            return Err(Error::InvalidSchema(format!(
                "timestamp key column {timestamp_key} cannot be a tag"
            )));
        }
        let mut columns = columns;
        columns[timestamp_index].nullable = false;

        let primary_key = if primary_key.is_empty() {
            let mut key: Vec<usize> = columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_tag)
                .map(|(i, _)| i)
                .collect();
            key.push(timestamp_index);
            key
        } else {
            let mut key = Vec::with_capacity(primary_key.len());
            for name in primary_key {
                let idx = columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| {
                        Error::InvalidSchema(format!("primary key column {name} is not defined"))
                    })?;
                if key.contains(&idx) {
                    return Err(Error::InvalidSchema(format!(
                        "primary key column {name} is listed twice"
                    )));
                }
                if !columns[idx].column_type.is_key_type() {
                    return Err(Error::InvalidSchema(format!(
                        "primary key column {name} cannot be of type {}",
                        columns[idx].column_type
                    )));
                }
                key.push(idx);
            }
            if !key.contains(&timestamp_index) {
                return Err(Error::InvalidSchema(format!(
                    "the primary key must include the timestamp key {timestamp_key}"
                )));
            }
            key
        };
        Ok(Self {
            columns,
            timestamp_index,
            primary_key,
            version: 1,
        })
    }

    pub fn timestamp_column(&self) -> &ColumnSchema {
        &self.columns[self.timestamp_index]
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn is_primary_key(&self, idx: usize) -> bool {
        self.primary_key.contains(&idx)
    }

    pub fn tag_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.is_tag)
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn primary_key_names(&self) -> Vec<String> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.clone())
            .collect()
    }

    /// The Arrow schema users see.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.column_type.to_arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The Arrow schema of memtables and SSTs: the user columns followed by
    /// the hidden `__seq` column.
    pub fn storage_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.column_type.to_arrow(), c.nullable))
            .collect();
        fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }

    /// The index of `__seq` in [`Self::storage_schema`].
    pub fn seq_index(&self) -> usize {
        self.columns.len()
    }
}

/// Adapts rows written under an older schema to `target`: columns are
/// matched by name, and columns added since are filled with nulls. A column
/// whose type changed, or a missing non-nullable column, is an error.
pub fn adapt_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone());
    }
    let source = batch.schema();
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        match source.index_of(field.name()) {
            Ok(i) => {
                let col = batch.column(i);
                if col.data_type() != field.data_type() {
                    return Err(Error::InvalidSchema(format!(
                        "column {} changed type from {} to {}",
                        field.name(),
                        col.data_type(),
                        field.data_type()
                    )));
                }
                columns.push(col.clone());
            }
            Err(_) if field.is_nullable() => columns.push(new_null_array(field.data_type(), rows)),
            Err(_) => {
                return Err(Error::InvalidSchema(format!(
                    "rows lack the non-nullable column {}",
                    field.name()
                )))
            }
        }
    }
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::InvalidSchema(format!("adapting rows to the current schema: {e}")))
}

/// Fits rows a client or another instance sent to a table's `target`
/// schema: columns are matched by name (any order; nullable columns may be
/// missing), and a column the table does not have is refused, where
/// [`adapt_batch`] (for rows of an older schema) drops it.
pub fn fit_rows(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if let Some(f) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| target.index_of(f.name()).is_err())
    {
        return Err(Error::InvalidSchema(format!(
            "column {} does not exist",
            f.name()
        )));
    }
    adapt_batch(batch, target)
}

/// [`fit_rows`] for several batches, as one batch: one write of it is one
/// WAL record, applied whole or not at all (a forward refused halfway
/// would otherwise leave its first batches written, and a retry would
/// write them twice).
pub fn fit_all(batches: &[RecordBatch], target: &SchemaRef) -> Result<RecordBatch> {
    let fitted = batches
        .iter()
        .map(|b| fit_rows(b, target))
        .collect::<Result<Vec<_>>>()?;
    arrow::compute::concat_batches(target, &fitted)
        .map_err(|e| Error::InvalidSchema(format!("joining rows: {e}")))
}

impl TableSchema {
    /// Whether the primary key is the default one, (tags…, timestamp).
    pub fn has_default_primary_key(&self) -> bool {
        let mut default: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_tag)
            .map(|(i, _)| i)
            .collect();
        default.push(self.timestamp_index);
        default == self.primary_key
    }

    /// The schema with `column` added at the end, at the next version. A new
    /// column must be nullable (existing rows have no value for it); a new
    /// tag joins the primary key before the timestamp, which keeps existing
    /// SSTs sorted, so it is allowed only with the default primary key.
    pub fn with_column(&self, column: ColumnSchema) -> Result<TableSchema> {
        if self.columns.len() >= MAX_COLUMNS {
            return Err(too_many_columns(self.columns.len() + 1));
        }
        if self.column(&column.name).is_some() {
            return Err(Error::InvalidSchema(format!(
                "column {} already exists",
                column.name
            )));
        }
        if column.name == SEQ_COLUMN {
            return Err(Error::InvalidSchema(format!(
                "column name {SEQ_COLUMN} is reserved"
            )));
        }
        if !column.nullable {
            return Err(Error::InvalidSchema(format!(
                "a new column must be nullable: existing rows have no value for {}",
                column.name
            )));
        }
        let mut next = self.clone();
        let idx = next.columns.len();
        if column.is_tag {
            if !column.column_type.is_key_type() {
                return Err(Error::InvalidSchema(format!(
                    "tag column {} cannot be of type {}",
                    column.name, column.column_type
                )));
            }
            if !self.has_default_primary_key() {
                return Err(Error::InvalidSchema(format!(
                    "cannot add tag {} to a table with an explicit PRIMARY KEY",
                    column.name
                )));
            }
            let ts_pos = next.primary_key.len() - 1;
            next.primary_key.insert(ts_pos, idx);
        }
        next.columns.push(column);
        next.version += 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn col(name: &str, t: ColumnType, tag: bool) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            column_type: t,
            is_tag: tag,
            nullable: true,
            comment: String::new(),
        }
    }

    #[test]
    fn a_table_has_at_most_max_columns() {
        let columns = |n: usize| {
            let mut c = vec![col("ts", ColumnType::Timestamp, false)];
            c.extend((1..n).map(|i| col(&format!("f{i}"), ColumnType::Double, false)));
            c
        };
        let full = TableSchema::try_new(columns(MAX_COLUMNS), "ts", &[]).unwrap();
        let err = TableSchema::try_new(columns(MAX_COLUMNS + 1), "ts", &[]).unwrap_err();
        assert!(err.to_string().contains("at most 4096 columns"), "{err}");
        let err = full
            .with_column(col("one_more", ColumnType::Double, false))
            .unwrap_err();
        assert!(err.to_string().contains("at most 4096 columns"), "{err}");
        // A million names are refused before the names are compared (the
        // duplicate check is quadratic).
        assert!(TableSchema::try_new(columns(1_000_000), "ts", &[]).is_err());
    }

    #[test]
    fn default_primary_key_is_tags_then_timestamp() {
        let s = TableSchema::try_new(
            vec![
                col("ts", ColumnType::Timestamp, false),
                col("host", ColumnType::String, true),
                col("v", ColumnType::Double, false),
                col("dc", ColumnType::String, true),
            ],
            "ts",
            &[],
        )
        .unwrap();
        assert_eq!(s.primary_key_names(), vec!["host", "dc", "ts"]);
        assert!(!s.timestamp_column().nullable);
        assert_eq!(s.storage_schema().fields().len(), 5);
    }

    #[test]
    fn adding_columns_and_adapting_old_rows() {
        use arrow::array::{Float64Array, TimestampMillisecondArray};
        let s = TableSchema::try_new(
            vec![
                col("ts", ColumnType::Timestamp, false),
                col("v", ColumnType::Double, false),
            ],
            "ts",
            &[],
        )
        .unwrap();
        let s2 = s
            .with_column(col("host", ColumnType::String, true))
            .unwrap();
        assert_eq!(s2.version, 2);
        assert_eq!(s2.primary_key_names(), vec!["host", "ts"]);
        let old = RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                std::sync::Arc::new(TimestampMillisecondArray::from(vec![1, 2])),
                std::sync::Arc::new(Float64Array::from(vec![1.0, 2.0])),
            ],
        )
        .unwrap();
        let adapted = adapt_batch(&old, &s2.arrow_schema()).unwrap();
        assert_eq!(adapted.num_columns(), 3);
        assert_eq!(adapted.column(2).null_count(), 2);
        let mut not_null = col("x", ColumnType::Int64, false);
        not_null.nullable = false;
        assert!(s2.with_column(not_null).is_err());
        assert!(s2
            .with_column(col("host", ColumnType::String, false))
            .is_err());
    }

    #[test]
    fn invalid_schemas_are_refused_with_reasons() {
        let err =
            TableSchema::try_new(vec![col("v", ColumnType::Double, false)], "ts", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("timestamp key column ts is not defined"),
            "{err}"
        );
        let err = TableSchema::try_new(
            vec![
                col("ts", ColumnType::Timestamp, false),
                col("v", ColumnType::Double, true),
            ],
            "ts",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("tag column v"), "{err}");
        let err = TableSchema::try_new(
            vec![
                col("ts", ColumnType::Timestamp, false),
                col("k", ColumnType::String, false),
            ],
            "ts",
            &["k".to_string()],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("must include the timestamp key"),
            "{err}"
        );
    }
}
