//! Reading a manifest: the newest snapshot, then the edits after it.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use strata_sst::TableId;

use super::{decode_edit, decode_snapshot, seq_of, store_err, ManifestState};
use crate::{Error, Result};

pub(super) async fn list_seqs(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
) -> Result<Vec<(u64, Path)>> {
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

pub(super) async fn get_bytes(
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

/// Brings `base` (a state read earlier) up to the store's: only the edits
/// after it are read, when they follow it without a gap; otherwise (a
/// snapshot covered and deleted some of them, or an edit looks out of
/// place, or a snapshot was written since `base`) the whole manifest is
/// read. The result is a state the manifest had, at least as new as
/// `base`.
pub async fn load_since(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    base: &ManifestState,
) -> Result<ManifestState> {
    let mut state = base.clone();
    match apply_edits(store, dir, &mut state).await {
        Ok(()) => {}
        // A gap, a vanished or out-of-place edit: the whole manifest.
        Err(LoadError::Raced(_)) => return load(store, dir, base.table).await,
        Err(LoadError::Failed(e)) => return Err(e),
    }
    // Any snapshot written since `base` was read: read the whole manifest
    // from it. It may have covered (and deleted) the newest edits, so that
    // the listing above shows nothing new; and an edit a stale or late put
    // re-created below it (see `Manifest::commit`) would look like the
    // next edit here, where the whole read skips it. Listed after the
    // edits, so that a snapshot whose deletions the edit listing saw is
    // seen here. (At least one whole read every `SNAPSHOT_EVERY` edits.)
    let newest = list_seqs(store, &dir.clone().join("snapshots"))
        .await?
        .last()
        .map(|(s, _)| *s);
    if newest.is_some_and(|s| s > base.last_edit) {
        return load(store, dir, base.table).await;
    }
    Ok(state)
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
    apply_edits(store, dir, &mut state).await?;
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

/// Applies to `state` the edits the store lists after it, in order:
/// `Raced` when one is missing, gone or out of place (a snapshot written
/// meanwhile covered it, or a stale writer re-created it below one).
async fn apply_edits(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    state: &mut ManifestState,
) -> std::result::Result<(), LoadError> {
    let table = state.table;
    let invalid = |reason: String| LoadError::Failed(Error::Manifest { table, reason });
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
        let in_place = match (state.shard, edit.shard) {
            // Another shard's edit: only its claim of a table handed to it
            // (epochs of different shards are not comparable).
            (Some(current), Some(shard)) if current != shard => state.handed_to == Some(shard),
            // The shard that handed the table over writes nothing after.
            (Some(_), Some(_)) if state.handed_to.is_some() => false,
            // Writers of one shard only ever follow a higher epoch.
            _ => edit.epoch >= state.epoch,
        };
        if !in_place {
            // An edit a stale writer re-created below a snapshot written
            // meanwhile.
            return Err(LoadError::Raced(format!(
                "edit {seq} (shard {:?}, epoch {}) does not follow the state (shard {:?}, epoch {}, handed to {:?})",
                edit.shard, edit.epoch, state.shard, state.epoch, state.handed_to
            )));
        }
        state.apply(&edit);
    }
    Ok(())
}
