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
    #[serde(with = "byte_size")]
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
    /// Memory for cached SST footers and page indexes.
    #[serde(with = "byte_size")]
    pub sst_metadata_cache_size: u64,
    /// Writes batched into one WAL group commit, at most.
    pub max_write_batch: usize,

    /// Above this many bytes in all memtables, the largest are flushed.
    #[serde(with = "byte_size")]
    pub write_buffer_soft_limit: u64,
    /// At this many bytes in all memtables, writes wait for flushes.
    #[serde(with = "byte_size")]
    pub write_buffer_hard_limit: u64,
    /// How long a write waits at the hard limit before failing (retryably).
    #[serde(with = "humantime_serde_compat")]
    pub write_stall_timeout: Duration,

    /// How often the garbage collector, TTL expiry and the compaction
    /// picker run.
    #[serde(with = "humantime_serde_compat")]
    pub gc_interval: Duration,
    /// How often a follower re-reads its tables' manifests (to see the
    /// leader's flushes and compactions). Keep it well under `gc_grace`:
    /// the leader deletes replaced files that long after replacing them.
    #[serde(with = "humantime_serde_compat")]
    pub follower_sync_interval: Duration,
    /// How long a read from a follower waits for the follower to apply
    /// what the WAL held when the read began; then it fails with the
    /// retryable `FollowerBehind`.
    #[serde(with = "humantime_serde_compat")]
    pub follower_read_timeout: Duration,
    /// How long a handover of tables to another shard (a split or a merge)
    /// waits for the writes admitted before it to be applied; then it is
    /// given up (writes resume) and retried.
    #[serde(with = "humantime_serde_compat")]
    pub handover_drain_timeout: Duration,
    /// How long a retired SST file is kept after the last query using it.
    #[serde(with = "humantime_serde_compat")]
    pub gc_grace: Duration,
    /// An unreferenced file must be at least this old to be deleted as an
    /// orphan.
    #[serde(with = "humantime_serde_compat")]
    pub orphan_min_age: Duration,

    /// Compactions that may run at once.
    pub max_concurrent_compactions: usize,
    /// Memory that running compactions may use together.
    #[serde(with = "byte_size")]
    pub compaction_memory_budget: u64,
    /// A segment is compacted once it has this many SSTs below the target
    /// size.
    pub compaction_min_files: usize,
    /// At most this many SSTs are merged by one compaction.
    pub compaction_max_files: usize,
    /// Compaction output rolls to a new file at this size; files this large
    /// are not compacted again.
    #[serde(with = "byte_size")]
    pub compaction_target_file_size: u64,

    /// Series per table kept by the last-value cache; a table with more
    /// stops caching. 0 disables the cache.
    pub last_value_cache_max_series: usize,
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
            sst_metadata_cache_size: 128 * 1024 * 1024,
            max_write_batch: 1024,
            write_buffer_soft_limit: 256 * 1024 * 1024,
            write_buffer_hard_limit: 512 * 1024 * 1024,
            write_stall_timeout: Duration::from_secs(10),
            gc_interval: Duration::from_secs(60),
            gc_grace: Duration::from_secs(60),
            follower_sync_interval: Duration::from_secs(1),
            follower_read_timeout: Duration::from_secs(5),
            handover_drain_timeout: Duration::from_secs(10),
            orphan_min_age: Duration::from_secs(15 * 60),
            max_concurrent_compactions: 1,
            compaction_memory_budget: 256 * 1024 * 1024,
            compaction_min_files: 4,
            compaction_max_files: 32,
            compaction_target_file_size: 256 * 1024 * 1024,
            last_value_cache_max_series: 100_000,
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

/// Serde support for sizes written as `"64MB"` or a number of bytes.
pub mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Size::deserialize(d)? {
            Size::Bytes(b) => Ok(b),
            Size::Text(t) => {
                crate::options::parse_size("size", &t).map_err(serde::de::Error::custom)
            }
        }
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
    pub gc: crate::gc::Gc,
    pub write_buffer: crate::memory::WriteBufferManager,
    /// Reads SSTs for queries and compactions, with footers cached.
    pub reader_factory: Arc<dyn datafusion::datasource::physical_plan::ParquetFileReaderFactory>,
}
