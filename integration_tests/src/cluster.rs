//! A cluster harness: real `strata meta` and `strata server` processes on
//! loopback ports and temporary directories, over the services of
//! `scripts/test-services` (etcd, Kafka, S3).
//!
//! Each cluster is isolated from other tests by a unique cluster name (its
//! etcd keys), Kafka topic prefix and S3 key prefix. Any process can be
//! killed with SIGKILL, stopped, restarted or added. Dropping the cluster
//! kills every process it started, by pid, and nothing else.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{free_addr, http_get, strata_binary, Services};

/// How a test cluster is configured.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub metas: usize,
    pub servers: usize,
    pub shard_count: u64,
    /// An instance silent this long is dead.
    pub node_ttl: Duration,
    /// How long a new meta leader waits before placing shards.
    pub startup_grace: Duration,
    /// Meta with its own embedded etcd (only with one meta), instead of the
    /// shared test etcd.
    pub embedded_etcd: bool,
    /// Extra environment of every instance (engine settings, failpoints).
    pub server_env: Vec<(String, String)>,
    /// Run on a private set of services (its own broker, S3 server and
    /// etcd), for a test that stops them.
    pub private_services: bool,
    /// Followers per shard (meta's `replicas`).
    pub replicas: u64,
    /// Appended to meta's configuration file (e.g. a `[balance]` section).
    pub meta_toml: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            metas: 1,
            servers: 3,
            shard_count: 6,
            node_ttl: Duration::from_secs(3),
            startup_grace: Duration::from_secs(2),
            embedded_etcd: false,
            server_env: Vec::new(),
            private_services: false,
            replicas: 0,
            meta_toml: String::new(),
        }
    }
}

/// One `strata` process of a cluster.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The PostgreSQL address (instances only).
    pub pg: Option<SocketAddr>,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(strata_binary());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("STRATA_QUERY__THREADS", "2");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn strata"));
    }

    /// Waits until `GET /health` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited during startup with {status}; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            if http_get(self.http, "/health")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn endpoint(&self) -> String {
        self.grpc.to_string()
    }

    pub async fn client(&self) -> strata_client::Client {
        strata_client::Client::connect(&self.endpoint())
            .await
            .expect("connect")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process stops dead (a long pause, as a stalled VM or a
    /// partition would look from outside) until [`Self::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-STOP")
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
    }

    /// How many lines of the log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// SIGTERM (a clean shutdown), then wait.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::terminate(child);
        }
    }

    /// Starts again with the same arguments, ports and data.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill {} first", self.name);
        self.spawn();
        self.wait_ready(Duration::from_secs(120)).await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        // An embedded etcd this meta started (its pid file is ours).
        if let Ok(pid) = std::fs::read_to_string(self.data_dir.join("etcd.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

/// A running test cluster.
pub struct TestCluster {
    pub services: Services,
    pub opts: ClusterOptions,
    dir: TempDir,
    pub name: String,
    pub metas: Vec<Proc>,
    pub servers: Vec<Proc>,
    /// Compute instances (`strata server --role compute`), apart from
    /// `servers`: they lead no shard.
    pub computes: Vec<Proc>,
    etcd: Vec<String>,
    /// The cluster secret meta and every instance share (random per
    /// cluster, passed as `$STRATA_CLUSTER_SECRET`).
    pub secret: String,
}

impl TestCluster {
    /// Starts the services' clients, the meta processes and the instances,
    /// and waits until every shard is served.
    pub async fn start(opts: ClusterOptions) -> Self {
        let services = if opts.private_services {
            Services::private()
        } else {
            Services::from_env()
        };
        let etcd: Vec<String> = services
            .var("STRATA_ETCD_ENDPOINTS")
            .expect("STRATA_ETCD_ENDPOINTS is not set; see scripts/test-services env")
            .split(',')
            .map(str::to_string)
            .collect();
        let name = format!(
            "c{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                % 1_000_000_000_000
        );
        let mut c = Self {
            services,
            opts: opts.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
            name,
            metas: Vec::new(),
            servers: Vec::new(),
            computes: Vec::new(),
            etcd,
            secret: format!("{:032x}", rand::random::<u128>()),
        };
        for _ in 0..opts.metas {
            c.add_meta().await;
        }
        for _ in 0..opts.servers {
            c.add_server_no_wait().await;
        }
        c.wait_serving(Duration::from_secs(90)).await;
        c
    }

    fn secret_env(&self) -> (String, String) {
        ("STRATA_CLUSTER_SECRET".to_string(), self.secret.clone())
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The meta gRPC endpoints, comma-separated.
    pub fn meta_endpoints(&self) -> String {
        self.metas
            .iter()
            .map(Proc::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn add_meta(&mut self) {
        let i = self.metas.len();
        let data_dir = self.root().join(format!("meta{i}"));
        let config = self.root().join(format!("meta{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "cluster = \"{}\"\nshard_count = {}\nreplicas = {}\nnode_ttl = \"{}ms\"\nstartup_grace = \"{}ms\"\n{}\n",
                self.name,
                self.opts.shard_count,
                self.opts.replicas,
                self.opts.node_ttl.as_millis(),
                self.opts.startup_grace.as_millis(),
                self.opts.meta_toml
            ),
        )
        .expect("write meta config");
        let grpc = free_addr();
        let http = free_addr();
        let mut args: Vec<String> = vec![
            "meta".into(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
            "--http-addr".into(),
            http.to_string(),
        ];
        if self.opts.embedded_etcd {
            args.push("--embedded-etcd".into());
        } else {
            args.push("--etcd".into());
            args.push(self.etcd.join(","));
        }
        let mut p = Proc {
            child: None,
            name: format!("meta{i}"),
            log: self.root().join(format!("meta{i}.log")),
            data_dir,
            grpc,
            http,
            pg: None,
            args,
            env: self
                .services
                .env()
                .iter()
                .cloned()
                .chain([self.secret_env()])
                .collect(),
        };
        p.spawn();
        p.wait_ready(Duration::from_secs(60)).await;
        self.metas.push(p);
    }

    async fn add_server_no_wait(&mut self) -> usize {
        let p = self
            .new_instance("server", self.servers.len(), "data")
            .await;
        self.servers.push(p);
        self.servers.len() - 1
    }

    /// Adds a compute instance (`--role compute`) and waits until it
    /// answers; its index in `computes`.
    pub async fn add_compute(&mut self) -> usize {
        let p = self
            .new_instance("compute", self.computes.len(), "compute")
            .await;
        self.computes.push(p);
        self.computes.len() - 1
    }

    async fn new_instance(&self, kind: &str, i: usize, role: &str) -> Proc {
        let data_dir = self.root().join(format!("{kind}{i}"));
        let grpc = free_addr();
        let http = free_addr();
        let pg = free_addr();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config/cluster.toml");
        let args: Vec<String> = vec![
            "server".into(),
            "--config".into(),
            config.display().to_string(),
            "--meta".into(),
            self.meta_endpoints(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
            "--http-addr".into(),
            http.to_string(),
            "--pg-addr".into(),
            pg.to_string(),
            "--role".into(),
            role.into(),
        ];
        let env = vec![
            (
                "STRATA_WAL__TOPIC_PREFIX".to_string(),
                format!("t-{}", self.name),
            ),
            (
                "STRATA_OBJECT_STORE__PREFIX".to_string(),
                format!("t-{}", self.name),
            ),
            // Small test clusters: keep the local SST cache small.
            ("STRATA_CACHE__DISK_SIZE".to_string(), "64MB".to_string()),
        ];
        let mut env = env;
        env.push(self.secret_env());
        env.extend(self.services.env().iter().cloned());
        env.extend(self.opts.server_env.iter().cloned());
        let mut p = Proc {
            child: None,
            name: format!("{kind}{i}"),
            log: self.root().join(format!("{kind}{i}.log")),
            data_dir,
            grpc,
            http,
            pg: Some(pg),
            args,
            env,
        };
        p.spawn();
        p.wait_ready(Duration::from_secs(120)).await;
        p
    }

    /// Adds an instance and waits until it is registered.
    pub async fn add_server(&mut self) -> usize {
        self.add_server_no_wait().await
    }

    /// `GET` on meta's HTTP API, from whichever meta process answers.
    pub async fn meta_get(&self, path: &str) -> serde_json::Value {
        for _ in 0..100 {
            for m in &self.metas {
                if let Some((200, body)) = http_get(m.http, path).await {
                    if let Ok(v) = serde_json::from_str(&body) {
                        return v;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no meta answered GET {path}");
    }

    /// `POST` on meta's HTTP API, with the cluster secret; returns
    /// (status, body).
    pub async fn meta_post(&self, path: &str) -> (u16, String) {
        for m in &self.metas {
            let auth = [("x-strata-cluster-secret", self.secret.as_str())];
            if let Some(r) = crate::http_post_bytes(m.http, path, &auth, b"").await {
                return r;
            }
        }
        panic!("no meta answered POST {path}");
    }

    /// Every shard, as meta's `/shards` shows it.
    pub async fn shards(&self) -> Vec<serde_json::Value> {
        self.meta_get("/shards")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every shard is served by the node meta assigned it to.
    pub async fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let shards = self.shards().await;
            if !shards.is_empty() && shards.iter().all(|s| s["state"] == "serving") {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| format!("--- {}:\n{}", s.name, s.log_tail()))
                    .collect();
                panic!(
                    "shards not all serving after {timeout:?}: {shards:?}\nmeta log:\n{}\n{}",
                    self.metas.first().map(Proc::log_tail).unwrap_or_default(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the server leading `shard`.
    pub async fn leader_of(&self, shard: u64) -> Option<usize> {
        let shards = self.shards().await;
        let s = shards.iter().find(|s| s["id"] == shard)?;
        let leader = s["leader"].as_str()?;
        self.servers.iter().position(|p| p.endpoint() == leader)
    }

    /// Shards per server endpoint.
    pub async fn layout(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for s in self.shards().await {
            let leader = s["leader"].as_str().unwrap_or("").to_string();
            out.entry(leader)
                .or_default()
                .push(s["id"].as_u64().unwrap_or(0));
        }
        out
    }

    /// The index of the meta process that leads.
    pub async fn meta_leader(&self) -> Option<usize> {
        let v = self.meta_get("/leader").await;
        let leader = v["leader"].as_str()?;
        self.metas.iter().position(|m| m.endpoint() == leader)
    }

    /// Logs of every process, for failure messages.
    pub fn logs(&self) -> String {
        self.metas
            .iter()
            .chain(self.servers.iter())
            .chain(self.computes.iter())
            .map(|p| format!("--- {}:\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
