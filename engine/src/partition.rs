//! Partitioned tables: a table whose rows are spread over sub-tables by a
//! hash of some of its tag columns (`PARTITION BY KEY(host) PARTITIONS 8`,
//! HoraeDB's syntax). Each partition is an ordinary table named
//! `__{table}_{i}`, on a shard of its own choosing; the table itself holds
//! no data and is never opened on a shard.
//!
//! The hash is part of the storage format: a row written today must be
//! found in the same partition by every later version. It is XXH64 (seed
//! 0) over a framed encoding of the key values, so that `('a', 'bc')` and
//! `('ab', 'c')` differ; the partition is the hash modulo the count. The
//! unit tests pin known values.

use arrow::{
    array::{Array, ArrayRef, AsArray},
    datatypes::{
        DataType, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMillisecondType, UInt16Type,
        UInt32Type, UInt64Type, UInt8Type,
    },
    record_batch::RecordBatch,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    options::{TableOptions, UpdateMode},
    schema::TableSchema,
};

/// The most partitions a table may have (meta creates a table and its
/// partitions in one etcd transaction, which holds at most 128 operations).
pub const MAX_PARTITIONS: u32 = 60;

/// How a partitioned table spreads its rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// The key: tag columns, in order (none with `random`).
    pub columns: Vec<String>,
    /// How many partitions.
    pub count: u32,
    /// `PARTITION BY RANDOM`: each write's rows are dealt out over the
    /// partitions in turn, whatever their values (APPEND tables only: two
    /// versions of a key could land in different partitions). No filter
    /// prunes partitions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub random: bool,
}

/// Which partition of which table a sub-table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOf {
    pub parent: strata_sst::TableId,
    pub index: u32,
}

/// The name of partition `index` of `table`.
pub fn sub_table_name(table: &str, index: u32) -> String {
    format!("__{table}_{index}")
}

impl PartitionSpec {
    /// Checks the spec against the table's schema: 1 to
    /// [`MAX_PARTITIONS`] partitions, key columns that are distinct tags of
    /// the primary key.
    pub fn validate(&self, schema: &TableSchema, options: &TableOptions) -> Result<()> {
        if self.count == 0 || self.count > MAX_PARTITIONS {
            return Err(Error::InvalidSchema(format!(
                "PARTITIONS must be between 1 and {MAX_PARTITIONS}, not {}",
                self.count
            )));
        }
        if self.random {
            if !self.columns.is_empty() {
                return Err(Error::InvalidSchema(
                    "PARTITION BY RANDOM takes no columns".to_string(),
                ));
            }
            if options.update_mode != UpdateMode::Append {
                return Err(Error::InvalidSchema(
                    "PARTITION BY RANDOM needs update_mode = 'APPEND' (an OVERWRITE table \
                     would keep two versions of a row in two partitions); use \
                     PARTITION BY KEY(tag, …)"
                        .to_string(),
                ));
            }
            return Ok(());
        }
        if self.columns.is_empty() {
            return Err(Error::InvalidSchema(
                "PARTITION BY KEY needs at least one column".to_string(),
            ));
        }
        for (i, name) in self.columns.iter().enumerate() {
            if self.columns[..i].contains(name) {
                return Err(Error::InvalidSchema(format!(
                    "partition key column {name} is named twice"
                )));
            }
            let Some(idx) = schema.columns.iter().position(|c| &c.name == name) else {
                return Err(Error::InvalidSchema(format!(
                    "partition key column {name} is not a column of the table"
                )));
            };
            // A key outside the primary key would put two versions of one
            // row (OVERWRITE) in different partitions.
            if !schema.columns[idx].is_tag || !schema.is_primary_key(idx) {
                return Err(Error::InvalidSchema(format!(
                    "partition key column {name} must be a TAG of the primary key"
                )));
            }
        }
        Ok(())
    }

    /// The partition of every row of `batch` (which must hold the key
    /// columns, typed as the table declares them).
    pub fn partition_rows(&self, batch: &RecordBatch) -> Result<Vec<u32>> {
        if self.random {
            // In turn from a random start: each write spreads evenly, and
            // writes of one row each spread too.
            let count = u64::from(self.count.max(1));
            let start = rand::random::<u64>() % count;
            return Ok((0..batch.num_rows() as u64)
                .map(|i| ((start + i) % count) as u32)
                .collect());
        }
        let columns = self
            .columns
            .iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| Error::InvalidWrite {
                        table: String::new(),
                        reason: format!("the partition key column {name} is missing"),
                    })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let mut key = Vec::with_capacity(64);
        (0..batch.num_rows())
            .map(|row| {
                key.clear();
                for c in &columns {
                    encode(c.as_ref(), row, &mut key)?;
                }
                Ok(self.of_key(&key))
            })
            .collect()
    }

    /// The partition of one row whose key columns hold `values` (single-row
    /// arrays, in key order, typed as the table declares them).
    pub fn partition_of(&self, values: &[ArrayRef]) -> Result<u32> {
        let mut key = Vec::with_capacity(64);
        for v in values {
            encode(v.as_ref(), 0, &mut key)?;
        }
        Ok(self.of_key(&key))
    }

    fn of_key(&self, key: &[u8]) -> u32 {
        let hash = twox_hash::XxHash64::oneshot(0, key);
        (hash % u64::from(self.count)) as u32
    }
}

/// Appends the framed encoding of `array[row]`: `0` for null; else `1`
/// followed by the value (integers as 8 little-endian bytes, sign-extended
/// or zero-extended; strings and binaries as a 4-byte little-endian length
/// and the bytes; booleans as one byte).
fn encode(array: &dyn Array, row: usize, out: &mut Vec<u8>) -> Result<()> {
    if array.is_null(row) {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    match array.data_type() {
        DataType::Utf8 => bytes(out, array.as_string::<i32>().value(row).as_bytes()),
        DataType::LargeUtf8 => bytes(out, array.as_string::<i64>().value(row).as_bytes()),
        DataType::Utf8View => bytes(out, array.as_string_view().value(row).as_bytes()),
        DataType::Binary => bytes(out, array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => bytes(out, array.as_binary::<i64>().value(row)),
        DataType::BinaryView => bytes(out, array.as_binary_view().value(row)),
        DataType::Boolean => out.push(u8::from(array.as_boolean().value(row))),
        DataType::Int8 => signed(out, i64::from(array.as_primitive::<Int8Type>().value(row))),
        DataType::Int16 => signed(out, i64::from(array.as_primitive::<Int16Type>().value(row))),
        DataType::Int32 => signed(out, i64::from(array.as_primitive::<Int32Type>().value(row))),
        DataType::Int64 => signed(out, array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => unsigned(out, u64::from(array.as_primitive::<UInt8Type>().value(row))),
        DataType::UInt16 => unsigned(
            out,
            u64::from(array.as_primitive::<UInt16Type>().value(row)),
        ),
        DataType::UInt32 => unsigned(
            out,
            u64::from(array.as_primitive::<UInt32Type>().value(row)),
        ),
        DataType::UInt64 => unsigned(out, array.as_primitive::<UInt64Type>().value(row)),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _) => signed(
            out,
            array.as_primitive::<TimestampMillisecondType>().value(row),
        ),
        DataType::Dictionary(_, _) => {
            let values = arrow::compute::cast(&array.slice(row, 1), &dictionary_value(array))
                .map_err(|e| Error::Internal(format!("reading a partition key: {e}")))?;
            out.pop();
            encode(values.as_ref(), 0, out)?;
        }
        other => {
            return Err(Error::Internal(format!(
                "a partition key of type {other} cannot be hashed"
            )))
        }
    }
    Ok(())
}

fn dictionary_value(array: &dyn Array) -> DataType {
    match array.data_type() {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

fn signed(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn unsigned(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn spec(columns: &[&str], count: u32) -> PartitionSpec {
        PartitionSpec {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            count,
            random: false,
        }
    }

    /// The hash is part of the storage format: these values must never
    /// change, or rows written before would be looked for in the wrong
    /// partition.
    #[test]
    fn the_partition_hash_is_pinned() {
        let hosts = StringArray::from(vec![Some("a"), Some("host-1"), Some(""), None]);
        let batch =
            RecordBatch::try_from_iter(vec![("host", Arc::new(hosts) as ArrayRef)]).unwrap();
        let got = spec(&["host"], 1 << 20).partition_rows(&batch).unwrap();
        assert_eq!(got, PINNED_ONE);
        let dc = StringArray::from(vec!["bc", "c", "x", "y"]);
        let host = StringArray::from(vec!["a", "ab", "x", "y"]);
        let n = Int64Array::from(vec![1, 1, -1, i64::MAX]);
        let batch = RecordBatch::try_from_iter(vec![
            ("host", Arc::new(host) as ArrayRef),
            ("dc", Arc::new(dc) as ArrayRef),
            ("n", Arc::new(n) as ArrayRef),
        ])
        .unwrap();
        let got = spec(&["host", "dc", "n"], 1 << 20)
            .partition_rows(&batch)
            .unwrap();
        assert_eq!(got, PINNED_THREE);
        // ('a', 'bc') and ('ab', 'c') are told apart.
        assert_ne!(got[0], got[1]);
    }

    const PINNED_ONE: [u32; 4] = [652875, 457576, 493350, 337768];
    const PINNED_THREE: [u32; 4] = [579026, 667475, 959509, 695123];

    #[test]
    fn one_row_and_a_batch_agree() {
        let s = spec(&["host"], 8);
        let hosts: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
        let batch = RecordBatch::try_from_iter(vec![(
            "host",
            Arc::new(StringArray::from(hosts.clone())) as ArrayRef,
        )])
        .unwrap();
        let rows = s.partition_rows(&batch).unwrap();
        for (h, p) in hosts.iter().zip(&rows) {
            let one: ArrayRef = Arc::new(StringArray::from(vec![h.as_str()]));
            assert_eq!(s.partition_of(&[one]).unwrap(), *p);
            assert!(*p < 8);
        }
        // Spread over every partition.
        let used: std::collections::BTreeSet<_> = rows.iter().collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn random_partitions_spread_every_write_and_only_append_tables_have_them() {
        let random = PartitionSpec {
            count: 4,
            random: true,
            ..Default::default()
        };
        let hosts = StringArray::from(vec!["a"; 10]);
        let batch =
            RecordBatch::try_from_iter(vec![("host", Arc::new(hosts) as ArrayRef)]).unwrap();
        let mut per = [0usize; 4];
        for p in random.partition_rows(&batch).unwrap() {
            per[p as usize] += 1;
        }
        // Ten rows over four partitions, in turn: 3, 3, 2, 2 in some order.
        per.sort_unstable();
        assert_eq!(per, [2, 2, 3, 3]);
        let schema = crate::schema::TableSchema::try_new(
            vec![
                crate::schema::ColumnSchema {
                    name: "host".into(),
                    column_type: crate::schema::ColumnType::String,
                    is_tag: true,
                    nullable: true,
                    comment: String::new(),
                },
                crate::schema::ColumnSchema {
                    name: "ts".into(),
                    column_type: crate::schema::ColumnType::Timestamp,
                    is_tag: false,
                    nullable: false,
                    comment: String::new(),
                },
            ],
            "ts",
            &[],
        )
        .unwrap();
        let append = TableOptions {
            update_mode: UpdateMode::Append,
            ..Default::default()
        };
        random.validate(&schema, &append).unwrap();
        let err = random
            .validate(&schema, &TableOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("APPEND"), "{err}");
        let with_columns = PartitionSpec {
            columns: vec!["host".into()],
            ..random
        };
        assert!(with_columns.validate(&schema, &append).is_err());
    }
}
