//! Shard split and merge (issue 18, RFC 0006) on real processes over etcd,
//! Kafka and S3, under write and read load: tables handed from one shard to
//! another keep every acknowledged row exactly once (the ledger), reads
//! fail at most with retryable errors, and a split interrupted by a `kill
//! -9` of meta's leader or of the shard's leader finishes.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use strata_client::routed::RoutedClient;
use strata_integration_tests::cluster::{ClusterOptions, TestCluster};

use crate::cluster::{check_exactly_once, create_append, Writer};

/// Queries through every instance in turn, sorting the answers: ok,
/// failed retryably, failed otherwise (with the message).
struct Reader {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    retryable: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(seeds: Vec<String>, tables: &'static [&'static str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let retryable = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (stop, ok, retryable, bad) =
                (stop.clone(), ok.clone(), retryable.clone(), bad.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let endpoint = &seeds[i % seeds.len()];
                    let table = tables[i % tables.len()];
                    match strata_client::Client::connect(endpoint).await {
                        Ok(cl) => {
                            match cl.sql("", &format!("SELECT count(*) FROM {table}")).await {
                                Ok(_) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) if e.is_retryable() => {
                                    retryable.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => bad.lock().unwrap().push(format!("{table}: {e}")),
                            }
                        }
                        // A killed instance.
                        Err(_) => {
                            retryable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self {
            stop,
            ok,
            retryable,
            bad,
            task,
        }
    }

    /// Stops, and checks that no read failed but retryably.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let bad = self.bad.lock().unwrap().clone();
        assert!(
            bad.is_empty(),
            "reads failed with non-retryable errors: {bad:?}"
        );
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(ok > 0, "no read succeeded");
        (ok, self.retryable.load(Ordering::Relaxed))
    }
}

async fn wait_acked(c: &TestCluster, writers: &[Writer], more: usize) {
    let targets: Vec<usize> = writers.iter().map(|w| w.acked().len() + more).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    for (w, n) in writers.iter().zip(targets) {
        while w.acked().len() < n {
            assert!(
                Instant::now() < deadline,
                "a writer makes no progress; logs:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts a split or merge (`POST path`); returns meta's record of it.
async fn start(c: &TestCluster, path: &str) -> serde_json::Value {
    let (code, body) = c.meta_post(path).await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until meta records the procedure `r` done.
async fn wait_done(c: &TestCluster, r: &serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = c.meta_get("/reshape").await;
        if v["current"].is_null() && v["last"]["started_ms"] == r["started_ms"] {
            assert_eq!(v["last"]["step"], "done", "{v}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not done: {v}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Table name → shard, as meta's catalog says.
async fn placement(c: &TestCluster) -> BTreeMap<String, u64> {
    c.meta_get("/tables")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["shard"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The writes paused by handovers, as the instances logged them (ms).
fn pauses(c: &TestCluster) -> Vec<u64> {
    let mut out = Vec::new();
    for s in &c.servers {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("handed tables to another shard"))
        {
            if let Some(ms) = line
                .split("pause_ms=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
            {
                out.push(ms);
            }
        }
    }
    out
}

const TABLES: &[&str] = &["sp0", "sp1", "sp2", "sp3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_and_merge_under_load_keep_every_row_once() {
    let c = TestCluster::start(ClusterOptions {
        servers: 2,
        shard_count: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    for t in TABLES {
        create_append(&client, t).await;
    }
    assert!(placement(&c).await.values().all(|s| *s == 0));
    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writers: Vec<Writer> = TABLES
        .iter()
        .map(|t| Writer::start(Arc::new(RoutedClient::new(seeds.clone())), t))
        .collect();
    let reader = Reader::start(seeds.clone(), TABLES);
    wait_acked(&c, &writers, 100).await;

    // Split shard 0: every second table (by id) goes to a new shard.
    let split = start(&c, "/shards/0/split").await;
    let to = split["to"].as_u64().unwrap();
    assert_eq!(to, 1, "{split}");
    wait_done(&c, &split).await;
    let after_split = placement(&c).await;
    assert_eq!(
        after_split.values().filter(|s| **s == to).count(),
        2,
        "{after_split:?}"
    );
    assert!(c.shards().await.iter().any(|s| s["id"] == to));
    wait_acked(&c, &writers, 100).await;
    // Meta's balancer may place the new shard on the other instance: a
    // new instance gets load by a split and a move.
    c.wait_serving(Duration::from_secs(60)).await;
    wait_acked(&c, &writers, 100).await;

    // Merge it back: its tables return to shard 0, and it is retired.
    let merge = start(&c, &format!("/shards/0/merge?from={to}")).await;
    wait_done(&c, &merge).await;
    assert!(placement(&c).await.values().all(|s| *s == 0));
    assert!(!c.shards().await.iter().any(|s| s["id"] == to));
    wait_acked(&c, &writers, 100).await;

    let (reads_ok, reads_retryable) = reader.finish().await;
    let mut acked_total = 0;
    let mut failures = 0;
    for (w, t) in writers.into_iter().zip(TABLES) {
        failures += w.failures.load(Ordering::Relaxed);
        let acked = w.finish().await;
        acked_total += acked.len();
        check_exactly_once(&client, t, &acked).await;
    }
    let pauses = pauses(&c);
    assert_eq!(pauses.len(), 2, "one handover per operation: {pauses:?}");
    eprintln!(
        "split+merge: {acked_total} rows acknowledged, {failures} write attempts failed; reads: {reads_ok} ok, {reads_retryable} retryable failures; writes paused by the handovers (ms): {pauses:?}"
    );
}

/// A split (of shard 0: kx1 to a new shard) or a merge (of shard 1, with
/// kx1, into shard 0) whose handover is held at a failpoint while `kill`
/// (meta's leader, or the leader of the shard handing kx1 over) is killed
/// with -9 finishes, and the ledger holds.
async fn survives(op: Reshaping, kill: Kill, failpoint: &str) {
    let mut c = TestCluster::start(ClusterOptions {
        metas: if kill == Kill::Meta { 2 } else { 1 },
        servers: 3,
        shard_count: if op == Reshaping::Split { 1 } else { 2 },
        server_env: vec![("STRATA_FAILPOINTS".to_string(), format!("{failpoint}=4000"))],
        ..ClusterOptions::default()
    })
    .await;
    const NAMES: &[&str] = &["kx0", "kx1"];
    let client = c.servers[0].client().await;
    for t in NAMES {
        create_append(&client, t).await;
    }
    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writers: Vec<Writer> = NAMES
        .iter()
        .map(|t| Writer::start(Arc::new(RoutedClient::new(seeds.clone())), t))
        .collect();
    wait_acked(&c, &writers, 100).await;
    let (from, leader) = crate::cluster::shard_of(&c, "kx1").await;

    let split = match op {
        Reshaping::Split => start(&c, "/shards/0/split").await,
        Reshaping::Merge => {
            assert_eq!((from, crate::cluster::shard_of(&c, "kx0").await.0), (1, 0));
            start(&c, "/shards/0/merge?from=1").await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.servers[leader].log_count("failpoint: pausing") == 0 {
        assert!(
            Instant::now() < deadline,
            "the handover never reached {failpoint}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match kill {
        Kill::Meta => {
            let m = c.meta_leader().await.expect("a meta leader");
            c.metas[m].kill9();
        }
        Kill::Leader => c.servers[leader].kill9(),
    }
    wait_done(&c, &split).await;
    let to = split["to"].as_u64().unwrap();
    assert_eq!(placement(&c).await["kx1"], to);
    if op == Reshaping::Merge {
        assert!(!c.shards().await.iter().any(|s| s["id"] == from));
    }
    c.wait_serving(Duration::from_secs(60)).await;
    wait_acked(&c, &writers, 100).await;
    let alive = (0..c.servers.len()).find(|i| *i != leader).unwrap();
    let client = c.servers[alive].client().await;
    for (w, t) in writers.into_iter().zip(NAMES) {
        let acked = w.finish().await;
        check_exactly_once(&client, t, &acked).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    Meta,
    Leader,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reshaping {
    Split,
    Merge,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_finishes_after_meta_is_killed_in_the_middle() {
    survives(Reshaping::Split, Kill::Meta, "handover.before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_finishes_after_the_shard_leader_is_killed_before_the_handover() {
    survives(Reshaping::Split, Kill::Leader, "handover.before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_finishes_after_the_shard_leader_is_killed_after_the_handover() {
    survives(Reshaping::Split, Kill::Leader, "handover.after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_finishes_after_meta_is_killed_in_the_middle() {
    survives(Reshaping::Merge, Kill::Meta, "handover.before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_finishes_after_the_shard_leader_is_killed_after_the_handover() {
    survives(Reshaping::Merge, Kill::Leader, "handover.after_commit").await;
}

const HOT: &[&str] = &["hot0", "hot1", "hot2", "hot3", "hot4", "hot5"];

/// Each instance's write rate (rows/s), averaged over `samples` reads of
/// meta's `/nodes` a second apart.
async fn node_rates(c: &TestCluster, samples: u32) -> BTreeMap<String, f64> {
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for _ in 0..samples {
        for n in c.meta_get("/nodes").await.as_array().unwrap() {
            *sum.entry(n["id"].as_str().unwrap().to_string())
                .or_default() += n["rows_written_per_s"].as_f64().unwrap_or(0.0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sum.values_mut().for_each(|v| *v /= f64::from(samples));
    sum
}

/// Shard → leader, and the shard count.
async fn assignment(c: &TestCluster) -> BTreeMap<u64, String> {
    c.shards()
        .await
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["leader"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The skew test of issue 18: one shard with six tables written at the
/// same rate, on three instances. With balancing by load on, meta splits
/// and moves until every instance writes within 25% of the mean, then
/// leaves the cluster alone; no acknowledged row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balancing_by_load_spreads_one_hot_shard_over_three_instances() {
    let c = TestCluster::start(ClusterOptions {
        servers: 3,
        shard_count: 1,
        meta_toml: "[balance]\nmin_rate = 200.0\nafter_rounds = 4\ncooldown = \"3s\"\n".to_string(),
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    for t in HOT {
        create_append(&client, t).await;
    }
    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writers: Vec<Writer> = HOT
        .iter()
        .map(|t| Writer::start(Arc::new(RoutedClient::new(seeds.clone())), t))
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let settled = loop {
        let rates = node_rates(&c, 3).await;
        let mean = rates.values().sum::<f64>() / rates.len() as f64;
        let spread = rates.values().all(|r| (r - mean).abs() <= mean * 0.25);
        if spread && mean > 0.0 && c.meta_get("/reshape").await["current"].is_null() {
            break rates;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced after 180 s: {rates:?}, shards {:?}\n{}",
            assignment(&c).await,
            c.logs()
        );
    };
    let took = started.elapsed();
    let layout = assignment(&c).await;
    assert!(layout.len() >= 3, "{layout:?}");
    // No flapping: nothing moves for a while.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        assignment(&c).await,
        layout,
        "the balancer kept moving shards"
    );
    let rates = node_rates(&c, 3).await;
    let mean = rates.values().sum::<f64>() / rates.len() as f64;
    assert!(
        rates.values().all(|r| (r - mean).abs() <= mean * 0.3),
        "drifted: {rates:?}"
    );
    let mut acked_total = 0;
    for (w, t) in writers.into_iter().zip(HOT) {
        let acked = w.finish().await;
        acked_total += acked.len();
        check_exactly_once(&client, t, &acked).await;
    }
    eprintln!(
        "balancing by load: spread within 25% after {:.0} s ({settled:?}); {} shards {layout:?}; {acked_total} rows acknowledged; pauses (ms) {:?}",
        took.as_secs_f64(),
        layout.len(),
        pauses(&c)
    );
}
