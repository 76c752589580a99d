//! Building blocks of scan and compaction plans: memtable and SST sources,
//! and the sorted merge with deduplication above them.

use std::sync::Arc;

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use datafusion::{
    common::{config::TableParquetOptions, DataFusionError, Result as DfResult},
    datasource::{
        listing::PartitionedFile,
        memory::MemorySourceConfig,
        physical_plan::{
            FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
        },
        source::DataSourceExec,
    },
    physical_expr::{expressions::Column, LexOrdering, PhysicalExpr, PhysicalSortExpr},
    physical_plan::{
        empty::EmptyExec, sorts::sort_preserving_merge::SortPreservingMergeExec, union::UnionExec,
        ExecutionPlan, ExecutionPlanProperties,
    },
};
use strata_sst::SEQ_COLUMN;

use super::DedupExec;
use crate::{
    context::EngineContext,
    gc::SstHandle,
    schema::adapt_batch,
    sort::{sort_and_dedup, KEY_SORT, SEQ_SORT},
    table_meta::TableMeta,
};

fn ext(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// What to read and how.
pub(crate) struct SourceSpec {
    pub meta: Arc<TableMeta>,
    /// Storage column indices to read, ascending.
    pub read: Vec<usize>,
    /// For SST pruning (row groups, pages, bloom filters); over the storage
    /// schema.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Every source must be sorted by (key, `__seq` desc) and rows merged
    /// and deduplicated.
    pub merge: bool,
    /// Keep only the newest row per key (OVERWRITE); with `merge` only.
    pub dedup: bool,
    pub target_partitions: usize,
    /// Rows that are enough: only when nothing above the sources filters or
    /// deduplicates (APPEND, no filters, no TTL).
    pub limit: Option<usize>,
}

impl SourceSpec {
    pub fn read_schema(&self) -> DfResult<SchemaRef> {
        Ok(Arc::new(self.meta.storage_schema.project(&self.read)?))
    }

    /// The position of storage column `idx` among the read columns.
    pub fn position(&self, idx: usize) -> Option<usize> {
        self.read.iter().position(|&i| i == idx)
    }

    fn sort_exprs(
        &self,
        index_of: &dyn Fn(usize) -> Option<usize>,
        schema: &SchemaRef,
    ) -> DfResult<Option<LexOrdering>> {
        if !self.merge {
            return Ok(None);
        }
        let table = self.meta.schema();
        let mut exprs = Vec::new();
        for &k in &table.primary_key {
            let p = index_of(k)
                .ok_or_else(|| DataFusionError::Internal("key column not read".into()))?;
            exprs.push(PhysicalSortExpr::new(
                Arc::new(Column::new(schema.field(p).name(), p)),
                KEY_SORT,
            ));
        }
        let p = index_of(table.seq_index())
            .ok_or_else(|| DataFusionError::Internal("__seq not read".into()))?;
        exprs.push(PhysicalSortExpr::new(
            Arc::new(Column::new(SEQ_COLUMN, p)),
            SEQ_SORT,
        ));
        Ok(LexOrdering::new(exprs))
    }

    /// The sort order over the read columns (for the merge).
    pub fn ordering(&self) -> DfResult<Option<LexOrdering>> {
        let schema = self.read_schema()?;
        self.sort_exprs(&|i| self.position(i), &schema)
    }

    /// The sort order over the full storage schema (how sources declare it,
    /// before their projection).
    fn storage_ordering(&self) -> DfResult<Option<LexOrdering>> {
        self.sort_exprs(&Some, &self.meta.storage_schema)
    }

    /// The key column positions among the read columns.
    pub fn key_positions(&self) -> Vec<usize> {
        self.meta
            .schema()
            .primary_key
            .iter()
            .filter_map(|&k| self.position(k))
            .collect()
    }
}

/// Memtable rows as a source. Rows written under older schemas are adapted
/// to the current one. When merging, rows are sorted (and, for OVERWRITE,
/// deduplicated) in memory first.
pub(crate) async fn memtable_source(
    spec: &SourceSpec,
    batches: Vec<RecordBatch>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let storage = spec.meta.storage_schema.clone();
    let adapted: Vec<RecordBatch> = batches
        .iter()
        .map(|b| adapt_batch(b, &storage))
        .collect::<crate::Result<_>>()
        .map_err(ext)?;
    let config = if spec.merge {
        let key = spec.meta.schema().primary_key.clone();
        let seq = spec.meta.schema().seq_index();
        let dedup = spec.dedup;
        let schema = storage.clone();
        let sorted = tokio::task::spawn_blocking(move || {
            sort_and_dedup(&schema, &adapted, &key, seq, dedup)
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .map_err(ext)?;
        let parts: Vec<Vec<RecordBatch>> = sorted.into_iter().map(|b| vec![b]).collect();
        let config = MemorySourceConfig::try_new(&parts, storage, Some(spec.read.clone()))?;
        match spec.storage_ordering()? {
            Some(o) => config.try_with_sort_information(vec![o])?,
            None => config,
        }
    } else {
        let adapted = match spec.limit {
            Some(limit) => {
                let mut kept = Vec::new();
                let mut rows = 0;
                for b in adapted {
                    if rows >= limit {
                        break;
                    }
                    rows += b.num_rows();
                    kept.push(b);
                }
                kept
            }
            None => adapted,
        };
        let n = spec.target_partitions.clamp(1, adapted.len().max(1));
        let mut parts = vec![Vec::new(); n];
        for (i, b) in adapted.into_iter().enumerate() {
            parts[i % n].push(b);
        }
        MemorySourceConfig::try_new(&parts, storage, Some(spec.read.clone()))?
    };
    Ok(Some(DataSourceExec::from_data_source(config)))
}

/// A Parquet scan of SSTs. When merging, each SST is its own partition so
/// that its sort order holds; otherwise files spread over partitions.
pub(crate) fn sst_source(
    ctx: &EngineContext,
    spec: &SourceSpec,
    ssts: &[Arc<SstHandle>],
    parquet_options: TableParquetOptions,
    reader_factory: Arc<dyn ParquetFileReaderFactory>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if ssts.is_empty() {
        return Ok(None);
    }
    let mut source = ParquetSource::new(spec.meta.storage_schema.clone())
        .with_table_parquet_options(parquet_options)
        .with_enable_page_index(true)
        .with_bloom_filter_on_read(true)
        .with_metadata_size_hint(64 * 1024)
        .with_parquet_file_reader_factory(reader_factory);
    if let Some(p) = &spec.predicate {
        source = source.with_predicate(p.clone());
    }
    let files: Vec<PartitionedFile> = ssts
        .iter()
        .map(|s| PartitionedFile::new(s.info.path.clone(), s.info.size_bytes))
        .collect();
    let groups: Vec<FileGroup> = if spec.merge {
        files.into_iter().map(|f| FileGroup::new(vec![f])).collect()
    } else {
        let n = spec.target_partitions.clamp(1, files.len());
        let mut groups = vec![Vec::new(); n];
        for (i, f) in files.into_iter().enumerate() {
            groups[i % n].push(f);
        }
        groups.into_iter().map(FileGroup::new).collect()
    };
    let mut builder = FileScanConfigBuilder::new(ctx.store_url.clone(), Arc::new(source))
        .with_file_groups(groups)
        .with_projection_indices(Some(spec.read.clone()))?
        .with_limit(spec.limit);
    if let Some(o) = spec.storage_ordering()? {
        builder = builder.with_output_ordering(vec![o]);
    }
    let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(builder.build());
    match spec.ordering()? {
        Some(o) => Ok(Some(Arc::new(super::barrier::SortedScanExec::new(scan, o)))),
        None => Ok(Some(scan)),
    }
}

/// Combines sources: a union, or, when merging, a sort-preserving merge and
/// (for OVERWRITE) deduplication.
pub(crate) fn combine(
    spec: &SourceSpec,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if children.is_empty() {
        return Ok(Arc::new(EmptyExec::new(spec.read_schema()?)));
    }
    let union = UnionExec::try_new(children)?;
    let Some(ordering) = spec.ordering()? else {
        return Ok(union);
    };
    let merged: Arc<dyn ExecutionPlan> = if union.output_partitioning().partition_count() > 1 {
        Arc::new(SortPreservingMergeExec::new(ordering.clone(), union))
    } else {
        union
    };
    if spec.dedup {
        Ok(Arc::new(DedupExec::new(
            merged,
            spec.key_positions(),
            ordering,
        )))
    } else {
        Ok(merged)
    }
}
