//! A table's manifest: which SSTs make up the table, and up to which WAL
//! offset its rows are in them.
//!
//! Stored in the object store as an edit log plus snapshots:
//!
//! ```text
//! …/manifest/snapshots/{seq:020}.json   the state after edit `seq`
//! …/manifest/edits/{seq:020}.json       one edit each, seq = 1, 2, 3, …
//! ```
//!
//! (`…/manifest/snapshot.json`, written by earlier versions, is still read.)
//!
//! **One writer.** Every edit is committed by one conditional put
//! (`PutMode::Create`), so two writers of the same sequence number cannot
//! both succeed, and every edit carries the epoch of its writer. A new owner
//! of the shard *claims* the manifest when it opens the table: it commits an
//! empty edit under its epoch. From then on an older owner's next commit
//! loses the put, re-reads the manifest, finds the higher epoch and stops
//! for good ([`Ownership::fence`]); it can commit nothing more.
//!
//! **Unknown outcomes.** A put that fails without a definite answer (a
//! timeout, a 5xx) may have been applied. Every edit carries a random nonce;
//! the outcome is read back (our nonce at our sequence number: committed;
//! another: lost), and while it stays unknown the commit fails with
//! [`Error::CommitUnknown`], the manifest is re-read before the next change,
//! and callers delete nothing the edit may reference.
//!
//! **Snapshots** are written with `PutMode::Create` under their sequence
//! number, never overwritten. Loading takes the newest snapshot and applies
//! the edits after it, which must be contiguous. Once a snapshot is written
//! the edits it covers are deleted. A stale writer whose put lands on a
//! sequence number a snapshot already covers (the edit there was deleted)
//! re-created a dead edit: the commit checks for such a snapshot after every
//! put and treats the edit as lost.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use strata_sst::{SstId, SstInfo, TableId};

use crate::{metrics, ownership::Ownership, Error, Result};

/// How many edits accumulate before a snapshot.
pub const SNAPSHOT_EVERY: u64 = 16;

/// How often a put whose outcome is unknown is resolved (read back, put
/// again) before the commit reports [`Error::CommitUnknown`].
const RESOLVE_ATTEMPTS: u32 = 6;

/// One atomic change to a table's manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestEdit {
    pub seq: u64,
    #[serde(default)]
    pub add: Vec<SstInfo>,
    #[serde(default)]
    pub remove: Vec<SstId>,
    /// When set: every WAL record of this table below this offset is in SSTs.
    #[serde(default)]
    pub flushed_offset: Option<u64>,
    /// The epoch of the writer (the shard lock's); 0 in edits written
    /// before epochs were recorded.
    #[serde(default)]
    pub epoch: u64,
    /// Random, per commit: tells this writer's put from another's when the
    /// outcome is read back.
    #[serde(default)]
    pub nonce: u64,
}

/// The state a manifest describes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestState {
    pub table: TableId,
    pub ssts: BTreeMap<SstId, SstInfo>,
    pub flushed_offset: u64,
    /// The sequence number of the last edit applied.
    pub last_edit: u64,
    /// The highest writer epoch of the edits applied.
    #[serde(default)]
    pub epoch: u64,
}

/// Decodes an edit as stored (`…/manifest/edits/{seq}.json`). The bytes
/// come from the object store: anything may be there.
pub fn decode_edit(bytes: &[u8]) -> serde_json::Result<ManifestEdit> {
    serde_json::from_slice(bytes)
}

/// Decodes a snapshot as stored (`…/manifest/snapshots/{seq}.json`, or the
/// legacy `snapshot.json`).
pub fn decode_snapshot(bytes: &[u8]) -> serde_json::Result<ManifestState> {
    serde_json::from_slice(bytes)
}

impl ManifestState {
    /// Applies one edit (as loading a manifest does). Public for the fuzz
    /// targets (`fuzz/`), which decode and apply arbitrary edits.
    #[doc(hidden)]
    pub fn apply(&mut self, edit: &ManifestEdit) {
        for id in &edit.remove {
            self.ssts.remove(id);
        }
        for sst in &edit.add {
            self.ssts.insert(sst.id, sst.clone());
        }
        if let Some(offset) = edit.flushed_offset {
            self.flushed_offset = self.flushed_offset.max(offset);
        }
        self.last_edit = edit.seq;
        self.epoch = self.epoch.max(edit.epoch);
    }
}

/// How a conditional put ended, once read back.
enum PutOutcome {
    Committed,
    /// Another writer's object is at the path.
    Lost,
    Unknown(String),
}

fn store_err(op: &'static str, path: &Path) -> impl Fn(object_store::Error) -> Error {
    let path = path.to_string();
    move |source| Error::ObjectStore {
        op,
        path: path.clone(),
        source: Box::new(source),
    }
}

fn seq_of(path: &Path) -> Option<u64> {
    path.filename()
        .and_then(|f| f.strip_suffix(".json"))
        .and_then(|s| s.parse::<u64>().ok())
}

fn edit_path(dir: &Path, seq: u64) -> Path {
    dir.clone()
        .join("edits")
        .join(format!("{seq:020}.json").as_str())
}

fn snapshot_path(dir: &Path, seq: u64) -> Path {
    dir.clone()
        .join("snapshots")
        .join(format!("{seq:020}.json").as_str())
}

async fn list_seqs(store: &Arc<dyn ObjectStore>, dir: &Path) -> Result<Vec<(u64, Path)>> {
    let mut seqs: Vec<(u64, Path)> = store
        .list(Some(dir))
        .map_err(store_err("list", dir))
        .try_filter_map(
            |meta| async move { Ok(seq_of(&meta.location).map(|s| (s, meta.location))) },
        )
        .try_collect()
        .await?;
    seqs.sort_by_key(|(s, _)| *s);
    Ok(seqs)
}

async fn get_bytes(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> object_store::Result<bytes::Bytes> {
    store.get(path).await?.bytes().await
}

/// Reads a manifest's state from the store: the newest snapshot, then the
/// edits after it. A snapshot or edit deleted while it is read (a writer's
/// cleanup after its next snapshot) makes the read start over.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    table: TableId,
) -> Result<ManifestState> {
    let mut last_err = None;
    for _ in 0..5 {
        match load_once(store, dir, table).await {
            Ok(state) => return Ok(state),
            Err(LoadError::Raced(reason)) => last_err = Some(reason),
            Err(LoadError::Failed(e)) => return Err(e),
        }
    }
    Err(Error::Manifest {
        table,
        reason: format!(
            "kept changing while it was read: {}",
            last_err.unwrap_or_default()
        ),
    })
}

enum LoadError {
    /// An object listed a moment ago is gone: read again.
    Raced(String),
    Failed(Error),
}

impl From<Error> for LoadError {
    fn from(e: Error) -> Self {
        LoadError::Failed(e)
    }
}

async fn load_once(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    table: TableId,
) -> std::result::Result<ManifestState, LoadError> {
    let invalid = |reason: String| LoadError::Failed(Error::Manifest { table, reason });
    let snapshots = list_seqs(store, &dir.clone().join("snapshots")).await?;
    let (snapshot, legacy) = match snapshots.last() {
        Some((_, path)) => (Some(path.clone()), false),
        None => (Some(dir.clone().join("snapshot.json")), true),
    };
    let mut state = ManifestState {
        table,
        ..Default::default()
    };
    if let Some(path) = snapshot {
        match get_bytes(store, &path).await {
            Ok(bytes) => {
                state = decode_snapshot(&bytes)
                    .map_err(|e| invalid(format!("snapshot {path}: {e}")))?;
            }
            Err(object_store::Error::NotFound { .. }) if legacy => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(LoadError::Raced(format!("snapshot {path} disappeared")))
            }
            Err(e) => return Err(store_err("read", &path)(e).into()),
        }
    }
    for (seq, path) in list_seqs(store, &dir.clone().join("edits")).await? {
        if seq <= state.last_edit {
            continue;
        }
        if seq != state.last_edit + 1 {
            // The edits in between may have been covered by a snapshot
            // written after the listing: read again before calling it lost.
            return Err(LoadError::Raced(format!(
                "edit {seq} follows edit {}; the edits in between are missing",
                state.last_edit
            )));
        }
        let bytes = match get_bytes(store, &path).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(LoadError::Raced(format!("edit {path} disappeared")))
            }
            Err(e) => return Err(store_err("read", &path)(e).into()),
        };
        let edit = decode_edit(&bytes).map_err(|e| invalid(format!("edit {path}: {e}")))?;
        if edit.epoch < state.epoch {
            // Writers only ever follow a higher epoch: this is an edit a
            // stale writer re-created below a snapshot written meanwhile.
            return Err(LoadError::Raced(format!(
                "edit {seq} has epoch {} below {}",
                edit.epoch, state.epoch
            )));
        }
        state.apply(&edit);
    }
    // A snapshot written while the edits were listed may have covered (and
    // deleted) edits this read did not see: read again.
    let newest = list_seqs(store, &dir.clone().join("snapshots"))
        .await?
        .last()
        .map(|(s, _)| *s);
    let used = snapshots.last().map(|(s, _)| *s);
    if newest != used {
        return Err(LoadError::Raced("a newer snapshot appeared".into()));
    }
    Ok(state)
}

/// The manifest of one table, with its current state in memory, written by
/// the shard's owner.
#[derive(Debug)]
pub struct Manifest {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    state: ManifestState,
    owner: Arc<Ownership>,
    edits_since_snapshot: u64,
    /// A commit's outcome is unknown: re-read before the next change.
    stale: bool,
}

impl Manifest {
    /// Loads the manifest in `dir` (or starts an empty one) and claims it for
    /// `owner`: unless the manifest already carries `owner`'s epoch, an empty
    /// edit under it is committed, which every older writer's next commit
    /// then loses to. Fails with [`Error::ShardFenced`] (and fences `owner`)
    /// when the manifest carries a newer epoch.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        table: TableId,
        owner: Arc<Ownership>,
    ) -> Result<Self> {
        let state = load(&store, &dir, table).await?;
        let mut manifest = Self {
            store,
            dir,
            state,
            owner,
            edits_since_snapshot: 0,
            stale: false,
        };
        manifest.check_epoch()?;
        if manifest.state.epoch < manifest.owner.epoch {
            manifest.commit(ManifestEdit::default(), |_| true).await?;
            tracing::debug!(table = %table, epoch = manifest.owner.epoch, "claimed the manifest");
        }
        Ok(manifest)
    }

    pub fn state(&self) -> &ManifestState {
        &self.state
    }

    pub fn owner(&self) -> &Arc<Ownership> {
        &self.owner
    }

    /// Whether a commit's outcome was left unknown (the state in memory may
    /// be behind the store's until [`Self::reload`]).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Fences the owner when the state carries a newer epoch.
    fn check_epoch(&self) -> Result<()> {
        if self.state.epoch > self.owner.epoch {
            self.owner.fence(self.state.epoch);
        }
        self.owner.check()
    }

    /// Re-reads the state from the store.
    pub async fn reload(&mut self) -> Result<&ManifestState> {
        self.state = load(&self.store, &self.dir, self.state.table).await?;
        self.stale = false;
        self.check_epoch()?;
        Ok(&self.state)
    }

    /// Durably commits `edit` (its `seq`, `epoch` and `nonce` are set here)
    /// and applies it.
    ///
    /// When the put loses to another writer's edit, the manifest is re-read:
    /// a newer epoch fences the owner ([`Error::ShardFenced`]); otherwise the
    /// edit is re-planned on the new state when `still_valid` holds for it,
    /// and refused with [`Error::ManifestConflict`] when not. After any
    /// error, the state in memory may differ from what the caller planned
    /// against: compare before using it.
    pub async fn commit(
        &mut self,
        mut edit: ManifestEdit,
        still_valid: impl Fn(&ManifestState) -> bool,
    ) -> Result<&ManifestState> {
        let table = self.state.table;
        self.owner.check()?;
        if self.stale {
            self.reload().await?;
            if !still_valid(&self.state) {
                return Err(Error::ManifestConflict {
                    table,
                    reason: "an earlier commit with an unknown outcome changed what this edit was planned on".into(),
                });
            }
        }
        for _ in 0..8 {
            if !still_valid(&self.state) {
                return Err(Error::ManifestConflict {
                    table,
                    reason: "the state this edit was planned on changed".into(),
                });
            }
            edit.seq = self.state.last_edit + 1;
            edit.epoch = self.owner.epoch;
            edit.nonce = rand::random::<u64>() | 1;
            let path = edit_path(&self.dir, edit.seq);
            let bytes = serde_json::to_vec(&edit).map_err(|e| Error::Manifest {
                table,
                reason: format!("encoding edit: {e}"),
            })?;
            match self
                .put_resolved(&path, bytes::Bytes::from(bytes), edit.nonce)
                .await
            {
                PutOutcome::Committed => {
                    let covered = match self.covered_by_snapshot(edit.seq).await {
                        Ok(c) => c,
                        Err(e) => {
                            // Committed, but maybe dead: not known yet.
                            metrics::MANIFEST_UNKNOWN_COMMITS.inc();
                            self.stale = true;
                            return Err(Error::CommitUnknown {
                                table,
                                reason: format!("checking for newer snapshots: {e}"),
                            });
                        }
                    };
                    if covered {
                        // A snapshot at or above our sequence number exists:
                        // either our put re-created an edit a newer writer's
                        // snapshot had covered and deleted (dead), or it
                        // landed earlier and that writer loaded it (live).
                        // Which one is not known: delete nothing, re-read.
                        metrics::MANIFEST_UNKNOWN_COMMITS.inc();
                        self.stale = true;
                        self.reload().await?;
                        return Err(Error::CommitUnknown {
                            table,
                            reason: format!(
                                "edit {} is at or below a newer snapshot; whether it counts is unknown",
                                edit.seq
                            ),
                        });
                    }
                    self.state.apply(&edit);
                    self.edits_since_snapshot += 1;
                    if self.edits_since_snapshot >= SNAPSHOT_EVERY {
                        if let Err(e) = self.snapshot().await {
                            // The edit is committed; a failed snapshot only
                            // means a longer read next time.
                            tracing::warn!(table = %table, error = %e, "manifest snapshot failed");
                        }
                    }
                    return Ok(&self.state);
                }
                PutOutcome::Lost => {
                    metrics::MANIFEST_CONFLICTS.inc();
                    tracing::info!(table = %table, seq = edit.seq,
                        "another edit holds this sequence number; re-reading the manifest");
                    self.reload().await?;
                    if !still_valid(&self.state) {
                        return Err(Error::ManifestConflict {
                            table,
                            reason: format!("edit {} was taken by another writer", edit.seq),
                        });
                    }
                }
                PutOutcome::Unknown(reason) => {
                    metrics::MANIFEST_UNKNOWN_COMMITS.inc();
                    self.stale = true;
                    tracing::warn!(table = %table, seq = edit.seq, %reason,
                        "manifest commit outcome unknown; re-reading before the next change");
                    return Err(Error::CommitUnknown { table, reason });
                }
            }
        }
        Err(Error::ManifestConflict {
            table,
            reason: "the commit kept losing to other edits".into(),
        })
    }

    /// Puts `bytes` at `path` if absent, and settles what happened: a put
    /// that fails without a definite answer is read back (our nonce there:
    /// committed) and put again while the path stays empty.
    async fn put_resolved(&self, path: &Path, bytes: bytes::Bytes, nonce: u64) -> PutOutcome {
        let mut last = String::new();
        for attempt in 0..RESOLVE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            let put = self
                .store
                .put_opts(
                    path,
                    PutPayload::from(bytes.clone()),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) => return PutOutcome::Committed,
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) if attempt == 0 => {
                    // Another writer's, unless this is our own earlier put
                    // answered late: read it.
                    match self.read_nonce(path).await {
                        Ok(Some(n)) if n == nonce => return PutOutcome::Committed,
                        Ok(Some(_)) => return PutOutcome::Lost,
                        Ok(None) => last = format!("{path} vanished after a conflict"),
                        Err(e) => last = e,
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    match self.read_nonce(path).await {
                        Ok(Some(n)) if n == nonce => return PutOutcome::Committed,
                        Ok(Some(_)) => return PutOutcome::Lost,
                        // Not applied (yet): put again.
                        Ok(None) => {}
                        Err(e) => last = format!("{last}; reading it back: {e}"),
                    }
                }
            }
        }
        PutOutcome::Unknown(last)
    }

    /// The nonce of the edit at `path`; `None` when absent.
    async fn read_nonce(&self, path: &Path) -> std::result::Result<Option<u64>, String> {
        match get_bytes(&self.store, path).await {
            Ok(bytes) => decode_edit(&bytes)
                .map(|e| Some(e.nonce))
                .map_err(|e| format!("decoding {path}: {e}")),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether a snapshot at or above `seq` exists.
    async fn covered_by_snapshot(&self, seq: u64) -> Result<bool> {
        let snapshots = list_seqs(&self.store, &self.dir.clone().join("snapshots")).await?;
        Ok(snapshots.last().is_some_and(|(s, _)| *s >= seq))
    }

    /// Writes a snapshot of the current state (never over another), then
    /// deletes the edits and older snapshots it covers.
    pub async fn snapshot(&mut self) -> Result<()> {
        self.owner.check()?;
        let seq = self.state.last_edit;
        let path = snapshot_path(&self.dir, seq);
        let bytes = serde_json::to_vec(&self.state).map_err(|e| Error::Manifest {
            table: self.state.table,
            reason: format!("encoding snapshot: {e}"),
        })?;
        match self
            .store
            .put_opts(
                &path,
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await
        {
            // Already there: an earlier attempt of ours (the state at one
            // sequence number is the same whoever wrote it).
            Ok(_)
            | Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(store_err("write snapshot", &path)(e)),
        }
        self.edits_since_snapshot = 0;
        let mut covered: Vec<Path> = list_seqs(&self.store, &self.dir.clone().join("edits"))
            .await?
            .into_iter()
            .filter(|(s, _)| *s <= seq)
            .map(|(_, p)| p)
            .collect();
        covered.extend(
            list_seqs(&self.store, &self.dir.clone().join("snapshots"))
                .await?
                .into_iter()
                .filter(|(s, _)| *s < seq)
                .map(|(_, p)| p),
        );
        let legacy = self.dir.clone().join("snapshot.json");
        covered.push(legacy);
        for p in covered {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("delete edit", &p)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use object_store::local::LocalFileSystem;
    use strata_sst::{
        fault::{Fault, FaultStore, Op},
        ShardId, TimeRange,
    };

    use super::*;

    fn sst(id: u64) -> SstInfo {
        SstInfo {
            id: SstId(id),
            path: format!("x/{id}.parquet"),
            time_range: TimeRange::new(0, 10),
            segment_start: 0,
            max_seq: id,
            rows: 1,
            size_bytes: 1,
            schema_version: 1,
            level: 0,
            column_stats: Default::default(),
        }
    }

    fn owner(epoch: u64) -> Arc<Ownership> {
        Arc::new(Ownership::new(ShardId(0), epoch))
    }

    fn local() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        (dir, store)
    }

    fn add(id: u64) -> ManifestEdit {
        ManifestEdit {
            add: vec![sst(id)],
            flushed_offset: Some(id * 10),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn edits_and_snapshots_survive_reopen() {
        let (_d, store) = local();
        let mdir = Path::from("c/shards/0/tables/1/manifest");
        let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1))
            .await
            .unwrap();
        for i in 1..=(SNAPSHOT_EVERY + 3) {
            m.commit(
                ManifestEdit {
                    add: vec![sst(i)],
                    remove: if i > 1 { vec![SstId(i - 1)] } else { vec![] },
                    flushed_offset: Some(i * 10),
                    ..Default::default()
                },
                |_| true,
            )
            .await
            .unwrap();
        }
        let expected = m.state().clone();
        assert_eq!(expected.ssts.len(), 1);
        assert_eq!(expected.flushed_offset, (SNAPSHOT_EVERY + 3) * 10);
        assert_eq!(expected.epoch, 1);

        let reopened = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1))
            .await
            .unwrap();
        assert_eq!(reopened.state(), &expected, "same epoch: no claim edit");
        let edits = list_seqs(&store, &mdir.clone().join("edits"))
            .await
            .unwrap();
        assert!(
            edits.len() < SNAPSHOT_EVERY as usize,
            "covered edits are deleted"
        );
        let snaps = list_seqs(&store, &mdir.clone().join("snapshots"))
            .await
            .unwrap();
        assert_eq!(snaps.len(), 1, "older snapshots are deleted");
    }

    #[tokio::test]
    async fn a_legacy_snapshot_is_still_read() {
        let (_d, store) = local();
        let mdir = Path::from("m");
        let legacy = ManifestState {
            table: TableId(1),
            ssts: [(SstId(7), sst(7))].into_iter().collect(),
            flushed_offset: 70,
            last_edit: 3,
            epoch: 0,
        };
        store
            .put(
                &mdir.clone().join("snapshot.json"),
                PutPayload::from(serde_json::to_vec(&legacy).unwrap()),
            )
            .await
            .unwrap();
        let m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(5))
            .await
            .unwrap();
        assert_eq!(m.state().ssts.len(), 1);
        assert_eq!(
            m.state().last_edit,
            4,
            "the claim edit follows the snapshot"
        );
        assert_eq!(m.state().epoch, 5);
    }

    /// The old owner commits nothing once a newer owner has claimed the
    /// manifest, and learns it is fenced.
    #[tokio::test]
    async fn a_stale_owner_commits_nothing_after_a_newer_claim() {
        let (_d, store) = local();
        let mdir = Path::from("m");
        let old_owner = owner(10);
        let mut old = Manifest::open(store.clone(), mdir.clone(), TableId(1), old_owner.clone())
            .await
            .unwrap();
        old.commit(add(1), |_| true).await.unwrap();

        let new_owner = owner(11);
        let mut new = Manifest::open(store.clone(), mdir.clone(), TableId(1), new_owner.clone())
            .await
            .unwrap();
        assert_eq!(
            new.state().ssts.len(),
            1,
            "the new owner sees what came before"
        );

        let err = old.commit(add(2), |_| true).await.unwrap_err();
        assert!(matches!(err, Error::ShardFenced { by: 11, .. }), "{err}");
        assert!(old_owner.is_fenced());
        // And for good: no further attempt reaches the store.
        assert!(matches!(
            old.commit(add(3), |_| true).await.unwrap_err(),
            Error::ShardFenced { .. }
        ));
        assert!(old.snapshot().await.is_err());

        new.commit(add(4), |_| true).await.unwrap();
        let state = load(&store, &mdir, TableId(1)).await.unwrap();
        let ids: Vec<u64> = state.ssts.keys().map(|s| s.0).collect();
        assert_eq!(ids, vec![1, 4]);
        assert_eq!(state.epoch, 11);

        // An owner older than the manifest cannot even open it.
        let older = owner(9);
        assert!(matches!(
            Manifest::open(store.clone(), mdir.clone(), TableId(1), older.clone())
                .await
                .unwrap_err(),
            Error::ShardFenced { .. }
        ));
        assert!(older.is_fenced());
    }

    /// A stale writer whose put lands where a newer snapshot already
    /// deleted the edit must not believe it committed.
    #[tokio::test]
    async fn an_edit_recreated_below_a_newer_snapshot_is_dead() {
        let (_d, store) = local();
        let mdir = Path::from("m");
        let mut old = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1))
            .await
            .unwrap();
        let mut new = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(2))
            .await
            .unwrap();
        for i in 0..SNAPSHOT_EVERY {
            new.commit(add(100 + i), |_| true).await.unwrap();
        }
        // `old` still thinks the next sequence number is 2, whose edit the
        // new owner's snapshot covered and deleted: its put succeeds.
        let err = old.commit(add(1), |_| true).await.unwrap_err();
        assert!(
            matches!(err, Error::CommitUnknown { .. } | Error::ShardFenced { .. }),
            "{err}"
        );
        assert!(old.owner().is_fenced());
        let state = load(&store, &mdir, TableId(1)).await.unwrap();
        assert!(!state.ssts.contains_key(&SstId(1)));
        assert_eq!(state.ssts.len(), SNAPSHOT_EVERY as usize);
    }

    /// A put applied but answered with a timeout is read back and counts as
    /// committed; a retried put that finds its own edit does too.
    #[tokio::test]
    async fn an_applied_put_answered_with_a_timeout_is_committed() {
        let (_d, inner) = local();
        let faults = FaultStore::new(inner.clone());
        let store: Arc<dyn ObjectStore> = faults.clone();
        let mdir = Path::from("m");
        let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1))
            .await
            .unwrap();
        faults.inject(Op::Put, "edits/", Fault::ApplyThenTimeout, 1);
        m.commit(add(1), |_| true).await.unwrap();
        assert_eq!(faults.fired().len(), 1);
        assert!(m.state().ssts.contains_key(&SstId(1)));
        // The read-back itself failing too: resolved by the next attempt.
        faults.inject(Op::Put, "edits/", Fault::ApplyThenTimeout, 1);
        faults.inject(Op::Get, "edits/", Fault::FailBefore, 1);
        m.commit(add(2), |_| true).await.unwrap();
        let state = load(&inner, &mdir, TableId(1)).await.unwrap();
        assert_eq!(state, *m.state());
        assert_eq!(state.ssts.len(), 2);
    }

    /// A put that never arrived is retried; one whose outcome stays unknown
    /// fails with `CommitUnknown`, and the next commit re-reads first.
    #[tokio::test]
    async fn an_unknown_outcome_is_reported_and_reread() {
        let (_d, inner) = local();
        let faults = FaultStore::new(inner.clone());
        let store: Arc<dyn ObjectStore> = faults.clone();
        let mdir = Path::from("m");
        let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1))
            .await
            .unwrap();
        faults.inject(Op::Put, "edits/", Fault::FailBefore, 2);
        m.commit(add(1), |_| true).await.unwrap();
        assert!(m.state().ssts.contains_key(&SstId(1)));

        // Applied, then every read-back fails: unknown.
        faults.inject(Op::Put, "edits/", Fault::ApplyThenTimeout, 1);
        faults.inject(Op::Put, "edits/", Fault::FailBefore, 100);
        faults.inject(Op::Get, "edits/", Fault::FailBefore, 100);
        let err = m.commit(add(2), |_| true).await.unwrap_err();
        assert!(matches!(err, Error::CommitUnknown { .. }), "{err}");
        assert!(m.is_stale());
        faults.clear();
        // The next commit re-reads: edit 2 was applied after all, and a
        // re-planned edit that assumed otherwise is refused.
        let err = m
            .commit(add(3), |s| !s.ssts.contains_key(&SstId(2)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ManifestConflict { .. }), "{err}");
        assert!(m.state().ssts.contains_key(&SstId(2)));
        m.commit(add(3), |_| true).await.unwrap();
        assert_eq!(load(&inner, &mdir, TableId(1)).await.unwrap().ssts.len(), 3);
    }

    /// Two writers of the same epoch (which identity and locks rule out)
    /// still never overwrite each other: the loser re-reads and re-plans.
    #[tokio::test]
    async fn a_lost_put_rereads_and_replans() {
        let (_d, store) = local();
        let mdir = Path::from("m");
        let o = owner(1);
        let mut a = Manifest::open(store.clone(), mdir.clone(), TableId(1), o.clone())
            .await
            .unwrap();
        let mut b = Manifest::open(store.clone(), mdir.clone(), TableId(1), o.clone())
            .await
            .unwrap();
        a.commit(add(1), |_| true).await.unwrap();
        b.commit(add(2), |_| true).await.unwrap();
        assert_eq!(b.state().ssts.len(), 2, "b re-read a's edit before its own");
        let err = a
            .commit(add(3), |s| !s.ssts.contains_key(&SstId(2)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ManifestConflict { .. }));
    }
}
