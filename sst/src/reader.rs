//! Reading SSTs outside the query path: whole-file reads for tests and tools,
//! and the footer's [`SstInfo`]. Queries use DataFusion's Parquet scan.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Error, Result, SstInfo, SST_INFO_KEY};

async fn fetch(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Bytes> {
    let store_err = |source| Error::ObjectStore {
        op: "get",
        path: path.to_string(),
        source,
    };
    store
        .get(path)
        .await
        .map_err(store_err)?
        .bytes()
        .await
        .map_err(store_err)
}

/// Reads every row of an SST.
pub async fn read_all(store: Arc<dyn ObjectStore>, path: &Path) -> Result<Vec<RecordBatch>> {
    let read_err = |source| Error::Read {
        path: path.to_string(),
        source,
    };
    let bytes = fetch(&store, path).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(read_err)?
        .build()
        .map_err(read_err)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.into()))
}

/// Reads the [`SstInfo`] stored in an SST's footer.
pub async fn read_info(store: Arc<dyn ObjectStore>, path: &Path) -> Result<SstInfo> {
    let read_err = |source| Error::Read {
        path: path.to_string(),
        source,
    };
    let bytes = fetch(&store, path).await?;
    let size = bytes.len() as u64;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(read_err)?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == SST_INFO_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| Error::InvalidMetadata {
            path: path.to_string(),
            reason: format!("no {SST_INFO_KEY} entry in the footer"),
        })?;
    let mut info: SstInfo = serde_json::from_str(&kv).map_err(|e| Error::InvalidMetadata {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    // The size is only known after the footer was written.
    info.size_bytes = size;
    Ok(info)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::{
        array::{Float64Array, StringArray, TimestampMillisecondArray, UInt64Array},
        datatypes::{DataType, Field, Schema, TimeUnit},
    };
    use object_store::local::LocalFileSystem;

    use super::*;
    use crate::{
        writer::{write_sst, SstWriteOptions},
        SstId, TimeRange, SEQ_COLUMN,
    };

    #[tokio::test]
    async fn write_then_read_back_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b"])),
                Arc::new(TimestampMillisecondArray::from(vec![10, 20, 15])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
                Arc::new(UInt64Array::from(vec![1, 2, 5])),
            ],
        )
        .unwrap();
        let opts = SstWriteOptions {
            timestamp_column: "ts".to_string(),
            tag_columns: vec!["host".to_string()],
            primary_key: vec!["host".to_string(), "ts".to_string()],
            schema_version: 3,
            ..Default::default()
        };
        let path = Path::from("c/shards/0/tables/1/sst/9.parquet");
        let info = write_sst(
            store.clone(),
            &path,
            SstId(9),
            schema,
            std::slice::from_ref(&batch),
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(info.time_range, TimeRange::new(10, 21));
        assert_eq!((info.rows, info.max_seq, info.schema_version), (3, 5, 3));
        let host = &info.column_stats["host"];
        assert_eq!(
            (host.min.as_deref(), host.max.as_deref()),
            (Some("a"), Some("b"))
        );
        assert!(info.size_bytes > 0);

        let back = read_all(store.clone(), &path).await.unwrap();
        assert_eq!(back, vec![batch]);
        let footer = read_info(store, &path).await.unwrap();
        assert_eq!(footer.time_range, info.time_range);
        assert_eq!(footer.size_bytes, info.size_bytes);
    }
}
