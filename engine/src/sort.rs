//! Sorting and deduplicating rows by primary key.
//!
//! Rows carry their write sequence in `__seq`. Sorting orders them by
//! (primary key ascending, `__seq` descending, position descending), so the
//! newest write of each key comes first; deduplication then keeps the first
//! row of every run of equal keys.

use std::{collections::HashMap, sync::Arc};

use arrow::{
    array::{Array, ArrayRef, AsArray, UInt32Array},
    compute::{concat_batches, take_record_batch, SortOptions},
    datatypes::{SchemaRef, UInt64Type},
    record_batch::RecordBatch,
    row::{Row, RowConverter, SortField},
};

use strata_sst::SEQ_COLUMN;

use crate::{Error, Result};

fn arrow_err(op: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Arrow {
        op,
        source: Box::new(source),
    }
}

/// The sort options used for primary key columns everywhere (SSTs, scans).
pub const KEY_SORT: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

/// The sort options for `__seq`: newest first.
pub const SEQ_SORT: SortOptions = SortOptions {
    descending: true,
    nulls_first: true,
};

/// Concatenates `batches`, sorts them by (`key`…, `seq` desc) and, when
/// `dedup`, keeps only the newest row of each key. Returns `None` when there
/// are no rows.
///
/// The key columns are encoded once in Arrow's row format, string columns
/// first replaced by their values' ranks ([`ranks`]), and the rows are
/// sorted by those bytes: one short `memcmp` per comparison instead of a
/// dynamic comparator per column over the strings (a flush of remote-write
/// rows spent most of its time in a column-wise `lexsort`; see
/// `docs/benchmarks.md`). The same encoding then finds the runs of equal
/// keys, and one `take` builds the output.
pub fn sort_and_dedup(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    key: &[usize],
    seq: usize,
    dedup: bool,
) -> Result<Option<RecordBatch>> {
    let all = concat_batches(schema, batches).map_err(arrow_err("concatenating rows"))?;
    if all.num_rows() == 0 {
        return Ok(None);
    }
    let order = sorted_order(&all, key, seq, dedup)?;
    let indices = UInt32Array::from(order);
    let out = take_record_batch(&all, &indices).map_err(arrow_err("sorting rows"))?;
    Ok(Some(out))
}

/// The positions of `batch`'s rows ordered by (key ascending, `seq`
/// descending, position descending), and with `dedup` only the first of
/// each run of equal keys: the newest write of each key.
fn sorted_order(batch: &RecordBatch, key: &[usize], seq: usize, dedup: bool) -> Result<Vec<u32>> {
    if key.is_empty() {
        return Err(Error::Internal("sorting rows by an empty key".to_string()));
    }
    let n = u32::try_from(batch.num_rows())
        .map_err(|_| Error::Internal("more than 2^32 rows to sort at once".to_string()))?;
    // String key columns are compared through their ranks: 4 bytes a row
    // instead of the string.
    let cols: Vec<ArrayRef> = key
        .iter()
        .map(|&i| ranks(batch.column(i)).unwrap_or_else(|| batch.column(i).clone()))
        .collect();
    let converter = RowConverter::new(
        cols.iter()
            .map(|c| SortField::new_with_options(c.data_type().clone(), KEY_SORT))
            .collect(),
    )
    .map_err(arrow_err("building a key converter"))?;
    let rows = converter
        .convert_columns(&cols)
        .map_err(arrow_err("encoding keys"))?;
    let seqs = batch
        .column(seq)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| Error::Internal(format!("{SEQ_COLUMN} is not a UInt64 column")))?
        .values();
    // (key bytes, seq, position): sorting the entries themselves keeps each
    // comparison's data in one place.
    let mut entries: Vec<(Row<'_>, u64, u32)> = (0..n)
        .map(|i| (rows.row(i as usize), seqs[i as usize], i))
        .collect();
    entries.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| b.2.cmp(&a.2))
    });
    if dedup {
        // Keeps the first of each run: the newest write of that key.
        entries.dedup_by(|later, kept| later.0 == kept.0);
    }
    Ok(entries.into_iter().map(|(_, _, i)| i).collect())
}

/// An order-preserving stand-in for a string column: each row's rank among
/// the column's distinct values, 0 for null (nulls first, as [`KEY_SORT`]).
/// Two rows' ranks compare as their strings do, and are equal exactly when
/// the strings are. `None` for other types, and when most values are
/// distinct (ranking would cost about what it saves).
fn ranks(column: &ArrayRef) -> Option<ArrayRef> {
    let strings = column.as_string_opt::<i32>()?;
    let n = strings.len();
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let mut row_ids: Vec<Option<u32>> = Vec::with_capacity(n);
    for v in strings.iter() {
        row_ids.push(v.map(|s| {
            *ids.entry(s).or_insert_with(|| {
                distinct.push(s);
                (distinct.len() - 1) as u32
            })
        }));
        if distinct.len() > n / 2 + 16 {
            return None;
        }
    }
    let mut by_value: Vec<u32> = (0..distinct.len() as u32).collect();
    by_value.sort_unstable_by(|&a, &b| distinct[a as usize].cmp(distinct[b as usize]));
    let mut rank = vec![0u32; distinct.len()];
    for (r, &id) in by_value.iter().enumerate() {
        rank[id as usize] = r as u32 + 1;
    }
    Some(Arc::new(UInt32Array::from_iter_values(
        row_ids
            .iter()
            .map(|id| id.map_or(0, |id| rank[id as usize])),
    )))
}

/// A converter of primary key columns into comparable rows.
pub fn key_converter(schema: &SchemaRef, key: &[usize]) -> Result<RowConverter> {
    RowConverter::new(
        key.iter()
            .map(|&i| SortField::new_with_options(schema.field(i).data_type().clone(), KEY_SORT))
            .collect(),
    )
    .map_err(arrow_err("building a key converter"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use arrow::{
        array::{AsArray, Int64Array, StringArray, UInt64Array},
        datatypes::{DataType, Field, Int64Type, Schema},
    };

    use super::*;

    #[test]
    fn newest_write_of_each_key_wins() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("__seq", DataType::UInt64, false),
        ]));
        let b1 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("b"), Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(UInt64Array::from(vec![1, 1, 1])),
            ],
        )
        .unwrap();
        // Same seq, same key twice: the later row wins.
        let b2 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
                Arc::new(Int64Array::from(vec![20, 21, 30])),
                Arc::new(UInt64Array::from(vec![2, 2, 2])),
            ],
        )
        .unwrap();
        let out = sort_and_dedup(&schema, &[b1, b2], &[0], 2, true)
            .unwrap()
            .unwrap();
        let keys: Vec<_> = out.column(0).as_string::<i32>().iter().collect();
        assert_eq!(keys, vec![None, Some("a"), Some("b")]);
        let vals: Vec<_> = out.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(vals, vec![30, 21, 1]);
    }

    /// The order the row-format sort must reproduce, computed column by
    /// column with Arrow's `lexsort`.
    fn reference(batch: &RecordBatch, key: &[usize], seq: usize, dedup: bool) -> Vec<u32> {
        use arrow::compute::{lexsort_to_indices, SortColumn};
        let n = batch.num_rows();
        let mut columns: Vec<SortColumn> = key
            .iter()
            .map(|&i| SortColumn {
                values: batch.column(i).clone(),
                options: Some(KEY_SORT),
            })
            .collect();
        columns.push(SortColumn {
            values: batch.column(seq).clone(),
            options: Some(SEQ_SORT),
        });
        columns.push(SortColumn {
            values: Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            options: Some(SEQ_SORT),
        });
        let order = lexsort_to_indices(&columns, None).unwrap();
        let mut out: Vec<u32> = order.values().to_vec();
        if dedup {
            let same = |a: u32, b: u32| {
                key.iter().all(|&k| {
                    let c = batch.column(k);
                    let (a, b) = (a as usize, b as usize);
                    c.is_null(a) == c.is_null(b)
                        && (c.is_null(a) || c.slice(a, 1).to_data() == c.slice(b, 1).to_data())
                })
            };
            out.dedup_by(|later, kept| same(*later, *kept));
        }
        out
    }

    #[test]
    fn row_format_sort_matches_a_column_wise_sort() {
        // A tiny deterministic generator: keys from small domains so that
        // ties, duplicates and nulls are common.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("metric", DataType::Utf8, true),
            Field::new("series", DataType::UInt64, true),
            Field::new("ts", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
            Field::new("__seq", DataType::UInt64, false),
        ]));
        let names = [
            "",
            "a",
            "up",
            "up_total",
            "\u{e9}t\u{e9}",
            "a_very_long_metric_name_past_32_bytes_x",
        ];
        for round in 0..20 {
            let batches: Vec<RecordBatch> = (0..3)
                .map(|b| {
                    let n = 50 + next(200) as usize;
                    let metric: StringArray = (0..n)
                        .map(|_| match next(8) {
                            0 => None,
                            i => Some(names[(i as usize) % names.len()]),
                        })
                        .collect();
                    let series: UInt64Array = (0..n)
                        .map(|_| (next(10) != 0).then(|| next(4) * (u64::MAX / 3)))
                        .collect();
                    let ts = Int64Array::from_iter_values((0..n).map(|_| next(6) as i64 - 3));
                    let v = Int64Array::from_iter_values((0..n).map(|i| (round * 1000 + i) as i64));
                    let seq = UInt64Array::from_iter_values((0..n).map(|_| b as u64 + next(2)));
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(metric),
                            Arc::new(series),
                            Arc::new(ts),
                            Arc::new(v),
                            Arc::new(seq),
                        ],
                    )
                    .unwrap()
                })
                .collect();
            let all = concat_batches(&schema, &batches).unwrap();
            for (key, dedup) in [
                (&[0, 1, 2][..], true),
                (&[0, 1, 2][..], false),
                (&[2][..], true),
            ] {
                let want =
                    take_record_batch(&all, &UInt32Array::from(reference(&all, key, 4, dedup)))
                        .unwrap();
                let got = sort_and_dedup(&schema, &batches, key, 4, dedup)
                    .unwrap()
                    .unwrap();
                assert_eq!(got, want, "round {round}, key {key:?}, dedup {dedup}");
            }
        }
    }

    #[test]
    fn distinct_strings_sort_without_ranks() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("__seq", DataType::UInt64, false),
        ]));
        let ids: StringArray = (0..300u32)
            .map(|i| (i % 37 != 0).then(|| format!("{:x}", i.wrapping_mul(2_654_435_761))))
            .collect();
        assert!(ranks(&(Arc::new(ids.clone()) as ArrayRef)).is_none());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids), Arc::new(UInt64Array::from(vec![1; 300]))],
        )
        .unwrap();
        for dedup in [true, false] {
            let want = take_record_batch(
                &batch,
                &UInt32Array::from(reference(&batch, &[0], 1, dedup)),
            )
            .unwrap();
            let got = sort_and_dedup(&schema, std::slice::from_ref(&batch), &[0], 1, dedup)
                .unwrap()
                .unwrap();
            assert_eq!(got, want);
        }
    }
}
