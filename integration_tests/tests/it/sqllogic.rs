//! Runs every `integration_tests/slt/*.slt` file against its own fresh
//! `strata standalone` process, through the gRPC client, and against a
//! three-instance cluster.

use std::path::{Path, PathBuf};

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    slt::StrataDb,
    Services, StrataProcess,
};

pub(crate) fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("slt dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

/// Runs `file` through `client` (with follower reads when `followers`)
/// under `labels`; on failure, the error and `logs()`.
pub(crate) async fn run_file(
    file: &Path,
    client: strata_client::Client,
    followers: bool,
    labels: &[&str],
    logs: impl FnOnce() -> String,
) -> Option<String> {
    let mut runner = sqllogictest::Runner::new(move || {
        let client = client.clone();
        async move {
            let db = StrataDb::new(client);
            Ok(if followers {
                db.reading_followers()
            } else {
                db
            })
        }
    });
    for label in labels {
        runner.add_label(label);
    }
    match runner.run_file_async(file).await {
        Ok(()) => None,
        Err(e) => Some(format!("{}:\n{e}\nlogs:\n{}", file.display(), logs())),
    }
}

fn assert_all_passed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} file(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_pass_against_standalone() {
    run_files(None).await;
}

/// The same files against standalone Strata whose WAL is on Kafka and whose
/// SSTs, manifests and catalog are on S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_pass_on_kafka_and_s3() {
    run_files(Some(Services::from_env())).await;
}

async fn run_files(remote: Option<Services>) {
    let mut failures = Vec::new();
    for file in slt_files() {
        let dir = tempfile::tempdir().unwrap();
        let (args, env) = match &remote {
            Some(s) => s.remote_storage(file.file_stem().and_then(|n| n.to_str()).unwrap_or("slt")),
            None => (Vec::new(), Vec::new()),
        };
        let server = StrataProcess::start_with(&dir.path().join("data"), args, env).await;
        let client = server.client().await;
        failures.extend(run_file(&file, client, false, &[], || server.log_tail()).await);
    }
    assert_all_passed(&failures);
}

/// The same files against a cluster of three instances: each file runs
/// through one instance (a different one per file) while its tables spread
/// over every instance's shards, so that reads, writes and joins cross
/// instances. Files that inspect one node's storage (`system.sst_files`,
/// `EXPLAIN` of local scans) mark those records `skipif cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_pass_against_a_three_instance_cluster() {
    let mut failures = Vec::new();
    for (i, file) in slt_files().into_iter().enumerate() {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let client = cluster.servers[i % cluster.servers.len()].client().await;
        failures.extend(run_file(&file, client, false, &["cluster"], || cluster.logs()).await);
    }
    assert_all_passed(&failures);
}

/// The same files through a compute instance (`--role compute`) of a
/// two-instance cluster: its answers are the leaders' (it reads the SSTs
/// itself and only the unflushed rows from the leaders), DDL and writes go
/// through it. Records that inspect where a scan runs are marked
/// `skipif compute`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_pass_through_a_compute_instance() {
    let mut failures = Vec::new();
    for file in slt_files() {
        let mut cluster = TestCluster::start(ClusterOptions {
            servers: 2,
            shard_count: 4,
            ..Default::default()
        })
        .await;
        let ci = cluster.add_compute().await;
        let client = cluster.computes[ci].client().await;
        let labels = ["cluster", "compute"];
        failures.extend(run_file(&file, client, false, &labels, || cluster.logs()).await);
    }
    assert_all_passed(&failures);
}

/// The same files on a three-instance cluster whose shards each have a
/// follower (`replicas = 1`), every request starting with `SET
/// read_preference = 'follower'`: the tables whose shards the instance
/// follows are read from its follower copies, which first catch up with
/// what the WAL held when the read began, so they answer as the leaders
/// do, right after the writes (the rest are read from their leaders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_pass_reading_followers_of_a_replicated_cluster() {
    let mut failures = Vec::new();
    let mut follower_reads = 0;
    let mut fell_back = 0;
    for (i, file) in slt_files().into_iter().enumerate() {
        let cluster = TestCluster::start(ClusterOptions {
            replicas: 1,
            ..ClusterOptions::default()
        })
        .await;
        let server = &cluster.servers[i % cluster.servers.len()];
        wait_followers_open(&cluster).await;
        let client = server.client().await;
        failures.extend(run_file(&file, client, true, &["cluster"], || cluster.logs()).await);
        follower_reads += metric(server.http, "strata_follower_reads_total").await;
        fell_back += metric(server.http, "strata_follower_reads_behind_total").await;
    }
    assert_all_passed(&failures);
    // The followers did serve reads (not every read went to a leader).
    eprintln!("{follower_reads} reads served by followers, {fell_back} by leaders");
    assert!(follower_reads >= 10, "{follower_reads} follower reads");
    // Each caught up in time: none went to the leader instead.
    assert_eq!(fell_back, 0, "follower reads that fell back to the leader");
}

/// Waits until every shard has a follower open.
async fn wait_followers_open(c: &TestCluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let shards = c.shards().await;
        if !shards.is_empty()
            && shards.iter().all(|s| {
                s["followers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["state"] == "following"))
            })
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "followers did not open: {shards:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A counter's value on an instance's `/metrics`.
async fn metric(http: std::net::SocketAddr, name: &str) -> u64 {
    let (_, body) = strata_integration_tests::http_get(http, "/metrics")
        .await
        .expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
