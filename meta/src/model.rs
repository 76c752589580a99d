//! The cluster's metadata and where it lives in the key-value store.
//!
//! ```text
//! /strata/{cluster}/config                    ClusterConfig
//! /strata/{cluster}/nodes/{node}              NodeInfo (attached to the node's lease)
//! /strata/{cluster}/shards/{id}               ShardInfo
//! /strata/{cluster}/shard_lock/{id}           ShardLock: holder and WAL epoch (on its lease)
//! /strata/{cluster}/shard_epoch/{id}          the last epoch handed out for the shard
//! /strata/{cluster}/catalog_version           changed with every DDL (the catalog fingerprint)
//! /strata/{cluster}/databases/{name}          DatabaseRecord
//! /strata/{cluster}/tables/{id}               TableRecord
//! /strata/{cluster}/ids/table                 the last table id handed out
//! /strata/{cluster}/meta_leader               the leading meta process (its lease)
//! /strata/{cluster}/schedule_paused           present while scheduling is paused
//! /strata/{cluster}/draining/{node}           the node's process, while it is drained
//! ```

use serde::{Deserialize, Serialize};

/// A node id: the node's advertised gRPC address.
pub type NodeId = String;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The shards created so far: ids `0..shard_count` were given out
    /// (a split adds one; a merge retires one, whose id is not reused).
    pub shard_count: u64,
    /// Identifies this initialisation of the metadata; changes when meta
    /// starts on an empty etcd, which tells instances to report their tables.
    #[serde(default)]
    pub incarnation: u64,
    /// Followers each shard keeps (on instances other than its leader's),
    /// unless the shard sets its own; 0 keeps shards single-copy.
    #[serde(default)]
    pub replicas: u64,
}

/// The holder of a shard's lease lock, and the WAL epoch it writes under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLock {
    pub node: NodeId,
    pub epoch: u64,
    /// The process holding it (unique per process start): two processes
    /// on one node id are two holders.
    #[serde(default)]
    pub instance: String,
}

/// An instance, as it registered and last reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// gRPC address clients use.
    pub endpoint: String,
    /// HTTP address.
    pub http_endpoint: String,
    pub started_at_ms: i64,
    /// The process behind the node id (unique per process start).
    #[serde(default)]
    pub instance: String,
    /// Processes this node id stood for before (most recent last, at most
    /// 8): their heartbeats are answered `superseded`.
    #[serde(default)]
    pub superseded: Vec<String>,
    /// Shards the node serves, as of its last heartbeat.
    #[serde(default)]
    pub shards: Vec<ShardReport>,
    #[serde(default)]
    pub last_heartbeat_ms: i64,
    /// The etcd lease the node's record and shard locks are attached to.
    #[serde(default)]
    pub lease: i64,
    /// Load: rows written per second, memtable bytes.
    #[serde(default)]
    pub load: NodeLoad,
    /// [`ROLE_COMPUTE`] for a compute instance (never given a shard);
    /// empty for one that leads and follows shards.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

impl NodeInfo {
    /// Whether this is a compute instance, which leads and follows no
    /// shard.
    pub fn is_compute(&self) -> bool {
        self.role == ROLE_COMPUTE
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub memtable_bytes: u64,
    pub tables: u64,
    /// CPU seconds per second over the last heartbeat interval (1.0: one
    /// core busy).
    #[serde(default)]
    pub cpu_cores: f64,
    #[serde(default)]
    pub rss_bytes: u64,
}

/// What a node says about one of its shards.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub id: u64,
    pub version: u64,
    /// The offset after the last WAL record the shard applied.
    pub wal_offset: u64,
    pub tables: u64,
    /// `leader` or `follower` (empty in reports from before followers:
    /// a leader).
    #[serde(default)]
    pub role: String,
    /// A follower's lag: WAL records, and how long it has been behind.
    #[serde(default)]
    pub lag_records: u64,
    #[serde(default)]
    pub lag_ms: u64,
    /// A leader's load over its last heartbeat interval, per second.
    #[serde(default)]
    pub rows_written_per_s: f64,
    #[serde(default)]
    pub bytes_written_per_s: f64,
    #[serde(default)]
    pub scans_per_s: f64,
    #[serde(default)]
    pub rows_scanned_per_s: f64,
    /// Bytes in the shard's memtables, and the WAL records a failover
    /// would replay.
    #[serde(default)]
    pub memtable_bytes: u64,
    #[serde(default)]
    pub wal_backlog: u64,
    /// Rows written per second to its busiest tables over the interval
    /// (table id, rate; at most [`MAX_TABLE_RATES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub table_rates: Vec<(u64, f64)>,
}

impl ShardReport {
    pub fn is_follower(&self) -> bool {
        self.role == ROLE_FOLLOWER
    }
}

/// The most tables a shard's report names with their write rates.
pub const MAX_TABLE_RATES: usize = 32;

/// A shard's role on an instance, as reported.
pub const ROLE_LEADER: &str = "leader";
pub const ROLE_FOLLOWER: &str = "follower";
/// The role of a compute instance (`NodeInfo.role`): it holds no shard.
pub const ROLE_COMPUTE: &str = "compute";

/// Where a shard should be served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: u64,
    /// Bumped at every change of leader; requests carrying an older version
    /// are refused.
    pub version: u64,
    /// The node that should lead it; `None` while unassigned.
    pub leader: Option<NodeId>,
    /// The nodes that should follow it (never its leader): read-only
    /// copies that tail its WAL, the first choice when it fails over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<NodeId>,
    /// This shard's own follower count, overriding the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
}

impl ShardInfo {
    /// A new shard's record (version 1, no followers).
    pub fn new(id: u64, leader: Option<NodeId>) -> Self {
        Self {
            id,
            version: 1,
            leader,
            followers: Vec::new(),
            replicas: None,
        }
    }
}

/// A split or a merge: tables handed from shard `from` to shard `to`
/// (`docs/rfcs/0006-split-and-merge.md`). One runs at a time; the leading
/// meta advances it step by step, and a meta that takes the lead over
/// goes on from the step recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshape {
    pub kind: ReshapeKind,
    pub from: u64,
    pub to: u64,
    /// The tables handed over (ids).
    pub tables: Vec<u64>,
    pub step: ReshapeStep,
    pub started_ms: i64,
    /// When the last step was reached.
    #[serde(default)]
    pub updated_ms: i64,
    /// Failed attempts at the current step, and the last failure.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl Reshape {
    /// A procedure at its first step, starting now.
    pub fn new(kind: ReshapeKind, from: u64, to: u64, tables: Vec<u64>) -> Self {
        Self {
            kind,
            from,
            to,
            tables,
            step: ReshapeStep::HandingOver,
            started_ms: now_ms(),
            updated_ms: 0,
            attempts: 0,
            last_error: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshapeKind {
    /// `to` is a new shard, created with the procedure.
    Split,
    /// `from` is retired once its tables are `to`'s.
    Merge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshapeStep {
    /// `from`'s leader is asked to hand the tables over (stop their
    /// writes, flush, commit the handover to their manifests), until it
    /// answers that it did.
    HandingOver,
    /// The tables are `to`'s in the catalog (one transaction); the leaders
    /// are told, and `to`'s claims them when it opens them.
    Moved,
    Done,
}

impl ReshapeStep {
    pub fn as_str(self) -> &'static str {
        match self {
            ReshapeStep::HandingOver => "handing_over",
            ReshapeStep::Moved => "moved",
            ReshapeStep::Done => "done",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    pub name: String,
    pub created_at_ms: i64,
}

/// A table. Its definition (schema, options) is opaque to meta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRecord {
    pub id: u64,
    pub database: String,
    pub name: String,
    pub shard: u64,
    pub definition: serde_json::Value,
    pub created_at_ms: i64,
    /// A partitioned table: how many partitions it has (each a record of
    /// its own, with `partition_of` naming this one); 0 for other tables.
    /// A partitioned table holds no rows and is on [`PARTITIONED_SHARD`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partitions: u32,
    /// A partition: its partitioned table and its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<PartitionRef>,
    /// The definition's revision: 0 at creation, bumped by every ALTER (a
    /// partitioned table's partitions take their table's).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub revision: u64,
    /// The shard whose storage prefix holds the table's files: the one it
    /// was created on. Set when the table first moves to another shard
    /// (split, merge); absent, it is `shard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<u64>,
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// Which partition of which table a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRef {
    pub parent: u64,
    pub index: u32,
}

/// The shard a partitioned table itself is on: none (no instance opens
/// it; its partitions are on real shards).
pub const PARTITIONED_SHARD: u64 = u64::MAX;

/// The name of partition `index` of table `table`. Part of the storage
/// format (the engine names partitions the same way in standalone mode).
pub fn partition_name(table: &str, index: u32) -> String {
    format!("__{table}_{index}")
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Key layout under one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/strata/{cluster}/"),
        }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.root).into_bytes()
    }

    pub fn config(&self) -> Vec<u8> {
        self.key("config")
    }
    pub fn nodes(&self) -> Vec<u8> {
        self.key("nodes/")
    }
    pub fn node(&self, id: &str) -> Vec<u8> {
        self.key(&format!("nodes/{id}"))
    }
    pub fn shards(&self) -> Vec<u8> {
        self.key("shards/")
    }
    pub fn shard(&self, id: u64) -> Vec<u8> {
        self.key(&format!("shards/{id:08}"))
    }
    pub fn shard_lock(&self, id: u64) -> Vec<u8> {
        self.key(&format!("shard_lock/{id:08}"))
    }
    pub fn shard_epoch(&self, id: u64) -> Vec<u8> {
        self.key(&format!("shard_epoch/{id:08}"))
    }
    /// Bumped by every catalog change: instances compare its revision.
    pub fn catalog_version(&self) -> Vec<u8> {
        self.key("catalog_version")
    }
    pub fn databases(&self) -> Vec<u8> {
        self.key("databases/")
    }
    pub fn database(&self, name: &str) -> Vec<u8> {
        self.key(&format!("databases/{name}"))
    }
    pub fn tables(&self) -> Vec<u8> {
        self.key("tables/")
    }
    pub fn table(&self, id: u64) -> Vec<u8> {
        self.key(&format!("tables/{id:016}"))
    }
    pub fn table_ids(&self) -> Vec<u8> {
        self.key("ids/table")
    }
    pub fn meta_leader(&self) -> Vec<u8> {
        self.key("meta_leader")
    }
    pub fn schedule_paused(&self) -> Vec<u8> {
        self.key("schedule_paused")
    }
    pub fn draining_prefix(&self) -> Vec<u8> {
        self.key("draining/")
    }
    pub fn draining(&self, node: &str) -> Vec<u8> {
        self.key(&format!("draining/{node}"))
    }
    /// The split or merge in progress.
    pub fn reshape(&self) -> Vec<u8> {
        self.key("reshape/current")
    }
    /// The last one finished.
    pub fn reshape_last(&self) -> Vec<u8> {
        self.key("reshape/last")
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
