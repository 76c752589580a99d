//! One writer per shard: a replaced owner commits nothing, and object-store
//! answers whose outcome is unknown neither lose nor duplicate rows.

use std::collections::HashSet;

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStoreExt};
use strata_sst::{
    fault::{Fault, Op},
    layout,
};
use strata_wal::{Epoch, Wal};

use super::*;
use crate::{Error, STANDALONE_SHARD};

async fn open(
    store: Arc<dyn ObjectStore>,
    wal: Arc<dyn Wal>,
    epoch: u64,
) -> crate::Result<Arc<Engine>> {
    Engine::open_fenced(no_background(), store, wal, Some(Epoch(epoch))).await
}

async fn sst_ids_in_manifest(store: &Arc<dyn ObjectStore>, table: &Table) -> HashSet<u64> {
    let dir = layout::manifest_dir(
        &EngineConfig::default().cluster,
        table.meta().entry.shard,
        table.id(),
    );
    crate::manifest::load(store, &dir, table.id())
        .await
        .unwrap()
        .ssts
        .keys()
        .map(|s| s.0)
        .collect()
}

/// A paused owner resumes after another took its shard over: its flush,
/// compaction and orphan scan commit and delete nothing, and the new
/// owner's flushes and compactions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_owner_commits_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();

    let old = open(store.clone(), wal.clone(), 10).await.unwrap();
    let t_old = create(&old, "t", TableOptions::default()).await;
    t_old.write(rows(&t_old, "a", 0, 50, now)).await.unwrap();
    old.flush_table(&t_old).await.unwrap();
    t_old.write(rows(&t_old, "a", 50, 50, now)).await.unwrap();
    old.flush_table(&t_old).await.unwrap();
    // Two SSTs (something to compact) and rows only in memory.
    t_old.write(rows(&t_old, "a", 100, 100, now)).await.unwrap();

    // The new owner opens (the old one is "paused"): it replays the WAL
    // and claims every manifest.
    let new = open(store.clone(), wal.clone(), 20).await.unwrap();
    assert_eq!(count(&new, "t").await, 200);
    let t_new = new.table("public", "t").unwrap();
    t_new.write(rows(&t_new, "b", 0, 100, now)).await.unwrap();
    new.flush_table(&t_new).await.unwrap();
    let live_before = sst_ids_in_manifest(&store, &t_new).await;

    // The old owner resumes. Its orphan scan reads the live set from the
    // manifest on the store: it finds the newer owner there, deletes
    // nothing (the new owner's SSTs are not in its memory) and stops.
    assert_eq!(old.remove_orphans().await.unwrap(), 0);
    assert!(old.shard(STANDALONE_SHARD).unwrap().is_fenced());
    for id in &live_before {
        let path = layout::sst_path(
            &EngineConfig::default().cluster,
            STANDALONE_SHARD,
            t_new.id(),
            strata_sst::SstId(*id),
        );
        assert!(store.head(&path).await.is_ok(), "{path} was deleted");
    }
    // Its flush is refused, and it knows why.
    let err = old.flush_table(&t_old).await.unwrap_err();
    assert!(matches!(err, Error::ShardFenced { by: 20, .. }), "{err}");
    assert!(old.shard(STANDALONE_SHARD).unwrap().is_fenced());
    assert_eq!(sst_ids_in_manifest(&store, &t_new).await, live_before);
    // Its compaction and orphan scan commit and delete nothing either.
    assert!(old.compact_table(&t_old).await.is_err());
    old.remove_orphans().await.unwrap();
    assert_eq!(sst_ids_in_manifest(&store, &t_new).await, live_before);
    for id in &live_before {
        let path = layout::sst_path(
            &EngineConfig::default().cluster,
            STANDALONE_SHARD,
            t_new.id(),
            strata_sst::SstId(*id),
        );
        assert!(store.head(&path).await.is_ok(), "{path} was deleted");
    }
    // Writes to it are refused.
    assert!(t_old.write(rows(&t_old, "c", 0, 1, now)).await.is_err());

    // The new owner goes on: more flushes, a compaction, an orphan scan.
    t_new.write(rows(&t_new, "b", 100, 100, now)).await.unwrap();
    new.flush_table(&t_new).await.unwrap();
    new.compact_table(&t_new).await.unwrap();
    new.remove_orphans().await.unwrap();
    assert_eq!(count(&new, "t").await, 400);
    drop(new);
    drop(old);

    // And a third owner finds every row exactly once.
    let third = open(store.clone(), wal.clone(), 30).await.unwrap();
    assert_eq!(count(&third, "t").await, 400);
}

/// An owner older than what the manifests record cannot open the shard
/// under its epoch; standalone opens above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_below_the_manifests_is_refused_or_raised() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let wal = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let e = open(store.clone(), wal.clone(), 1_000).await.unwrap();
    let t = create(&e, "t", TableOptions::default()).await;
    t.write(rows(&t, "a", 0, 10, now)).await.unwrap();
    e.flush_table(&t).await.unwrap();
    drop(t);
    drop(e);
    // A clock behind the last owner's epoch: opened above it instead.
    let e = open(store.clone(), Arc::new(wal.reopen()), 5)
        .await
        .unwrap();
    assert!(e.shard(STANDALONE_SHARD).unwrap().epoch().0 > 1_000);
    assert_eq!(count(&e, "t").await, 10);
}

/// A flush whose manifest put was applied but answered with a timeout,
/// and whose read-back fails too: the flush reports an unknown outcome,
/// and the retry finds its edit instead of committing the rows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_with_an_unknown_outcome_neither_loses_nor_duplicates() {
    let (_dir, faults, inner) = fault_harness().await;
    let store: Arc<dyn ObjectStore> = faults.clone();
    let wal = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let e = open(store.clone(), wal.clone(), 7).await.unwrap();
    let t = create(&e, "t", TableOptions::default()).await;
    t.write(rows(&t, "a", 0, 100, now)).await.unwrap();

    faults.inject(Op::Put, "manifest/edits/", Fault::ApplyThenTimeout, 1);
    faults.inject(Op::Put, "manifest/edits/", Fault::FailBefore, 100);
    faults.inject(Op::Get, "manifest/edits/", Fault::FailBefore, 100);
    let err = e.flush_table(&t).await.unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err}");
    faults.clear();
    // The retry re-reads the manifest: the rows are flushed already.
    e.flush_table(&t).await.unwrap();
    assert!(t.version().frozen.is_empty());
    assert_eq!(count(&e, "t").await, 100);
    assert_eq!(
        sst_ids_in_manifest(&inner, &t).await.len(),
        1,
        "one SST, not two"
    );
    e.remove_orphans().await.unwrap();
    drop(t);
    drop(e);
    let e = open(inner.clone(), Arc::new(wal.reopen()), 8)
        .await
        .unwrap();
    assert_eq!(count(&e, "t").await, 100);
}

/// A compaction whose commit was applied but answered with a timeout keeps
/// its outputs (they may be live); a put answered with a timeout and then a
/// conflict on retry (its own edit) counts as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_with_an_unknown_outcome_deletes_nothing_live() {
    let (_dir, faults, inner) = fault_harness().await;
    let store: Arc<dyn ObjectStore> = faults.clone();
    let wal = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let e = open(store.clone(), wal.clone(), 7).await.unwrap();
    let t = create(&e, "t", TableOptions::default()).await;
    for i in 0..3 {
        t.write(rows(&t, "a", i * 100, 100, now)).await.unwrap();
        // Applied, answered with a timeout; the retry finds its own edit.
        faults.inject(Op::Put, "manifest/edits/", Fault::ApplyThenTimeout, 1);
        e.flush_table(&t).await.unwrap();
    }
    assert_eq!(t.version().ssts.len(), 3);

    faults.inject(Op::Put, "manifest/edits/", Fault::ApplyThenTimeout, 1);
    faults.inject(Op::Put, "manifest/edits/", Fault::FailBefore, 100);
    faults.inject(Op::Get, "manifest/edits/", Fault::FailBefore, 100);
    let err = e.compact_table(&t).await.unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err}");
    faults.clear();
    // Every SST the manifest lists exists.
    let listed = sst_ids_in_manifest(&inner, &t).await;
    assert_eq!(listed.len(), 1, "the compaction was committed");
    for id in &listed {
        let path = layout::sst_path(
            &EngineConfig::default().cluster,
            STANDALONE_SHARD,
            t.id(),
            strata_sst::SstId(*id),
        );
        assert!(
            inner.head(&path).await.is_ok(),
            "live output {path} was deleted"
        );
    }
    // Maintenance re-reads the manifest and catches up.
    e.maintain(true).await.unwrap();
    assert_eq!(t.version().ssts.len(), 1);
    assert_eq!(count(&e, "t").await, 300);
    drop(t);
    drop(e);
    let e = open(inner.clone(), Arc::new(wal.reopen()), 8)
        .await
        .unwrap();
    assert_eq!(count(&e, "t").await, 300);
}

/// A snapshot put that fails leaves the edits readable; one applied but
/// answered with a timeout is not written over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_faults_lose_nothing() {
    let (_dir, faults, inner) = fault_harness().await;
    let store: Arc<dyn ObjectStore> = faults.clone();
    let wal = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let e = open(store.clone(), wal.clone(), 7).await.unwrap();
    let t = create(&e, "t", TableOptions::default()).await;
    faults.inject(Op::Put, "manifest/snapshots/", Fault::FailBefore, 1);
    faults.inject(Op::Put, "manifest/snapshots/", Fault::ApplyThenTimeout, 1);
    let edits = crate::manifest::SNAPSHOT_EVERY as i64 * 2 + 1;
    for i in 0..edits {
        t.write(rows(&t, "a", i * 10, 10, now)).await.unwrap();
        e.flush_table(&t).await.unwrap();
    }
    assert_eq!(faults.fired().len(), 2);
    let expected = t.version().ssts.len();
    drop(t);
    drop(e);
    let e = open(inner.clone(), Arc::new(wal.reopen()), 8)
        .await
        .unwrap();
    assert_eq!(count(&e, "t").await, edits * 10);
    assert_eq!(
        e.table("public", "t").unwrap().version().ssts.len(),
        expected
    );
    let snaps: Vec<_> = inner
        .list(Some(&Path::from(format!(
            "{}/shards/0/tables",
            EngineConfig::default().cluster
        ))))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.location.as_ref().contains("/snapshots/"))
        .collect();
    assert_eq!(snaps.len(), 1, "old snapshots are cleaned up: {snaps:?}");
}

/// A WAL whose reads return at most two records, and whose third read
/// fails once (a broker that times out mid-replay); it records where each
/// read started.
#[derive(Debug)]
struct InterruptedWal {
    inner: MemoryWal,
    reads: parking_lot::Mutex<Vec<u64>>,
}

#[async_trait::async_trait]
impl Wal for InterruptedWal {
    async fn append(
        &self,
        epoch: Epoch,
        payloads: Vec<bytes::Bytes>,
    ) -> strata_wal::Result<strata_wal::AppendResult> {
        self.inner.append(epoch, payloads).await
    }

    async fn read(
        &self,
        from: strata_wal::WalOffset,
        max_bytes: usize,
    ) -> strata_wal::Result<Vec<strata_wal::WalEntry>> {
        let n = {
            let mut reads = self.reads.lock();
            reads.push(from.0);
            reads.len()
        };
        if n == 3 {
            return Err(strata_wal::Error::Io {
                op: "reading",
                path: "broker".into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            });
        }
        let mut entries = self.inner.read(from, max_bytes).await?;
        entries.truncate(2);
        Ok(entries)
    }

    async fn truncate(&self, below: strata_wal::WalOffset) -> strata_wal::Result<()> {
        self.inner.truncate(below).await
    }

    fn next_offset(&self) -> strata_wal::WalOffset {
        self.inner.next_offset()
    }

    fn low_watermark(&self) -> strata_wal::WalOffset {
        self.inner.low_watermark()
    }
}

/// A replay interrupted by a WAL error goes on from where it stopped under
/// the same epoch: no record is applied twice, none is skipped, and the
/// epoch's fence marker is appended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let memory = MemoryWal::new();
    let now = chrono::Utc::now().timestamp_millis();
    {
        let first = open(store.clone(), Arc::new(memory.reopen()), 10)
            .await
            .unwrap();
        let t = create(&first, "t", TableOptions::default()).await;
        for i in 0..6 {
            t.write(rows(&t, "a", i * 10, 10, now)).await.unwrap();
        }
    }
    let wal = Arc::new(InterruptedWal {
        inner: memory.reopen(),
        reads: parking_lot::Mutex::new(Vec::new()),
    });
    let second = open(store.clone(), wal.clone(), 20).await.unwrap();
    assert_eq!(count(&second, "t").await, 60);
    let reads = wal.reads.lock().clone();
    // Two records a read; the third read failed, and the retry went on at
    // the offset that read had asked for instead of starting over.
    assert!(reads.len() >= 5, "{reads:?}");
    assert_eq!(reads[2], reads[3], "{reads:?}");
    assert!(reads[3] > 0, "{reads:?}");
    let markers = memory
        .read(strata_wal::WalOffset(0), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.epoch == Epoch(20))
        .count();
    assert_eq!(markers, 1, "one fence marker for epoch 20");
}

/// A replaced owner's write that lands after the new owner's last record
/// (refused to its client: the new owner's marker precedes it) is never
/// replayed, also after the new owner flushed and truncated the WAL: the
/// watermark stays at a record of the new owner's epoch, so the next
/// replay drops the older epoch's record instead of admitting it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_after_the_new_owners_truncation_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let memory = MemoryWal::new();
    let now = chrono::Utc::now().timestamp_millis();
    let old = open(store.clone(), Arc::new(memory.reopen()), 10)
        .await
        .unwrap();
    let t_old = create(&old, "t", TableOptions::default()).await;
    t_old.write(rows(&t_old, "a", 0, 10, now)).await.unwrap();
    let new = open(store.clone(), Arc::new(memory.reopen()), 20)
        .await
        .unwrap();
    let t_new = new.table("public", "t").unwrap();
    t_new.write(rows(&t_new, "b", 0, 10, now)).await.unwrap();
    new.flush_table(&t_new).await.unwrap();
    // The old owner's late record: its writer found the new marker in the
    // gap before it and refused the write to its client.
    let late = rows(&t_old, "late", 0, 5, now);
    memory
        .append(
            Epoch(10),
            vec![
                crate::codec::encode_write(t_old.id(), t_old.meta().entry.schema.version, &late)
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
    drop(new);
    let third = open(store.clone(), Arc::new(memory.reopen()), 30)
        .await
        .unwrap();
    assert_eq!(count(&third, "t").await, 20, "the refused rows came back");
}
