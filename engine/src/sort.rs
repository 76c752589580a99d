//! Sorting and deduplicating rows by primary key.
//!
//! Rows carry their write sequence in `__seq`. Sorting orders them by
//! (primary key ascending, `__seq` descending, position descending), so the
//! newest write of each key comes first; deduplication then keeps the first
//! row of every run of equal keys.

use std::sync::Arc;

use arrow::{
    array::{ArrayRef, BooleanArray, UInt32Array},
    compute::{
        concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
        SortOptions,
    },
    datatypes::SchemaRef,
    record_batch::RecordBatch,
    row::{RowConverter, SortField},
};

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
pub fn sort_and_dedup(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    key: &[usize],
    seq: usize,
    dedup: bool,
) -> Result<Option<RecordBatch>> {
    let all = concat_batches(schema, batches).map_err(arrow_err("concatenating rows"))?;
    let n = all.num_rows();
    if n == 0 {
        return Ok(None);
    }
    let position: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..n as u32));
    let mut columns: Vec<SortColumn> = key
        .iter()
        .map(|&i| SortColumn {
            values: all.column(i).clone(),
            options: Some(KEY_SORT),
        })
        .collect();
    columns.push(SortColumn {
        values: all.column(seq).clone(),
        options: Some(SEQ_SORT),
    });
    columns.push(SortColumn {
        values: position,
        options: Some(SEQ_SORT),
    });
    let indices = lexsort_to_indices(&columns, None).map_err(arrow_err("sorting rows"))?;
    let sorted = take_record_batch(&all, &indices).map_err(arrow_err("sorting rows"))?;
    if !dedup {
        return Ok(Some(sorted));
    }
    let keep = first_of_each_key(&sorted, key, None)?;
    let out = filter_record_batch(&sorted, &keep).map_err(arrow_err("deduplicating rows"))?;
    Ok(Some(out))
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

/// For rows sorted by key, marks the first row of every run of equal keys.
/// `previous` is the key of the row just before this batch, if any: a run
/// that continues from it is not marked.
pub fn first_of_each_key(
    batch: &RecordBatch,
    key: &[usize],
    previous: Option<&[u8]>,
) -> Result<BooleanArray> {
    let converter = key_converter(&batch.schema(), key)?;
    let cols: Vec<ArrayRef> = key.iter().map(|&i| batch.column(i).clone()).collect();
    let rows = converter
        .convert_columns(&cols)
        .map_err(arrow_err("encoding keys"))?;
    let mut keep = Vec::with_capacity(batch.num_rows());
    for i in 0..rows.num_rows() {
        let this = rows.row(i);
        let same = if i == 0 {
            previous.is_some_and(|p| p == this.as_ref())
        } else {
            rows.row(i - 1) == this
        };
        keep.push(!same);
    }
    Ok(BooleanArray::from(keep))
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
}
