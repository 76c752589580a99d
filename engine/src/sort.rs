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
    let seqs = batch
        .column(seq)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| Error::Internal(format!("{SEQ_COLUMN} is not a UInt64 column")))?
        .values();
    // Keys of up to four integer-like columns (ranked strings included)
    // sort as fixed arrays of integers: no row encoding, one integer
    // comparison per column.
    let words = (cols.len() <= 4)
        .then(|| cols.iter().map(key_words).collect::<Option<Vec<_>>>())
        .flatten();
    if let Some(words) = words {
        return Ok(match words.len() {
            1 => sort_words::<1>(&words, seqs, dedup),
            2 => sort_words::<2>(&words, seqs, dedup),
            3 => sort_words::<3>(&words, seqs, dedup),
            _ => sort_words::<4>(&words, seqs, dedup),
        });
    }
    let converter = RowConverter::new(
        cols.iter()
            .map(|c| SortField::new_with_options(c.data_type().clone(), KEY_SORT))
            .collect(),
    )
    .map_err(arrow_err("building a key converter"))?;
    let rows = converter
        .convert_columns(&cols)
        .map_err(arrow_err("encoding keys"))?;
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

/// A key column as one `u64` per row that orders as [`KEY_SORT`] orders
/// the column's values (ascending, nulls first) and is equal exactly when
/// the values are. `None` for a type without such a mapping, and for a
/// 64-bit column with nulls (no spare value to stand for null).
fn key_words(column: &ArrayRef) -> Option<Vec<u64>> {
    use arrow::datatypes::{
        DataType, Date32Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
    };
    // Signed values flip their sign bit so that they order as unsigned.
    const SIGN: u64 = 1 << 63;
    // A column of at most 32 bits: null is 0, a value is 2^32 + its word.
    fn narrow<T: arrow::datatypes::ArrowPrimitiveType>(
        column: &ArrayRef,
        word: impl Fn(T::Native) -> u32,
    ) -> Option<Vec<u64>> {
        let a = column.as_primitive_opt::<T>()?;
        let values = a.values();
        Some(match a.nulls().filter(|n| n.null_count() > 0) {
            None => values.iter().map(|&v| u64::from(word(v))).collect(),
            Some(nulls) => values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if nulls.is_valid(i) {
                        (1 << 32) | u64::from(word(v))
                    } else {
                        0
                    }
                })
                .collect(),
        })
    }
    // A 64-bit column: only without nulls.
    fn wide<T: arrow::datatypes::ArrowPrimitiveType>(
        column: &ArrayRef,
        word: impl Fn(T::Native) -> u64,
    ) -> Option<Vec<u64>> {
        let a = column.as_primitive_opt::<T>()?;
        if a.null_count() > 0 {
            return None;
        }
        Some(a.values().iter().map(|&v| word(v)).collect())
    }
    const SIGN32: u32 = 1 << 31;
    match column.data_type() {
        DataType::UInt8 => narrow::<UInt8Type>(column, u32::from),
        DataType::UInt16 => narrow::<UInt16Type>(column, u32::from),
        DataType::UInt32 => narrow::<UInt32Type>(column, |v| v),
        DataType::Int8 => narrow::<Int8Type>(column, |v| (i32::from(v) as u32) ^ SIGN32),
        DataType::Int16 => narrow::<Int16Type>(column, |v| (i32::from(v) as u32) ^ SIGN32),
        DataType::Int32 => narrow::<Int32Type>(column, |v| (v as u32) ^ SIGN32),
        DataType::Date32 => narrow::<Date32Type>(column, |v| (v as u32) ^ SIGN32),
        DataType::UInt64 => wide::<UInt64Type>(column, |v| v),
        DataType::Int64 => wide::<Int64Type>(column, |v| (v as u64) ^ SIGN),
        DataType::Timestamp(TimeUnit::Second, _) => {
            wide::<TimestampSecondType>(column, |v| (v as u64) ^ SIGN)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            wide::<TimestampMillisecondType>(column, |v| (v as u64) ^ SIGN)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            wide::<TimestampMicrosecondType>(column, |v| (v as u64) ^ SIGN)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            wide::<TimestampNanosecondType>(column, |v| (v as u64) ^ SIGN)
        }
        DataType::Boolean => {
            let a = column.as_boolean_opt()?;
            Some(
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            0
                        } else {
                            1 + u64::from(a.value(i))
                        }
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// [`sorted_order`] over `N` key columns given as [`key_words`] (the
/// caller passes exactly `N`): entries of (key words, `!seq`, `!position`)
/// sort ascending as plain integers, which is (key ascending, seq
/// descending, position descending).
fn sort_words<const N: usize>(words: &[Vec<u64>], seqs: &[u64], dedup: bool) -> Vec<u32> {
    let n = seqs.len();
    let mut entries: Vec<([u64; N], u64, u32)> = Vec::with_capacity(n);
    for i in 0..n {
        let mut key = [0u64; N];
        for (k, column) in key.iter_mut().zip(words) {
            *k = column[i];
        }
        entries.push((key, !seqs[i], !(i as u32)));
    }
    entries.sort_unstable();
    if dedup {
        entries.dedup_by(|later, kept| later.0 == kept.0);
    }
    entries.into_iter().map(|(_, _, i)| !i).collect()
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
            Field::new("s2", DataType::UInt64, false),
            Field::new(
                "tm",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("i", DataType::Int32, true),
            Field::new("b", DataType::Boolean, true),
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
                    let s2 =
                        UInt64Array::from_iter_values((0..n).map(|_| next(4) * (u64::MAX / 3)));
                    let tm = arrow::array::TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|_| next(5) as i64 - 2),
                    );
                    let i: arrow::array::Int32Array = (0..n)
                        .map(|_| (next(6) != 0).then(|| next(5) as i32 - 2))
                        .collect();
                    let bo: arrow::array::BooleanArray = (0..n)
                        .map(|_| (next(5) != 0).then(|| next(2) == 1))
                        .collect();
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(metric),
                            Arc::new(series),
                            Arc::new(ts),
                            Arc::new(v),
                            Arc::new(seq),
                            Arc::new(s2),
                            Arc::new(tm),
                            Arc::new(i),
                            Arc::new(bo),
                        ],
                    )
                    .unwrap()
                })
                .collect();
            let all = concat_batches(&schema, &batches).unwrap();
            // [0, 1, 2]: `series` has nulls, so the row format; the others
            // (but the five-column key) sort as integer words.
            for (key, dedup) in [
                (&[0, 1, 2][..], true),
                (&[0, 1, 2][..], false),
                (&[2][..], true),
                (&[0, 5, 6][..], true),
                (&[0, 5, 6][..], false),
                (&[7, 8][..], true),
                (&[7, 8][..], false),
                (&[0, 5, 7, 8][..], true),
                (&[0, 1, 2, 5, 6][..], true),
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
    fn integer_like_columns_map_to_words() {
        let words = |a: ArrayRef| key_words(&a);
        let ts = arrow::array::TimestampNanosecondArray::from(vec![-1, 0, 1]);
        assert_eq!(
            words(Arc::new(ts)),
            Some(vec![(1 << 63) - 1, 1 << 63, (1 << 63) + 1])
        );
        let i = arrow::array::Int8Array::from(vec![Some(-1), None, Some(1)]);
        assert_eq!(
            words(Arc::new(i)),
            Some(vec![(1 << 32) | 0x7fff_ffff, 0, (1 << 32) | 0x8000_0001])
        );
        // A 64-bit column with nulls has no spare word for null.
        assert_eq!(
            words(Arc::new(UInt64Array::from(vec![Some(1), None]))),
            None
        );
        assert_eq!(words(Arc::new(StringArray::from(vec!["a"]))), None);
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
