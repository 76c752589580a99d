//! Prometheus remote write and read, against standalone Strata and a
//! three-instance cluster: samples land in the shared physical tables of RFC
//! 0003, a re-sent request is written once, remote read applies matchers and
//! time ranges, and bad bodies get a 400 with a reason.

use std::net::SocketAddr;

use prost::Message;
use strata_client::Client;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_get, http_post_bytes, http_post_raw, query, StrataProcess,
};
use strata_server::{
    prom::{RemoteWriteRequest, TimeSeries},
    prom_read::{LabelMatcher, Query, ReadRequest, ReadResponse},
};

fn matcher(kind: i32, name: &str, value: &str) -> LabelMatcher {
    LabelMatcher {
        r#type: kind,
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// Remote read: one query, its series as (labels, samples).
async fn read(
    http: SocketAddr,
    start: i64,
    end: i64,
    matchers: Vec<LabelMatcher>,
) -> Vec<(Vec<(String, String)>, Vec<(i64, f64)>)> {
    let req = ReadRequest {
        queries: vec![Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers,
        }],
        accepted_response_types: vec![0],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap();
    let (code, bytes) = http_post_raw(
        http,
        "/api/v1/read",
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
        ],
        &body,
    )
    .await
    .expect("an answer");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    let raw = snap::raw::Decoder::new().decompress_vec(&bytes).unwrap();
    let resp = ReadResponse::decode(raw.as_slice()).unwrap();
    assert_eq!(resp.results.len(), 1);
    resp.results[0]
        .timeseries
        .iter()
        .map(|t| {
            (
                t.labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect(),
                t.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            )
        })
        .collect()
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries::new(labels, samples)
}

fn body(ts: Vec<TimeSeries>) -> Vec<u8> {
    let raw = RemoteWriteRequest { timeseries: ts }.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
}

async fn post(http: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    http_post_bytes(
        http,
        path,
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .await
    .expect("an answer")
}

const ALL_SAMPLES: &str = "SELECT count(*) FROM (\
    SELECT * FROM prom_samples_0 UNION ALL SELECT * FROM prom_samples_1 \
    UNION ALL SELECT * FROM prom_samples_2 UNION ALL SELECT * FROM prom_samples_3)";
const ALL_SERIES: &str = "SELECT count(*) FROM (\
    SELECT * FROM prom_series_0 UNION ALL SELECT * FROM prom_series_1 \
    UNION ALL SELECT * FROM prom_series_2 UNION ALL SELECT * FROM prom_series_3)";

async fn scenario(http: SocketAddr, reader: &Client) {
    // 200 metric names, 2 series each, 3 samples per series.
    let mut ts = Vec::new();
    for m in 0..200 {
        for job in ["a", "b"] {
            let name = format!("metric_{m}");
            ts.push(series(
                &[("__name__", &name), ("job", job), ("instance", "i:9100")],
                &[(1_000, 1.0), (2_000, 2.0), (3_000, m as f64)],
            ));
        }
    }
    let request = body(ts);
    let (code, text) = post(http, "/api/v1/write", &request).await;
    assert_eq!(code, 204, "{text}");
    // Prometheus re-sends after a timeout: written once.
    let (code, text) = post(http, "/prom/v1/write", &request).await;
    assert_eq!(code, 204, "{text}");

    assert_eq!(
        query(reader, ALL_SAMPLES).await,
        vec![vec!["1200".to_string()]]
    );
    assert_eq!(
        query(reader, ALL_SERIES).await,
        vec![vec!["400".to_string()]]
    );
    // Still one table per kind and partition, not one per metric.
    let tables = query(reader, "SHOW TABLES").await;
    assert_eq!(tables.len(), 8, "{tables:?}");

    let p = strata_server::prom::partition("metric_7");
    let sql = format!(
        "SELECT s.labels, v.value FROM prom_samples_{p} v JOIN prom_series_{p} s \
         ON v.series = s.series WHERE v.metric = 'metric_7' AND v.ts = 3000 ORDER BY s.labels"
    );
    let rows = query(reader, &sql).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0][0].contains("\"job\":\"a\""), "{rows:?}");
    assert_eq!(rows[0][1], "7.0");

    // Remote read: by name and label regex, within a time range.
    let got = read(
        http,
        1_500,
        3_000,
        vec![matcher(0, "__name__", "metric_7"), matcher(2, "job", "a|b")],
    )
    .await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].0,
        vec![
            ("__name__".to_string(), "metric_7".to_string()),
            ("instance".to_string(), "i:9100".to_string()),
            ("job".to_string(), "a".to_string()),
        ]
    );
    assert_eq!(got[0].1, vec![(2_000, 2.0), (3_000, 7.0)]);
    // Without a metric name, a name regex and a negative matcher.
    let got = read(
        http,
        0,
        10_000,
        vec![
            matcher(2, "__name__", "metric_1[0-9]"),
            matcher(1, "job", "b"),
        ],
    )
    .await;
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got
        .iter()
        .all(|(l, s)| l.contains(&("job".to_string(), "a".to_string())) && s.len() == 3));
    assert!(read(http, 0, 10_000, vec![matcher(0, "__name__", "nope")])
        .await
        .is_empty());
    // A name is a value bound to the scan, not SQL text.
    for name in ["metric_7' OR metric <> '", "it's", "metric_7\\'--"] {
        assert!(read(http, 0, 10_000, vec![matcher(0, "__name__", name)])
            .await
            .is_empty());
    }

    // The metadata API Grafana uses.
    let get = |path: &'static str| async move {
        let (code, body) = http_get(http, path).await.expect("an answer");
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (code, v) = get("/api/v1/status/buildinfo").await;
    assert_eq!(code, 200);
    assert_eq!(v["status"], "success");
    let (_, v) = get("/api/v1/labels").await;
    assert_eq!(
        v["data"],
        serde_json::json!(["__name__", "instance", "job"])
    );
    let (_, v) = get("/api/v1/label/__name__/values").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 200);
    let (_, v) = get("/api/v1/series?match%5B%5D=metric_7%7Bjob%3D%22a%22%7D").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["job"], "a");
    let (code, v) = get("/api/v1/series?match%5B%5D=rate(x%5B5m%5D)").await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["errorType"], "bad_data");

    // PromQL over the same tables (spread over the instances of a cluster).
    let (code, v) = get(
        "/api/v1/query?query=sum%20by%20(job)%20(%7B__name__%3D~%22metric_1%5B0-9%5D%22%7D)&time=3",
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "vector");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 2, "{v}");
    assert!(result.iter().all(|r| r["value"][1] == "145"), "{v}");
    let (code, v) = get("/api/v1/query_range?query=max(metric_7)&start=1&end=3&step=1").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["data"]["result"][0]["values"],
        serde_json::json!([[1, "1"], [2, "2"], [3, "7"]])
    );

    // Bad bodies: a clear 400, nothing written.
    let (code, text) = post(http, "/api/v1/write", b"not snappy").await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("snappy"), "{text}");
    let (code, text) = post(
        http,
        "/api/v1/write",
        &body(vec![series(&[("job", "x")], &[(1, 1.0)])]),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("__name__"), "{text}");
    assert_eq!(
        query(reader, ALL_SAMPLES).await,
        vec![vec!["1200".to_string()]]
    );

    // Names with quotes and backslashes are read back exactly: bound as
    // values here, and not sent to another instance as SQL it would read
    // differently (`a''b` as `a'b`, `x\'…` as `x\` followed by SQL).
    let odd = ["a''b", "x\\' OR true --", "c:\\m"];
    let ts = odd
        .iter()
        .map(|name| series(&[("__name__", name), ("job", "q")], &[(5_000, 5.0)]))
        .collect();
    let (code, text) = post(http, "/api/v1/write", &body(ts)).await;
    assert_eq!(code, 204, "{text}");
    for name in odd {
        let got = read(http, 0, 10_000, vec![matcher(0, "__name__", name)]).await;
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0].1, vec![(5_000, 5.0)], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_and_read_on_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    scenario(server.http, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_and_read_on_a_cluster() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let reader = c.servers[1].client().await;
    scenario(c.servers[0].http, &reader).await;
}

/// The first remote writes of a cluster reach every instance at once: each
/// creates the physical tables it does not know yet, and meta reports the
/// ones another instance created a moment before as existing without this
/// instance knowing them. Every write is acknowledged, and every
/// acknowledged sample is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_remote_writes_to_every_instance_at_once() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let writes = c.servers.iter().enumerate().map(|(i, server)| {
        let mut ts = Vec::new();
        for m in 0..50 {
            let name = format!("first_{m}");
            let instance = format!("i{i}");
            ts.push(series(
                &[("__name__", &name), ("instance", &instance)],
                &[(1_000, 1.0), (2_000, 2.0)],
            ));
        }
        let http = server.http;
        tokio::spawn(async move { post(http, "/api/v1/write", &body(ts)).await })
    });
    let writes: Vec<_> = writes.collect();
    for (i, write) in writes.into_iter().enumerate() {
        let (code, text) = write.await.unwrap();
        assert_eq!(code, 204, "instance {i}: {text}");
    }
    let reader = c.servers[2].client().await;
    let want = (c.servers.len() * 50 * 2).to_string();
    assert_eq!(query(&reader, ALL_SAMPLES).await, vec![vec![want]]);
    let want = (c.servers.len() * 50).to_string();
    assert_eq!(query(&reader, ALL_SERIES).await, vec![vec![want]]);
}

/// High cardinality: 10,000 metric names (20,000 series) by remote write,
/// then the same series again. The tables stay the same eight, and the
/// figures (per-write latency and RSS along the way) are printed, not
/// asserted: timings are measured, not tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_metric_names_by_remote_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    const NAMES: usize = 10_000;
    const PER_BATCH: usize = 500;
    let batch = |first: usize, round: i64| {
        let mut ts = Vec::with_capacity(PER_BATCH * 2);
        for m in first..first + PER_BATCH {
            let name = format!("hc_metric_{m:05}");
            for pod in ["p0", "p1"] {
                let samples: Vec<(i64, f64)> = (0..5)
                    .map(|k| {
                        (
                            1_700_000_000_000 + round * 60_000 + k * 10_000,
                            (m + k as usize) as f64,
                        )
                    })
                    .collect();
                ts.push(series(
                    &[("__name__", &name), ("pod", pod), ("job", "hc")],
                    &samples,
                ));
            }
        }
        body(ts)
    };
    let mut lines = Vec::new();
    for round in 0..2 {
        for first in (0..NAMES).step_by(PER_BATCH) {
            let request = batch(first, round);
            let started = std::time::Instant::now();
            let (code, text) = post(server.http, "/api/v1/write", &request).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(code, 204, "{text}");
            let rss = server.rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64;
            lines.push((round, first + PER_BATCH, ms, rss));
        }
    }
    println!("high cardinality: round, metric names so far, write ms (1,000 series, 5,000 samples), RSS MiB");
    for (round, names, ms, rss) in &lines {
        println!("  {round} {names:>6} {ms:>8.1} {rss:>8.1}");
    }
    let avg = |r: &[(i64, usize, f64, f64)]| r.iter().map(|l| l.2).sum::<f64>() / r.len() as f64;
    println!(
        "high cardinality: mean write ms, first 5 batches {:.1}, last 5 of the new names {:.1}, re-sent series {:.1}",
        avg(&lines[..5]),
        avg(&lines[15..20]),
        avg(&lines[20..])
    );
    assert_eq!(
        query(&client, ALL_SERIES).await,
        vec![vec![(NAMES * 2).to_string()]]
    );
    assert_eq!(
        query(&client, ALL_SAMPLES).await,
        vec![vec![(NAMES * 2 * 5 * 2).to_string()]]
    );
    // Still the same eight tables, whatever the number of names.
    assert_eq!(query(&client, "SHOW TABLES").await.len(), 8);
    // Any one metric is found by name through PromQL: at +100 s the newest
    // sample of each of its two series is 4321 + 4.
    let (code, body) = http_get(
        server.http,
        "/api/v1/query?query=sum(hc_metric_04321)&time=1700000100",
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "8650", "{body}");
}
