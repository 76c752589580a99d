//! Cluster mode with a paused leader: a shard's leader stopped (SIGSTOP)
//! past its lease, during a flush or a compaction, while another instance
//! takes the shard; and an instance whose WAL cannot open giving its shard
//! lock back. Every acknowledged row is checked afterwards.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    exec,
    ledger::LedgerWriter,
};

use crate::cluster::{ask_move, check_exactly_once, create_append, row, shard_of, wait_moved};

/// What the leader is doing when it is paused.
#[derive(Clone, Copy, Debug)]
enum PauseDuring {
    /// Serving writes.
    Writes,
    /// Between uploading a flush's SSTs and committing its manifest edit.
    Flush,
    /// Between writing a compaction's outputs and committing its edit.
    Compaction,
}

/// The pause test of issue 14: SIGSTOP a shard's leader past the node TTL
/// under write load; another instance takes the shard; SIGCONT the old one
/// (whose flush or compaction, when paused in one, then tries to commit);
/// flush, compact and scan for orphans on the new owner; kill -9 it; and
/// check that every acknowledged row is there exactly once.
async fn a_paused_leader_commits_nothing(during: PauseDuring) {
    a_paused_leader_with_followers_commits_nothing(during, 0).await
}

/// The same, with `replicas` followers per shard: the shard fails over by
/// promoting its follower.
async fn a_paused_leader_with_followers_commits_nothing(during: PauseDuring, replicas: u64) {
    let failpoints = match during {
        PauseDuring::Writes => String::new(),
        PauseDuring::Flush => "flush.before_commit=6000".to_string(),
        PauseDuring::Compaction => "compaction.before_commit=6000".to_string(),
    };
    let mut server_env = vec![
        // Orphan scans every 5 s, of files older than 2 s.
        (
            "STRATA_ENGINE__GC_INTERVAL".to_string(),
            "500ms".to_string(),
        ),
        ("STRATA_ENGINE__GC_GRACE".to_string(), "1s".to_string()),
        (
            "STRATA_ENGINE__ORPHAN_MIN_AGE".to_string(),
            "2s".to_string(),
        ),
    ];
    if !failpoints.is_empty() {
        server_env.push(("STRATA_FAILPOINTS".to_string(), failpoints));
    }
    let mut c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        server_env,
        replicas,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "p").await;
    let (shard, old) = shard_of(&c, "p").await;
    let follower = if replicas > 0 {
        Some(crate::cluster_followers::wait_following(&c, shard).await)
    } else {
        None
    };
    let mut clients = Vec::new();
    for s in &c.servers {
        clients.push(s.client().await);
    }
    let writer = LedgerWriter::start(clients, "p");
    writer.progress(100, "before the pause", || c.logs()).await;
    if matches!(during, PauseDuring::Compaction) {
        // Something to compact: two more SSTs.
        let leader = c.servers[old].client().await;
        exec(&leader, "FLUSH TABLE p").await;
        writer.progress(50, "between flushes", || c.logs()).await;
        exec(&leader, "FLUSH TABLE p").await;
    }
    // Start the flush or compaction on the leader; it stops at its
    // failpoint with its files uploaded.
    let stalled = match during {
        PauseDuring::Writes => None,
        PauseDuring::Flush | PauseDuring::Compaction => {
            let leader = c.servers[old].client().await;
            let stmt = if matches!(during, PauseDuring::Flush) {
                "FLUSH TABLE p"
            } else {
                "COMPACT TABLE p"
            };
            let task = tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), leader.sql("", stmt)).await
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.servers[old].log_count("failpoint: pausing") == 0 {
                assert!(Instant::now() < deadline, "the failpoint was not reached");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(task)
        }
    };

    writer.avoid(Some(old));
    c.servers[old].pause();
    // Past the TTL another instance takes the shard, and writes go on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(now) = c.leader_of(shard).await {
            if now != old {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the shard did not move; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer.progress(100, "on the new leader", || c.logs()).await;
    let (_, new) = shard_of(&c, "p").await;
    assert_ne!(new, old);
    if let Some(f) = follower {
        assert_eq!(new, f, "the follower took over");
        assert!(
            c.servers[new].log_count("promoting a follower") > 0,
            "the follower was promoted, not reopened; its log:\n{}",
            c.servers[new].log_tail()
        );
    }

    // The old leader resumes: its stalled flush or compaction tries to
    // commit, and its heartbeat learns of the move.
    c.servers[old].resume();
    if let Some(task) = stalled {
        let outcome = task.await.unwrap();
        assert!(
            matches!(outcome, Ok(Err(_))),
            "the replaced leader's {during:?} must fail, got {outcome:?}; its log:\n{}",
            c.servers[old].log_tail()
        );
    }
    writer.avoid(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.servers[old].log_count("without a flush") == 0
        && c.servers[old].log_count("a newer owner took this shard over") == 0
    {
        assert!(
            Instant::now() < deadline,
            "the old leader did not notice it was replaced; its log:\n{}",
            c.servers[old].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The new owner flushes, compacts and scans for orphans.
    writer
        .progress(100, "after the old leader resumed", || c.logs())
        .await;
    let leader = c.servers[new].client().await;
    exec(&leader, "FLUSH TABLE p").await;
    writer
        .progress(50, "between flushes on the new leader", || c.logs())
        .await;
    exec(&leader, "FLUSH TABLE p").await;
    exec(&leader, "COMPACT TABLE p").await;
    // Two orphan scans' worth of time.
    tokio::time::sleep(Duration::from_secs(11)).await;
    writer
        .progress(50, "after the orphan scans", || c.logs())
        .await;

    // Kill the new owner; the shard moves again and replays.
    writer.avoid(Some(new));
    c.servers[new].kill9();
    writer
        .progress(100, "after kill -9 of the new leader", || c.logs())
        .await;
    let acked = writer.finish().await;

    let reader = c.servers[old].client().await;
    check_exactly_once(&reader, "p", &acked).await;
    eprintln!(
        "pause during {during:?}: {} rows acknowledged, all present exactly once",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_commits_nothing() {
    a_paused_leader_commits_nothing(PauseDuring::Writes).await;
}

/// Issue 16: a paused leader that resumes after its follower was promoted
/// commits nothing, and the ledger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_after_its_follower_was_promoted_commits_nothing() {
    a_paused_leader_with_followers_commits_nothing(PauseDuring::Writes, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_during_a_flush_commits_nothing() {
    a_paused_leader_commits_nothing(PauseDuring::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_during_a_compaction_commits_nothing() {
    a_paused_leader_commits_nothing(PauseDuring::Compaction).await;
}

/// An instance that takes a shard's lock and then fails to open its WAL
/// (the broker is down) gives the lock back. It kept it (chaos seed
/// 13636986120279680227): its heartbeats renewed the lease, so the
/// instance meta moved the shard to next could never take it, and the
/// shard stayed unserved after every service was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_wal_open_gives_the_shard_lock_back() {
    let c = TestCluster::start(ClusterOptions {
        private_services: true,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "lk").await;
    let mut acked = BTreeSet::new();
    for n in 1..=20 {
        assert_eq!(client.write_proxied(row("lk", n)).await.unwrap(), 1);
        acked.insert(n);
    }
    // No balancing or failover moves but the two below.
    let (code, body) = c.meta_post("/schedule/pause").await;
    assert_eq!(code, 200, "{body}");
    let (shard, from) = shard_of(&c, "lk").await;
    let b = (from + 1) % c.servers.len();
    let to = (from + 2) % c.servers.len();

    c.services.stop("kafka");
    ask_move(&c, shard, b).await;
    // B takes the lock and fails to open the shard's WAL.
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.servers[b].log_count("shard transition failed") == 0 {
        assert!(
            Instant::now() < deadline,
            "{} never failed to open the shard without a broker:\n{}",
            c.servers[b].name,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meta moves it on while the broker is still down, then the broker
    // comes back: the third instance must get the lock and serve.
    ask_move(&c, shard, to).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.services.start("kafka");
    wait_moved(&c, "lk", to).await;
    let via = c.servers[to].client().await;
    check_exactly_once(&via, "lk", &acked).await;
    assert_eq!(via.write_proxied(row("lk", 21)).await.unwrap(), 1);
    let (code, body) = c.meta_post("/schedule/resume").await;
    assert_eq!(code, 200, "{body}");
}
