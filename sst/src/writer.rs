//! Writing SSTs.
//!
//! Input rows must already be sorted by the primary key (and, in `OVERWRITE`
//! tables, deduplicated): flush and compaction produce them that way. The
//! writer streams them into a Parquet file in the object store and computes
//! the [`SstInfo`] that the manifest records; the same summary is stored in
//! the file's footer under `strata.sst`.

use std::sync::Arc;

use arrow::{datatypes::SchemaRef, record_batch::RecordBatch};
use object_store::{buffered::BufWriter, path::Path, ObjectStore};
use parquet::{
    arrow::AsyncArrowWriter,
    basic::{Compression, Encoding, ZstdLevel},
    file::{
        metadata::{KeyValue, SortingColumn},
        properties::{EnabledStatistics, WriterProperties},
    },
    schema::types::ColumnPath,
};

use crate::{stats::Summary, Error, Result, SstId, SstInfo, SEQ_COLUMN, SST_INFO_KEY};

/// How to write one SST.
#[derive(Debug, Clone)]
pub struct SstWriteOptions {
    /// The timestamp column (Arrow `Timestamp(Millisecond)`).
    pub timestamp_column: String,
    /// Tag columns: dictionary-encoded, with bloom filters and min/max in
    /// the manifest.
    pub tag_columns: Vec<String>,
    /// The primary key columns, in sort order.
    pub primary_key: Vec<String>,
    pub schema_version: u32,
    pub segment_start: i64,
    pub level: u32,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for SstWriteOptions {
    fn default() -> Self {
        Self {
            timestamp_column: "timestamp".to_string(),
            tag_columns: Vec::new(),
            primary_key: Vec::new(),
            schema_version: 0,
            segment_start: 0,
            level: 0,
            row_group_rows: 64 * 1024,
            zstd_level: 3,
        }
    }
}

fn props(schema: &SchemaRef, opts: &SstWriteOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level)
        .map_err(|e| Error::InvalidInput(format!("zstd level {}: {e}", opts.zstd_level)))?;
    let mut sorting = Vec::new();
    for name in &opts.primary_key {
        let idx = schema
            .index_of(name)
            .map_err(|_| Error::InvalidInput(format!("primary key column {name} not in schema")))?;
        sorting.push(SortingColumn {
            column_idx: idx as i32,
            descending: false,
            nulls_first: true,
        });
    }
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(sorting));
    for tag in &opts.tag_columns {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(tag.as_str()), true)
            .set_column_bloom_filter_enabled(ColumnPath::from(tag.as_str()), true);
    }
    // Timestamps and sequences grow within a series: delta encoding suits
    // them better than a dictionary.
    for col in [opts.timestamp_column.as_str(), SEQ_COLUMN] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_encoding(ColumnPath::from(col), Encoding::DELTA_BINARY_PACKED);
    }
    Ok(builder.build())
}

/// Writes one SST batch by batch. The object appears at its path only when
/// [`SstWriter::finish`] completes (one put, or a completed multipart
/// upload); dropping the writer earlier leaves nothing behind.
pub struct SstWriter {
    path: Path,
    id: SstId,
    opts: SstWriteOptions,
    writer: AsyncArrowWriter<BufWriter>,
    summary: Summary,
}

impl SstWriter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        id: SstId,
        schema: SchemaRef,
        opts: SstWriteOptions,
    ) -> Result<Self> {
        let props = props(&schema, &opts)?;
        let object = BufWriter::new(store, path.clone());
        let writer = AsyncArrowWriter::try_new(object, schema, Some(props)).map_err(|source| {
            Error::Write {
                path: path.to_string(),
                source,
            }
        })?;
        Ok(Self {
            summary: Summary::new(&opts.timestamp_column, &opts.tag_columns),
            path,
            id,
            opts,
            writer,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.summary.update(batch)?;
        self.writer
            .write(batch)
            .await
            .map_err(|source| Error::Write {
                path: self.path.to_string(),
                source,
            })
    }

    pub fn rows(&self) -> u64 {
        self.summary.rows()
    }

    /// Bytes written so far plus those buffered for the current row group.
    pub fn estimated_size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Completes the file and returns what the manifest records about it.
    pub async fn finish(mut self) -> Result<SstInfo> {
        if self.summary.rows() == 0 {
            return Err(Error::InvalidInput(
                "an SST needs at least one row".to_string(),
            ));
        }
        let write_err = |source| Error::Write {
            path: self.path.to_string(),
            source,
        };
        let mut info = SstInfo {
            id: self.id,
            path: self.path.to_string(),
            time_range: self.summary.time_range(),
            segment_start: self.opts.segment_start,
            max_seq: self.summary.max_seq(),
            rows: self.summary.rows(),
            size_bytes: 0,
            schema_version: self.opts.schema_version,
            level: self.opts.level,
            column_stats: self.summary.column_stats(),
        };
        let json = serde_json::to_string(&info)
            .map_err(|e| Error::InvalidInput(format!("encoding SST info: {e}")))?;
        self.writer
            .append_key_value_metadata(KeyValue::new(SST_INFO_KEY.to_string(), json));
        self.writer.finish().await.map_err(write_err)?;
        info.size_bytes = self.writer.bytes_written() as u64;
        Ok(info)
    }
}

/// Writes `batches` (sorted, all with `schema`) as SST `id` at `path`.
pub async fn write_sst(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    id: SstId,
    schema: SchemaRef,
    batches: &[RecordBatch],
    opts: &SstWriteOptions,
) -> Result<SstInfo> {
    let mut writer = SstWriter::new(store, path.clone(), id, schema, opts.clone())?;
    for batch in batches {
        writer.write(batch).await?;
    }
    writer.finish().await
}
