//! Leader and follower shards (issue 16) on real processes over etcd, Kafka
//! and S3: meta places a follower for every shard on another instance; a
//! `kill -9` of a leader promotes its follower, which reads only the WAL it
//! had not applied; a planned switch hands leadership to the follower. The
//! exactly-once ledger of acknowledged writes is checked after each.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use strata_client::routed::RoutedClient;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_request, query,
};

use crate::cluster::{check_exactly_once, create_append, shard_of, Writer};

/// Waits (up to 60 s) until `shard` has a follower that reports it follows
/// (caught up: no records behind), and returns that server's index.
pub(crate) async fn wait_following(c: &TestCluster, shard: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shards = c.shards().await;
        let s = shards
            .iter()
            .find(|s| s["id"].as_u64() == Some(shard))
            .cloned()
            .unwrap_or_default();
        let leader = s["leader"].as_str().unwrap_or_default().to_string();
        let found = s["followers"].as_array().and_then(|fs| {
            fs.iter().find(|f| {
                f["state"] == "following"
                    && f["lag_records"].as_u64() == Some(0)
                    && f["node"].as_str() != Some(leader.as_str())
            })
        });
        if let Some(f) = found {
            let node = f["node"].as_str().unwrap_or_default();
            if let Some(i) = c.servers.iter().position(|p| p.endpoint() == node) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard} has no caught-up follower: {s}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a write has succeeded that started after `mark`; returns
/// the milliseconds from `mark` to it.
async fn wait_resumed(c: &TestCluster, writer: &Writer, mark: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer.first_ok_after.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 60 s; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.first_ok_after.load(Ordering::Relaxed) - mark
}

async fn wait_acked(writer: &Writer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while writer.acked().len() < n {
        assert!(Instant::now() < deadline, "the writer makes no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_a_leader_promotes_its_follower_and_loses_nothing() {
    let mut c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "ff").await;
    let (shard, victim) = shard_of(&c, "ff").await;
    let follower = wait_following(&c, shard).await;
    assert_ne!(follower, victim);
    // Every shard has a follower on an instance other than its leader's.
    for s in c.shards().await {
        let leader = s["leader"].as_str().unwrap_or_default();
        let fs = s["followers"].as_array().cloned().unwrap_or_default();
        assert_eq!(fs.len(), 1, "{s}");
        assert_ne!(fs[0]["node"].as_str().unwrap_or_default(), leader, "{s}");
    }
    // The follower shows its role in system.shards.
    let f_client = c.servers[follower].client().await;
    let rows = query(
        &f_client,
        &format!("SELECT role, lag_records FROM system.shards WHERE shard_id = {shard}"),
    )
    .await;
    assert_eq!(rows, vec![vec!["follower".to_string(), "0".to_string()]]);

    // Reads from the follower: with the leader stopped (SIGSTOP), a query
    // that prefers followers is answered by the follower's own copy,
    // rows written just before included once it has caught up.
    let values: Vec<String> = (1..=50)
        .map(|n| format!("(-{n}, {})", 1_600_000_000_000i64 + n))
        .collect();
    strata_integration_tests::exec(
        &client,
        &format!("INSERT INTO ff (n, ts) VALUES {}", values.join(", ")),
    )
    .await;
    // A follower may be a moment behind: wait until it shows the rows.
    let follower_count = || async {
        http_request(
            c.servers[follower].http,
            "POST",
            "/sql?read_preference=follower",
            Some(r#"{"query": "SELECT count(*) AS n FROM ff"}"#),
        )
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = follower_count().await;
        if got.as_ref().is_some_and(|(_, b)| b.contains(r#""n":50"#)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never showed the rows: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.servers[victim].pause();
    let asked = follower_count().await;
    c.servers[victim].resume();
    let (code, body) = asked.expect("the follower answered");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""n":50"#), "{body}");
    // Its lag is on /metrics.
    let (_, metrics) = strata_integration_tests::http_get(c.servers[follower].http, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!("strata_follower_lag_records{{shard=\"{shard}\"}}")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("follower"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A bad preference is refused, and the server stays up.
    let (code, body) = http_request(
        c.servers[follower].http,
        "POST",
        "/sql?read_preference=nearest",
        Some(r#"{"query": "SELECT 1"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");

    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writer = Writer::start(Arc::new(RoutedClient::new(seeds)), "ff");
    wait_acked(&writer, 300).await;
    let killed_at = writer.mark();
    c.servers[victim].kill9();
    let resumed_ms = wait_resumed(&c, &writer, killed_at).await;
    println!("followers: kill -9 of the leader of shard {shard} to the first acknowledged write: {resumed_ms} ms");
    let after = writer.acked().len();
    wait_acked(&writer, after + 200).await;
    let failures = writer.failures.load(Ordering::Relaxed);
    let acked = writer.finish().await;

    let (_, new_leader) = shard_of(&c, "ff").await;
    assert_eq!(new_leader, follower, "the follower took over");
    assert!(
        c.servers[follower].log_count("promoting a follower") > 0,
        "the shard was promoted, not replayed; log:\n{}",
        c.servers[follower].log_tail()
    );
    // Meta places a new follower on the remaining instance.
    let third = (0..3).find(|i| *i != victim && *i != follower).unwrap();
    assert_eq!(wait_following(&c, shard).await, third);

    check_exactly_once(&c.servers[third].client().await, "ff", &acked).await;
    eprintln!(
        "followers: {} rows acknowledged, {failures} attempts failed, writes resumed {resumed_ms} ms after the kill",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switch_hands_the_shard_to_its_follower_under_write_load() {
    let c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "sw").await;
    let (shard, leader) = shard_of(&c, "sw").await;
    let follower = wait_following(&c, shard).await;

    // The balancer would hand the shard back (its old leader, then leading
    // nothing, follows it): an operator switching by hand pauses it.
    let (code, body) = c.meta_post("/schedule/pause").await;
    assert_eq!(code, 200, "{body}");

    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writer = Writer::start(Arc::new(RoutedClient::new(seeds)), "sw");
    wait_acked(&writer, 300).await;
    let mark = writer.mark();
    let (code, body) = c
        .meta_post(&format!(
            "/shards/{shard}/move?node={}",
            c.servers[follower].endpoint()
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    wait_resumed(&c, &writer, mark).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while shard_of(&c, "sw").await.1 != follower {
        assert!(Instant::now() < deadline, "the switch did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = writer.acked().len();
    wait_acked(&writer, after + 200).await;
    let failures = writer.failures.load(Ordering::Relaxed);
    let acked = writer.finish().await;
    eprintln!(
        "followers: switch-leader of shard {shard}: {} rows acknowledged, {failures} attempts failed",
        acked.len()
    );

    let (_, now) = shard_of(&c, "sw").await;
    assert_eq!(now, follower);
    assert!(c.servers[follower].log_count("promoting a follower") > 0);
    // The old leader follows the shard now.
    assert_eq!(wait_following(&c, shard).await, leader);
    check_exactly_once(&c.servers[leader].client().await, "sw", &acked).await;
}

/// Runs `statements` through `psql`, one `-c` each (one connection, one
/// query message per statement); the output lines, command tags left out.
fn psql_session(addr: std::net::SocketAddr, statements: &[&str]) -> Vec<String> {
    let mut cmd = std::process::Command::new("psql");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "anyone", "-d", "public", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    let out = cmd.output().expect("psql is installed");
    assert!(
        out.status.success(),
        "{statements:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !matches!(*l, "SET" | "RESET" | ""))
        .map(str::to_string)
        .collect()
}

/// Server `i`'s `strata_follower_reads_total`.
async fn follower_reads(c: &TestCluster, i: usize) -> u64 {
    let (_, body) = strata_integration_tests::http_get(c.servers[i].http, "/metrics")
        .await
        .expect("metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("strata_follower_reads_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

/// `POST /sql` on server `i`, preferring followers or not; the body.
async fn sql_on(c: &TestCluster, i: usize, follower: bool, q: &str) -> String {
    let path = if follower {
        "/sql?read_preference=follower"
    } else {
        "/sql"
    };
    let body = serde_json::json!({ "query": q }).to_string();
    let (code, body) = http_request(c.servers[i].http, "POST", path, Some(&body))
        .await
        .expect("the instance answered");
    assert_eq!(code, 200, "{q}: {body}");
    body
}

/// Once caught up, every instance reading its follower copies gives the
/// leaders' answers: APPEND and OVERWRITE tables through flushes, a
/// compaction, overwrites and an added column, and the last-value cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_answer_as_their_leaders_once_caught_up() {
    // Three shards, two followers each: every instance leads or follows
    // every shard.
    let c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 2,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    let exec = |sql: String| {
        let client = client.clone();
        async move { strata_integration_tests::exec(&client, &sql).await }
    };
    exec("CREATE TABLE a (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)) WITH (update_mode='APPEND')".into()).await;
    exec("CREATE TABLE o (host STRING TAG, v DOUBLE, n BIGINT, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts))".into()).await;
    exec(
        "CREATE TABLE p (host STRING TAG, v DOUBLE, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts))"
            .into(),
    )
    .await;
    let values = |from: i64, to: i64, f: f64| {
        (from..to)
            .map(|i| {
                format!(
                    "('h{}', {}, {}, {})",
                    i % 7,
                    i as f64 * f,
                    i,
                    1_700_000_000_000 + i * 1000
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let two = |from: i64, to: i64| {
        (from..to)
            .map(|i| format!("('h{}', {}, {})", i % 5, i, 1_700_000_000_000 + i * 1000))
            .collect::<Vec<_>>()
            .join(", ")
    };
    exec(format!(
        "INSERT INTO a (host, v, ts) VALUES {}",
        two(0, 300)
    ))
    .await;
    exec(format!(
        "INSERT INTO o (host, v, n, ts) VALUES {}",
        values(0, 300, 1.0)
    ))
    .await;
    exec(format!(
        "INSERT INTO p (host, v, ts) VALUES {}",
        two(0, 100)
    ))
    .await;
    for t in ["a", "o"] {
        exec(format!("FLUSH TABLE {t}")).await;
    }
    exec(format!(
        "INSERT INTO a (host, v, ts) VALUES {}",
        two(300, 500)
    ))
    .await;
    // Overwrites of half the keys, flushed, compacted, then more in memory.
    exec(format!(
        "INSERT INTO o (host, v, n, ts) VALUES {}",
        values(150, 400, 2.0)
    ))
    .await;
    exec("FLUSH TABLE o".into()).await;
    exec("COMPACT TABLE o".into()).await;
    exec("ALTER TABLE o ADD COLUMN note STRING".into()).await;
    exec("INSERT INTO o (host, v, n, note, ts) VALUES ('h1', -1, 5, 'new', 1700000005000), ('h9', 9, 900, 'late', 1700000900000)".into()).await;
    exec(format!(
        "INSERT INTO a (host, v, ts) VALUES {}",
        two(500, 520)
    ))
    .await;

    let queries = [
        "SELECT count(*) AS n, sum(v) AS s FROM a",
        "SELECT host, count(*) AS n, max(ts) AS t FROM a GROUP BY host ORDER BY host",
        "SELECT host, v, n, note, ts FROM o ORDER BY ts, host",
        "SELECT count(*) AS n, sum(v) AS s, sum(n) AS m FROM o WHERE ts >= 1700000100000",
        "SELECT host, v, ts FROM last_values('o') ORDER BY host",
        "SELECT host, v FROM p WHERE host = 'h3' ORDER BY ts",
    ];
    let mut leader_answers = Vec::new();
    for q in queries {
        leader_answers.push(sql_on(&c, 0, false, q).await);
    }
    for i in 0..c.servers.len() {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (q, want) in queries.iter().zip(&leader_answers) {
            loop {
                let got = sql_on(&c, i, true, q).await;
                if &got == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "server {i} reading followers answers {q}\n  with {got}\n  the leader: {want}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Over PostgreSQL, `SET read_preference` holds for the connection
    // (psql sends each `-c` as its own query on one connection): reads
    // after it are served by the followers (the counter moves), and
    // `RESET` returns to the leaders.
    let mut counts = Vec::new();
    for t in ["o", "a"] {
        counts.push(query(&client, &format!("SELECT count(*) FROM {t}")).await[0][0].clone());
    }
    for i in 0..c.servers.len() {
        let pg = c.servers[i].pg.expect("instances speak PostgreSQL");
        let reads = follower_reads(&c, i).await;
        let out = psql_session(
            pg,
            &[
                "SET read_preference = 'follower'",
                "SHOW read_preference",
                "SELECT count(*) FROM o",
                "SELECT count(*) FROM a",
            ],
        );
        assert_eq!(
            out,
            ["follower", counts[0].as_str(), counts[1].as_str()],
            "server {i}"
        );
        let after = follower_reads(&c, i).await;
        // `o` and `a` are on two of the three shards; this instance leads
        // at most one of those.
        assert!(
            after > reads,
            "server {i}: {reads} -> {after} follower reads"
        );
        let out = psql_session(
            pg,
            &[
                "SET read_preference = 'follower'",
                "RESET read_preference",
                "SHOW read_preference",
                "SELECT count(*) FROM o",
                "SELECT count(*) FROM a",
            ],
        );
        assert_eq!(
            out,
            ["leader", counts[0].as_str(), counts[1].as_str()],
            "server {i}"
        );
        assert_eq!(
            follower_reads(&c, i).await,
            after,
            "server {i}: read the leaders"
        );
        let (ok, _, err) = crate::pg::psql(pg, "public", "SET read_preference = 'nearest'");
        assert!(
            !ok && err.contains("read_preference is leader or follower"),
            "{err}"
        );
    }
    // Each instance did read follower copies: it follows two shards.
    for i in 0..c.servers.len() {
        let client = c.servers[i].client().await;
        let roles = query(
            &client,
            "SELECT role FROM system.shards WHERE role = 'follower'",
        )
        .await;
        assert_eq!(roles.len(), 2, "server {i}: {roles:?}");
    }
}

/// A rolling restart of every instance (`drain`, SIGTERM, start) under
/// write and read load: no acknowledged write is lost or doubled, reads
/// fail only with retryable errors, and each drained instance leads
/// nothing before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_drain_loses_no_write_and_reads_fail_only_retryably() {
    let mut c = TestCluster::start(ClusterOptions {
        shard_count: 3,
        replicas: 1,
        ..ClusterOptions::default()
    })
    .await;
    let client = c.servers[0].client().await;
    create_append(&client, "rr").await;
    for shard in 0..3 {
        wait_following(&c, shard).await;
    }
    let seeds: Vec<String> = c.servers.iter().map(|s| s.endpoint()).collect();
    let writer = Writer::start(Arc::new(RoutedClient::new(seeds.clone())), "rr");
    // Readers: a count through each instance in turn.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bad_reads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (reads_ok, reads_retryable) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let reader = {
        let (stop, bad, ok, retry) = (
            stop.clone(),
            bad_reads.clone(),
            reads_ok.clone(),
            reads_retryable.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let endpoint = &seeds[i % seeds.len()];
                match strata_client::Client::connect(endpoint).await {
                    Ok(cl) => match cl.sql("", "SELECT count(*) FROM rr").await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_retryable() => {
                            retry.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => bad.lock().unwrap().push(e.to_string()),
                    },
                    Err(_) => {
                        retry.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_acked(&writer, 200).await;
    for i in 0..c.servers.len() {
        let node = c.servers[i].endpoint();
        let (code, body) = c.meta_post(&format!("/nodes/drain?node={node}")).await;
        assert_eq!(code, 200, "{body}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shards = c.shards().await;
            let led = shards
                .iter()
                .filter(|s| s["leader"] == node.as_str())
                .count();
            if led == 0 && shards.iter().all(|s| s["state"] == "serving") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server {i} was not drained: {shards:?}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.servers[i].stop();
        let before = writer.acked().len();
        wait_acked(&writer, before + 50).await;
        c.servers[i].restart().await;
        // Back: it follows shards again (every shard has a caught-up
        // follower) before the next one goes.
        for shard in 0..3 {
            wait_following(&c, shard).await;
        }
    }
    let after = writer.acked().len();
    wait_acked(&writer, after + 100).await;
    let failures = writer.failures.load(Ordering::Relaxed);
    let acked = writer.finish().await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let bad = bad_reads.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "reads failed with non-retryable errors: {bad:?}"
    );
    assert!(reads_ok.load(Ordering::Relaxed) > 0);
    check_exactly_once(&c.servers[0].client().await, "rr", &acked).await;
    eprintln!(
        "rolling restart: {} rows acknowledged, {failures} write attempts failed; reads: {} ok, {} retryable failures",
        acked.len(),
        reads_ok.load(Ordering::Relaxed),
        reads_retryable.load(Ordering::Relaxed)
    );
}
