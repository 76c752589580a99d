//! `INSERT` support: a DataFusion `DataSink` that writes each incoming batch
//! through the table's write path (WAL, then memtable).

use std::{fmt, sync::Arc};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::{
    common::{DataFusionError, Result as DfResult},
    datasource::sink::DataSink,
    execution::{SendableRecordBatchStream, TaskContext},
    physical_plan::{DisplayAs, DisplayFormatType},
};
use futures::StreamExt;

use crate::table::Table;

/// Writes rows into a table.
#[derive(Debug)]
pub struct TableSink {
    table: Arc<Table>,
    schema: SchemaRef,
}

impl TableSink {
    pub fn new(table: Arc<Table>) -> Self {
        Self {
            schema: table.arrow_schema(),
            table,
        }
    }
}

impl DisplayAs for TableSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableSink: table={}", self.table.name())
    }
}

#[async_trait]
impl DataSink for TableSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut written = 0u64;
        while let Some(batch) = data.next().await {
            match self.write_batch(batch).await {
                Ok(rows) => written += rows,
                Err(e) => return Err(self.partly_written(written, e)),
            }
        }
        Ok(written)
    }
}

impl TableSink {
    /// The error of an INSERT that wrote `written` rows (earlier batches)
    /// before `e`: for an APPEND table, one that says so and is not to be
    /// retried (running the statement again would write them twice).
    fn partly_written(&self, written: u64, e: DataFusionError) -> DataFusionError {
        if written == 0
            || self.table.meta().options().update_mode == crate::options::UpdateMode::Overwrite
        {
            return e;
        }
        DataFusionError::External(Box::new(crate::Error::PartialWrite {
            written,
            tables: self.table.name().to_string(),
            reason: e.to_string(),
        }))
    }

    async fn write_batch(
        &self,
        batch: DfResult<arrow::record_batch::RecordBatch>,
    ) -> DfResult<u64> {
        let batch = batch?;
        // DataFusion's INSERT planning casts values to the table's types
        // but may mark non-null columns nullable: rebuild the batch with
        // the table's own schema (nulls are checked by the write path).
        let batch = arrow::record_batch::RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| {
            DataFusionError::External(Box::new(crate::Error::InvalidWrite {
                table: self.table.name().to_string(),
                reason: e.to_string(),
            }))
        })?;
        let rows = self
            .table
            .write(batch)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(rows as u64)
    }
}
