//! A new user's path: create, insert, query with date_bin; the results
//! survive kill -9 and a restart, whether the rows were still in the WAL or
//! already flushed to SSTs.

use strata_integration_tests::{exec, query, StrataProcess};

/// Minute-aligned, so 240 one-second rows make 4 whole minutes.
const BASE: i64 = 1_699_999_980_000;

const BUCKETS: &str = "SELECT date_bin(INTERVAL '1 minute', ts) AS minute, host, count(*) AS n, \
     round(avg(usage), 3) AS avg_usage FROM cpu GROUP BY minute, host ORDER BY minute, host";

async fn load(client: &strata_client::Client) {
    exec(
        client,
        "CREATE TABLE cpu (host STRING TAG, ts TIMESTAMP NOT NULL, usage DOUBLE, TIMESTAMP KEY(ts))",
    )
    .await;
    let mut values = Vec::new();
    for i in 0..240i64 {
        let host = ["a", "b", "c"][(i % 3) as usize];
        values.push(format!(
            "('{host}', {}, {})",
            BASE + i * 1000,
            (i % 17) as f64 / 2.0
        ));
    }
    exec(
        client,
        &format!(
            "INSERT INTO cpu (host, ts, usage) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_kill9_from_wal_and_from_ssts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    load(&client).await;
    let before = query(&client, BUCKETS).await;
    assert_eq!(before.len(), 12, "4 minutes x 3 hosts: {before:?}");
    assert_eq!(before[0][2], "20");

    // Rows only in the WAL.
    server.kill9();
    server.restart().await;
    let client = server.client().await;
    assert_eq!(
        query(&client, BUCKETS).await,
        before,
        "after kill -9 with rows in the WAL"
    );

    // Rewrite some rows (OVERWRITE keeps the newest) and flush them through a
    // clean stop, which writes SSTs, then kill -9 after more writes.
    exec(
        &client,
        &format!("INSERT INTO cpu (host, ts, usage) VALUES ('a', {BASE}, 100.0)"),
    )
    .await;
    server.stop();
    server.restart().await;
    let client = server.client().await;
    let ssts = std::fs::read_dir(dir.path().join("data/store/standalone/shards/0/tables"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(ssts > 0, "a clean stop flushes tables to SSTs");
    exec(
        &client,
        &format!(
            "INSERT INTO cpu (host, ts, usage) VALUES ('b', {}, 50.0)",
            BASE + 1000
        ),
    )
    .await;
    server.kill9();
    server.restart().await;
    let client = server.client().await;
    let after = query(
        &client,
        &format!(
            "SELECT host, usage FROM cpu WHERE ts <= {} ORDER BY ts",
            BASE + 1000
        ),
    )
    .await;
    assert_eq!(
        after,
        vec![
            vec!["a".to_string(), "100.0".to_string()],
            vec!["b".to_string(), "50.0".to_string()]
        ]
    );
    let n = query(&client, "SELECT count(*) FROM cpu").await;
    assert_eq!(
        n,
        vec![vec!["240".to_string()]],
        "overwrites replace rows, they do not add any"
    );
}
