//! `StrataScanExec`: the root of every table scan. It passes its input
//! through unchanged, keeps the scanned [`TableVersion`] pinned until the
//! scan's streams finish (so garbage collection cannot delete a file the
//! scan reads), and reports what planning pruned: `EXPLAIN` shows the SST
//! counts, `EXPLAIN ANALYZE` shows them as metrics.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use datafusion::{
    common::{tree_node::TreeNodeRecursion, DataFusionError, Result as DfResult},
    execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext},
    physical_expr::PhysicalExpr,
    physical_plan::{
        metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet},
        ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
        ReplaceChildrenOptions,
    },
};
use futures::{Stream, StreamExt};

use crate::table::{TableLoad, TableVersion};

/// What planning decided about one scan.
#[derive(Debug, Clone, Default)]
pub struct ScanStats {
    pub ssts_total: usize,
    pub ssts_pruned_by_time: usize,
    pub ssts_pruned_by_stats: usize,
    pub ssts_scanned: usize,
    /// Of those scanned, SSTs merged and deduplicated with others (their
    /// time ranges overlap); the rest are read as they are.
    pub ssts_merged: usize,
    pub memtables_total: usize,
    pub memtables_scanned: usize,
}

#[derive(Debug)]
pub struct StrataScanExec {
    table: String,
    input: Arc<dyn ExecutionPlan>,
    version: Arc<TableVersion>,
    stats: ScanStats,
    metrics: ExecutionPlanMetricsSet,
    /// The table's counters: one scan per execution, and the rows read.
    load: Arc<TableLoad>,
}

impl StrataScanExec {
    pub fn new(
        table: String,
        input: Arc<dyn ExecutionPlan>,
        version: Arc<TableVersion>,
        stats: ScanStats,
        load: Arc<TableLoad>,
    ) -> Self {
        Self {
            table,
            input,
            version,
            stats,
            metrics: ExecutionPlanMetricsSet::new(),
            load,
        }
    }

    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }
}

impl DisplayAs for StrataScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "StrataScanExec: table={}, ssts={}/{} (pruned: time={}, stats={}; merged: {}), memtables={}/{}",
            self.table,
            s.ssts_scanned,
            s.ssts_total,
            s.ssts_pruned_by_time,
            s.ssts_pruned_by_stats,
            s.ssts_merged,
            s.memtables_scanned,
            s.memtables_total
        )
    }
}

impl ExecutionPlan for StrataScanExec {
    fn name(&self) -> &str {
        "StrataScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "StrataScanExec takes one child".into(),
            ));
        }
        Ok(Arc::new(Self {
            table: self.table.clone(),
            input: children.swap_remove(0),
            version: self.version.clone(),
            stats: self.stats.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
            load: self.load.clone(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition == 0 {
            self.load.scanned();
            let s = &self.stats;
            for (name, value) in [
                ("ssts_total", s.ssts_total),
                ("ssts_pruned_by_time", s.ssts_pruned_by_time),
                ("ssts_pruned_by_stats", s.ssts_pruned_by_stats),
                ("ssts_scanned", s.ssts_scanned),
                ("ssts_merged", s.ssts_merged),
                ("memtables_scanned", s.memtables_scanned),
            ] {
                MetricBuilder::new(&self.metrics)
                    .global_counter(name)
                    .add(value);
            }
        }
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(PinnedStream {
            input,
            _version: self.version.clone(),
            load: self.load.clone(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A stream that keeps a table version alive while it runs.
struct PinnedStream {
    input: SendableRecordBatchStream,
    _version: Arc<TableVersion>,
    load: Arc<TableLoad>,
}

impl Stream for PinnedStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.input.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(batch))) = &next {
            self.load.rows_scanned(batch.num_rows());
        }
        next
    }
}

impl RecordBatchStream for PinnedStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}
