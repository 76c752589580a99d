//! A bounded local-disk read cache in front of an object store.
//!
//! SSTs are immutable, so a copy on local disk never goes stale. On the
//! first read of an SST the whole object is fetched once and kept under the
//! cache directory; later reads of any range are served from the local file.
//! Writes of SSTs go through to the store and into the cache
//! (write-through). When the cached bytes pass the capacity, the least
//! recently used files are evicted. Only `*.parquet` objects are cached;
//! everything else (manifests, the catalog) passes straight through.
//!
//! The cache survives restarts: on open, the directory is scanned and its
//! files are indexed, oldest first.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    ops::Range,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt};
use object_store::{
    path::Path, Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result,
};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};

#[allow(clippy::expect_used)]
fn counter(name: &str, help: &str) -> IntCounter {
    // Static, valid definitions: construction cannot fail.
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

static HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_disk_cache_hits_total",
        "Object reads served from the local disk cache",
    )
});
static MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_disk_cache_misses_total",
        "Object reads that fetched from the object store",
    )
});
static EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_disk_cache_evictions_total",
        "Files evicted from the local disk cache",
    )
});
#[allow(clippy::expect_used)]
static BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "strata_disk_cache_bytes",
        "Bytes held in the local disk cache",
    )
    .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(g.clone()));
    g
});

#[derive(Debug, Clone)]
struct Entry {
    meta: ObjectMeta,
    tick: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Path, Entry>,
    by_tick: BTreeMap<u64, Path>,
    bytes: u64,
}

/// An [`ObjectStore`] wrapper that caches SSTs on local disk.
pub struct DiskCacheStore {
    inner: Arc<dyn ObjectStore>,
    dir: PathBuf,
    capacity: u64,
    index: Arc<Mutex<Index>>,
    tick: AtomicU64,
}

impl fmt::Debug for DiskCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DiskCacheStore({}, {} bytes, over {})",
            self.dir.display(),
            self.capacity,
            self.inner
        )
    }
}

impl fmt::Display for DiskCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskCache({})", self.inner)
    }
}

fn cacheable(path: &Path) -> bool {
    path.as_ref().ends_with(".parquet")
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DiskCache",
        source: format!("{}: {e}", path.display()).into(),
    }
}

impl DiskCacheStore {
    /// Opens the cache in `dir` (created if missing), indexing what a
    /// previous run left there.
    pub fn open(
        inner: Arc<dyn ObjectStore>,
        dir: impl Into<PathBuf>,
        capacity: u64,
    ) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        LazyLock::force(&HITS);
        LazyLock::force(&MISSES);
        LazyLock::force(&EVICTIONS);
        LazyLock::force(&BYTES);
        let store = Self {
            inner,
            dir,
            capacity,
            index: Arc::new(Mutex::new(Index::default())),
            tick: AtomicU64::new(0),
        };
        let mut found = Vec::new();
        let mut stack = vec![store.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_file(&p);
                } else if let Ok(rel) = p.strip_prefix(&store.dir) {
                    let md = e.metadata()?;
                    let modified = md
                        .modified()
                        .ok()
                        .map(chrono::DateTime::<chrono::Utc>::from);
                    found.push((modified, rel.to_string_lossy().to_string(), md.len()));
                }
            }
        }
        found.sort();
        for (modified, rel, size) in found {
            let meta = ObjectMeta {
                location: Path::from(rel.as_str()),
                last_modified: modified.unwrap_or_default(),
                size,
                e_tag: None,
                version: None,
            };
            store.insert(meta);
        }
        store.evict();
        Ok(store)
    }

    fn local(&self, path: &Path) -> PathBuf {
        self.dir.join(path.as_ref())
    }

    fn insert(&self, meta: ObjectMeta) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut index = self.index.lock();
        if let Some(old) = index.entries.remove(&meta.location) {
            index.by_tick.remove(&old.tick);
            index.bytes -= old.meta.size;
        }
        index.bytes += meta.size;
        index.by_tick.insert(tick, meta.location.clone());
        index
            .entries
            .insert(meta.location.clone(), Entry { meta, tick });
        BYTES.set(index.bytes as i64);
    }

    /// Marks `path` used now; returns its metadata if cached.
    fn touch(&self, path: &Path) -> Option<ObjectMeta> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut index = self.index.lock();
        let old_tick = index.entries.get(path)?.tick;
        index.by_tick.remove(&old_tick);
        index.by_tick.insert(tick, path.clone());
        let entry = index.entries.get_mut(path)?;
        entry.tick = tick;
        Some(entry.meta.clone())
    }

    fn forget(&self, path: &Path) {
        let mut index = self.index.lock();
        if let Some(old) = index.entries.remove(path) {
            index.by_tick.remove(&old.tick);
            index.bytes -= old.meta.size;
            BYTES.set(index.bytes as i64);
        }
        drop(index);
        let _ = std::fs::remove_file(self.local(path));
    }

    /// Evicts least recently used files until within capacity.
    fn evict(&self) {
        loop {
            let victim = {
                let mut index = self.index.lock();
                if index.bytes <= self.capacity {
                    return;
                }
                let Some((&tick, _)) = index.by_tick.iter().next() else {
                    return;
                };
                let path = index.by_tick.remove(&tick);
                if let Some(p) = &path {
                    if let Some(e) = index.entries.remove(p) {
                        index.bytes -= e.meta.size;
                    }
                }
                BYTES.set(index.bytes as i64);
                path
            };
            if let Some(p) = victim {
                EVICTIONS.inc();
                let _ = std::fs::remove_file(self.local(&p));
            }
        }
    }

    /// Writes `bytes` for `meta` into the cache (atomically, by rename).
    async fn store_local(&self, meta: ObjectMeta, bytes: Bytes) -> Result<()> {
        if meta.size > self.capacity {
            return Ok(());
        }
        let target = self.local(&meta.location);
        let tmp =
            target.with_extension(format!("{}.tmp", self.tick.fetch_add(1, Ordering::Relaxed)));
        let t2 = target.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = t2.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &t2)
        })
        .await
        .map_err(|e| io_error(&target, std::io::Error::other(e)))?
        .map_err(|e| io_error(&target, e))?;
        self.insert(meta);
        self.evict();
        Ok(())
    }

    async fn read_local(&self, path: &Path, range: Range<u64>) -> Result<Bytes> {
        let local = self.local(path);
        let l2 = local.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&l2)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| io_error(&local, std::io::Error::other(e)))?
        .map_err(|e| io_error(&local, e))
    }

    /// Metadata of a cached copy of `path`, fetching it first on a miss.
    async fn ensure(&self, path: &Path) -> Result<ObjectMeta> {
        if let Some(meta) = self.touch(path) {
            if self.local(path).exists() {
                HITS.inc();
                return Ok(meta);
            }
            self.forget(path);
        }
        MISSES.inc();
        let got = self.inner.get(path).await?;
        let mut meta = got.meta.clone();
        // Kept under the path asked for: an inner store may report its own
        // form of it (object_store's `PrefixStore`, which S3 stores with a
        // key prefix use, returns the location with the prefix), and a
        // copy filed under that would never be found again.
        meta.location = path.clone();
        let bytes = got.bytes().await?;
        self.store_local(meta.clone(), bytes).await?;
        Ok(meta)
    }

    /// Reads `range` of `path` through the cache.
    async fn read(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectMeta, Range<u64>, Bytes)> {
        let meta = self.ensure(path).await?;
        let range = range.unwrap_or(0..meta.size);
        if range.end > meta.size || range.start > range.end {
            return Err(object_store::Error::Generic {
                store: "DiskCache",
                source: format!("range {range:?} is outside {path} of {} bytes", meta.size).into(),
            });
        }
        let bytes = if self.local(path).exists() {
            self.read_local(path, range.clone()).await?
        } else {
            // Too large to cache, or evicted meanwhile.
            self.inner.get_range(path, range.clone()).await?
        };
        Ok((meta, range, bytes))
    }
}

fn simple(options: &GetOptions) -> bool {
    options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
        && !options.head
}

#[async_trait]
impl ObjectStore for DiskCacheStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes: Option<Bytes> = cacheable(location).then(|| {
            let mut all = Vec::with_capacity(payload.content_length());
            for chunk in payload.iter() {
                all.extend_from_slice(chunk);
            }
            Bytes::from(all)
        });
        let result = self.inner.put_opts(location, payload, opts).await?;
        if let Some(bytes) = bytes {
            let meta = ObjectMeta {
                location: location.clone(),
                last_modified: chrono::Utc::now(),
                size: bytes.len() as u64,
                e_tag: result.e_tag.clone(),
                version: result.version.clone(),
            };
            if let Err(e) = self.store_local(meta, bytes).await {
                tracing::warn!(path = %location, error = %e, "write-through to the disk cache failed");
            }
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Large uploads are cached on their first read instead.
        self.forget(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if !cacheable(location) || !simple(&options) {
            return self.inner.get_opts(location, options).await;
        }
        let size = self.ensure(location).await?.size;
        let range = match &options.range {
            Some(r) => Some(r.as_range(size).map_err(|e| object_store::Error::Generic {
                store: "DiskCache",
                source: Box::new(e),
            })?),
            None => None,
        };
        let (meta, range, bytes) = self.read(location, range).await?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            ),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if !cacheable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.read(location, Some(r.clone())).await?.2);
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Forget cached copies first; a failed delete only costs a refetch.
        let dir = self.dir.clone();
        let index = self.index.clone();
        let forgotten = locations
            .map(move |p| {
                if let Ok(p) = &p {
                    let mut index = index.lock();
                    if let Some(old) = index.entries.remove(p) {
                        index.by_tick.remove(&old.tick);
                        index.bytes -= old.meta.size;
                        BYTES.set(index.bytes as i64);
                    }
                    drop(index);
                    let _ = std::fs::remove_file(dir.join(p.as_ref()));
                }
                p
            })
            .boxed();
        self.inner.delete_stream(forgotten)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.forget(to);
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::AtomicUsize;

    use object_store::local::LocalFileSystem;

    use super::*;

    /// Counts reads that reach the real store.
    #[derive(Debug)]
    struct Counting {
        inner: LocalFileSystem,
        gets: AtomicUsize,
    }

    impl fmt::Display for Counting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Counting")
        }
    }

    #[async_trait]
    impl ObjectStore for Counting {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.inner.copy_opts(f, t, o).await
        }
    }

    /// An object another process wrote, read through the cache over a
    /// prefixed store (`PrefixStore`, which S3 stores with a key prefix
    /// use): fetched once, then read from the local copy. The inner store
    /// reports locations with its prefix; the cache keys by the path asked.
    #[tokio::test]
    async fn reads_over_a_prefixed_store_hit_the_cache() {
        let store_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting {
            inner: LocalFileSystem::new_with_prefix(store_dir.path()).unwrap(),
            gets: AtomicUsize::new(0),
        });
        let prefixed = Arc::new(object_store::prefix::PrefixStore::new(
            counting.clone(),
            "cluster-a",
        ));
        let p = Path::from("t/sst/0.parquet");
        prefixed
            .put(&p, PutPayload::from(vec![7u8; 1000]))
            .await
            .unwrap();
        let cache = DiskCacheStore::open(prefixed, cache_dir.path(), 1 << 20).unwrap();
        for _ in 0..3 {
            let got = cache.get_range(&p, 10..20).await.unwrap();
            assert_eq!(got.as_ref(), &[7u8; 10]);
        }
        assert_eq!(
            counting.gets.load(Ordering::SeqCst),
            1,
            "every read fetched the whole object again"
        );
    }

    #[tokio::test]
    async fn reads_hit_the_cache_and_capacity_evicts_lru() {
        let store_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting {
            inner: LocalFileSystem::new_with_prefix(store_dir.path()).unwrap(),
            gets: AtomicUsize::new(0),
        });
        // Put three objects directly into the store (not through the cache).
        for i in 0..3u8 {
            counting
                .put(
                    &Path::from(format!("t/sst/{i}.parquet")),
                    PutPayload::from(vec![i; 1000]),
                )
                .await
                .unwrap();
        }
        let cache = DiskCacheStore::open(counting.clone(), cache_dir.path(), 2500).unwrap();
        let p0 = Path::from("t/sst/0.parquet");
        let got = cache.get_range(&p0, 10..20).await.unwrap();
        assert_eq!(got.as_ref(), &[0u8; 10]);
        assert_eq!(
            counting.gets.load(Ordering::SeqCst),
            1,
            "a miss fetches the object once"
        );
        let all = cache.get(&p0).await.unwrap().bytes().await.unwrap();
        assert_eq!(all.len(), 1000);
        let ranges = cache.get_ranges(&p0, &[0..1, 999..1000]).await.unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(
            counting.gets.load(Ordering::SeqCst),
            1,
            "hits do not reach the store"
        );

        // Two more files: the cache holds at most 2500 bytes, so the least
        // recently used one (0) is evicted.
        cache
            .get_range(&Path::from("t/sst/1.parquet"), 0..1)
            .await
            .unwrap();
        cache
            .get_range(&Path::from("t/sst/2.parquet"), 0..1)
            .await
            .unwrap();
        assert!(!cache_dir.path().join("t/sst/0.parquet").exists());
        assert!(cache_dir.path().join("t/sst/2.parquet").exists());

        // Non-SST objects pass through.
        counting
            .put(&Path::from("m.json"), PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        let before = counting.gets.load(Ordering::SeqCst);
        cache.get(&Path::from("m.json")).await.unwrap();
        cache.get(&Path::from("m.json")).await.unwrap();
        assert_eq!(counting.gets.load(Ordering::SeqCst), before + 2);

        // Writes go through and into the cache; deletes remove both.
        let p9 = Path::from("t/sst/9.parquet");
        cache
            .put(&p9, PutPayload::from(vec![9u8; 100]))
            .await
            .unwrap();
        let before = counting.gets.load(Ordering::SeqCst);
        assert_eq!(
            cache.get_range(&p9, 0..3).await.unwrap().as_ref(),
            &[9, 9, 9]
        );
        assert_eq!(
            counting.gets.load(Ordering::SeqCst),
            before,
            "written files are cached"
        );
        cache.delete(&p9).await.unwrap();
        assert!(!cache_dir.path().join("t/sst/9.parquet").exists());
        assert!(cache.get(&p9).await.is_err());

        // A restart finds what is on disk.
        drop(cache);
        let reopened = DiskCacheStore::open(counting.clone(), cache_dir.path(), 2500).unwrap();
        let before = counting.gets.load(Ordering::SeqCst);
        reopened
            .get_range(&Path::from("t/sst/2.parquet"), 0..1)
            .await
            .unwrap();
        assert_eq!(counting.gets.load(Ordering::SeqCst), before);
    }
}
