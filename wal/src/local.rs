//! The local segment-file WAL.
//!
//! A region is a directory of segment files named by the offset of their
//! first record (`00000000000000000042.log`), plus a `TRUNCATED` file holding
//! the persisted low watermark. One writer thread owns the active (last)
//! segment and commits in groups: it takes every append request that is
//! waiting, writes them with one `write`, and makes them durable with one
//! `fdatasync` before any of them is acknowledged. Throughput therefore grows
//! with the number of concurrent writers rather than with fsyncs per second.
//!
//! Readers open segment files themselves and never read past the committed
//! end, so they never see a half-written record.

/// The record format, public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod format;
mod writer;

use std::{
    fs::{self, File, OpenOptions},
    io::{BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use self::format::{ReadOutcome, MAX_PAYLOAD};
use crate::{AppendResult, Epoch, Error, Result, Wal, WalEntry, WalOffset};

/// Options of a local WAL region.
#[derive(Debug, Clone)]
pub struct LocalWalOptions {
    /// A new segment starts once the active one passes this size.
    pub segment_size: u64,
    /// The most records one group commit writes with one fsync.
    pub max_batch_records: usize,
}

impl Default for LocalWalOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            max_batch_records: 4096,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    path: PathBuf,
}

/// State shared by the handle, the readers and the writer thread.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// Sorted by `first`; the last one is the active segment.
    segments: RwLock<Vec<Segment>>,
    /// The offset after the last durable record.
    committed: AtomicU64,
    /// The persisted truncation watermark.
    low: AtomicU64,
    /// Set after a write or fsync failure: the file's state is then unknown.
    poisoned: Mutex<Option<String>>,
    /// Serialises truncations with each other.
    truncate_lock: Mutex<()>,
}

struct AppendRequest {
    epoch: Epoch,
    payloads: Vec<Bytes>,
    reply: oneshot::Sender<Result<AppendResult>>,
}

/// A WAL region stored as segment files in a local directory.
#[derive(Debug)]
pub struct LocalWal {
    shared: Arc<Shared>,
    sender: mpsc::Sender<AppendRequest>,
}

const WATERMARK_FILE: &str = "TRUNCATED";

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Creates `dir` and any missing parents, and makes each new directory's
/// entry durable in its parent: a record is only durable if the directory
/// holding its segment still exists after a power loss.
fn create_dir_durable(dir: &Path) -> Result<()> {
    // The deepest ancestor that already exists; everything below is new.
    let existing = dir.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf);
    fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
    for new in dir.ancestors() {
        if Some(new) == existing.as_deref() {
            break;
        }
        match new.parent() {
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
    }
    Ok(())
}

impl LocalWal {
    /// Opens (or creates) the region in `dir`. Recovers from a crash: a torn
    /// record at the end of the last segment is cut off, and segments wholly
    /// below the persisted watermark are deleted.
    pub async fn open(dir: impl Into<PathBuf>, options: LocalWalOptions) -> Result<Self> {
        let dir = dir.into();
        let opened = tokio::task::spawn_blocking(move || Self::open_blocking(dir, options))
            .await
            .map_err(|e| Error::Poisoned {
                reason: format!("WAL open task failed: {e}"),
            })??;
        Ok(opened)
    }

    fn open_blocking(dir: PathBuf, options: LocalWalOptions) -> Result<Self> {
        create_dir_durable(&dir)?;
        let low = read_watermark(&dir)?;

        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                segments.push(Segment {
                    first,
                    path: entry.path(),
                });
            }
        }
        segments.sort_by_key(|s| s.first);

        // Drop segments wholly below the watermark (a crash may have
        // interrupted the deletion that follows a truncation).
        while segments.len() > 1 && segments[1].first <= low {
            let seg = segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err("removing segment", &seg.path))?;
        }

        let (file, size, next) = match segments.last() {
            Some(last) => {
                let (valid_len, next) = scan_segment(&last.path, last.first)?;
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(io_err("opening segment", &last.path))?;
                let len = file
                    .metadata()
                    .map_err(io_err("reading metadata of", &last.path))?
                    .len();
                if len != valid_len {
                    tracing::warn!(
                        path = %last.path.display(),
                        torn_bytes = len - valid_len,
                        "truncating torn tail of WAL segment"
                    );
                    file.set_len(valid_len)
                        .map_err(io_err("truncating torn tail of", &last.path))?;
                    file.sync_all()
                        .map_err(io_err("syncing segment", &last.path))?;
                }
                file.seek(SeekFrom::End(0))
                    .map_err(io_err("seeking", &last.path))?;
                (file, valid_len, next.max(low))
            }
            None => {
                let path = segment_path(&dir, low);
                let file = create_segment(&dir, &path)?;
                segments.push(Segment { first: low, path });
                (file, 0, low)
            }
        };

        let shared = Arc::new(Shared {
            dir,
            segments: RwLock::new(segments),
            committed: AtomicU64::new(next),
            low: AtomicU64::new(low),
            poisoned: Mutex::new(None),
            truncate_lock: Mutex::new(()),
        });
        let (sender, receiver) = mpsc::channel(1024);
        let state = writer::WriterState {
            shared: shared.clone(),
            file,
            size,
            next,
            options,
        };
        std::thread::Builder::new()
            .name("wal-writer".to_string())
            .spawn(move || writer::run(state, receiver))
            .map_err(|e| Error::Io {
                op: "spawning the writer thread for",
                path: shared.dir.clone(),
                source: e,
            })?;
        Ok(Self { shared, sender })
    }

    /// The directory of this region.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

fn create_segment(dir: &Path, path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("creating segment", path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Scans a segment; returns the length of its valid prefix and the offset
/// after its last valid record.
fn scan_segment(path: &Path, first: u64) -> Result<(u64, u64)> {
    let file = File::open(path).map_err(io_err("opening segment", path))?;
    let mut reader = BufReader::new(file);
    let mut expected = first;
    let mut valid_len = 0u64;
    loop {
        match format::read_record(&mut reader).map_err(io_err("reading segment", path))? {
            ReadOutcome::Record(header, payload) => {
                if header.offset != expected {
                    tracing::warn!(path = %path.display(), expected, found = header.offset,
                        "WAL record out of sequence; treating it as the torn tail");
                    break;
                }
                expected += 1;
                valid_len += (format::HEADER_LEN + payload.len()) as u64;
            }
            ReadOutcome::Eof => break,
            ReadOutcome::Invalid(reason) => {
                tracing::warn!(path = %path.display(), offset = expected, %reason,
                    "invalid WAL record; treating it as the torn tail");
                break;
            }
        }
    }
    Ok((valid_len, expected))
}

fn read_watermark(dir: &Path) -> Result<u64> {
    let path = dir.join(WATERMARK_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading watermark", &path)(e)),
    };
    if bytes.len() != 12 {
        return Err(Error::Corrupted {
            path,
            offset: 0,
            reason: format!("watermark file has {} bytes, expected 12", bytes.len()),
        });
    }
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[..8]);
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if crc32fast::hash(&value) != crc {
        return Err(Error::Corrupted {
            path,
            offset: 0,
            reason: "watermark checksum mismatch".to_string(),
        });
    }
    Ok(u64::from_le_bytes(value))
}

fn write_watermark(dir: &Path, low: u64) -> Result<()> {
    let path = dir.join(WATERMARK_FILE);
    let tmp = dir.join(format!("{WATERMARK_FILE}.tmp"));
    let mut bytes = low.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&low.to_le_bytes()).to_le_bytes());
    let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    file.write_all(&bytes).map_err(io_err("writing", &tmp))?;
    file.sync_all().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
    sync_dir(dir)
}

fn read_blocking(shared: &Shared, from: u64, max_bytes: usize) -> Result<Vec<WalEntry>> {
    let from = from.max(shared.low.load(Ordering::Acquire));
    let committed = shared.committed.load(Ordering::Acquire);
    if from >= committed {
        return Ok(Vec::new());
    }
    // Open the needed files under the lock: an unlinked file stays readable
    // through an open handle, so a concurrent truncation cannot break us.
    let files: Vec<(PathBuf, File)> = {
        let segments = shared.segments.read();
        let start = segments.iter().rposition(|s| s.first <= from).unwrap_or(0);
        let mut files = Vec::new();
        for seg in &segments[start..] {
            let file = File::open(&seg.path).map_err(io_err("opening segment", &seg.path))?;
            files.push((seg.path.clone(), file));
        }
        files
    };

    let mut out = Vec::new();
    let mut bytes = 0usize;
    'segments: for (path, file) in files {
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        loop {
            let header =
                match format::read_header(&mut reader).map_err(io_err("reading segment", &path))? {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(reason) => {
                        return Err(Error::Corrupted {
                            path,
                            offset: from,
                            reason,
                        })
                    }
                };
            if header.offset >= committed {
                break 'segments;
            }
            if header.offset < from {
                reader
                    .seek_relative(i64::from(header.len))
                    .map_err(io_err("seeking in segment", &path))?;
                continue;
            }
            if !out.is_empty() && bytes + header.len as usize > max_bytes {
                break 'segments;
            }
            let mut payload = vec![0u8; header.len as usize];
            std::io::Read::read_exact(&mut reader, &mut payload)
                .map_err(io_err("reading segment", &path))?;
            if format::checksum(header.offset, header.epoch, &payload) != header.crc {
                return Err(Error::Corrupted {
                    path,
                    offset: header.offset,
                    reason: "checksum mismatch".to_string(),
                });
            }
            bytes += payload.len();
            out.push(WalEntry {
                offset: WalOffset(header.offset),
                epoch: Epoch(header.epoch),
                payload: Bytes::from(payload),
            });
        }
    }
    Ok(out)
}

fn truncate_blocking(shared: &Shared, below: u64) -> Result<()> {
    let _guard = shared.truncate_lock.lock();
    let below = below.min(shared.committed.load(Ordering::Acquire));
    if below <= shared.low.load(Ordering::Acquire) {
        return Ok(());
    }
    write_watermark(&shared.dir, below)?;
    shared.low.store(below, Ordering::Release);

    let doomed: Vec<Segment> = {
        let mut segments = shared.segments.write();
        let mut doomed = Vec::new();
        // Never remove the active (last) segment.
        while segments.len() > 1 && segments[1].first <= below {
            doomed.push(segments.remove(0));
        }
        doomed
    };
    for seg in doomed {
        fs::remove_file(&seg.path).map_err(io_err("removing segment", &seg.path))?;
    }
    Ok(())
}

#[async_trait]
impl Wal for LocalWal {
    async fn append(&self, epoch: Epoch, payloads: Vec<Bytes>) -> Result<AppendResult> {
        if let Some(big) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
            return Err(Error::RecordTooLarge {
                size: big.len(),
                limit: MAX_PAYLOAD,
            });
        }
        if let Some(reason) = self.shared.poisoned.lock().clone() {
            return Err(Error::Poisoned { reason });
        }
        let (reply, rx) = oneshot::channel();
        self.sender
            .send(AppendRequest {
                epoch,
                payloads,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read(&self, from: WalOffset, max_bytes: usize) -> Result<Vec<WalEntry>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || read_blocking(&shared, from.0, max_bytes))
            .await
            .map_err(|_| Error::Closed)?
    }

    async fn truncate(&self, below: WalOffset) -> Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || truncate_blocking(&shared, below.0))
            .await
            .map_err(|_| Error::Closed)?
    }

    fn next_offset(&self) -> WalOffset {
        WalOffset(self.shared.committed.load(Ordering::Acquire))
    }

    fn low_watermark(&self) -> WalOffset {
        WalOffset(self.shared.low.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests;
