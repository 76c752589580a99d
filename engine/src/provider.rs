//! The DataFusion `TableProvider` of a Strata table.
//!
//! A scan pins the table's current version and builds:
//!
//! ```text
//! APPEND:     Projection <- Union(memtable rows, Parquet scan of SSTs)
//! OVERWRITE:  Projection <- DedupExec <- SortPreservingMerge(key, __seq desc)
//!                 <- Union(sorted+deduped memtable rows, one partition per SST)
//! ```
//!
//! Pruning: memtables and SSTs whose time range misses the filters' time
//! range are skipped using the manifest alone; the Parquet scan gets the
//! pushed filters as a predicate for row-group, page and bloom-filter
//! pruning. In OVERWRITE mode only filters on primary key columns are pushed
//! below deduplication (a filter on a field could otherwise hide the newest
//! version of a row and resurrect an older one); other filters run above it.

mod dedup;
mod sink;
pub mod time_range;

use std::{collections::BTreeSet, sync::Arc};

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use async_trait::async_trait;
use datafusion::{
    catalog::Session,
    common::{DFSchema, DataFusionError, Result as DfResult},
    datasource::{
        listing::PartitionedFile,
        memory::MemorySourceConfig,
        physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource},
        sink::DataSinkExec,
        source::DataSourceExec,
        TableType,
    },
    logical_expr::{dml::InsertOp, utils::conjunction, Expr, TableProviderFilterPushDown},
    physical_expr::{expressions::Column, LexOrdering, PhysicalSortExpr},
    physical_plan::{
        empty::EmptyExec, projection::ProjectionExec,
        sorts::sort_preserving_merge::SortPreservingMergeExec, union::UnionExec, ExecutionPlan,
    },
};
pub use dedup::DedupExec;
pub use sink::TableSink;
use strata_sst::{TimeRange, SEQ_COLUMN};

use crate::{
    options::UpdateMode,
    sort::{sort_and_dedup, KEY_SORT, SEQ_SORT},
    table::Table,
};

fn ext(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A table as DataFusion sees it.
#[derive(Debug)]
pub struct StrataTableProvider {
    table: Arc<Table>,
}

impl StrataTableProvider {
    pub fn new(table: Arc<Table>) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Whether `expr` only reads primary key columns.
    fn on_key_only(&self, expr: &Expr) -> bool {
        let schema = self.table.schema();
        let columns = expr.column_refs();
        !columns.is_empty()
            && columns.iter().all(|c| {
                schema
                    .index_of(&c.name)
                    .is_some_and(|i| schema.is_primary_key(i))
            })
    }

    fn pushable(&self, expr: &Expr) -> bool {
        self.table.update_mode() == UpdateMode::Append || self.on_key_only(expr)
    }
}

fn schema_key(table: &Table) -> &[usize] {
    &table.schema().primary_key
}

/// Splits rows over `n` partitions, round-robin by batch.
fn spread(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let n = n.clamp(1, batches.len().max(1));
    let mut parts = vec![Vec::new(); n];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % n].push(b);
    }
    parts
}

#[async_trait]
impl datafusion::catalog::TableProvider for StrataTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.arrow_schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.pushable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = &self.table;
        let version = table.version();
        let schema = table.schema();
        let storage = table.storage_schema().clone();
        let overwrite = table.update_mode() == UpdateMode::Overwrite;
        let seq_idx = schema.seq_index();
        let user_cols = schema.columns.len();
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..user_cols).collect());

        let pushed: Vec<Expr> = filters
            .iter()
            .filter(|f| self.pushable(f))
            .cloned()
            .collect();
        let range: TimeRange = time_range::extract(&pushed, &schema.timestamp_column().name);

        // The storage columns to read: what was asked for, plus the key and
        // the sequence when rows must be deduplicated.
        let mut read: BTreeSet<usize> = wanted.iter().copied().collect();
        if overwrite {
            read.extend(schema.primary_key.iter().copied());
            read.insert(seq_idx);
        }
        let read: Vec<usize> = read.into_iter().collect();
        let read_schema: SchemaRef = Arc::new(storage.project(&read)?);
        let pos = |storage_idx: usize| read.iter().position(|&i| i == storage_idx);

        // The order of every sorted source: over the read columns (for the
        // merge and dedup above the scans) and over the full storage schema
        // (how scans declare it, before their projection).
        let sort_exprs = |index_of: &dyn Fn(usize) -> Option<usize>,
                          schema: &SchemaRef|
         -> DfResult<Option<LexOrdering>> {
            let mut exprs = Vec::new();
            for &k in schema_key(table) {
                let p = index_of(k)
                    .ok_or_else(|| DataFusionError::Internal("key column not read".into()))?;
                exprs.push(PhysicalSortExpr::new(
                    Arc::new(Column::new(schema.field(p).name(), p)),
                    KEY_SORT,
                ));
            }
            let p = index_of(seq_idx)
                .ok_or_else(|| DataFusionError::Internal("__seq not read".into()))?;
            exprs.push(PhysicalSortExpr::new(
                Arc::new(Column::new(SEQ_COLUMN, p)),
                SEQ_SORT,
            ));
            Ok(LexOrdering::new(exprs))
        };
        let (ordering, storage_ordering) = if overwrite {
            (
                sort_exprs(&|i| pos(i), &read_schema)?,
                sort_exprs(&|i| Some(i), &storage)?,
            )
        } else {
            (None, None)
        };

        let target_partitions = state.config().target_partitions().max(1);
        let mut children: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        // Memtables.
        let mem_batches: Vec<RecordBatch> = version
            .memtables()
            .filter(|m| m.time_range().is_some_and(|r| r.overlaps(&range)))
            .flat_map(|m| m.snapshot())
            .collect();
        if !mem_batches.is_empty() {
            let source = if overwrite {
                let key = schema.primary_key.clone();
                let storage2 = storage.clone();
                let sorted = tokio::task::spawn_blocking(move || {
                    sort_and_dedup(&storage2, &mem_batches, &key, seq_idx, true)
                })
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .map_err(ext)?;
                let parts: Vec<Vec<RecordBatch>> = sorted.into_iter().map(|b| vec![b]).collect();
                let config =
                    MemorySourceConfig::try_new(&parts, storage.clone(), Some(read.clone()))?;
                match &storage_ordering {
                    Some(o) => config.try_with_sort_information(vec![o.clone()])?,
                    None => config,
                }
            } else {
                MemorySourceConfig::try_new(
                    &spread(mem_batches, target_partitions),
                    storage.clone(),
                    Some(read.clone()),
                )?
            };
            children.push(DataSourceExec::from_data_source(source));
        }

        // SSTs.
        let ssts: Vec<_> = version
            .ssts
            .iter()
            .filter(|s| s.time_range.overlaps(&range))
            .cloned()
            .collect();
        if !ssts.is_empty() {
            let mut source = ParquetSource::new(storage.clone())
                .with_table_parquet_options(state.table_options().parquet.clone())
                .with_enable_page_index(true)
                .with_bloom_filter_on_read(true)
                .with_metadata_size_hint(64 * 1024);
            if let Some(predicate) = conjunction(pushed.clone()) {
                let df_schema = DFSchema::try_from(storage.clone())?;
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                source = source.with_predicate(physical);
            }
            let files: Vec<PartitionedFile> = ssts
                .iter()
                .map(|s| PartitionedFile::new(s.path.clone(), s.size_bytes))
                .collect();
            let groups: Vec<FileGroup> = if overwrite {
                // One partition per SST keeps each file's sort order.
                files.into_iter().map(|f| FileGroup::new(vec![f])).collect()
            } else {
                let n = target_partitions.min(files.len()).max(1);
                let mut groups = vec![Vec::new(); n];
                for (i, f) in files.into_iter().enumerate() {
                    groups[i % n].push(f);
                }
                groups.into_iter().map(FileGroup::new).collect()
            };
            let mut builder =
                FileScanConfigBuilder::new(table.ctx.store_url.clone(), Arc::new(source))
                    .with_file_groups(groups)
                    .with_projection_indices(Some(read.clone()))?;
            if let Some(o) = &storage_ordering {
                builder = builder.with_output_ordering(vec![o.clone()]);
            }
            children.push(DataSourceExec::from_data_source(builder.build()));
        }

        let input: Arc<dyn ExecutionPlan> = if children.is_empty() {
            Arc::new(EmptyExec::new(read_schema.clone()))
        } else {
            let union = UnionExec::try_new(children)?;
            match &ordering {
                Some(o) => {
                    let merged: Arc<dyn ExecutionPlan> =
                        Arc::new(SortPreservingMergeExec::new(o.clone(), union));
                    let key: Vec<usize> =
                        schema.primary_key.iter().filter_map(|&k| pos(k)).collect();
                    Arc::new(DedupExec::new(merged, key, o.clone()))
                }
                None => union,
            }
        };

        // Project to exactly the requested columns, in the requested order.
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = wanted
            .iter()
            .map(|&i| {
                let p =
                    pos(i).ok_or_else(|| DataFusionError::Internal("column not read".into()))?;
                let name = read_schema.field(p).name().clone();
                Ok((
                    Arc::new(Column::new(&name, p))
                        as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                    name,
                ))
            })
            .collect::<DfResult<_>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
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
