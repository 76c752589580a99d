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
    let dir = tempfile::tempdir().unwrap();
    // A tiny write buffer makes flushes frequent, so crashes land before,
    // during and after flushes.
    let mut server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        vec![(
            "STRATA_ENGINE__DEFAULT_WRITE_BUFFER_SIZE".to_string(),
            "65536".to_string(),
        )],
    )
    .await;
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
    let sst_files = walk(&dir.path().join("data/store"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
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
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
