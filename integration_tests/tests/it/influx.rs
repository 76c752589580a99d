//! InfluxDB line protocol over HTTP, against standalone Strata and a
//! three-instance cluster: tables and columns created by writes, precision,
//! gzip bodies, all-or-nothing batches with every bad line named, and v1 and
//! v2 endpoints.

use std::{io::Write, net::SocketAddr};

use strata_client::Client;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_post_bytes, query, StrataProcess,
};

async fn post(
    http: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    http_post_bytes(http, path, headers, body)
        .await
        .unwrap_or_else(|| panic!("no answer to POST {path}"))
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Runs the scenario: writes through `write_to`, reads through `read_from`.
async fn scenario(write_to: SocketAddr, read_from: &Client) {
    // v1, seconds, two measurements (in a cluster: likely two shards).
    let (code, body) = post(
        write_to,
        "/influxdb/v1/write?db=public&precision=s",
        &[],
        b"cpu,host=a usage=0.5,n=3i 1700000000\ncpu,host=b usage=0.7 1700000001\ndisk,host=a free=10u 1700000000\n",
    )
    .await;
    assert_eq!(code, 204, "{body}");
    // v2, nanoseconds, a new tag and a new field on an existing table.
    let (code, body) = post(
        write_to,
        "/api/v2/write?bucket=public&org=any&precision=ns",
        &[],
        b"cpu,host=c,dc=x usage=0.9,msg=\"hello world\" 1700000002000000000\n",
    )
    .await;
    assert_eq!(code, 204, "{body}");
    // gzip, milliseconds, through /write.
    let (code, body) = post(
        write_to,
        "/write?precision=ms",
        &[("Content-Encoding", "gzip")],
        &gzip("mem,host=a used=1i 1700000003000\nmem,host=b used=2i 1700000004000\n"),
    )
    .await;
    assert_eq!(code, 204, "{body}");

    // A batch with bad lines: every one named, nothing written.
    let (code, body) = post(
        write_to,
        "/write?precision=s",
        &[],
        b"cpu,host=z usage=1 1700000100\ncpu usage=\"a string\" 1700000101\nnot a line\nmem,host=z used=3i 1700000102\n",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("line 2") && body.contains("usage is string"),
        "{body}"
    );
    assert!(body.contains("line 3"), "{body}");
    assert!(
        !body.contains("line 1:") && !body.contains("line 4"),
        "{body}"
    );

    assert_eq!(
        query(
            read_from,
            "SELECT host, usage, n, dc, msg FROM cpu ORDER BY timestamp"
        )
        .await,
        vec![
            vec!["a", "0.5", "3", "NULL", "NULL"],
            vec!["b", "0.7", "NULL", "NULL", "NULL"],
            vec!["c", "0.9", "NULL", "x", "hello world"],
        ]
        .into_iter()
        .map(|r| r.into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    assert_eq!(
        query(read_from, "SELECT count(*), sum(used) FROM mem").await,
        vec![vec!["2".to_string(), "3".to_string()]]
    );
    assert_eq!(
        query(read_from, "SELECT free FROM disk").await,
        vec![vec!["10".to_string()]]
    );
    assert_eq!(
        query(
            read_from,
            "SELECT CAST(timestamp AS BIGINT) FROM mem ORDER BY 1"
        )
        .await,
        vec![
            vec!["1700000003000".to_string()],
            vec!["1700000004000".to_string()]
        ]
    );

    // Errors that are not about lines.
    let (code, body) = post(write_to, "/write?db=nope", &[], b"cpu usage=1\n").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = post(write_to, "/write?precision=weeks", &[], b"cpu usage=1\n").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        write_to,
        "/write",
        &[("Content-Encoding", "gzip")],
        b"not gzip at all",
    )
    .await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_writes_on_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    scenario(server.http, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_writes_on_a_cluster_reach_every_shard() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let reader = c.servers[2].client().await;
    scenario(c.servers[0].http, &reader).await;
}

/// Runs `curl` as a user would; returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The acceptance path: line protocol sent with `curl` (plain, gzip, with
/// a precision, and malformed), then queried back with SQL over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_with_curl_then_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let base = format!("http://{}", server.http);

    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/influxdb/v1/write?db=public&precision=s"),
        "--data-binary",
        "weather,city=paris temp=21.5,rain=0i 1700000000\nweather,city=oslo temp=3.25,rain=2i 1700000000",
    ]);
    assert_eq!(code, 204, "{body}");

    let gz = dir.path().join("batch.gz");
    std::fs::write(
        &gz,
        gzip("weather,city=paris temp=22.5,rain=1i 1700000060000\n"),
    )
    .unwrap();
    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/api/v2/write?bucket=public&precision=ms"),
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", gz.display()),
    ]);
    assert_eq!(code, 204, "{body}");

    // A malformed line: 400 naming it, and the good line of the batch is
    // not written either.
    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/write?precision=s"),
        "--data-binary",
        "weather,city=rome temp=30 1700000120\nweather,city=rome temp= 1700000120",
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("line 2"), "{body}");

    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/sql"),
        "-d",
        r#"{"query": "SELECT city, CAST(timestamp AS BIGINT) AS t, temp, rain FROM weather ORDER BY t, city"}"#,
    ]);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{body}");
    assert_eq!(rows[0]["city"], "oslo");
    assert_eq!(rows[0]["t"], 1_700_000_000_000i64);
    assert_eq!(rows[2]["city"], "paris");
    assert_eq!(rows[2]["temp"], 22.5);
    assert_eq!(rows[2]["t"], 1_700_000_060_000i64);
}
