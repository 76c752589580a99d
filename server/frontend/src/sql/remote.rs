//! Tables on shards another instance leads (cluster mode).
//!
//! A scan sends `SELECT <projected columns> FROM <table> WHERE <filters>` to
//! the shard's leader when the plan runs (a [`super::remote_scan::RemoteScanExec`]),
//! marked as forwarded so that it is never forwarded again; filters that cannot be written back as SQL, or not exactly (see
//! [`unparses_exactly`]), stay here (every filter is pushed down as
//! inexact, so DataFusion re-applies them). An `INSERT`
//! sends its rows as Arrow to the leader's `WriteArrow`.

use std::{fmt, sync::Arc, time::Instant};

use arrow::{
    datatypes::{Schema, SchemaRef},
    record_batch::{RecordBatch, RecordBatchOptions},
};
use async_trait::async_trait;
use datafusion::{
    catalog::{Session, TableProvider},
    common::{tree_node::TreeNode, DataFusionError, Result as DfResult},
    datasource::{
        sink::{DataSink, DataSinkExec},
        TableType,
    },
    execution::{SendableRecordBatchStream, TaskContext},
    logical_expr::{dml::InsertOp, Expr, TableProviderFilterPushDown},
    physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan},
    sql::unparser::expr_to_sql,
};
use futures::StreamExt;
use strata_client::SqlOutput;
use strata_engine::{
    catalog::TableEntry,
    provider::{LastValuesProvider, StrataTableProvider},
};
use strata_proto::storage::{RequestContext, SqlQueryRequest, WriteArrowRequest};

use crate::{
    error::RemoteError,
    route::{Router, Target},
};

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Whether `filter`, written as SQL by DataFusion's unparser, reads back
/// as the same expression. The unparser quotes with sqlparser's
/// `escape_quoted_string`, which leaves a quote after a backslash and a
/// doubled quote as they are: the value `x\' OR true --` would be written
/// `'x\' OR true --'` and read back as `x\` followed by SQL, and `a''b` as
/// `a'b`. Such filters are not sent; they run here.
fn unparses_exactly(filter: &Expr) -> bool {
    let awkward_value = |s: &str| s.contains('\\') || s.contains("''");
    let awkward_name = |s: &str| s.contains('\\') || s.contains('"');
    let awkward = filter.exists(|e| {
        Ok(match e {
            // A list or struct literal's strings are written by the same
            // quoting, element by element: never sent.
            Expr::Literal(v, _) if v.data_type().is_nested() => true,
            Expr::Literal(v, _) => v.try_as_str().flatten().is_some_and(awkward_value),
            Expr::Column(c) => {
                awkward_name(&c.name)
                    || c.relation
                        .as_ref()
                        .is_some_and(|r| awkward_name(&r.to_string()))
            }
            _ => false,
        })
    });
    !awkward.unwrap_or(true)
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

pub(crate) use crate::route::{MOVE_POLL, MOVE_WAIT};

/// The table's leader (see [`Router::target`]), as DataFusion's error.
pub(crate) async fn target(
    router: &dyn Router,
    entry: &TableEntry,
    deadline: Instant,
) -> DfResult<Target> {
    router.target(entry, deadline).await.map_err(external)
}

/// Whether a remote answer means "the shard moved or is moving": worth
/// another try once the route is refreshed.
pub(crate) fn moved(e: &strata_client::Error) -> bool {
    matches!(
        crate::error::remote_kind(e),
        strata_engine::ErrorKind::NotLeader
            | strata_engine::ErrorKind::ShardMoving
            | strata_engine::ErrorKind::Unavailable
    )
}

#[derive(Debug, Clone)]
pub struct RemoteTable {
    entry: TableEntry,
    schema: SchemaRef,
    router: Arc<dyn Router>,
    /// Reads `last_values('table')` instead of the table.
    last_values: bool,
    /// This instance's follower of the table's shard, read first once it
    /// has caught up (`read_preference = follower`).
    follower: Option<Arc<strata_engine::follower::Follower>>,
    /// A compute instance's engine: the table's SSTs are read here, from
    /// the object store, and only the rows not flushed yet from the leader
    /// (see `super::compute`).
    pub(crate) storage: Option<Arc<strata_engine::Engine>>,
}

impl RemoteTable {
    pub fn new(entry: TableEntry, router: Arc<dyn Router>) -> Self {
        Self {
            schema: entry.schema.arrow_schema(),
            entry,
            router,
            last_values: false,
            follower: None,
            storage: None,
        }
    }

    /// On a compute instance (`Router::reads_storage`): the table, its SSTs
    /// read through `engine` from the object store, the rows not flushed
    /// yet from its leader. Elsewhere, the table read from its leader.
    pub fn reading_storage(
        entry: TableEntry,
        router: Arc<dyn Router>,
        engine: &Arc<strata_engine::Engine>,
    ) -> Self {
        Self {
            storage: router.reads_storage().then(|| engine.clone()),
            ..Self::new(entry, router)
        }
    }

    pub(crate) fn entry(&self) -> &TableEntry {
        &self.entry
    }

    /// Whether this reads `last_values(table)` rather than the table.
    pub(crate) fn reads_last_values(&self) -> bool {
        self.last_values
    }

    pub(crate) fn router(&self) -> &Arc<dyn Router> {
        &self.router
    }

    /// The table, read from this instance's `follower` of its shard once
    /// the follower has caught up with the WAL, else from its leader.
    pub fn preferring_follower(
        entry: TableEntry,
        router: Arc<dyn Router>,
        follower: Arc<strata_engine::follower::Follower>,
    ) -> Self {
        Self {
            follower: Some(follower),
            ..Self::new(entry, router)
        }
    }

    /// The follower's copy of the table, once it has caught up, if it has
    /// the same definition (columns, TTL) as the catalog here, before and
    /// after the wait.
    async fn caught_up_follower(&self) -> Option<Arc<strata_engine::table::Table>> {
        let follower = self.follower.as_ref()?;
        let same = |t: &Arc<strata_engine::table::Table>| t.meta().entry == self.entry;
        let table = follower.table(self.entry.id).filter(same)?;
        match follower.catch_up().await {
            Ok(()) if same(&table) => Some(table),
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(table = %self.entry.name, error = %e,
                    "the follower has not caught up; reading the leader");
                None
            }
        }
    }

    /// The newest row of every series of the table, from its leader's
    /// last-value cache.
    pub fn last_values(entry: TableEntry, router: Arc<dyn Router>) -> Self {
        Self {
            last_values: true,
            ..Self::new(entry, router)
        }
    }

    fn select_sql(&self, columns: &[String], filters: &[Expr], limit: Option<usize>) -> String {
        let cols = if columns.is_empty() {
            // Only the row count is needed; any column will do.
            quote(&self.entry.schema.columns[0].name)
        } else {
            columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from = if self.last_values {
            // Resolved in the request's database, the table's own.
            format!(
                "{}('{}')",
                super::last_values::NAME,
                self.entry.name.replace('\'', "''")
            )
        } else {
            format!(
                "{}.{}",
                quote(&self.entry.database),
                quote(&self.entry.name)
            )
        };
        let mut sql = format!("SELECT {cols} FROM {from}");
        let mut all_pushed = true;
        let pushed: Vec<String> = filters
            .iter()
            .filter_map(|f| match expr_to_sql(f) {
                Ok(ast) if unparses_exactly(f) => Some(format!("({ast})")),
                _ => {
                    all_pushed = false;
                    None
                }
            })
            .collect();
        if !pushed.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&pushed.join(" AND "));
        }
        if let (Some(n), true) = (limit, all_pushed) {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        sql
    }
}

#[async_trait]
impl TableProvider for RemoteTable {
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
        if let Some(t) = self.caught_up_follower().await {
            return StrataTableProvider::new(t)
                .scan(state, projection, filters, limit)
                .await;
        }
        if let (Some(engine), false) = (&self.storage, self.last_values) {
            if let Some(plan) = self
                .scan_storage(engine, state, projection, filters, limit)
                .await?
            {
                return Ok(plan);
            }
        }
        let deadline = Instant::now() + MOVE_WAIT;
        match target(self.router.as_ref(), &self.entry, deadline).await? {
            Target::Local(t) => self.scan_local(t, state, projection, filters, limit).await,
            // Nothing is read while planning: the leader is asked when the
            // plan runs (so `EXPLAIN` costs nothing and shows what runs
            // where).
            Target::Remote { endpoint, .. } => {
                let projected: SchemaRef = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => self.schema.clone(),
                };
                let columns: Vec<String> = projected
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                Ok(Arc::new(super::remote_scan::RemoteScanExec::new(
                    self.clone(),
                    super::remote_scan::RemoteRead {
                        sql: self.select_sql(&columns, filters, limit),
                        projected,
                        projection: projection.cloned(),
                        filters: filters.to_vec(),
                        limit,
                    },
                    endpoint,
                )))
            }
        }
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
            Arc::new(RemoteSink {
                entry: self.entry.clone(),
                schema: self.schema.clone(),
                router: self.router.clone(),
            }),
            None,
        )))
    }
}

enum RemoteScan {
    Moved(strata_client::Error),
    Failed(DataFusionError),
}

impl From<DataFusionError> for RemoteScan {
    fn from(e: DataFusionError) -> Self {
        RemoteScan::Failed(e)
    }
}

impl RemoteTable {
    /// Scans the table where its shard is open here.
    pub(crate) async fn scan_local(
        &self,
        t: Arc<strata_engine::table::Table>,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.last_values {
            LastValuesProvider::new(t)
                .scan(state, projection, filters, limit)
                .await
        } else {
            StrataTableProvider::new(t)
                .scan(state, projection, filters, limit)
                .await
        }
    }

    /// Reads the rows of `read` from the leader, routing again while the
    /// shard moves (until [`MOVE_WAIT`]); here, as a stream, when the shard
    /// opened here meanwhile.
    pub(crate) async fn fetch(
        &self,
        read: &super::remote_scan::RemoteRead,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            match target(self.router.as_ref(), &self.entry, deadline).await? {
                Target::Local(t) => {
                    let state = state_of(&ctx);
                    let plan = self
                        .scan_local(
                            t,
                            &state,
                            read.projection.as_ref(),
                            &read.filters,
                            read.limit,
                        )
                        .await?;
                    let projected = read.projected.clone();
                    let stream = datafusion::physical_plan::execute_stream(plan, ctx)?;
                    let relabelled = stream.map(move |b| relabel(&projected, b?));
                    return Ok(Box::pin(
                        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                            read.projected.clone(),
                            relabelled,
                        ),
                    ));
                }
                Target::Remote { endpoint, .. } => match self.fetch_from(&endpoint, read).await {
                    Err(RemoteScan::Moved(e)) if Instant::now() < deadline => {
                        tracing::debug!(table = %self.entry.name, error = %e, "shard moved; retrying");
                        tokio::time::sleep(MOVE_POLL).await;
                    }
                    // Still moving after the wait: the documented answer
                    // is ShardMoving (503), not the last leader's
                    // NotLeader.
                    Err(RemoteScan::Moved(e)) => {
                        tracing::info!(table = %self.entry.name, error = %e, "shard still moving after the wait");
                        return Err(external(strata_engine::Error::ShardNotOpen {
                            shard: self.entry.shard,
                        }));
                    }
                    Err(RemoteScan::Failed(e)) => return Err(e),
                    Ok(batches) => {
                        return Ok(Box::pin(
                            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                                read.projected.clone(),
                                futures::stream::iter(
                                    batches.into_iter().map(Ok::<_, DataFusionError>),
                                ),
                            ),
                        ))
                    }
                },
            }
        }
    }

    async fn fetch_from(
        &self,
        endpoint: &str,
        read: &super::remote_scan::RemoteRead,
    ) -> Result<Vec<RecordBatch>, RemoteScan> {
        let client = self
            .router
            .peer(endpoint)
            .await
            .map_err(RemoteScan::Moved)?;
        let output = client
            .query(SqlQueryRequest {
                context: Some(RequestContext {
                    database: self.entry.database.clone(),
                }),
                tables: vec![self.entry.name.clone()],
                sql: read.sql.clone(),
                forwarded: true,
                catalog_fingerprint: self.router.fingerprint(),
            })
            .await
            .map_err(|e| {
                if moved(&e) {
                    RemoteScan::Moved(e)
                } else {
                    RemoteScan::Failed(DataFusionError::External(Box::new(RemoteError(e))))
                }
            })?;
        let batches = match output {
            SqlOutput::Rows(b) => b,
            SqlOutput::AffectedRows(_) => Vec::new(),
        };
        // Re-label the rows with the projected schema (the remote side may
        // mark columns nullable differently); an empty projection keeps only
        // the row count.
        batches
            .into_iter()
            .map(|b| relabel(&read.projected, b))
            .collect::<DfResult<Vec<_>>>()
            .map_err(RemoteScan::Failed)
    }
}

/// A session to plan a scan with, from a running plan's task context.
pub(crate) fn state_of(ctx: &TaskContext) -> datafusion::execution::session_state::SessionState {
    datafusion::execution::session_state::SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_default_features()
        .build()
}

/// Whether a remote answer means "the shard moved or is moving".
pub(crate) fn moved_error(e: &strata_client::Error) -> bool {
    moved(e)
}

/// `b`'s columns under the `projected` schema (another instance, or a
/// scan, may mark columns nullable differently); an empty projection keeps
/// only the row count.
pub(crate) fn relabel(projected: &SchemaRef, b: RecordBatch) -> DfResult<RecordBatch> {
    let columns = if projected.fields().is_empty() {
        Vec::new()
    } else {
        b.columns().to_vec()
    };
    Ok(RecordBatch::try_new_with_options(
        projected.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
    )?)
}

#[derive(Debug)]
struct RemoteSink {
    entry: TableEntry,
    schema: SchemaRef,
    router: Arc<dyn Router>,
}

impl DisplayAs for RemoteSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteSink: table={}", self.entry.name)
    }
}

#[async_trait]
impl DataSink for RemoteSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut batches = Vec::new();
        while let Some(b) = data.next().await {
            batches.push(b?);
        }
        forward_batches(
            self.router.as_ref(),
            &self.entry,
            batches,
            Instant::now() + MOVE_WAIT,
        )
        .await
    }
}

/// Writes rows to a table whose shard another instance leads (or led when
/// the route was read): as `WriteArrow` to the leader, or here if the
/// shard opened here meanwhile. A forward the leader refuses because the
/// shard moved (nothing was written) is routed again until `deadline`.
/// Both SQL `INSERT` into a remote table and [`crate::writer`] write
/// through this.
pub(crate) async fn forward_batches(
    router: &dyn Router,
    entry: &TableEntry,
    batches: Vec<RecordBatch>,
    deadline: Instant,
) -> DfResult<u64> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(0);
    }
    let schema: SchemaRef = batches
        .first()
        .map_or_else(|| Arc::new(Schema::empty()), |b| b.schema());
    let mut entry = entry.clone();
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            // A split or merge may have moved the table to another shard.
            if let Some(now) = router.current_entry(&entry) {
                entry = now;
            }
        }
        let entry = &entry;
        match target(router, entry, deadline).await? {
            Target::Local(t) => {
                // One write: applied whole or not at all, as a forward is.
                let rows = strata_engine::schema::fit_all(&batches, &t.arrow_schema())
                    .map_err(external)?;
                match t.write(rows).await {
                    Ok(n) => return Ok(n as u64),
                    // Being handed to another shard: refused before it
                    // was written; the catalog moves it shortly.
                    Err(e)
                        if e.kind() == strata_engine::ErrorKind::ShardMoving
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(MOVE_POLL).await;
                    }
                    Err(e) => return Err(external(e)),
                }
            }
            Target::Remote { endpoint, version } => {
                let payload = strata_client::payload::encode(&schema, &batches)
                    .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                let result = match router.peer(&endpoint).await {
                    Ok(client) => {
                        client
                            .write_arrow(WriteArrowRequest {
                                context: Some(RequestContext {
                                    database: entry.database.clone(),
                                }),
                                table: entry.name.clone(),
                                rows: Some(payload),
                                shard_version: version,
                                catalog_fingerprint: router.fingerprint(),
                            })
                            .await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(n) => return Ok(u64::from(n)),
                    // Refused before anything was written: the shard
                    // moved. Retry on its new leader.
                    Err(e)
                        if matches!(
                            crate::error::remote_kind(&e),
                            strata_engine::ErrorKind::NotLeader
                                | strata_engine::ErrorKind::ShardMoving
                        ) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(MOVE_POLL).await;
                    }
                    Err(e)
                        if matches!(
                            crate::error::remote_kind(&e),
                            strata_engine::ErrorKind::NotLeader
                                | strata_engine::ErrorKind::ShardMoving
                        ) =>
                    {
                        return Err(external(strata_engine::Error::ShardNotOpen {
                            shard: entry.shard,
                        }))
                    }
                    Err(e) => return Err(DataFusionError::External(Box::new(RemoteError(e)))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use datafusion::{
        common::ScalarValue,
        logical_expr::{col, lit},
    };

    use super::*;

    #[test]
    fn filters_that_would_not_read_back_as_written_are_not_sent() {
        // What sqlparser's quoting would turn into other SQL, or another value.
        for value in ["x\\' OR true --", "a''b", "c:\\dir"] {
            let f = col("host").eq(lit(value));
            assert!(!unparses_exactly(&f), "{value}");
            let f = col("v")
                .gt(lit(1))
                .and(col("host").in_list(vec![lit("ok"), lit(value)], false));
            assert!(!unparses_exactly(&f), "{value}");
        }
        let list = ScalarValue::List(ScalarValue::new_list_nullable(
            &[ScalarValue::from("a''b")],
            &arrow::datatypes::DataType::Utf8,
        ));
        assert!(!unparses_exactly(
            &col("host").eq(Expr::Literal(list, None))
        ));
        let weird = Expr::Column(datafusion::common::Column::new_unqualified("we\"ird"));
        assert!(!unparses_exactly(&weird.eq(lit(1))));
        // A lone quote is doubled correctly: sent.
        for value in ["it's", "plain", ""] {
            let f = col("host").eq(lit(value));
            assert!(unparses_exactly(&f), "{value}");
            let sql = expr_to_sql(&f).unwrap().to_string();
            let quoted = format!("'{}'", value.replace('\'', "''"));
            assert_eq!(sql, format!("(host = {quoted})"));
        }
    }
}
