//! Writing one SST.
//!
//! Input rows must already be sorted by the primary key and deduplicated (the
//! memtable flush does that). The writer streams them into a Parquet file in
//! the object store, computing the [`SstInfo`] that the manifest records.

use std::sync::Arc;

use arrow::{
    array::{Array, AsArray},
    compute::{max, min},
    datatypes::{SchemaRef, TimestampMillisecondType, UInt64Type},
    record_batch::RecordBatch,
};
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

use crate::{Error, Result, SstId, SstInfo, TimeRange, SEQ_COLUMN, SST_INFO_KEY};

/// How to write one SST.
#[derive(Debug, Clone)]
pub struct SstWriteOptions {
    /// The timestamp column (Arrow `Timestamp(Millisecond)`).
    pub timestamp_column: String,
    /// Tag columns: dictionary-encoded, with bloom filters.
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

fn props(
    schema: &SchemaRef,
    opts: &SstWriteOptions,
    info_json: String,
) -> Result<WriterProperties> {
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
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SST_INFO_KEY.to_string(),
            info_json,
        )]));
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

/// Summarises the rows about to be written.
fn summarise(batches: &[RecordBatch], opts: &SstWriteOptions) -> Result<(TimeRange, u64, u64)> {
    let mut min_ts = i64::MAX;
    let mut max_ts = i64::MIN;
    let mut max_seq = 0u64;
    let mut rows = 0u64;
    for batch in batches {
        rows += batch.num_rows() as u64;
        let ts = batch
            .column_by_name(&opts.timestamp_column)
            .ok_or_else(|| {
                Error::InvalidInput(format!("missing column {}", opts.timestamp_column))
            })?;
        let ts = ts
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| {
                Error::InvalidInput("timestamp column is not Timestamp(ms)".to_string())
            })?;
        if ts.null_count() > 0 {
            return Err(Error::InvalidInput(
                "timestamp column has nulls".to_string(),
            ));
        }
        if let (Some(lo), Some(hi)) = (min(ts), max(ts)) {
            min_ts = min_ts.min(lo);
            max_ts = max_ts.max(hi);
        }
        let seq = batch
            .column_by_name(SEQ_COLUMN)
            .ok_or_else(|| Error::InvalidInput(format!("missing column {SEQ_COLUMN}")))?;
        let seq = seq
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| Error::InvalidInput(format!("{SEQ_COLUMN} is not UInt64")))?;
        if let Some(hi) = max(seq) {
            max_seq = max_seq.max(hi);
        }
    }
    if rows == 0 {
        return Err(Error::InvalidInput(
            "an SST needs at least one row".to_string(),
        ));
    }
    Ok((
        TimeRange::new(min_ts, max_ts.saturating_add(1)),
        max_seq,
        rows,
    ))
}

/// Writes `batches` (sorted, deduplicated, all with `schema`) as SST `id` at
/// `path`, and returns what the manifest should record about it. The object
/// appears at `path` only once complete (a single put, or a completed
/// multipart upload).
pub async fn write_sst(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    id: SstId,
    schema: SchemaRef,
    batches: &[RecordBatch],
    opts: &SstWriteOptions,
) -> Result<SstInfo> {
    let (time_range, max_seq, rows) = summarise(batches, opts)?;
    let mut info = SstInfo {
        id,
        path: path.to_string(),
        time_range,
        segment_start: opts.segment_start,
        max_seq,
        rows,
        size_bytes: 0,
        schema_version: opts.schema_version,
        level: opts.level,
    };
    let info_json = serde_json::to_string(&info)
        .map_err(|e| Error::InvalidInput(format!("encoding SST info: {e}")))?;
    let props = props(&schema, opts, info_json)?;
    let write_err = |source| Error::Write {
        path: path.to_string(),
        source,
    };
    let object = BufWriter::new(store, path.clone());
    let mut writer = AsyncArrowWriter::try_new(object, schema, Some(props)).map_err(write_err)?;
    for batch in batches {
        writer.write(batch).await.map_err(write_err)?;
    }
    writer.finish().await.map_err(write_err)?;
    info.size_bytes = writer.bytes_written() as u64;
    Ok(info)
}
