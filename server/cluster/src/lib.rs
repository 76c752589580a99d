//! Cluster mode on an instance: the meta client, DDL through meta, the
//! heartbeat loop and shard reconciliation.
//!
//! Every second the instance heartbeats to meta with its shards (version,
//! applied WAL offset, table count). The answer is the assignment of every
//! shard and the catalog's fingerprint. The instance then reconciles:
//! - a shard assigned here and not open: take its lease lock through meta
//!   (the lock's epoch fences the Kafka WAL), open its WAL region and replay
//!   it; several shards open in parallel;
//! - a shard open here and assigned elsewhere: stop writes, flush, close, and
//!   release the lock (a move is close on the old node, then open on the new
//!   one, whose lock request succeeds once the old one released);
//! - a shard open here whose lock another node holds, or whose WAL fenced
//!   it: close at once, without flushing.
//!
//! While meta (or etcd) is unreachable nothing changes: the instance keeps
//! serving the shards it holds, and DDL fails with "meta unavailable".
//!
//! The crate's other half is the routing seam ([`route`]): everything above
//! the engine asks a [`route::Router`] where a table is served; [`Cluster`]
//! is the cluster's router, [`route::LocalRouter`] standalone's.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use strata_engine::{catalog::TableEntry, Engine};
use strata_proto::meta::{
    CatalogRequest, HeartbeatRequest, ShardAssignment, ShardState, TableRate,
};
use strata_sst::ShardId;

mod control;
mod load;
mod meta_catalog;
mod meta_client;
mod reconcile;
pub mod route;

use self::{
    meta_catalog::{entry_of, record_json},
    meta_client::*,
};

pub use self::{control::ShardControlService, meta_catalog::MetaCatalog, meta_client::MetaClient};

pub use crate::route::Assignment;

/// How this instance reaches the WAL region of a shard it takes.
#[async_trait]
pub trait WalRegions: Send + Sync + std::fmt::Debug {
    /// Opens the region (a Kafka topic, created if missing).
    async fn open(&self, shard: ShardId) -> EngineResult<Arc<dyn strata_wal::Wal>>;
    /// The names a loss of the region's records is reported under, besides
    /// `shard N` (`/health`).
    fn loss_keys(&self, shard: ShardId) -> Vec<String>;
}

/// This instance's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub node_id: String,
    /// Unique per process start: meta tells two processes behind one node
    /// id apart by it, and shard locks are held by it.
    pub instance_id: String,
    /// Set once meta said a newer process took this node id over: every
    /// shard was closed without a flush, and none is opened again.
    pub superseded: AtomicBool,
    pub http_endpoint: String,
    started_at_ms: i64,
    meta: Arc<MetaClient>,
    engine: Arc<Engine>,
    /// Opens the WAL regions of the shards this instance takes.
    wal: Arc<dyn WalRegions>,
    assignments: RwLock<BTreeMap<u64, Assignment>>,
    fingerprint: AtomicU64,
    incarnation: AtomicU64,
    report_tables: AtomicBool,
    /// Shards being opened or closed by a background task.
    busy: Mutex<BTreeSet<u64>>,
    /// Shards whose last open failed: when to try again, and the delay
    /// that led there (doubling from 1 s up to 30 s).
    open_backoff: Mutex<std::collections::HashMap<u64, (std::time::Instant, Duration)>>,
    /// Epochs the WAL showed above the one meta gave, per shard.
    min_epoch: Mutex<BTreeMap<u64, u64>>,
    refresh: tokio::sync::Mutex<()>,
    clients: Mutex<BTreeMap<String, strata_client::Client>>,
    /// Whether the last heartbeat reached meta.
    pub meta_reachable: AtomicBool,
    /// A compute instance (`--role compute`): meta assigns it no shard,
    /// and it reads tables' SSTs itself.
    compute: bool,
    /// The compute instances meta last listed (their gRPC endpoints).
    compute_endpoints: RwLock<Vec<String>>,
    /// The counters of the previous heartbeat, for its load rates.
    load: load::LoadTracker,
}

impl Cluster {
    /// A `compute` instance tells meta its role, opens no shard, and reads
    /// tables' SSTs itself.
    pub fn new(
        node_id: String,
        http_endpoint: String,
        meta: Arc<MetaClient>,
        engine: Arc<Engine>,
        wal: Arc<dyn WalRegions>,
        compute: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            instance_id: format!("{:016x}", rand::random::<u64>()),
            superseded: AtomicBool::new(false),
            http_endpoint,
            started_at_ms: strata_meta::model::now_ms(),
            meta,
            engine,
            wal,
            assignments: RwLock::new(BTreeMap::new()),
            fingerprint: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            report_tables: AtomicBool::new(false),
            busy: Mutex::new(BTreeSet::new()),
            open_backoff: Mutex::new(Default::default()),
            min_epoch: Mutex::new(BTreeMap::new()),
            refresh: tokio::sync::Mutex::new(()),
            clients: Mutex::new(BTreeMap::new()),
            meta_reachable: AtomicBool::new(false),
            compute,
            compute_endpoints: RwLock::new(Vec::new()),
            load: Default::default(),
        })
    }

    /// The gRPC endpoints of the compute instances meta last listed.
    pub fn compute_endpoints(&self) -> Vec<String> {
        self.compute_endpoints.read().clone()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Where a shard is led, as last heard from meta.
    pub fn assignment(&self, shard: u64) -> Option<Assignment> {
        self.assignments.read().get(&shard).cloned()
    }

    pub fn assignments(&self) -> Vec<Assignment> {
        self.assignments.read().values().cloned().collect()
    }

    /// A (cached) connection to another instance.
    pub async fn client(
        &self,
        endpoint: &str,
    ) -> Result<strata_client::Client, strata_client::Error> {
        if let Some(c) = self.clients.lock().get(endpoint) {
            return Ok(c.clone());
        }
        let c = strata_client::Client::connect(endpoint).await?;
        self.clients.lock().insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    /// The fingerprint of the catalog this instance loaded last.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint.load(Ordering::Relaxed)
    }

    /// Reloads the catalog when a peer that forwarded a request saw a
    /// different one (it may have just run a DDL).
    pub async fn sync_catalog(&self, peer_fingerprint: u64) -> EngineResult<()> {
        if peer_fingerprint != 0 && peer_fingerprint != self.fingerprint() {
            self.refresh_catalog().await?;
        }
        Ok(())
    }

    /// Loads meta's catalog into the engine.
    pub async fn refresh_catalog(&self) -> EngineResult<()> {
        let _guard = self.refresh.lock().await;
        let resp = self
            .meta
            .call(|mut c| async move { c.get_catalog(CatalogRequest {}).await })
            .await?;
        check_ok(resp.header.as_ref())?;
        // A record this version cannot read fails the whole refresh: one
        // left out would look dropped (its rows discarded, its WAL records
        // skipped by replay and followers).
        let tables = resp
            .tables_json
            .iter()
            .map(|j| entry_of(j))
            .collect::<EngineResult<Vec<_>>>()?;
        self.engine.note_last_table_id(resp.last_table_id);
        self.engine.install_catalog(resp.databases, tables).await?;
        self.fingerprint.store(resp.fingerprint, Ordering::Relaxed);
        Ok(())
    }

    /// Heartbeats and reconciles until the process stops.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.heartbeat().await {
                Ok(()) => {
                    if !self.meta_reachable.swap(true, Ordering::Relaxed) {
                        tracing::info!("connected to meta");
                    }
                }
                Err(e) => {
                    if self.meta_reachable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "meta is unreachable; serving the shards held");
                    }
                }
            }
            self.close_fenced().await;
        }
    }

    pub(crate) async fn heartbeat(self: &Arc<Self>) -> EngineResult<()> {
        let shards = self.engine.shards();
        let report_tables = self.report_tables.load(Ordering::Relaxed);
        let mut tables_json = Vec::new();
        if report_tables {
            // The whole catalog this instance knows, not only its shards'
            // tables: a table created just before meta lost its state may
            // be known only to the instance that ran the DDL.
            for entry in self.engine.catalog().all_tables() {
                tables_json.push(record_json(&entry)?);
            }
        }
        let versions = self.assignments.read().clone();
        let loads: Vec<_> = shards.iter().map(|s| (s.id().0, s.load())).collect();
        let (rates, cpu_cores, closed) = self.load.sample(&loads);
        const KINDS: [&str; 6] = [
            "rows_written_per_s",
            "bytes_written_per_s",
            "scans_per_s",
            "rows_scanned_per_s",
            "memtable_bytes",
            "wal_backlog",
        ];
        // Shards closed since the last heartbeat leave the metrics (one by
        // one: a scrape meanwhile sees every open shard's).
        for id in closed {
            for kind in KINDS {
                let _ = strata_engine::metrics::SHARD_LOAD
                    .remove_label_values(&[id.to_string().as_str(), kind]);
            }
        }
        for (id, l) in &loads {
            let r = rates.get(id).cloned().unwrap_or_default();
            let shard = id.to_string();
            for (kind, v) in KINDS.into_iter().zip([
                r.rows_written,
                r.bytes_written,
                r.scans,
                r.rows_scanned,
                l.memtable_bytes as f64,
                l.wal_backlog as f64,
            ]) {
                strata_engine::metrics::SHARD_LOAD
                    .with_label_values(&[shard.as_str(), kind])
                    .set(v);
            }
        }
        let req = HeartbeatRequest {
            node_id: self.node_id.clone(),
            endpoint: self.node_id.clone(),
            http_endpoint: self.http_endpoint.clone(),
            started_at_ms: self.started_at_ms,
            shards: shards
                .iter()
                .zip(&loads)
                .map(|(s, (_, l))| {
                    let r = rates.get(&s.id().0).cloned().unwrap_or_default();
                    ShardState {
                        id: s.id().0,
                        version: versions.get(&s.id().0).map_or(0, |a| a.version),
                        wal_offset: s.applied_offset(),
                        tables: s.tables().len() as u64,
                        role: strata_meta::model::ROLE_LEADER.to_string(),
                        lag_records: 0,
                        lag_ms: 0,
                        rows_written_per_s: r.rows_written,
                        bytes_written_per_s: r.bytes_written,
                        scans_per_s: r.scans,
                        rows_scanned_per_s: r.rows_scanned,
                        memtable_bytes: l.memtable_bytes,
                        wal_backlog: l.wal_backlog,
                        table_rates: r
                            .tables
                            .iter()
                            .map(|(table, rate)| TableRate {
                                table: *table,
                                rows_written_per_s: *rate,
                            })
                            .collect(),
                    }
                })
                .chain(self.engine.followers().iter().map(|f| {
                    let status = f.status();
                    ShardState {
                        id: f.id().0,
                        version: versions.get(&f.id().0).map_or(0, |a| a.version),
                        wal_offset: status.applied,
                        tables: f.tables().len() as u64,
                        role: strata_meta::model::ROLE_FOLLOWER.to_string(),
                        lag_records: status.lag_records,
                        lag_ms: status.lag_ms,
                        ..Default::default()
                    }
                }))
                .collect(),
            tables_json,
            memtable_bytes: self.engine.write_buffer_usage().0 as u64,
            instance_id: self.instance_id.clone(),
            cpu_cores,
            rss_bytes: load::rss_bytes(),
            role: if self.compute {
                strata_meta::model::ROLE_COMPUTE.to_string()
            } else {
                String::new()
            },
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.heartbeat(req).await }
            })
            .await?;
        if is_superseded(resp.header.as_ref()) {
            self.supersede().await;
            return Err(strata_engine::Error::MetaUnavailable(
                resp.header.map(|h| h.error).unwrap_or_default(),
            ));
        }
        check_ok(resp.header.as_ref())?;
        if self.superseded.swap(false, Ordering::AcqRel) {
            // The newer process is gone and meta took this one back.
            tracing::warn!(node = %self.node_id, "meta accepts this process for its node id again");
        }
        if report_tables {
            self.report_tables.store(false, Ordering::Relaxed);
        }
        let previous = self.incarnation.swap(resp.incarnation, Ordering::Relaxed);
        if previous != resp.incarnation && !self.engine.catalog().all_tables().is_empty() {
            // Meta's state is new (an empty etcd): report our tables.
            tracing::warn!("meta's metadata was re-initialised; reporting this instance's tables");
            self.report_tables.store(true, Ordering::Relaxed);
        }
        *self.compute_endpoints.write() = resp.compute_endpoints.clone();
        {
            let mut a = self.assignments.write();
            *a = resp
                .assignments
                .iter()
                .map(|s: &ShardAssignment| {
                    (
                        s.id,
                        Assignment {
                            shard: s.id,
                            version: s.version,
                            leader: s.leader.clone(),
                            endpoint: s.leader_endpoint.clone(),
                            followers: s.followers.clone(),
                            follower_endpoints: s.follower_endpoints.clone(),
                        },
                    )
                })
                .collect();
        }
        let refreshed = if resp.catalog_fingerprint != self.fingerprint.load(Ordering::Relaxed)
            && !self.report_tables.load(Ordering::Relaxed)
        {
            self.refresh_catalog().await
        } else {
            Ok(())
        };
        // Shards open and close as meta assigns them even when the catalog
        // could not be loaded (failover must not wait on it). A compute
        // instance holds none.
        if !self.compute {
            self.reconcile().await;
        }
        refreshed
    }

    /// Heartbeats until meta answers (it then knows this instance, and the
    /// catalog is loaded).
    pub async fn wait_for_meta(self: &Arc<Self>) {
        loop {
            match self.heartbeat().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for meta");
                    tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                }
            }
        }
        self.meta_reachable.store(true, Ordering::Relaxed);
    }

    /// On shutdown: flushes, closes and releases every shard open here, so
    /// that meta can move them at once instead of waiting for the lease to
    /// expire.
    pub async fn hand_back_all(self: &Arc<Self>) {
        for shard in self.engine.shards() {
            let id = shard.id().0;
            if let Err(e) = self.clone().hand_back(id).await {
                tracing::warn!(shard = id, error = %e, "closing a shard on shutdown failed");
            }
        }
    }
}

#[async_trait]
impl crate::route::Router for Cluster {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn is_distributed(&self) -> bool {
        true
    }

    fn reads_storage(&self) -> bool {
        self.compute
    }

    fn compute_endpoints(&self) -> Vec<String> {
        Cluster::compute_endpoints(self)
    }

    fn assignment(&self, shard: ShardId) -> Option<Assignment> {
        Cluster::assignment(self, shard.0)
    }

    fn assignments(&self) -> Vec<Assignment> {
        Cluster::assignments(self)
    }

    /// Waits while the shard is assigned here but not open yet, or has no
    /// leader.
    async fn target(
        &self,
        entry: &TableEntry,
        deadline: std::time::Instant,
    ) -> EngineResult<crate::route::Target> {
        use crate::route::Target;
        loop {
            if let Some(t) = self
                .engine
                .shard(entry.shard)
                .and_then(|s| s.table(entry.id))
            {
                return Ok(Target::Local(t));
            }
            if let Some(a) = crate::route::Router::remote_leader(self, entry.shard) {
                return Ok(Target::Remote {
                    endpoint: a.endpoint,
                    version: a.version,
                });
            }
            if std::time::Instant::now() >= deadline {
                return Err(strata_engine::Error::ShardNotOpen { shard: entry.shard });
            }
            tokio::time::sleep(crate::route::MOVE_POLL).await;
        }
    }

    async fn peer(
        &self,
        endpoint: &str,
    ) -> Result<Arc<dyn crate::route::Peer>, strata_client::Error> {
        Ok(Arc::new(self.client(endpoint).await?))
    }

    fn current_entry(&self, entry: &TableEntry) -> Option<TableEntry> {
        self.engine.catalog().table_by_id(entry.id)
    }

    fn fingerprint(&self) -> u64 {
        Cluster::fingerprint(self)
    }

    async fn refresh_catalog(&self) -> EngineResult<bool> {
        Cluster::refresh_catalog(self).await.map(|()| true)
    }

    async fn sync_catalog(&self, peer_fingerprint: u64) -> EngineResult<()> {
        Cluster::sync_catalog(self, peer_fingerprint).await
    }
}
