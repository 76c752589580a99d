//! Configuration and shared resources of the engine.

use std::{sync::Arc, time::Duration};

use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

/// Engine settings. Every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The cluster name: the first path component in the object store.
    pub cluster: String,
    /// The write buffer of tables that do not set `write_buffer_size`.
    pub default_write_buffer_size: u64,
    /// Flushes that may run at once.
    pub max_concurrent_flushes: usize,
    /// A memtable that has held data this long is flushed, so the WAL does
    /// not grow without bound under a trickle of writes.
    #[serde(with = "humantime_serde_compat")]
    pub max_memtable_age: Duration,
    /// Rows per Parquet row group in SSTs.
    pub sst_row_group_rows: usize,
    /// zstd level for SSTs.
    pub sst_zstd_level: i32,
    /// Writes batched into one WAL group commit, at most.
    pub max_write_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cluster: "standalone".to_string(),
            default_write_buffer_size: 32 * 1024 * 1024,
            max_concurrent_flushes: 2,
            max_memtable_age: Duration::from_secs(600),
            sst_row_group_rows: 64 * 1024,
            sst_zstd_level: 3,
            max_write_batch: 1024,
        }
    }
}

/// Serde support for durations written as `"10m"`, `"2h"`, … in config files.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// What every table and shard of an engine shares.
#[derive(Debug)]
pub struct EngineContext {
    pub config: EngineConfig,
    pub store: Arc<dyn ObjectStore>,
    /// The URL under which `store` is registered with DataFusion.
    pub store_url: ObjectStoreUrl,
    pub flush_permits: tokio::sync::Semaphore,
}
