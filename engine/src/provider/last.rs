//! `last_values('table')`: the newest row of every series of a table, from
//! its last-value cache (crate::last_values). A cache that is not seeded yet
//! is seeded here from a full scan; a table with too many series to cache
//! folds a full scan for every query.

use std::sync::Arc;

use arrow::{
    array::{BooleanArray, TimestampMillisecondArray},
    compute::{filter_record_batch, kernels::cmp::gt_eq},
    datatypes::SchemaRef,
    record_batch::RecordBatch,
};
use async_trait::async_trait;
use datafusion::{
    catalog::{Session, TableProvider},
    common::{DataFusionError, Result as DfResult},
    datasource::{memory::MemorySourceConfig, TableType},
    logical_expr::{Expr, TableProviderFilterPushDown},
    physical_plan::ExecutionPlan,
};
use futures::StreamExt;

use super::StrataTableProvider;
use crate::options::ttl_cutoff;
use crate::{
    last_values::{LastValues, Snapshot},
    table::Table,
};

/// The newest row of every series of one table, as DataFusion sees it.
#[derive(Debug)]
pub struct LastValuesProvider {
    table: Arc<Table>,
    schema: SchemaRef,
}

impl LastValuesProvider {
    pub fn new(table: Arc<Table>) -> Self {
        Self {
            schema: table.arrow_schema(),
            table,
        }
    }

    /// Folds every row of a full scan of the table into `into`, as seeded
    /// rows (sequence 0).
    async fn fold_scan(&self, state: &dyn Session, into: &LastValues) -> DfResult<()> {
        let plan = StrataTableProvider::new(self.table.clone())
            .scan(state, None, &[], None)
            .await?;
        let meta = self.table.meta();
        let mut stream = datafusion::physical_plan::execute_stream(plan, state.task_ctx())?;
        while let Some(batch) = stream.next().await {
            let batch = crate::schema::adapt_batch(&batch?, &meta.arrow_schema).map_err(df)?;
            into.seed(&meta, &batch).map_err(df)?;
        }
        Ok(())
    }

    /// The newest row of every series, in the table's current schema.
    async fn rows(&self, state: &dyn Session) -> DfResult<RecordBatch> {
        let cache = self.table.last_values();
        let target = self.table.arrow_schema();
        match cache.snapshot(&target).map_err(df)? {
            Snapshot::Rows(b) => return Ok(b),
            Snapshot::NeedsSeed(generation) => {
                self.fold_scan(state, cache).await?;
                if cache.finish_seed(generation) {
                    tracing::info!(table = %self.table.name(), series = cache.series(), "last-value cache seeded");
                    if let Snapshot::Rows(b) = cache.snapshot(&target).map_err(df)? {
                        return Ok(b);
                    }
                }
            }
            Snapshot::Disabled => {}
        }
        // Not cached: fold a scan for this query alone.
        let scratch = LastValues::scratch(&self.table.meta());
        self.fold_scan(state, &scratch).await?;
        match scratch.snapshot(&target).map_err(df)? {
            Snapshot::Rows(b) => Ok(b),
            _ => Err(DataFusionError::Internal(
                "a scratch last-value cache is always complete".into(),
            )),
        }
    }
}

fn df(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Drops rows older than the table's TTL.
fn hide_expired(batch: RecordBatch, ts_index: usize, cutoff: Option<i64>) -> DfResult<RecordBatch> {
    let Some(cutoff) = cutoff else {
        return Ok(batch);
    };
    let ts = batch.column(ts_index);
    let keep: BooleanArray = gt_eq(ts, &TimestampMillisecondArray::new_scalar(cutoff))?;
    Ok(filter_record_batch(&batch, &keep)?)
}

#[async_trait]
impl TableProvider for LastValuesProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let meta = self.table.meta();
        let rows = self.rows(state).await?;
        let rows = hide_expired(
            rows,
            meta.schema().timestamp_index,
            ttl_cutoff(meta.options().ttl),
        )?;
        // Columns by name: the planner saw `self.schema`; the rows are in
        // the schema of now, which has at least those columns.
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let rows = rows.project(
            &names
                .iter()
                .map(|n| rows.schema().index_of(n))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        let rows = RecordBatch::try_new(self.schema.clone(), rows.columns().to_vec())?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![rows]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
