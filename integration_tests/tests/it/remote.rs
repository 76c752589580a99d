//! Faults of the remote services under a real `strata standalone` running
//! on Kafka and S3: the broker restarting during writes, the S3 server
//! disappearing during a flush, and the Strata process killed and restarted
//! on an empty data directory. No acknowledged row is lost or duplicated.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use strata_client::Client;
use strata_integration_tests::{exec, query, Services, StrataProcess};
use strata_proto::storage::{
    value, Field, FieldGroup, RequestContext, Value, WriteRequest, WriteSeriesEntry,
    WriteTableRequest,
};

fn rows(first: i64, n: i64) -> WriteRequest {
    WriteRequest {
        context: Some(RequestContext {
            database: "public".to_string(),
        }),
        table_requests: vec![WriteTableRequest {
            table: "t".to_string(),
            tag_names: vec![],
            field_names: vec!["n".to_string()],
            entries: vec![WriteSeriesEntry {
                tags: vec![],
                field_groups: (first..first + n)
                    .map(|i| FieldGroup {
                        timestamp: 1_700_000_000_000 + i,
                        fields: vec![Field {
                            name_index: 0,
                            value: Some(Value {
                                value: Some(value::Value::Int64Value(i)),
                            }),
                        }],
                    })
                    .collect(),
            }],
        }],
    }
}

async fn create(client: &Client) {
    exec(
        client,
        "CREATE TABLE t (n BIGINT, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) WITH (update_mode='APPEND')",
    )
    .await;
}

/// Every acknowledged n is present exactly once.
async fn check(client: &Client, acked: &BTreeSet<i64>) {
    let got = query(client, "SELECT n FROM t").await;
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &got {
        *seen.entry(r[0].parse().unwrap()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "rows present twice: {dups:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|n| !seen.contains_key(n))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged rows lost, e.g. {lost:?}",
        acked.iter().filter(|n| !seen.contains_key(n)).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_during_writes_loses_nothing() {
    let services = Services::private();
    let (args, mut env) = services.remote_storage("broker-restart");
    env.push(("STRATA_WAL__PRODUCE_TIMEOUT".to_string(), "3s".to_string()));
    // tansu 0.6.0 breaks when an idempotent producer session spans its
    // restart (a panic in idempotent_message_check that leaves the broker
    // unusable); the WAL's non-idempotent mode never re-sends, so it cannot
    // duplicate either. See docs/operations/kafka-wal.md.
    env.push(("STRATA_WAL__IDEMPOTENCE".to_string(), "false".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with(&dir.path().join("data"), args, env).await;
    let client = server.client().await;
    create(&client).await;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3i64 {
        let (client, acked, errors, stop) =
            (client.clone(), acked.clone(), errors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut next = w << 32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match client.write(rows(next, 10)).await {
                    Ok(_) => acked.lock().unwrap().extend(next..next + 10),
                    Err(e) => {
                        assert!(
                            e.is_retryable(),
                            "a broker outage must give a retryable error: {e}"
                        );
                        errors.lock().unwrap().push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                next += 10;
            }
        }));
    }
    // Let writes flow first (the first produce of a new idempotent producer
    // waits for its producer id).
    let started = Instant::now();
    while acked.lock().unwrap().len() < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = acked.lock().unwrap().len();
    services.stop("kafka");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = acked.lock().unwrap().len();
    services.start("kafka");
    let restarted = Instant::now();
    // Writes resume.
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if acked.lock().unwrap().len() > during + 100 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "writes did not resume after the broker came back"
        );
    }
    println!(
        "acked {before} rows before the outage, {} during, resumed {} ms after restart; {} failed writes",
        during - before,
        restarted.elapsed().as_millis(),
        errors.lock().unwrap().len()
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        !errors.lock().unwrap().is_empty(),
        "the outage should have failed some writes"
    );
    let acked = acked.lock().unwrap().clone();
    check(&client, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_outage_during_flush_keeps_data_and_manifest_consistent() {
    let services = Services::private();
    let (args, mut env) = services.remote_storage("s3-outage");
    env.push((
        "STRATA_OBJECT_STORE__RETRY_TIMEOUT".to_string(),
        "2s".to_string(),
    ));
    env.push((
        "STRATA_OBJECT_STORE__MAX_RETRIES".to_string(),
        "2".to_string(),
    ));
    env.push((
        "STRATA_OBJECT_STORE__REQUEST_TIMEOUT".to_string(),
        "2s".to_string(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start_with(&dir.path().join("data"), args, env).await;
    let client = server.client().await;
    create(&client).await;
    let mut acked = BTreeSet::new();
    client.write(rows(0, 100)).await.unwrap();
    acked.extend(0..100);
    exec(&client, "FLUSH TABLE t").await;

    services.stop("s3");
    // Writes still work: they only need the WAL.
    client.write(rows(100, 100)).await.unwrap();
    acked.extend(100..200);
    let err = client.sql("", "FLUSH TABLE t").await.unwrap_err();
    assert!(
        err.is_retryable(),
        "a flush without S3 fails retryably: {err}"
    );
    // The rows are still served from memory.
    assert_eq!(
        query(&client, "SELECT count(*) FROM t").await,
        vec![vec!["200".to_string()]]
    );
    services.start("s3");

    // The flush goes through once S3 is back, and everything reads back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.sql("", "FLUSH TABLE t").await {
        assert!(Instant::now() < deadline, "flush never recovered: {e}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    check(&client, &acked).await;

    // Restarted on an empty directory, every SST the manifest names exists.
    server.kill9();
    let fresh = tempfile::tempdir().unwrap();
    server.restart_in(&fresh.path().join("data")).await;
    let client = server.client().await;
    check(&client, &acked).await;
    assert_eq!(
        query(&client, "SELECT count(*) FROM t").await,
        vec![vec!["200".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_on_remote_storage_recovers_from_kafka_on_an_empty_data_dir() {
    let services = Services::from_env();
    let (args, mut env) = services.remote_storage("kill9");
    // Small memtables: some rows are in S3 SSTs, the rest only in Kafka.
    env.push((
        "STRATA_ENGINE__DEFAULT_WRITE_BUFFER_SIZE".to_string(),
        "65536".to_string(),
    ));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut server = StrataProcess::start_with(&dirs[0].path().join("data"), args, env).await;
    create(&server.client().await).await;
    let mut acked = BTreeSet::new();
    let mut next = 0i64;
    for (round, dir) in dirs.iter().enumerate().skip(1) {
        let client = server.client().await;
        for _ in 0..40 {
            client.write(rows(next, 50)).await.unwrap();
            acked.extend(next..next + 50);
            next += 50;
        }
        server.kill9();
        // Nothing on local disk is needed: start over on a new directory.
        server.restart_in(&dir.path().join("data")).await;
        println!(
            "round {round}: {} rows acknowledged, restarted on an empty directory",
            acked.len()
        );
    }
    let client = server.client().await;
    check(&client, &acked).await;
    let ssts = query(&client, "SELECT count(*) FROM system.sst_files").await;
    assert_ne!(ssts[0][0], "0", "some rows must have been flushed to S3");
    println!(
        "all {} acknowledged rows back; {} SSTs on S3",
        acked.len(),
        ssts[0][0]
    );
}
