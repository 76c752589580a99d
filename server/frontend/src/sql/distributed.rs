//! Distributed execution: the parts of a plan that can run where a table's
//! rows are run there.
//!
//! After DataFusion's own optimizations, [`PushToData`] looks for a partial
//! aggregate, and for a sort (with or without a limit), over scans of tables
//! other instances lead: a partitioned table's union of partitions, or one
//! remote table joined to others. It moves that operator, with the filters
//! and projections between it and the scan, into each remote scan: a
//! [`RemotePlanExec`] sends the part, serialized with `datafusion-proto`,
//! to the table's leader (`ExecutePlan`), which runs it over its own scan of
//! the table and streams back the partial aggregate's states, or its rows
//! sorted (its k first, with a limit). The final aggregate, merge and
//! limit run here; partitions
//! led here run the same part here. `EXPLAIN` shows each part, the table
//! and the leader planning found; `EXPLAIN ANALYZE` the rows each part
//! returned.
//!
//! The receiver ([`QueryEngine::execute_plan_part`]) accepts only those
//! operators over its one scan (see [`ALLOWED`]): a plan part that reads
//! anything else (a file, another table) is refused.

use std::{fmt, sync::Arc, time::Instant};

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use datafusion::{
    catalog::TableProvider,
    common::{
        tree_node::{Transformed, TreeNode, TreeNodeRecursion},
        DataFusionError, Result as DfResult,
    },
    config::ConfigOptions,
    execution::{SendableRecordBatchStream, TaskContext},
    logical_expr::Expr,
    physical_expr::{EquivalenceProperties, PhysicalExpr},
    physical_optimizer::PhysicalOptimizerRule,
    physical_plan::{
        aggregates::{AggregateExec, AggregateMode},
        coalesce_partitions::CoalescePartitionsExec,
        coop::CooperativeExec,
        displayable,
        execution_plan::{Boundedness, EmissionType},
        filter::FilterExec,
        limit::{GlobalLimitExec, LocalLimitExec},
        metrics::{ExecutionPlanMetricsSet, MetricsSet},
        projection::ProjectionExec,
        repartition::RepartitionExec,
        sorts::{sort::SortExec, sort_preserving_merge::SortPreservingMergeExec},
        stream::RecordBatchStreamAdapter,
        union::UnionExec,
        DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
        PlanProperties, ReplaceChildrenOptions,
    },
};
use datafusion_proto::{
    bytes::Serializeable,
    physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension},
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use strata_engine::{provider::StrataTableProvider, Located};
use strata_proto::storage::{ExecutePlanRequest, RequestContext};

use super::{
    remote::{moved_error, relabel, state_of, target, RemoteTable, MOVE_POLL, MOVE_WAIT},
    remote_scan::{counted_lazily, RemoteRead, RemoteScanExec},
    QueryEngine,
};
use crate::{
    error::{Error, RemoteError, Result},
    route::Target,
};

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Stands for the scan in a plan part sent to another instance: the
/// receiver puts its own scan of the table there.
#[derive(Debug)]
pub(crate) struct ScanLeafExec {
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ScanLeafExec {
    fn new(schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ScanLeafExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScanLeafExec")
    }
}

impl ExecutionPlan for ScanLeafExec {
    fn name(&self) -> &str {
        "ScanLeafExec"
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
        no_children(self, children)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        no_children(self, children)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "a plan part's scan leaf runs only once replaced by a scan".into(),
        ))
    }
}

/// A leaf, unchanged: it takes no children.
fn no_children(
    leaf: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if !children.is_empty() {
        return Err(DataFusionError::Internal(format!(
            "{} takes no children",
            leaf.name()
        )));
    }
    Ok(leaf)
}

/// `node` over new `children`, its properties computed again.
fn over(
    node: &Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    node.clone().replace_children(
        children,
        ReplaceChildrenOptions::new(
            datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
        ),
    )
}

/// Encodes the scan leaf (as its schema) and, decoding, puts `scan` in its
/// place.
#[derive(Debug)]
struct LeafCodec {
    scan: Option<Arc<dyn ExecutionPlan>>,
}

impl PhysicalExtensionCodec for LeafCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Plan(
                "a plan part's scan leaf has no inputs".into(),
            ));
        }
        let proto = datafusion_proto::protobuf::Schema::decode(buf)
            .map_err(|e| DataFusionError::Plan(format!("a scan leaf's schema: {e}")))?;
        let schema: arrow::datatypes::Schema = (&proto).try_into()?;
        let Some(scan) = &self.scan else {
            return Ok(Arc::new(ScanLeafExec::new(Arc::new(schema))));
        };
        let have = scan.schema();
        let same = have.fields().len() == schema.fields().len()
            && have
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(DataFusionError::External(Box::new(
                strata_engine::Error::CatalogChanged(format!(
                    "the plan part expects columns {:?}, the table here has {:?}",
                    schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                    have.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                )),
            )));
        }
        Ok(scan.clone())
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(leaf) = node.downcast_ref::<ScanLeafExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot be sent to another instance",
                node.name()
            )));
        };
        let proto = datafusion_proto::protobuf::Schema::try_from(leaf.schema.as_ref())?;
        proto
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encoding a schema: {e}")))
    }
}

/// The operators a plan part may hold above its scan (a part is sent
/// without the operators that only shape partitions on the sender).
pub(crate) const ALLOWED: &[&str] = &[
    "AggregateExec",
    "FilterExec",
    "ProjectionExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "SortExec",
    "SortPreservingMergeExec",
    "LocalLimitExec",
    "GlobalLimitExec",
];

#[allow(deprecated)]
fn allowed_operator(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<AggregateExec>()
        || node.is::<FilterExec>()
        || node.is::<ProjectionExec>()
        || node.is::<datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec>()
        || node.is::<CoalescePartitionsExec>()
        || node.is::<SortExec>()
        || node.is::<SortPreservingMergeExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<GlobalLimitExec>()
}

/// Whether `plan` is only [`ALLOWED`] single-input operators down to
/// `scan`, none an aggregate keeping only some groups (whose limit sizes
/// its memory up front), none with a limit of 0 rows, and no expression a
/// subquery.
fn only_over(plan: &Arc<dyn ExecutionPlan>, scan: &Arc<dyn ExecutionPlan>) -> bool {
    if Arc::ptr_eq(plan, scan) {
        return true;
    }
    let limited_aggregate = plan
        .downcast_ref::<AggregateExec>()
        .is_some_and(|a| a.limit_options().is_some());
    let mut subquery = false;
    let walked = plan.apply_expressions(&mut |e| {
        e.apply(|x| {
            subquery |= x.is::<datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr>();
            Ok(TreeNodeRecursion::Continue)
        })
    });
    let children = plan.children();
    allowed_operator(plan)
        && !limited_aggregate
        && plan.fetch() != Some(0)
        && walked.is_ok()
        && !subquery
        && children.len() == 1
        && only_over(children[0], scan)
}

/// Decodes a plan part over `scan`: refused unless it is [`ALLOWED`]
/// operators over that one scan.
fn decode_part(
    bytes: &[u8],
    ctx: &TaskContext,
    scan: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let codec = LeafCodec {
        scan: Some(scan.clone()),
    };
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, &codec)?;
    if !only_over(&plan, &scan) {
        return Err(DataFusionError::Plan(format!(
            "a plan part may hold only {} over its table's scan",
            ALLOWED.join(", ")
        )));
    }
    Ok(plan)
}

/// `part` with `scan` in place of its [`ScanLeafExec`].
fn over_scan(
    part: &Arc<dyn ExecutionPlan>,
    scan: &Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(part
        .clone()
        .transform_up(|node| {
            Ok(if node.is::<ScanLeafExec>() {
                Transformed::yes(scan.clone())
            } else {
                Transformed::no(node)
            })
        })?
        .data)
}

/// A part of a plan another instance runs over its scan of one table.
#[derive(Debug)]
pub(crate) struct RemotePlanExec {
    /// The leader when the plan was made (execution routes again).
    planned_leader: String,
    part: Arc<Part>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RemotePlanExec {
    /// The part `part` (over `leaf`, a [`ScanLeafExec`]) run over `scan`'s
    /// table; `None` when it cannot be sent.
    fn try_new(
        scan: &RemoteScanExec,
        part: Arc<dyn ExecutionPlan>,
        leaf: &Arc<dyn ExecutionPlan>,
    ) -> Option<Self> {
        // What the leader would refuse (a scalar subquery, evaluated here
        // by the operator holding its plan) runs here.
        if !only_over(&part, leaf) {
            return None;
        }
        let codec = LeafCodec { scan: None };
        let serialized = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            part.clone(),
            &codec,
        )
        .and_then(|bytes| {
            let filters = scan
                .read
                .filters
                .iter()
                .map(|f| Ok(unqualified(f)?.to_bytes()?.to_vec()))
                .collect::<DfResult<Vec<_>>>()?;
            Ok((bytes.to_vec(), filters))
        });
        let (bytes, filters) = match serialized {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "a plan part cannot be sent; it runs here");
                return None;
            }
        };
        let properties = PlanProperties::new(
            part.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Some(Self {
            planned_leader: scan.planned_leader.clone(),
            part: Arc::new(Part {
                table: scan.table.clone(),
                read: scan.read.clone(),
                plan: part,
                bytes,
                filters,
            }),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

/// `e` with its columns unqualified: the receiver scans the table under
/// its own name (a partition's, not its table's).
fn unqualified(e: &Expr) -> DfResult<Expr> {
    e.clone()
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            ))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

impl DisplayAs for RemotePlanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = displayable(self.part.plan.as_ref())
            .indent(false)
            .to_string();
        let steps: Vec<&str> = part
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "ScanLeafExec")
            .collect();
        write!(
            f,
            "RemotePlanExec: table={}, leader={}, runs=[{}], scan={}",
            self.part.table.entry().name,
            self.planned_leader,
            steps.join(" <- "),
            self.part.read.sql
        )
    }
}

impl ExecutionPlan for RemotePlanExec {
    fn name(&self) -> &str {
        "RemotePlanExec"
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
        no_children(self, children)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        no_children(self, children)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let part = self.part.clone();
        counted_lazily(
            self,
            &self.metrics,
            partition,
            self.part.plan.schema(),
            async move { part.fetch(context).await },
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// What a [`RemotePlanExec`] runs.
#[derive(Debug)]
struct Part {
    table: RemoteTable,
    /// The scan the part reads.
    read: RemoteRead,
    /// The part, over a [`ScanLeafExec`].
    plan: Arc<dyn ExecutionPlan>,
    /// `plan`, serialized.
    bytes: Vec<u8>,
    /// The scan's filters, serialized.
    filters: Vec<Vec<u8>>,
}

impl Part {
    /// The part's rows from the table's leader, routing again while the
    /// shard moves (until [`MOVE_WAIT`]); run here when the shard opened
    /// here meanwhile.
    async fn fetch(&self, ctx: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = self.plan.schema();
        let entry = self.table.entry();
        let router = self.table.router();
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            let moved = match target(router.as_ref(), entry, deadline).await? {
                Target::Local(t) => {
                    let state = state_of(&ctx);
                    let scan = self
                        .table
                        .scan_local(
                            t,
                            &state,
                            self.read.projection.as_ref(),
                            &self.read.filters,
                            self.read.limit,
                        )
                        .await?;
                    return datafusion::physical_plan::execute_stream(
                        over_scan(&self.plan, &scan)?,
                        ctx,
                    );
                }
                Target::Remote { endpoint, .. } => {
                    let request = ExecutePlanRequest {
                        context: Some(RequestContext {
                            database: entry.database.clone(),
                        }),
                        table: entry.name.clone(),
                        columns: self
                            .read
                            .projected
                            .fields()
                            .iter()
                            .map(|f| f.name().clone())
                            .collect(),
                        filters: self.filters.clone(),
                        limit: self.read.limit.map(|n| n as u64),
                        plan: self.bytes.clone(),
                        catalog_fingerprint: router.fingerprint(),
                        unflushed_from: None,
                    };
                    let sent = match router.peer(&endpoint).await {
                        Ok(peer) => peer.execute_plan(request).await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(rows) => {
                            let expected = schema.clone();
                            let rows = rows.map(move |b| match b {
                                Ok(b) => relabel(&expected, b),
                                Err(e) => Err(DataFusionError::External(Box::new(RemoteError(e)))),
                            });
                            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)));
                        }
                        // A leader of an older version (during a rolling
                        // upgrade): its rows, read as before, and the part
                        // run here over them.
                        Err(e) if e.is_unimplemented() => {
                            tracing::debug!(table = %entry.name, "the leader runs no plan parts; reading its rows");
                            return self.run_here_over_rows(ctx).await;
                        }
                        Err(e) if moved_error(&e) => e,
                        Err(e) => return Err(DataFusionError::External(Box::new(RemoteError(e)))),
                    }
                }
            };
            if Instant::now() >= deadline {
                tracing::info!(table = %entry.name, error = %moved, "shard still moving after the wait");
                return Err(external(strata_engine::Error::ShardNotOpen {
                    shard: entry.shard,
                }));
            }
            tracing::debug!(table = %entry.name, error = %moved, "shard moved; retrying");
            tokio::time::sleep(MOVE_POLL).await;
        }
    }
}

impl Part {
    /// The part run here, over the rows of the scan read from the leader
    /// with SQL.
    async fn run_here_over_rows(
        &self,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let rows: Vec<RecordBatch> = self
            .table
            .fetch(&self.read, ctx.clone())
            .await?
            .try_collect()
            .await?;
        let scan = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[rows],
            self.read.projected.clone(),
            None,
        )?;
        let scan: Arc<dyn ExecutionPlan> = scan;
        datafusion::physical_plan::execute_stream(over_scan(&self.plan, &scan)?, ctx)
    }
}

/// Moves partial aggregates and sorts into the scans of tables led
/// by other instances (see the module's documentation).
#[derive(Debug, Default)]
pub struct PushToData;

impl PhysicalOptimizerRule for PushToData {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(plan
            .transform_down(|node| {
                let pushed = match push_aggregate(&node)? {
                    Some(p) => Some(p),
                    None => push_sort(&node)?,
                };
                Ok(match pushed {
                    // The parts hold what was below: not visited again.
                    Some(p) if same_columns(&p.schema(), &node.schema()) => {
                        Transformed::new(p, true, TreeNodeRecursion::Jump)
                    }
                    _ => Transformed::no(node),
                })
            })?
            .data)
    }

    fn name(&self) -> &str {
        "push_to_data"
    }

    fn schema_check(&self) -> bool {
        // Checked per rewrite, by names and types (a union may mark a
        // column nullable where the operator it replaces did not).
        false
    }
}

fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// Single-input operators between an operator and its scans that run
/// where the rows are as well as here: `(operators from the top, what is
/// below them)`.
#[allow(deprecated)]
fn peel(plan: &Arc<dyn ExecutionPlan>) -> (Vec<Arc<dyn ExecutionPlan>>, Arc<dyn ExecutionPlan>) {
    let mut chain = Vec::new();
    let mut node = plan.clone();
    loop {
        // An operator with a row limit (a filter or a coalesce the limit
        // was pushed into) stops here: copied into every part it would
        // limit each part, not the whole.
        if node.fetch().is_some() {
            return (chain, node);
        }
        let passes = node.is::<FilterExec>()
            || node.is::<ProjectionExec>()
            || node.is::<datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec>()
            || node.is::<RepartitionExec>()
            || node.is::<CooperativeExec>()
            || node.is::<CoalescePartitionsExec>();
        if !passes {
            return (chain, node);
        }
        let child = node.children()[0].clone();
        chain.push(node);
        node = child;
    }
}

/// `chain` (from the top) rebuilt over `base`; in a part sent elsewhere
/// (`remote`), without the operators that only shape partitions here.
#[allow(deprecated)]
fn stack(
    chain: &[Arc<dyn ExecutionPlan>],
    base: Arc<dyn ExecutionPlan>,
    remote: bool,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut plan = base;
    for node in chain.iter().rev() {
        if remote
            && (node.is::<RepartitionExec>()
                || node.is::<CooperativeExec>()
                || node.is::<CoalescePartitionsExec>()
                || node.is::<datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec>())
        {
            continue;
        }
        plan = over(node, vec![plan])?;
    }
    Ok(plan)
}

/// The scans below `input` (through a union): each with the operators
/// between it and the union; `None` unless one is a remote scan that can
/// take a plan part.
type Branches = Vec<(Vec<Arc<dyn ExecutionPlan>>, Arc<dyn ExecutionPlan>)>;

fn branches(base: &Arc<dyn ExecutionPlan>) -> Option<Branches> {
    let children: Vec<Arc<dyn ExecutionPlan>> = if base.is::<UnionExec>() {
        base.children().into_iter().cloned().collect()
    } else {
        vec![base.clone()]
    };
    let branches: Branches = children.iter().map(peel).collect();
    branches
        .iter()
        .any(|(_, leaf)| remote_scan(leaf).is_some())
        .then_some(branches)
}

/// A scan of a table another instance leads, which a part can be sent to.
fn remote_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<&RemoteScanExec> {
    plan.downcast_ref::<RemoteScanExec>()
        .filter(|s| !s.table.reads_last_values())
}

/// `build(operators over the leaf)` for each branch: sent to the leader
/// for a remote scan, run here otherwise. `None` if a part cannot be sent.
fn parts(
    chain: &[Arc<dyn ExecutionPlan>],
    branches: Branches,
    build: impl Fn(Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>>,
) -> DfResult<Option<Vec<Arc<dyn ExecutionPlan>>>> {
    let mut out = Vec::with_capacity(branches.len());
    for (branch, leaf) in branches {
        let ops: Vec<Arc<dyn ExecutionPlan>> = chain.iter().chain(&branch).cloned().collect();
        match remote_scan(&leaf) {
            Some(scan) => {
                let leaf_exec: Arc<dyn ExecutionPlan> =
                    Arc::new(ScanLeafExec::new(scan.read.projected.clone()));
                let part = build(stack(&ops, leaf_exec.clone(), true)?)?;
                match RemotePlanExec::try_new(scan, part, &leaf_exec) {
                    Some(p) => out.push(Arc::new(p) as Arc<dyn ExecutionPlan>),
                    None => return Ok(None),
                }
            }
            None => out.push(build(stack(&ops, leaf, false)?)?),
        }
    }
    Ok(Some(out))
}

fn union_of(parts: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    if parts.len() == 1 {
        if let Some(p) = parts.into_iter().next() {
            return Ok(p);
        }
        return Err(DataFusionError::Internal("no parts".into()));
    }
    UnionExec::try_new(parts)
}

/// A partial aggregate over remote scans: the union of the partial
/// aggregate of each scan, those of remote scans run by their leaders.
fn push_aggregate(node: &Arc<dyn ExecutionPlan>) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(agg) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    // An aggregate that keeps only some groups (a limit DataFusion pushed
    // into it) stays here.
    if agg.limit_options().is_some() {
        return Ok(None);
    }
    match agg.mode() {
        AggregateMode::Partial => {}
        // One aggregate over one partition (one remote table, or one
        // partition left by pruning): split into a partial aggregate, sent,
        // and the final one here, as DataFusion plans more partitions.
        AggregateMode::Single => {
            let partial: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
                AggregateMode::Partial,
                agg.group_expr().clone(),
                agg.aggr_expr().to_vec(),
                agg.filter_expr().to_vec(),
                agg.input().clone(),
                agg.input_schema(),
            )?);
            let Some(pushed) = push_aggregate(&partial)? else {
                return Ok(None);
            };
            let input: Arc<dyn ExecutionPlan> =
                if pushed.output_partitioning().partition_count() > 1 {
                    Arc::new(CoalescePartitionsExec::new(pushed))
                } else {
                    pushed
                };
            let Some(partial) = partial.downcast_ref::<AggregateExec>() else {
                return Ok(None);
            };
            return Ok(Some(Arc::new(AggregateExec::try_new(
                AggregateMode::Final,
                partial.group_expr().as_final(),
                partial.aggr_expr().to_vec(),
                partial.filter_expr().to_vec(),
                input,
                agg.input_schema(),
            )?)));
        }
        _ => return Ok(None),
    }
    let (chain, base) = peel(agg.input());
    let Some(branches) = branches(&base) else {
        return Ok(None);
    };
    let Some(parts) = parts(&chain, branches, |input| over(node, vec![input]))? else {
        return Ok(None);
    };
    union_of(parts).map(Some)
}

/// A sort over remote scans: the merge of each scan's rows, those of
/// remote scans sorted by their leaders (and, with a limit, cut at it
/// there: a top-k).
fn push_sort(node: &Arc<dyn ExecutionPlan>) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(sort) = node.downcast_ref::<SortExec>() else {
        return Ok(None);
    };
    let k = sort.fetch();
    // A sort per partition of rows hashed to partitions (under a window or
    // a sort-merge join): the parts would not keep that partitioning.
    if sort.preserve_partitioning()
        && matches!(sort.input().output_partitioning(), Partitioning::Hash(..))
    {
        return Ok(None);
    }
    let (chain, base) = peel(sort.input());
    let Some(branches) = branches(&base) else {
        return Ok(None);
    };
    let order = sort.expr().clone();
    let Some(parts) = parts(&chain, branches, |input| {
        let sorted = SortExec::new(order.clone(), input)
            .with_fetch(k)
            .with_preserve_partitioning(true);
        Ok(
            Arc::new(SortPreservingMergeExec::new(order.clone(), Arc::new(sorted)).with_fetch(k))
                as Arc<dyn ExecutionPlan>,
        )
    })?
    else {
        return Ok(None);
    };
    let merged = union_of(parts)?;
    // Each partition sorted (and cut at k), as the sort's own were: the
    // merge above it (DataFusion's plan for a sort that keeps its
    // partitions) merges them.
    if sort.preserve_partitioning() || merged.output_partitioning().partition_count() == 1 {
        return Ok(Some(merged));
    }
    Ok(Some(Arc::new(
        SortPreservingMergeExec::new(order, merged).with_fetch(k),
    )))
}

/// A part of another instance's plan (see [`QueryEngine::execute_plan_part`]).
#[derive(Debug, Clone)]
pub struct PlanPart {
    pub database: String,
    pub table: String,
    pub columns: Vec<String>,
    pub filters: Vec<Vec<u8>>,
    pub limit: Option<usize>,
    pub plan: Vec<u8>,
    /// A compute instance's read of the rows still in memory here (see
    /// `ExecutePlanRequest.unflushed_from`): `plan` is empty and `columns`
    /// are storage columns.
    pub unflushed_from: Option<u64>,
}

impl PlanPart {
    pub fn from_request(req: ExecutePlanRequest) -> Self {
        Self {
            database: req
                .context
                .map(|c| c.database)
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| super::DEFAULT_DATABASE.to_string()),
            table: req.table,
            columns: req.columns,
            filters: req.filters,
            limit: req.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            plan: req.plan,
            unflushed_from: req.unflushed_from,
        }
    }
}

impl QueryEngine {
    /// Runs a part of another instance's plan over this instance's scan of
    /// a table it leads, sending the rows to `rows` as they come (it stops
    /// when `rows` is closed). Refused when the table is not led here
    /// (`NotLeader`), and when the part holds anything but [`ALLOWED`]
    /// operators over the scan.
    pub async fn execute_plan_part(
        &self,
        part: PlanPart,
        rows: tokio::sync::mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        let state = self.session(&part.database, true, true);
        let engine = self.engine.clone();
        let admission = self.admission.clone();
        self.on_query_runtime(async move {
            let _admission = admission;
            let table = match engine.locate(&part.database, &part.table)? {
                Located::Local(t) => t,
                Located::Remote(entry) => {
                    return Err(strata_engine::Error::NotServedHere {
                        table: part.table.clone(),
                        shard: entry.shard,
                    }
                    .into())
                }
                Located::Partitioned(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "a plan part scans one partition, not partitioned table {}",
                        part.table
                    )))
                }
            };
            // Still this shard's owner (not fenced by a newer leader whose
            // heartbeat has not closed the shard here yet): checked before
            // the scan and before the answer ends.
            let owner = engine.shard(table.meta().entry.shard);
            let check_owner = || -> Result<()> {
                match &owner {
                    Some(shard) => Ok(shard.owner().check()?),
                    None => Err(strata_engine::Error::NotServedHere {
                        table: part.table.clone(),
                        shard: table.meta().entry.shard,
                    }
                    .into()),
                }
            };
            check_owner()?;
            let task = state.task_ctx();
            let invalid = |what: &str, e: DataFusionError| {
                Error::InvalidArgument(format!("the plan part's {what} cannot be read: {e}"))
            };
            let filters = part
                .filters
                .iter()
                .map(|f| Expr::from_bytes_with_ctx(f, &task))
                .collect::<DfResult<Vec<_>>>()
                .map_err(|e| invalid("filters", e))?;
            // A scan filter is a predicate on the table's own columns.
            let foreign = filters.iter().any(|f| {
                f.exists(|e| {
                    Ok(matches!(
                        e,
                        Expr::ScalarSubquery(_)
                            | Expr::Exists(_)
                            | Expr::InSubquery(_)
                            | Expr::OuterReferenceColumn(..)
                    ))
                })
                .unwrap_or(true)
            });
            if foreign {
                return Err(Error::InvalidArgument(
                    "a plan part's filters may not hold subqueries".to_string(),
                ));
            }
            if let Some(from) = part.unflushed_from {
                if !part.plan.is_empty() {
                    return Err(Error::InvalidArgument(
                        "a read of unflushed rows carries no plan".to_string(),
                    ));
                }
                let plan = unflushed_plan(&table, from, &part.columns, &filters, &state)?;
                let mut stream = datafusion::physical_plan::execute_stream(plan, task)?;
                while let Some(batch) = stream.next().await {
                    if rows.send(batch?).await.is_err() {
                        return Ok(());
                    }
                }
                return check_owner();
            }
            let provider = StrataTableProvider::new(table.clone());
            let schema = provider.schema();
            let projection = part
                .columns
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        Error::from(strata_engine::Error::CatalogChanged(format!(
                            "table {} has no column {c} here",
                            part.table
                        )))
                    })
                })
                .collect::<Result<Vec<usize>>>()?;
            let scan = provider
                .scan(&state, Some(&projection), &filters, part.limit)
                .await?;
            let plan = decode_part(&part.plan, &task, scan).map_err(|e| match e {
                DataFusionError::External(_) => Error::from(e),
                e => invalid("plan", e),
            })?;
            let mut stream = datafusion::physical_plan::execute_stream(plan, task)?;
            while let Some(batch) = stream.next().await {
                if rows.send(batch?).await.is_err() {
                    // The sender went away: stop.
                    return Ok(());
                }
            }
            check_owner()
        })
        .await
    }
}

/// The plan that reads a table's rows of sequence `from` and above still
/// in memory (for a compute instance, see `Table::unflushed_since`): the
/// storage `columns` it names, filtered by `filters`.
fn unflushed_plan(
    table: &strata_engine::table::Table,
    from: u64,
    columns: &[String],
    filters: &[Expr],
    state: &datafusion::execution::SessionState,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::{
        common::DFSchema, datasource::memory::MemorySourceConfig,
        datasource::source::DataSourceExec, logical_expr::utils::conjunction,
    };
    let (meta, batches) = table.unflushed_since(from)?;
    let storage = meta.storage_schema.clone();
    let projection = columns
        .iter()
        .map(|c| {
            storage.index_of(c).map_err(|_| {
                Error::from(strata_engine::Error::CatalogChanged(format!(
                    "table {} has no column {c} here",
                    table.name()
                )))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut plan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(
        MemorySourceConfig::try_new(&[batches], storage.clone(), None)?,
    );
    if let Some(predicate) = conjunction(filters.to_vec()) {
        let df_schema = DFSchema::try_from(storage.clone())?;
        let predicate = state
            .create_physical_expr(predicate, &df_schema)
            .map_err(|e| {
                Error::InvalidArgument(format!("the read's filters cannot be planned: {e}"))
            })?;
        plan = Arc::new(FilterExec::try_new(predicate, plan)?);
    }
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
        .iter()
        .map(|&i| {
            let name = storage.field(i).name().clone();
            (
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    &name, i,
                )) as Arc<dyn PhysicalExpr>,
                name,
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::empty::EmptyExec;

    use super::*;

    #[test]
    fn a_plan_part_reading_anything_but_its_scan_is_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema.clone()));
        let ctx = TaskContext::default();
        // A part made of another source (an empty table here, a file on a
        // real attack) instead of the scan leaf.
        let other: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema.clone()));
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes(other).unwrap();
        let err = decode_part(&bytes, &ctx, scan.clone()).unwrap_err();
        assert!(err.to_string().contains("may hold only"), "{err}");
        // Garbage.
        assert!(decode_part(b"\xff\xff\xff", &ctx, scan.clone()).is_err());
        // The leaf, under a filter: accepted, and it is the scan.
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(ScanLeafExec::new(schema.clone()));
        let filter = Arc::new(
            FilterExec::try_new(datafusion::physical_expr::expressions::lit(true), leaf).unwrap(),
        );
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            filter,
            &LeafCodec { scan: None },
        )
        .unwrap();
        let plan = decode_part(&bytes, &ctx, scan.clone()).unwrap();
        assert!(Arc::ptr_eq(plan.children()[0], &scan));
        // A sort that keeps no rows (a top-k of 0 panics in DataFusion).
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(ScanLeafExec::new(schema.clone()));
        let order = datafusion::physical_expr::LexOrdering::new(vec![
            datafusion::physical_expr::PhysicalSortExpr::new_default(Arc::new(
                datafusion::physical_expr::expressions::Column::new("v", 0),
            )),
        ])
        .unwrap();
        let sort = Arc::new(SortExec::new(order, leaf).with_fetch(Some(0)));
        let zero = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            sort,
            &LeafCodec { scan: None },
        )
        .unwrap();
        let err = decode_part(&zero, &ctx, scan.clone()).unwrap_err();
        assert!(err.to_string().contains("may hold only"), "{err}");
        // A scan whose columns differ from the part's: refused.
        let other_scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::new(
            vec![Field::new("w", DataType::Int64, true)],
        ))));
        let err = decode_part(&bytes, &ctx, other_scan).unwrap_err();
        assert!(err.to_string().contains("expects columns"), "{err}");
    }
}
