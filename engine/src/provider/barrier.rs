//! `SortedScanExec`: passes a sorted source through, declaring exactly the
//! order Strata guarantees (primary key, then `__seq` descending) and
//! nothing else.
//!
//! Why: DataFusion derives "column is constant" facts from a Parquet scan's
//! predicate (for `host = 'a'`, host is constant) as if the predicate removed
//! every non-matching row. Strata gives the predicate to the scan for pruning
//! only, so rows of other hosts can still come through. With the false fact,
//! the optimizer shortens the merge order to `(ts, __seq)`, interleaving keys
//! and breaking deduplication. This node hides those facts.

use std::{fmt, sync::Arc};

use datafusion::{
    common::{tree_node::TreeNodeRecursion, DataFusionError, Result as DfResult},
    execution::{SendableRecordBatchStream, TaskContext},
    physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr},
    physical_plan::{
        ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan,
        ExecutionPlanProperties, PlanProperties, ReplaceChildrenOptions,
    },
};

#[derive(Debug)]
pub struct SortedScanExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
}

impl SortedScanExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, ordering: LexOrdering) -> Self {
        let eq = EquivalenceProperties::new_with_orderings(input.schema(), vec![ordering.clone()]);
        let properties = PlanProperties::new(
            eq,
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self {
            input,
            ordering,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for SortedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SortedScanExec: order=[{}]", self.ordering)
    }
}

impl ExecutionPlan for SortedScanExec {
    fn name(&self) -> &str {
        "SortedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "SortedScanExec takes one child".into(),
            ));
        }
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.ordering.clone(),
        )))
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
        self.input.execute(partition, context)
    }
}
