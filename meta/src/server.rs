//! `strata meta`: one meta process. Connects to etcd (or starts and
//! supervises an embedded one), serves the gRPC and HTTP APIs and takes part
//! in the leader election.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use strata_proto::meta::meta_service_server::MetaServiceServer;
use tokio::{net::TcpListener, process::Child};

use crate::{
    kv::{etcd::EtcdKv, KvStore},
    service::{Meta, MetaGrpc, MetaOptions},
    store::MetaStore,
    Error, Result,
};

/// Where etcd comes from.
#[derive(Clone, Debug)]
pub enum EtcdSource {
    /// An external etcd cluster.
    External(Vec<String>),
    /// A local etcd child process with its data under the meta data dir:
    /// a single member on loopback, or (with members) one member of a
    /// cluster formed by every meta process's embedded etcd.
    Embedded(Option<EtcdMembers>),
}

/// The embedded etcds of several meta processes forming one cluster.
#[derive(Clone, Debug)]
pub struct EtcdMembers {
    /// This member's host (its name too).
    pub me: String,
    /// Every member's host, this one's included.
    pub peers: Vec<String>,
    /// Where this member listens (ports 2379 and 2380).
    pub listen_ip: std::net::IpAddr,
}

/// The client and peer ports of a clustered embedded etcd.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

impl EtcdMembers {
    /// Every member's client endpoint, `host:2379`.
    pub fn endpoints(&self) -> Vec<String> {
        self.peers
            .iter()
            .map(|h| format!("{h}:{ETCD_CLIENT_PORT}"))
            .collect()
    }

    /// etcd's flags for this member.
    fn args(&self) -> Vec<String> {
        let listen = |port| format!("http://{}", SocketAddr::new(self.listen_ip, port));
        let me = &self.me;
        let initial: Vec<String> = self
            .peers
            .iter()
            .map(|h| format!("{h}=http://{h}:{ETCD_PEER_PORT}"))
            .collect();
        vec![
            "--name".into(),
            me.clone(),
            "--listen-client-urls".into(),
            listen(ETCD_CLIENT_PORT),
            "--advertise-client-urls".into(),
            format!("http://{me}:{ETCD_CLIENT_PORT}"),
            "--listen-peer-urls".into(),
            listen(ETCD_PEER_PORT),
            "--initial-advertise-peer-urls".into(),
            format!("http://{me}:{ETCD_PEER_PORT}"),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            "strata-meta".into(),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct MetaServerConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub etcd: EtcdSource,
    /// Names the cluster: its keys live under `/strata/{cluster}/`.
    pub cluster: String,
    pub options: MetaOptions,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// A supervised etcd child. Killed when dropped; if this process is killed
/// with SIGKILL, the kernel kills the child too (`setpriv --pdeathsig`), and
/// a restart reclaims a leftover one recorded in its pid file.
struct EmbeddedEtcd {
    child: Child,
    endpoint: String,
}

impl EmbeddedEtcd {
    async fn start(data_dir: &Path, members: Option<&EtcdMembers>) -> Result<Self> {
        let dir = data_dir.join("etcd");
        std::fs::create_dir_all(&dir).map_err(io("creating the etcd data directory"))?;
        let pid_file = data_dir.join("etcd.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            // A leftover child of an earlier run of this meta process (the
            // pid file is ours): stop it, since it holds the data directory.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let dir_s = dir.display().to_string();
            if String::from_utf8_lossy(&cmdline).contains(&dir_s) {
                tracing::warn!(pid, "stopping a leftover embedded etcd");
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let bin = std::env::var("STRATA_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("etcd.log"))
            .map_err(io("opening etcd.log"))?;
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = tokio::process::Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
            c
        } else {
            tokio::process::Command::new(&bin)
        };
        cmd.arg("--data-dir")
            .arg(&dir)
            // Meta rewrites node records at every heartbeat: without
            // compaction etcd's history grows until its space quota stops
            // every write.
            .arg("--auto-compaction-mode=periodic")
            .arg("--auto-compaction-retention=1h")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io("etcd.log"))?)
            .stderr(log)
            .kill_on_drop(true);
        if cfg!(target_arch = "aarch64") {
            // etcd 3.4 (Debian bookworm's) refuses to start on arm64 without it.
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let endpoint = match members {
            Some(m) => {
                cmd.args(m.args());
                format!("{}:{ETCD_CLIENT_PORT}", m.me)
            }
            None => {
                let (client_url, peer_url) = Self::loopback_urls(data_dir)?;
                cmd.arg("--name")
                    .arg("strata-meta")
                    .arg("--listen-client-urls")
                    .arg(&client_url)
                    .arg("--advertise-client-urls")
                    .arg(&client_url)
                    .arg("--listen-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-advertise-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-cluster")
                    .arg(format!("strata-meta={peer_url}"));
                client_url.trim_start_matches("http://").to_string()
            }
        };
        let child = cmd
            .spawn()
            .map_err(|e| Error::Invalid(format!("starting etcd ({bin}): {e}; install the Debian package etcd-server or set STRATA_ETCD_BIN")))?;
        if let Some(pid) = child.id() {
            std::fs::write(&pid_file, pid.to_string()).map_err(io("writing etcd.pid"))?;
        }
        tracing::info!(%endpoint, dir = %dir.display(), "started embedded etcd");
        Ok(Self { child, endpoint })
    }

    /// A single member's client and peer URLs on loopback. Ports are
    /// chosen once and kept, since etcd records its peer URL.
    fn loopback_urls(data_dir: &Path) -> Result<(String, String)> {
        let ports_file = data_dir.join("etcd.ports");
        let (client, peer) = match std::fs::read_to_string(&ports_file).ok().and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        }) {
            Some(p) => p,
            None => {
                let p = (free_port()?, free_port()?);
                std::fs::write(&ports_file, format!("{} {}\n", p.0, p.1))
                    .map_err(io("writing etcd.ports"))?;
                p
            }
        };
        Ok((
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        ))
    }

    async fn stop(mut self, data_dir: &Path) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(data_dir.join("etcd.pid"));
        tracing::info!("stopped embedded etcd");
    }
}

/// A free port for the embedded etcd, below the kernel's ephemeral range
/// (32768–60999 by default), so that no outgoing connection takes it while
/// etcd is down between two runs.
fn free_port() -> Result<u16> {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0);
    for i in 0..2000u64 {
        let port = 10_000 + ((seed.wrapping_mul(2654435761) + i * 7919) % 10_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr().map_err(io("picking a port"))?.port());
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("picking a port"))?;
    Ok(l.local_addr().map_err(io("picking a port"))?.port())
}

/// Connects to etcd, retrying until it answers or `deadline` passes.
async fn connect(endpoints: &[String], deadline: Duration) -> Result<Arc<dyn KvStore>> {
    let started = std::time::Instant::now();
    loop {
        match EtcdKv::connect(endpoints).await {
            Ok(kv) => {
                // A cheap read proves the connection.
                match kv.get(b"/strata/").await {
                    Ok(_) => return Ok(Arc::new(kv)),
                    Err(e) if started.elapsed() > deadline => return Err(e),
                    Err(_) => {}
                }
            }
            Err(e) if started.elapsed() > deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a meta process until `shutdown` resolves.
pub async fn run(config: MetaServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(io("creating the data directory"))?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| Error::Invalid(format!("binding gRPC to {}: {e}", config.grpc_addr)))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| Error::Invalid(format!("binding HTTP to {}: {e}", config.http_addr)))?;

    let (embedded, endpoints) = match &config.etcd {
        EtcdSource::External(e) => (None, e.clone()),
        EtcdSource::Embedded(members) => {
            let etcd = EmbeddedEtcd::start(&config.data_dir, members.as_ref()).await?;
            let ep = match members {
                Some(m) => m.endpoints(),
                None => vec![etcd.endpoint.clone()],
            };
            (Some(etcd), ep)
        }
    };
    // Wait for etcd at startup (meta without etcd cannot answer anything).
    let kv = connect(&endpoints, Duration::from_secs(60)).await?;
    let store = MetaStore::new(kv, &config.cluster);
    let meta = Meta::new(store, config.options.clone());
    if config.options.cluster_secret.is_none() {
        tracing::error!(
            "no cluster secret is configured (cluster_secret in the config file, or $STRATA_CLUSTER_SECRET): \
             meta accepts heartbeats, shard locks and DDL from anyone who can reach its gRPC port, \
             and instances refuse the shard events it sends; set the same secret on meta and every instance"
        );
    }
    match meta.ensure_cluster().await {
        Ok(c) => tracing::info!(shards = c.shard_count, "cluster metadata ready"),
        Err(e) => tracing::warn!(error = %e, "cluster metadata not ready yet"),
    }

    let leader_loop = tokio::spawn(meta.clone().run_leader_loop());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetaServiceServer::new(MetaGrpc::new(meta.clone())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                async move {
                    let _ = grpc_stop.changed().await;
                },
            ),
    );
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(http_listener, crate::http::router(meta))
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, etcd = ?endpoints,
        "Strata meta is serving");
    // Meta without its embedded etcd would go on answering from the other
    // members (or not at all) while the member is gone: exit instead, so
    // that a supervisor restarts both.
    let mut embedded = embedded;
    let etcd_exit = async {
        match embedded.as_mut() {
            Some(etcd) => etcd.child.wait().await.ok(),
            None => std::future::pending().await,
        }
    };
    let etcd_died = tokio::select! {
        () = shutdown => None,
        status = etcd_exit => Some(status),
    };
    if let Some(status) = &etcd_died {
        tracing::error!(
            ?status,
            "the embedded etcd exited; stopping (see etcd.log in the data directory)"
        );
    } else {
        tracing::info!("shutting down");
    }
    leader_loop.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if let Some(etcd) = embedded {
        etcd.stop(&config.data_dir).await;
    }
    match etcd_died {
        Some(status) => Err(Error::Invalid(format!(
            "the embedded etcd exited ({status:?}); see {}",
            config.data_dir.join("etcd.log").display()
        ))),
        None => Ok(()),
    }
}
