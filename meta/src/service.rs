//! The meta service: heartbeats, shard locks, DDL and routing over gRPC, and
//! the leader's scheduling loop.
//!
//! Every meta process answers every request: the state lives in etcd and
//! each change is one etcd transaction, so two meta processes serving DDL at
//! once cannot both create a table or hand out the same id. Only the
//! elected leader schedules shards, because two schedulers would fight over
//! placements.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use strata_proto::meta::{
    meta_service_client::MetaServiceClient, meta_service_server::MetaService,
    shard_control_client::ShardControlClient, AlterTableRequest, CatalogRequest, CatalogResponse,
    CreateTableRequest, DatabaseRequest, DdlResponse, HeartbeatRequest, HeartbeatResponse,
    MetaHeader, MetaRouteRequest, MetaRouteResponse, ShardAssignment, ShardEvent, ShardLockRequest,
    ShardLockResponse, TableEvent, TableRequest, TableResponse, TableRoute,
};
use tonic::{service::interceptor::InterceptedService, Request, Response, Status};

use crate::{
    model::{now_ms, NodeInfo, NodeLoad, ShardInfo, ShardReport, TableRecord},
    scheduler,
    secret::AttachSecret,
    store::{CreateTable, MetaStore, UpdateTable},
    Error, Result,
};

mod reshape;

/// How the meta service behaves.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// This process's advertised gRPC address: its identity in elections.
    pub me: String,
    /// Shards of a new cluster.
    pub shard_count: u64,
    /// An instance missing heartbeats this long is dead.
    pub node_ttl: Duration,
    /// The meta leader's lease.
    pub leader_ttl: Duration,
    /// How often the leader schedules.
    pub schedule_interval: Duration,
    /// After becoming leader, how long to wait before moving shards: enough
    /// for every live instance to heartbeat and re-take its shard locks.
    pub startup_grace: Duration,
    /// The cluster secret: sent with every `ShardControl` call to instances,
    /// and required of every `MetaService` call when set.
    pub cluster_secret: Option<crate::secret::ClusterSecret>,
    /// Followers per shard, set in the cluster's metadata when this process
    /// becomes the meta leader (`None` leaves the stored setting, which
    /// `strata admin replicas` changes).
    pub replicas: Option<u64>,
    /// Balancing by load (`crate::balance`).
    pub balance: crate::balance::BalanceRules,
}

impl MetaOptions {
    pub fn new(me: String) -> Self {
        Self {
            me,
            shard_count: 8,
            node_ttl: Duration::from_secs(6),
            leader_ttl: Duration::from_secs(5),
            schedule_interval: Duration::from_millis(500),
            startup_grace: Duration::from_secs(12),
            cluster_secret: None,
            replicas: None,
            balance: crate::balance::BalanceRules::default(),
        }
    }
}

/// A shard as the admin API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardView {
    pub id: u64,
    pub version: u64,
    /// Where meta wants it.
    pub leader: Option<String>,
    /// The nodes that should follow it.
    pub followers: Vec<FollowerView>,
    /// Its own follower count, when it overrides the cluster's.
    pub replicas: Option<u64>,
    /// Who holds its lock (serves it) and under which WAL epoch.
    pub holder: Option<String>,
    pub epoch: Option<u64>,
    /// `serving`, `moving` (assigned but not yet taken by its new leader) or
    /// `unassigned`.
    pub state: &'static str,
    pub tables: u64,
    pub wal_offset: Option<u64>,
    /// Its leader's last report of its load (none before one).
    #[serde(flatten)]
    pub load: Option<ShardLoadView>,
}

/// A reported rate as meta keeps it: a NaN, infinite or negative one (from
/// a foreign or broken client) as 0, since JSON cannot hold the first two
/// and one undecodable node record would fail every read of the nodes.
fn rate(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// A shard's load as its leader last reported it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ShardLoadView {
    pub rows_written_per_s: f64,
    pub bytes_written_per_s: f64,
    pub scans_per_s: f64,
    pub rows_scanned_per_s: f64,
    pub memtable_bytes: u64,
    pub wal_backlog: u64,
}

impl From<&ShardReport> for ShardLoadView {
    fn from(r: &ShardReport) -> Self {
        // One decimal is all a reader (or the balancer) needs.
        let round = |v: f64| (v * 10.0).round() / 10.0;
        Self {
            rows_written_per_s: round(r.rows_written_per_s),
            bytes_written_per_s: round(r.bytes_written_per_s),
            scans_per_s: round(r.scans_per_s),
            rows_scanned_per_s: round(r.rows_scanned_per_s),
            memtable_bytes: r.memtable_bytes,
            wal_backlog: r.wal_backlog,
        }
    }
}

/// A follower of a shard, as the admin API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FollowerView {
    pub node: String,
    /// `following` once the node reports it, `opening` before.
    pub state: &'static str,
    pub wal_offset: Option<u64>,
    pub lag_records: Option<u64>,
    pub lag_ms: Option<u64>,
}

/// The meta service of one meta process.
#[derive(Clone, Debug)]
pub struct Meta {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: MetaStore,
    opts: MetaOptions,
    /// When this process became leader; `None` while it is not.
    leader_since: Mutex<Option<Instant>>,
    /// The `HandOverTables` call of the split or merge in progress, run
    /// apart from the leader's rounds (a flush may outlast the lease).
    hand_over_call: Mutex<Option<reshape::HandOverCall>>,
    /// Balancing by load: the decision seen in the last rounds, how many
    /// rounds in a row, and until when nothing is decided.
    balancing: Mutex<Balancing>,
}

#[derive(Debug, Default)]
struct Balancing {
    pending: Option<crate::balance::Decision>,
    rounds: u32,
    quiet_until: Option<Instant>,
    /// Whether the cluster counts as busy (placed by load): from
    /// `min_rate`, until it falls below half of it.
    busy: bool,
}

fn header_ok() -> Option<MetaHeader> {
    Some(MetaHeader {
        code: 200,
        error: String::new(),
    })
}

fn header_err(code: u32, error: impl Into<String>) -> Option<MetaHeader> {
    Some(MetaHeader {
        code,
        error: error.into(),
    })
}

fn header_of(e: &Error) -> Option<MetaHeader> {
    let code = if e.is_retryable() { 503 } else { 500 };
    header_err(code, e.to_string())
}

impl Meta {
    pub fn new(store: MetaStore, opts: MetaOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                opts,
                leader_since: Mutex::new(None),
                hand_over_call: Mutex::new(None),
                balancing: Mutex::new(Balancing::default()),
            }),
        }
    }

    pub fn store(&self) -> &MetaStore {
        &self.inner.store
    }

    pub fn options(&self) -> &MetaOptions {
        &self.inner.opts
    }

    pub fn is_leader(&self) -> bool {
        self.inner.leader_since.lock().is_some()
    }

    /// Creates the cluster's metadata if etcd holds none.
    pub async fn ensure_cluster(&self) -> Result<crate::model::ClusterConfig> {
        match self.store().config().await? {
            Some(c) => Ok(c),
            None => {
                let c = self
                    .store()
                    .init_cluster(self.inner.opts.shard_count)
                    .await?;
                tracing::info!(shards = c.shard_count, "initialised the cluster's metadata");
                Ok(c)
            }
        }
    }

    /// Tells an instance about a change, at once and best effort: the
    /// instance's heartbeat delivers the same change if this is lost.
    fn notify(&self, endpoint: String, event: Event) {
        if endpoint.is_empty() {
            return;
        }
        let secret = crate::secret::AttachSecret::new(self.inner.opts.cluster_secret.as_ref());
        tokio::spawn(async move {
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            else {
                return;
            };
            let ch = ep
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            let mut client = ShardControlClient::with_interceptor(ch, secret);
            let result = match event {
                Event::Open(e) => client.open_shard(e).await.map(|_| ()),
                Event::Close(e) => client.close_shard(e).await.map(|_| ()),
                Event::Table(e) => client.create_table_on_shard(e).await.map(|_| ()),
                Event::Drop(e) => client.drop_table_on_shard(e).await.map(|_| ()),
            };
            if let Err(status) = result {
                tracing::debug!(%endpoint, error = %status, "a shard event was not delivered; the heartbeat will carry it");
            }
        });
    }

    /// Sends the events of a leader change: close on the old leader (when it
    /// is alive), open on the new one.
    async fn announce_move(&self, old: Option<&str>, next: &ShardInfo) -> Result<()> {
        let nodes = self.store().nodes().await?;
        let endpoint_of = |id: &str| {
            nodes
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.endpoint.clone())
        };
        let leader = next.leader.clone().unwrap_or_default();
        let event = ShardEvent {
            shard: next.id,
            version: next.version,
            leader_endpoint: endpoint_of(&leader).unwrap_or_default(),
            leader: leader.clone(),
        };
        if let Some(old) = old.filter(|o| *o != leader) {
            if let Some(ep) = endpoint_of(old) {
                self.notify(ep, Event::Close(event.clone()));
            }
        }
        if let Some(ep) = endpoint_of(&leader) {
            self.notify(ep, Event::Open(event));
        }
        Ok(())
    }

    /// Tells the leaders of the records' shards about them (created,
    /// altered or dropped), and a partitioned table's record to the leaders
    /// of `partitions` (so that they know the key their rows must hash
    /// to). Best effort: the change is committed, and every instance's
    /// next heartbeat brings it anyway.
    async fn announce(&self, records: &[TableRecord], partitions: &[TableRecord], dropped: bool) {
        if let Err(e) = self.try_announce(records, partitions, dropped).await {
            tracing::warn!(error = %e, "announcing a table change failed; heartbeats will carry it");
        }
    }

    async fn try_announce(
        &self,
        records: &[TableRecord],
        partitions: &[TableRecord],
        dropped: bool,
    ) -> Result<()> {
        let shards = self.store().shards().await?;
        let nodes = self.store().nodes().await?;
        let endpoint_of = |shard: u64| {
            let leader = shards
                .iter()
                .find(|(s, _)| s.id == shard)
                .and_then(|(s, _)| s.leader.clone())?;
            nodes
                .iter()
                .find(|n| n.id == leader)
                .map(|n| n.endpoint.clone())
        };
        for record in records {
            let shards: BTreeSet<u64> = if record.partitions > 0 {
                partitions.iter().map(|p| p.shard).collect()
            } else {
                BTreeSet::from([record.shard])
            };
            let endpoints: BTreeSet<String> = shards.into_iter().filter_map(endpoint_of).collect();
            for endpoint in endpoints {
                self.announce_one(endpoint, record, dropped)?;
            }
        }
        Ok(())
    }

    fn announce_one(&self, endpoint: String, record: &TableRecord, dropped: bool) -> Result<()> {
        let event = TableEvent {
            record_json: encode_record(record)?,
        };
        self.notify(
            endpoint,
            if dropped {
                Event::Drop(event)
            } else {
                Event::Table(event)
            },
        );
        Ok(())
    }

    /// Registers or refreshes an instance and answers with the assignment.
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse> {
        if req.node_id.is_empty() {
            return Err(Error::Invalid("a heartbeat names no node".into()));
        }
        let config = self.ensure_cluster().await?;
        let store = self.store();
        let existing = store
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.id == req.node_id);
        // Two processes behind one node id: the one meta heard from last
        // for the first time is the node (no clocks are compared); the one
        // it replaced is told it was superseded (it then stops writing) for
        // as long as the node's record lives, and its lease, with every
        // shard lock under it, is revoked so that the newer one takes the
        // locks under new epochs. A record from before instance ids (empty)
        // counts as an older process.
        let mut existing = existing;
        let mut superseded: Vec<String> = Vec::new();
        if let Some(n) = &existing {
            superseded = n.superseded.clone();
            if n.instance != req.instance_id {
                if n.superseded.contains(&req.instance_id) {
                    return Ok(HeartbeatResponse {
                        header: header_err(
                            409,
                            format!(
                                "superseded: node {} is now served by another process (instance {})",
                                req.node_id, n.instance
                            ),
                        ),
                        ..Default::default()
                    });
                }
                tracing::warn!(node = %req.node_id, old = %n.instance, new = %req.instance_id,
                    "a new process took over this node id; revoking the old one's lease and locks");
                if n.lease != 0 {
                    match store.kv().revoke(n.lease).await {
                        Ok(()) | Err(Error::LeaseExpired(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                superseded.push(n.instance.clone());
                let excess = superseded.len().saturating_sub(8);
                superseded.drain(..excess);
                existing = None;
            }
        }
        let mut lease = match &existing {
            Some(n) if n.lease != 0 => match store.kv().keep_alive(n.lease).await {
                Ok(()) => n.lease,
                Err(Error::LeaseExpired(_)) => 0,
                Err(e) => return Err(e),
            },
            _ => 0,
        };
        if lease == 0 {
            lease = store.grant_lease(self.inner.opts.node_ttl).await?;
            tracing::info!(node = %req.node_id, lease, "instance registered");
        }
        let reports: Vec<ShardReport> = req
            .shards
            .iter()
            .map(|s| ShardReport {
                id: s.id,
                version: s.version,
                wal_offset: s.wal_offset,
                tables: s.tables,
                role: s.role.clone(),
                lag_records: s.lag_records,
                lag_ms: s.lag_ms,
                rows_written_per_s: rate(s.rows_written_per_s),
                bytes_written_per_s: rate(s.bytes_written_per_s),
                scans_per_s: rate(s.scans_per_s),
                rows_scanned_per_s: rate(s.rows_scanned_per_s),
                memtable_bytes: s.memtable_bytes,
                wal_backlog: s.wal_backlog,
                table_rates: s
                    .table_rates
                    .iter()
                    .take(crate::model::MAX_TABLE_RATES)
                    .map(|t| (t.table, rate(t.rows_written_per_s)))
                    .filter(|(_, r)| *r > 0.0)
                    .collect(),
            })
            .collect();
        let info = NodeInfo {
            id: req.node_id.clone(),
            endpoint: req.endpoint.clone(),
            http_endpoint: req.http_endpoint.clone(),
            started_at_ms: req.started_at_ms,
            instance: req.instance_id.clone(),
            superseded,
            shards: reports.clone(),
            last_heartbeat_ms: now_ms(),
            lease,
            load: NodeLoad {
                memtable_bytes: req.memtable_bytes,
                tables: reports
                    .iter()
                    .filter(|r| !r.is_follower())
                    .map(|r| r.tables)
                    .sum(),
                cpu_cores: rate(req.cpu_cores),
                rss_bytes: req.rss_bytes,
            },
            role: if req.role == crate::model::ROLE_COMPUTE {
                req.role.clone()
            } else {
                String::new()
            },
        };
        store.put_node(&info, lease).await?;

        // Rebuilding from an empty etcd: the tables instances report are
        // restored with their ids, and shards nobody leads go back to the
        // instance that serves them.
        for json in &req.tables_json {
            let record: TableRecord = serde_json::from_str(json)
                .map_err(|e| Error::Invalid(format!("a reported table: {e}")))?;
            if store.table(&record.database, &record.name).await?.is_none() {
                store.create_database(&record.database).await?;
                if store.restore_table(&record).await? {
                    tracing::info!(database = %record.database, table = %record.name,
                        id = record.id, "restored a table an instance reported");
                }
            }
        }
        let mut shards = store.shards().await?;
        // A compute instance adopts nothing (it reports no shard anyway).
        for report in reports
            .iter()
            .filter(|r| !r.is_follower() && !info.is_compute())
        {
            if let Some((shard, rev)) = shards
                .iter_mut()
                .find(|(s, _)| s.id == report.id && s.leader.is_none())
            {
                if let Some(next) = store
                    .set_leader(shard, *rev, Some(req.node_id.clone()))
                    .await?
                {
                    tracing::info!(shard = next.id, node = %req.node_id,
                        "adopted a shard its instance reported");
                    *shard = next;
                }
            }
        }
        Ok(HeartbeatResponse {
            header: header_ok(),
            assignments: self.assignments(shards.into_iter().map(|(s, _)| s)).await?,
            catalog_fingerprint: store.catalog_fingerprint().await?,
            shard_count: config.shard_count,
            node_ttl_ms: u64::try_from(self.inner.opts.node_ttl.as_millis()).unwrap_or(u64::MAX),
            incarnation: config.incarnation,
            compute_endpoints: store
                .nodes()
                .await?
                .into_iter()
                .filter(|n| n.is_compute())
                .map(|n| n.endpoint)
                .collect(),
        })
    }

    async fn assignments(
        &self,
        shards: impl Iterator<Item = ShardInfo>,
    ) -> Result<Vec<ShardAssignment>> {
        let endpoints: BTreeMap<String, String> = self
            .store()
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.endpoint))
            .collect();
        Ok(shards
            .map(|s| {
                let leader = s.leader.unwrap_or_default();
                ShardAssignment {
                    id: s.id,
                    version: s.version,
                    leader_endpoint: endpoints.get(&leader).cloned().unwrap_or_default(),
                    leader,
                    follower_endpoints: s
                        .followers
                        .iter()
                        .map(|f| endpoints.get(f).cloned().unwrap_or_default())
                        .collect(),
                    followers: s.followers,
                }
            })
            .collect())
    }

    /// Takes or confirms a shard lock for the instance meta assigned it to.
    pub async fn acquire_shard(&self, req: ShardLockRequest) -> Result<ShardLockResponse> {
        let store = self.store();
        let Some(node) = store
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.id == req.node_id)
        else {
            return Ok(ShardLockResponse {
                header: header_err(409, format!("node {} is not registered", req.node_id)),
                ..Default::default()
            });
        };
        if node.is_compute() {
            return Ok(ShardLockResponse {
                header: header_err(
                    409,
                    format!(
                        "node {} is a compute instance: it leads no shard",
                        req.node_id
                    ),
                ),
                ..Default::default()
            });
        }
        if node.instance != req.instance_id {
            // A process this node id no longer stands for.
            return Ok(ShardLockResponse {
                header: header_err(
                    409,
                    format!(
                        "superseded: node {} is served by another process",
                        req.node_id
                    ),
                ),
                ..Default::default()
            });
        }
        if req.confirm_only {
            let lock = store
                .confirm_shard_lock(req.shard, &req.node_id, &req.instance_id, node.lease)
                .await?;
            return Ok(ShardLockResponse {
                header: header_ok(),
                granted: lock.is_some(),
                epoch: lock.as_ref().map_or(0, |l| l.epoch),
                holder: lock.map(|l| l.node).unwrap_or_default(),
            });
        }
        let assigned = store
            .shards()
            .await?
            .into_iter()
            .any(|(s, _)| s.id == req.shard && s.leader.as_deref() == Some(&req.node_id));
        if !assigned {
            let holder = store.lock_holder(req.shard).await?;
            return Ok(ShardLockResponse {
                header: header_ok(),
                granted: false,
                epoch: 0,
                holder: holder.map(|h| h.node).unwrap_or_default(),
            });
        }
        match store
            .acquire_shard_lock(
                req.shard,
                &req.node_id,
                &req.instance_id,
                node.lease,
                req.min_epoch,
            )
            .await?
        {
            Some(lock) => Ok(ShardLockResponse {
                header: header_ok(),
                granted: true,
                epoch: lock.epoch,
                holder: lock.node,
            }),
            None => Ok(ShardLockResponse {
                header: header_ok(),
                granted: false,
                epoch: 0,
                holder: store
                    .lock_holder(req.shard)
                    .await?
                    .map(|h| h.node)
                    .unwrap_or_default(),
            }),
        }
    }

    pub async fn release_shard(&self, req: ShardLockRequest) -> Result<ShardLockResponse> {
        let released = self
            .store()
            .release_shard_lock(req.shard, &req.node_id, &req.instance_id)
            .await?;
        Ok(ShardLockResponse {
            header: header_ok(),
            granted: released,
            epoch: 0,
            holder: String::new(),
        })
    }

    pub async fn create_database(&self, req: DatabaseRequest) -> Result<DdlResponse> {
        self.ensure_cluster().await?;
        let created = self.store().create_database(&req.name).await?;
        if !created && !req.if_not_exists {
            return Ok(DdlResponse {
                header: header_err(409, format!("database {} already exists", req.name)),
                changed: false,
            });
        }
        Ok(DdlResponse {
            header: header_ok(),
            changed: created,
        })
    }

    pub async fn drop_database(&self, req: DatabaseRequest) -> Result<DdlResponse> {
        let store = self.store();
        if store.tables().await?.iter().any(|t| t.database == req.name) {
            return Ok(DdlResponse {
                header: header_err(
                    400,
                    format!("database {} is not empty; drop its tables first", req.name),
                ),
                changed: false,
            });
        }
        let dropped = store.drop_database(&req.name).await?;
        if !dropped && !req.if_exists {
            return Ok(DdlResponse {
                header: header_err(404, format!("database {} not found", req.name)),
                changed: false,
            });
        }
        Ok(DdlResponse {
            header: header_ok(),
            changed: dropped,
        })
    }

    pub async fn create_table(&self, req: CreateTableRequest) -> Result<TableResponse> {
        self.ensure_cluster().await?;
        let definition: serde_json::Value = serde_json::from_str(&req.definition_json)
            .map_err(|e| Error::Invalid(format!("the table definition: {e}")))?;
        if let Some(refused) = check_partitions(&definition, req.partitions) {
            return Ok(refused);
        }
        let outcome = self
            .store()
            .create_table(&req.database, &req.name, definition.clone(), req.partitions)
            .await?;
        let partitions = match &outcome {
            CreateTable::Created(r) | CreateTable::Exists(r) if r.partitions > 0 => {
                self.store().partitions(r.id).await?
            }
            _ => Vec::new(),
        };
        if let CreateTable::Created(r) = &outcome {
            let mut all = vec![r.clone()];
            all.extend(partitions.iter().cloned());
            self.announce(&all, &partitions, false).await;
        }
        let partitions_json = partitions
            .iter()
            .map(encode_record)
            .collect::<Result<Vec<_>>>()?;
        Ok(match outcome {
            CreateTable::Created(r) => TableResponse {
                header: header_ok(),
                record_json: encode_record(&r)?,
                changed: true,
                partitions_json,
            },
            // Not the table asked for (one partitioned, the other not, or
            // with other partitions): a conflict, whatever IF NOT EXISTS.
            CreateTable::Exists(r)
                if r.partitions != req.partitions
                    || r.definition.get("partition") != definition.get("partition") =>
            {
                TableResponse {
                    header: header_err(
                        409,
                        format!(
                            "table {}.{} already exists, with {} partitions",
                            req.database, req.name, r.partitions
                        ),
                    ),
                    ..Default::default()
                }
            }
            CreateTable::Exists(r) if req.if_not_exists => TableResponse {
                header: header_ok(),
                record_json: encode_record(&r)?,
                changed: false,
                partitions_json,
            },
            CreateTable::Exists(_) => TableResponse {
                header: header_err(
                    409,
                    format!("table {}.{} already exists", req.database, req.name),
                ),
                ..Default::default()
            },
            CreateTable::DatabaseMissing => TableResponse {
                header: header_err(404, format!("database {} not found", req.database)),
                ..Default::default()
            },
            CreateTable::PartitionNameTaken(name) => TableResponse {
                header: header_err(
                    409,
                    format!(
                        "table {}.{name} already exists, and partition of {} would take its name",
                        req.database, req.name
                    ),
                ),
                ..Default::default()
            },
        })
    }

    /// Refuses DDL naming a partition whose partitioned table exists: it
    /// applies to that table. (A partition left without its table, after
    /// a rebuild from an empty etcd, can be dropped.)
    async fn refuse_partition(&self, db: &str, name: &str) -> Result<Option<TableResponse>> {
        let Some(parent) = self
            .store()
            .table(db, name)
            .await?
            .and_then(|r| r.partition_of)
            .map(|p| p.parent)
        else {
            return Ok(None);
        };
        if !self.store().tables().await?.iter().any(|t| t.id == parent) {
            return Ok(None);
        }
        Ok(Some(TableResponse {
            header: header_err(
                400,
                format!("{db}.{name} is a partition: change its partitioned table instead"),
            ),
            ..Default::default()
        }))
    }

    pub async fn drop_table(&self, req: TableRequest) -> Result<TableResponse> {
        if let Some(refused) = self.refuse_partition(&req.database, &req.name).await? {
            return Ok(refused);
        }
        let mut dropped = self
            .store()
            .drop_table(&req.database, &req.name)
            .await?
            .into_iter();
        match dropped.next() {
            Some(r) => {
                let partitions: Vec<TableRecord> = dropped.collect();
                let mut all = vec![r.clone()];
                all.extend(partitions.iter().cloned());
                self.announce(&all, &partitions, true).await;
                Ok(TableResponse {
                    header: header_ok(),
                    record_json: encode_record(&r)?,
                    changed: true,
                    partitions_json: partitions
                        .iter()
                        .map(encode_record)
                        .collect::<Result<_>>()?,
                })
            }
            None if req.if_exists => Ok(TableResponse {
                header: header_ok(),
                ..Default::default()
            }),
            None => Ok(TableResponse {
                header: header_err(
                    404,
                    format!("table {}.{} not found", req.database, req.name),
                ),
                ..Default::default()
            }),
        }
    }

    pub async fn alter_table(&self, req: AlterTableRequest) -> Result<TableResponse> {
        let definition: serde_json::Value = serde_json::from_str(&req.definition_json)
            .map_err(|e| Error::Invalid(format!("the table definition: {e}")))?;
        if let Some(refused) = self.refuse_partition(&req.database, &req.name).await? {
            return Ok(refused);
        }
        if let Some(r) = self.store().table(&req.database, &req.name).await? {
            if let Some(refused) = check_partitions(&definition, r.partitions) {
                return Ok(refused);
            }
        }
        let records = match self
            .store()
            .update_table(
                &req.database,
                &req.name,
                definition,
                req.base_table_id.zip(req.base_revision),
            )
            .await?
        {
            UpdateTable::Updated(records) => records,
            UpdateTable::Missing => {
                return Ok(TableResponse {
                    header: header_err(
                        404,
                        format!("table {}.{} not found", req.database, req.name),
                    ),
                    ..Default::default()
                })
            }
            UpdateTable::Changed => {
                return Ok(TableResponse {
                    header: header_err(
                        409,
                        format!(
                            "table {}.{} changed since this instance read it (a concurrent \
                             ALTER); run the statement again",
                            req.database, req.name
                        ),
                    ),
                    ..Default::default()
                })
            }
        };
        let Some(record) = records.first() else {
            return Err(Error::Invalid("an ALTER wrote no record".to_string()));
        };
        self.announce(&records, &records[1..], false).await;
        Ok(TableResponse {
            header: header_ok(),
            record_json: encode_record(record)?,
            changed: true,
            partitions_json: records[1..]
                .iter()
                .map(encode_record)
                .collect::<Result<_>>()?,
        })
    }

    pub async fn catalog(&self) -> Result<CatalogResponse> {
        let store = self.store();
        // Read the fingerprint first: a change racing with the reads below
        // then shows up as a new fingerprint on the next heartbeat.
        let fingerprint = store.catalog_fingerprint().await?;
        // Read before the tables: every id up to it was created before
        // they are read, so one of them the list lacks was dropped (a
        // follower skips its WAL records; read after, a table created in
        // between would look dropped).
        let last_table_id = store.last_table_id().await?;
        let databases = store
            .databases()
            .await?
            .into_iter()
            .map(|d| d.name)
            .collect();
        let tables = store
            .tables()
            .await?
            .iter()
            .map(encode_record)
            .collect::<Result<_>>()?;
        Ok(CatalogResponse {
            header: header_ok(),
            fingerprint,
            databases,
            tables_json: tables,
            last_table_id,
        })
    }

    pub async fn route(&self, req: MetaRouteRequest) -> Result<MetaRouteResponse> {
        let store = self.store();
        let database = if req.database.is_empty() {
            crate::store::DEFAULT_DATABASE.to_string()
        } else {
            req.database.clone()
        };
        let shards: BTreeMap<u64, ShardInfo> = store
            .shards()
            .await?
            .into_iter()
            .map(|(s, _)| (s.id, s))
            .collect();
        let endpoints: BTreeMap<String, String> = store
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.endpoint))
            .collect();
        let mut routes = Vec::with_capacity(req.tables.len());
        for name in req.tables {
            let Some(t) = store.table(&database, &name).await? else {
                routes.push(TableRoute {
                    table: name,
                    found: false,
                    ..Default::default()
                });
                continue;
            };
            let shard = shards.get(&t.shard);
            let leader = shard.and_then(|s| s.leader.clone()).unwrap_or_default();
            routes.push(TableRoute {
                table: name,
                found: true,
                table_id: t.id,
                shard: t.shard,
                shard_version: shard.map_or(0, |s| s.version),
                leader_endpoint: endpoints.get(&leader).cloned().unwrap_or_default(),
                leader,
                follower_endpoints: shard
                    .map(|s| {
                        s.followers
                            .iter()
                            .filter_map(|f| endpoints.get(f).cloned())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Ok(MetaRouteResponse {
            header: header_ok(),
            routes,
        })
    }

    /// Every shard with its assignment, lock and last report.
    pub async fn shard_views(&self) -> Result<Vec<ShardView>> {
        let store = self.store();
        let nodes = store.nodes().await?;
        let mut out = Vec::new();
        for (s, _) in store.shards().await? {
            let lock = store.lock_holder(s.id).await?;
            let report = s.leader.as_ref().and_then(|l| {
                nodes
                    .iter()
                    .find(|n| &n.id == l)
                    .and_then(|n| n.shards.iter().find(|r| r.id == s.id && !r.is_follower()))
            });
            // Serving: the assigned leader holds the lock and reported the
            // shard open (its WAL replayed).
            let state = match (&s.leader, &lock) {
                (None, _) => "unassigned",
                (Some(l), Some(h)) if *l == h.node && report.is_some() => "serving",
                _ => "moving",
            };
            let followers =
                s.followers
                    .iter()
                    .map(|f| {
                        let report = nodes.iter().find(|n| &n.id == f).and_then(|n| {
                            n.shards.iter().find(|r| r.id == s.id && r.is_follower())
                        });
                        FollowerView {
                            node: f.clone(),
                            state: if report.is_some() {
                                "following"
                            } else {
                                "opening"
                            },
                            wal_offset: report.map(|r| r.wal_offset),
                            lag_records: report.map(|r| r.lag_records),
                            lag_ms: report.map(|r| r.lag_ms),
                        }
                    })
                    .collect();
            out.push(ShardView {
                id: s.id,
                version: s.version,
                followers,
                replicas: s.replicas,
                leader: s.leader.clone(),
                holder: lock.as_ref().map(|h| h.node.clone()),
                epoch: lock.map(|h| h.epoch),
                state,
                tables: report.map_or(0, |r| r.tables),
                wal_offset: report.map(|r| r.wal_offset),
                load: report.map(ShardLoadView::from),
            });
        }
        Ok(out)
    }

    /// Drains `node` (no shard is led there while the process now behind
    /// it runs), or undrains it.
    pub async fn drain(&self, node: &str, on: bool) -> Result<std::result::Result<(), String>> {
        let store = self.store();
        let nodes = store.nodes().await?;
        let Some(info) = nodes.iter().find(|n| n.id == node).cloned() else {
            return Ok(Err(format!("node {node} is not alive")));
        };
        if on {
            let draining = store.draining().await?;
            let others_lead = nodes.iter().any(|n| {
                n.id != node
                    && !n.is_compute()
                    && !draining.iter().any(|(d, i)| *d == n.id && *i == n.instance)
            });
            if !others_lead {
                return Ok(Err(format!(
                    "draining {node} would leave no live node to lead shards"
                )));
            }
        }
        store
            .set_draining(node, on.then_some(info.instance.as_str()))
            .await?;
        tracing::info!(node, on, "drain");
        Ok(Ok(()))
    }

    /// Moves a shard to `node` (an admin request). `version`, when given,
    /// must be the shard's current version: a stale request is refused.
    pub async fn move_shard(
        &self,
        shard: u64,
        node: &str,
        version: Option<u64>,
    ) -> Result<std::result::Result<ShardInfo, String>> {
        let store = self.store();
        match store.nodes().await?.iter().find(|n| n.id == node) {
            None => return Ok(Err(format!("node {node} is not alive"))),
            Some(n) if n.is_compute() => {
                return Ok(Err(format!(
                    "node {node} is a compute instance: it leads no shard"
                )))
            }
            Some(_) => {}
        }
        let Some((info, rev)) = store
            .shards()
            .await?
            .into_iter()
            .find(|(s, _)| s.id == shard)
        else {
            return Ok(Err(format!("shard {shard} does not exist")));
        };
        if let Some(v) = version {
            if v != info.version {
                return Ok(Err(format!(
                    "shard {shard} is at version {}, not {v}",
                    info.version
                )));
            }
        }
        if info.leader.as_deref() == Some(node) {
            return Ok(Ok(info));
        }
        // A follower taking over hands its place to the old leader, which
        // keeps the shard's copy count (a planned switch).
        let mut followers: Vec<String> = info
            .followers
            .iter()
            .filter(|f| *f != node)
            .cloned()
            .collect();
        if info.followers.iter().any(|f| f == node) {
            if let Some(old) = &info.leader {
                followers.push(old.clone());
            }
        }
        match store
            .set_assignment(&info, rev, Some(node.to_string()), followers)
            .await?
        {
            Some(next) => {
                tracing::info!(shard, from = ?info.leader, to = node, version = next.version,
                    "moving shard (admin)");
                self.announce_move(info.leader.as_deref(), &next).await?;
                Ok(Ok(next))
            }
            None => Ok(Err(format!("shard {shard} changed meanwhile; retry"))),
        }
    }

    /// Campaigns for leadership and, while leading, schedules shards. Runs
    /// until the process stops.
    pub async fn run_leader_loop(self) {
        let mut lease = 0;
        loop {
            tokio::time::sleep(self.inner.opts.schedule_interval).await;
            if let Err(e) = self.leader_round(&mut lease).await {
                tracing::warn!(error = %e, "meta leader round failed");
                if e.is_retryable() {
                    // etcd unreachable: we cannot know whether we still lead.
                    *self.inner.leader_since.lock() = None;
                }
            }
        }
    }

    async fn leader_round(&self, lease: &mut i64) -> Result<()> {
        let store = self.store();
        if *lease != 0 {
            match store.kv().keep_alive(*lease).await {
                Ok(()) => {}
                Err(Error::LeaseExpired(_)) => *lease = 0,
                Err(e) => return Err(e),
            }
        }
        if *lease == 0 {
            *lease = store.grant_lease(self.inner.opts.leader_ttl).await?;
        }
        let leading = store.campaign(&self.inner.opts.me, *lease).await?;
        let mut fresh = false;
        let since = {
            let mut guard = self.inner.leader_since.lock();
            match (leading, *guard) {
                (false, _) => {
                    *guard = None;
                    return Ok(());
                }
                (true, Some(t)) => t,
                (true, None) => {
                    tracing::info!(me = %self.inner.opts.me, "became the meta leader");
                    fresh = true;
                    let now = Instant::now();
                    *guard = Some(now);
                    now
                }
            }
        };
        let config = self.ensure_cluster().await?;
        if let Some(r) = self.inner.opts.replicas {
            if fresh && config.replicas != r {
                store.set_replicas(r).await?;
                tracing::info!(
                    replicas = r,
                    "set the cluster's followers per shard from the configuration"
                );
            }
        }
        if since.elapsed() < self.inner.opts.startup_grace {
            return Ok(());
        }
        // A split or merge an operator asked for goes on while scheduling
        // is paused (pausing stops the scheduler's own decisions).
        if let Err(e) = self.advance_reshape().await {
            tracing::warn!(error = %e, "advancing a split or merge failed; retrying next round");
        }
        if store.schedule_paused().await? {
            return Ok(());
        }
        self.schedule().await
    }

    /// One scheduling pass: failover and assignment first; a balancing move
    /// only when no other move is still in flight.
    async fn schedule(&self) -> Result<()> {
        let store = self.store();
        // Compute instances lead and follow nothing.
        let nodes: Vec<_> = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.is_compute())
            .collect();
        let live: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let shards = store.shards().await?;
        let infos: Vec<ShardInfo> = shards.iter().map(|(s, _)| s.clone()).collect();
        let config = self.ensure_cluster().await?;
        let mut facts = scheduler::Facts {
            replicas: config.replicas,
            ..Default::default()
        };
        for n in &nodes {
            for r in n.shards.iter().filter(|r| r.is_follower()) {
                facts.applied.insert((r.id, n.id.clone()), r.wal_offset);
            }
        }
        // A drain holds for the process that was drained: a new process
        // behind the node id (the restart of a rolling restart) leads again.
        for (node, instance) in store.draining().await? {
            if nodes.iter().any(|n| n.id == node && n.instance == instance) {
                facts.draining.insert(node);
            }
        }
        let leaders: Vec<String> = live
            .iter()
            .filter(|n| !facts.draining.contains(*n))
            .cloned()
            .collect();
        let loads = shard_loads(&nodes, &infos, &leaders);
        let rules = &self.inner.opts.balance;
        let busy = {
            let mut b = self.inner.balancing.lock();
            if let Some(loads) = &loads {
                let total: f64 = crate::balance::node_rates(&leaders, loads).values().sum();
                if total >= rules.min_rate {
                    b.busy = true;
                } else if total < rules.min_rate / 2.0 {
                    b.busy = false;
                }
            }
            b.busy
        };
        // Under load, shards are placed by load, not by count (nor while a
        // led shard's load is not known yet).
        facts.skip_balance = rules.enabled && (busy || loads.is_none());
        let moves = scheduler::plan(&live, &infos, &facts);
        let failing_over = moves
            .iter()
            .any(|m| matches!(m.kind, scheduler::Kind::Assign | scheduler::Kind::Promote));
        // The shards of a split or merge in progress are not moved to even
        // out counts until it is done (a failover still moves them).
        let reshaping: Vec<u64> = store
            .reshape()
            .await?
            .map(|(r, _)| vec![r.from, r.to])
            .unwrap_or_default();
        for mv in moves {
            let Some((info, rev)) = shards.iter().find(|(s, _)| s.id == mv.shard) else {
                continue;
            };
            let balancing = mv.kind == scheduler::Kind::Balance;
            if balancing && reshaping.contains(&mv.shard) {
                continue;
            }
            if balancing && self.moves_in_flight(&shards).await? {
                continue;
            }
            let Some(next) = store
                .set_assignment(info, *rev, Some(mv.to.clone()), mv.followers.clone())
                .await?
            else {
                continue;
            };
            if mv.kind == scheduler::Kind::Followers {
                tracing::info!(shard = mv.shard, followers = ?next.followers, "placed followers");
                continue;
            }
            // A live old leader (balancing, draining) is told to hand over.
            self.announce_move(
                mv.from.as_deref().filter(|f| live.iter().any(|l| l == f)),
                &next,
            )
            .await?;
            tracing::info!(shard = mv.shard, from = ?mv.from, to = %mv.to,
                version = next.version, followers = ?next.followers,
                reason = match mv.kind {
                    scheduler::Kind::Promote => "failover (promoting a follower)",
                    scheduler::Kind::Assign => "failover",
                    _ => "balance",
                },
                "scheduled shard");
        }
        match loads {
            Some(loads)
                if !failing_over
                    && reshaping.is_empty()
                    && !self.moves_in_flight(&shards).await? =>
            {
                self.balance_by_load(&leaders, &loads, busy, &shards)
                    .await?;
            }
            // Not now: a decision seen before counts from zero after.
            _ => {
                let mut b = self.inner.balancing.lock();
                b.pending = None;
                b.rounds = 0;
            }
        }
        Ok(())
    }

    /// Rules of `crate::balance`, acted on once the same decision held for
    /// `after_rounds` rounds, then quiet for `cooldown`.
    async fn balance_by_load(
        &self,
        leaders: &[String],
        loads: &[crate::balance::ShardLoad],
        busy: bool,
        shards: &[(ShardInfo, i64)],
    ) -> Result<()> {
        let rules = &self.inner.opts.balance;
        let decision = {
            let mut b = self.inner.balancing.lock();
            if b.quiet_until.is_some_and(|t| Instant::now() < t) {
                return Ok(());
            }
            let Some(decision) = crate::balance::decide_with(leaders, loads, rules, busy) else {
                b.pending = None;
                b.rounds = 0;
                return Ok(());
            };
            if b.pending
                .as_ref()
                .is_some_and(|p| crate::balance::same(p, &decision))
            {
                b.rounds += 1;
            } else {
                b.rounds = 1;
            }
            b.pending = Some(decision.clone());
            if b.rounds < rules.after_rounds.max(1) {
                return Ok(());
            }
            b.pending = None;
            b.rounds = 0;
            b.quiet_until = Some(Instant::now() + rules.cooldown);
            decision
        };
        tracing::info!(?decision, "balancing by load");
        match decision {
            crate::balance::Decision::Move { shard, from, to } => {
                let Some((info, rev)) = shards.iter().find(|(s, _)| s.id == shard) else {
                    return Ok(());
                };
                let followers: Vec<String> = info
                    .followers
                    .iter()
                    .filter(|f| **f != to)
                    .cloned()
                    .collect();
                if let Some(next) = self
                    .store()
                    .set_assignment(info, *rev, Some(to.clone()), followers)
                    .await?
                {
                    self.announce_move(Some(&from), &next).await?;
                }
            }
            crate::balance::Decision::Split { shard, tables } => {
                if let Err(reason) = self.split_shard(shard, Some(tables)).await? {
                    tracing::info!(shard, %reason, "split by load not started");
                }
            }
            crate::balance::Decision::Merge { into, from } => {
                if let Err(reason) = self.merge_shards(into, from).await? {
                    tracing::info!(into, from, %reason, "merge by load not started");
                }
            }
        }
        Ok(())
    }

    async fn moves_in_flight(&self, shards: &[(ShardInfo, i64)]) -> Result<bool> {
        for (s, _) in shards {
            let Some(leader) = &s.leader else { continue };
            let holder = self.store().lock_holder(s.id).await?;
            if holder.as_ref().map(|h| &h.node) != Some(leader) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The write load of each shard led by one of `leaders`, as its leader
/// reported it under the shard's current version; `None` while a leader
/// has not reported its shard yet (opening it, replaying its WAL: its load
/// is unknown, not zero).
fn shard_loads(
    nodes: &[NodeInfo],
    shards: &[ShardInfo],
    leaders: &[String],
) -> Option<Vec<crate::balance::ShardLoad>> {
    shards
        .iter()
        .filter(|s| s.leader.as_ref().is_some_and(|l| leaders.contains(l)))
        .map(|s| {
            let leader = s.leader.clone()?;
            let report = nodes.iter().find(|n| n.id == leader).and_then(|n| {
                n.shards
                    .iter()
                    .find(|r| r.id == s.id && !r.is_follower() && r.version == s.version)
            })?;
            Some(crate::balance::ShardLoad {
                id: s.id,
                leader,
                rate: report.rows_written_per_s,
                tables: report.table_rates.clone(),
            })
        })
        .collect()
}

/// An event for an instance.
enum Event {
    Open(ShardEvent),
    Close(ShardEvent),
    Table(TableEvent),
    Drop(TableEvent),
}

/// Refuses a definition whose partition key (`partition.count`, as the
/// instances write it) disagrees with the table's partition count: an
/// instance of an older version altering a partitioned table would drop
/// its key.
fn check_partitions(definition: &serde_json::Value, partitions: u32) -> Option<TableResponse> {
    let count = definition
        .get("partition")
        .and_then(|p| p.get("count"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    (count != u64::from(partitions)).then(|| TableResponse {
        header: header_err(
            400,
            format!(
                "the definition has {count} partitions and the table {partitions}: \
                 every instance must run a version that knows partitioned tables"
            ),
        ),
        ..Default::default()
    })
}

fn encode_record(r: &TableRecord) -> Result<String> {
    serde_json::to_string(r).map_err(|e| Error::Invalid(format!("encoding a table: {e}")))
}

/// The gRPC face of [`Meta`]. A meta process that does not lead forwards
/// DDL to the leader, so that catalog changes are serialised in one place;
/// when the leader cannot be reached (an election in progress) it applies
/// the change itself, which is still safe: every change is one etcd
/// transaction.
#[derive(Clone, Debug)]
pub struct MetaGrpc {
    meta: Meta,
    leader: Arc<Mutex<Option<(String, tonic::transport::Channel)>>>,
}

/// Marks a request a meta process forwarded to the leader.
const FORWARDED: &str = "x-strata-meta-forwarded";

impl MetaGrpc {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            leader: Arc::new(Mutex::new(None)),
        }
    }

    /// A client of the leading meta process, unless this one leads (or the
    /// request was forwarded already).
    async fn leader_client<T>(
        &self,
        request: &Request<T>,
    ) -> Option<MetaServiceClient<InterceptedService<tonic::transport::Channel, AttachSecret>>>
    {
        if self.meta.is_leader() || request.metadata().contains_key(FORWARDED) {
            return None;
        }
        let leader = self.meta.store().leader().await.ok()??;
        if leader == self.meta.options().me {
            return None;
        }
        let cached = self.leader.lock().clone();
        let channel = match cached {
            Some((addr, ch)) if addr == leader => ch,
            _ => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
                    .ok()?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                *self.leader.lock() = Some((leader, ch.clone()));
                ch
            }
        };
        Some(MetaServiceClient::with_interceptor(
            channel,
            AttachSecret::new(self.meta.options().cluster_secret.as_ref()),
        ))
    }

    /// With a cluster secret configured, only requests carrying it pass.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.meta.options().cluster_secret {
            Some(secret) => crate::secret::verify(secret, request.metadata()),
            None => Ok(()),
        }
    }
}

fn forwarded<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// Sends a DDL request to the leader; `None` when it must be served here.
macro_rules! via_leader {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.leader_client(&$request).await {
            let message = $request.get_ref().clone();
            match leader.$method(forwarded(message)).await {
                Ok(resp) => return Ok(resp),
                Err(status) => {
                    tracing::debug!(error = %status, "the meta leader did not answer; serving here");
                }
            }
        }
    };
}

macro_rules! answer {
    ($result:expr, $resp:ty) => {
        Ok(Response::new(match $result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "meta request failed");
                <$resp>::default_with_header(header_of(&e))
            }
        }))
    };
}

trait WithHeader: Default {
    fn set_header(&mut self, h: Option<MetaHeader>);
    fn default_with_header(h: Option<MetaHeader>) -> Self {
        let mut r = Self::default();
        r.set_header(h);
        r
    }
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn set_header(&mut self, h: Option<MetaHeader>) {
                self.header = h;
            }
        }
    )*};
}

with_header!(
    HeartbeatResponse,
    ShardLockResponse,
    DdlResponse,
    TableResponse,
    CatalogResponse,
    MetaRouteResponse
);

#[tonic::async_trait]
impl MetaService for MetaGrpc {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.authorize(&request)?;
        answer!(
            self.meta.heartbeat(request.into_inner()).await,
            HeartbeatResponse
        )
    }

    async fn acquire_shard(
        &self,
        request: Request<ShardLockRequest>,
    ) -> Result<Response<ShardLockResponse>, Status> {
        self.authorize(&request)?;
        answer!(
            self.meta.acquire_shard(request.into_inner()).await,
            ShardLockResponse
        )
    }

    async fn release_shard(
        &self,
        request: Request<ShardLockRequest>,
    ) -> Result<Response<ShardLockResponse>, Status> {
        self.authorize(&request)?;
        answer!(
            self.meta.release_shard(request.into_inner()).await,
            ShardLockResponse
        )
    }

    async fn create_database(
        &self,
        request: Request<DatabaseRequest>,
    ) -> Result<Response<DdlResponse>, Status> {
        self.authorize(&request)?;
        via_leader!(self, request, create_database);
        answer!(
            self.meta.create_database(request.into_inner()).await,
            DdlResponse
        )
    }

    async fn drop_database(
        &self,
        request: Request<DatabaseRequest>,
    ) -> Result<Response<DdlResponse>, Status> {
        self.authorize(&request)?;
        via_leader!(self, request, drop_database);
        answer!(
            self.meta.drop_database(request.into_inner()).await,
            DdlResponse
        )
    }

    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<TableResponse>, Status> {
        self.authorize(&request)?;
        via_leader!(self, request, create_table);
        answer!(
            self.meta.create_table(request.into_inner()).await,
            TableResponse
        )
    }

    async fn drop_table(
        &self,
        request: Request<TableRequest>,
    ) -> Result<Response<TableResponse>, Status> {
        self.authorize(&request)?;
        via_leader!(self, request, drop_table);
        answer!(
            self.meta.drop_table(request.into_inner()).await,
            TableResponse
        )
    }

    async fn alter_table(
        &self,
        request: Request<AlterTableRequest>,
    ) -> Result<Response<TableResponse>, Status> {
        self.authorize(&request)?;
        via_leader!(self, request, alter_table);
        answer!(
            self.meta.alter_table(request.into_inner()).await,
            TableResponse
        )
    }

    async fn get_catalog(
        &self,
        request: Request<CatalogRequest>,
    ) -> Result<Response<CatalogResponse>, Status> {
        self.authorize(&request)?;
        answer!(self.meta.catalog().await, CatalogResponse)
    }

    async fn route(
        &self,
        request: Request<MetaRouteRequest>,
    ) -> Result<Response<MetaRouteResponse>, Status> {
        self.authorize(&request)?;
        answer!(
            self.meta.route(request.into_inner()).await,
            MetaRouteResponse
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{kv::memory::MemoryKv, secret::ClusterSecret};

    fn grpc(secret: Option<&str>) -> MetaGrpc {
        let mut opts = MetaOptions::new("127.0.0.1:1".to_string());
        opts.cluster_secret = secret.map(|s| ClusterSecret::new(s).unwrap());
        MetaGrpc::new(Meta::new(
            MetaStore::new(Arc::new(MemoryKv::new()), "c1"),
            opts,
        ))
    }

    fn request<T>(message: T, secret: Option<&str>) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(s) = secret {
            r.metadata_mut()
                .insert(crate::secret::HEADER, s.parse().unwrap());
        }
        r
    }

    /// A heartbeat with rates JSON cannot hold (NaN, infinite) or that
    /// make no sense (negative) is kept with zeros: the node's record
    /// decodes, and so does every read of the nodes.
    #[tokio::test]
    async fn non_finite_load_in_a_heartbeat_is_kept_as_zero() {
        let meta = Meta::new(
            MetaStore::new(Arc::new(MemoryKv::new()), "c1"),
            MetaOptions::new("127.0.0.1:1".to_string()),
        );
        meta.heartbeat(HeartbeatRequest {
            node_id: "127.0.0.1:9".to_string(),
            endpoint: "127.0.0.1:9".to_string(),
            instance_id: "i1".to_string(),
            cpu_cores: f64::NAN,
            shards: vec![strata_proto::meta::ShardState {
                id: 0,
                rows_written_per_s: f64::INFINITY,
                scans_per_s: -3.0,
                bytes_written_per_s: 12.5,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let nodes = meta.store().nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        let n = &nodes[0];
        assert_eq!(n.load.cpu_cores, 0.0);
        assert_eq!(n.shards[0].rows_written_per_s, 0.0);
        assert_eq!(n.shards[0].scans_per_s, 0.0);
        assert_eq!(n.shards[0].bytes_written_per_s, 12.5);
    }

    #[tokio::test]
    async fn with_a_secret_meta_answers_only_requests_that_carry_it() {
        let meta = grpc(Some("the-secret"));
        let err = meta
            .get_catalog(request(CatalogRequest {}, None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = meta
            .heartbeat(request(HeartbeatRequest::default(), Some("another")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = meta
            .acquire_shard(request(ShardLockRequest::default(), None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let ok = meta
            .get_catalog(request(CatalogRequest {}, Some("the-secret")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.header.map(|h| h.code), Some(200));

        // Without a secret, meta checks nothing.
        let open = grpc(None)
            .get_catalog(request(CatalogRequest {}, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(open.header.map(|h| h.code), Some(200));
    }
}
