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
//! **Moving tables.** Every edit also records the writer's shard. A table
//! moves from shard A to shard B (a split or a merge) by two edits: A's
//! owner commits a *handover* to B once the table is flushed, and from then
//! on A (whatever its epoch) commits nothing more for it
//! ([`Error::TableMoved`], which does not fence A: its other tables are
//! A's still); B's owner *claims* it, which is accepted only on a manifest
//! handed to B. The claim starts the table's history in B: its flushed
//! offset becomes B's WAL end at the claim (every row is in SSTs, and
//! offsets of A's WAL mean nothing in B's) and epochs are B's from there
//! (epochs of different shards are not comparable). See
//! `docs/rfcs/0006-split-and-merge.md`.
//!
//! **Snapshots** are written with `PutMode::Create` under their sequence
//! number, never overwritten. Loading takes the newest snapshot and applies
//! the edits after it, which must be contiguous. Once a snapshot is written
//! the edits it covers are deleted. A stale writer whose put lands on a
//! sequence number a snapshot already covers (the edit there was deleted)
//! re-created a dead edit: the commit checks for such a snapshot after every
//! put and treats the edit as lost.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use strata_sst::{SstId, SstInfo, TableId};

use self::load::{get_bytes, list_seqs};
pub use self::load::{load, load_since};
use crate::{metrics, ownership::Ownership, Error, Result};

mod load;
#[cfg(test)]
mod tests;

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
    /// The writer's shard; absent in edits written before tables could
    /// move between shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u64>,
    /// A handover: from this edit on the table is the named shard's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over: Option<u64>,
}

/// The state a manifest describes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestState {
    pub table: TableId,
    pub ssts: BTreeMap<SstId, SstInfo>,
    pub flushed_offset: u64,
    /// The sequence number of the last edit applied.
    pub last_edit: u64,
    /// The highest writer epoch of the edits applied since the table came
    /// to its current shard.
    #[serde(default)]
    pub epoch: u64,
    /// The shard that owns the table; absent while only edits written
    /// before tables could move were applied (the table never moved: its
    /// shard is the one whose prefix holds the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u64>,
    /// Set by a handover: the shard the table was handed to, which has not
    /// claimed it yet. Its current shard commits nothing more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to: Option<u64>,
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
        match edit.shard {
            Some(shard) if self.shard.is_some_and(|current| current != shard) => {
                // A claim by the shard the table was handed to: offsets
                // count in its WAL and epochs are its own from here.
                self.shard = Some(shard);
                self.flushed_offset = edit.flushed_offset.unwrap_or(0);
                self.epoch = edit.epoch;
                self.handed_to = None;
            }
            shard => {
                if shard.is_some() {
                    self.shard = shard;
                }
                if let Some(offset) = edit.flushed_offset {
                    self.flushed_offset = self.flushed_offset.max(offset);
                }
                self.epoch = self.epoch.max(edit.epoch);
            }
        }
        if let Some(to) = edit.hand_over {
            self.handed_to = Some(to);
        }
        self.last_edit = edit.seq;
    }

    /// The shard the table is handed to, which may claim it, if any.
    pub fn handed_to(&self) -> Option<u64> {
        self.handed_to
    }

    /// Whether the state's offsets count in `shard`'s WAL: the table is
    /// `shard`'s (or never moved), possibly handed away since.
    pub fn is_on(&self, shard: strata_sst::ShardId) -> bool {
        self.shard.is_none_or(|s| s == shard.0)
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
    /// This process handed the table away: it commits nothing more through
    /// this manifest, even if the table comes back to its shard later (a
    /// new open claims it then).
    handed_over: bool,
}

impl Manifest {
    /// Loads the manifest in `dir` (or starts an empty one) and claims it for
    /// `owner`: unless the manifest already carries `owner`'s epoch, an empty
    /// edit under it is committed, which every older writer's next commit
    /// then loses to. Fails with [`Error::ShardFenced`] (and fences `owner`)
    /// when the manifest carries a newer epoch, and with
    /// [`Error::TableMoved`] when the table is another shard's or was handed
    /// to one.
    ///
    /// A table handed to `owner`'s shard is claimed with `wal_end`, the
    /// offset the shard's next WAL record will get, as its flushed offset:
    /// none of the table's rows is in that WAL below it.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        table: TableId,
        owner: Arc<Ownership>,
        wal_end: u64,
    ) -> Result<Self> {
        let mut manifest = Self::open_read_only(store, dir, table, owner).await?;
        let mine = manifest.owner.shard.0;
        for _ in 0..8 {
            if manifest.state.handed_to == Some(mine) {
                let claim = ManifestEdit {
                    flushed_offset: Some(wal_end),
                    ..Default::default()
                };
                match manifest
                    .commit_as(claim, |s| s.handed_to == Some(mine), true)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(table = %table, shard = mine, epoch = manifest.owner.epoch,
                            flushed_offset = wal_end, "claimed a table handed to this shard");
                        return Ok(manifest);
                    }
                    // Claimed by another owner of this shard meanwhile
                    // (the state was re-read): decide again.
                    Err(Error::ManifestConflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            manifest.check_writer(false)?;
            if manifest.state.epoch < manifest.owner.epoch {
                manifest.commit(ManifestEdit::default(), |_| true).await?;
                tracing::debug!(table = %table, epoch = manifest.owner.epoch, "claimed the manifest");
            }
            return Ok(manifest);
        }
        Err(Error::ManifestConflict {
            table,
            reason: "the claim kept losing to other edits".into(),
        })
    }

    /// Loads the manifest in `dir` without claiming it (a follower reads
    /// what the shard's leader commits). `owner` must be one that commits
    /// nothing (relinquished): every commit checks it first.
    pub async fn open_read_only(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        table: TableId,
        owner: Arc<Ownership>,
    ) -> Result<Self> {
        let state = load(&store, &dir, table).await?;
        Ok(Self {
            store,
            dir,
            state,
            owner,
            edits_since_snapshot: 0,
            stale: false,
            handed_over: false,
        })
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

    /// Whether `owner` may commit to the state: refused with
    /// [`Error::TableMoved`] when the table is another shard's or was handed
    /// away (unless `claiming` it, handed to `owner`'s shard), and the owner
    /// is fenced when the state carries a newer epoch of its shard.
    fn check_writer(&self, claiming: bool) -> Result<()> {
        let mine = self.owner.shard.0;
        let moved = |to: u64| Error::TableMoved {
            table: self.state.table,
            from: self.owner.shard,
            to: strata_sst::ShardId(to),
        };
        if claiming {
            if self.state.handed_to == Some(mine) {
                return self.owner.check();
            }
            if self.state.shard == Some(mine) {
                // Another owner of this shard claimed it meanwhile.
                return Err(Error::ManifestConflict {
                    table: self.state.table,
                    reason: "claimed by another owner of this shard".into(),
                });
            }
            return Err(moved(
                self.state.handed_to.or(self.state.shard).unwrap_or(mine),
            ));
        }
        match (self.state.shard, self.state.handed_to) {
            (Some(shard), _) if shard != mine => return Err(moved(shard)),
            (_, Some(to)) => return Err(moved(to)),
            _ => {}
        }
        if self.state.epoch > self.owner.epoch {
            self.owner.fence(self.state.epoch);
        }
        self.owner.check()
    }

    /// Re-reads the state from the store.
    pub async fn reload(&mut self) -> Result<&ManifestState> {
        self.reload_for(false).await?;
        Ok(&self.state)
    }

    async fn reload_for(&mut self, claiming: bool) -> Result<()> {
        self.state = load(&self.store, &self.dir, self.state.table).await?;
        self.stale = false;
        self.check_writer(claiming)
    }

    /// Hands the table to shard `to`: commits the handover edit, after
    /// which this shard commits nothing more for it. The caller has flushed
    /// the table and stopped its writes. Idempotent: a table already
    /// handed to `to` by this shard is left as it is.
    pub async fn hand_over(&mut self, to: strata_sst::ShardId) -> Result<()> {
        let mine = self.owner.shard.0;
        if to.0 == mine {
            return Err(Error::Internal(format!(
                "table {} cannot be handed to its own shard {to}",
                self.state.table
            )));
        }
        let done = |s: &ManifestState| s.handed_to == Some(to.0) && s.shard == Some(mine);
        if self.stale {
            self.state = load(&self.store, &self.dir, self.state.table).await?;
            self.stale = false;
        }
        if done(&self.state) {
            return Ok(());
        }
        let edit = ManifestEdit {
            hand_over: Some(to.0),
            ..Default::default()
        };
        let committed = self
            .commit(edit, |s| s.handed_to.is_none())
            .await
            .map(|_| ());
        let result = match committed {
            // An earlier attempt of ours with an unknown outcome did it.
            Err(Error::TableMoved { .. }) if done(&self.state) => Ok(()),
            other => other,
        };
        if result.is_ok() {
            self.handed_over = true;
        }
        result
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
        edit: ManifestEdit,
        still_valid: impl Fn(&ManifestState) -> bool,
    ) -> Result<&ManifestState> {
        self.commit_as(edit, still_valid, false).await
    }

    /// [`Self::commit`], or with `claiming` B's claim of a table handed to
    /// it (see [`Self::open`]).
    async fn commit_as(
        &mut self,
        mut edit: ManifestEdit,
        still_valid: impl Fn(&ManifestState) -> bool,
        claiming: bool,
    ) -> Result<&ManifestState> {
        let table = self.state.table;
        self.owner.check()?;
        if self.handed_over {
            return Err(Error::TableMoved {
                table,
                from: self.owner.shard,
                to: strata_sst::ShardId(self.state.handed_to.unwrap_or(self.owner.shard.0)),
            });
        }
        if self.stale {
            self.reload_for(claiming).await?;
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
            self.check_writer(claiming)?;
            edit.seq = self.state.last_edit + 1;
            edit.epoch = self.owner.epoch;
            edit.shard = Some(self.owner.shard.0);
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
                        self.reload_for(claiming).await?;
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
                    self.reload_for(claiming).await?;
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
