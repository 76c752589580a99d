//! Skipping SSTs using only what the manifest knows: each SST's time range
//! and the min/max of its tag columns. No object-store reads are needed.

use std::{collections::HashSet, sync::Arc};

use arrow::{
    array::{ArrayRef, BooleanArray, TimestampMillisecondArray, UInt64Array},
    datatypes::{DataType, SchemaRef},
};
use datafusion::{
    common::{pruning::PruningStatistics, Column, ScalarValue},
    physical_expr::PhysicalExpr,
    physical_optimizer::pruning::PruningPredicateBuilder,
};

use crate::gc::SstHandle;

/// Manifest statistics of a list of SSTs, one "container" per SST.
struct ManifestStats<'a> {
    ssts: &'a [Arc<SstHandle>],
    schema: &'a SchemaRef,
    ts_column: &'a str,
}

impl ManifestStats<'_> {
    fn values(&self, column: &Column, min: bool) -> Option<ArrayRef> {
        if column.name == self.ts_column {
            let values = self.ssts.iter().map(|s| {
                Some(if min {
                    s.info.time_range.start
                } else {
                    s.info.time_range.end.saturating_sub(1)
                })
            });
            return Some(Arc::new(TimestampMillisecondArray::from_iter(values)));
        }
        let field = self.schema.field_with_name(&column.name).ok()?;
        let data_type = field.data_type();
        if !self
            .ssts
            .iter()
            .any(|s| s.info.column_stats.contains_key(&column.name))
        {
            return None;
        }
        let scalars = self.ssts.iter().map(|s| {
            let text = s.info.column_stats.get(&column.name).and_then(|c| {
                if min {
                    c.min.clone()
                } else {
                    c.max.clone()
                }
            });
            match text {
                Some(t) if *data_type == DataType::Utf8 => ScalarValue::Utf8(Some(t)),
                Some(t) => ScalarValue::try_from_string(t, data_type).unwrap_or_else(|_| {
                    ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null)
                }),
                None => ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null),
            }
        });
        ScalarValue::iter_to_array(scalars).ok()
    }
}

impl PruningStatistics for ManifestStats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, true)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, false)
    }

    fn num_containers(&self) -> usize {
        self.ssts.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        if column.name == self.ts_column {
            return Some(Arc::new(UInt64Array::from_value(0, self.ssts.len())));
        }
        if !self
            .ssts
            .iter()
            .any(|s| s.info.column_stats.contains_key(&column.name))
        {
            return None;
        }
        Some(Arc::new(UInt64Array::from_iter(self.ssts.iter().map(
            |s| s.info.column_stats.get(&column.name).map(|c| c.null_count),
        ))))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.ssts.iter().map(|s| s.info.rows),
        )))
    }

    #[allow(clippy::mutable_key_type)]
    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Keeps the SSTs that may hold rows matching `predicate` (over the storage
/// schema). Returns the kept SSTs and how many were pruned. If the predicate
/// cannot be used for pruning, every SST is kept.
pub(crate) fn prune_ssts(
    ssts: Vec<Arc<SstHandle>>,
    predicate: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    ts_column: &str,
) -> (Vec<Arc<SstHandle>>, usize) {
    let Some(pruning) = PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .build(predicate.clone())
    else {
        return (ssts, 0);
    };
    let stats = ManifestStats {
        ssts: &ssts,
        schema,
        ts_column,
    };
    let Ok(keep) = pruning.prune(&stats) else {
        return (ssts, 0);
    };
    let before = ssts.len();
    let kept: Vec<_> = ssts
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect();
    let pruned = before - kept.len();
    (kept, pruned)
}
