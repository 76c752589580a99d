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
