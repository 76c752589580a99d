//! The PostgreSQL wire protocol with real clients: `psql` (simple protocol)
//! and Python's `psycopg` 3 (extended protocol: parameters, prepared
//! statements, binary results), on standalone Strata and on a cluster.

use std::{net::SocketAddr, process::Command};

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_get, query, StrataProcess,
};

/// Runs SQL through `psql`; returns (success, stdout, stderr).
fn psql(addr: SocketAddr, db: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-U",
            "anyone",
            "-d",
            db,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-c", sql])
        .output()
        .expect("psql is installed (scripts/bootstrap --python installs postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn psql_ok(addr: SocketAddr, sql: &str) -> String {
    let (ok, out, err) = psql(addr, "public", sql);
    assert!(ok, "psql failed on {sql}:\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_ddl_inserts_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let pg = server.pg;
    assert_eq!(
        psql_ok(
            pg,
            "CREATE TABLE cpu (ts TIMESTAMP NOT NULL, host STRING TAG, v DOUBLE, TIMESTAMP KEY(ts))"
        ),
        "CREATE TABLE"
    );
    assert_eq!(
        psql_ok(
            pg,
            "INSERT INTO cpu VALUES ('2024-01-01T00:00:00Z', 'a', 1.5), \
             ('2024-01-01T00:01:00Z', 'b', 2.5), ('2024-01-01T00:02:00Z', 'a', 3.5)"
        ),
        "INSERT 0 3"
    );
    assert_eq!(
        psql_ok(
            pg,
            "SELECT host, sum(v) FROM cpu GROUP BY host ORDER BY host"
        ),
        "a|5.0\nb|2.5"
    );
    // Several statements in one query string, and session statements
    // clients send (ignored), answered in order.
    assert_eq!(
        psql_ok(
            pg,
            "SET application_name = 'x'; BEGIN; SELECT count(*) FROM cpu; COMMIT; SHOW TABLES"
        ),
        "SET\nBEGIN\n3\nCOMMIT\ncpu"
    );
    // The SQL of Grafana's $__timeGroupAlias and $__timeFilter macros.
    assert_eq!(
        psql_ok(
            pg,
            "SELECT floor(extract(epoch from ts)/120)*120 AS \"time\", count(*) FROM cpu \
             WHERE ts BETWEEN '2024-01-01T00:00:00Z' AND '2024-01-01T00:01:30Z' GROUP BY 1 ORDER BY 1"
        ),
        "1704067200.0|2"
    );
    // Errors are errors, and the server keeps serving.
    let (ok, _, err) = psql(pg, "public", "SELECT nope FROM cpu");
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = psql(pg, "no_such_db", "SELECT 1");
    assert!(!ok && err.contains("no_such_db"), "{err}");
    assert_eq!(psql_ok(pg, "SELECT count(*) FROM cpu"), "3");
    // What psql wrote, gRPC reads.
    let client = server.client().await;
    assert_eq!(
        query(&client, "SELECT count(*) FROM cpu").await,
        vec![vec!["3".to_string()]]
    );
}

fn run_psycopg(pg: SocketAddr, log: &str) {
    run_python("psycopg_check.py", pg, log);
}

/// Runs `integration_tests/python/{script} PORT`, which prints ALL OK.
fn run_python(script: &str, pg: SocketAddr, log: &str) {
    let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| {
        panic!("STRATA_PYTHON is not set: run the suite with scripts/test, which installs psycopg into a virtualenv")
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(pg.port().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{log}",
        script.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_and_types_on_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    run_psycopg(server.pg, &server.log_tail());
}

/// Issue 14: parameters were pasted into the SQL text, so a value could
/// rewrite the statement. They are bound as values now; several statements
/// per extended-protocol query and deep nesting get typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_parameters_are_values_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    run_python("psycopg_bad_input.py", server.pg, &server.log_tail());
    assert!(server.is_running(), "{}", server.log_tail());
    let (code, _) = http_get(server.http, "/health").await.unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_protocol_on_a_cluster() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let (a, b) = (c.servers[0].pg.unwrap(), c.servers[1].pg.unwrap());
    psql_ok(
        a,
        "CREATE TABLE pg_c (ts TIMESTAMP NOT NULL, k STRING TAG, v BIGINT, TIMESTAMP KEY(ts))",
    );
    // Written through one instance, read through another, whatever instance
    // leads the table's shard.
    psql_ok(
        b,
        "INSERT INTO pg_c VALUES ('2024-01-01T00:00:00Z', 'x', 1), ('2024-01-01T00:00:01Z', 'y', 2)",
    );
    assert_eq!(psql_ok(a, "SELECT k, v FROM pg_c ORDER BY v"), "x|1\ny|2");
    run_psycopg(c.servers[2].pg.unwrap(), "");
}
