//! Compute instances (`strata server --role compute`) on a real cluster
//! (etcd, the Kafka broker, the S3 server): meta gives them no shard; they
//! read tables' SSTs from the object store themselves and only the rows not
//! flushed yet from the leaders, and answer exactly what the leaders answer,
//! a row acknowledged a moment before included, while the leaders flush
//! under them.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    exec, query,
};

const CPU: &str = "CREATE TABLE cpu (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, \
                   TIMESTAMP KEY(ts)) ENGINE=Analytic WITH (update_mode='APPEND')";
const KV: &str = "CREATE TABLE kv (k STRING TAG, v BIGINT, ts TIMESTAMP NOT NULL, \
                  TIMESTAMP KEY(ts)) ENGINE=Analytic WITH (update_mode='OVERWRITE')";
const PC: &str = "CREATE TABLE pc (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, \
                  TIMESTAMP KEY(ts)) PARTITION BY KEY(host) PARTITIONS 4 \
                  ENGINE=Analytic WITH (update_mode='APPEND')";

/// Waits until `client` lists every table of `names`.
async fn wait_tables(client: &strata_client::Client, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown: Vec<String> = match client.sql("", "SHOW TABLES").await {
            Ok(strata_client::SqlOutput::Rows(b)) => strata_integration_tests::rows_as_strings(&b)
                .into_iter()
                .map(|r| r[0].clone())
                .collect(),
            _ => Vec::new(),
        };
        if names.iter().all(|n| shown.iter().any(|s| s == n)) {
            return;
        }
        assert!(Instant::now() < deadline, "tables never shown: {shown:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one number a query answers.
async fn number(client: &strata_client::Client, sql: &str) -> String {
    let rows = query(client, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_instance_reads_ssts_itself_and_sees_every_acknowledged_row() {
    let mut c = TestCluster::start(ClusterOptions {
        servers: 2,
        shard_count: 4,
        ..Default::default()
    })
    .await;
    let ci = c.add_compute().await;
    let compute_node = c.computes[ci].endpoint();
    let data = c.servers[0].client().await;
    let compute = c.computes[ci].client().await;

    // Meta knows it as a compute instance, gives it no shard, and refuses
    // to move one there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = c.meta_get("/nodes").await;
        let me = nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == compute_node.as_str()))
            .cloned();
        if let Some(me) = me {
            assert_eq!(me["role"], "compute", "{me}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meta never listed {compute_node}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = c
        .meta_post(&format!("/shards/0/move?node={compute_node}"))
        .await;
    assert_ne!(code, 200, "a shard moved to a compute instance: {body}");
    assert!(body.contains("compute"), "{body}");

    exec(&data, CPU).await;
    exec(&data, KV).await;
    exec(&data, PC).await;
    wait_tables(&compute, &["cpu", "kv", "pc"]).await;

    // A ledger of acknowledged writes, each checked on the compute instance
    // the moment it is acknowledged, while the leaders flush under it (a
    // flush between the compute instance's manifest read and its request
    // for the unflushed rows is the race the cut must survive).
    let flushing = Arc::new(AtomicBool::new(true));
    let flusher = {
        let flushing = flushing.clone();
        let client = c.servers[1].client().await;
        tokio::spawn(async move {
            let mut flushes = 0u32;
            while flushing.load(Ordering::Relaxed) {
                for t in ["cpu", "kv"] {
                    if client.sql("", &format!("FLUSH TABLE {t}")).await.is_ok() {
                        flushes += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            flushes
        })
    };
    // Readers on the compute instance at the same time as the ledger's own
    // reads (their manifest re-reads race each other): each count lies
    // between the rows acknowledged before it was asked and those
    // acknowledged after it answered (plus the one in flight).
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let flushing = flushing.clone();
        let acked = acked.clone();
        let client = c.computes[ci].client().await;
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while flushing.load(Ordering::Relaxed) {
                let low = acked.load(Ordering::Acquire);
                let n: u64 = number(&client, "SELECT count(*) FROM cpu")
                    .await
                    .parse()
                    .unwrap();
                let high = acked.load(Ordering::Acquire) + 1;
                assert!(
                    (low..=high).contains(&n),
                    "a concurrent read counted {n}, outside {low}..={high}"
                );
                reads += 1;
            }
            reads
        }));
    }
    let started = Instant::now();
    let rounds = 80;
    for i in 0..rounds {
        let round = Instant::now();
        exec(
            &data,
            &format!(
                "INSERT INTO cpu (host, v, ts) VALUES ('h{}', {i}, {})",
                i % 7,
                1_000 + i
            ),
        )
        .await;
        // The same five keys, overwritten again and again: the newest
        // value wins whether the older ones are in SSTs or in memory.
        let k = i % 5;
        exec(
            &data,
            &format!("INSERT INTO kv (k, v, ts) VALUES ('k{k}', {i}, {})", 10 * k),
        )
        .await;
        acked.store(i + 1, Ordering::Release);
        let writes = round.elapsed();
        assert_eq!(
            number(&compute, "SELECT count(*) FROM cpu").await,
            (i + 1).to_string(),
            "round {i}: the compute instance lost or doubled a row\n{}",
            c.logs()
        );
        assert_eq!(
            number(&compute, &format!("SELECT v FROM kv WHERE k = 'k{k}'")).await,
            i.to_string(),
            "round {i}: not the newest value of k{k}"
        );
        assert_eq!(
            number(&compute, "SELECT count(*) FROM kv").await,
            (i + 1).min(5).to_string()
        );
        if i % 20 == 0 {
            eprintln!(
                "round {i}: writes {writes:?}, reads {:?}",
                round.elapsed() - writes
            );
        }
    }
    flushing.store(false, Ordering::Relaxed);
    let flushes = flusher.await.unwrap();
    assert!(flushes > 5, "only {flushes} flushes ran during the ledger");
    for r in readers {
        let reads = r.await.unwrap();
        assert!(reads > 10, "only {reads} concurrent reads");
    }
    eprintln!("the ledger took {:?}", started.elapsed());
    let started = Instant::now();

    // The same answers as a data instance, over SSTs and memory both, for
    // a partitioned table too.
    for i in 0..400 {
        exec(
            &data,
            &format!(
                "INSERT INTO pc (host, v, ts) VALUES ('h{}', {}, {})",
                i % 13,
                i as f64 / 4.0,
                10_000 + i
            ),
        )
        .await;
        if i == 250 {
            exec(&data, "FLUSH TABLE pc").await;
        }
    }
    for sql in [
        "SELECT host, count(*), sum(v), min(ts), max(ts) FROM pc GROUP BY host ORDER BY host",
        "SELECT host, v, ts FROM pc ORDER BY v DESC, host LIMIT 7",
        "SELECT count(*) FROM pc WHERE host IN ('h1', 'h2') AND ts >= 10100",
        "SELECT host, avg(v) FROM cpu GROUP BY host ORDER BY host",
        "SELECT k, v, ts FROM kv ORDER BY k",
        "SELECT c.host, count(*) FROM cpu c JOIN pc p ON c.host = p.host GROUP BY c.host ORDER BY c.host",
    ] {
        assert_eq!(
            query(&compute, sql).await,
            query(&data, sql).await,
            "{sql}"
        );
    }

    eprintln!("the comparisons took {:?}", started.elapsed());
    // Its plans scan the tables here (SSTs included), with no remote scan.
    let plan = query(&compute, "EXPLAIN SELECT count(*) FROM cpu").await;
    let text: String = plan.iter().map(|r| r[1].clone()).collect();
    assert!(text.contains("StrataScanExec: table=cpu"), "{text}");
    assert!(!text.contains("Remote"), "{text}");
    let ssts: usize = text
        .split("ssts=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ssts > 0, "no SST read on the compute instance: {text}");

    // Writes through it reach the leaders.
    exec(
        &compute,
        "INSERT INTO cpu (host, v, ts) VALUES ('hc', 1, 5)",
    )
    .await;
    assert_eq!(
        number(&data, "SELECT count(*) FROM cpu WHERE host = 'hc'").await,
        "1"
    );
    assert_eq!(
        number(&compute, "SELECT count(*) FROM cpu").await,
        (rounds + 1).to_string()
    );

    // The leader of cpu's shard killed: once another instance has replayed
    // the WAL, the compute instance answers every acknowledged row again.
    let started = Instant::now();
    let (_, leader) = crate::cluster::shard_of(&c, "cpu").await;
    c.servers[leader].kill9();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match compute.sql("", "SELECT count(*) FROM cpu").await {
            Ok(strata_client::SqlOutput::Rows(b)) => {
                let n = strata_integration_tests::rows_as_strings(&b)[0][0].clone();
                assert_eq!(n, (rounds + 1).to_string(), "after the failover");
                break;
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "not answered after the failover: {e}\n{}",
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    eprintln!("the failover took {:?}", started.elapsed());
    // After all that, meta never gave it a shard.
    let shards = c.shards().await;
    assert!(
        shards.iter().all(|s| s["leader"] != compute_node.as_str()),
        "{shards:?}"
    );
}

/// `strata_requests_total` of `endpoint` answered `ok` by an instance.
async fn requests(p: &strata_integration_tests::cluster::Proc, endpoint: &str) -> u64 {
    let (_, body) = strata_integration_tests::http_get(p.http, "/metrics")
        .await
        .expect("metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("strata_requests_total{")
                && l.contains(&format!("\"{endpoint}\""))
                && l.contains("\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_reads_run_on_a_compute_instance_and_fall_back_when_it_is_gone() {
    let mut c = TestCluster::start(ClusterOptions {
        servers: 1,
        shard_count: 2,
        server_env: vec![(
            "STRATA_QUERY__OFFLOAD_READS".to_string(),
            "true".to_string(),
        )],
        ..Default::default()
    })
    .await;
    let ci = c.add_compute().await;
    let data = c.servers[0].client().await;
    exec(&data, CPU).await;
    wait_tables(&c.computes[ci].client().await, &["cpu"]).await;
    for i in 0..20 {
        exec(
            &data,
            &format!(
                "INSERT INTO cpu (host, v, ts) VALUES ('h{}', {i}, {})",
                i % 3,
                1_000 + i
            ),
        )
        .await;
    }
    // Meta lists the compute instance to the data instance with its next
    // heartbeat; from then on its reads run there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = requests(&c.computes[ci], "grpc_sql").await;
        assert_eq!(number(&data, "SELECT count(*) FROM cpu").await, "20");
        if requests(&c.computes[ci], "grpc_sql").await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read reached the compute instance\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = requests(&c.computes[ci], "grpc_sql").await;
    for _ in 0..5 {
        assert_eq!(
            query(
                &data,
                "SELECT host, count(*) FROM cpu GROUP BY host ORDER BY host"
            )
            .await,
            [["h0", "7"], ["h1", "7"], ["h2", "6"]]
        );
    }
    assert_eq!(requests(&c.computes[ci], "grpc_sql").await, before + 5);
    // Writes and the system tables stay on the instance asked.
    exec(&data, "INSERT INTO cpu (host, v, ts) VALUES ('h9', 1, 5)").await;
    let shards = query(&data, "SELECT count(*) FROM system.shards").await;
    assert_eq!(shards, [["2"]]);
    assert_eq!(requests(&c.computes[ci], "grpc_sql").await, before + 5);

    // The compute instance gone: reads run on the instance asked, at once
    // (the call fails) and once meta no longer lists it.
    c.computes[ci].kill9();
    for _ in 0..10 {
        assert_eq!(number(&data, "SELECT count(*) FROM cpu").await, "21");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
