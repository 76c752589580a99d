//! Load in heartbeats (issue 18's first part): each instance reports, per
//! shard it leads, the rows and bytes written and the scans and rows
//! scanned per second over its last heartbeat interval, the bytes in the
//! shard's memtables and its WAL backlog, and for the process its CPU use
//! and resident memory. Meta shows them (`GET /shards`, `GET /nodes`, so
//! `strata admin shards` / `nodes`), and each instance's `/metrics` has
//! `strata_shard_load`. On real meta, etcd, Kafka and S3.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

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
    let (busy, _) = shard_of(&c, "busy").await;

    // Writes and reads of `busy` until the checks below are done; a shard
    // with no table reports no load.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
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
    // Every row is at least a byte of WAL payload, and each scan of the
    // written table returns rows.
    let f = |k: &str| loaded[k].as_f64().unwrap();
    assert!(
        f("bytes_written_per_s") >= f("rows_written_per_s"),
        "{loaded}"
    );
    assert!(f("rows_scanned_per_s") >= f("scans_per_s"), "{loaded}");
    // The shards without a table, as their leaders report them: idle.
    let shards = c.shards().await;
    let idle: Vec<&Value> = shards
        .iter()
        .filter(|s| s["id"] != busy && s.get("rows_written_per_s").is_some())
        .collect();
    assert!(!idle.is_empty(), "no other shard reported: {shards:?}");
    for s in idle {
        assert_eq!(s["rows_written_per_s"], 0.0, "an idle shard: {s}");
        assert_eq!(s["scans_per_s"], 0.0, "an idle shard: {s}");
        assert_eq!(s["memtable_bytes"], 0, "an idle shard: {s}");
    }
    // The node leading `busy` sums its shards; every process reports its
    // memory, and one its CPU use.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, leader) = shard_of(&c, "busy").await;
        let nodes = c.meta_get("/nodes").await;
        let nodes = nodes.as_array().unwrap().clone();
        let endpoint = c.servers[leader].endpoint();
        let summed = nodes.iter().any(|n| {
            n["endpoint"] == endpoint.as_str()
                && n["rows_written_per_s"].as_f64().unwrap_or(0.0) > 0.0
        });
        let rss = nodes
            .iter()
            .all(|n| n["rss_bytes"].as_u64().unwrap_or(0) > 1 << 20);
        let cpu = nodes
            .iter()
            .any(|n| n["cpu_cores"].as_f64().unwrap_or(0.0) > 0.0);
        let (_, metrics) = http_get(c.servers[leader].http, "/metrics").await.unwrap();
        let needle = format!("strata_shard_load{{kind=\"memtable_bytes\",shard=\"{busy}\"}}");
        if summed && rss && cpu && metrics.contains(&needle) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {nodes:?}, /metrics has {needle}: {}",
            metrics.contains(&needle)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

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
