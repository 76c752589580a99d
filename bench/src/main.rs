//! `strata-bench`: the TSBS "cpu-only" workload for Strata and its peers.
//!
//! - `gen` writes the dataset, deterministic for a seed, as InfluxDB line
//!   protocol (for Strata, VictoriaMetrics and InfluxDB) or as Parquet (for
//!   DuckDB and DataFusion, the scan-and-aggregate references).
//! - `load` sends a line-protocol file to a `/write` endpoint with N
//!   concurrent workers and reports rows/s, points/s and the p50/p99 latency
//!   of a batch; with `--remote-write` it sends the same rows as Prometheus
//!   remote write (one series per host and field, named `cpu_<field>`).
//!
//! One row per host every 10 s: 10 tags (hostname, region, datacenter, rack,
//! os, arch, team, service, service_version, service_environment) and 10
//! `usage_*` fields, each a clamped random walk in [0, 100].

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arrow::{
    array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, TimeUnit},
};
use clap::{Parser, Subcommand, ValueEnum};

pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

pub const TAGS: [&str; 10] = [
    "hostname",
    "region",
    "datacenter",
    "rack",
    "os",
    "arch",
    "team",
    "service",
    "service_version",
    "service_environment",
];

const REGIONS: [(&str, &[&str]); 9] = [
    (
        "us-east-1",
        &["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1e"],
    ),
    ("us-west-1", &["us-west-1a", "us-west-1b"]),
    ("us-west-2", &["us-west-2a", "us-west-2b", "us-west-2c"]),
    ("eu-west-1", &["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("eu-central-1", &["eu-central-1a", "eu-central-1b"]),
    ("ap-southeast-1", &["ap-southeast-1a", "ap-southeast-1b"]),
    ("ap-southeast-2", &["ap-southeast-2a", "ap-southeast-2b"]),
    ("ap-northeast-1", &["ap-northeast-1a", "ap-northeast-1c"]),
    ("sa-east-1", &["sa-east-1a", "sa-east-1b", "sa-east-1c"]),
];

#[derive(Parser)]
#[command(name = "strata-bench", about = "TSBS-style cpu-only workload")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Influx,
    Parquet,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the dataset.
    Gen {
        /// Number of hosts.
        #[arg(long, default_value_t = 100)]
        scale: usize,
        /// Start time, RFC 3339.
        #[arg(long, default_value = "2024-01-01T00:00:00Z")]
        start: String,
        /// Length, e.g. `1h`, `1d`.
        #[arg(long, default_value = "1h", value_parser = humantime_like)]
        duration: Duration,
        #[arg(long, default_value_t = 123)]
        seed: u64,
        #[arg(long, value_enum, default_value = "influx")]
        format: Format,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Send a generated line-protocol file to Strata over gRPC `Write`
    /// (converted to write requests before the clock starts).
    LoadGrpc {
        /// Strata's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8831")]
        endpoint: String,
        #[arg(long, default_value = "public")]
        db: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Rows per request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    /// Time one SQL statement (read from stdin) over gRPC `SqlQuery`, whose
    /// answer is Arrow: one warm-up run, then `--runs` timed runs. Prints
    /// `{"mean_ms", "median_ms", "p99_ms", "rows"}`.
    Query {
        /// Strata's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8831")]
        endpoint: String,
        #[arg(long, default_value = "public")]
        db: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Send a line-protocol file, or the dataset generated as it is sent
    /// (`--generate`, for runs too large for a file), to a `/write` URL.
    Load {
        /// The write URL, e.g. `http://127.0.0.1:5440/write?db=bench&precision=ms`.
        #[arg(long)]
        url: String,
        #[arg(
            long,
            required_unless_present = "generate",
            conflicts_with = "generate"
        )]
        file: Option<PathBuf>,
        /// Generate the rows while sending them, by a thread of the loader:
        /// `SCALE,DURATION`, e.g. `1000,12d` (start 2024-01-01, seed 123).
        #[arg(long, value_parser = scale_and_duration)]
        generate: Option<(usize, Duration)>,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Lines per request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Send each batch as a Prometheus remote-write request (snappy
        /// protobuf, one series per host and field: `cpu_usage_user{hostname=..}`)
        /// to a `/api/v1/write` URL, instead of line protocol.
        #[arg(long)]
        remote_write: bool,
    },
}

/// `SCALE,DURATION`, e.g. `1000,12d`.
fn scale_and_duration(s: &str) -> Result<(usize, Duration), String> {
    let (scale, duration) = s
        .split_once(',')
        .ok_or_else(|| format!("expected SCALE,DURATION, got {s}"))?;
    let scale = scale
        .parse()
        .map_err(|e| format!("bad scale {scale}: {e}"))?;
    Ok((scale, humantime_like(duration)?))
}

/// `10s`, `5m`, `1h`, `1d`, or seconds.
fn humantime_like(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s}")),
    };
    Ok(Duration::from_secs(secs))
}

/// SplitMix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

struct Host {
    tags: [String; 10],
    values: [f64; 10],
}

fn hosts(scale: usize, rng: &mut Rng) -> Vec<Host> {
    (0..scale)
        .map(|i| {
            let (region, dcs) = REGIONS[rng.pick(REGIONS.len())];
            let tags = [
                format!("host_{i}"),
                region.to_string(),
                dcs[rng.pick(dcs.len())].to_string(),
                rng.pick(100).to_string(),
                ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"][rng.pick(3)].to_string(),
                ["x64", "x86"][rng.pick(2)].to_string(),
                ["SF", "NYC", "LON", "CHI"][rng.pick(4)].to_string(),
                rng.pick(20).to_string(),
                rng.pick(2).to_string(),
                ["production", "staging", "test"][rng.pick(3)].to_string(),
            ];
            let mut values = [0.0; 10];
            for v in &mut values {
                *v = (rng.unit() * 100.0).round();
            }
            Host { tags, values }
        })
        .collect()
}

/// Advances every field of a host one step: a random walk clamped to
/// [0, 100], rounded to 0.01.
fn step(host: &mut Host, rng: &mut Rng) {
    for v in &mut host.values {
        let next = (*v + (rng.unit() - 0.5) * 2.0).clamp(0.0, 100.0);
        *v = (next * 100.0).round() / 100.0;
    }
}

/// The line-protocol rows of the dataset, in order (every host at one
/// time, then the next time), produced in pieces.
struct LineGen {
    rng: Rng,
    hosts: Vec<Host>,
    start_ms: i64,
    steps: i64,
    step: i64,
    host: usize,
}

impl LineGen {
    fn new(scale: usize, start_ms: i64, duration: Duration, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let hosts = hosts(scale, &mut rng);
        Self {
            rng,
            hosts,
            start_ms,
            steps: (duration.as_secs() / 10) as i64,
            step: 0,
            host: 0,
        }
    }

    fn total(&self) -> usize {
        self.steps as usize * self.hosts.len()
    }

    /// Appends up to `n` lines to `out`; returns how many (0 at the end).
    fn fill(&mut self, n: usize, out: &mut String) -> usize {
        use std::fmt::Write as _;
        let mut written = 0;
        while written < n && self.step < self.steps && !self.hosts.is_empty() {
            let ts = self.start_ms + self.step * 10_000;
            let h = &mut self.hosts[self.host];
            step(h, &mut self.rng);
            out.push_str("cpu");
            for (k, v) in TAGS.iter().zip(&h.tags) {
                let _ = write!(out, ",{k}={v}");
            }
            for (i, (k, v)) in FIELDS.iter().zip(&h.values).enumerate() {
                let _ = write!(out, "{}{k}={v}", if i == 0 { ' ' } else { ',' });
            }
            let _ = writeln!(out, " {ts}");
            written += 1;
            self.host += 1;
            if self.host == self.hosts.len() {
                self.host = 0;
                self.step += 1;
            }
        }
        written
    }
}

fn generate(
    scale: usize,
    start_ms: i64,
    duration: Duration,
    seed: u64,
    format: Format,
    out: PathBuf,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut rng = Rng(seed);
    let mut hosts = hosts(scale, &mut rng);
    let steps = (duration.as_secs() / 10) as i64;
    let file = File::create(&out)?;
    let mut rows = 0usize;
    match format {
        Format::Influx => {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let mut lines = LineGen::new(scale, start_ms, duration, seed);
            let mut buf = String::new();
            loop {
                buf.clear();
                let n = lines.fill(10_000, &mut buf);
                if n == 0 {
                    break;
                }
                w.write_all(buf.as_bytes())?;
                rows += n;
            }
            w.flush()?;
        }
        Format::Parquet => {
            let mut fields = vec![Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            )];
            fields.extend(TAGS.iter().map(|t| Field::new(*t, DataType::Utf8, false)));
            fields.extend(
                FIELDS
                    .iter()
                    .map(|f| Field::new(*f, DataType::Float64, false)),
            );
            let schema = Arc::new(Schema::new(fields));
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))?;
            // One batch per 100 steps keeps memory small.
            let mut s = 0;
            while s < steps {
                let end = (s + 100).min(steps);
                let n = (end - s) as usize * hosts.len();
                let mut ts = Vec::with_capacity(n);
                let mut tags: Vec<Vec<String>> = (0..10).map(|_| Vec::with_capacity(n)).collect();
                let mut vals: Vec<Vec<f64>> = (0..10).map(|_| Vec::with_capacity(n)).collect();
                for k in s..end {
                    for h in &mut hosts {
                        step(h, &mut rng);
                        ts.push(start_ms + k * 10_000);
                        for i in 0..10 {
                            tags[i].push(h.tags[i].clone());
                            vals[i].push(h.values[i]);
                        }
                    }
                }
                let mut cols: Vec<ArrayRef> = vec![Arc::new(TimestampMillisecondArray::from(ts))];
                cols.extend(
                    tags.into_iter()
                        .map(|t| Arc::new(StringArray::from(t)) as ArrayRef),
                );
                cols.extend(
                    vals.into_iter()
                        .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
                );
                writer.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
                rows += n;
                s = end;
            }
            writer.close()?;
        }
    }
    Ok(rows)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// One request: its body and how many rows it carries.
#[derive(Clone)]
struct Body {
    data: Vec<u8>,
    rows: usize,
}

impl Body {
    /// A batch of generated lines, as line protocol or as a snappy
    /// remote-write request.
    fn of(lines: String, remote_write: bool) -> Result<Body, String> {
        let rows = lines.lines().count();
        let data = if remote_write {
            remote_write_body(&lines)?
        } else {
            lines.into_bytes()
        };
        Ok(Body { data, rows })
    }
}

/// The rows of a batch as one Prometheus remote-write request, snappy
/// compressed: per host and field one series `cpu_<field>` with the host's
/// tags as labels (sorted by name, as Prometheus sends them) and the batch's
/// samples of that host in time order.
fn remote_write_body(lines: &str) -> Result<Vec<u8>, String> {
    use prost::Message as _;
    use strata_proto::prometheus::{Label, RemoteWriteRequest, Sample, TimeSeries};
    let mut order: Vec<usize> = (0..TAGS.len()).collect();
    order.sort_by_key(|&i| TAGS[i]);
    let mut by_host: std::collections::BTreeMap<Vec<String>, Vec<(Vec<f64>, i64)>> =
        Default::default();
    for line in lines.lines() {
        let (tags, values, ts) =
            parse_line(line).ok_or_else(|| format!("not a generated line: {line}"))?;
        by_host.entry(tags).or_default().push((values, ts));
    }
    let mut timeseries = Vec::with_capacity(by_host.len() * FIELDS.len());
    for (tags, rows) in by_host {
        for (f, field) in FIELDS.iter().enumerate() {
            let mut labels = vec![Label {
                name: "__name__".to_string(),
                value: format!("cpu_{field}"),
            }];
            labels.extend(order.iter().map(|&i| Label {
                name: TAGS[i].to_string(),
                value: tags[i].clone(),
            }));
            timeseries.push(TimeSeries {
                labels,
                samples: rows
                    .iter()
                    .map(|(values, ts)| Sample {
                        value: values[f],
                        timestamp: *ts,
                    })
                    .collect(),
                histograms: Vec::new(),
            });
        }
    }
    let raw = RemoteWriteRequest { timeseries }.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .map_err(|e| format!("snappy: {e}"))
}

/// Request bodies, read up front or generated while the load runs.
enum Bodies {
    Ready(Vec<Body>, AtomicUsize),
    Generated(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Body>>),
}

impl Bodies {
    async fn next(&self) -> Option<Body> {
        match self {
            Bodies::Ready(all, next) => all.get(next.fetch_add(1, Ordering::Relaxed)).cloned(),
            Bodies::Generated(rx) => rx.lock().await.recv().await,
        }
    }
}

async fn load(
    url: String,
    file: Option<PathBuf>,
    generated: Option<(usize, Duration)>,
    workers: usize,
    batch: usize,
    remote_write: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let (bodies, lines) = match (file, generated) {
        (Some(file), _) => {
            // Read and cut into requests (and encode them) first, so that
            // reading is not timed.
            let mut batches: Vec<Body> = Vec::new();
            let mut current = String::new();
            let mut lines = 0usize;
            for line in BufReader::new(File::open(&file)?).lines() {
                let line = line?;
                current.push_str(&line);
                current.push('\n');
                lines += 1;
                if lines.is_multiple_of(batch) {
                    batches.push(Body::of(std::mem::take(&mut current), remote_write)?);
                }
            }
            if !current.is_empty() {
                batches.push(Body::of(current, remote_write)?);
            }
            (Bodies::Ready(batches, AtomicUsize::new(0)), lines)
        }
        (None, Some((scale, duration))) => {
            let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")?;
            let mut gen = LineGen::new(scale, start.timestamp_millis(), duration, 123);
            let lines = gen.total();
            let (tx, rx) = tokio::sync::mpsc::channel(workers * 2);
            std::thread::spawn(move || loop {
                let mut lines = String::with_capacity(batch * 300);
                if gen.fill(batch, &mut lines) == 0 {
                    break;
                }
                let body = match Body::of(lines, remote_write) {
                    Ok(body) => body,
                    Err(e) => {
                        eprintln!("strata-bench: {e}");
                        std::process::exit(1);
                    }
                };
                if tx.blocking_send(body).is_err() {
                    break;
                }
            });
            (Bodies::Generated(tokio::sync::Mutex::new(rx)), lines)
        }
        (None, None) => return Err("load needs --file or --generate".into()),
    };
    let bodies = Arc::new(bodies);
    let sent = Arc::new(AtomicUsize::new(0));
    let done_rows = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .timeout(Duration::from_secs(120))
        .build()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, bodies, sent, done_rows) = (
            client.clone(),
            url.clone(),
            bodies.clone(),
            sent.clone(),
            done_rows.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(Body { data, rows: n }) = bodies.next().await {
                sent.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let mut req = client.post(&url).body(data);
                if remote_write {
                    req = req
                        .header("Content-Encoding", "snappy")
                        .header("Content-Type", "application/x-protobuf")
                        .header("X-Prometheus-Remote-Write-Version", "0.1.0");
                }
                let resp = req.send().await;
                match resp {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        return Err(format!("write failed: {status} {text}"));
                    }
                    Err(e) => return Err(format!("write failed: {e}")),
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                done_rows.fetch_add(n, Ordering::Relaxed);
            }
            Ok(latencies)
        }));
    }
    // Progress on stderr, once a second.
    let progress = {
        let done_rows = done_rows.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done_rows.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprint!(
                    "\r  {:>5.1}% {d}/{lines} rows, {:.0} rows/s   ",
                    d as f64 * 100.0 / lines.max(1) as f64,
                    d as f64 / secs
                );
            }
        })
    };
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    eprintln!();
    report(
        done_rows.load(Ordering::Relaxed),
        secs,
        sent.load(Ordering::Relaxed),
        latencies,
    );
    Ok(())
}

/// One generated line (`cpu,tags fields ts` with float fields and a
/// millisecond timestamp) as (tag values, field values, timestamp).
fn parse_line(line: &str) -> Option<(Vec<String>, Vec<f64>, i64)> {
    let mut parts = line.split(' ');
    let (series, fields, ts) = (parts.next()?, parts.next()?, parts.next()?);
    let tags = series
        .split(',')
        .skip(1)
        .map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
        .collect::<Option<Vec<_>>>()?;
    let values = fields
        .split(',')
        .map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect::<Option<Vec<_>>>()?;
    Some((tags, values, ts.trim().parse().ok()?))
}

/// Rows grouped into gRPC write requests of `batch` rows, one series entry
/// per host and request.
fn write_requests(
    file: &PathBuf,
    db: &str,
    batch: usize,
) -> Result<Vec<(strata_proto::storage::WriteRequest, usize)>, Box<dyn std::error::Error>> {
    use strata_proto::storage::{
        value, Field, FieldGroup, RequestContext, Tag, Value, WriteRequest, WriteSeriesEntry,
        WriteTableRequest,
    };
    let mut out = Vec::new();
    let mut rows: Vec<(Vec<String>, Vec<f64>, i64)> = Vec::with_capacity(batch);
    let flush = |rows: &mut Vec<(Vec<String>, Vec<f64>, i64)>,
                 out: &mut Vec<(WriteRequest, usize)>| {
        let mut by_series: std::collections::BTreeMap<Vec<String>, Vec<FieldGroup>> =
            Default::default();
        let n = rows.len();
        for (tags, values, ts) in rows.drain(..) {
            by_series.entry(tags).or_default().push(FieldGroup {
                timestamp: ts,
                fields: values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Field {
                        name_index: i as u32,
                        value: Some(Value {
                            value: Some(value::Value::Float64Value(v)),
                        }),
                    })
                    .collect(),
            });
        }
        let entries = by_series
            .into_iter()
            .map(|(tags, field_groups)| WriteSeriesEntry {
                tags: tags
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Tag {
                        name_index: i as u32,
                        value: Some(Value {
                            value: Some(value::Value::StringValue(v)),
                        }),
                    })
                    .collect(),
                field_groups,
            })
            .collect();
        out.push((
            WriteRequest {
                context: Some(RequestContext {
                    database: db.to_string(),
                }),
                table_requests: vec![WriteTableRequest {
                    table: "cpu".to_string(),
                    tag_names: TAGS.iter().map(|t| t.to_string()).collect(),
                    field_names: FIELDS.iter().map(|f| f.to_string()).collect(),
                    entries,
                }],
            },
            n,
        ));
    };
    for line in BufReader::new(File::open(file)?).lines() {
        let line = line?;
        let row = parse_line(&line).ok_or_else(|| format!("not a generated line: {line}"))?;
        rows.push(row);
        if rows.len() == batch {
            flush(&mut rows, &mut out);
        }
    }
    if !rows.is_empty() {
        flush(&mut rows, &mut out);
    }
    Ok(out)
}

async fn load_grpc(
    endpoint: String,
    db: String,
    file: PathBuf,
    workers: usize,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let requests = Arc::new(write_requests(&file, &db, batch)?);
    let total: usize = requests.iter().map(|r| r.1).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let client = strata_client::Client::connect(&endpoint).await?;
        let (requests, next) = (requests.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((req, _)) = requests.get(i) else {
                    break;
                };
                let t = Instant::now();
                client
                    .write(req.clone())
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    report(
        total,
        started.elapsed().as_secs_f64(),
        requests.len(),
        latencies,
    );
    Ok(())
}

/// Prints one machine-readable line for scripts.
fn report(rows: usize, secs: f64, batches: usize, mut latencies: Vec<f64>) {
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"rows\": {rows}, \"points\": {}, \"seconds\": {secs:.3}, \"rows_per_s\": {:.0}, \"points_per_s\": {:.0}, \"batches\": {batches}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}}}",
        rows * FIELDS.len(),
        rows as f64 / secs,
        (rows * FIELDS.len()) as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

/// `strata-bench query`: times the statement on stdin over gRPC.
async fn query(
    endpoint: String,
    db: String,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut sql = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut sql)?;
    let client = strata_client::Client::connect(&endpoint).await?;
    let once = || async {
        match client.sql(&db, &sql).await? {
            strata_client::SqlOutput::Rows(batches) => {
                Ok::<usize, Box<dyn std::error::Error>>(batches.iter().map(|b| b.num_rows()).sum())
            }
            strata_client::SqlOutput::AffectedRows(n) => Ok(n as usize),
        }
    };
    let mut rows = once().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        rows = once().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"mean_ms\": {mean:.2}, \"median_ms\": {:.2}, \"p99_ms\": {:.2}, \"rows\": {rows}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Gen {
            scale,
            start,
            duration,
            seed,
            format,
            out,
        } => match chrono::DateTime::parse_from_rfc3339(&start) {
            Ok(t) => generate(
                scale,
                t.timestamp_millis(),
                duration,
                seed,
                format,
                out.clone(),
            )
            .map(|rows| eprintln!("wrote {rows} rows to {}", out.display())),
            Err(e) => Err(format!("bad --start {start}: {e}").into()),
        },
        Command::Load {
            url,
            file,
            generate,
            workers,
            batch,
            remote_write,
        } => load(url, file, generate, workers, batch, remote_write).await,
        Command::LoadGrpc {
            endpoint,
            db,
            file,
            workers,
            batch,
        } => load_grpc(endpoint, db, file, workers, batch).await,
        Command::Query { endpoint, db, runs } => query(endpoint, db, runs).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_hosts_and_walks() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        let (mut ha, mut hb) = (hosts(5, &mut a), hosts(5, &mut b));
        for _ in 0..100 {
            for (x, y) in ha.iter_mut().zip(hb.iter_mut()) {
                step(x, &mut a);
                step(y, &mut b);
            }
        }
        for (x, y) in ha.iter().zip(&hb) {
            assert_eq!(x.tags, y.tags);
            assert_eq!(x.values, y.values);
            assert!(x.values.iter().all(|v| (0.0..=100.0).contains(v)));
        }
        assert_eq!(humantime_like("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(humantime_like("90"), Ok(Duration::from_secs(90)));
        assert!(humantime_like("1y").is_err());
    }

    #[test]
    fn a_remote_write_batch_holds_one_series_per_host_and_field() {
        use prost::Message as _;
        let mut gen = LineGen::new(3, 1_700_000_000_000, Duration::from_secs(60), 1);
        let mut lines = String::new();
        assert_eq!(gen.fill(18, &mut lines), 18);
        let body = Body::of(lines.clone(), true).unwrap();
        assert_eq!(body.rows, 18);
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body.data)
            .unwrap();
        let req = strata_proto::prometheus::RemoteWriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 3 * FIELDS.len());
        let first = parse_line(lines.lines().next().unwrap()).unwrap();
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert_eq!(names.len(), TAGS.len() + 1);
            assert_eq!(ts.samples.len(), 6);
            assert!(ts
                .samples
                .windows(2)
                .all(|w| w[0].timestamp + 10_000 == w[1].timestamp));
        }
        // The first line's host and usage_user value, as a sample.
        let host = &first.0[0];
        let user = req
            .timeseries
            .iter()
            .find(|t| {
                t.labels
                    .iter()
                    .any(|l| l.name == "__name__" && l.value == "cpu_usage_user")
                    && t.labels
                        .iter()
                        .any(|l| l.name == "hostname" && &l.value == host)
            })
            .unwrap();
        assert_eq!(user.samples[0].value, first.1[0]);
        assert_eq!(user.samples[0].timestamp, first.2);
    }
}
