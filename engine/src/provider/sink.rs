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
            let batch = batch?;
            // DataFusion's INSERT planning casts values to the table's types
            // but may mark non-null columns nullable: rebuild the batch with
            // the table's own schema (nulls are checked by the write path).
            let batch = arrow::record_batch::RecordBatch::try_new_with_options(
                self.schema.clone(),
                batch.columns().to_vec(),
                &arrow::record_batch::RecordBatchOptions::new()
                    .with_row_count(Some(batch.num_rows())),
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
            written += rows as u64;
        }
        Ok(written)
    }
}
