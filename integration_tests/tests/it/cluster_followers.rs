//! Leader and follower shards (issue 16) on real processes over etcd, Kafka
//! and S3: meta places a follower for every shard on another instance; a
//! `kill -9` of a leader promotes its follower, which reads only the WAL it
//! had not applied; a planned switch hands leadership to the follower. The
//! exactly-once ledger of acknowledged writes is checked after each.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use strata_client::routed::RoutedClient;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_request, query,
};

use crate::cluster::{check_exactly_once, create_append, shard_of, Writer};

/// Waits (up to 60 s) until `shard` has a follower that reports it follows
/// (caught up: no records behind), and returns that server's index.
pub(crate) async fn wait_following(c: &TestCluster, shard: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shards = c.shards().await;
        let s = shards
            .iter()
            .find(|s| s["id"].as_u64() == Some(shard))
            .cloned()
            .unwrap_or_default();
        let leader = s["leader"].as_str().unwrap_or_default().to_string();
        let found = s["followers"].as_array().and_then(|fs| {
            fs.iter().find(|f| {
                f["state"] == "following"
                    && f["lag_records"].as_u64() == Some(0)
                    && f["node"].as_str() != Some(leader.as_str())
            })
        });
        if let Some(f) = found {
            let node = f["node"].as_str().unwrap_or_default();
            if let Some(i) = c.servers.iter().position(|p| p.endpoint() == node) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard} has no caught-up follower: {s}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a write has succeeded that started after `mark`; returns
/// the milliseconds from `mark` to it.
async fn wait_resumed(c: &TestCluster, writer: &Writer, mark: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer.first_ok_after.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 60 s; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.first_ok_after.load(Ordering::Relaxed) - mark
}

async fn wait_acked(writer: &Writer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while writer.acked().len() < n {
        assert!(Instant::now() < deadline, "the writer makes no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_a_leader_promotes_its_follower_and_loses_nothing() {
    let mut c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "ff").await;
    let (shard, victim) = shard_of(&c, "ff").await;
    let follower = wait_following(&c, shard).await;
    assert_ne!(follower, victim);
    // Every shard has a follower on an instance other than its leader's.
    for s in c.shards().await {
        let leader = s["leader"].as_str().unwrap_or_default();
        let fs = s["followers"].as_array().cloned().unwrap_or_default();
        assert_eq!(fs.len(), 1, "{s}");
        assert_ne!(fs[0]["node"].as_str().unwrap_or_default(), leader, "{s}");
    }
    // The follower shows its role in system.shards.
    let f_client = c.servers[follower].client().await;
    let rows = query(
        &f_client,
        &format!("SELECT role, lag_records FROM system.shards WHERE shard_id = {shard}"),
    )
    .await;
    assert_eq!(rows, vec![vec!["follower".to_string(), "0".to_string()]]);

    // Reads from the follower: with the leader stopped (SIGSTOP), a query
    // that prefers followers is answered by the follower's own copy,
    // rows written just before included once it has caught up.
    let values: Vec<String> = (1..=50)
        .map(|n| format!("(-{n}, {})", 1_600_000_000_000i64 + n))
        .collect();
    strata_integration_tests::exec(
        &client,
        &format!("INSERT INTO ff (n, ts) VALUES {}", values.join(", ")),
    )
    .await;
    // A follower may be a moment behind: wait until it shows the rows.
    let follower_count = || async {
        http_request(
            c.servers[follower].http,
            "POST",
            "/sql?read_preference=follower",
            Some(r#"{"query": "SELECT count(*) AS n FROM ff"}"#),
        )
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = follower_count().await;
        if got.as_ref().is_some_and(|(_, b)| b.contains(r#""n":50"#)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never showed the rows: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.servers[victim].pause();
    let asked = follower_count().await;
    c.servers[victim].resume();
    let (code, body) = asked.expect("the follower answered");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""n":50"#), "{body}");
    // A bad preference is refused, and the server stays up.
    let (code, body) = http_request(
        c.servers[follower].http,
        "POST",
        "/sql?read_preference=nearest",
        Some(r#"{"query": "SELECT 1"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");

    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writer = Writer::start(Arc::new(RoutedClient::new(seeds)), "ff");
    wait_acked(&writer, 300).await;
    let killed_at = writer.mark();
    c.servers[victim].kill9();
    let resumed_ms = wait_resumed(&c, &writer, killed_at).await;
    println!("followers: kill -9 of the leader of shard {shard} to the first acknowledged write: {resumed_ms} ms");
    let after = writer.acked().len();
    wait_acked(&writer, after + 200).await;
    let failures = writer.failures.load(Ordering::Relaxed);
    let acked = writer.finish().await;

    let (_, new_leader) = shard_of(&c, "ff").await;
    assert_eq!(new_leader, follower, "the follower took over");
    assert!(
        c.servers[follower].log_count("promoting a follower") > 0,
        "the shard was promoted, not replayed; log:\n{}",
        c.servers[follower].log_tail()
    );
    // Meta places a new follower on the remaining instance.
    let third = (0..3).find(|i| *i != victim && *i != follower).unwrap();
    assert_eq!(wait_following(&c, shard).await, third);

    check_exactly_once(&c.servers[third].client().await, "ff", &acked).await;
    eprintln!(
        "followers: {} rows acknowledged, {failures} attempts failed, writes resumed {resumed_ms} ms after the kill",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switch_hands_the_shard_to_its_follower_under_write_load() {
    let c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "sw").await;
    let (shard, leader) = shard_of(&c, "sw").await;
    let follower = wait_following(&c, shard).await;

    // The balancer would hand the shard back (its old leader, then leading
    // nothing, follows it): an operator switching by hand pauses it.
    let (code, body) = c.meta_post("/schedule/pause").await;
    assert_eq!(code, 200, "{body}");

    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writer = Writer::start(Arc::new(RoutedClient::new(seeds)), "sw");
    wait_acked(&writer, 300).await;
    let mark = writer.mark();
    let (code, body) = c
        .meta_post(&format!(
            "/shards/{shard}/move?node={}",
            c.servers[follower].endpoint()
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    wait_resumed(&c, &writer, mark).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while shard_of(&c, "sw").await.1 != follower {
        assert!(Instant::now() < deadline, "the switch did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = writer.acked().len();
    wait_acked(&writer, after + 200).await;
    let failures = writer.failures.load(Ordering::Relaxed);
    let acked = writer.finish().await;
    eprintln!(
        "followers: switch-leader of shard {shard}: {} rows acknowledged, {failures} attempts failed",
        acked.len()
    );

    let (_, now) = shard_of(&c, "sw").await;
    assert_eq!(now, follower);
    assert!(c.servers[follower].log_count("promoting a follower") > 0);
    // The old leader follows the shard now.
    assert_eq!(wait_following(&c, shard).await, leader);
    check_exactly_once(&c.servers[leader].client().await, "sw", &acked).await;
}
