//! Handing tables from one shard to another (the primitive of split and
//! merge, RFC 0006): every acknowledged row is kept once, the old shard
//! commits nothing more for them, and answers whose outcome is unknown
//! neither lose nor duplicate anything.

use strata_sst::{
    fault::{Fault, Op},
    layout, ShardId, TableId,
};
use strata_wal::{Epoch, Wal};

use super::*;
use crate::{manifest::ManifestState, options::UpdateMode, Error, ErrorKind};

const A: ShardId = ShardId(1);
const B: ShardId = ShardId(2);

/// An APPEND table (a row applied twice is counted twice) on `shard`.
fn entry(id: u64, name: &str, shard: ShardId) -> TableEntry {
    TableEntry {
        id: TableId(id),
        database: "public".into(),
        name: name.into(),
        schema: schema(),
        options: TableOptions {
            update_mode: UpdateMode::Append,
            ..Default::default()
        },
        shard,
        created_at_ms: 0,
        partition: None,
        partition_of: None,
        revision: 0,
        home: None,
    }
}

/// `e` as meta records it once moved to `to`: its files stay at home.
fn moved(e: &TableEntry, to: ShardId) -> TableEntry {
    TableEntry {
        shard: to,
        home: Some(e.home()),
        ..e.clone()
    }
}

/// An instance with meta's catalog `tables` and shards A and B open under
/// the given epochs (B's below A's: epochs of different shards are not
/// comparable, and a handover must not compare them).
async fn instance(
    store: &Arc<dyn ObjectStore>,
    tables: Vec<TableEntry>,
    (wal_a, epoch_a): (&MemoryWal, u64),
    (wal_b, epoch_b): (&MemoryWal, u64),
) -> Arc<Engine> {
    let e = Engine::open_cluster(no_background(), store.clone(), Arc::new(NoDdl)).unwrap();
    e.install_catalog(vec!["public".into()], tables)
        .await
        .unwrap();
    e.open_shard(A, Arc::new(wal_a.reopen()), Epoch(epoch_a))
        .await
        .unwrap();
    e.open_shard(B, Arc::new(wal_b.reopen()), Epoch(epoch_b))
        .await
        .unwrap();
    e
}

async fn manifest(store: &Arc<dyn ObjectStore>, e: &TableEntry) -> ManifestState {
    let dir = layout::manifest_dir(&EngineConfig::default().cluster, e.home(), e.id);
    crate::manifest::load(store, &dir, e.id).await.unwrap()
}

fn moving(err: &Error) -> bool {
    err.kind() == ErrorKind::ShardMoving
}

/// A table with rows in SSTs and in memory is handed from A to B, and back:
/// its old shard refuses its writes and reads retryably and keeps serving
/// its other tables; a new owner of A opening before meta moved the table
/// in its catalog leaves it alone; B claims it at its WAL's end, so B's
/// offsets and epochs count from there; and after each restart (both WALs
/// replayed whole) every row is there once. A's WAL still holds the
/// table's old records when it comes back: they are not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_table_keeps_every_row_once_there_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let (wal_a, wal_b) = (MemoryWal::new(), MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let t = entry(1, "t", A);
    let u = entry(2, "u", A);

    let e = instance(
        &store,
        vec![t.clone(), u.clone()],
        (&wal_a, 50),
        (&wal_b, 5),
    )
    .await;
    let (ta, ua) = (
        e.table("public", "t").unwrap(),
        e.table("public", "u").unwrap(),
    );
    // u's rows first, never flushed: A's WAL is never truncated past t's
    // records.
    ua.write(rows(&ua, "u", 0, 10, now)).await.unwrap();
    let t_first = e.shard(A).unwrap().wal().next_offset().0;
    ta.write(rows(&ta, "a", 0, 100, now)).await.unwrap();
    e.flush_table(&ta).await.unwrap();
    ta.write(rows(&ta, "a", 100, 50, now)).await.unwrap();

    e.hand_over_tables(A, &[t.id], B).await.unwrap();
    assert!(ta.version().memtables().all(|m| m.is_empty()), "flushed");
    let err = ta.write(rows(&ta, "a", 150, 1, now)).await.unwrap_err();
    assert!(moving(&err), "{err}");
    let err = e.locate("public", "t").unwrap_err();
    assert!(moving(&err), "{err}");
    // Not a fence: A's other tables are served.
    assert!(!e.shard(A).unwrap().is_fenced());
    ua.write(rows(&ua, "u", 10, 10, now)).await.unwrap();
    // Idempotent.
    e.hand_over_tables(A, &[t.id], B).await.unwrap();
    let state = manifest(&store, &t).await;
    assert_eq!((state.shard, state.handed_to()), (Some(A.0), Some(B.0)));
    drop((ta, ua));
    drop(e);

    // A's leader is replaced before meta moved t in its catalog: the new
    // owner of A opens the shard without t (its manifest says B's).
    let e = instance(
        &store,
        vec![t.clone(), u.clone()],
        (&wal_a, 60),
        (&wal_b, 6),
    )
    .await;
    assert!(e.shard(A).unwrap().table(t.id).is_none());
    assert_eq!(count(&e, "u").await, 20);
    // Meta moves it: B claims it at the end of B's WAL.
    let t_b = moved(&t, B);
    let b_end = e.shard(B).unwrap().wal().next_offset().0;
    e.install_table(t_b.clone()).await.unwrap();
    let tb = e.table("public", "t").unwrap();
    assert_eq!(tb.meta().entry.shard, B);
    let state = manifest(&store, &t_b).await;
    assert_eq!((state.shard, state.handed_to()), (Some(B.0), None));
    assert_eq!((state.flushed_offset, state.epoch), (b_end, 6));
    assert_eq!(count(&e, "t").await, 150);
    tb.write(rows(&tb, "b", 0, 50, now)).await.unwrap();
    assert_eq!(count(&e, "t").await, 200);
    drop(tb);
    drop(e);

    // Both shards fail over: each replays its own WAL whole.
    let e = instance(
        &store,
        vec![t_b.clone(), u.clone()],
        (&wal_a, 70),
        (&wal_b, 7),
    )
    .await;
    assert_eq!(count(&e, "t").await, 200);
    assert_eq!(count(&e, "u").await, 20);

    // Back to A (its home): A claims it at A's WAL end, above t's old
    // records, which A's WAL still holds.
    assert!(wal_a.low_watermark().0 <= t_first);
    e.hand_over_tables(B, &[t.id], A).await.unwrap();
    let t_a = TableEntry {
        shard: A,
        ..t_b.clone()
    };
    e.install_table(t_a.clone()).await.unwrap();
    assert!(e.shard(B).unwrap().table(t.id).is_none());
    let ta = e.table("public", "t").unwrap();
    assert_eq!(ta.meta().entry.shard, A);
    assert_eq!(count(&e, "t").await, 200);
    ta.write(rows(&ta, "c", 0, 5, now)).await.unwrap();
    drop(ta);
    drop(e);
    let e = instance(&store, vec![t_a, u], (&wal_a, 80), (&wal_b, 8)).await;
    assert_eq!(count(&e, "t").await, 205);
    assert_eq!(count(&e, "u").await, 20);
}

/// The handover edit's put is applied but answered with a timeout, and
/// reading it back fails: the handover reports an unknown outcome and the
/// table's writes stay refused (the edit may be committed); the retry finds
/// it committed. B's claim answered with a timeout is read back and counts
/// once. Nothing is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handovers_and_claims_with_unknown_outcomes_lose_nothing() {
    let (_dir, faults, inner) = fault_harness().await;
    let store: Arc<dyn ObjectStore> = faults.clone();
    let (wal_a, wal_b) = (MemoryWal::new(), MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let t = entry(1, "t", A);
    let e = instance(&store, vec![t.clone()], (&wal_a, 50), (&wal_b, 5)).await;
    let ta = e.table("public", "t").unwrap();
    ta.write(rows(&ta, "a", 0, 100, now)).await.unwrap();
    e.flush_table(&ta).await.unwrap();

    // The next manifest put is the handover's.
    faults.inject(Op::Put, "manifest/edits/", Fault::ApplyThenTimeout, 1);
    faults.inject(Op::Put, "manifest/edits/", Fault::FailBefore, 100);
    faults.inject(Op::Get, "manifest/edits/", Fault::FailBefore, 100);
    let err = e.hand_over_tables(A, &[t.id], B).await.unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err}");
    let err = ta.write(rows(&ta, "a", 100, 1, now)).await.unwrap_err();
    assert!(moving(&err), "writes stay refused: {err}");
    faults.clear();
    e.hand_over_tables(A, &[t.id], B).await.unwrap();
    let state = manifest(&inner, &t).await;
    assert_eq!(state.handed_to(), Some(B.0));
    let edits = state.last_edit;

    // B's claim: its put applied and answered with a timeout; the read
    // back finds it ours.
    faults.inject(Op::Put, "manifest/edits/", Fault::ApplyThenTimeout, 1);
    let t_b = moved(&t, B);
    e.install_table(t_b.clone()).await.unwrap();
    faults.clear();
    let state = manifest(&inner, &t_b).await;
    assert_eq!((state.shard, state.epoch), (Some(B.0), 5));
    assert_eq!(state.last_edit, edits + 1, "one claim");
    assert_eq!(count(&e, "t").await, 100);
    let tb = e.table("public", "t").unwrap();
    tb.write(rows(&tb, "b", 0, 10, now)).await.unwrap();
    drop((ta, tb));
    drop(e);
    let e = instance(&inner, vec![t_b], (&wal_a, 60), (&wal_b, 6)).await;
    assert_eq!(count(&e, "t").await, 110);
}

/// A paused owner of A resumes after A's new owner handed the table to B
/// (whose epochs are above the paused owner's): its flush and its orphan
/// scan commit and delete nothing, and B's table keeps every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_of_the_old_shard_commits_nothing_after_a_handover() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let (wal_a, wal_b) = (MemoryWal::new(), MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let t = entry(1, "t", A);

    let paused = Engine::open_cluster(no_background(), store.clone(), Arc::new(NoDdl)).unwrap();
    paused
        .install_catalog(vec!["public".into()], vec![t.clone()])
        .await
        .unwrap();
    paused
        .open_shard(A, Arc::new(wal_a.reopen()), Epoch(10))
        .await
        .unwrap();
    let tp = paused.table("public", "t").unwrap();
    tp.write(rows(&tp, "a", 0, 100, now)).await.unwrap();

    let e = instance(&store, vec![t.clone()], (&wal_a, 20), (&wal_b, 30)).await;
    e.hand_over_tables(A, &[t.id], B).await.unwrap();
    let t_b = moved(&t, B);
    e.install_table(t_b.clone()).await.unwrap();
    assert_eq!(count(&e, "t").await, 100);
    let before = manifest(&store, &t_b).await;

    let err = paused.flush_table(&tp).await.unwrap_err();
    assert!(matches!(err, Error::TableMoved { .. }), "{err}");
    assert_eq!(paused.remove_orphans().await.unwrap(), 0);
    assert!(tp.write(rows(&tp, "a", 100, 1, now)).await.is_err());
    assert_eq!(manifest(&store, &t_b).await, before);

    let tb = e.table("public", "t").unwrap();
    tb.write(rows(&tb, "b", 0, 10, now)).await.unwrap();
    e.flush_table(&tb).await.unwrap();
    e.compact_table(&tb).await.unwrap();
    e.remove_orphans().await.unwrap();
    assert_eq!(count(&e, "t").await, 110);
    drop((tp, tb));
    drop(paused);
    drop(e);
    let e = instance(&store, vec![t_b], (&wal_a, 40), (&wal_b, 50)).await;
    assert_eq!(count(&e, "t").await, 110);
}
