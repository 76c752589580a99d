//! The local object store of standalone mode, made durable.
//!
//! `object_store`'s [`LocalFileSystem`] never calls `fsync`: a put returns
//! once the data is in the page cache and the file has its name. After a
//! power loss such a file can be missing, empty or hold garbage, although
//! the put was reported as done. Standalone Strata truncates its WAL once a
//! flush's SSTs and manifest edit are "in the object store", so on that
//! store a lost or torn file is lost data.
//!
//! [`DurableLocalStore`] wraps [`LocalFileSystem`] (reads, lists, deletes
//! and the naming of files are its) and makes every write durable before it
//! returns:
//!
//! - **put**: the payload goes to a hidden staged file (`name#N`, which
//!   listing skips), that file is fsynced, and only then does it get its name
//!   (`rename` to overwrite, `link` for a conditional create), so a name
//!   never points at data that is not on disk. Then the parent directory is
//!   fsynced (the new name), and every directory created on the way up to the
//!   store's root gets its own entry synced in its parent.
//! - **multipart upload**: parts are written into one staged file; `complete`
//!   fsyncs it, renames it into place and syncs the directories as above.
//! - **copy / rename**: `LocalFileSystem` links the existing file under the
//!   new name; the file and the directories are synced afterwards (rename
//!   also syncs the directory it left).
//! - **delete**: the parent directory is synced, so a deleted object stays
//!   deleted.
//!
//! The blocking calls run on tokio's blocking pool. Directories known to be
//! durable are remembered, so a put into an existing directory costs two
//! fsyncs (file and parent) and no more.

use std::{
    collections::HashSet,
    fmt,
    fs::{File, OpenOptions},
    io::{ErrorKind, Write},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path as FsPath, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use async_trait::async_trait;
use futures::{stream::BoxStream, StreamExt};
use object_store::{
    local::LocalFileSystem, path::Path, CopyOptions, GetOptions, GetResult, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result, UploadPart,
};
use parking_lot::Mutex;

const STORE: &str = "DurableLocalStore";

/// What was synced, in order (kept for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    File(PathBuf),
    Dir(PathBuf),
}

/// The fsync side of the store, shared with uploads and blocking tasks.
#[derive(Debug)]
struct Syncer {
    /// The store's root directory (canonical).
    root: PathBuf,
    /// Directories whose own entry in their parent is known to be durable.
    durable_dirs: Mutex<HashSet<PathBuf>>,
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
    /// Every sync in order, when recording is on (tests).
    log: Option<Mutex<Vec<Synced>>>,
    /// Makes staged file names unique within the process.
    staged: AtomicU64,
}

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

fn etag(metadata: &std::fs::Metadata) -> String {
    // The scheme of LocalFileSystem, so that a put's e-tag equals what a
    // later head or get reports.
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("{:x}-{:x}-{:x}", metadata.ino(), mtime, metadata.len())
}

impl Syncer {
    fn record(&self, synced: Synced) {
        if let Some(log) = &self.log {
            log.lock().push(synced);
        }
    }

    fn sync_file(&self, file: &File, path: &FsPath) -> std::io::Result<()> {
        file.sync_all()?;
        self.file_syncs.fetch_add(1, Ordering::Relaxed);
        self.record(Synced::File(path.to_path_buf()));
        Ok(())
    }

    fn sync_path(&self, path: &FsPath) -> std::io::Result<()> {
        let file = File::open(path)?;
        self.sync_file(&file, path)
    }

    fn sync_dir(&self, dir: &FsPath) -> std::io::Result<()> {
        File::open(dir)?.sync_all()?;
        self.dir_syncs.fetch_add(1, Ordering::Relaxed);
        self.record(Synced::Dir(dir.to_path_buf()));
        Ok(())
    }

    /// Makes the name `path` durable: syncs its directory, then, up to the
    /// root, the parent of every directory not yet known to be durable (it
    /// may have been created for this file).
    fn sync_entry(&self, path: &FsPath) -> std::io::Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        self.sync_dir(parent)?;
        let mut dir = parent;
        while dir != self.root && dir.starts_with(&self.root) {
            if self.durable_dirs.lock().contains(dir) {
                break;
            }
            let Some(up) = dir.parent() else { break };
            self.sync_dir(up)?;
            self.durable_dirs.lock().insert(dir.to_path_buf());
            dir = up;
        }
        Ok(())
    }

    /// Creates a hidden staged file next to `dest` (`dest#N`, which
    /// `LocalFileSystem` never lists), creating directories as needed.
    fn create_staged(&self, dest: &FsPath) -> std::io::Result<(File, PathBuf)> {
        loop {
            let n = self.staged.fetch_add(1, Ordering::Relaxed);
            let mut staged = dest.as_os_str().to_owned();
            staged.push(format!("#{n}"));
            let staged = PathBuf::from(staged);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&staged)
            {
                Ok(file) => return Ok((file, staged)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let Some(parent) = staged.parent() else {
                        return Err(e);
                    };
                    std::fs::create_dir_all(parent)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives the synced staged file its name: rename to overwrite, a hard
    /// link for a create (which fails if the name exists). Removes the staged
    /// file either way, then makes the name durable.
    fn publish(&self, staged: &FsPath, dest: &FsPath, create: bool) -> Result<()> {
        let linked = if create {
            let linked = std::fs::hard_link(staged, dest);
            let _ = std::fs::remove_file(staged);
            linked.map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => object_store::Error::AlreadyExists {
                    path: dest.display().to_string(),
                    source: Box::new(e),
                },
                _ => io_error(e),
            })
        } else {
            std::fs::rename(staged, dest).map_err(|e| {
                let _ = std::fs::remove_file(staged);
                io_error(e)
            })
        };
        linked?;
        self.sync_entry(dest).map_err(io_error)
    }

    /// The blocking body of a put.
    fn put(&self, dest: &FsPath, payload: &PutPayload, create: bool) -> Result<PutResult> {
        let (mut file, staged) = self.create_staged(dest).map_err(io_error)?;
        let written = payload
            .iter()
            .try_for_each(|chunk| file.write_all(chunk))
            .and_then(|()| self.sync_file(&file, &staged))
            .and_then(|()| file.metadata());
        let metadata = match written {
            Ok(m) => m,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&staged);
                return Err(io_error(e));
            }
        };
        drop(file);
        self.publish(&staged, dest, create)?;
        Ok(PutResult {
            e_tag: Some(etag(&metadata)),
            version: None,
        })
    }
}

/// A [`LocalFileSystem`] whose writes are on disk (fsynced, with their
/// directories) before they return. See the module documentation.
#[derive(Debug, Clone)]
pub struct DurableLocalStore {
    inner: Arc<LocalFileSystem>,
    syncer: Arc<Syncer>,
}

/// How many fsyncs a [`DurableLocalStore`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCounts {
    pub files: u64,
    pub dirs: u64,
}

impl DurableLocalStore {
    /// Opens the store rooted at `root`, creating the directory (durably)
    /// if needed.
    pub fn new(root: impl AsRef<FsPath>) -> std::io::Result<Self> {
        Self::open(root.as_ref(), false)
    }

    /// Like [`DurableLocalStore::new`], recording every sync in order, for
    /// tests ([`DurableLocalStore::take_sync_log`]).
    pub fn with_sync_log(root: impl AsRef<FsPath>) -> std::io::Result<Self> {
        Self::open(root.as_ref(), true)
    }

    fn open(root: &FsPath, log: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let syncer = Syncer {
            root: root.clone(),
            durable_dirs: Mutex::new(HashSet::new()),
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
            log: log.then(|| Mutex::new(Vec::new())),
            staged: AtomicU64::new(0),
        };
        // The root and every directory above it may have just been created.
        let mut dir = root.as_path();
        while let Some(up) = dir.parent() {
            syncer.sync_dir(up)?;
            dir = up;
        }
        if let Some(log) = &syncer.log {
            log.lock().clear();
        }
        Ok(Self {
            inner: Arc::new(inner),
            syncer: Arc::new(syncer),
        })
    }

    /// The fsyncs made so far.
    pub fn sync_counts(&self) -> SyncCounts {
        SyncCounts {
            files: self.syncer.file_syncs.load(Ordering::Relaxed),
            dirs: self.syncer.dir_syncs.load(Ordering::Relaxed),
        }
    }

    /// The syncs recorded since the last call (empty unless the store was
    /// opened with [`DurableLocalStore::with_sync_log`]).
    pub fn take_sync_log(&self) -> Vec<Synced> {
        self.syncer
            .log
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock()))
            .unwrap_or_default()
    }

    /// The root directory of the store.
    pub fn root(&self) -> &FsPath {
        &self.syncer.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Syncer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let syncer = self.syncer.clone();
        tokio::task::spawn_blocking(move || f(&syncer))
            .await
            .map_err(|source| object_store::Error::JoinError { source })?
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.syncer.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "`put_opts` with mode `PutMode::Update`".into(),
                    implementer: self.to_string(),
                })
            }
        };
        if !opts.attributes.is_empty() {
            return Err(object_store::Error::NotImplemented {
                operation: "`put_opts` with `opts.attributes` specified".into(),
                implementer: self.to_string(),
            });
        }
        let dest = self.inner.path_to_filesystem(location)?;
        self.blocking(move |s| s.put(&dest, &payload, create)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if !opts.attributes.is_empty() {
            return Err(object_store::Error::NotImplemented {
                operation: "`put_multipart_opts` with `opts.attributes` specified".into(),
                implementer: self.to_string(),
            });
        }
        let dest = self.inner.path_to_filesystem(location)?;
        let (file, staged) = {
            let dest = dest.clone();
            self.blocking(move |s| s.create_staged(&dest).map_err(io_error))
                .await?
        };
        Ok(Box::new(DurableUpload {
            state: Arc::new(UploadState {
                file,
                dest,
                syncer: self.syncer.clone(),
            }),
            staged: Some(staged),
            offset: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let syncer = self.syncer.clone();
        self.inner
            .delete_stream(locations)
            .then(move |deleted| {
                let inner = inner.clone();
                let syncer = syncer.clone();
                async move {
                    let location = deleted?;
                    let path = inner.path_to_filesystem(&location)?;
                    tokio::task::spawn_blocking(move || match path.parent() {
                        Some(dir) => syncer.sync_dir(dir).map_err(io_error),
                        None => Ok(()),
                    })
                    .await
                    .map_err(|source| object_store::Error::JoinError { source })??;
                    Ok(location)
                }
            })
            .boxed()
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
        // LocalFileSystem links the existing file under the new name.
        self.inner.copy_opts(from, to, options).await?;
        let to = self.inner.path_to_filesystem(to)?;
        self.blocking(move |s| {
            s.sync_path(&to)
                .and_then(|()| s.sync_entry(&to))
                .map_err(io_error)
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        let from = self.inner.path_to_filesystem(from)?;
        let to = self.inner.path_to_filesystem(to)?;
        self.blocking(move |s| {
            s.sync_path(&to)
                .and_then(|()| s.sync_entry(&to))
                .and_then(|()| match from.parent() {
                    Some(dir) => s.sync_dir(dir),
                    None => Ok(()),
                })
                .map_err(io_error)
        })
        .await
    }
}

#[derive(Debug)]
struct UploadState {
    file: File,
    dest: PathBuf,
    syncer: Arc<Syncer>,
}

/// A multipart upload into one staged file, fsynced and renamed into place
/// on completion.
#[derive(Debug)]
struct DurableUpload {
    state: Arc<UploadState>,
    /// The staged file; `None` once completed or aborted.
    staged: Option<PathBuf>,
    /// Where the next part goes.
    offset: u64,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let mut offset = self.offset;
        self.offset += data.content_length() as u64;
        let state = self.state.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for chunk in data.iter() {
                    state.file.write_all_at(chunk, offset).map_err(io_error)?;
                    offset += chunk.len() as u64;
                }
                Ok(())
            })
            .await
            .map_err(|source| object_store::Error::JoinError { source })?
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let staged = self.staged.take().ok_or(object_store::Error::Generic {
            store: STORE,
            source: "upload already completed or aborted".into(),
        })?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let s = &state.syncer;
            let metadata = s
                .sync_file(&state.file, &staged)
                .and_then(|()| state.file.metadata())
                .map_err(|e| {
                    let _ = std::fs::remove_file(&staged);
                    io_error(e)
                })?;
            s.publish(&staged, &state.dest, false)?;
            Ok(PutResult {
                e_tag: Some(etag(&metadata)),
                version: None,
            })
        })
        .await
        .map_err(|source| object_store::Error::JoinError { source })?
    }

    async fn abort(&mut self) -> Result<()> {
        if let Some(staged) = self.staged.take() {
            tokio::task::spawn_blocking(move || std::fs::remove_file(staged))
                .await
                .map_err(|source| object_store::Error::JoinError { source })?
                .map_err(io_error)?;
        }
        Ok(())
    }
}

impl Drop for DurableUpload {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            let _ = std::fs::remove_file(staged);
        }
    }
}

#[cfg(test)]
mod tests;
