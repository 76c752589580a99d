//! Storage behaviour under load, against a real process: bounded memory
//! under sustained ingest, and TTL-expired data leaving storage.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use strata_integration_tests::{exec, files_with_extension, query, StrataProcess};
use strata_proto::storage::{
    value, Field, FieldGroup, RequestContext, Tag, Value, WriteRequest, WriteSeriesEntry,
    WriteTableRequest,
};

fn batch(writer: usize, first: i64, rows: i64) -> WriteRequest {
    let f = |v: f64| {
        Some(Value {
            value: Some(value::Value::Float64Value(v)),
        })
    };
    let entries = (0..10)
        .map(|series| WriteSeriesEntry {
            tags: vec![Tag {
                name_index: 0,
                value: Some(Value {
                    value: Some(value::Value::StringValue(format!("host-{writer}-{series}"))),
                }),
            }],
            field_groups: (0..rows / 10)
                .map(|i| {
                    let t = first + i;
                    FieldGroup {
                        timestamp: t * 1000,
                        fields: (0..5)
                            .map(|k| Field {
                                name_index: k,
                                value: f((t * (k as i64 + 1)) as f64),
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    WriteRequest {
        context: Some(RequestContext {
            database: "public".to_string(),
        }),
        table_requests: vec![WriteTableRequest {
            table: "ingest".to_string(),
            tag_names: vec!["host".to_string()],
            field_names: (0..5).map(|k| format!("f{k}")).collect(),
            entries,
        }],
    }
}

/// Ingests many times the write buffer's hard limit. Memory stays bounded:
/// the soft limit flushes, the hard limit makes writers wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_far_beyond_the_write_buffer_keeps_memory_bounded() {
    const HARD: u64 = 16 << 20;
    const WRITERS: usize = 4;
    const ROWS_PER_WRITE: i64 = 5_000;
    const TOTAL_ROWS: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        vec![
            (
                "STRATA_ENGINE__WRITE_BUFFER_SOFT_LIMIT".to_string(),
                "8MB".to_string(),
            ),
            (
                "STRATA_ENGINE__WRITE_BUFFER_HARD_LIMIT".to_string(),
                "16MB".to_string(),
            ),
            (
                "STRATA_ENGINE__DEFAULT_WRITE_BUFFER_SIZE".to_string(),
                "4MB".to_string(),
            ),
            (
                "STRATA_ENGINE__WRITE_STALL_TIMEOUT".to_string(),
                "60s".to_string(),
            ),
        ],
    )
    .await;
    let baseline = server.rss_bytes().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = server.client().await;
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = 0i64;
            while written.load(Ordering::Relaxed) < TOTAL_ROWS {
                let n = client.write(batch(w, next, ROWS_PER_WRITE)).await.unwrap();
                next += ROWS_PER_WRITE / 10;
                written.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }));
    }
    let mut peak = baseline;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(server.rss_bytes().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = written.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let client = server.client().await;
    let counted = query(&client, "SELECT count(*) FROM ingest").await;
    assert_eq!(counted[0][0], rows.to_string());
    let (_, metrics) = strata_integration_tests::http_get(server.http, "/metrics")
        .await
        .unwrap();
    let stalls = metrics
        .lines()
        .find(|l| l.starts_with("strata_write_stalls_total"))
        .unwrap_or("strata_write_stalls_total ?")
        .to_string();
    // About 80 bytes per row in memtables: the data is ~10x the hard limit.
    println!(
        "ingested {rows} rows in {elapsed:.1}s ({:.0} rows/s); RSS baseline {} MiB, peak {} MiB; hard limit {} MiB; {stalls}",
        rows as f64 / elapsed,
        baseline >> 20,
        peak >> 20,
        HARD >> 20
    );
    assert!(
        peak < baseline + 320 * 1024 * 1024,
        "RSS grew from {} MiB to {} MiB",
        baseline >> 20,
        peak >> 20
    );
}

/// Expired data disappears from queries at once, and from storage within
/// the GC interval, without any manual command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_data_leaves_storage_within_the_gc_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        vec![
            (
                "STRATA_ENGINE__GC_INTERVAL".to_string(),
                "300ms".to_string(),
            ),
            ("STRATA_ENGINE__GC_GRACE".to_string(), "0s".to_string()),
        ],
    )
    .await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE t (h STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts)) WITH (ttl='7d', segment_duration='1h')",
    )
    .await;
    exec(&client, "INSERT INTO t VALUES ('a', now() - INTERVAL '2 hours', 1.0), ('b', now() - INTERVAL '3 hours', 2.0)").await;
    exec(&client, "FLUSH TABLE t").await;
    let store = dir.path().join("data/store");
    assert_eq!(files_with_extension(&store, "parquet").len(), 2);

    exec(&client, "ALTER TABLE t MODIFY SETTING ttl='1h'").await;
    assert_eq!(
        query(&client, "SELECT count(*) FROM t").await,
        vec![vec!["0".to_string()]]
    );

    let started = Instant::now();
    while !files_with_extension(&store, "parquet").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "expired SSTs still on disk after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "expired SSTs deleted {} ms after the TTL change",
        started.elapsed().as_millis()
    );
    assert_eq!(
        query(&client, "SELECT count(*) FROM system.sst_files").await,
        vec![vec!["0".to_string()]]
    );
}
