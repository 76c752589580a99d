//! The SST metadata cache: Parquet footers and page indexes, kept in memory
//! (LRU, bounded in bytes) so that repeated scans of an SST skip re-reading
//! them. SSTs are immutable, so entries never go stale. Hits and misses are
//! exported as metrics.

use std::sync::Arc;

use datafusion::{
    common::{HashMap, Result as DfResult, TableReference},
    datasource::physical_plan::{
        parquet::CachedParquetFileReaderFactory, ParquetFileReaderFactory,
    },
    execution::cache::{
        cache_manager::{CachedFileMetadataEntry, FileMetadataCache},
        default_cache::DefaultCache,
        Cache, CacheEntryInfo,
    },
};
use object_store::{path::Path, ObjectStore};

use crate::metrics;

/// DataFusion's LRU metadata cache, counting hits and misses.
pub struct CountingMetadataCache {
    inner: DefaultCache<Path, CachedFileMetadataEntry>,
}

impl std::fmt::Debug for CountingMetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingMetadataCache({} entries)", self.inner.len())
    }
}

impl CountingMetadataCache {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            inner: DefaultCache::new(limit_bytes).with_name("StrataSstMetadataCache"),
        }
    }
}

impl Cache<Path, CachedFileMetadataEntry> for CountingMetadataCache {
    fn get(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        let got = self.inner.get(key);
        if got.is_some() {
            metrics::SST_META_CACHE_HITS.inc();
        } else {
            metrics::SST_META_CACHE_MISSES.inc();
        }
        got
    }

    fn put(&self, key: &Path, value: CachedFileMetadataEntry) -> Option<CachedFileMetadataEntry> {
        self.inner.put(key, value)
    }

    fn remove(&self, k: &Path) -> Option<CachedFileMetadataEntry> {
        self.inner.remove(k)
    }

    fn contains_key(&self, k: &Path) -> bool {
        self.inner.contains_key(k)
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn clear(&self) {
        self.inner.clear()
    }

    fn name(&self) -> String {
        self.inner.name()
    }

    fn cache_limit(&self) -> usize {
        self.inner.cache_limit()
    }

    fn update_cache_limit(&self, limit: usize) {
        self.inner.update_cache_limit(limit)
    }

    fn cache_ttl(&self) -> Option<std::time::Duration> {
        self.inner.cache_ttl()
    }

    fn update_cache_ttl(&self, ttl: Option<std::time::Duration>) {
        self.inner.update_cache_ttl(ttl)
    }

    fn drop_table_entries(&self, table_ref: &TableReference) -> DfResult<()> {
        self.inner.drop_table_entries(table_ref)
    }

    fn list_entries(&self) -> HashMap<Path, CacheEntryInfo<CachedFileMetadataEntry>> {
        self.inner.list_entries()
    }
}

/// A Parquet reader factory whose readers take footers from `cache`.
pub fn reader_factory(
    store: Arc<dyn ObjectStore>,
    cache: Arc<FileMetadataCache>,
) -> Arc<dyn ParquetFileReaderFactory> {
    Arc::new(CachedParquetFileReaderFactory::new(store, cache))
}
