//! A compute instance's copy of a table (`Engine::reader`: the manifest
//! read, never claimed) with the leader's rows not flushed as of that
//! manifest (`Table::unflushed_since`): every acknowledged row once, the
//! newest version of a key winning, however flushes fall between the two.

use super::*;
use crate::{options::UpdateMode, Error};

/// `host ts n` of every row a scan of `provider` returns, in order.
async fn rows_of(engine: &Engine, provider: StrataTableProvider) -> Vec<String> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.runtime_env()
        .register_object_store(engine.object_store_url().as_ref(), engine.object_store());
    ctx.register_table("t", Arc::new(provider)).unwrap();
    let batches = ctx
        .sql("SELECT host, CAST(ts AS BIGINT) AS ts, n FROM t ORDER BY host, ts, n")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let host = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let ts = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let n = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push(format!("{} {} {}", host.value(i), ts.value(i), n.value(i)));
        }
    }
    out
}

/// What a compute instance reads: its copy's SSTs and the leader's rows
/// not in them.
async fn as_compute(engine: &Engine, leader: &Arc<Table>, fresh: bool) -> Vec<String> {
    let entry = leader.meta().entry.clone();
    let copy = engine.reader(&entry, fresh).await.unwrap();
    assert!(
        !Arc::ptr_eq(&copy, leader),
        "the copy is the leader's table"
    );
    let version = copy.version();
    let (_, unflushed) = leader.unflushed_since(version.flushed_offset).unwrap();
    rows_of(
        engine,
        StrataTableProvider::over_rows(copy, leader.arrow_schema(), version, unflushed),
    )
    .await
}

#[tokio::test]
async fn a_copy_of_the_manifest_and_the_unflushed_rows_hold_every_row_once() {
    let h = harness(no_background()).await;
    for mode in [UpdateMode::Overwrite, UpdateMode::Append] {
        let name = format!("t_{mode:?}").to_lowercase();
        let options = TableOptions {
            update_mode: mode,
            ..Default::default()
        };
        let leader = create(&h.engine, &name, options).await;
        let direct =
            || async { rows_of(&h.engine, StrataTableProvider::new(leader.clone())).await };

        // In SSTs and in memory, with a key of the SSTs written again.
        leader.write(rows(&leader, "a", 0, 10, 1000)).await.unwrap();
        leader.flush().await.unwrap();
        leader.write(one_row(&leader, "a", 1003, 77)).await.unwrap();
        leader.write(rows(&leader, "b", 0, 5, 1000)).await.unwrap();
        let expected = direct().await;
        let overwritten = expected.iter().filter(|r| r.starts_with("a 1003 ")).count();
        match mode {
            UpdateMode::Overwrite => {
                assert_eq!(expected.len(), 15);
                assert_eq!(overwritten, 1);
                assert!(expected.contains(&"a 1003 77".to_string()));
            }
            UpdateMode::Append => {
                assert_eq!(expected.len(), 16);
                assert_eq!(overwritten, 2);
            }
        }
        assert_eq!(as_compute(&h.engine, &leader, true).await, expected);

        // The copy is cached; the leader flushes past its manifest: the
        // leader refuses, and the copy read again gives the same rows.
        let entry = leader.meta().entry.clone();
        let copy = h.engine.reader(&entry, false).await.unwrap();
        let old = copy.version();
        leader.flush().await.unwrap();
        let refused = leader.unflushed_since(old.flushed_offset).unwrap_err();
        assert!(matches!(refused, Error::FlushedBeyond { .. }), "{refused}");
        assert!(refused.is_retryable());
        assert_eq!(as_compute(&h.engine, &leader, true).await, expected);
        let again = h.engine.reader(&entry, false).await.unwrap();
        assert!(Arc::ptr_eq(&copy, &again));
        assert_eq!(again.version().ssts.len(), 2);
        let (_, none) = leader
            .unflushed_since(again.version().flushed_offset)
            .unwrap();
        assert_eq!(none.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

        // New rows in memory only, over a copy whose manifest is current.
        leader.write(one_row(&leader, "b", 1001, 55)).await.unwrap();
        leader.write(one_row(&leader, "c", 7, 1)).await.unwrap();
        assert_eq!(as_compute(&h.engine, &leader, false).await, direct().await);

        // A compaction rewrites the SSTs without moving the flushed
        // offset: a copy read before it (its files not collected yet) and
        // one read after both hold every row once.
        leader.flush().await.unwrap();
        leader.write(one_row(&leader, "c", 7, 2)).await.unwrap();
        let expected = direct().await;
        assert_eq!(
            h.engine
                .reader(&entry, true)
                .await
                .unwrap()
                .version()
                .ssts
                .len(),
            3
        );
        let before = h.engine.reader(&entry, false).await.unwrap().version();
        h.engine.compact_table(&leader).await.unwrap();
        assert!(leader.version().ssts.len() < 3, "nothing compacted");
        let (_, unflushed) = leader.unflushed_since(before.flushed_offset).unwrap();
        assert_eq!(
            rows_of(
                &h.engine,
                StrataTableProvider::over_rows(
                    copy.clone(),
                    leader.arrow_schema(),
                    before,
                    unflushed
                )
            )
            .await,
            expected
        );
        assert_eq!(as_compute(&h.engine, &leader, true).await, expected);
    }
}

/// A copy younger than `follower_sync_interval` is used as it is, until
/// `Engine::reread` (what an instance calls after forwarding a FLUSH or
/// COMPACT): then the next read lists the SSTs the leader committed.
#[tokio::test]
async fn a_copy_marked_for_reading_again_lists_the_leaders_new_ssts() {
    let h = harness(EngineConfig {
        follower_sync_interval: Duration::from_secs(3600),
        ..no_background()
    })
    .await;
    let leader = create(&h.engine, "t", TableOptions::default()).await;
    let entry = leader.meta().entry.clone();
    for host in ["a", "b", "c"] {
        leader
            .write(rows(&leader, host, 0, 10, 1000))
            .await
            .unwrap();
        leader.flush().await.unwrap();
    }
    let copy = h.engine.reader(&entry, false).await.unwrap();
    assert_eq!(copy.version().ssts.len(), 3);
    h.engine.compact_table(&leader).await.unwrap();
    assert_eq!(leader.version().ssts.len(), 1);
    // Within the interval: the copy as it was.
    let same = h.engine.reader(&entry, false).await.unwrap();
    assert!(Arc::ptr_eq(&copy, &same));
    assert_eq!(same.version().ssts.len(), 3);
    h.engine.reread(entry.id);
    let after = h.engine.reader(&entry, false).await.unwrap();
    assert!(Arc::ptr_eq(&copy, &after));
    assert_eq!(after.version().ssts.len(), 1);
    // Read once: cached again.
    assert_eq!(as_compute(&h.engine, &leader, false).await.len(), 30);
}
