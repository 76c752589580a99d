//! Load in heartbeats (issue 18's first part): each instance reports, per
//! shard it leads, the rows and bytes written and the scans and rows
//! scanned per second over its last heartbeat interval, the bytes in the
//! shard's memtables and its WAL backlog, and for the process its CPU use
//! and resident memory. Meta shows them (`GET /shards`, `GET /nodes`, so
//! `strata admin shards` / `nodes`), and each instance's `/metrics` has
//! `strata_shard_load`. On real meta, etcd, Kafka and S3.

use std::time::{Duration, Instant};

use serde_json::Value;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    exec, http_get, query,
};

use crate::cluster::shard_of;

fn shard(shards: &[Value], id: u64) -> Value {
    shards
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no shard {id} in {shards:?}"))
}

/// Polls meta's `/shards` until `ok` holds for shard `id` (at most 30 s).
async fn wait_shard(c: &TestCluster, id: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = shard(&c.shards().await, id);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: shard {id} is {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_each_shards_load() {
    let c = TestCluster::start(ClusterOptions {
        servers: 2,
        shard_count: 4,
        ..Default::default()
    })
    .await;
    let client = c.servers[0].client().await;
    exec(
        &client,
        "CREATE TABLE busy (host STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts))",
    )
    .await;
    let (busy, leader) = shard_of(&c, "busy").await;

    // Writes and reads of `busy` for a few heartbeats; a shard with no
    // table reports no load.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            while started.elapsed() < Duration::from_secs(6) {
                let values: Vec<String> = (0..50)
                    .map(|k| format!("('h{k}', {}, {k}.5)", 1_700_000_000_000 + i * 50 + k))
                    .collect();
                exec(
                    &client,
                    &format!("INSERT INTO busy VALUES {}", values.join(", ")),
                )
                .await;
                query(&client, "SELECT count(*) FROM busy").await;
                i += 1;
            }
            i * 50
        })
    };
    let loaded = wait_shard(&c, busy, "written and scanned", |s| {
        s["rows_written_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["bytes_written_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["scans_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["rows_scanned_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["memtable_bytes"].as_u64().unwrap_or(0) > 0
            && s["wal_backlog"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let shards = c.shards().await;
    for s in &shards {
        if s["id"] != busy {
            assert_eq!(s["rows_written_per_s"], 0.0, "an idle shard: {s}");
            assert_eq!(s["scans_per_s"], 0.0, "an idle shard: {s}");
            assert_eq!(s["memtable_bytes"], 0, "an idle shard: {s}");
        }
    }
    // The node view sums its shards; every process reports its memory,
    // and the busy one its CPU.
    let nodes = c.meta_get("/nodes").await;
    let nodes = nodes.as_array().unwrap();
    let busy_node = nodes
        .iter()
        .find(|n| n["endpoint"] == c.servers[leader].endpoint().as_str())
        .unwrap();
    assert!(
        busy_node["rows_written_per_s"].as_f64().unwrap() > 0.0,
        "{busy_node}"
    );
    for n in nodes {
        assert!(n["rss_bytes"].as_u64().unwrap() > 1 << 20, "{n}");
    }
    let written = writer.await.unwrap();
    // A rate is per second over about one heartbeat: no more than the
    // writer could have sent (it ran 6 s).
    let rate = loaded["rows_written_per_s"].as_f64().unwrap();
    assert!(
        rate <= written as f64,
        "{rate} rows/s of {written} rows: {loaded}"
    );
    let (_, metrics) = http_get(c.servers[leader].http, "/metrics").await.unwrap();
    let needle = format!("strata_shard_load{{kind=\"memtable_bytes\",shard=\"{busy}\"}}");
    assert!(metrics.contains(&needle), "no {needle} in /metrics");
    let cpu = c
        .meta_get("/nodes")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cpu_cores"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(cpu > 0.0, "no instance reported CPU use");

    // Idle and flushed: rates back to zero, nothing in memory, no backlog.
    exec(&client, "FLUSH TABLE busy").await;
    wait_shard(&c, busy, "idle and flushed", |s| {
        s["rows_written_per_s"] == 0.0
            && s["scans_per_s"] == 0.0
            && s["memtable_bytes"] == 0
            && s["wal_backlog"] == 0
    })
    .await;
}
