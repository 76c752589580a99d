//! The write path's one set of type rules: the Arrow column builder every
//! protocol appends to (gRPC `Write` values, line-protocol fields), and the
//! conversions it allows. A value is converted only when no precision is
//! lost: an integer into any integer column it fits, or into a DOUBLE below
//! 2^53; a FLOAT into a DOUBLE; a string into a VARBINARY. Each `append_*`
//! returns false when the value does not fit, and appends nothing then.

use std::sync::Arc;

use arrow::{
    array::{
        ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder,
        Int32Builder, Int64Builder, Int8Builder, RecordBatch, StringBuilder,
        TimestampMillisecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
    },
    datatypes::SchemaRef,
    error::ArrowError,
};
use strata_engine::schema::{ColumnType, TableSchema};

use crate::error::{Error, Result};

/// The most rows a column builder is sized for up front: the row count
/// comes from the request, and one small message can declare many empty
/// rows per column of a wide table.
const MAX_PRESIZED_ROWS: usize = 8192;

/// One column of a batch being built, typed by its table column.
pub enum ColumnBuilder {
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

/// Applies `$body` to the inner builder, whatever its type.
macro_rules! each {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            ColumnBuilder::Ts($b) => $body,
            ColumnBuilder::F64($b) => $body,
            ColumnBuilder::F32($b) => $body,
            ColumnBuilder::I64($b) => $body,
            ColumnBuilder::I32($b) => $body,
            ColumnBuilder::I16($b) => $body,
            ColumnBuilder::I8($b) => $body,
            ColumnBuilder::U64($b) => $body,
            ColumnBuilder::U32($b) => $body,
            ColumnBuilder::U16($b) => $body,
            ColumnBuilder::U8($b) => $body,
            ColumnBuilder::Bool($b) => $body,
            ColumnBuilder::Str($b) => $body,
            ColumnBuilder::Bin($b) => $body,
        }
    };
}

impl ColumnBuilder {
    /// A builder for a column of type `t`, sized for `rows` (up to a bound).
    pub fn new(t: ColumnType, rows: usize) -> Self {
        let rows = rows.min(MAX_PRESIZED_ROWS);
        match t {
            ColumnType::Timestamp => Self::Ts(TimestampMillisecondBuilder::with_capacity(rows)),
            ColumnType::Double => Self::F64(Float64Builder::with_capacity(rows)),
            ColumnType::Float => Self::F32(Float32Builder::with_capacity(rows)),
            ColumnType::Int64 => Self::I64(Int64Builder::with_capacity(rows)),
            ColumnType::Int32 => Self::I32(Int32Builder::with_capacity(rows)),
            ColumnType::Int16 => Self::I16(Int16Builder::with_capacity(rows)),
            ColumnType::Int8 => Self::I8(Int8Builder::with_capacity(rows)),
            ColumnType::UInt64 => Self::U64(UInt64Builder::with_capacity(rows)),
            ColumnType::UInt32 => Self::U32(UInt32Builder::with_capacity(rows)),
            ColumnType::UInt16 => Self::U16(UInt16Builder::with_capacity(rows)),
            ColumnType::UInt8 => Self::U8(UInt8Builder::with_capacity(rows)),
            ColumnType::Boolean => Self::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::String => Self::Str(StringBuilder::with_capacity(rows, rows * 8)),
            ColumnType::Varbinary => Self::Bin(BinaryBuilder::with_capacity(rows, rows * 8)),
        }
    }

    pub fn append_null(&mut self) {
        each!(self, b => b.append_null())
    }

    /// The row's time, into the table's timestamp column.
    pub fn append_timestamp(&mut self, ms: i64) -> bool {
        match self {
            Self::Ts(b) => {
                b.append_value(ms);
                true
            }
            _ => false,
        }
    }

    /// A 64-bit float: DOUBLE only.
    pub fn append_f64(&mut self, x: f64) -> bool {
        match self {
            Self::F64(b) => {
                b.append_value(x);
                true
            }
            _ => false,
        }
    }

    /// A 32-bit float: FLOAT, or widened into DOUBLE.
    pub fn append_f32(&mut self, x: f32) -> bool {
        match self {
            Self::F32(b) => {
                b.append_value(x);
                true
            }
            Self::F64(b) => {
                b.append_value(f64::from(x));
                true
            }
            _ => false,
        }
    }

    /// An integer: into any integer column it fits, into DOUBLE when below
    /// 2^53, and (a 64-bit signed value, `as_timestamp`) into a TIMESTAMP.
    pub fn append_int(&mut self, x: i128, as_timestamp: bool) -> bool {
        macro_rules! int {
            ($b:expr, $t:ty) => {
                match <$t>::try_from(x) {
                    Ok(x) => {
                        $b.append_value(x);
                        true
                    }
                    Err(_) => false,
                }
            };
        }
        match self {
            Self::Ts(b) if as_timestamp => int!(b, i64),
            Self::F64(b) if x.unsigned_abs() < (1u128 << 53) => {
                b.append_value(x as f64);
                true
            }
            Self::I64(b) => int!(b, i64),
            Self::I32(b) => int!(b, i32),
            Self::I16(b) => int!(b, i16),
            Self::I8(b) => int!(b, i8),
            Self::U64(b) => int!(b, u64),
            Self::U32(b) => int!(b, u32),
            Self::U16(b) => int!(b, u16),
            Self::U8(b) => int!(b, u8),
            _ => false,
        }
    }

    pub fn append_bool(&mut self, x: bool) -> bool {
        match self {
            Self::Bool(b) => {
                b.append_value(x);
                true
            }
            _ => false,
        }
    }

    /// A string: STRING, or its bytes into VARBINARY.
    pub fn append_str(&mut self, s: &str) -> bool {
        match self {
            Self::Str(b) => {
                b.append_value(s);
                true
            }
            Self::Bin(b) => {
                b.append_value(s.as_bytes());
                true
            }
            _ => false,
        }
    }

    /// Bytes: VARBINARY only.
    pub fn append_bytes(&mut self, x: &[u8]) -> bool {
        match self {
            Self::Bin(b) => {
                b.append_value(x);
                true
            }
            _ => false,
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        each!(self, b => Arc::new(b.finish()) as ArrayRef)
    }
}

/// What the rows of one table of one write may take in Arrow, as a multiple
/// of `server.max_decoded_size` (the decoded body: rows are wider than the
/// text that names their values, since every column takes a slot).
pub const DECODED_FACTOR: usize = 4;

/// The bytes a value of type `t` takes in an Arrow column at least (its
/// fixed part: an offset for strings and binaries).
fn fixed_width(t: ColumnType) -> usize {
    match t {
        ColumnType::Timestamp | ColumnType::Double | ColumnType::Int64 | ColumnType::UInt64 => 8,
        ColumnType::Float
        | ColumnType::Int32
        | ColumnType::UInt32
        | ColumnType::String
        | ColumnType::Varbinary => 4,
        ColumnType::Int16 | ColumnType::UInt16 => 2,
        ColumnType::Int8 | ColumnType::UInt8 | ColumnType::Boolean => 1,
    }
}

/// One table's rows being built, a row at a time, in its columns: the row's
/// time goes to the timestamp column (a value given for that column is
/// ignored), every other column takes its cell or a null.
pub struct BatchBuilder<'s> {
    schema: &'s TableSchema,
    columns: Vec<ColumnBuilder>,
}

impl<'s> BatchBuilder<'s> {
    /// A builder for `rows` rows of `schema`. Refused (`TooLarge`) when the
    /// rows would take more than [`DECODED_FACTOR`] × `max_decoded`
    /// (`server.max_decoded_size`) bytes of Arrow in the table's columns,
    /// nulls included: a short request can name few values but many rows of
    /// a wide table, each row a null in every column it does not set.
    pub fn new(schema: &'s TableSchema, rows: usize, max_decoded: usize) -> Result<Self> {
        let row_bytes: usize = schema
            .columns
            .iter()
            .map(|c| fixed_width(c.column_type))
            .sum();
        let bytes = rows.saturating_mul(row_bytes);
        let limit = max_decoded.saturating_mul(DECODED_FACTOR);
        if bytes > limit {
            return Err(Error::TooLarge(format!(
                "{rows} rows in the {} columns of the table take at least {bytes} bytes \
                 (a null in every column a row does not set), more than {limit} \
                 ({DECODED_FACTOR} × server.max_decoded_size); send fewer rows per request",
                schema.columns.len()
            )));
        }
        Ok(Self {
            schema,
            columns: schema
                .columns
                .iter()
                .map(|c| ColumnBuilder::new(c.column_type, rows))
                .collect(),
        })
    }

    /// Appends one row: `cells[i]` into column `i`, by `append` (false: the
    /// value does not fit), named by `type_name` in the error. Fails with
    /// the reason a cell does not fit, or a missing value of a column that
    /// is not nullable; the row may then be part-appended, so the builder
    /// must be dropped.
    pub fn append_row<C>(
        &mut self,
        time: i64,
        cells: &[Option<C>],
        append: impl Fn(&mut ColumnBuilder, &C) -> bool,
        type_name: impl Fn(&C) -> &'static str,
    ) -> Result<(), String> {
        let ts = self.schema.timestamp_index;
        for (i, (builder, cell)) in self.columns.iter_mut().zip(cells).enumerate() {
            if i == ts {
                builder.append_timestamp(time);
                continue;
            }
            let col = &self.schema.columns[i];
            match cell {
                Some(v) if !append(builder, v) => {
                    return Err(format!(
                        "column {} expects {}, got a {} value",
                        col.name,
                        col.column_type,
                        type_name(v)
                    ));
                }
                Some(_) => {}
                None if !col.nullable => {
                    return Err(format!("column {} cannot be null", col.name));
                }
                None => builder.append_null(),
            }
        }
        Ok(())
    }

    /// The rows, with `arrow` (the schema's Arrow form) as their schema.
    pub fn finish(mut self, arrow: SchemaRef) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        RecordBatch::try_new(arrow, columns)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int8Type, TimestampMillisecondType, UInt16Type};

    use super::*;

    #[test]
    fn values_convert_only_without_loss() {
        let mut d = ColumnBuilder::new(ColumnType::Double, 4);
        assert!(d.append_f64(0.5));
        assert!(d.append_f32(1.5));
        assert!(d.append_int((1 << 53) - 1, false));
        assert!(!d.append_int(1 << 53, false));
        assert!(!d.append_str("1"));
        let d = d.finish();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d.as_primitive::<Float64Type>().value(2),
            ((1u64 << 53) - 1) as f64
        );

        let mut i = ColumnBuilder::new(ColumnType::Int8, 2);
        assert!(i.append_int(-128, true));
        assert!(!i.append_int(128, false));
        assert!(!i.append_f64(1.0));
        assert_eq!(i.finish().as_primitive::<Int8Type>().value(0), -128);

        let mut u = ColumnBuilder::new(ColumnType::UInt16, 2);
        assert!(!u.append_int(-1, false));
        assert!(u.append_int(65_535, false));
        assert_eq!(u.finish().as_primitive::<UInt16Type>().value(0), 65_535);

        let mut f = ColumnBuilder::new(ColumnType::Float, 2);
        assert!(!f.append_f64(0.5));
        assert!(!f.append_int(1, false));
        assert!(f.append_f32(0.5));

        let mut t = ColumnBuilder::new(ColumnType::Timestamp, 2);
        assert!(!t.append_int(5, false));
        assert!(t.append_int(5, true));
        assert!(t.append_timestamp(6));
        let t = t.finish();
        assert_eq!(
            t.as_primitive::<TimestampMillisecondType>().values(),
            &[5, 6]
        );

        let mut b = ColumnBuilder::new(ColumnType::Varbinary, 2);
        assert!(b.append_str("a"));
        assert!(b.append_bytes(b"b"));
        assert!(!b.append_bool(true));
        let mut s = ColumnBuilder::new(ColumnType::String, 2);
        assert!(!s.append_bytes(b"b"));
        s.append_null();
        assert_eq!(s.finish().null_count(), 1);
    }
}
