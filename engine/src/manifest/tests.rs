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
    let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
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

    let reopened = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
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
        shard: None,
        handed_to: None,
    };
    store
        .put(
            &mdir.clone().join("snapshot.json"),
            PutPayload::from(serde_json::to_vec(&legacy).unwrap()),
        )
        .await
        .unwrap();
    let m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(5), 0)
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
    let mut old = Manifest::open(
        store.clone(),
        mdir.clone(),
        TableId(1),
        old_owner.clone(),
        0,
    )
    .await
    .unwrap();
    old.commit(add(1), |_| true).await.unwrap();

    let new_owner = owner(11);
    let mut new = Manifest::open(
        store.clone(),
        mdir.clone(),
        TableId(1),
        new_owner.clone(),
        0,
    )
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
        Manifest::open(store.clone(), mdir.clone(), TableId(1), older.clone(), 0)
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
    let mut old = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
        .await
        .unwrap();
    let mut new = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(2), 0)
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
    let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
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
    let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
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
    let mut a = Manifest::open(store.clone(), mdir.clone(), TableId(1), o.clone(), 0)
        .await
        .unwrap();
    let mut b = Manifest::open(store.clone(), mdir.clone(), TableId(1), o.clone(), 0)
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

#[tokio::test]
async fn a_reader_catches_up_by_the_new_edits_alone_or_reads_everything_after_a_snapshot() {
    let (_d, store) = local();
    let mdir = Path::from("c/shards/0/tables/1/manifest");
    let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
        .await
        .unwrap();
    m.commit(add(1), |_| true).await.unwrap();
    let base = load(&store, &mdir, TableId(1)).await.unwrap();
    assert_eq!(&base, m.state());
    // Nothing new: the same state.
    assert_eq!(load_since(&store, &mdir, &base).await.unwrap(), base);
    // Two edits later: those two applied, the same as a whole read.
    m.commit(add(2), |_| true).await.unwrap();
    m.commit(add(3), |_| true).await.unwrap();
    let caught_up = load_since(&store, &mdir, &base).await.unwrap();
    assert_eq!(&caught_up, m.state());
    assert_eq!(caught_up.ssts.len(), 3);
    // Each edit, the one that writes a snapshot and deletes the edits it
    // covers among them (the newest included): never the base again.
    for i in 100..(100 + SNAPSHOT_EVERY + 2) {
        let before = load(&store, &mdir, TableId(1)).await.unwrap();
        m.commit(add(i), |_| true).await.unwrap();
        assert_eq!(
            &load_since(&store, &mdir, &before).await.unwrap(),
            m.state(),
            "after edit {}",
            m.state().last_edit
        );
    }
    // Past a snapshot, which deleted the edits the base needs: a whole
    // read, not a state with a gap.
    for i in 4..=(SNAPSHOT_EVERY + 4) {
        m.commit(add(i), |_| true).await.unwrap();
    }
    let caught_up = load_since(&store, &mdir, &base).await.unwrap();
    assert_eq!(&caught_up, m.state());
    assert_eq!(caught_up.ssts.len() as u64, 2 * SNAPSHOT_EVERY + 6);
}

#[tokio::test]
async fn a_dead_edit_recreated_below_a_snapshot_never_reaches_a_reader() {
    let (_d, store) = local();
    let mdir = Path::from("c/shards/0/tables/1/manifest");
    let mut m = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner(1), 0)
        .await
        .unwrap();
    // Commit until the edit that writes a snapshot, keeping the state
    // just before it.
    let mut before = load(&store, &mdir, TableId(1)).await.unwrap();
    for i in 1..=(2 * SNAPSHOT_EVERY) {
        before = load(&store, &mdir, TableId(1)).await.unwrap();
        m.commit(add(i), |_| true).await.unwrap();
        if list_seqs(&store, &mdir.clone().join("snapshots"))
            .await
            .unwrap()
            .last()
            .is_some_and(|(s, _)| *s == m.state().last_edit)
        {
            break;
        }
    }
    let snapshot_at = m.state().last_edit;
    assert_eq!(before.last_edit + 1, snapshot_at, "no snapshot was written");
    // A late put of another writer's edit under the same epoch lands at
    // the snapshot's seq, after the snapshot deleted the real one.
    let dead = ManifestEdit {
        seq: snapshot_at,
        add: vec![sst(999)],
        flushed_offset: Some(9990),
        epoch: m.state().epoch,
        nonce: 7,
        ..Default::default()
    };
    store
        .put(
            &edit_path(&mdir, snapshot_at),
            serde_json::to_vec(&dead).unwrap().into(),
        )
        .await
        .unwrap();
    // A reader a step behind takes the snapshot, not the dead edit.
    let got = load_since(&store, &mdir, &before).await.unwrap();
    assert_eq!(&got, m.state());
    assert!(!got.ssts.contains_key(&SstId(999)));
}

fn owner_of(shard: u64, epoch: u64) -> Arc<Ownership> {
    Arc::new(Ownership::new(ShardId(shard), epoch))
}

/// A table handed from shard 1 (epoch 50) to shard 2 (epoch 5, lower):
/// shard 1 commits nothing more and is not fenced; no third shard can
/// claim it; shard 2's claim sets the flushed offset to its WAL end and its
/// own epochs from there, which loads (epochs of different shards are not
/// compared), also past a snapshot; within shard 2, epochs fence as usual.
#[tokio::test]
async fn a_handover_and_claim_change_the_owning_shard() {
    let (_d, store) = local();
    let mdir = Path::from("m");
    let a_owner = owner_of(1, 50);
    let mut a = Manifest::open(store.clone(), mdir.clone(), TableId(1), a_owner.clone(), 0)
        .await
        .unwrap();
    a.commit(add(1), |_| true).await.unwrap();
    assert_eq!(a.state().flushed_offset, 10);
    a.hand_over(ShardId(2)).await.unwrap();
    a.hand_over(ShardId(2)).await.unwrap();
    let err = a.commit(add(2), |_| true).await.unwrap_err();
    assert!(matches!(err, Error::TableMoved { .. }), "{err}");
    assert!(!a_owner.is_fenced());
    // Another owner of shard 1 (a newer epoch) cannot take it back.
    let err = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner_of(1, 60), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TableMoved { .. }), "{err}");
    // Nor can shard 3.
    let err = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner_of(3, 99), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TableMoved { .. }), "{err}");

    let b_owner = owner_of(2, 5);
    let mut b = Manifest::open(store.clone(), mdir.clone(), TableId(1), b_owner.clone(), 7)
        .await
        .unwrap();
    let s = b.state().clone();
    assert_eq!(
        (s.shard, s.handed_to, s.epoch, s.flushed_offset),
        (Some(2), None, 5, 7)
    );
    assert_eq!(s.ssts.len(), 1);
    for i in 0..SNAPSHOT_EVERY {
        b.commit(add(100 + i), |_| true).await.unwrap();
    }
    let loaded = load(&store, &mdir, TableId(1)).await.unwrap();
    assert_eq!(&loaded, b.state());
    // The old owner of shard 1 loses its next commit to the claim.
    let err = a.commit(add(3), |_| true).await.unwrap_err();
    assert!(matches!(err, Error::TableMoved { .. }), "{err}");
    assert!(!a_owner.is_fenced());
    // A newer owner of shard 2 claims it as any new owner does; the older
    // one is fenced at its next commit.
    let mut b2 = Manifest::open(store.clone(), mdir.clone(), TableId(1), owner_of(2, 6), 0)
        .await
        .unwrap();
    assert_eq!(b2.state().flushed_offset, 1_150);
    let err = b.commit(add(200), |_| true).await.unwrap_err();
    assert!(matches!(err, Error::ShardFenced { .. }), "{err}");
    b2.commit(add(201), |_| true).await.unwrap();
    assert_eq!(load(&store, &mdir, TableId(1)).await.unwrap().epoch, 6);
}
