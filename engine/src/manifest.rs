//! A table's manifest: which SSTs make up the table, and up to which WAL
//! offset its rows are in them.
//!
//! Stored in the object store as an edit log plus periodic snapshots:
//!
//! ```text
//! …/manifest/snapshot.json           the state after edit `last_edit`
//! …/manifest/edits/{seq:020}.json    one edit each, seq = 1, 2, 3, …
//! ```
//!
//! An edit is committed by one conditional put (`PutMode::Create`), so a
//! second writer using the same sequence number fails instead of silently
//! overwriting. Loading reads the snapshot and applies the edits after it,
//! which must be contiguous. Every [`SNAPSHOT_EVERY`] edits a new snapshot is
//! written, then the edits it covers are deleted; a crash between the two
//! leaves stale edits that loading ignores and the next snapshot deletes.

use std::{collections::BTreeMap, sync::Arc};

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use strata_sst::{SstId, SstInfo, TableId};

use crate::{Error, Result};

/// How many edits accumulate before a snapshot.
pub const SNAPSHOT_EVERY: u64 = 16;

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
}

/// The state a manifest describes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestState {
    pub table: TableId,
    pub ssts: BTreeMap<SstId, SstInfo>,
    pub flushed_offset: u64,
    /// The sequence number of the last edit applied.
    pub last_edit: u64,
}

impl ManifestState {
    fn apply(&mut self, edit: &ManifestEdit) {
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
    }
}

/// The manifest of one table, with its current state in memory.
#[derive(Debug)]
pub struct Manifest {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    state: ManifestState,
    edits_since_snapshot: u64,
}

fn store_err(op: &'static str, path: &Path) -> impl Fn(object_store::Error) -> Error {
    let path = path.to_string();
    move |source| Error::ObjectStore {
        op,
        path: path.clone(),
        source: Box::new(source),
    }
}

impl Manifest {
    fn snapshot_path(&self) -> Path {
        self.dir.clone().join("snapshot.json")
    }

    fn edit_path(dir: &Path, seq: u64) -> Path {
        dir.clone()
            .join("edits")
            .join(format!("{seq:020}.json").as_str())
    }

    /// Loads the manifest in `dir`, or starts an empty one.
    pub async fn open(store: Arc<dyn ObjectStore>, dir: Path, table: TableId) -> Result<Self> {
        let snapshot_path = dir.clone().join("snapshot.json");
        let mut state = match store.get(&snapshot_path).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(store_err("read", &snapshot_path))?;
                serde_json::from_slice::<ManifestState>(&bytes).map_err(|e| Error::Manifest {
                    table,
                    reason: format!("snapshot {snapshot_path}: {e}"),
                })?
            }
            Err(object_store::Error::NotFound { .. }) => ManifestState {
                table,
                ..Default::default()
            },
            Err(e) => return Err(store_err("read", &snapshot_path)(e)),
        };

        let edits_dir = dir.clone().join("edits");
        let mut seqs: Vec<(u64, Path)> = store
            .list(Some(&edits_dir))
            .map_err(store_err("list", &edits_dir))
            .try_filter_map(|meta| async move {
                let seq = meta
                    .location
                    .filename()
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|s| s.parse::<u64>().ok());
                Ok(seq.map(|s| (s, meta.location)))
            })
            .try_collect()
            .await?;
        seqs.sort_by_key(|(s, _)| *s);

        let mut applied = 0;
        for (seq, path) in seqs {
            if seq <= state.last_edit {
                continue;
            }
            if seq != state.last_edit + 1 {
                return Err(Error::Manifest {
                    table,
                    reason: format!(
                        "edit {seq} follows edit {}; the edits in between are missing",
                        state.last_edit
                    ),
                });
            }
            let bytes = store
                .get(&path)
                .await
                .map_err(store_err("read", &path))?
                .bytes()
                .await
                .map_err(store_err("read", &path))?;
            let edit: ManifestEdit =
                serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
                    table,
                    reason: format!("edit {path}: {e}"),
                })?;
            state.apply(&edit);
            applied += 1;
        }
        Ok(Self {
            store,
            dir,
            state,
            edits_since_snapshot: applied,
        })
    }

    pub fn state(&self) -> &ManifestState {
        &self.state
    }

    /// Durably commits `edit` (its `seq` is assigned here) and applies it.
    pub async fn commit(&mut self, mut edit: ManifestEdit) -> Result<&ManifestState> {
        edit.seq = self.state.last_edit + 1;
        let path = Self::edit_path(&self.dir, edit.seq);
        let bytes = serde_json::to_vec(&edit).map_err(|e| Error::Manifest {
            table: self.state.table,
            reason: format!("encoding edit: {e}"),
        })?;
        self.store
            .put_opts(
                &path,
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await
            .map_err(store_err("commit edit", &path))?;
        self.state.apply(&edit);
        self.edits_since_snapshot += 1;
        if self.edits_since_snapshot >= SNAPSHOT_EVERY {
            if let Err(e) = self.snapshot().await {
                // The edit is committed; a failed snapshot only means a longer
                // replay next time.
                tracing::warn!(table = %self.state.table, error = %e, "manifest snapshot failed");
            }
        }
        Ok(&self.state)
    }

    /// Writes a snapshot of the current state and deletes the edits it covers.
    pub async fn snapshot(&mut self) -> Result<()> {
        let path = self.snapshot_path();
        let bytes = serde_json::to_vec(&self.state).map_err(|e| Error::Manifest {
            table: self.state.table,
            reason: format!("encoding snapshot: {e}"),
        })?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(store_err("write snapshot", &path))?;
        self.edits_since_snapshot = 0;
        let edits_dir = self.dir.clone().join("edits");
        let covered: Vec<Path> = self
            .store
            .list(Some(&edits_dir))
            .map_err(store_err("list", &edits_dir))
            .try_filter_map(|meta| {
                let last = self.state.last_edit;
                async move {
                    let seq = meta
                        .location
                        .filename()
                        .and_then(|f| f.strip_suffix(".json"))
                        .and_then(|s| s.parse::<u64>().ok());
                    Ok(seq.filter(|s| *s <= last).map(|_| meta.location))
                }
            })
            .try_collect()
            .await?;
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
    use strata_sst::TimeRange;

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

    #[tokio::test]
    async fn edits_and_snapshots_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let mdir = Path::from("c/shards/0/tables/1/manifest");
        let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1))
            .await
            .unwrap();
        for i in 1..=(SNAPSHOT_EVERY + 3) {
            m.commit(ManifestEdit {
                add: vec![sst(i)],
                remove: if i > 1 { vec![SstId(i - 1)] } else { vec![] },
                flushed_offset: Some(i * 10),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let expected = m.state().clone();
        assert_eq!(expected.ssts.len(), 1);
        assert_eq!(expected.flushed_offset, (SNAPSHOT_EVERY + 3) * 10);

        let reopened = Manifest::open(store.clone(), mdir.clone(), TableId(1))
            .await
            .unwrap();
        assert_eq!(reopened.state(), &expected);
        let edits: Vec<_> = store
            .list(Some(&mdir.clone().join("edits")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!(edits.len(), 3, "edits covered by the snapshot are deleted");
    }

    #[tokio::test]
    async fn a_second_writer_of_the_same_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let mdir = Path::from("m");
        let mut a = Manifest::open(store.clone(), mdir.clone(), TableId(1))
            .await
            .unwrap();
        let mut b = Manifest::open(store.clone(), mdir.clone(), TableId(1))
            .await
            .unwrap();
        a.commit(ManifestEdit::default()).await.unwrap();
        assert!(b.commit(ManifestEdit::default()).await.is_err());
    }
}
