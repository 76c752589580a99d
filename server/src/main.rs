//! The `strata` binary.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use strata_client::{
    format::Format,
    shell::{self, ShellOptions},
};
use strata_server::config::Config;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a distributed time-series database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The addresses an instance listens on (each overrides the configuration).
#[derive(clap::Args, Debug, Clone, Default)]
struct Listen {
    /// gRPC listen address (default 127.0.0.1:8831).
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// HTTP listen address (default 127.0.0.1:5440).
    #[arg(long)]
    http_addr: Option<std::net::SocketAddr>,
    /// PostgreSQL wire protocol listen address (default 127.0.0.1:5433).
    #[arg(long)]
    pg_addr: Option<std::net::SocketAddr>,
    /// The gRPC address others reach this instance at, `host:port` (a DNS
    /// name or an IP): needed when listening on 0.0.0.0 in a cluster.
    #[arg(long)]
    advertise_addr: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process, with data on local disk.
    Standalone {
        /// A TOML configuration file (see docs/config/).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where data lives (default ./strata-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
    },
    /// Run a meta process: cluster metadata on etcd, shard scheduling.
    Meta {
        /// A TOML file with `shard_count`, `replicas`, `node_ttl`,
        /// `cluster`, `etcd`, `cluster_secret`.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8850")]
        grpc_addr: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:5450")]
        http_addr: std::net::SocketAddr,
        /// The gRPC address other meta processes and the instances reach
        /// this one at, `host:port` (a DNS name or an IP); defaults to
        /// --grpc-addr, which must then not be 0.0.0.0.
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Start and supervise a local etcd under the data dir.
        #[arg(long, conflicts_with = "etcd")]
        embedded_etcd: bool,
        /// With --embedded-etcd: the hosts of every meta process, `host,…`,
        /// whose embedded etcds form one cluster (ports 2379 and 2380 on
        /// the IP of --grpc-addr); this process's is the host of
        /// --advertise-addr. Without it the embedded etcd is a single
        /// member on loopback.
        #[arg(long, value_delimiter = ',', requires = "embedded_etcd")]
        etcd_peers: Vec<String>,
        /// External etcd endpoints, `host:port,…`.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Shards of a new cluster (ignored once the cluster exists).
        #[arg(long)]
        shard_count: Option<u64>,
        /// Followers per shard (read-only copies on other instances that
        /// make failover fast); set when this process becomes the meta
        /// leader. Without it the stored setting stays (0 on a new cluster).
        #[arg(long)]
        replicas: Option<u64>,
        /// An instance silent this long is dead (e.g. `6s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        node_ttl: Option<std::time::Duration>,
        /// How long a new meta leader waits before moving shards.
        #[arg(long, value_parser = humantime::parse_duration)]
        startup_grace: Option<std::time::Duration>,
    },
    /// Run an instance of a cluster: serves the shards meta assigns it.
    Server {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Meta gRPC endpoints, `host:port,…`.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
        /// `data` (default): lead and follow the shards meta assigns.
        /// `compute`: hold no shard, and answer queries by reading tables'
        /// SSTs from the object store (through the disk cache), asking
        /// their leaders only for the rows not flushed yet.
        #[arg(long, value_enum, default_value = "data")]
        role: strata_server::bootstrap::Role,
    },
    /// Exit 0 when a Strata process's `GET /health` answers 200 (for
    /// container health checks, which have no curl).
    Health {
        /// Its HTTP address (an instance's 5440, meta's 5450).
        #[arg(default_value = "127.0.0.1:5440")]
        addr: String,
    },
    /// Administer a cluster through meta's HTTP API.
    Admin {
        /// Meta's HTTP address.
        #[arg(long, default_value = "127.0.0.1:5450")]
        meta: String,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Run SQL against a Strata node: `-e`, `-f`, or an interactive shell.
    Sql {
        /// The node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8831")]
        endpoint: String,
        /// Statements to run.
        #[arg(short = 'e', long = "execute", conflicts_with = "file")]
        execute: Option<String>,
        /// A file of statements to run.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Output format: table, csv or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// The database to start in.
        #[arg(short = 'd', long, default_value = "public")]
        database: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Live instances.
    Nodes,
    /// Every shard: leader, lock holder, epoch, state.
    Shards,
    /// Every table and its shard.
    Tables,
    /// Moves in flight.
    Procedures,
    /// Set the followers per shard: the cluster's, or with `--shard` one
    /// shard's own (`--shard S --clear` goes back to the cluster's).
    Replicas {
        count: Option<u64>,
        #[arg(long)]
        shard: Option<u64>,
        #[arg(long, requires = "shard", conflicts_with = "count")]
        clear: bool,
    },
    /// Drain a node (its gRPC address) before stopping it: meta moves every
    /// shard it leads to the shard's best follower (else another node) and
    /// gives it no new one; waits until it leads nothing. The mark holds
    /// for the running process only: restarted, the node leads again.
    Drain {
        node: String,
        /// How long to wait for the node to lead nothing (e.g. `120s`).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Let a drained node lead again.
    Undrain {
        node: String,
    },
    /// Hand a shard's leadership to a node, normally one of its caught-up
    /// followers (then no replay: writes pause about a second).
    SwitchLeader {
        shard: u64,
        node: String,
    },
    /// Move a shard to a node (its gRPC address).
    MoveShard {
        shard: u64,
        node: String,
        /// Refuse unless the shard is at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Split a shard: move some of its tables (by default every second
    /// one, by id) to a new shard, online. Waits until it is done.
    SplitShard {
        shard: u64,
        /// The tables to move (ids, as `strata admin tables` lists them).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<u64>,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Merge shard FROM into shard INTO: FROM's tables move to INTO, online,
    /// then FROM is retired. Waits until it is done.
    MergeShards {
        into: u64,
        from: u64,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The split or merge in progress, and the last finished.
    Reshape,
    PauseSchedule,
    ResumeSchedule,
}

/// The meta settings a `--config` file may hold.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    cluster: Option<String>,
    shard_count: Option<u64>,
    replicas: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    node_ttl: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    startup_grace: Option<std::time::Duration>,
    etcd: Option<Vec<String>>,
    /// Shared with every instance; `$STRATA_CLUSTER_SECRET` overrides it.
    cluster_secret: Option<strata_meta::secret::ClusterSecret>,
    /// Balancing by load (`[balance]`).
    #[serde(default)]
    balance: BalanceFile,
}

/// `[balance]` of meta's configuration file (see
/// `docs/operations/cluster.md`, "Balancing by load").
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BalanceFile {
    enabled: Option<bool>,
    margin: Option<f64>,
    min_rate: Option<f64>,
    idle_rate: Option<f64>,
    /// Merge idle shards (never below `shard_count`).
    merge_idle: Option<bool>,
    after_rounds: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    cooldown: Option<std::time::Duration>,
}

impl BalanceFile {
    fn apply(
        &self,
        rules: &mut strata_meta::balance::BalanceRules,
        shard_count: u64,
    ) -> Result<(), String> {
        if let Some(v) = self.enabled {
            rules.enabled = v;
        }
        if let Some(v) = self.margin {
            if !(v.is_finite() && v > 0.0) {
                return Err("balance.margin must be a positive number".to_string());
            }
            rules.margin = v;
        }
        if let Some(v) = self.min_rate {
            if !(v.is_finite() && v > 0.0) {
                return Err("balance.min_rate must be a positive number".to_string());
            }
            rules.min_rate = v;
        }
        if let Some(v) = self.idle_rate {
            if !(v.is_finite() && v >= 0.0) {
                return Err("balance.idle_rate must be a number, 0 or more".to_string());
            }
            rules.idle_rate = v;
        }
        if let Some(v) = self.merge_idle {
            rules.min_shards = if v {
                usize::try_from(shard_count).unwrap_or(usize::MAX).max(1)
            } else {
                0
            };
        }
        if let Some(v) = self.after_rounds {
            rules.after_rounds = v.max(1);
        }
        if let Some(v) = self.cooldown {
            rules.cooldown = v;
        }
        Ok(())
    }
}

mod humantime_serde_opt {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[allow(clippy::too_many_arguments)]
/// `strata health`: one `GET /health`, with a 3 s limit.
async fn health(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        http(addr, "GET", "/health", None),
    )
    .await
    {
        // An instance that lost acknowledged records answers 200 with
        // DEGRADED (it serves on); a health check should flag it.
        Ok(Ok((200, body))) if body.contains("DEGRADED") => {
            Err(format!("{addr}/health: {}", body.trim()))
        }
        Ok(Ok((200, _))) => Ok(()),
        Ok(Ok((code, body))) => Err(format!("{addr}/health answered {code}: {}", body.trim())),
        Ok(Err(e)) => Err(e.replace("cannot reach meta at", "cannot reach")),
        Err(_) => Err(format!("{addr}/health did not answer within 3 s")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn meta(
    config: Option<PathBuf>,
    data_dir: PathBuf,
    grpc_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    advertise_addr: Option<String>,
    embedded_etcd: Option<Vec<String>>,
    etcd: Vec<String>,
    shard_count: Option<u64>,
    replicas: Option<u64>,
    node_ttl: Option<std::time::Duration>,
    startup_grace: Option<std::time::Duration>,
) -> Result<(), String> {
    use strata_meta::{
        server::{EtcdMembers, EtcdSource, MetaServerConfig},
        service::MetaOptions,
    };
    init_logging("info");
    let file: MetaFile = match &config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        )
        .map_err(|e| format!("{}: {e}", p.display()))?,
        None => MetaFile::default(),
    };
    let me = advertise_addr.unwrap_or_else(|| grpc_addr.to_string());
    let (my_host, _) = strata_server::config::reachable_host_port(&me)
        .map_err(|e| format!("meta's advertised address: {e}: give --advertise-addr HOST:PORT"))?;
    let etcd = if let Some(peers) = embedded_etcd {
        if peers.is_empty() {
            EtcdSource::Embedded(None)
        } else {
            let mut seen = std::collections::BTreeSet::new();
            for p in &peers {
                // Bare hosts: the ports are etcd's 2379 and 2380.
                let valid = strata_server::config::split_host_port(&format!("{p}:1"))
                    .is_some_and(|(h, _)| h == *p);
                if !valid {
                    return Err(format!(
                        "--etcd-peers: {p:?} is not a host name or IP (no port: the members use 2379 and 2380)"
                    ));
                }
                if !seen.insert(p.to_ascii_lowercase()) {
                    return Err(format!("--etcd-peers names {p} twice"));
                }
            }
            if !peers.contains(&my_host) {
                return Err(format!(
                    "--etcd-peers {} does not name this process's host {my_host} (from --advertise-addr)",
                    peers.join(",")
                ));
            }
            EtcdSource::Embedded(Some(EtcdMembers {
                me: my_host.clone(),
                peers,
                listen_ip: grpc_addr.ip(),
            }))
        }
    } else if !etcd.is_empty() {
        EtcdSource::External(etcd)
    } else if let Some(e) = file.etcd.clone().filter(|e| !e.is_empty()) {
        EtcdSource::External(e)
    } else {
        return Err("give --embedded-etcd or --etcd HOST:PORT,…".to_string());
    };
    let mut options = MetaOptions::new(me);
    if let Some(n) = shard_count.or(file.shard_count) {
        if n == 0 {
            return Err("--shard-count must be at least 1".to_string());
        }
        options.shard_count = n;
    }
    options.replicas = replicas.or(file.replicas);
    file.balance
        .apply(&mut options.balance, options.shard_count)?;
    if let Some(t) = node_ttl.or(file.node_ttl) {
        options.node_ttl = t;
        // Enough for live instances to heartbeat and re-take their locks.
        options.startup_grace = t * 2;
    }
    if let Some(g) = startup_grace.or(file.startup_grace) {
        options.startup_grace = g;
    }
    options.cluster_secret = strata_meta::secret::ClusterSecret::from_env()
        .map_err(|e| format!("${}: {e}", strata_meta::secret::ENV))?
        .or(file.cluster_secret);
    strata_meta::server::run(
        MetaServerConfig {
            data_dir,
            grpc_addr,
            http_addr,
            etcd,
            cluster: file.cluster.unwrap_or_else(|| "strata".to_string()),
            options,
        },
        strata_server::standalone::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn server(
    config: Option<PathBuf>,
    meta: Vec<String>,
    data_dir: Option<PathBuf>,
    listen: Listen,
    role: strata_server::bootstrap::Role,
) -> Result<(), String> {
    let cfg = load_config(config, data_dir, listen)?;
    init_logging(&cfg.log.level);
    strata_server::bootstrap::run_cluster(cfg, meta, role)
        .await
        .map_err(|e| e.to_string())
}

/// One HTTP/1.1 request to meta; returns the status and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    secret: Option<&strata_meta::secret::ClusterSecret>,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach meta at {addr}: {e}"))?;
    let auth = secret
        .map(|s| format!("{}: {}\r\n", strata_meta::secret::HEADER, s.expose()))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Chunked bodies: keep the JSON between the chunk-size lines.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn print_json_table(body: &str) {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(rows)) if !rows.is_empty() => {
            // Identifying columns first, then the rest alphabetically.
            const FIRST: [&str; 8] = [
                "id", "kind", "shard", "database", "name", "endpoint", "leader", "state",
            ];
            let mut cols: Vec<String> = rows[0]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            cols.sort_by_key(|c| {
                (
                    FIRST.iter().position(|f| f == c).unwrap_or(FIRST.len()),
                    c.clone(),
                )
            });
            let cell = |v: Option<&serde_json::Value>| match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let mut widths: Vec<usize> = cols.iter().map(String::len).collect();
            for r in &rows {
                for (i, c) in cols.iter().enumerate() {
                    widths[i] = widths[i].max(cell(r.get(c)).len());
                }
            }
            let line = |vals: Vec<String>| {
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            println!("{}", line(cols.clone()));
            for r in &rows {
                println!("{}", line(cols.iter().map(|c| cell(r.get(c))).collect()));
            }
        }
        Ok(serde_json::Value::Array(_)) => println!("(none)"),
        Ok(v) => println!("{v}"),
        Err(_) => println!("{body}"),
    }
}

async fn admin(meta: String, command: AdminCommand) -> Result<(), String> {
    let (method, path) = match &command {
        AdminCommand::Nodes => ("GET", "/nodes".to_string()),
        AdminCommand::Shards => ("GET", "/shards".to_string()),
        AdminCommand::Tables => ("GET", "/tables".to_string()),
        AdminCommand::Procedures => ("GET", "/procedures".to_string()),
        AdminCommand::MoveShard {
            shard,
            node,
            version,
        } => (
            "POST",
            format!(
                "/shards/{shard}/move?node={node}{}",
                version.map(|v| format!("&version={v}")).unwrap_or_default()
            ),
        ),
        AdminCommand::Replicas {
            count,
            shard,
            clear,
        } => match (shard, count, clear) {
            (Some(s), _, true) => ("POST", format!("/shards/{s}/replicas")),
            (Some(s), Some(n), false) => ("POST", format!("/shards/{s}/replicas?count={n}")),
            (None, Some(n), _) => ("POST", format!("/replicas?count={n}")),
            _ => return Err("give a count (and --shard S for one shard)".to_string()),
        },
        AdminCommand::Drain { node, timeout } => {
            return drain(&meta, node, *timeout).await;
        }
        AdminCommand::Undrain { node } => ("POST", format!("/nodes/undrain?node={node}")),
        AdminCommand::SwitchLeader { shard, node } => {
            ("POST", format!("/shards/{shard}/move?node={node}"))
        }
        AdminCommand::SplitShard {
            shard,
            tables,
            timeout,
        } => {
            let list = tables
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let path = if list.is_empty() {
                format!("/shards/{shard}/split")
            } else {
                format!("/shards/{shard}/split?tables={list}")
            };
            return reshape(&meta, &path, *timeout).await;
        }
        AdminCommand::MergeShards {
            into,
            from,
            timeout,
        } => {
            return reshape(
                &meta,
                &format!("/shards/{into}/merge?from={from}"),
                *timeout,
            )
            .await;
        }
        AdminCommand::Reshape => ("GET", "/reshape".to_string()),
        AdminCommand::PauseSchedule => ("POST", "/schedule/pause".to_string()),
        AdminCommand::ResumeSchedule => ("POST", "/schedule/resume".to_string()),
    };
    // Meta refuses the routes that change the cluster without the secret.
    let secret = strata_meta::secret::ClusterSecret::from_env()?;
    let (status, body) = http(&meta, method, &path, secret.as_ref()).await?;
    if status != 200 {
        return Err(format!("meta answered {status}: {body}"));
    }
    print_json_table(&body);
    Ok(())
}

/// `strata admin drain`: marks the node, then waits until no shard names it
/// as leader and every shard is served.
async fn drain(meta: &str, node: &str, timeout: std::time::Duration) -> Result<(), String> {
    let secret = strata_meta::secret::ClusterSecret::from_env()?;
    let (status, body) = http(
        meta,
        "POST",
        &format!("/nodes/drain?node={node}"),
        secret.as_ref(),
    )
    .await?;
    if status != 200 {
        return Err(format!("meta answered {status}: {body}"));
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, body) = http(meta, "GET", "/shards", None).await?;
        if status == 200 {
            let shards: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("meta's /shards: {e}"))?;
            let shards = shards.as_array().cloned().unwrap_or_default();
            let led = shards
                .iter()
                .filter(|s| s["leader"].as_str() == Some(node))
                .count();
            let unserved = shards.iter().filter(|s| s["state"] != "serving").count();
            if led == 0 && unserved == 0 {
                println!("{node} leads no shard; every shard is served");
                return Ok(());
            }
            eprintln!("{node} still leads {led} shard(s); {unserved} not served yet");
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{node} was not drained within {timeout:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `strata admin split-shard` and `merge-shards`: starts the procedure, then
/// waits until meta records it done.
async fn reshape(meta: &str, path: &str, timeout: std::time::Duration) -> Result<(), String> {
    let secret = strata_meta::secret::ClusterSecret::from_env()?;
    let (status, body) = http(meta, "POST", path, secret.as_ref()).await?;
    if status != 200 {
        return Err(format!("meta answered {status}: {body}"));
    }
    let started: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("meta's answer: {e}"))?;
    eprintln!(
        "{} of shard {} into shard {} started: tables {}",
        started["kind"], started["from"], started["to"], started["tables"]
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, body) = http(meta, "GET", "/reshape", None).await?;
        if status == 200 {
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("meta's /reshape: {e}"))?;
            let ours = |r: &serde_json::Value| {
                r["started_ms"] == started["started_ms"] && r["from"] == started["from"]
            };
            if ours(&v["last"]) && !ours(&v["current"]) {
                println!("{}", v["last"]);
                return Ok(());
            }
            if ours(&v["current"]) && v["current"]["attempts"].as_u64().unwrap_or(0) > 0 {
                eprintln!(
                    "step {}: attempt {} failed: {}",
                    v["current"]["step"], v["current"]["attempts"], v["current"]["last_error"]
                );
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "not done within {timeout:?}; meta goes on with it (see `strata admin reshape`)"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// The configuration: the file, then `STRATA_…` variables, then flags.
fn load_config(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Listen,
) -> Result<Config, String> {
    let mut cfg = Config::load(config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    if let Some(d) = data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(a) = listen.grpc_addr {
        cfg.server.grpc_addr = a;
    }
    if let Some(a) = listen.http_addr {
        cfg.server.http_addr = a;
    }
    if let Some(a) = listen.pg_addr {
        cfg.server.pg_addr = a;
    }
    if let Some(a) = listen.advertise_addr {
        cfg.server.advertise_addr = Some(a);
    }
    Ok(cfg)
}

async fn standalone(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Listen,
) -> Result<(), String> {
    let cfg = load_config(config, data_dir, listen)?;
    init_logging(&cfg.log.level);
    strata_server::standalone::run(cfg)
        .await
        .map_err(|e| e.to_string())
}

async fn sql(
    endpoint: String,
    execute: Option<String>,
    file: Option<PathBuf>,
    format: Format,
    database: String,
) -> Result<(), String> {
    let opts = ShellOptions {
        endpoint,
        database,
        format,
    };
    let text = match (execute, file) {
        (Some(sql), _) => Some(sql),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        (None, None) => None,
    };
    match text {
        Some(sql) => shell::run_batch(&opts, &sql)
            .await
            .map_err(|e| e.to_string()),
        None => shell::run_interactive(&opts)
            .await
            .map_err(|e| e.to_string()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Standalone {
            config,
            data_dir,
            listen,
        } => standalone(config, data_dir, listen).await,
        Command::Meta {
            config,
            data_dir,
            grpc_addr,
            http_addr,
            advertise_addr,
            embedded_etcd,
            etcd_peers,
            etcd,
            shard_count,
            replicas,
            node_ttl,
            startup_grace,
        } => {
            meta(
                config,
                data_dir,
                grpc_addr,
                http_addr,
                advertise_addr,
                embedded_etcd.then_some(etcd_peers),
                etcd,
                shard_count,
                replicas,
                node_ttl,
                startup_grace,
            )
            .await
        }
        Command::Server {
            config,
            meta,
            data_dir,
            listen,
            role,
        } => server(config, meta, data_dir, listen, role).await,
        Command::Health { addr } => health(&addr).await,
        Command::Admin { meta, command } => admin(meta, command).await,
        Command::Sql {
            endpoint,
            execute,
            file,
            format,
            database,
        } => sql(endpoint, execute, file, format, database).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
