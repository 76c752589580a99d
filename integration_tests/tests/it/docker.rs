//! Strata as users deploy it with Docker: the image of
//! `docker/Dockerfile.runtime` running standalone (a SQL round trip, a
//! restart that keeps the data in the volume), and the cluster of
//! `docker/compose.yaml` (with the test override of
//! `integration_tests/docker/compose.test.yaml`, since no official image can
//! be pulled here): the sqllogictest files against it, `docker kill` of a
//! shard's leader under write load, and a real network partition (the
//! leader cut off from meta and etcd while it still reaches Kafka and S3),
//! each checked with a ledger of acknowledged writes.
//!
//! The images come from `integration_tests/docker/build-images` (run once
//! per test; Docker's layer cache makes later runs take seconds).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use strata_client::Client;
use strata_integration_tests::{
    http_get, http_request, ledger::LedgerWriter, query, strata_binary,
};

use crate::cluster::check_exactly_once;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Runs a command; its stdout, or a panic with its output.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// `docker …`, its failure ignored (clean-up).
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// Builds (or finds in Docker's cache) the test images.
fn build_images() {
    let started = Instant::now();
    run(
        Command::new(repo().join("integration_tests/docker/build-images"))
            .env("STRATA_BIN", strata_binary()),
    );
    eprintln!("images ready in {:.1}s", started.elapsed().as_secs_f64());
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_millis())
            .unwrap_or(0)
    )
}

/// A container's IP on each of its networks.
fn container_ips(name: &str) -> HashMap<String, IpAddr> {
    let json = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", name]);
    let nets: serde_json::Value = serde_json::from_str(&json).expect("networks json");
    nets.as_object()
        .expect("networks")
        .iter()
        .filter_map(|(net, v)| Some((net.clone(), v["IPAddress"].as_str()?.parse().ok()?)))
        .collect()
}

/// `POST /sql` on an HTTP address; the status and body.
async fn sql_http(http: SocketAddr, sql: &str) -> (u16, String) {
    let body = serde_json::json!({ "query": sql }).to_string();
    http_request(http, "POST", "/sql", Some(&body))
        .await
        .unwrap_or((0, "no answer".to_string()))
}

/// Waits until `GET /health` at `http` answers 200.
async fn wait_health(http: SocketAddr, what: &str, timeout: Duration, logs: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, _)) = http_get(http, "/health").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} at {http} not healthy after {timeout:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn container_logs(name: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", "60", name])
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => e.to_string(),
    }
}

/// Removes containers and volumes when dropped.
struct Removal {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Removal {
    fn drop(&mut self) {
        for c in &self.containers {
            docker_quiet(&["rm", "-f", "-v", c]);
        }
        for v in &self.volumes {
            docker_quiet(&["volume", "rm", "-f", v]);
        }
    }
}

/// The runtime stage of `docker/Dockerfile` (built from source) and
/// `docker/Dockerfile.runtime` (a host-built binary, what these tests run)
/// are the same but for the binary's source: the tested image is the one
/// users build.
#[test]
fn both_dockerfiles_have_the_same_runtime_stage() {
    let runtime = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(repo().join(file)).expect("Dockerfile");
        let at = text
            .find("FROM debian:bookworm-slim")
            .expect("runtime stage");
        text[at..]
            .lines()
            .filter(|l| !l.starts_with("COPY "))
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (
        runtime("docker/Dockerfile"),
        runtime("docker/Dockerfile.runtime"),
    );
    assert!(a.len() > 10, "no runtime stage read");
    assert_eq!(a, b, "the runtime stages differ");
}

/// `docker run strata-test/strata standalone`: SQL over HTTP, gRPC (the
/// CLI inside the container) and PostgreSQL's port listening; the image's
/// health check turns healthy; it runs as the non-root user; after `docker
/// stop` and a new container on the same volume the rows are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_standalone_and_keeps_its_data_in_the_volume() {
    build_images();
    let name = unique("strata-it-standalone-");
    let volume = format!("{name}-data");
    let _removal = Removal {
        containers: vec![name.clone()],
        volumes: vec![volume.clone()],
    };
    let size: u64 = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Size}}",
        "strata-test/strata:latest",
    ])
    .parse()
    .expect("image size");
    eprintln!("image strata-test/strata: {} MB", size / 1_000_000);

    let start = |name: &str| {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "-v",
            &format!("{volume}:/var/lib/strata"),
            "strata-test/strata:latest",
            "standalone",
        ])
    };
    start(&name);
    let ip = *container_ips(&name).values().next().expect("an IP");
    let http = SocketAddr::new(ip, 5440);
    wait_health(http, "standalone", Duration::from_secs(60), || {
        container_logs(&name)
    })
    .await;
    assert_eq!(docker(&["exec", &name, "id", "-u"]), "10001");

    let (code, body) = sql_http(
        http,
        "CREATE TABLE cpu (host STRING TAG, usage DOUBLE, ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts))",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = sql_http(
        http,
        "INSERT INTO cpu VALUES ('a', 0.5, 1000), ('b', 0.25, 2000)",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // gRPC, through the CLI in the image.
    let out = docker(&[
        "exec",
        &name,
        "strata",
        "sql",
        "--format",
        "csv",
        "-e",
        "SELECT host, usage FROM cpu ORDER BY host",
    ]);
    assert!(
        out.contains("a,0.5") && out.contains("b,0.25"),
        "gRPC answer: {out}"
    );
    // The PostgreSQL port listens.
    let pg = SocketAddr::new(ip, 5433);
    assert!(
        tokio::net::TcpStream::connect(pg).await.is_ok(),
        "PostgreSQL port"
    );

    // The image's own health check (`strata health`) turns healthy.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
        if status == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health check says {status}; logs:\n{}",
            container_logs(&name)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A graceful stop, then a new container on the same volume.
    docker(&["stop", "-t", "30", &name]);
    docker(&["rm", &name]);
    start(&name);
    let ip = *container_ips(&name).values().next().expect("an IP");
    let http = SocketAddr::new(ip, 5440);
    wait_health(
        http,
        "standalone after restart",
        Duration::from_secs(60),
        || container_logs(&name),
    )
    .await;
    let (code, body) = sql_http(http, "SELECT count(*) AS n FROM cpu").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"n\":2"), "rows after the restart: {body}");
}

/// A compose project of `docker/compose.yaml` with the test override,
/// taken down (with its volumes) when dropped.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn command(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo())
            .args(["-p", &self.project])
            .args(["-f", "docker/compose.yaml"])
            .args(["-f", "integration_tests/docker/compose.test.yaml"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn up(project: &str) -> Self {
        let secret: String = (0..32)
            .map(|_| format!("{:x}", rand::random::<u8>() % 16))
            .collect();
        let env = vec![
            (
                "STRATA_IMAGE".to_string(),
                "strata-test/strata:latest".to_string(),
            ),
            ("STRATA_CLUSTER_SECRET".to_string(), secret),
            // Published ports on free host ports (the tests use the
            // containers' addresses).
            ("STRATA_GRPC_PORT".to_string(), String::new()),
            ("STRATA_HTTP_PORT".to_string(), String::new()),
            ("STRATA_PG_PORT".to_string(), String::new()),
            ("STRATA_META_HTTP_PORT".to_string(), String::new()),
            ("STRATA_PROMETHEUS_PORT".to_string(), String::new()),
            ("STRATA_GRAFANA_PORT".to_string(), String::new()),
        ];
        let c = Self {
            project: project.to_string(),
            env,
        };
        run(c.command().args(["up", "-d", "--no-build"]));
        c
    }

    /// The id of `service`'s container (`docker-compose ps -q`, whatever
    /// naming the compose version uses).
    fn container(&self, service: &str) -> String {
        let id = run(self.command().args(["ps", "-q", service]));
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// The address of `service`'s `port` on its network `net`.
    fn addr(&self, service: &str, net: &str, port: u16) -> SocketAddr {
        let ips = container_ips(&self.container(service));
        let ip = ips
            .get(&self.network(net))
            .unwrap_or_else(|| panic!("{service} is not on {net}: {ips:?}"));
        SocketAddr::new(*ip, port)
    }

    fn logs(&self) -> String {
        ["meta1", "meta2", "server1", "server2", "server3"]
            .iter()
            .map(|s| format!("--- {s}:\n{}", container_logs(&self.container(s))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn meta_get(&self, path: &str) -> serde_json::Value {
        for meta in ["meta1", "meta2"] {
            let http = self.addr(meta, "control", 5450);
            if let Some((200, body)) = http_get(http, path).await {
                if let Ok(v) = serde_json::from_str(&body) {
                    return v;
                }
            }
        }
        serde_json::Value::Null
    }

    /// The service (`serverN`) leading `table`'s shard, and the shard.
    async fn leader_of(&self, table: &str) -> Option<(String, u64)> {
        let r = self.meta_get(&format!("/route?table={table}")).await;
        let endpoint = r["endpoint"].as_str()?;
        Some((
            endpoint.rsplit_once(':')?.0.to_string(),
            r["shard"].as_u64()?,
        ))
    }

    /// Who holds `shard`'s lock (its serving leader, `serverN`) once its
    /// state is `serving`.
    async fn serving_holder(&self, shard: u64) -> Option<String> {
        let shards = self.meta_get("/shards").await;
        let s = shards.as_array()?.iter().find(|s| s["id"] == shard)?;
        if s["state"] != "serving" {
            return None;
        }
        Some(s["holder"].as_str()?.rsplit_once(':')?.0.to_string())
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

const SERVERS: [&str; 3] = ["server1", "server2", "server3"];

/// Waits until meta lists every server and every shard is served.
async fn wait_cluster(c: &Compose, servers: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let nodes = c.meta_get("/nodes").await;
        let shards = c.meta_get("/shards").await;
        let ready = nodes.as_array().is_some_and(|n| n.len() == servers)
            && shards
                .as_array()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["state"] == "serving"));
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the compose cluster is not serving after {timeout:?}: nodes {nodes}, shards {shards}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Drops every table of `public`, and waits until no server lists one
/// (a drop reaches the other instances' catalogs a moment later).
async fn empty_public(clients: &[Client], c: &Compose) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        for client in clients {
            for row in query(client, "SHOW TABLES").await {
                left.push(row[0].clone());
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tables not dropped: {left:?}; logs:\n{}",
            c.logs()
        );
        for table in left {
            let _ = clients[0]
                .sql("", &format!("DROP TABLE IF EXISTS \"{table}\""))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The compose cluster: up and serving; Prometheus scrapes every Strata
/// process; the sqllogictest files pass through it; `docker kill` of a
/// shard's leader under write load loses and duplicates nothing; a leader
/// cut off from meta and etcd (`docker network disconnect` of the control
/// network) while it still reaches Kafka and S3 loses its shard, commits
/// nothing after it (its flush fails, the ledger holds), and rejoins once
/// reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_serves_fails_over_and_fences_a_partitioned_leader() {
    build_images();
    let started = Instant::now();
    let c = Compose::up(&unique("strataitc"));
    for meta in ["meta1", "meta2"] {
        wait_health(
            c.addr(meta, "control", 5450),
            meta,
            Duration::from_secs(90),
            || c.logs(),
        )
        .await;
    }
    for s in SERVERS {
        wait_health(c.addr(s, "data", 5440), s, Duration::from_secs(120), || {
            c.logs()
        })
        .await;
    }
    wait_cluster(&c, 3, Duration::from_secs(120)).await;
    eprintln!(
        "compose cluster up and serving in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Meta's /metrics, and Prometheus scraping all five Strata processes.
    let leaders: f64 = {
        let mut sum = 0.0;
        for meta in ["meta1", "meta2"] {
            let (_, body) = http_get(c.addr(meta, "control", 5450), "/metrics")
                .await
                .expect("meta metrics");
            sum += body
                .lines()
                .find_map(|l| {
                    l.strip_prefix("strata_meta_is_leader ")?
                        .parse::<f64>()
                        .ok()
                })
                .expect("strata_meta_is_leader");
        }
        sum
    };
    assert_eq!(leaders, 1.0, "exactly one meta leads");
    let prometheus = c.addr("prometheus", "control", 9090);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let up = http_get(prometheus, "/api/v1/query?query=sum(up)")
            .await
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            });
        if up == Some(5.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not see 5 Strata targets up: {up:?}; its log:\n{}",
            container_logs(&c.container("prometheus"))
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The sqllogictest files, each through a different server, each on an
    // empty `public` (the tables of the file before are dropped first).
    let mut clients = Vec::new();
    for s in SERVERS {
        clients.push(
            Client::connect(&c.addr(s, "data", 8831).to_string())
                .await
                .expect("connect"),
        );
    }
    let mut failures = Vec::new();
    for (i, file) in crate::sqllogic::slt_files().into_iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        empty_public(&clients, &c).await;
        failures.extend(
            crate::sqllogic::run_file(&file, client, false, &["cluster"], || c.logs()).await,
        );
    }
    assert!(
        failures.is_empty(),
        "{} file(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // docker kill of the leader of the ledger table's shard, under load.
    crate::cluster::create_append(&clients[0], "ledger").await;
    let (victim, _) = c.leader_of("ledger").await.expect("ledger's leader");
    let vi = SERVERS.iter().position(|s| *s == victim).expect("a server");
    let writer = LedgerWriter::start(clients.clone(), "ledger");
    writer.progress(100, "before the kill", || c.logs()).await;
    docker(&["kill", &c.container(&victim)]);
    let killed_at = Instant::now();
    writer.progress(100, "after the kill", || c.logs()).await;
    let (now, _) = c.leader_of("ledger").await.expect("ledger's leader");
    assert_ne!(now, victim, "the killed leader still leads");
    eprintln!(
        "after docker kill of {victim}: 100 more writes acknowledged in {:.1}s",
        killed_at.elapsed().as_secs_f64()
    );
    docker(&["start", &c.container(&victim)]);
    wait_health(
        c.addr(&victim, "data", 5440),
        &victim,
        Duration::from_secs(120),
        || c.logs(),
    )
    .await;
    wait_cluster(&c, 3, Duration::from_secs(120)).await;
    // The restarted container may have a new address: reconnect.
    let again = Client::connect(&c.addr(&victim, "data", 8831).to_string())
        .await
        .expect("connect");
    clients[vi] = again.clone();
    writer.set_client(vi, again);
    writer.progress(50, "after the restart", || c.logs()).await;

    // A network partition: the leader of `fenced`'s shard is cut off from
    // meta and etcd (the control network) but keeps Kafka and S3 (the data
    // network). Meta gives its shard to another instance, whose open fences
    // the WAL and claims the manifests.
    crate::cluster::create_append(&clients[0], "fenced").await;
    let (cut, shard) = c.leader_of("fenced").await.expect("fenced's leader");
    let ci = SERVERS.iter().position(|s| *s == cut).expect("a server");
    let fenced = LedgerWriter::start(clients.clone(), "fenced");
    fenced
        .progress(100, "before the partition", || c.logs())
        .await;
    docker(&[
        "network",
        "disconnect",
        &c.network("control"),
        &c.container(&cut),
    ]);
    let cut_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let holder = loop {
        if let Some(h) = c.serving_holder(shard).await {
            if h != cut {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the partitioned leader's shard is not served elsewhere; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "shard {shard} served by {holder} {:.1}s after the partition",
        cut_at.elapsed().as_secs_f64()
    );
    // A write to the cut-off instance in flight when the new leader opened
    // ends within its 5 s timeout; after that, the old leader acknowledges
    // nothing (each of its appends finds the new leader's fence), while
    // writes through the others go on.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let acked_by_cut = fenced.acked_by(ci);
    fenced
        .progress(100, "after the shard moved", || c.logs())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fenced.acked_by(ci),
        acked_by_cut,
        "the partitioned instance, replaced, still acknowledged writes"
    );
    // Nor does its flush commit.
    let flush = tokio::time::timeout(
        Duration::from_secs(60),
        clients[ci].sql("", "FLUSH TABLE fenced"),
    )
    .await;
    assert!(
        !matches!(flush, Ok(Ok(_))),
        "the partitioned instance flushed a table it no longer leads"
    );
    // Reconnected, it rejoins: meta lists it, and writes through it work
    // again (forwarded to the new leader).
    docker(&[
        "network",
        "connect",
        &c.network("control"),
        &c.container(&cut),
    ]);
    wait_cluster(&c, 3, Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fenced.acked_by(ci) == acked_by_cut {
        assert!(
            Instant::now() < deadline,
            "writes through the reconnected instance do not succeed; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let ledger = writer.finish().await;
    let fenced_ledger = fenced.finish().await;
    let reader = clients[(ci + 1) % clients.len()].clone();
    check_exactly_once(&reader, "ledger", &ledger).await;
    check_exactly_once(&reader, "fenced", &fenced_ledger).await;
    eprintln!(
        "ledger: {} and {} acknowledged rows, each present exactly once",
        ledger.len(),
        fenced_ledger.len()
    );
}
