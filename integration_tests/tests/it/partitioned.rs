//! Partitioned tables (`PARTITION BY KEY(tag) PARTITIONS n`) on a real
//! standalone process: rows written over gRPC, SQL and the InfluxDB line
//! protocol land in the partitions their key hashes to, every query reads
//! them as one table, a filter on the key reads only its partitions, and
//! DDL applies to all of them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use strata_client::routed::RoutedClient;
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

/// Scans of partitions in a cluster: local partitions are
/// `StrataScanExec`s, remote ones `RemoteScanExec`s (the SQL their leaders
/// run, when the plan runs).
async fn cluster_scans(client: &strata_client::Client, sql: &str) -> usize {
    let plan = query(client, &format!("EXPLAIN {sql}")).await;
    plan.iter()
        .filter(|row| row[0] == "physical_plan")
        .map(|row| {
            row[1].matches("StrataScanExec").count() + row[1].matches("RemoteScanExec").count()
        })
        .sum()
}

/// A ledger writer: each request carries 4 rows, each with its own
/// timestamp `t` (and `v = t`) on its own host (of 16), so that most
/// requests reach several partitions; it goes through a routed client
/// (which sends a partitioned table's rows to whichever instance it
/// asked, and that instance to each partition's leader). A failed request
/// is not retried: its rows are not acknowledged (some may be written).
struct Ledger {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl Ledger {
    fn start(client: Arc<RoutedClient>, table: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let task = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut failures = 0;
                let mut k = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let ts: Vec<i64> = (k..k + 4).map(|k| 1_710_000_000_000 + k).collect();
                    let mut request = crate::grpc::points(table, "w0", ts[0], 1);
                    request.table_requests = (k..k + 4)
                        .zip(&ts)
                        .flat_map(|(k, t)| {
                            crate::grpc::points(table, &format!("w{}", k % 16), *t, 1)
                                .table_requests
                        })
                        .collect();
                    match client.write(request).await {
                        Ok(_) => {
                            acked.lock().unwrap().extend(ts);
                        }
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    k += 4;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                failures
            })
        };
        Self { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (BTreeSet<i64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.acked.lock().unwrap().clone(), failures)
    }
}

/// A partitioned table on a 3-instance cluster: meta spreads its
/// partitions over the shards and so over every instance; writes over
/// gRPC (routed, without proxy mode), SQL and the line protocol reach
/// every partition's leader from any instance; every instance reads the
/// whole table, pruned by the key; ALTER and DROP apply to all partitions
/// in one meta transaction; and a kill -9 of an instance leading some
/// partitions loses and duplicates no acknowledged row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_table_spreads_over_a_cluster_and_survives_a_kill() {
    let mut c = TestCluster::start(ClusterOptions::default()).await;
    let client = c.servers[0].client().await;
    exec(
        &client,
        "CREATE TABLE pc (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) \
         PARTITION BY KEY(host) PARTITIONS 6 WITH (update_mode='APPEND')",
    )
    .await;
    // A table created through one instance takes writes through the others
    // at once: each was told of the partitions it leads, and takes meta's
    // catalog for the rest (a write answered "catalog changed" before).
    exec(
        &client,
        "CREATE TABLE pnew (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) \
         PARTITION BY KEY(host) PARTITIONS 8",
    )
    .await;
    for s in &c.servers[1..] {
        // Written the moment the instance shows the table (meta's
        // announcement: the table and the partitions it leads), before a
        // heartbeat brings the rest.
        let sc = s.client().await;
        for _ in 0..500 {
            if query(&sc, "SHOW TABLES")
                .await
                .iter()
                .any(|r| r[0] == "pnew")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lines: String = (0..16)
            .map(|i| format!("pnew,host=n{i} v=1 1700000000\n"))
            .collect();
        let (code, body) = http_request(
            s.http,
            "POST",
            "/influxdb/v1/write?db=public&precision=s",
            Some(&lines),
        )
        .await
        .unwrap();
        assert_eq!(code, 204, "{body}");
    }
    assert_eq!(query(&client, "SELECT count(*) FROM pnew").await, [["16"]]);
    exec(&client, "DROP TABLE pnew").await;

    // IF NOT EXISTS is a no-op; a different shape is a conflict.
    exec(
        &client,
        "CREATE TABLE IF NOT EXISTS pc (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, \
         TIMESTAMP KEY(ts)) PARTITION BY KEY(host) PARTITIONS 6 WITH (update_mode='APPEND')",
    )
    .await;
    let err = client
        .sql(
            "",
            "CREATE TABLE IF NOT EXISTS pc (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, \
             TIMESTAMP KEY(ts)) WITH (update_mode='APPEND')",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // Six partitions on six shards, led by all three instances; every
    // instance shows the same placement.
    let placement = "SELECT partition, partition_table, shard_id, leader FROM system.partitions \
                     WHERE table_name = 'pc' ORDER BY partition";
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = query(&c.servers[2].client().await, placement).await;
        if rows.len() == 6 && rows.iter().all(|r| r[3] != "NULL" && !r[3].is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 6, "{rows:?}");
    let shards: BTreeSet<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    let leaders: BTreeSet<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(shards.len(), 6, "{rows:?}");
    assert_eq!(leaders.len(), 3, "{rows:?}");
    assert_eq!(query(&client, "SHOW TABLES").await, [["pc"]]);
    let shown = query(&c.servers[1].client().await, "SHOW CREATE TABLE pc").await;
    assert!(
        shown[0][1].contains("PARTITION BY KEY(`host`) PARTITIONS 6"),
        "{shown:?}"
    );

    // Writes: 12 hosts over gRPC through a routed client (not proxy
    // mode), one INSERT through server 1, one line per host through
    // server 2.
    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let routed = Arc::new(RoutedClient::new(seeds));
    let hosts: Vec<String> = (0..12).map(|i| format!("h{i}")).collect();
    for h in &hosts {
        let written = routed
            .write(crate::grpc::points("pc", h, 1_700_000_000_000, 10))
            .await
            .unwrap();
        assert_eq!(written, 10);
    }
    let values: Vec<String> = hosts
        .iter()
        .map(|h| format!("('{h}', 1, 1700000100000)"))
        .collect();
    exec(
        &c.servers[1].client().await,
        &format!("INSERT INTO pc (host, v, ts) VALUES {}", values.join(", ")),
    )
    .await;
    let lines: String = hosts
        .iter()
        .map(|h| format!("pc,host={h} v=2 1700000200\n"))
        .collect();
    let (code, body) = http_request(
        c.servers[2].http,
        "POST",
        "/influxdb/v1/write?db=public&precision=s",
        Some(&lines),
    )
    .await
    .unwrap();
    assert_eq!(code, 204, "{body}");

    // Every instance reads the whole table, and each partition holds only
    // its own hosts.
    for s in &c.servers {
        let client = s.client().await;
        let counts = query(
            &client,
            "SELECT host, count(*) FROM pc GROUP BY host ORDER BY host",
        )
        .await;
        assert_eq!(counts.len(), 12, "{counts:?}");
        assert!(counts.iter().all(|r| r[1] == "12"), "{counts:?}");
    }
    // Distributed plans: the partial aggregate (and a sort's first rows)
    // of each partition led elsewhere runs on its leader; EXPLAIN shows
    // each part and where it runs, EXPLAIN ANALYZE the rows each returned.
    let grouped = "SELECT host, count(*), avg(v) FROM pc GROUP BY host";
    let plan = query(&client, &format!("EXPLAIN {grouped}")).await;
    let physical: Vec<&str> = plan
        .iter()
        .filter(|r| r[0] == "physical_plan")
        .flat_map(|r| r[1].lines())
        .collect();
    let remote: Vec<&&str> = physical
        .iter()
        .filter(|l| l.contains("RemotePlanExec"))
        .collect();
    // Servers 1 and 2 lead 4 of the 6 partitions.
    assert_eq!(remote.len(), 4, "{physical:#?}");
    assert!(
        remote
            .iter()
            .all(|l| l.contains("runs=[AggregateExec: mode=Partial, gby=[host@0 as host]")),
        "{physical:#?}"
    );
    let partials = physical
        .iter()
        .filter(|l| l.contains("AggregateExec: mode=Partial"))
        .count();
    assert_eq!(partials, 6, "4 sent, 2 here: {physical:#?}");
    let analyzed = query(&client, &format!("EXPLAIN ANALYZE {grouped}")).await;
    let text: String = analyzed.iter().map(|r| r[1].clone()).collect();
    let returned: usize = text
        .lines()
        .filter(|l| l.contains("RemotePlanExec"))
        .map(|l| {
            let n = l.split("output_rows=").nth(1).unwrap();
            n[..n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len())]
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    // Partial states, not rows: at most one per host and scan partition
    // of the leader (2 here) of each remote partition, where the rows of
    // the hosts (12 each) number ~100.
    assert!((1..=24).contains(&returned), "{text}");
    let top = query(
        &client,
        "EXPLAIN SELECT host, v, ts FROM pc ORDER BY v DESC, host LIMIT 3",
    )
    .await;
    let top: String = top.iter().map(|r| r[1].clone()).collect();
    assert_eq!(
        top.lines()
            .filter(|l| l.contains("RemotePlanExec") && l.contains("TopK(fetch=3)"))
            .count(),
        4,
        "{top}"
    );
    let rows = query(
        &c.servers[2].client().await,
        "SELECT host, v, ts FROM pc ORDER BY v DESC, host LIMIT 3",
    )
    .await;
    // Every host's newest gRPC point has v = 1700000000009.
    let hosts: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(hosts, ["h0", "h1", "h10"], "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r[1].parse::<f64>().ok() == Some(1_700_000_000_009.0)),
        "{rows:?}"
    );

    let mut total = 0;
    for i in 0..6 {
        let rows = query(&client, &format!("SELECT count(*) FROM __pc_{i}")).await;
        total += rows[0][0].parse::<u64>().unwrap();
    }
    assert_eq!(total, 144);

    // Pruning: a key filter reads one partition, wherever it is.
    for s in &c.servers {
        let client = s.client().await;
        assert_eq!(cluster_scans(&client, "SELECT * FROM pc").await, 6);
        assert_eq!(
            cluster_scans(&client, "SELECT * FROM pc WHERE host = 'h3'").await,
            1
        );
        assert_eq!(
            query(&client, "SELECT count(*) FROM pc WHERE host = 'h3'").await,
            [["12"]]
        );
    }

    // EXPLAIN ANALYZE shows what each leader returned: the rows of its
    // partition that pass the pushed-down filter.
    let analyzed = query(&client, "EXPLAIN ANALYZE SELECT host FROM pc WHERE v > 1.5").await;
    let plan = analyzed
        .iter()
        .map(|r| r[1].clone())
        .collect::<Vec<_>>()
        .join("\n");
    let remote: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("RemoteScanExec"))
        .collect();
    assert!(!remote.is_empty(), "{plan}");
    assert!(
        remote
            .iter()
            .all(|l| l.contains("WHERE") && l.contains("output_rows=")),
        "{plan}"
    );
    let remote_rows: usize = remote
        .iter()
        .map(|l| {
            let n = l.split("output_rows=").nth(1).unwrap();
            n.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(remote_rows > 0 && remote_rows <= 12 * 11, "{plan}");

    // ALTER through one instance, a write with the new column through
    // another, read through the third.
    exec(
        &c.servers[1].client().await,
        "ALTER TABLE pc ADD COLUMN note STRING",
    )
    .await;
    exec(
        &c.servers[2].client().await,
        "INSERT INTO pc (host, v, note, ts) VALUES ('h1', 3, 'new', 1700000300000), \
         ('h7', 3, 'new', 1700000300000)",
    )
    .await;
    assert_eq!(
        query(&client, "SELECT count(*), count(note) FROM pc").await,
        [["146", "2"]]
    );

    // A kill -9 of an instance leading some partitions, under a steady
    // write load: nothing acknowledged is lost or doubled.
    let ledger = Ledger::start(
        Arc::new(RoutedClient::new(vec![
            c.servers[0].endpoint(),
            c.servers[1].endpoint(),
        ])),
        "pc",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.acked() < 400 {
        assert!(Instant::now() < deadline, "the writer makes no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.servers[2].kill9();
    let before = ledger.acked();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let serving = c.shards().await.iter().all(|s| s["state"] == "serving");
        if serving && ledger.acked() > before + 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume on the partitions' new leaders:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (acked, failures) = ledger.finish().await;
    eprintln!(
        "partitioned failover: {} rows acknowledged, {failures} attempts failed",
        acked.len()
    );
    let got = query(&client, "SELECT v FROM pc WHERE ts >= 1710000000000").await;
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &got {
        *seen.entry(r[0].parse::<f64>().unwrap() as i64).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "rows present twice: {dups:?}");
    let lost: Vec<_> = acked.iter().filter(|t| !seen.contains_key(t)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        query(&client, "SELECT count(*) FROM pc WHERE ts < 1710000000000").await,
        [["146"]]
    );

    // DROP through one instance removes the table and its partitions from
    // meta and from every instance.
    let err = client.sql("", "DROP TABLE __pc_2").await.unwrap_err();
    assert!(err.to_string().contains("is a partition"), "{err}");
    exec(&c.servers[1].client().await, "DROP TABLE pc").await;
    let tables = c.meta_get("/tables").await.to_string();
    assert!(!tables.contains("pc"), "{tables}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = query(
            &client,
            "SELECT count(*) FROM system.partitions WHERE table_name = 'pc'",
        )
        .await;
        if left == [["0"]] {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = client.sql("", "SELECT * FROM pc").await.unwrap_err();
    assert!(err.to_string().contains("pc"), "{err}");
}
