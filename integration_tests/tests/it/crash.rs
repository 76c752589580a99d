//! Crash test: a real `strata standalone` takes concurrent writes and is
//! killed with SIGKILL at random moments, several times. Every acknowledged
//! row must be present exactly once afterwards, including rows that were
//! flushed to SSTs before a crash.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::Rng;
use strata_client::Client;
use strata_integration_tests::{exec, query, StrataProcess};
use strata_proto::storage::{
    value, Field, FieldGroup, RequestContext, Tag, Value, WriteRequest, WriteSeriesEntry,
    WriteTableRequest,
};

const WRITERS: usize = 4;
const ROWS_PER_WRITE: i64 = 25;
const ROUNDS: usize = 5;
const BASE_TS: i64 = 1_700_000_000_000;

fn request(table: &str, writer: usize, first: i64) -> WriteRequest {
    let groups = (first..first + ROWS_PER_WRITE)
        .map(|n| FieldGroup {
            timestamp: BASE_TS + n,
            fields: vec![Field {
                name_index: 0,
                value: Some(Value {
                    value: Some(value::Value::Int64Value(n)),
                }),
            }],
        })
        .collect();
    WriteRequest {
        context: Some(RequestContext {
            database: "public".to_string(),
        }),
        table_requests: vec![WriteTableRequest {
            table: table.to_string(),
            tag_names: vec!["writer".to_string()],
            field_names: vec!["n".to_string()],
            entries: vec![WriteSeriesEntry {
                tags: vec![Tag {
                    name_index: 0,
                    value: Some(Value {
                        value: Some(value::Value::StringValue(format!("w{writer}"))),
                    }),
                }],
                field_groups: groups,
            }],
        }],
    }
}

type Acked = Arc<Mutex<HashMap<&'static str, HashSet<(String, i64)>>>>;

/// Writes until the server goes away; returns the next unused row number.
async fn write_until_error(client: Client, writer: usize, mut next: i64, acked: Acked) -> i64 {
    loop {
        for table in ["crash_append", "crash_overwrite"] {
            let first = next;
            next += ROWS_PER_WRITE;
            match client.write(request(table, writer, first)).await {
                Ok(n) => {
                    assert_eq!(i64::from(n), ROWS_PER_WRITE);
                    let mut acked = acked.lock().unwrap();
                    let set = acked.entry(table).or_default();
                    for k in first..first + ROWS_PER_WRITE {
                        set.insert((format!("w{writer}"), k));
                    }
                }
                Err(_) => return next,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_repeated_kill9() {
    // A tiny write buffer makes flushes frequent, so crashes land before,
    // during and after flushes.
    run_crash_test(
        vec![("STRATA_ENGINE__DEFAULT_WRITE_BUFFER_SIZE", "65536")],
        false,
    )
    .await;
}

/// With compaction merging every two files and garbage collection running
/// constantly, crashes also land during compactions and deletions. After
/// recovery and one orphan scan, the files on disk are exactly those the
/// manifests reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_flush_and_compaction_loses_nothing_and_leaves_no_orphans() {
    run_crash_test(
        vec![
            ("STRATA_ENGINE__DEFAULT_WRITE_BUFFER_SIZE", "65536"),
            ("STRATA_ENGINE__COMPACTION_MIN_FILES", "2"),
            ("STRATA_ENGINE__GC_INTERVAL", "200ms"),
            ("STRATA_ENGINE__GC_GRACE", "0s"),
            ("STRATA_ENGINE__ORPHAN_MIN_AGE", "1s"),
        ],
        true,
    )
    .await;
}

async fn run_crash_test(env: Vec<(&str, &str)>, check_orphans: bool) {
    let dir = tempfile::tempdir().unwrap();
    let env = env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut server = StrataProcess::start_with_env(&dir.path().join("data"), env).await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE crash_append (writer STRING TAG, n BIGINT, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) \
         WITH (update_mode='APPEND')",
    )
    .await;
    exec(
        &client,
        "CREATE TABLE crash_overwrite (writer STRING TAG, n BIGINT, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts))",
    )
    .await;

    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    // Row numbers are never reused, so an unacknowledged row that did reach
    // the WAL can never be confused with a later write.
    let mut next: Vec<i64> = (0..WRITERS).map(|w| (w as i64) << 40).collect();
    for round in 0..ROUNDS {
        let client = server.client().await;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(write_until_error(client.clone(), w, next[w], acked.clone())))
            .collect();
        let pause = rand::rng().random_range(400..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill9();
        for (w, t) in tasks.into_iter().enumerate() {
            next[w] = t.await.unwrap();
        }
        let total: usize = acked.lock().unwrap().values().map(|s| s.len()).sum();
        println!("round {round}: killed after {pause} ms, {total} rows acknowledged so far");
        server.restart().await;
    }

    let client = server.client().await;
    let sst_files =
        strata_integration_tests::files_with_extension(&dir.path().join("data/store"), "parquet")
            .len();
    assert!(sst_files > 0, "the test must exercise flushed rows too");
    let acked = acked.lock().unwrap().clone();
    for table in ["crash_append", "crash_overwrite"] {
        let rows = query(&client, &format!("SELECT writer, n FROM {table}")).await;
        let mut seen: HashMap<(String, i64), usize> = HashMap::new();
        for r in &rows {
            *seen
                .entry((r[0].clone(), r[1].parse().unwrap()))
                .or_default() += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(
            dups.is_empty(),
            "{table}: rows present more than once: {dups:?}"
        );
        let want = &acked[table];
        let missing: Vec<_> = want
            .iter()
            .filter(|k| !seen.contains_key(k))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{table}: {} acknowledged rows lost, e.g. {missing:?}; log:\n{}",
            want.iter().filter(|k| !seen.contains_key(k)).count(),
            server.log_tail()
        );
        println!(
            "{table}: {} acknowledged rows all present once ({} rows in total, {sst_files} SSTs)",
            want.len(),
            rows.len()
        );
    }
    if !check_orphans {
        return;
    }
    // Compaction happened, and after the orphan scan (every 10 GC rounds)
    // every SST file on disk is referenced, and every referenced file exists.
    let levels = query(&client, "SELECT max(level) FROM system.sst_files").await;
    assert_ne!(
        levels[0][0], "0",
        "compaction must have run during the test"
    );
    let store = dir.path().join("data/store");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let referenced: std::collections::BTreeSet<std::path::PathBuf> =
            query(&client, "SELECT path FROM system.sst_files")
                .await
                .into_iter()
                .map(|r| store.join(&r[0]))
                .collect();
        let on_disk: std::collections::BTreeSet<std::path::PathBuf> =
            strata_integration_tests::files_with_extension(&store, "parquet")
                .into_iter()
                .collect();
        let missing: Vec<_> = referenced.difference(&on_disk).collect();
        assert!(
            missing.is_empty(),
            "referenced SSTs are missing: {missing:?}"
        );
        let extra: Vec<_> = on_disk.difference(&referenced).collect();
        if extra.is_empty() {
            println!("{} SSTs on disk, all referenced; no orphans", on_disk.len());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} unreferenced SSTs remain after GC, e.g. {:?}",
            extra.len(),
            extra.first()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
