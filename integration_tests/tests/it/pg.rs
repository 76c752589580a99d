//! The PostgreSQL wire protocol with real clients: `psql` (simple protocol)
//! and Python's `psycopg` 3 (extended protocol: parameters, prepared
//! statements, binary results), on standalone Strata and on a cluster.

use std::{net::SocketAddr, process::Command};

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_get, query, StrataProcess,
};

/// Runs SQL through `psql`; returns (success, stdout, stderr).
pub(crate) fn psql(addr: SocketAddr, db: &str, sql: &str) -> (bool, String, String) {
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
    // The connection's database, as a function of the session: the text of
    // a query is not rewritten.
    assert_eq!(psql_ok(pg, "CREATE DATABASE other"), "CREATE DATABASE");
    let (ok, out, err) = psql(
        pg,
        "other",
        "SELECT current_database(), current_schema(), 'current_database()'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "other|other|current_database()");
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

/// A raw PostgreSQL client connection: the startup message sent and the
/// server's answers read up to `ReadyForQuery`.
async fn raw_session(addr: SocketAddr) -> tokio::net::TcpStream {
    let (s, answers) = try_session(addr).await;
    assert!(answers.iter().any(|(t, _)| *t == b'Z'), "{answers:?}");
    s
}

/// A connection with the startup message sent, and the answers to it.
async fn try_session(addr: SocketAddr) -> (tokio::net::TcpStream, Vec<(u8, Vec<u8>)>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0anyone\0database\0public\0\0");
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    s.write_all(&msg).await.unwrap();
    let answers = read_messages(&mut s, b'Z').await;
    (s, answers)
}

/// [`raw_session`] once a connection slot is free: the server frees the
/// slot of a connection that just closed when it notices the close, which
/// on a loaded machine can take a moment. Any refusal but "too many
/// clients" fails.
async fn raw_session_when_free(addr: SocketAddr) -> tokio::net::TcpStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, answers) = try_session(addr).await;
        if answers.iter().any(|(t, _)| *t == b'Z') {
            return s;
        }
        let too_many = answers
            .iter()
            .any(|(t, b)| *t == b'E' && String::from_utf8_lossy(b).contains("too many clients"));
        assert!(
            too_many && std::time::Instant::now() < deadline,
            "{answers:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads backend messages until one of type `until` or the end of the
/// stream; returns (type, body) of each.
async fn read_messages(s: &mut tokio::net::TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(30), s.read_exact(&mut head))
                .await
                .expect("the server answers within 30 s");
        if read.is_err() {
            return out;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if s.read_exact(&mut body).await.is_err() {
            return out;
        }
        out.push((head[0], body));
        if head[0] == until {
            return out;
        }
    }
}

/// Issue 14: pgwire buffers a message of up to 1 GiB whole, and serves any
/// number of connections. A message larger than
/// `server.pg_max_message_size` now ends its connection with FATAL 54000
/// once that much of it is buffered, and connections past
/// `server.pg_max_connections` get FATAL 53300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_pg_messages_and_too_many_connections_get_fatal_errors() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        vec![
            (
                "STRATA_SERVER__PG_MAX_MESSAGE_SIZE".to_string(),
                "1MB".to_string(),
            ),
            (
                "STRATA_SERVER__PG_MAX_CONNECTIONS".to_string(),
                "2".to_string(),
            ),
        ],
    )
    .await;

    // A Query message that declares 512 MiB and sends 2 MiB of it: refused
    // once more than 1 MB of it is buffered (pgwire alone buffered up to
    // 1 GiB per message).
    let mut s = raw_session(server.pg).await;
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&(512u32 << 20).to_be_bytes());
    huge.extend(std::iter::repeat_n(b'x', 2 << 20));
    // The server may stop reading before the end.
    let _ = s.write_all(&huge).await;
    let answers = read_messages(&mut s, b'E').await;
    let (kind, body) = answers.last().expect("an answer");
    let text = String::from_utf8_lossy(body);
    assert_eq!(*kind, b'E', "{answers:?}");
    assert!(text.contains("FATAL") && text.contains("54000"), "{text}");
    assert!(text.contains("server.pg_max_message_size"), "{text}");
    // ... and the connection is closed.
    assert!(read_messages(&mut s, b'Z').await.is_empty());
    drop(s);

    // A message within the limit still runs (psql, 100 KB of SQL).
    let long = format!("SELECT '{}' AS x", "y".repeat(100_000));
    let (ok, out, err) = psql(server.pg, "public", &long);
    assert!(ok, "{err}");
    assert_eq!(out.len(), 100_000);

    // Two connections held open fill the listener (once the connections
    // above are seen closed); a third is refused.
    let a = raw_session_when_free(server.pg).await;
    let b = raw_session_when_free(server.pg).await;
    let (ok, _, err) = psql(server.pg, "public", "SELECT 1");
    assert!(!ok);
    assert!(err.contains("too many clients"), "{err}");
    drop(a);
    // The slot frees when the connection ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ok, out, err) = psql(server.pg, "public", "SELECT 1");
        if ok {
            assert_eq!(out, "1");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(b);
    assert!(server.is_running(), "{}", server.log_tail());
    let (code, _) = http_get(server.http, "/health").await.unwrap();
    assert_eq!(code, 200);
}

/// A frontend message: type byte, length, body.
fn pg_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn pg_parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = format!("{name}\0{sql}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    pg_message(b'P', &body)
}

/// pgwire keeps every named prepared statement until the client closes
/// it: a connection could fill the server's memory with them. Past
/// `MAX_HELD` (1,024) a `Parse` is refused with ERROR 54000, the
/// connection stays usable, and closing one (Close, or SQL `DEALLOCATE`)
/// makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_per_connection_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let mut s = raw_session(server.pg).await;
    let mut burst = Vec::new();
    for i in 0..=1024 {
        burst.extend(pg_parse(&format!("s{i}"), "SELECT 1"));
    }
    burst.extend(pg_message(b'S', b""));
    s.write_all(&burst).await.unwrap();
    let answers = read_messages(&mut s, b'Z').await;
    let parsed = answers.iter().filter(|(t, _)| *t == b'1').count();
    let errors: Vec<String> = answers
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(parsed, 1024, "{errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("54000") && errors[0].contains("close some"),
        "{errors:?}"
    );
    assert_eq!(answers.last().unwrap().0, b'Z');

    // Closing one makes room for another.
    let mut next = pg_message(b'C', b"Ss0\0");
    next.extend(pg_parse("s1024", "SELECT 2"));
    next.extend(pg_message(b'S', b""));
    s.write_all(&next).await.unwrap();
    let answers = read_messages(&mut s, b'Z').await;
    let kinds: Vec<u8> = answers.iter().map(|(t, _)| *t).collect();
    assert_eq!(kinds, vec![b'3', b'1', b'Z'], "{answers:?}");

    // So does DEALLOCATE, which psycopg 3 sends to evict statements.
    s.write_all(&pg_message(b'Q', b"DEALLOCATE s1\0"))
        .await
        .unwrap();
    read_messages(&mut s, b'Z').await;
    let mut next = pg_parse("s1025", "SELECT 3");
    next.extend(pg_parse("s1026", "SELECT 4"));
    next.extend(pg_message(b'S', b""));
    s.write_all(&next).await.unwrap();
    let answers = read_messages(&mut s, b'Z').await;
    let kinds: Vec<u8> = answers.iter().map(|(t, _)| *t).collect();
    assert_eq!(kinds, vec![b'1', b'E', b'Z'], "{answers:?}");

    // The connection still answers a query.
    s.write_all(&pg_message(b'Q', b"SELECT 41 + 1 AS x\0"))
        .await
        .unwrap();
    let answers = read_messages(&mut s, b'Z').await;
    assert!(
        answers
            .iter()
            .any(|(t, b)| *t == b'D' && String::from_utf8_lossy(b).contains("42")),
        "{answers:?}"
    );
    drop(s);
    assert!(server.is_running(), "{}", server.log_tail());
}
