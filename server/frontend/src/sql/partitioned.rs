//! A partitioned table as one DataFusion table: a scan reads the
//! partitions a filter on the partition key leaves (all of them without
//! one) and unions them; an `INSERT` splits its rows by partition. Each
//! partition is read and written as any table is: here when its shard is
//! open here, else through its leader (or this instance's follower, under
//! `read_preference = follower`).

use std::{collections::BTreeSet, fmt, sync::Arc, time::Instant};

use arrow::{
    array::{ArrayRef, UInt32Array},
    datatypes::SchemaRef,
    record_batch::RecordBatch,
};
use async_trait::async_trait;
use datafusion::{
    catalog::{Session, TableProvider},
    common::{DataFusionError, Result as DfResult, ScalarValue},
    datasource::{
        sink::{DataSink, DataSinkExec},
        TableType,
    },
    execution::{SendableRecordBatchStream, TaskContext},
    logical_expr::{dml::InsertOp, utils::split_conjunction, Expr, TableProviderFilterPushDown},
    physical_plan::{
        empty::EmptyExec, union::UnionExec, DisplayAs, DisplayFormatType, ExecutionPlan,
    },
};
use futures::StreamExt;
use strata_engine::{
    catalog::TableEntry,
    partition::PartitionSpec,
    provider::{LastValuesProvider, StrataTableProvider},
    Engine, Located,
};

use super::remote::{forward_batches, RemoteTable, MOVE_WAIT};
use crate::route::Router;

/// The most key-value combinations a filter may name for pruning; more
/// reads every partition.
const MAX_PRUNE_COMBINATIONS: usize = 1024;

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A partitioned table.
#[derive(Debug)]
pub struct PartitionedTable {
    entry: TableEntry,
    spec: PartitionSpec,
    schema: SchemaRef,
    engine: Arc<Engine>,
    router: Arc<dyn Router>,
    /// Read followed partitions from the followers.
    followers: bool,
    /// `last_values(table)`: the newest row of every series of each
    /// partition (a series is in one partition: the key is made of tags).
    last_values: bool,
}

impl PartitionedTable {
    pub fn new(
        entry: TableEntry,
        engine: Arc<Engine>,
        router: Arc<dyn Router>,
        followers: bool,
    ) -> DfResult<Self> {
        let spec = entry.partition.clone().ok_or_else(|| {
            DataFusionError::Internal(format!("{} is not partitioned", entry.name))
        })?;
        Ok(Self {
            schema: entry.schema.arrow_schema(),
            spec,
            entry,
            engine,
            router,
            followers,
            last_values: false,
        })
    }

    /// `last_values(table)` of a partitioned table: each partition's
    /// newest rows, from its leader.
    pub fn last_values(
        entry: TableEntry,
        engine: Arc<Engine>,
        router: Arc<dyn Router>,
    ) -> DfResult<Self> {
        Ok(Self {
            last_values: true,
            ..Self::new(entry, engine, router, false)?
        })
    }

    /// The partitions' entries, checked complete.
    fn partitions(&self) -> DfResult<Vec<TableEntry>> {
        let parts = self.engine.partitions(&self.entry);
        if parts.len() != self.spec.count as usize {
            return Err(external(strata_engine::Error::CatalogChanged(format!(
                "table {} has {} of its {} partitions in the catalog here",
                self.entry.name,
                parts.len(),
                self.spec.count
            ))));
        }
        Ok(parts)
    }

    /// The partitions' entries, with the table's columns: in a cluster, a
    /// partition led elsewhere may show an older definition here for a
    /// moment after an `ALTER` through another instance (its table's came
    /// with meta's announcement); the catalog is then taken from meta once.
    async fn current_partitions(&self) -> DfResult<Vec<TableEntry>> {
        let parts = self.partitions()?;
        let stale = parts.iter().any(|p| p.schema != self.entry.schema);
        if !stale || !self.router.is_distributed() {
            return Ok(parts);
        }
        // Meta unreachable: read what this catalog shows (as before the
        // ALTER).
        if let Err(e) = self.router.refresh_catalog().await {
            tracing::warn!(table = %self.entry.name, error = %e,
                "a partition's definition here is older than its table's; reading it as it is");
            return Ok(parts);
        }
        self.partitions()
    }

    /// How partition `part` is read.
    fn provider(&self, part: &TableEntry) -> DfResult<Arc<dyn TableProvider>> {
        Ok(
            match self
                .engine
                .locate(&part.database, &part.name)
                .map_err(external)?
            {
                Located::Local(t) if self.last_values => Arc::new(LastValuesProvider::new(t)),
                Located::Remote(entry) if self.last_values => {
                    Arc::new(RemoteTable::last_values(*entry, self.router.clone()))
                }
                Located::Local(t) => Arc::new(StrataTableProvider::new(t)),
                Located::Remote(entry) => match self.engine.follower(entry.shard) {
                    Some(f) if self.followers => Arc::new(RemoteTable::preferring_follower(
                        *entry,
                        self.router.clone(),
                        f,
                    )),
                    _ => Arc::new(RemoteTable::reading_storage(
                        *entry,
                        self.router.clone(),
                        &self.engine,
                    )),
                },
                Located::Partitioned(_) => {
                    return Err(DataFusionError::Internal(format!(
                        "partition {} is partitioned itself",
                        part.name
                    )))
                }
            },
        )
    }

    /// The partitions `filters` leave: `None` for all. Every key column
    /// must be fixed by `col = value` or `col IN (values)` in a conjunct.
    fn prune(&self, filters: &[Expr]) -> Option<BTreeSet<u32>> {
        // A row of any value may be in any partition.
        if self.spec.random {
            return None;
        }
        let types: Vec<_> = self
            .spec
            .columns
            .iter()
            .map(|c| {
                self.schema
                    .field_with_name(c)
                    .map(|f| f.data_type().clone())
            })
            .collect::<Result<_, _>>()
            .ok()?;
        let mut values: Vec<Option<std::collections::HashSet<ScalarValue>>> =
            vec![None; self.spec.columns.len()];
        for conjunct in filters.iter().flat_map(|f| split_conjunction(f)) {
            let Some((column, found)) = key_values(conjunct) else {
                continue;
            };
            let Some(i) = self.spec.columns.iter().position(|c| *c == column) else {
                continue;
            };
            // Each value as the column's type. One that does not cast
            // (DataFusion compares after its own coercion): no pruning
            // rather than a guess.
            let found = found
                .into_iter()
                .map(|v| v.cast_to(&types[i]).ok())
                .collect::<Option<std::collections::HashSet<ScalarValue>>>()?;
            // Two conjuncts on one column: their intersection.
            values[i] = Some(match values[i].take() {
                None => found,
                Some(prev) => prev.intersection(&found).cloned().collect(),
            });
        }
        let values: Vec<Vec<ScalarValue>> = values
            .into_iter()
            .map(|v| v.map(|v| v.into_iter().collect()))
            .collect::<Option<_>>()?;
        let combinations = values
            .iter()
            .try_fold(1usize, |n, v| n.checked_mul(v.len()))?;
        if combinations > MAX_PRUNE_COMBINATIONS {
            return None;
        }
        let mut out = BTreeSet::new();
        if combinations == 0 {
            return Some(out);
        }
        let mut index = vec![0usize; values.len()];
        loop {
            let mut key: Vec<ArrayRef> = Vec::with_capacity(values.len());
            for (i, v) in index.iter().enumerate() {
                key.push(values[i][*v].to_array().ok()?);
            }
            out.insert(self.spec.partition_of(&key).ok()?);
            // The next combination.
            let mut i = 0;
            loop {
                if i == index.len() {
                    return Some(out);
                }
                index[i] += 1;
                if index[i] < values[i].len() {
                    break;
                }
                index[i] = 0;
                i += 1;
            }
        }
    }
}

/// `col = literal`, `literal = col`, `col IN (literals)`, or an `OR` of
/// those on one column (DataFusion writes a short `IN` list as one): the
/// column and the values.
fn key_values(e: &Expr) -> Option<(String, Vec<ScalarValue>)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let (column, mut values) = key_values(left)?;
            let (other, more) = key_values(right)?;
            if other != column {
                return None;
            }
            values.extend(more);
            Some((column, values))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), other) | (other, Expr::Column(c)) => {
                Some((c.name.clone(), vec![literal(other)?]))
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated => match list.expr.as_ref() {
            Expr::Column(c) => Some((
                c.name.clone(),
                list.list.iter().map(literal).collect::<Option<_>>()?,
            )),
            _ => None,
        },
        _ => None,
    }
}

#[async_trait]
impl TableProvider for PartitionedTable {
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
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted = self.prune(filters);
        // Columns by name, always: a partition's definition may differ
        // from its table's for a moment during an ALTER.
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let names: Vec<String> = projection
            .unwrap_or(&all)
            .iter()
            .map(|&i| self.schema.field(i).name().clone())
            .collect();
        let mut scans = Vec::new();
        for part in self.current_partitions().await? {
            let index = part.partition_of.map_or(0, |p| p.index);
            if wanted.as_ref().is_some_and(|w| !w.contains(&index)) {
                continue;
            }
            let provider = self.provider(&part)?;
            let child = provider.schema();
            let projection = names
                .iter()
                .map(|n| child.index_of(n))
                .collect::<Result<Vec<usize>, _>>()?;
            scans.push(async move {
                provider
                    .scan(state, Some(&projection), filters, limit)
                    .await
            });
        }
        let plans = futures::future::try_join_all(scans).await?;
        if plans.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(plans)
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
            Arc::new(PartitionedSink {
                entry: self.entry.clone(),
                schema: self.schema.clone(),
                engine: self.engine.clone(),
                router: self.router.clone(),
            }),
            None,
        )))
    }
}

/// Splits `batch` (rows for partitioned table `parent`) by partition: each
/// non-empty partition's entry and rows, fitted to the table's columns.
pub(crate) fn split_rows(
    engine: &Engine,
    parent: &TableEntry,
    batch: &RecordBatch,
) -> strata_engine::Result<Vec<(TableEntry, RecordBatch)>> {
    let spec = parent.partition.as_ref().ok_or_else(|| {
        strata_engine::Error::Internal(format!("{} is not partitioned", parent.name))
    })?;
    let parts = engine.partitions(parent);
    if parts.len() != spec.count as usize {
        return Err(strata_engine::Error::CatalogChanged(format!(
            "table {} has {} of its {} partitions in the catalog here",
            parent.name,
            parts.len(),
            spec.count
        )));
    }
    let invalid = |reason: String| strata_engine::Error::InvalidWrite {
        table: parent.name.clone(),
        reason,
    };
    let rows = strata_engine::schema::fit_rows(batch, &parent.schema.arrow_schema())
        .map_err(|e| invalid(e.to_string()))?;
    let of_row = spec.partition_rows(&rows)?;
    let mut by_part: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
    for (row, p) in (0u32..).zip(of_row) {
        by_part[p as usize].push(row);
    }
    let mut out = Vec::new();
    for (part, indices) in parts.into_iter().zip(by_part) {
        if indices.is_empty() {
            continue;
        }
        let taken = arrow::compute::take_record_batch(&rows, &UInt32Array::from(indices))
            .map_err(|e| invalid(e.to_string()))?;
        out.push((part, taken));
    }
    Ok(out)
}

/// Refuses rows written straight to a partition (by its name) that belong
/// to another partition: a filter on the key would not find them.
pub fn check_partition_rows(
    engine: &Engine,
    partition: &TableEntry,
    batch: &RecordBatch,
) -> strata_engine::Result<()> {
    let Some(of) = partition.partition_of else {
        return Ok(());
    };
    let refuse = |reason: String| strata_engine::Error::InvalidWrite {
        table: partition.name.clone(),
        reason,
    };
    let parent = engine
        .catalog()
        .table_by_id(of.parent)
        .ok_or_else(|| refuse("its partitioned table is gone".to_string()))?;
    let spec = parent
        .partition
        .as_ref()
        .ok_or_else(|| refuse("its table is not partitioned".to_string()))?;
    if spec.random {
        // Any row belongs to any partition.
        return Ok(());
    }
    let rows = strata_engine::schema::fit_rows(batch, &parent.schema.arrow_schema())
        .map_err(|e| refuse(e.to_string()))?;
    if let Some(row) = spec
        .partition_rows(&rows)?
        .iter()
        .position(|p| *p != of.index)
    {
        return Err(refuse(format!(
            "row {row} belongs to another partition of {}; write to {} itself",
            parent.name, parent.name
        )));
    }
    Ok(())
}

/// `INSERT` into a partitioned table: the rows split by partition, each
/// partition's written here or forwarded to its leader.
#[derive(Debug)]
struct PartitionedSink {
    entry: TableEntry,
    schema: SchemaRef,
    engine: Arc<Engine>,
    router: Arc<dyn Router>,
}

impl DisplayAs for PartitionedSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionedSink: table={}", self.entry.name)
    }
}

#[async_trait]
impl DataSink for PartitionedSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut written = 0;
        // Batch by batch: the input is never held whole.
        while let Some(batch) = data.next().await {
            let result = match batch {
                Ok(batch) => self.write_batch(&batch).await,
                // The statement's source failed (a remote scan, say).
                Err(e) => Err((0, e)),
            };
            match result {
                Ok(n) => written += n,
                Err((n, e)) => return Err(self.partly_written(written + n, e)),
            }
        }
        Ok(written)
    }
}

impl PartitionedSink {
    /// The error of a statement that wrote `written` rows before `e`: a
    /// retry of the whole would write an APPEND table's rows again, so the
    /// answer is a partial write (not retryable, and not run again by the
    /// catalog-lag retry), whatever the error.
    fn partly_written(&self, written: u64, e: DataFusionError) -> DataFusionError {
        if written == 0
            || self.entry.options.update_mode == strata_engine::options::UpdateMode::Overwrite
        {
            return e;
        }
        external(strata_engine::Error::PartialWrite {
            written,
            tables: format!("partitions of {}", self.entry.name),
            reason: crate::error::Error::from(e).to_string(),
        })
    }

    /// Writes one batch; on failure, also the rows written before it.
    async fn write_batch(&self, rows: &RecordBatch) -> Result<u64, (u64, DataFusionError)> {
        let parts = split_rows(&self.engine, &self.entry, rows).map_err(|e| (0, external(e)))?;
        let deadline = Instant::now() + MOVE_WAIT;
        let writes = parts.into_iter().map(|(part, rows)| async move {
            match self
                .engine
                .locate(&part.database, &part.name)
                .map_err(external)?
            {
                Located::Local(t) => {
                    // The partition's columns may be ahead of the table's
                    // for a moment (an ALTER).
                    let rows = strata_engine::schema::fit_rows(&rows, &t.arrow_schema())
                        .map_err(external)?;
                    Ok(t.write(rows).await.map_err(external)? as u64)
                }
                Located::Remote(entry) => {
                    forward_batches(self.router.as_ref(), &entry, vec![rows], deadline).await
                }
                Located::Partitioned(_) => Err(DataFusionError::Internal(format!(
                    "partition {} is partitioned itself",
                    part.name
                ))),
            }
        });
        let mut written = 0;
        let mut first_error = None;
        for result in futures::future::join_all(writes).await {
            match result {
                Ok(n) => written += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err((written, e)),
            None => Ok(written),
        }
    }
}

/// One partition named in a query: read as any table; `INSERT` goes
/// through its partitioned table, which routes each row.
#[derive(Debug)]
pub struct PartitionTable {
    inner: Arc<dyn TableProvider>,
    name: String,
}

impl PartitionTable {
    pub fn new(inner: Arc<dyn TableProvider>, name: String) -> Self {
        Self { inner, name }
    }
}

#[async_trait]
impl TableProvider for PartitionTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(external(strata_engine::Error::InvalidWrite {
            table: self.name.clone(),
            reason: "it is a partition; insert into its partitioned table".to_string(),
        }))
    }
}
