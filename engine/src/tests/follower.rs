//! Followers: a read-only copy of a shard that tails its WAL, follows its
//! manifests, writes nothing, and is promoted without a full replay.

use strata_wal::{Epoch, Wal};

use super::*;
use crate::{options::UpdateMode, Error, STANDALONE_SHARD};

/// Waits until `f` holds (the follower tails in the background).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn files_under(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut std::collections::BTreeSet<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p);
            }
        }
    }
    let mut out = Default::default();
    walk(root, &mut out);
    out
}

/// A second engine in cluster mode with the leader's catalog, following
/// shard 0.
async fn follower_engine(
    store: Arc<dyn ObjectStore>,
    leader: &Engine,
    cfg: EngineConfig,
) -> Arc<Engine> {
    let engine = Engine::open_cluster(cfg, store, Arc::new(NoDdl)).unwrap();
    engine
        .install_catalog(vec!["public".to_string()], leader.catalog().all_tables())
        .await
        .unwrap();
    engine
}

fn append() -> TableOptions {
    TableOptions {
        update_mode: UpdateMode::Append,
        ..Default::default()
    }
}

/// The follower gives the leader's answers through writes, flushes and a
/// compaction (an APPEND table shows any row counted twice or missed), drops
/// from memory what the leader flushed, and writes nothing to the store or
/// the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_tails_the_wal_follows_flushes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let t = create(&leader, "t", append()).await;
    t.write(rows(&t, "a", 0, 100, now)).await.unwrap();
    leader.flush_table(&t).await.unwrap();
    t.write(rows(&t, "a", 100, 50, now)).await.unwrap();

    let cfg = EngineConfig {
        follower_sync_interval: Duration::from_millis(50),
        ..no_background()
    };
    let fe = follower_engine(store.clone(), &leader, cfg).await;
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    let ft = follower.table(t.id()).unwrap();
    eventually("the follower catches up", || async {
        count_of(&fe, &ft).await == 150
    })
    .await;
    assert!(
        fe.shard(STANDALONE_SHARD).is_none(),
        "a follower is not a shard led here"
    );

    // New rows, then a flush and a compaction on the leader: the follower
    // shows each row once throughout, and lets go of what was flushed.
    let wal_end = wal.next_offset();
    let before = files_under(dir.path());
    t.write(rows(&t, "b", 0, 70, now)).await.unwrap();
    eventually("the follower sees new rows", || async {
        count_of(&fe, &ft).await == 220
    })
    .await;
    assert!(ft.version().memtable_bytes() > 0);
    leader.flush_table(&t).await.unwrap();
    leader.compact_table(&t).await.unwrap();
    eventually("the follower takes the leader's SSTs", || async {
        ft.version().flushed_offset == t.version().flushed_offset
            && ft.version().ssts.len() == t.version().ssts.len()
    })
    .await;
    assert_eq!(
        ft.version().memtable_bytes(),
        0,
        "flushed rows leave memory"
    );
    assert_eq!(count_of(&fe, &ft).await, 220);
    assert_eq!(count_of(&leader, &t).await, 220);
    let status = follower.status();
    assert_eq!(status.lag_records, 0, "{status:?}");
    assert_eq!(follower.applied_offset(), wal.next_offset().0);

    // The follower's own maintenance touches nothing of the shard.
    let leader_files = files_under(dir.path());
    assert_ne!(leader_files, before);
    fe.maintain(true).await.unwrap();
    fe.remove_orphans().await.unwrap();
    assert_eq!(files_under(dir.path()), leader_files);
    // Its tables refuse to flush, and writes never reach the WAL.
    assert!(ft.flush().await.is_err());
    assert!(ft.write(rows(&t, "z", 0, 1, now)).await.is_err());
    assert!(wal.next_offset() > wal_end);
    let end = wal.next_offset();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(wal.next_offset(), end, "the follower appended nothing");
}

/// Promotion: the follower becomes the leader under a higher epoch with its
/// memtables, reading only the WAL after its position; the old leader is
/// fenced; no acknowledged row is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_follower_keeps_every_row_and_fences_the_old_leader() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let t = create(&leader, "t", append()).await;
    let cfg = EngineConfig {
        // The follower sees no flush before it is promoted: the promotion
        // itself must drop the memtable rows the leader flushed.
        follower_sync_interval: Duration::from_secs(3600),
        ..no_background()
    };
    let fe = follower_engine(store.clone(), &leader, cfg).await;
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    t.write(rows(&t, "a", 0, 100, now)).await.unwrap();
    t.write(rows(&t, "a", 100, 100, now)).await.unwrap();
    let ft = follower.table(t.id()).unwrap();
    eventually("the follower catches up", || async {
        count_of(&fe, &ft).await == 200
    })
    .await;
    // The leader flushes half of it after the follower's last manifest
    // read, and writes more that the follower may not have read.
    leader.flush_table(&t).await.unwrap();
    t.write(rows(&t, "b", 0, 30, now)).await.unwrap();

    let promoted = fe
        .promote_follower(STANDALONE_SHARD, wal.clone(), Epoch(20))
        .await
        .unwrap();
    assert!(fe.follower(STANDALONE_SHARD).is_none());
    let nt = promoted.table(t.id()).unwrap();
    assert_eq!(
        count_of(&fe, &nt).await,
        230,
        "every acknowledged row, once"
    );
    nt.write(rows(&nt, "c", 0, 10, now)).await.unwrap();
    assert_eq!(count_of(&fe, &nt).await, 240);

    // The old leader cannot commit a flush any more.
    t.write(rows(&t, "late", 0, 5, now))
        .await
        .unwrap_or_default();
    let err = leader.flush_table(&t).await.unwrap_err();
    assert!(matches!(err, Error::ShardFenced { by: 20, .. }), "{err}");
    // The new leader flushes, and a restart from the store and WAL alone
    // (a full replay) sees exactly its rows: the old leader's late write
    // came after the new epoch's marker and is dropped.
    fe.flush_table(&nt).await.unwrap();
    nt.write(rows(&nt, "d", 0, 10, now)).await.unwrap();
    drop(promoted);
    fe.close().await.unwrap();
    let again = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(30)))
        .await
        .unwrap();
    let at = again.table("public", "t").unwrap();
    assert_eq!(count_of(&again, &at).await, 250);
}

/// A table the follower has not heard of yet is waited for, not skipped,
/// even when a table with a higher id (announced on its own, before the
/// catalog) is known already: skipping it lost its rows on the follower
/// and, after a promotion, for good (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waits_for_a_table_it_has_not_heard_of() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let x = create(&leader, "x", append()).await;
    let y = create(&leader, "y", append()).await;
    assert!(y.id() > x.id());
    let cfg = EngineConfig {
        follower_sync_interval: Duration::from_millis(50),
        ..no_background()
    };
    // The follower's catalog is older than both tables; then y alone is
    // announced to it.
    let fe = Engine::open_cluster(cfg, store.clone(), Arc::new(NoDdl)).unwrap();
    fe.install_catalog(vec!["public".to_string()], Vec::new())
        .await
        .unwrap();
    let y_entry = leader.catalog().table_by_id(y.id()).unwrap();
    fe.install_table(y_entry).await.unwrap();
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    x.write(rows(&x, "a", 0, 40, now)).await.unwrap();
    y.write(rows(&y, "a", 0, 10, now)).await.unwrap();
    eventually("the follower waits at x's record", || async {
        follower.status().waiting_for_catalog
    })
    .await;
    // The catalog arrives: x's rows are applied, none skipped.
    fe.install_catalog(vec!["public".to_string()], leader.catalog().all_tables())
        .await
        .unwrap();
    let fx = loop {
        if let Some(t) = follower.table(x.id()) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually("the follower applies x's rows", || async {
        count_of(&fe, &fx).await == 40
    })
    .await;
    let promoted = fe
        .promote_follower(STANDALONE_SHARD, wal.clone(), Epoch(20))
        .await
        .unwrap();
    assert_eq!(count_of(&fe, &promoted.table(x.id()).unwrap()).await, 40);
    assert_eq!(count_of(&fe, &promoted.table(y.id()).unwrap()).await, 10);
}

/// A catalog meta read before a table was created, installed after the
/// table was announced, keeps it (and the follower's rows of it): dropping
/// it threw away rows written since (found by review). A late announcement
/// of a table the catalog shows dropped is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_catalog_keeps_a_table_announced_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let x = create(&leader, "x", append()).await;
    let y = create(&leader, "y", append()).await;
    let cfg = EngineConfig {
        follower_sync_interval: Duration::from_millis(50),
        ..no_background()
    };
    let fe = Engine::open_cluster(cfg, store.clone(), Arc::new(NoDdl)).unwrap();
    let x_entry = leader.catalog().table_by_id(x.id()).unwrap();
    let y_entry = leader.catalog().table_by_id(y.id()).unwrap();
    // Meta's catalog as of before y; then y is announced.
    fe.note_last_table_id(x.id().0);
    fe.install_catalog(vec!["public".to_string()], vec![x_entry.clone()])
        .await
        .unwrap();
    fe.install_table(y_entry.clone()).await.unwrap();
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    y.write(rows(&y, "a", 0, 25, now)).await.unwrap();
    let fy = follower.table(y.id()).unwrap();
    eventually("the follower applies y's rows", || async {
        count_of(&fe, &fy).await == 25
    })
    .await;
    // The older catalog arrives late: y stays, with its rows.
    fe.note_last_table_id(x.id().0);
    fe.install_catalog(vec!["public".to_string()], vec![x_entry.clone()])
        .await
        .unwrap();
    assert!(fe.catalog().table_by_id(y.id()).is_some());
    let fy = follower.table(y.id()).expect("the follower keeps y");
    assert_eq!(count_of(&fe, &fy).await, 25);
    // A newer catalog without y says it was dropped; announcing it late
    // does not bring it back.
    fe.note_last_table_id(y.id().0);
    fe.install_catalog(vec!["public".to_string()], vec![x_entry])
        .await
        .unwrap();
    assert!(fe.catalog().table_by_id(y.id()).is_none());
    assert!(follower.table(y.id()).is_none());
    fe.install_table(y_entry).await.unwrap();
    assert!(fe.catalog().table_by_id(y.id()).is_none());
}

/// `catch_up` makes a follower read see every write acknowledged before it,
/// with no waiting by the reader; a follower that cannot catch up (stopped
/// at a table its catalog does not show) refuses with the retryable
/// `FollowerBehind` after `follower_read_timeout`, and serves again once
/// the catalog arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_catches_up_with_every_acknowledged_write_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let t = create(&leader, "t", append()).await;
    let cfg = EngineConfig {
        // Manifests are re-read rarely: the memtables alone must hold what
        // the leader flushed meanwhile.
        follower_sync_interval: Duration::from_secs(3600),
        follower_read_timeout: Duration::from_millis(300),
        ..no_background()
    };
    let fe = follower_engine(store.clone(), &leader, cfg).await;
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    let ft = follower.table(t.id()).unwrap();
    let mut written = 0;
    for round in 0..30 {
        let n: i64 = 1 + (round * 7) % 50;
        t.write(rows(&t, &format!("h{round}"), 0, n, now))
            .await
            .unwrap();
        written += n;
        if round % 10 == 9 {
            leader.flush_table(&t).await.unwrap();
        }
        follower.catch_up().await.unwrap();
        assert_eq!(count_of(&fe, &ft).await, written, "round {round}");
    }

    // A table created after the follower's catalog: its record stops the
    // tail, and reads refuse rather than answer stale.
    let u = create(&leader, "u", append()).await;
    u.write(rows(&u, "a", 0, 5, now)).await.unwrap();
    t.write(rows(&t, "late", 0, 3, now)).await.unwrap();
    let started = std::time::Instant::now();
    let err = follower.catch_up().await.unwrap_err();
    assert!(matches!(err, Error::FollowerBehind { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(follower.status().waiting_for_catalog);
    fe.install_table(leader.catalog().table_by_id(u.id()).unwrap())
        .await
        .unwrap();
    follower.catch_up().await.unwrap();
    assert_eq!(count_of(&fe, &ft).await, written + 3);
    assert_eq!(count_of(&fe, &follower.table(u.id()).unwrap()).await, 5);
}

/// A change of a table's definition makes the next follower read re-read
/// its manifests: after the leader's TTL expiry removed old rows and the
/// TTL was lengthened again, the follower does not show them (its periodic
/// manifest sync is an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_after_a_definition_change_sees_the_leaders_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let wal: Arc<dyn Wal> = Arc::new(MemoryWal::new());
    let now = chrono::Utc::now().timestamp_millis();
    let leader = Engine::open_fenced(no_background(), store.clone(), wal.clone(), Some(Epoch(10)))
        .await
        .unwrap();
    let t = create(&leader, "t", append()).await;
    // Two days old, then new, in SSTs of their own.
    t.write(rows(&t, "old", 0, 20, now - 2 * 86_400_000))
        .await
        .unwrap();
    leader.flush_table(&t).await.unwrap();
    t.write(rows(&t, "new", 0, 5, now)).await.unwrap();
    leader.flush_table(&t).await.unwrap();

    let cfg = EngineConfig {
        follower_sync_interval: Duration::from_secs(3600),
        ..no_background()
    };
    let fe = follower_engine(store.clone(), &leader, cfg).await;
    let follower = fe
        .open_follower(STANDALONE_SHARD, wal.clone())
        .await
        .unwrap();
    let ft = follower.table(t.id()).unwrap();
    follower.catch_up().await.unwrap();
    assert_eq!(count_of(&fe, &ft).await, 25);

    // TTL 1 day: expiry drops the old SST on the leader.
    let alter = |ttl: &str| AlterTable::ModifySettings(vec![("ttl".to_string(), ttl.to_string())]);
    leader
        .alter_table("public", "t", alter("1d"))
        .await
        .unwrap();
    assert_eq!(t.expire().await.unwrap(), 1);
    fe.install_table(leader.catalog().table_by_id(t.id()).unwrap())
        .await
        .unwrap();
    // Lengthened again: the deleted rows stay deleted, on the follower too.
    leader
        .alter_table("public", "t", alter("30d"))
        .await
        .unwrap();
    fe.install_table(leader.catalog().table_by_id(t.id()).unwrap())
        .await
        .unwrap();
    follower.catch_up().await.unwrap();
    assert_eq!(count_of(&leader, &t).await, 5);
    assert_eq!(count_of(&fe, &ft).await, 5);
}
