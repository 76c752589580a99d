//! PromQL against a real Prometheus server (Debian package 2.42):
//! - conformance: the same samples are remote-written into Prometheus and
//!   into Strata, a query set runs through both HTTP APIs (range and instant
//!   queries), and the answers must agree within floating-point tolerance;
//! - scraping: Prometheus scrapes Strata's `/metrics` and remote-writes into
//!   Strata, and the series are then queryable through `/api/v1/query_range`.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use prost::Message;
use serde_json::Value;
use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    http_get, http_post_bytes,
    prometheus::PrometheusProcess,
    StrataProcess,
};
use strata_server::prom::{RemoteWriteRequest, TimeSeries};

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// A small deterministic generator (no wall clock, no global RNG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ts(labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> TimeSeries {
    TimeSeries::new(labels, &samples)
}

/// One hour of scrapes every 15 s (with jitter) from `t0`: counters with
/// resets, gauges, a histogram, an info metric, a gap and a stale marker.
fn dataset(t0: i64) -> Vec<TimeSeries> {
    let mut rng = Lcg(42);
    let steps = 240;
    let times: Vec<i64> = (0..steps)
        .map(|i| t0 + i * 15_000 + (rng.next() * 3_000.0) as i64)
        .collect();
    let mut out = Vec::new();
    for (inst, base) in [("a", 0.0), ("b", 100.0)] {
        for code in ["200", "500"] {
            let mut v = base;
            let mut points = Vec::new();
            for (i, &t) in times.iter().enumerate() {
                v += rng.next() * if code == "200" { 20.0 } else { 2.0 };
                if inst == "b" && code == "200" && i == 120 {
                    v = rng.next() * 5.0; // a counter reset
                }
                // instance a, code 500 has a 10 minute gap.
                if inst == "a" && code == "500" && (100..140).contains(&i) {
                    continue;
                }
                points.push((t, v.floor()));
            }
            out.push(ts(
                &[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", inst),
                    ("code", code),
                ],
                points,
            ));
        }
        let temps: Vec<(i64, f64)> = times
            .iter()
            .map(|&t| (t, 40.0 + rng.next() * 30.0))
            .collect();
        out.push(ts(&[("__name__", "cpu_temp"), ("instance", inst)], temps));
        let mut counts = [0.0f64; 4];
        let mut points: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 4];
        for &t in &times {
            for _ in 0..5 {
                let d = rng.next() * rng.next() * 2.0;
                for (j, le) in [0.1, 0.5, 1.0, f64::INFINITY].iter().enumerate() {
                    if d <= *le {
                        counts[j] += 1.0;
                    }
                }
            }
            for j in 0..4 {
                points[j].push((t, counts[j]));
            }
        }
        for (j, le) in ["0.1", "0.5", "1", "+Inf"].iter().enumerate() {
            out.push(ts(
                &[
                    ("__name__", "request_duration_seconds_bucket"),
                    ("instance", inst),
                    ("le", le),
                ],
                points[j].clone(),
            ));
        }
        out.push(ts(
            &[
                ("__name__", "machine_info"),
                ("instance", inst),
                ("team", if inst == "a" { "x" } else { "y" }),
            ],
            times.iter().map(|&t| (t, 1.0)).collect(),
        ));
    }
    // A series that ends with a stale marker halfway through.
    let mut c: Vec<(i64, f64)> = times[..120]
        .iter()
        .map(|&t| (t, 55.0 + rng.next()))
        .collect();
    c.push((times[120], f64::from_bits(STALE_NAN)));
    out.push(ts(&[("__name__", "cpu_temp"), ("instance", "c")], c));
    out
}

async fn remote_write(addr: SocketAddr, series: &[TimeSeries]) {
    let body = snap::raw::Encoder::new()
        .compress_vec(
            &RemoteWriteRequest {
                timeseries: series.to_vec(),
            }
            .encode_to_vec(),
        )
        .unwrap();
    let (code, text) = http_post_bytes(
        addr,
        "/api/v1/write",
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    )
    .await
    .expect("remote write answered");
    assert!(
        code == 204 || code == 200,
        "remote write to {addr}: {code} {text}"
    );
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn api(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http_get(addr, path).await.expect("an answer");
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{addr}{path}: not JSON ({e}): {code} {body}"));
    assert_eq!(code, 200, "{addr}{path}: {body}");
    v
}

type Answer = BTreeMap<String, Vec<(f64, f64)>>;

/// A result as `labels → [(time, value)]`, whatever its type.
fn normalise(v: &Value) -> (String, Answer) {
    let data = &v["data"];
    let kind = data["resultType"].as_str().unwrap_or_default().to_string();
    let point = |p: &Value| {
        let t = p[0].as_f64().unwrap();
        let s = p[1].as_str().unwrap();
        let v = match s {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            x => x.parse().unwrap(),
        };
        (t, v)
    };
    let mut out = Answer::new();
    match kind.as_str() {
        "scalar" => {
            out.insert("scalar".to_string(), vec![point(&data["result"])]);
        }
        _ => {
            for r in data["result"].as_array().unwrap() {
                let key = serde_json::to_string(&r["metric"]).unwrap();
                let points = match r.get("values") {
                    Some(vs) => vs.as_array().unwrap().iter().map(point).collect(),
                    None => vec![point(&r["value"])],
                };
                out.insert(key, points);
            }
        }
    }
    (kind, out)
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn compare(what: &str, prom: &Value, strata: &Value) -> Result<(), String> {
    let (pk, p) = normalise(prom);
    let (sk, s) = normalise(strata);
    if pk != sk {
        return Err(format!("{what}: result type {sk}, Prometheus {pk}"));
    }
    let (pkeys, skeys): (Vec<_>, Vec<_>) = (p.keys().collect(), s.keys().collect());
    if pkeys != skeys {
        return Err(format!(
            "{what}: series differ\n  Prometheus: {pkeys:?}\n  Strata:     {skeys:?}"
        ));
    }
    for (k, pv) in &p {
        let sv = &s[k];
        if pv.len() != sv.len() {
            return Err(format!(
                "{what} {k}: {} points, Prometheus {}",
                sv.len(),
                pv.len()
            ));
        }
        for (a, b) in pv.iter().zip(sv) {
            if (a.0 - b.0).abs() > 1e-6 || !close(a.1, b.1) {
                return Err(format!("{what} {k}: Strata {b:?}, Prometheus {a:?}"));
            }
        }
    }
    Ok(())
}

/// The query set: every supported construct of the issue at least once.
const QUERIES: &[&str] = &[
    "http_requests_total",
    r#"http_requests_total{code!="200"}"#,
    r#"http_requests_total{instance=~"a|c"}"#,
    r#"http_requests_total{code!~"5.."}"#,
    "cpu_temp",
    "rate(http_requests_total[5m])",
    "irate(http_requests_total[5m])",
    "increase(http_requests_total[10m])",
    "delta(cpu_temp[5m])",
    "idelta(cpu_temp[2m])",
    "avg_over_time(cpu_temp[5m])",
    "min_over_time(cpu_temp[5m])",
    "max_over_time(cpu_temp[5m])",
    "sum_over_time(cpu_temp[5m])",
    "count_over_time(cpu_temp[5m])",
    "last_over_time(cpu_temp[5m])",
    "stddev_over_time(cpu_temp[5m])",
    "stdvar_over_time(cpu_temp[5m])",
    "quantile_over_time(0.9, cpu_temp[10m])",
    "present_over_time(cpu_temp[1m])",
    "changes(cpu_temp[10m])",
    "resets(http_requests_total[15m])",
    "deriv(cpu_temp[10m])",
    "predict_linear(cpu_temp[10m], 600)",
    "sum(rate(http_requests_total[5m]))",
    "sum by (code) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "avg by (instance) (cpu_temp)",
    "min(cpu_temp)",
    "max by (job) (http_requests_total)",
    "count by (instance) (http_requests_total)",
    "stddev(cpu_temp)",
    "quantile(0.5, cpu_temp)",
    "group by (instance) (http_requests_total)",
    "topk(1, cpu_temp)",
    "bottomk(2, rate(http_requests_total[5m]))",
    "histogram_quantile(0.9, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(request_duration_seconds_bucket[5m]))",
    "cpu_temp offset 5m",
    "rate(http_requests_total[5m] offset 10m)",
    "http_requests_total / on(instance) group_left(team) machine_info",
    r#"rate(http_requests_total{code="500"}[5m]) / ignoring(code) rate(http_requests_total{code="200"}[5m])"#,
    "cpu_temp > 50",
    "cpu_temp > bool 50",
    "60 < cpu_temp",
    "cpu_temp * 2 + 1",
    "100 - cpu_temp",
    "cpu_temp ^ 2 % 7",
    "-cpu_temp",
    "cpu_temp == on(instance) max by (instance) (cpu_temp)",
    "http_requests_total and on(instance) (cpu_temp > 50)",
    "http_requests_total unless on(instance) (cpu_temp > 60)",
    "cpu_temp or machine_info",
    "abs(50 - cpu_temp)",
    "ceil(cpu_temp)",
    "floor(cpu_temp)",
    "round(cpu_temp, 5)",
    "sqrt(cpu_temp)",
    "ln(cpu_temp)",
    "exp(cpu_temp / 100)",
    "clamp(cpu_temp, 45, 60)",
    "clamp_min(cpu_temp, 50)",
    "clamp_max(cpu_temp, 50)",
    "scalar(sum(cpu_temp))",
    "sum(cpu_temp) / scalar(count(cpu_temp))",
    "vector(1)",
    "time()",
    r#"label_replace(cpu_temp, "host", "h-$1", "instance", "(.*)")"#,
    r#"label_join(machine_info, "id", "/", "instance", "team")"#,
    "absent(nonexistent_metric)",
    "absent(cpu_temp)",
    "timestamp(cpu_temp)",
    "hour(timestamp(cpu_temp))",
    "sort_desc(cpu_temp)",
];

/// Where [`dataset`]'s hour starts: 65 minutes ago, aligned to a minute
/// (so that it ends a few minutes ago).
fn data_start() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 65 * 60_000) / 60_000 * 60_000
}

/// The query range of [`conformance`]: from 12 to 58 minutes after `t0`.
fn window(t0: i64) -> (f64, f64) {
    (
        (t0 + 12 * 60_000) as f64 / 1000.0,
        (t0 + 58 * 60_000) as f64 / 1000.0,
    )
}

/// Every query of [`QUERIES`] through Prometheus at `prom` and Strata at
/// `strata` (range queries with a round and an odd step, instant queries
/// before and after the stale marker): the answers agree, and every query
/// but `absent(cpu_temp)` has data in some answer. Returns the number of
/// answers compared.
async fn conformance(prom: SocketAddr, strata: SocketAddr, t0: i64) -> usize {
    let (start, end) = window(t0);
    let mut failures = Vec::new();
    let (mut compared, mut empty) = (0, Vec::new());
    for q in QUERIES {
        let mut answered = false;
        // Range queries with a round and an odd step, and instant queries
        // at a time before and after the stale marker.
        let mut paths = Vec::new();
        for step in ["60", "37"] {
            paths.push(format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                encode(q)
            ));
        }
        for at in [t0 + 20 * 60_000 + 7_000, t0 + 45 * 60_000] {
            paths.push(format!(
                "/api/v1/query?query={}&time={}",
                encode(q),
                at as f64 / 1000.0
            ));
        }
        for path in paths {
            let p = api(prom, &path).await;
            let s = api(strata, &path).await;
            if let Err(e) = compare(&path, &p, &s) {
                failures.push(e);
            }
            compared += 1;
            answered |= !normalise(&p).1.is_empty();
        }
        if !answered && *q != "absent(cpu_temp)" {
            empty.push(*q);
        }
    }
    assert!(
        failures.is_empty(),
        "{strata}: {} of {} comparisons differ:\n{}",
        failures.len(),
        QUERIES.len() * 4,
        failures.join("\n")
    );
    // Every query but `absent(cpu_temp)` has data in some answer, or
    // agreeing would prove nothing.
    assert!(
        empty.is_empty(),
        "{strata}: queries without data: {empty:#?}"
    );
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_match_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let prom = PrometheusProcess::start(&dir.path().join("prom"), "global: {}\n").await;
    let strata = StrataProcess::start(&dir.path().join("strata")).await;

    let t0 = data_start();
    let data = dataset(t0);
    remote_write(prom.addr, &data).await;
    remote_write(strata.http, &data).await;
    // Answer from SSTs (Parquet on disk), where stale markers must survive
    // too; the other tests read memtables.
    let client = strata.client().await;
    for p in 0..4 {
        for kind in ["samples", "series"] {
            strata_integration_tests::exec(&client, &format!("FLUSH TABLE prom_{kind}_{p}")).await;
        }
    }

    let (start, end) = window(t0);
    let compared = conformance(prom.addr, strata.http, t0).await;
    println!(
        "promql conformance: {compared} answers ({} queries) agree with Prometheus 2.42",
        QUERIES.len()
    );

    // Errors: a function Strata does not evaluate is named; bad PromQL and
    // bad parameters are 400 bad_data, and the server keeps serving.
    for (path, needle) in [
        (
            format!(
                "/api/v1/query?query={}",
                encode("absent_over_time(cpu_temp[5m])")
            ),
            "absent_over_time",
        ),
        (
            format!(
                "/api/v1/query?query={}",
                encode("max_over_time(cpu_temp[10m:1m])")
            ),
            "subqueries",
        ),
        (
            format!("/api/v1/query?query={}", encode("sum(")),
            "invalid PromQL",
        ),
        (
            format!("/api/v1/query_range?query=up&start={end}&end={start}&step=15"),
            "end timestamp",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=1000000&step=1".to_string(),
            "11,000 points",
        ),
    ] {
        let (code, body) = http_get(strata.http, &path).await.unwrap();
        assert_eq!(code, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    // What Grafana's Prometheus data source sends on "Save & test" and in
    // Explore besides queries.
    let v = api(strata.http, "/api/v1/query?query=1%2B1&time=1700000000").await;
    assert_eq!(v["data"]["result"], serde_json::json!([1_700_000_000, "2"]));
    for path in [
        "/api/v1/status/buildinfo",
        "/api/v1/query_exemplars?query=cpu_temp&start=0&end=1",
        "/api/v1/rules",
        "/api/v1/alerts",
        "/api/v1/metadata",
    ] {
        assert_eq!(api(strata.http, path).await["status"], "success", "{path}");
    }

    // POST form bodies work like GET.
    let (code, body) = http_post_bytes(
        strata.http,
        "/api/v1/query",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("query={}&time={end}", encode("sum(cpu_temp)")).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1);
}

/// The same comparisons on a two-instance cluster: the Prometheus layout's
/// tables are led by both instances, one partition's tables flushed to
/// SSTs and the others' samples in memory, and the queries are asked
/// through each instance and through a compute instance (which reads the
/// SSTs itself and only the unflushed rows from the leaders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_match_prometheus_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let prom = PrometheusProcess::start(&dir.path().join("prom"), "global: {}\n").await;
    let mut c = TestCluster::start(ClusterOptions {
        servers: 2,
        shard_count: 4,
        ..Default::default()
    })
    .await;
    let ci = c.add_compute().await;
    let t0 = data_start();
    let data = dataset(t0);
    remote_write(prom.addr, &data).await;
    remote_write(c.servers[0].http, &data).await;

    // The tables of the metrics' partitions, led by both instances (a
    // shard moved if meta put them all on one).
    let mut parts: Vec<u64> = [
        "http_requests_total",
        "cpu_temp",
        "request_duration_seconds_bucket",
        "machine_info",
    ]
    .iter()
    .map(|m| strata_server::prom::partition(m))
    .collect();
    parts.sort_unstable();
    parts.dedup();
    let tables: Vec<String> = parts
        .iter()
        .flat_map(|&p| {
            [
                strata_server::prom::samples_table(p),
                strata_server::prom::series_table(p),
            ]
        })
        .collect();
    let mut placed = Vec::new();
    for t in &tables {
        placed.push((t.clone(), crate::cluster::shard_of(&c, t).await));
    }
    if placed.iter().all(|(_, (_, i))| *i == placed[0].1 .1) {
        let (table, (shard, from)) = placed[0].clone();
        crate::cluster::ask_move(&c, shard, 1 - from).await;
        crate::cluster::wait_moved(&c, &table, 1 - from).await;
    }
    let mut led_by = std::collections::BTreeSet::new();
    for t in &tables {
        led_by.insert(crate::cluster::shard_of(&c, t).await.1);
    }
    assert_eq!(led_by.len(), 2, "one instance leads all of {tables:?}");

    // One partition in SSTs, the rest in memory.
    let client = c.servers[1].client().await;
    for t in [
        strata_server::prom::samples_table(parts[0]),
        strata_server::prom::series_table(parts[0]),
    ] {
        strata_integration_tests::exec(&client, &format!("FLUSH TABLE {t}")).await;
    }
    let mut compared = 0;
    for (what, http) in [
        ("server0", c.servers[0].http),
        ("server1", c.servers[1].http),
        ("compute0", c.computes[ci].http),
    ] {
        let started = std::time::Instant::now();
        let n = conformance(prom.addr, http, t0).await;
        println!(
            "promql conformance through {what}: {n} answers agree ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        compared += n;
    }
    assert_eq!(compared, 3 * QUERIES.len() * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_remote_writes_into_strata() {
    let dir = tempfile::tempdir().unwrap();
    let strata = StrataProcess::start(&dir.path().join("strata")).await;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: ['{}']\n\
         remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
        strata.http, strata.http
    );
    let prom = PrometheusProcess::start(&dir.path().join("prom"), &config).await;

    let began = std::time::Instant::now();
    let mut found = None;
    while began.elapsed() < Duration::from_secs(90) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={now}&step=1",
            encode(r#"up{job="strata"}"#),
            now - 120.0
        );
        let v = api(strata.http, &path).await;
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if let Some(r) = result.first() {
            if r["values"].as_array().is_some_and(|vs| vs.len() >= 3) {
                found = Some(r.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = found.unwrap_or_else(|| {
        panic!(
            "up{{job=\"strata\"}} never reached Strata; prometheus log:\n{}",
            prom.log_tail()
        )
    });
    assert_eq!(r["metric"]["instance"], strata.http.to_string());
    assert!(r["values"].as_array().unwrap().iter().all(|p| p[1] == "1"));
    // Strata's own metrics arrived too, and the metadata API lists them.
    let v = api(strata.http, "/api/v1/label/__name__/values").await;
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&"strata_requests_total"), "{names:?}");

    // promtool, Prometheus's own client, queries Strata as a new user would.
    let promtool =
        strata_integration_tests::prometheus::prometheus_binary().with_file_name("promtool");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = std::process::Command::new(&promtool)
        .args(["query", "range"])
        .arg(format!("--start={}", now_s - 60))
        .arg(format!("--end={now_s}"))
        .arg("--step=5s")
        .arg(format!("http://{}", strata.http))
        .arg(r#"up{job="strata"}"#)
        .output()
        .expect("run promtool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("up{instance=") && text.contains("1 @["),
        "promtool query range: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every PromQL panel of the Grafana dashboard in docker/grafana runs
    // on Strata (with Grafana's $__rate_interval as 1m), and the panels
    // about requests and instances have data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docker/grafana/dashboards/strata.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr.replace("$__rate_interval", "1m");
            let path = format!(
                "/api/v1/query_range?query={}&start={}&end={now}&step=2",
                encode(&expr),
                now - 60.0
            );
            let v = api(strata.http, &path).await;
            let title = panel["title"].as_str().unwrap_or_default();
            if title.starts_with("Requests per second") || title == "Instances up" {
                assert!(
                    !v["data"]["result"].as_array().unwrap().is_empty(),
                    "panel {title} has no data: {v}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} dashboard queries");
    println!(
        "scrape → remote write → query_range: up visible after {:?}",
        began.elapsed()
    );
}
