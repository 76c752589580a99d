//! Accumulating an SST's summary (time range, max sequence, rows, tag
//! min/max) batch by batch while it is written.

use std::collections::BTreeMap;

use arrow::{
    array::{Array, AsArray},
    compute::{max, max_boolean, max_string, min, min_boolean, min_string},
    datatypes::{
        DataType, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMillisecondType, UInt16Type,
        UInt32Type, UInt64Type, UInt8Type,
    },
    record_batch::RecordBatch,
};

use crate::{ColumnStats, Error, Result, TimeRange, SEQ_COLUMN};

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Value {
    Int(i128),
    Bool(bool),
    Str(String),
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Str(v) => v.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Range {
    min: Option<Value>,
    max: Option<Value>,
    nulls: u64,
}

impl Range {
    fn update(&mut self, lo: Option<Value>, hi: Option<Value>, nulls: usize) {
        self.nulls += nulls as u64;
        if let Some(lo) = lo {
            if self.min.as_ref().is_none_or(|m| lo < *m) {
                self.min = Some(lo);
            }
        }
        if let Some(hi) = hi {
            if self.max.as_ref().is_none_or(|m| hi > *m) {
                self.max = Some(hi);
            }
        }
    }
}

/// The running summary of the rows written so far.
#[derive(Debug)]
pub struct Summary {
    ts_column: String,
    tags: Vec<String>,
    min_ts: i64,
    max_ts: i64,
    max_seq: u64,
    rows: u64,
    ranges: BTreeMap<String, Range>,
}

fn int_range<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &dyn Array,
) -> (Option<Value>, Option<Value>)
where
    T::Native: Into<i128>,
{
    match a.as_primitive_opt::<T>() {
        Some(p) => (
            min(p).map(|v| Value::Int(v.into())),
            max(p).map(|v| Value::Int(v.into())),
        ),
        None => (None, None),
    }
}

impl Summary {
    pub fn new(ts_column: &str, tags: &[String]) -> Self {
        Self {
            ts_column: ts_column.to_string(),
            tags: tags.to_vec(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            max_seq: 0,
            rows: 0,
            ranges: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let ts = batch
            .column_by_name(&self.ts_column)
            .ok_or_else(|| Error::InvalidInput(format!("missing column {}", self.ts_column)))?;
        let ts = ts
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| {
                Error::InvalidInput("timestamp column is not Timestamp(ms)".to_string())
            })?;
        if ts.null_count() > 0 {
            return Err(Error::InvalidInput(
                "timestamp column has nulls".to_string(),
            ));
        }
        if let (Some(lo), Some(hi)) = (min(ts), max(ts)) {
            self.min_ts = self.min_ts.min(lo);
            self.max_ts = self.max_ts.max(hi);
        }
        let seq = batch
            .column_by_name(SEQ_COLUMN)
            .ok_or_else(|| Error::InvalidInput(format!("missing column {SEQ_COLUMN}")))?;
        let seq = seq
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| Error::InvalidInput(format!("{SEQ_COLUMN} is not UInt64")))?;
        if let Some(hi) = max(seq) {
            self.max_seq = self.max_seq.max(hi);
        }
        for tag in &self.tags {
            let Some(col) = batch.column_by_name(tag) else {
                continue;
            };
            let (lo, hi) = match col.data_type() {
                DataType::Utf8 => {
                    let a = col.as_string::<i32>();
                    (
                        min_string(a).map(|v| Value::Str(v.to_string())),
                        max_string(a).map(|v| Value::Str(v.to_string())),
                    )
                }
                DataType::Boolean => {
                    let a = col.as_boolean();
                    (
                        min_boolean(a).map(Value::Bool),
                        max_boolean(a).map(Value::Bool),
                    )
                }
                DataType::Int8 => int_range::<Int8Type>(col),
                DataType::Int16 => int_range::<Int16Type>(col),
                DataType::Int32 => int_range::<Int32Type>(col),
                DataType::Int64 => int_range::<Int64Type>(col),
                DataType::UInt8 => int_range::<UInt8Type>(col),
                DataType::UInt16 => int_range::<UInt16Type>(col),
                DataType::UInt32 => int_range::<UInt32Type>(col),
                DataType::UInt64 => int_range::<UInt64Type>(col),
                _ => continue,
            };
            self.ranges
                .entry(tag.clone())
                .or_default()
                .update(lo, hi, col.null_count());
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    pub fn time_range(&self) -> TimeRange {
        TimeRange::new(self.min_ts, self.max_ts.saturating_add(1))
    }

    pub fn column_stats(&self) -> BTreeMap<String, ColumnStats> {
        self.ranges
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    ColumnStats {
                        min: r.min.as_ref().map(Value::render),
                        max: r.max.as_ref().map(Value::render),
                        null_count: r.nulls,
                    },
                )
            })
            .collect()
    }
}
