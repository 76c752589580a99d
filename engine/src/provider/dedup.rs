//! `DedupExec`: keeps the newest row of each primary key from an input that
//! is sorted by (primary key ascending, `__seq` descending).
//!
//! It streams: each batch is filtered as it arrives, remembering only the
//! last key of the previous batch. The planner guarantees the ordering with a
//! `SortPreservingMergeExec` over the already-sorted sources (each SST, and
//! the sorted memtable rows), and the requirement is declared so that
//! DataFusion's optimizer keeps it.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arrow::{
    array::ArrayRef, compute::filter_record_batch, record_batch::RecordBatch, row::RowConverter,
};
use datafusion::{
    common::{tree_node::TreeNodeRecursion, DataFusionError, Result as DfResult},
    execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext},
    physical_expr::{LexOrdering, OrderingRequirements, PhysicalExpr},
    physical_plan::{
        execution_plan::{Boundedness, EmissionType},
        metrics::{BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet},
        ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
        ExecutionPlanProperties, Partitioning, PlanProperties, ReplaceChildrenOptions,
    },
};
use futures::{Stream, StreamExt};

use crate::sort::key_converter;

/// Keeps the first row of every run of equal primary keys.
#[derive(Debug)]
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    /// Primary key column indices in the input schema.
    key: Vec<usize>,
    /// (key…, `__seq` desc): the order the input must have.
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DedupExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, key: Vec<usize>, ordering: LexOrdering) -> Self {
        let properties = PlanProperties::new(
            input.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            key,
            ordering,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = self.input.schema();
        let names: Vec<&str> = self
            .key
            .iter()
            .map(|&i| schema.field(i).name().as_str())
            .collect();
        write!(f, "DedupExec: key=[{}], keep=newest", names.join(", "))
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "DedupExec takes one child, got {}",
                children.len()
            )));
        }
        let input = children.swap_remove(0);
        Ok(match options.children_properties {
            ChildrenPropertiesMode::Keep => Arc::new(Self {
                input,
                key: self.key.clone(),
                ordering: self.ordering.clone(),
                properties: self.properties.clone(),
                metrics: ExecutionPlanMetricsSet::new(),
            }),
            ChildrenPropertiesMode::Recompute => {
                Arc::new(Self::new(input, self.key.clone(), self.ordering.clone()))
            }
        })
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
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DedupExec has one partition, asked for {partition}"
            )));
        }
        if self.input.output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Internal(
                "DedupExec needs a single, sorted input partition".to_string(),
            ));
        }
        let input = self.input.execute(0, context)?;
        let converter = key_converter(&self.input.schema(), &self.key)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Box::pin(DedupStream {
            input,
            key: self.key.clone(),
            converter,
            last_key: None,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            duplicates: MetricBuilder::new(&self.metrics).counter("duplicates_removed", partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct DedupStream {
    input: SendableRecordBatchStream,
    key: Vec<usize>,
    converter: RowConverter,
    last_key: Option<Vec<u8>>,
    baseline: BaselineMetrics,
    duplicates: Count,
}

impl DedupStream {
    fn dedup(&mut self, batch: RecordBatch) -> DfResult<RecordBatch> {
        if batch.num_rows() == 0 {
            return Ok(batch);
        }
        let cols: Vec<ArrayRef> = self.key.iter().map(|&i| batch.column(i).clone()).collect();
        let rows = self.converter.convert_columns(&cols)?;
        let mut keep = Vec::with_capacity(rows.num_rows());
        for i in 0..rows.num_rows() {
            let this = rows.row(i);
            let same = if i == 0 {
                self.last_key.as_deref() == Some(this.as_ref())
            } else {
                rows.row(i - 1) == this
            };
            keep.push(!same);
        }
        self.last_key = Some(rows.row(rows.num_rows() - 1).as_ref().to_vec());
        let removed = keep.iter().filter(|k| !**k).count();
        self.duplicates.add(removed);
        if removed == 0 {
            return Ok(batch);
        }
        Ok(filter_record_batch(&batch, &keep.into())?)
    }
}

impl Stream for DedupStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.input.poll_next_unpin(cx);
        let out = match polled {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(self.dedup(batch))),
            other => other,
        };
        self.baseline.record_poll(out)
    }
}

impl RecordBatchStream for DedupStream {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.input.schema()
    }
}
