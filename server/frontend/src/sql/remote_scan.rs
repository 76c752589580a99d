//! `RemoteScanExec`: the part of a plan that runs on another instance. It
//! holds the SQL a scan of a table led elsewhere sends to the table's
//! leader and asks it only when the plan runs, so planning (and `EXPLAIN`)
//! reads nothing remote. `EXPLAIN` shows the table, the leader planning
//! found and the SQL; `EXPLAIN ANALYZE` the rows the leader returned
//! (`output_rows`) and how long it took (`elapsed_compute`). Execution
//! routes again when the shard moved since planning.

use std::{fmt, sync::Arc};

use arrow::datatypes::SchemaRef;
use datafusion::{
    common::{tree_node::TreeNodeRecursion, DataFusionError, Result as DfResult},
    execution::{SendableRecordBatchStream, TaskContext},
    logical_expr::Expr,
    physical_expr::{EquivalenceProperties, PhysicalExpr},
    physical_plan::{
        execution_plan::{Boundedness, EmissionType},
        metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet},
        stream::RecordBatchStreamAdapter,
        DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
        ReplaceChildrenOptions,
    },
};
use futures::{StreamExt, TryStreamExt};

use super::remote::RemoteTable;

/// What one remote scan reads: the SQL sent, and the scan it stands for
/// (run here instead when the shard has opened here meanwhile).
#[derive(Debug, Clone)]
pub(crate) struct RemoteRead {
    pub sql: String,
    pub projected: SchemaRef,
    pub projection: Option<Vec<usize>>,
    pub filters: Vec<Expr>,
    pub limit: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct RemoteScanExec {
    pub(crate) table: RemoteTable,
    pub(crate) read: RemoteRead,
    /// The leader when the plan was made (execution routes again).
    pub(crate) planned_leader: String,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RemoteScanExec {
    pub fn new(table: RemoteTable, read: RemoteRead, planned_leader: String) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(read.projected.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            table,
            read,
            planned_leader,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for RemoteScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteScanExec: table={}, leader={}, sql={}",
            self.table.entry().name,
            self.planned_leader,
            self.read.sql
        )
    }
}

impl ExecutionPlan for RemoteScanExec {
    fn name(&self) -> &str {
        "RemoteScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "RemoteScanExec takes no children".into(),
            ));
        }
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "RemoteScanExec takes no children".into(),
            ));
        }
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let table = self.table.clone();
        let read = self.read.clone();
        counted_lazily(
            self,
            &self.metrics,
            partition,
            self.read.projected.clone(),
            async move { table.fetch(&read, context).await },
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The one partition of a node that reads from another instance: `fetch`
/// runs only when the stream is first polled; `elapsed_compute` is the time
/// until its answer, `output_rows` the rows it returned.
pub(crate) fn counted_lazily(
    node: &dyn ExecutionPlan,
    metrics: &ExecutionPlanMetricsSet,
    partition: usize,
    schema: SchemaRef,
    fetch: impl std::future::Future<Output = DfResult<SendableRecordBatchStream>> + Send + 'static,
) -> DfResult<SendableRecordBatchStream> {
    if partition != 0 {
        return Err(DataFusionError::Internal(format!(
            "{} has one partition, not {partition}",
            node.name()
        )));
    }
    let baseline = BaselineMetrics::new(metrics, partition);
    let counted = async move {
        let timer = baseline.elapsed_compute().timer();
        let stream = fetch.await;
        timer.done();
        let counted = stream?.map(move |b| {
            if let Ok(b) = &b {
                baseline.record_output(b.num_rows());
            }
            b
        });
        Ok::<_, DataFusionError>(counted)
    };
    let stream = futures::stream::once(counted).try_flatten().boxed();
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}
