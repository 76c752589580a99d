//! Partitioned tables (`PARTITION BY KEY(tag) PARTITIONS n`) on a real
//! standalone process: rows written over gRPC, SQL and the InfluxDB line
//! protocol land in the partitions their key hashes to, every query reads
//! them as one table, a filter on the key reads only its partitions, and
//! DDL applies to all of them.

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    exec, http_request, query, StrataProcess,
};

const DDL: &str = "CREATE TABLE pt (host STRING TAG, dc STRING TAG, v DOUBLE, \
                   ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) \
                   PARTITION BY KEY(host) PARTITIONS 4 ENGINE=Analytic WITH (update_mode='APPEND')";

/// How many scans of partitions a query's plan has.
async fn scans(client: &strata_client::Client, sql: &str) -> usize {
    let plan = query(client, &format!("EXPLAIN {sql}")).await;
    plan.iter()
        .map(|row| row[1].matches("StrataScanExec").count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_spreads_rows_prunes_reads_and_drops_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    exec(&client, DDL).await;

    // SHOW CREATE TABLE gives the clause back; SHOW TABLES lists the
    // table, not its partitions; system.tables has the partitions.
    let shown = query(&client, "SHOW CREATE TABLE pt").await;
    assert!(
        shown[0][1].contains("PARTITION BY KEY(`host`) PARTITIONS 4"),
        "{shown:?}"
    );
    let tables = query(&client, "SHOW TABLES").await;
    assert_eq!(tables, [["pt"]]);
    let parts = query(
        &client,
        "SELECT table_name FROM system.tables WHERE table_name LIKE '\\_\\_pt\\_%' ORDER BY table_name",
    )
    .await;
    assert_eq!(parts, [["__pt_0"], ["__pt_1"], ["__pt_2"], ["__pt_3"]]);

    // Writes over three protocols: 8 hosts × (10 gRPC + 1 SQL + 1 line).
    let hosts: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
    for h in &hosts {
        let written = client
            .write(crate::grpc::points("pt", h, 1_700_000_000_000, 10))
            .await
            .unwrap();
        assert_eq!(written, 10);
    }
    let values: Vec<String> = hosts
        .iter()
        .map(|h| format!("('{h}', 'east', 1, 1700000100000)"))
        .collect();
    exec(
        &client,
        &format!(
            "INSERT INTO pt (host, dc, v, ts) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let lines: String = hosts
        .iter()
        .map(|h| format!("pt,host={h},dc=west v=2 1700000200\n"))
        .collect();
    let (code, body) = http_request(
        server.http,
        "POST",
        "/influxdb/v1/write?db=public&precision=s",
        Some(&lines),
    )
    .await
    .unwrap();
    assert_eq!(code, 204, "{body}");

    let counts = query(
        &client,
        "SELECT host, count(*), sum(v) FROM pt GROUP BY host ORDER BY host",
    )
    .await;
    assert_eq!(counts.len(), 8, "{counts:?}");
    for (row, h) in counts.iter().zip(&hosts) {
        assert_eq!(row[0], *h);
        assert_eq!(row[1], "12", "{row:?}");
    }
    // Each host's rows are all in one partition, and the partitions hold
    // every row between them.
    let mut total = 0;
    let mut hosts_seen = 0;
    for i in 0..4 {
        let rows = query(
            &client,
            &format!("SELECT count(*), count(DISTINCT host) FROM __pt_{i}"),
        )
        .await;
        total += rows[0][0].parse::<u64>().unwrap();
        hosts_seen += rows[0][1].parse::<u64>().unwrap();
    }
    assert_eq!((total, hosts_seen), (96, 8));

    // Pruning: a key filter reads only its partitions, with the same rows.
    let all = scans(&client, "SELECT * FROM pt").await;
    assert_eq!(all, 4);
    assert_eq!(
        scans(&client, "SELECT * FROM pt WHERE host = 'h3'").await,
        1
    );
    let two = scans(
        &client,
        "SELECT * FROM pt WHERE host IN ('h3', 'h5') AND v > 0",
    )
    .await;
    assert!((1..=2).contains(&two), "{two}");
    assert_eq!(
        scans(&client, "SELECT * FROM pt WHERE host = 'h3' OR v > 0").await,
        4,
        "an OR reads everything"
    );
    assert_eq!(
        query(&client, "SELECT count(*) FROM pt WHERE host = 'h3'").await,
        [["12"]]
    );
    assert_eq!(
        query(
            &client,
            "SELECT count(*) FROM pt WHERE host IN ('h3', 'h5', 'nope')"
        )
        .await,
        [["24"]]
    );
    assert_eq!(
        query(&client, "SELECT count(*) FROM pt WHERE host = 'nope'").await,
        [["0"]]
    );

    // FLUSH, COMPACT and ALTER apply to every partition; nothing is lost.
    exec(&client, "FLUSH TABLE pt").await;
    exec(&client, "COMPACT TABLE pt").await;
    exec(&client, "ALTER TABLE pt ADD COLUMN note STRING").await;
    exec(
        &client,
        "INSERT INTO pt (host, dc, v, note, ts) VALUES ('h1', 'x', 3, 'new', 1700000300000)",
    )
    .await;
    assert_eq!(
        query(&client, "SELECT count(*), count(note) FROM pt").await,
        [["97", "1"]]
    );
    let partition_columns = query(
        &client,
        "SELECT count(*) FROM information_schema.columns WHERE table_name LIKE '\\_\\_pt\\_%' AND column_name = 'note'",
    )
    .await;
    assert_eq!(
        partition_columns,
        [["0"]],
        "partitions are not listed as tables"
    );

    // A partition named directly takes only its own rows: over SQL never
    // (INSERT goes through the table), over the write protocols only rows
    // whose key hashes to it; a key filter would miss any other.
    let home = |h: &str| {
        let client = client.clone();
        let h = h.to_string();
        async move {
            for i in 0..4 {
                let n = query(
                    &client,
                    &format!("SELECT count(*) FROM __pt_{i} WHERE host = '{h}'"),
                )
                .await;
                if n[0][0] != "0" {
                    return i;
                }
            }
            panic!("{h} is in no partition");
        }
    };
    let h3 = home("h3").await;
    let elsewhere = (h3 + 1) % 4;
    let err = client
        .sql(
            "",
            &format!(
                "INSERT INTO __pt_{h3} (host, dc, v, ts) VALUES ('h3', 'x', 1, 1700000400000)"
            ),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("insert into its partitioned table"),
        "{err}"
    );
    let err = client
        .write(crate::grpc::points(
            &format!("__pt_{elsewhere}"),
            "h3",
            1_700_000_500_000,
            1,
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("belongs to another partition"),
        "{err}"
    );
    let (code, body) = http_request(
        server.http,
        "POST",
        "/influxdb/v1/write?db=public&precision=s",
        Some(&format!("__pt_{elsewhere},host=h3 v=1 1700000600\n")),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    // Its own rows are taken.
    let written = client
        .write(crate::grpc::points(
            &format!("__pt_{h3}"),
            "h3",
            1_700_000_700_000,
            1,
        ))
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert_eq!(
        query(&client, "SELECT count(*) FROM pt WHERE host = 'h3'").await,
        query(
            &client,
            "SELECT count(*) FROM pt WHERE host = 'h3' OR v < -1000"
        )
        .await,
    );

    // A partition cannot be dropped alone; the table goes with them all.
    let err = client.sql("", "DROP TABLE __pt_1").await.unwrap_err();
    assert!(err.to_string().contains("is a partition"), "{err}");
    exec(&client, "DROP TABLE pt").await;
    assert_eq!(
        query(
            &client,
            "SELECT count(*) FROM system.tables WHERE table_name LIKE '%pt%'"
        )
        .await,
        [["0"]]
    );
    let err = client.sql("", "SELECT * FROM __pt_0").await.unwrap_err();
    assert!(err.to_string().contains("__pt_0"), "{err}");

    // The clause survives a crash (the catalog holds it), and the rows
    // (the WAL replays into the partitions).
    exec(&client, DDL).await;
    exec(
        &client,
        "INSERT INTO pt (host, dc, v, ts) VALUES ('a', 'b', 1, 1700000000000)",
    )
    .await;
    drop(client);
    server.kill9();
    server.restart().await;
    let client = server.client().await;
    assert_eq!(
        query(&client, "SELECT count(*) FROM pt WHERE host = 'a'").await,
        [["1"]]
    );
    assert_eq!(scans(&client, "SELECT * FROM pt WHERE host = 'a'").await, 1);
}

/// Meta does not place partitions yet: a cluster refuses the statement
/// with a typed error and stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refuses_partitioned_tables_for_now() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let client = c.servers[0].client().await;
    let err = client.sql("", DDL).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("partitioned tables in cluster mode"),
        "{err}"
    );
    assert_eq!(query(&client, "SELECT 1").await, [["1"]]);
}
