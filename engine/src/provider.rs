//! The DataFusion `TableProvider` of a Strata table.
//!
//! A scan pins the table's current version and builds:
//!
//! ```text
//! APPEND:     StrataScanExec <- Projection <- [TTL filter] <- Union(memtable rows, Parquet scan)
//! OVERWRITE:  StrataScanExec <- Projection <- [TTL filter] <- DedupExec
//!                 <- SortPreservingMerge(key, __seq desc)
//!                 <- Union(sorted memtable rows, one partition per SST)
//! ```
//!
//! Pruning happens in three places: memtables and SSTs whose time range
//! misses the filters are skipped, then SSTs whose manifest min/max (tags,
//! time) cannot match are skipped (provider/pruning.rs), both without any
//! object-store read; the Parquet scan then prunes row groups and pages by
//! statistics, page index and bloom filters. In OVERWRITE mode only filters
//! on primary key columns go below deduplication: a filter on a field could
//! otherwise hide the newest version of a row and resurrect an older one.
//!
//! Rows older than the table's `ttl` are hidden at once; background expiry
//! and compaction delete them later.

mod barrier;
mod dedup;
mod last;
pub(crate) mod plan;
mod pruning;
mod scan_exec;
mod sink;
pub mod time_range;

use std::{collections::BTreeSet, sync::Arc};

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use async_trait::async_trait;
use datafusion::{
    catalog::Session,
    common::{DFSchema, DataFusionError, Result as DfResult, ScalarValue},
    datasource::{sink::DataSinkExec, TableType},
    logical_expr::{
        col, dml::InsertOp, lit, utils::conjunction, Expr, TableProviderFilterPushDown,
    },
    physical_expr::{expressions::Column, PhysicalExpr},
    physical_plan::{
        filter::FilterExec, projection::ProjectionExec, union::UnionExec, ExecutionPlan,
    },
};
pub use dedup::DedupExec;
pub use last::LastValuesProvider;
pub use scan_exec::{ScanStats, StrataScanExec};
pub use sink::TableSink;
use strata_sst::TimeRange;

use self::plan::SourceSpec;
use crate::{
    gc::SstHandle,
    options::{ttl_cutoff, UpdateMode},
    table::Table,
    table::TableVersion,
};

/// Whether `expr` reads only primary key columns of `schema`: a filter
/// that may go below deduplication (in `OVERWRITE` mode a filter on a
/// field could hide a row's newest version and let an older one through).
pub fn on_key_only(schema: &crate::schema::TableSchema, expr: &Expr) -> bool {
    let columns = expr.column_refs();
    !columns.is_empty()
        && columns.iter().all(|c| {
            schema
                .index_of(&c.name)
                .is_some_and(|i| schema.is_primary_key(i))
        })
}

/// A table as DataFusion sees it.
#[derive(Debug)]
pub struct StrataTableProvider {
    table: Arc<Table>,
    schema: SchemaRef,
    /// A compute instance's scan: this version's SSTs, with these rows (the
    /// leader's, not flushed as of the version's flushed offset) in place
    /// of its memtables.
    over: Option<(Arc<TableVersion>, Vec<RecordBatch>)>,
}

impl StrataTableProvider {
    pub fn new(table: Arc<Table>) -> Self {
        Self {
            schema: table.arrow_schema(),
            table,
            over: None,
        }
    }

    /// A scan of `version`'s SSTs and of `rows` instead of its memtables
    /// (storage columns, `__seq` among them: see `Table::unflushed_since`).
    /// `schema` is the one the query was planned with; columns are found
    /// in `version` by name.
    pub fn over_rows(
        table: Arc<Table>,
        schema: SchemaRef,
        version: Arc<TableVersion>,
        rows: Vec<RecordBatch>,
    ) -> Self {
        Self {
            schema,
            table,
            over: Some((version, rows)),
        }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }
}

#[async_trait]
impl datafusion::catalog::TableProvider for StrataTableProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Every filter helps prune; which ones may go below deduplication
        // is decided per source in `scan`. DataFusion re-applies them all.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = &self.table;
        let version = match &self.over {
            Some((v, _)) => v.clone(),
            None => table.version(),
        };
        let meta = version.meta.clone();
        let schema = meta.schema();
        let storage = meta.storage_schema.clone();
        let overwrite = meta.options().update_mode == UpdateMode::Overwrite;
        let ts_name = schema.timestamp_column().name.clone();
        // Columns are resolved against the definition this scan pinned,
        // which has at least the columns the planner saw.
        let wanted: Vec<usize> = match projection {
            Some(p) => p
                .iter()
                .map(|&i| {
                    let name = self.schema.field(i).name();
                    schema.index_of(name).ok_or_else(|| {
                        DataFusionError::Plan(format!("column {name} no longer exists"))
                    })
                })
                .collect::<DfResult<_>>()?,
            None => (0..self.schema.fields().len()).collect(),
        };

        // Filters on key columns may go below deduplication; any filter
        // may go into a source that needs none.
        let key_only: Vec<Expr> = filters
            .iter()
            .filter(|f| !overwrite || on_key_only(schema, f))
            .cloned()
            .collect();
        let cutoff = ttl_cutoff(meta.options().ttl);
        let ttl_filter = cutoff.map(|cutoff| {
            col(ts_name.as_str()).gt_eq(lit(ScalarValue::TimestampMillisecond(Some(cutoff), None)))
        });
        let with_ttl = |mut v: Vec<Expr>| {
            v.extend(ttl_filter.clone());
            v
        };
        let merge_filters = with_ttl(key_only);
        let all_filters = with_ttl(filters.to_vec());
        let range: TimeRange = time_range::extract(&merge_filters, &ts_name);

        let df_schema = DFSchema::try_from(storage.clone())?;
        let physical = |exprs: &[Expr]| -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
            match conjunction(exprs.to_vec()) {
                Some(p) => Ok(Some(state.create_physical_expr(p, &df_schema)?)),
                None => Ok(None),
            }
        };
        let merge_predicate = physical(&merge_filters)?;

        let mut stats = ScanStats {
            ssts_total: version.ssts.len(),
            ..Default::default()
        };
        // The rows in memory: the memtables', or those given in their place.
        let (mem_ranges, batches): (Vec<TimeRange>, Vec<RecordBatch>) = match &self.over {
            None => {
                stats.memtables_total = version.memtables().count();
                let memtables: Vec<_> = version
                    .memtables()
                    .filter(|m| m.time_range().is_some_and(|r| r.overlaps(&range)))
                    .collect();
                stats.memtables_scanned = memtables.len();
                (
                    memtables.iter().filter_map(|m| m.time_range()).collect(),
                    memtables.iter().flat_map(|m| m.snapshot()).collect(),
                )
            }
            Some((_, rows)) => match rows_time_range(rows, &ts_name) {
                Some(r) if r.overlaps(&range) => {
                    stats.memtables_total = 1;
                    stats.memtables_scanned = 1;
                    (vec![r], rows.clone())
                }
                _ => (Vec::new(), Vec::new()),
            },
        };

        let in_range: Vec<Arc<SstHandle>> = version
            .ssts
            .iter()
            .filter(|s| s.info.time_range.overlaps(&range))
            .cloned()
            .collect();
        stats.ssts_pruned_by_time = version.ssts.len() - in_range.len();
        let ssts = match &merge_predicate {
            Some(p) => {
                let (kept, pruned) = pruning::prune_ssts(in_range, p, &storage, &ts_name);
                stats.ssts_pruned_by_stats = pruned;
                kept
            }
            None => in_range,
        };
        stats.ssts_scanned = ssts.len();

        // OVERWRITE: a key includes its time, so two sources can hold the
        // same key only where their time ranges overlap. An SST that
        // overlaps no other source (flush and compaction leave each SST
        // free of duplicates) is read as it is: no key columns, no merge.
        let mut alone: Vec<Arc<SstHandle>> = Vec::new();
        let mut merged: Vec<Arc<SstHandle>> = Vec::new();
        if overwrite {
            let ranges: Vec<TimeRange> = ssts
                .iter()
                .map(|s| s.info.time_range)
                .chain(mem_ranges.iter().copied())
                .collect();
            for (i, sst) in ssts.iter().enumerate() {
                let overlaps = ranges
                    .iter()
                    .enumerate()
                    .any(|(j, r)| j != i && r.overlaps(&sst.info.time_range));
                if overlaps {
                    merged.push(sst.clone());
                } else {
                    alone.push(sst.clone());
                }
            }
        } else {
            merged = ssts;
        }
        stats.ssts_merged = if overwrite { merged.len() } else { 0 };
        let target_partitions = state.config().target_partitions().max(1);
        let parquet_options = state.table_options().parquet.clone();

        let branch = |spec: SourceSpec, batches: Vec<RecordBatch>, ssts: Vec<Arc<SstHandle>>| {
            let parquet_options = parquet_options.clone();
            let wanted = &wanted;
            let ttl_filter = &ttl_filter;
            async move {
                let mut children = Vec::new();
                if let Some(m) = plan::memtable_source(&spec, batches).await? {
                    children.push(m);
                }
                if let Some(s) = plan::sst_source(
                    &table.ctx,
                    &spec,
                    &ssts,
                    parquet_options,
                    table.ctx.reader_factory.clone(),
                )? {
                    children.push(s);
                }
                let mut input = plan::combine(&spec, children)?;
                let read_schema = spec.read_schema()?;
                // Hide expired rows. (Pushed filters are only hints for
                // pruning; DataFusion re-applies the user's own filters.)
                if let Some(ttl) = ttl_filter {
                    let read_df = DFSchema::try_from(read_schema.clone())?;
                    let physical = state.create_physical_expr(ttl.clone(), &read_df)?;
                    input = Arc::new(FilterExec::try_new(physical, input)?);
                }
                // Exactly the requested columns, in the requested order.
                let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = wanted
                    .iter()
                    .map(|&i| {
                        let p = spec
                            .position(i)
                            .ok_or_else(|| DataFusionError::Internal("column not read".into()))?;
                        let name = read_schema.field(p).name().clone();
                        Ok((
                            Arc::new(Column::new(&name, p)) as Arc<dyn PhysicalExpr>,
                            name,
                        ))
                    })
                    .collect::<DfResult<_>>()?;
                Ok::<_, DataFusionError>(
                    Arc::new(ProjectionExec::try_new(exprs, input)?) as Arc<dyn ExecutionPlan>
                )
            }
        };

        // The storage columns to read: what was asked for, plus the
        // timestamp for TTL, plus (when merging) the key and the sequence.
        let mut plain_read: BTreeSet<usize> = wanted.iter().copied().collect();
        if cutoff.is_some() {
            plain_read.insert(schema.timestamp_index);
        }
        let mut merge_read = plain_read.clone();
        if overwrite {
            merge_read.extend(schema.primary_key.iter().copied());
            merge_read.insert(schema.seq_index());
        }
        let mut branches = Vec::new();
        if !alone.is_empty() {
            let spec = SourceSpec {
                meta: meta.clone(),
                read: plain_read.into_iter().collect(),
                predicate: physical(&all_filters)?,
                merge: false,
                dedup: false,
                target_partitions,
                limit: None,
            };
            branches.push(branch(spec, Vec::new(), alone).await?);
        }
        if !merged.is_empty() || !batches.is_empty() || branches.is_empty() {
            let spec = SourceSpec {
                meta: meta.clone(),
                read: merge_read.into_iter().collect(),
                predicate: merge_predicate.clone(),
                merge: overwrite,
                dedup: overwrite,
                target_partitions,
                // Pushing a limit below deduplication or a filter would be wrong.
                limit: limit.filter(|_| !overwrite && filters.is_empty() && cutoff.is_none()),
            };
            branches.push(branch(spec, batches, merged).await?);
        }
        let projected: Arc<dyn ExecutionPlan> = if branches.len() == 1 {
            branches.remove(0)
        } else {
            UnionExec::try_new(branches)?
        };
        Ok(Arc::new(StrataScanExec::new(
            table.name().to_string(),
            projected,
            version,
            stats,
            table.load().clone(),
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported; use INSERT INTO"
            )));
        }
        Ok(Arc::new(DataSinkExec::new(
            input,
            Arc::new(TableSink::new(self.table.clone())),
            None,
        )))
    }
}

/// The time range of rows given in place of memtables (`None`: no rows).
/// Without their timestamp column, every time (they overlap everything).
fn rows_time_range(rows: &[RecordBatch], ts_name: &str) -> Option<TimeRange> {
    use arrow::{array::AsArray, compute, datatypes::TimestampMillisecondType};
    let mut out: Option<TimeRange> = None;
    for b in rows.iter().filter(|b| b.num_rows() > 0) {
        let Some(ts) = b
            .column_by_name(ts_name)
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
        else {
            return Some(TimeRange::ALL);
        };
        let (Some(lo), Some(hi)) = (compute::min(ts), compute::max(ts)) else {
            return Some(TimeRange::ALL);
        };
        let r = TimeRange::new(lo, hi.saturating_add(1));
        out = Some(match out {
            Some(o) => TimeRange::new(o.start.min(r.start), o.end.max(r.end)),
            None => r,
        });
    }
    out
}
