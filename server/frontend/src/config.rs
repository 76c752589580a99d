//! Configuration: a TOML file, then `STRATA_…` environment variables, then
//! command-line flags, each overriding the one before. Every key has a
//! default, so an empty file (or none) is a valid configuration.
//!
//! Environment variables name a key by its path, sections separated by a
//! double underscore: `STRATA_SERVER__GRPC_ADDR=127.0.0.1:9000` sets
//! `[server] grpc_addr`. Values are read as TOML scalars when they parse as
//! one (`true`, `42`), as strings otherwise.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use strata_engine::EngineConfig;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub query: QueryConfig,
    pub engine: EngineConfig,
    pub wal: WalConfig,
    pub object_store: ObjectStoreConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
}

/// The local-disk read cache in front of the object store. Worth enabling
/// when the store is remote (S3); pointless for the local filesystem.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Capacity in bytes (`"10GB"`); 0 disables the cache.
    #[serde(with = "strata_engine::context::byte_size")]
    pub disk_size: u64,
    /// Defaults to `{data_dir}/cache`.
    pub disk_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC (StorageService) listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// PostgreSQL wire protocol listen address.
    pub pg_addr: SocketAddr,
    /// The gRPC address peers, meta and `Route` answers use for this
    /// instance, `host:port` (a DNS name or an IP); defaults to `grpc_addr`.
    /// Needed when listening on all interfaces (`0.0.0.0`), as in a
    /// container. The HTTP endpoint meta lists is this host with
    /// `http_addr`'s port.
    pub advertise_addr: Option<String>,
    /// Where local data lives (WAL and SSTs in standalone mode).
    pub data_dir: PathBuf,
    /// Create a table on the first gRPC write to it.
    pub auto_create_table: bool,

    // Request size limits (docs/operations/limits.md).
    /// The largest HTTP request body accepted, on every endpoint (413).
    #[serde(with = "strata_engine::context::byte_size")]
    pub max_body_size: u64,
    /// The largest size a request body may decompress to: snappy remote
    /// write and read, gzip line protocol, zstd Arrow payloads (413 over
    /// HTTP, InvalidArgument over gRPC).
    #[serde(with = "strata_engine::context::byte_size")]
    pub max_decoded_size: u64,
    /// The largest gRPC message received or sent (ResourceExhausted).
    #[serde(with = "strata_engine::context::byte_size")]
    pub grpc_max_message_size: u64,
    /// The largest PostgreSQL protocol message a client may send (`FATAL
    /// 54000`, and the connection ends).
    #[serde(with = "strata_engine::context::byte_size")]
    pub pg_max_message_size: u64,
    /// PostgreSQL connections served at once (`FATAL 53300` past it); 0:
    /// no limit.
    pub pg_max_connections: usize,
    /// Cluster mode: the secret shared with meta, which authenticates the
    /// control RPCs meta sends (`ShardControl`) and the calls this instance
    /// makes to meta. `$STRATA_CLUSTER_SECRET` sets it too. Without one, an
    /// instance refuses every control RPC.
    pub cluster_secret: Option<strata_meta::secret::ClusterSecret>,
}

/// `text` as `(host, port)` when it is an address peers could dial: not an
/// unspecified IP (`0.0.0.0`, `::`) and not port 0. Instances and meta
/// check what they advertise with it.
pub fn reachable_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) =
        split_host_port(text).ok_or_else(|| format!("the address {text:?} is not host:port"))?;
    let unspecified = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if unspecified || port == 0 {
        return Err(format!("the address {text} is not one peers can reach"));
    }
    Ok((host, port))
}

/// The default of each request size limit: 64 MiB.
pub const DEFAULT_REQUEST_LIMIT: u64 = 64 << 20;

impl ServerConfig {
    /// The advertised gRPC address (`advertise_addr`, else the bound gRPC
    /// address) as `(host, port)`, refused when peers could not reach it:
    /// an unspecified IP (`0.0.0.0`, `::`) or port 0.
    pub fn advertised(&self, grpc: SocketAddr) -> Result<(String, u16), String> {
        let text = self
            .advertise_addr
            .clone()
            .unwrap_or_else(|| grpc.to_string());
        reachable_host_port(&text).map_err(|e| {
            format!(
                "{e}: set server.advertise_addr (or --advertise-addr) to this instance's address, \
                 or listen on a specific one"
            )
        })
    }

    /// [`Self::max_body_size`] as a `usize`.
    pub fn max_body(&self) -> usize {
        usize::try_from(self.max_body_size).unwrap_or(usize::MAX)
    }

    /// [`Self::max_decoded_size`] as a `usize`.
    pub fn max_decoded(&self) -> usize {
        usize::try_from(self.max_decoded_size).unwrap_or(usize::MAX)
    }

    /// [`Self::grpc_max_message_size`] as a `usize`.
    pub fn grpc_max_message(&self) -> usize {
        usize::try_from(self.grpc_max_message_size).unwrap_or(usize::MAX)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8831)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 5440)),
            pg_addr: SocketAddr::from(([127, 0, 0, 1], 5433)),
            advertise_addr: None,
            data_dir: PathBuf::from("./strata-data"),
            auto_create_table: true,
            max_body_size: DEFAULT_REQUEST_LIMIT,
            max_decoded_size: DEFAULT_REQUEST_LIMIT,
            grpc_max_message_size: DEFAULT_REQUEST_LIMIT,
            pg_max_message_size: DEFAULT_REQUEST_LIMIT,
            pg_max_connections: 256,
            cluster_secret: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Threads of the query runtime, and DataFusion's target partitions;
    /// 0 means one per CPU.
    pub threads: usize,

    // Query limits (docs/operations/limits.md, "Query limits"). Each applies
    // to one request of any query protocol: HTTP /sql, gRPC SqlQuery, the
    // PostgreSQL protocol, the PromQL API and Prometheus remote read.
    /// The memory one query's operators may hold (DataFusion's memory
    /// pool); beyond it the query fails with `ResourcesExhausted`. 0: no
    /// limit.
    #[serde(with = "strata_engine::context::byte_size")]
    pub memory_limit: u64,
    /// A query running longer is cancelled and fails with `Timeout`.
    /// `"0s"`: no limit.
    #[serde(with = "strata_engine::context::humantime_serde_compat")]
    pub timeout: std::time::Duration,
    /// Queries that run at once; others wait for a slot. 0: no limit.
    pub max_concurrent: usize,
    /// How long a query waits for a slot before it fails with `Overloaded`.
    #[serde(with = "strata_engine::context::humantime_serde_compat")]
    pub queue_timeout: std::time::Duration,
    /// Where read-only statements read a table whose shard this instance
    /// follows: `leader` (read-your-writes, the default) or `follower` (the
    /// local copy, possibly behind; PromQL and remote read included). A
    /// request may ask otherwise: `x-strata-read-preference` (HTTP header
    /// or gRPC metadata) or `?read_preference=` on `/sql`.
    pub read_preference: ReadPreference,
    /// Cluster mode: send read-only SQL statements (`SELECT`, `WITH`) a
    /// client sends to this instance to a compute instance
    /// (`strata server --role compute`, listed by meta), one after the
    /// other, and run them here only when none is listed or the one asked
    /// is unreachable or overloaded.
    pub offload_reads: bool,
}

/// Where read-only statements read tables whose shards are followed here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadPreference {
    #[default]
    Leader,
    Follower,
}

impl ReadPreference {
    /// The HTTP header and gRPC metadata key a request names it with.
    pub const HEADER: &'static str = "x-strata-read-preference";

    /// Parses `leader` or `follower` (any case).
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "leader" => Ok(Self::Leader),
            "follower" => Ok(Self::Follower),
            other => Err(crate::error::Error::InvalidArgument(format!(
                "read_preference is leader or follower, not {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            memory_limit: 2 << 30,
            timeout: std::time::Duration::from_secs(120),
            max_concurrent: 32,
            queue_timeout: std::time::Duration::from_secs(5),
            read_preference: ReadPreference::Leader,
            offload_reads: false,
        }
    }
}

/// Where the WAL lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum WalConfig {
    /// Segment files on local disk.
    Local {
        /// Defaults to `{data_dir}/wal`.
        #[serde(default)]
        dir: Option<PathBuf>,
        /// A new segment file starts after this many bytes.
        #[serde(
            default = "default_segment_size",
            with = "strata_engine::context::byte_size"
        )]
        segment_size: u64,
    },
    /// One single-partition Kafka topic per shard:
    /// `{topic_prefix}-{cluster}-shard-{id}`.
    Kafka(KafkaConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port,…`; defaults to `$STRATA_KAFKA_BROKERS`.
    #[serde(default)]
    pub brokers: Option<String>,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics Strata creates when
    /// `replication_factor > 1`; default a majority, at least 2.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// Records are split into chunks of at most this size; keep it below the
    /// broker's `message.max.bytes`.
    #[serde(
        default = "default_max_message",
        with = "strata_engine::context::byte_size"
    )]
    pub max_message_bytes: u64,
    /// A write not acknowledged by the broker within this fails (retryably).
    #[serde(
        default = "default_produce_timeout",
        with = "strata_engine::context::humantime_serde_compat"
    )]
    pub produce_timeout: std::time::Duration,
    #[serde(
        default = "default_linger",
        with = "strata_engine::context::humantime_serde_compat"
    )]
    pub linger: std::time::Duration,
    /// Physically delete flushed records (DeleteRecords). Off for brokers
    /// that lack it; a persisted watermark hides them either way.
    #[serde(default)]
    pub delete_records: bool,
    /// Idempotent produce. Keep it on for Kafka; turn it off only for
    /// brokers that mishandle it (see docs/operations/kafka-wal.md).
    #[serde(default = "default_true")]
    pub idempotence: bool,
    /// Open shards whose broker lost acknowledged records anyway, moving
    /// their WAL watermark past the loss. An operator's explicit decision:
    /// set it, restart, check, then unset it (docs/operations/kafka-wal.md).
    #[serde(default)]
    pub accept_loss: bool,
    /// Extra librdkafka properties (security, TLS, …).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}
fn default_topic_prefix() -> String {
    "strata".to_string()
}
fn default_replication() -> i32 {
    1
}
fn default_max_message() -> u64 {
    900 * 1024
}
fn default_produce_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn default_linger() -> std::time::Duration {
    std::time::Duration::from_millis(1)
}

fn default_segment_size() -> u64 {
    64 * 1024 * 1024
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig::Local {
            dir: None,
            segment_size: default_segment_size(),
        }
    }
}

/// Where SSTs, manifests and the catalog live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectStoreConfig {
    /// A directory on the local filesystem.
    Local {
        /// Defaults to `{data_dir}/store`.
        #[serde(default)]
        root: Option<PathBuf>,
    },
    /// An S3-compatible bucket. Unset fields fall back to `AWS_*` variables
    /// and `STRATA_S3_BUCKET`.
    S3(S3Config),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    #[serde(default)]
    pub bucket: Option<String>,
    /// Everything is stored under this key prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// e.g. `http://127.0.0.1:9000`; AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub virtual_hosted_style: bool,
    #[serde(
        default = "default_s3_timeout",
        with = "strata_engine::context::humantime_serde_compat"
    )]
    pub request_timeout: std::time::Duration,
    #[serde(default = "default_s3_retries")]
    pub max_retries: usize,
    #[serde(
        default = "default_s3_retry_timeout",
        with = "strata_engine::context::humantime_serde_compat"
    )]
    pub retry_timeout: std::time::Duration,
}

fn default_s3_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn default_s3_retries() -> usize {
    10
}
fn default_s3_retry_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig::Local { root: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `strata_engine=debug,info`.
    /// `RUST_LOG` takes precedence when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
        }
    }
}

const ENV_PREFIX: &str = "STRATA_";
const CLUSTER_SECRET_ENV: &str = "STRATA_SERVER__CLUSTER_SECRET";

/// Reads a scalar the way a TOML file would spell it, else as a string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<()> {
    match path {
        [] => Ok(()),
        [key] => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(Error::InvalidArgument(format!(
                    "configuration key {first} is not a section"
                ))),
            }
        }
    }
}

impl Config {
    /// Loads `file` (if any), then applies environment overrides from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "cannot read config file {}: {e}",
                        path.display()
                    ))
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "config file {} is not valid TOML: {e}",
                        path.display()
                    ))
                })?
            }
            None => toml::Table::new(),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut overrides: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .cloned()
            .collect();
        // `$STRATA_CLUSTER_SECRET`, which meta reads too, is
        // `server.cluster_secret` (unless that is set by name).
        if !overrides.iter().any(|(k, _)| k == CLUSTER_SECRET_ENV) {
            if let Some((_, v)) = env
                .iter()
                .find(|(k, v)| k == strata_meta::secret::ENV && !v.is_empty())
            {
                overrides.push((CLUSTER_SECRET_ENV.to_string(), v.clone()));
            }
        }
        overrides.sort();
        for (key, raw) in overrides {
            let path: Vec<String> = key[ENV_PREFIX.len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            // A secret is a string even when it reads as a number.
            let value = if key == CLUSTER_SECRET_ENV {
                toml::Value::String(raw)
            } else {
                env_value(&raw)
            };
            set_path(&mut table, &path, value)?;
        }
        let source = file.map_or("defaults".to_string(), |p| p.display().to_string());
        toml::Value::Table(table).try_into::<Config>().map_err(|e| {
            Error::InvalidArgument(format!(
                "invalid configuration ({source} and STRATA_ variables): {e}"
            ))
        })
    }

    pub fn wal_dir(&self) -> PathBuf {
        match &self.wal {
            WalConfig::Local { dir: Some(d), .. } => d.clone(),
            _ => self.server.data_dir.join("wal"),
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .disk_dir
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("cache"))
    }

    pub fn store_root(&self) -> PathBuf {
        match &self.object_store {
            ObjectStoreConfig::Local { root: Some(r) } => r.clone(),
            _ => self.server.data_dir.join("store"),
        }
    }
}

/// Splits `host:port` (`[v6]:port` too); `None` unless the port is a
/// number and the host is not empty.
pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return None;
    }
    // An IPv6 address only in brackets (`[::1]:8831`), as URLs need it.
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let inner = if bracketed {
        &host[1..host.len() - 1]
    } else {
        host
    };
    if inner.contains(['[', ']']) || (!bracketed && host.contains(':')) {
        return None;
    }
    if bracketed && inner.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_advertised_address_may_be_a_name_but_not_unspecified() {
        let grpc: SocketAddr = "0.0.0.0:8831".parse().unwrap();
        let mut c = ServerConfig::default();
        assert!(c.advertised(grpc).is_err(), "0.0.0.0 cannot be reached");
        c.advertise_addr = Some("server1.strata.svc:8831".to_string());
        assert_eq!(
            c.advertised(grpc).unwrap(),
            ("server1.strata.svc".to_string(), 8831)
        );
        c.advertise_addr = Some("[::1]:9000".to_string());
        assert_eq!(c.advertised(grpc).unwrap(), ("[::1]".to_string(), 9000));
        for bad in [
            "server1",
            "server1:",
            ":8831",
            "a b:1",
            "x:70000",
            "[::]:1",
            "h:0",
            "::1:8831",
            "[::1:8831",
            "[]:1",
            "[x]:1",
        ] {
            c.advertise_addr = Some(bad.to_string());
            assert!(c.advertised(grpc).is_err(), "{bad} must be refused");
        }
        c.advertise_addr = None;
        assert_eq!(
            c.advertised("127.0.0.5:1".parse().unwrap()).unwrap(),
            ("127.0.0.5".to_string(), 1)
        );
    }

    #[test]
    fn env_overrides_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\ngrpc_addr = \"127.0.0.1:1\"\n[engine]\nmax_concurrent_flushes = 3\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            vec![
                (
                    "STRATA_SERVER__GRPC_ADDR".to_string(),
                    "127.0.0.1:2".to_string(),
                ),
                (
                    "STRATA_SERVER__AUTO_CREATE_TABLE".to_string(),
                    "false".to_string(),
                ),
                ("UNRELATED".to_string(), "x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.grpc_addr.port(), 2);
        assert!(!cfg.server.auto_create_table);
        assert_eq!(cfg.engine.max_concurrent_flushes, 3);
        assert_eq!(cfg.server.http_addr.port(), 5440);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_limits_come_from_file_and_env() {
        let defaults = Config::load(None, vec![]).unwrap();
        assert_eq!(defaults.query.memory_limit, 2 << 30);
        assert_eq!(defaults.query.timeout, std::time::Duration::from_secs(120));
        assert_eq!(defaults.query.max_concurrent, 32);
        assert_eq!(
            defaults.query.queue_timeout,
            std::time::Duration::from_secs(5)
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[query]\nmemory_limit = \"64MB\"\ntimeout = \"30s\"\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            env(&[
                ("STRATA_QUERY__MAX_CONCURRENT", "4"),
                ("STRATA_QUERY__QUEUE_TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.query.memory_limit, 64 * 1024 * 1024);
        assert_eq!(cfg.query.timeout, std::time::Duration::from_secs(30));
        assert_eq!(cfg.query.max_concurrent, 4);
        assert_eq!(
            cfg.query.queue_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn the_cluster_secret_comes_from_file_and_env_and_is_never_shown() {
        assert!(Config::load(None, vec![])
            .unwrap()
            .server
            .cluster_secret
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\ncluster_secret = \"from-the-file\"\n").unwrap();
        let cfg = Config::load(Some(&path), vec![]).unwrap();
        assert_eq!(
            cfg.server.cluster_secret.as_ref().map(|s| s.expose()),
            Some("from-the-file")
        );
        assert!(!format!("{cfg:?}").contains("from-the-file"));

        // $STRATA_CLUSTER_SECRET overrides the file, as a string even when
        // it reads as a number; the sectioned name wins over it.
        let cfg = Config::load(Some(&path), env(&[("STRATA_CLUSTER_SECRET", "12345")])).unwrap();
        assert_eq!(
            cfg.server.cluster_secret.as_ref().map(|s| s.expose()),
            Some("12345")
        );
        let cfg = Config::load(
            Some(&path),
            env(&[
                ("STRATA_CLUSTER_SECRET", "generic"),
                ("STRATA_SERVER__CLUSTER_SECRET", "specific"),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.server.cluster_secret.as_ref().map(|s| s.expose()),
            Some("specific")
        );
        assert!(Config::load(None, env(&[("STRATA_CLUSTER_SECRET", " x")])).is_err());
    }

    #[test]
    fn request_limits_default_to_64_mib_and_read_sizes() {
        let cfg = Config::load(None, vec![]).unwrap();
        assert_eq!(cfg.server.max_body_size, 64 << 20);
        assert_eq!(cfg.server.max_decoded_size, 64 << 20);
        assert_eq!(cfg.server.grpc_max_message_size, 64 << 20);
        let cfg = Config::load(
            None,
            vec![
                (
                    "STRATA_SERVER__MAX_BODY_SIZE".to_string(),
                    "1MB".to_string(),
                ),
                (
                    "STRATA_SERVER__MAX_DECODED_SIZE".to_string(),
                    "2048".to_string(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.max_body_size, 1 << 20);
        assert_eq!(cfg.server.max_decoded_size, 2048);
        assert_eq!(cfg.server.grpc_max_message_size, 64 << 20);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\ngrpc_adr = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&path), vec![]).unwrap_err().to_string();
        assert!(err.contains("grpc_adr"), "{err}");
    }

    #[test]
    fn example_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path), vec![])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs found in {}", dir.display());
    }
}
