//! Query limits (`[query]` memory_limit, timeout, max_concurrent,
//! queue_timeout) against a real server: each limit answers a typed error
//! on every query protocol, and the server keeps serving.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use strata_integration_tests::{http_get, http_request, query, StrataProcess};
use strata_proto::common::ErrorKind;

/// Joins two million rows on a key: the hash table of the build side needs
/// tens of megabytes and cannot spill.
const MEMORY_HUNGRY: &str = "SELECT count(*) FROM generate_series(1, 2000000) a \
     JOIN generate_series(1, 2000000) b ON a.value = b.value";

/// A cross join of 10^11 rows: hours of work, in small steps. The small
/// side is the build side (collected, then joined with each batch the large
/// side streams). With the sides the other way round, DataFusion's
/// CrossJoinExec concatenates 10^8 collected rows (800 MB) in one call
/// that does not yield, so a query cancelled then kept a core busy for up
/// to 2 s more (the test failed about one run in four).
const SLOW: &str = "SELECT sum(a.value + b.value) FROM generate_series(1, 1000) a \
     CROSS JOIN generate_series(1, 100000000) b";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `POST /sql`; returns the status and the JSON body.
async fn http_sql(addr: SocketAddr, sql: &str) -> (u16, Value) {
    let body = serde_json::json!({ "query": sql }).to_string();
    let (code, body) = http_request(addr, "POST", "/sql", Some(&body))
        .await
        .unwrap_or_else(|| panic!("no HTTP answer to {sql}"));
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (code, json)
}

/// Runs SQL through `psql`, printing SQLSTATEs; returns (success, stderr).
fn psql(addr: SocketAddr, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "anyone", "-d", "public", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(["-c", sql])
        .output()
        .expect("psql is installed (scripts/bootstrap --python installs postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs SQL over gRPC; the error's kind, or `None` on success.
async fn grpc_kind(client: &strata_client::Client, sql: &str) -> Option<ErrorKind> {
    let result = tokio::time::timeout(Duration::from_secs(60), client.sql("", sql))
        .await
        .unwrap_or_else(|_| panic!("no gRPC answer to {sql} in 60 s"));
    match result {
        Ok(_) => None,
        Err(e) => Some(e.kind().unwrap_or_else(|| panic!("untyped error: {e}"))),
    }
}

/// The server answers `/health` and a small query.
async fn still_serving(server: &StrataProcess) {
    assert_eq!(
        http_get(server.http, "/health").await.map(|(c, _)| c),
        Some(200),
        "{}",
        server.log_tail()
    );
    let (code, body) = http_sql(server.http, "SELECT 1 + 1 AS two").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rows"][0]["two"], 2, "{body}");
}

/// CPU seconds the process used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_memory_limit_fails_with_resources_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        env(&[("STRATA_QUERY__MEMORY_LIMIT", "1MB")]),
    )
    .await;

    // HTTP: 429 with the typed kind, naming the setting.
    let (code, body) = http_sql(server.http, MEMORY_HUNGRY).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["kind"], "ResourcesExhausted", "{body}");
    assert_eq!(body["retryable"], false, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("query.memory_limit"), "{body}");
    still_serving(&server).await;

    // gRPC: the header's kind.
    let client = server.client().await;
    assert_eq!(
        grpc_kind(&client, MEMORY_HUNGRY).await,
        Some(ErrorKind::ResourcesExhausted)
    );
    // PostgreSQL: SQLSTATE 53200 (out_of_memory).
    let (ok, err) = psql(server.pg, MEMORY_HUNGRY);
    assert!(!ok && err.contains("53200"), "{err}");

    // The limit is per query: a small one still runs, and so does the same
    // join over fewer rows.
    still_serving(&server).await;
    assert_eq!(
        query(
            &client,
            "SELECT count(*) FROM generate_series(1, 1000) a \
             JOIN generate_series(1, 1000) b ON a.value = b.value"
        )
        .await,
        vec![vec!["1000".to_string()]]
    );

    // The rows of an answer count too: 200,000 rows of about 60 bytes were
    // collected whole, past any limit; now the answer fails as it grows.
    let big = "SELECT value, repeat('x', 50) AS pad FROM generate_series(1, 200000)";
    let (code, body) = http_sql(server.http, big).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["kind"], "ResourcesExhausted", "{body}");
    let (code, body) = http_sql(
        server.http,
        "SELECT value, repeat('x', 50) AS pad FROM generate_series(1, 1000)",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(1000), "{body}");
    still_serving(&server).await;
}

/// Waits until the process is idle (its start-up work done), up to 20 s.
async fn wait_idle(pid: u32) {
    for _ in 0..20 {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(pid) - before < 0.1 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_timeout_is_cancelled_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        env(&[("STRATA_QUERY__TIMEOUT", "1s")]),
    )
    .await;
    wait_idle(server.pid().expect("running")).await;

    // HTTP: 504 with the typed kind, after about the timeout.
    let started = Instant::now();
    let (code, body) = http_sql(server.http, SLOW).await;
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert_eq!(body["kind"], "Timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("query.timeout")),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");

    // Cancelled, not abandoned: the process goes idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid().expect("running");
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "the cancelled query kept running: {used:.2} s of CPU in 2 s"
    );
    still_serving(&server).await;

    // gRPC and PostgreSQL (57014, query_canceled).
    let client = server.client().await;
    assert_eq!(grpc_kind(&client, SLOW).await, Some(ErrorKind::Timeout));
    let (ok, err) = psql(server.pg, SLOW);
    assert!(!ok && err.contains("57014"), "{err}");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_cannot_start_in_time_is_refused_with_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        env(&[
            ("STRATA_QUERY__MAX_CONCURRENT", "1"),
            ("STRATA_QUERY__QUEUE_TIMEOUT", "200ms"),
            ("STRATA_QUERY__TIMEOUT", "6s"),
        ]),
    )
    .await;
    let http = server.http;

    // One slow query holds the only slot until its timeout.
    let slow = tokio::spawn(async move { http_sql(http, SLOW).await });
    let deadline = Instant::now() + Duration::from_secs(4);
    let body = loop {
        let (code, body) = http_sql(http, "SELECT 1").await;
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "a second query was never refused while the first ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["kind"], "Overloaded", "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("query.max_concurrent")),
        "{body}"
    );

    // Every query protocol waits for the same slot.
    let client = server.client().await;
    assert_eq!(
        grpc_kind(&client, "SELECT 1").await,
        Some(ErrorKind::Overloaded)
    );
    let (ok, err) = psql(server.pg, "SELECT 1");
    assert!(!ok && err.contains("53000"), "{err}");
    let (code, body) = http_get(http, "/api/v1/query?query=1%2B1&time=1")
        .await
        .expect("PromQL answer");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"errorType\":\"unavailable\""), "{body}");
    assert!(body.contains("Overloaded"), "{body}");
    // The server itself still answers.
    assert_eq!(http_get(http, "/health").await.map(|(c, _)| c), Some(200));

    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 504, "{body}");
    // The slot is free again.
    still_serving(&server).await;
    let (code, body) = http_get(http, "/api/v1/query?query=1%2B1&time=1")
        .await
        .expect("PromQL answer");
    assert_eq!(code, 200, "{body}");
}
