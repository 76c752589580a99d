//! Safe deletion of SST files.
//!
//! Every SST in a [`TableVersion`](crate::table::TableVersion) is held as an
//! `Arc<SstHandle>`. A query pins the version it reads, and with it the
//! handles. When compaction or TTL removes an SST from the manifest, its
//! handle is *retired*: the collector keeps a weak reference and deletes the
//! file only when (a) no live version holds the handle any more, and (b) the
//! grace period since retirement has passed. A query can therefore never
//! lose a file it planned to read (HoraeDB #775, "sst not found").
//!
//! Files that no manifest references and that nothing retired (left behind
//! by a crash between upload and manifest commit, or by a dropped table) are
//! *orphans*; [`Gc::remove_orphans`] deletes those older than a minimum age.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use strata_sst::{SstId, SstInfo};

use crate::{metrics, Error, Result};

/// One SST as versions hold it.
#[derive(Debug)]
pub struct SstHandle {
    pub info: SstInfo,
}

impl SstHandle {
    pub fn new(info: SstInfo) -> Arc<Self> {
        Arc::new(Self { info })
    }
}

#[derive(Debug)]
struct Retired {
    handle: Weak<SstHandle>,
    id: SstId,
    path: Path,
    at: Instant,
}

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub deleted: usize,
    /// Still referenced by a pinned version.
    pub pinned: usize,
    /// Unreferenced, inside the grace period.
    pub in_grace: usize,
}

/// The SST garbage collector of one engine.
#[derive(Debug)]
pub struct Gc {
    store: Arc<dyn ObjectStore>,
    grace: Duration,
    retired: Mutex<Vec<Retired>>,
    /// SSTs being written (uploaded, manifest edit not yet installed).
    in_flight: Arc<Mutex<HashSet<SstId>>>,
}

/// Marks an SST as being written until dropped; the orphan scan leaves it
/// alone meanwhile. Drop it only after the SST is installed in a version
/// (or abandoned).
#[derive(Debug)]
pub struct WriteGuard {
    id: SstId,
    in_flight: Arc<Mutex<HashSet<SstId>>>,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.in_flight.lock().remove(&self.id);
    }
}

impl Gc {
    pub fn new(store: Arc<dyn ObjectStore>, grace: Duration) -> Self {
        Self {
            store,
            grace,
            retired: Mutex::new(Vec::new()),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Registers an SST about to be written.
    pub fn begin_write(&self, id: SstId) -> WriteGuard {
        self.in_flight.lock().insert(id);
        WriteGuard {
            id,
            in_flight: self.in_flight.clone(),
        }
    }

    /// Marks an SST as removed from its table's manifest.
    pub fn retire(&self, handle: &Arc<SstHandle>) {
        self.retired.lock().push(Retired {
            handle: Arc::downgrade(handle),
            id: handle.info.id,
            path: Path::from(handle.info.path.as_str()),
            at: Instant::now(),
        });
        metrics::GC_PENDING.set(self.retired.lock().len() as i64);
    }

    /// Ids of SSTs retired but not yet deleted.
    pub fn retired_ids(&self) -> HashSet<SstId> {
        self.retired.lock().iter().map(|r| r.id).collect()
    }

    /// Deletes retired files that no version references and whose grace
    /// period has passed.
    pub async fn collect(&self) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let due: Vec<Path> = {
            let mut retired = self.retired.lock();
            let mut due = Vec::new();
            retired.retain(|r| {
                if r.handle.strong_count() > 0 {
                    stats.pinned += 1;
                    true
                } else if r.at.elapsed() < self.grace {
                    stats.in_grace += 1;
                    true
                } else {
                    due.push(r.path.clone());
                    false
                }
            });
            due
        };
        for path in due {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    stats.deleted += 1;
                    metrics::GC_DELETED_FILES.inc();
                }
                Err(source) => {
                    // Put it back and try again next time.
                    self.retired.lock().push(Retired {
                        handle: Weak::new(),
                        id: id_of(&path).unwrap_or_default(),
                        path: path.clone(),
                        at: Instant::now() - self.grace,
                    });
                    return Err(Error::ObjectStore {
                        op: "delete",
                        path: path.to_string(),
                        source: Box::new(source),
                    });
                }
            }
        }
        metrics::GC_PENDING.set(self.retired.lock().len() as i64);
        Ok(stats)
    }

    /// Deletes files under `dir` that are not live (per `live`), retired or
    /// being written, and are older than `min_age`. Returns how many were
    /// deleted.
    ///
    /// Objects are listed first and the sets read afterwards: a file listed
    /// while its flush was still running is then either still in flight or
    /// already live, never mistaken for an orphan.
    pub async fn remove_orphans(
        &self,
        dir: &Path,
        live: impl FnOnce() -> HashSet<SstId>,
        min_age: Duration,
    ) -> Result<usize> {
        self.remove_orphans_checked(dir, min_age, || async { Ok(live()) })
            .await
    }

    /// [`Self::remove_orphans`] with a live set read asynchronously (from the
    /// manifest on the store) after the listing; when reading it fails,
    /// nothing is deleted.
    pub async fn remove_orphans_checked<F, Fut>(
        &self,
        dir: &Path,
        min_age: Duration,
        live: F,
    ) -> Result<usize>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<HashSet<SstId>>>,
    {
        let objects: Vec<_> = self
            .store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore {
                op: "list",
                path: dir.to_string(),
                source: Box::new(source),
            })?;
        crate::failpoint::pause("orphans.after_list").await;
        // In this order: a file being written when listed is either still in
        // flight or committed (and so live) by the time the live set is
        // read; one removed from the manifest before that is retired by the
        // time the retired set is read.
        let in_flight = self.in_flight.lock().clone();
        let live = live().await?;
        let retired = self.retired_ids();
        let now = chrono::Utc::now();
        let mut deleted = 0;
        for meta in objects {
            let Some(id) = id_of(&meta.location) else {
                continue;
            };
            if live.contains(&id) || retired.contains(&id) || in_flight.contains(&id) {
                continue;
            }
            let age = (now - meta.last_modified).to_std().unwrap_or_default();
            if age < min_age {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(path = %meta.location, age_s = age.as_secs(), "deleted orphan SST");
                    metrics::GC_ORPHANS_DELETED.inc();
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %meta.location, error = %e, "deleting an orphan SST failed")
                }
            }
        }
        Ok(deleted)
    }
}

/// The SST id of a path `…/sst/{id}.parquet`.
pub fn id_of(path: &Path) -> Option<SstId> {
    path.filename()?
        .strip_suffix(".parquet")?
        .parse::<u64>()
        .ok()
        .map(SstId)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use object_store::{local::LocalFileSystem, PutPayload};
    use strata_sst::TimeRange;

    use super::*;

    fn info(id: u64) -> SstInfo {
        SstInfo {
            id: SstId(id),
            path: format!("t/sst/{id}.parquet"),
            time_range: TimeRange::new(0, 1),
            segment_start: 0,
            max_seq: 0,
            rows: 1,
            size_bytes: 1,
            schema_version: 1,
            level: 0,
            column_stats: Default::default(),
        }
    }

    #[tokio::test]
    async fn pinned_files_survive_until_released_and_grace_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        for id in [1, 2, 3] {
            store
                .put(
                    &Path::from(format!("t/sst/{id}.parquet")),
                    PutPayload::from_static(b"x"),
                )
                .await
                .unwrap();
        }
        let gc = Gc::new(store.clone(), Duration::ZERO);
        let h1 = SstHandle::new(info(1));
        let pinned_version = vec![h1.clone()];
        gc.retire(&h1);
        drop(h1);
        assert_eq!(
            gc.collect().await.unwrap(),
            GcStats {
                deleted: 0,
                pinned: 1,
                in_grace: 0
            }
        );
        assert!(store.head(&Path::from("t/sst/1.parquet")).await.is_ok());
        drop(pinned_version);
        assert_eq!(gc.collect().await.unwrap().deleted, 1);
        assert!(store.head(&Path::from("t/sst/1.parquet")).await.is_err());

        // With a grace period, an unreferenced file still waits.
        let slow = Gc::new(store.clone(), Duration::from_secs(3600));
        slow.retire(&SstHandle::new(info(2)));
        assert_eq!(slow.collect().await.unwrap().in_grace, 1);

        // Orphans: 3 is neither live nor retired; 2 is retired (not orphan).
        let guard = slow.begin_write(SstId(4));
        store
            .put(
                &Path::from("t/sst/4.parquet"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        let n = slow
            .remove_orphans(&Path::from("t/sst"), HashSet::new, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(store.head(&Path::from("t/sst/3.parquet")).await.is_err());
        assert!(store.head(&Path::from("t/sst/2.parquet")).await.is_ok());
        assert!(
            store.head(&Path::from("t/sst/4.parquet")).await.is_ok(),
            "being written"
        );
        drop(guard);
        assert_eq!(
            slow.remove_orphans(&Path::from("t/sst"), HashSet::new, Duration::ZERO)
                .await
                .unwrap(),
            1
        );
    }
}
