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
use strata_engine::{
    catalog::TableEntry, options::TableOptions, schema::TableSchema, ClusterCatalog, Engine,
};
use strata_meta::secret::{AttachSecret, ClusterSecret};
use strata_proto::meta::{
    meta_service_client::MetaServiceClient, shard_control_server::ShardControl, AlterTableRequest,
    CatalogRequest, CreateTableRequest, DatabaseRequest, HeartbeatRequest, MetaHeader,
    ShardAssignment, ShardEvent, ShardEventResponse, ShardLockRequest, ShardState, TableEvent,
    TableRequest,
};
use strata_sst::{ShardId, TableId};
use strata_wal::Epoch;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::{config::Config, storage};

/// How often an instance heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A client of the meta service that fails over between meta processes.
#[derive(Debug)]
pub struct MetaClient {
    channels: Vec<(String, Channel)>,
    /// Attaches the cluster secret to every call.
    secret: AttachSecret,
    /// The index of the meta process that answered last.
    current: AtomicU64,
}

type EngineResult<T> = strata_engine::Result<T>;

/// A meta client whose calls carry the cluster secret.
type MetaRpc = MetaServiceClient<InterceptedService<Channel, AttachSecret>>;

fn unavailable(what: impl std::fmt::Display) -> strata_engine::Error {
    strata_engine::Error::MetaUnavailable(format!("meta unavailable: {what}"))
}

impl MetaClient {
    /// `endpoints` are meta gRPC addresses (`host:port`); `secret` goes
    /// with every call.
    pub fn new(endpoints: &[String], secret: Option<&ClusterSecret>) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no meta endpoints given".to_string());
        }
        let mut channels = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ch = Endpoint::from_shared(url)
                .map_err(|err| format!("meta endpoint {e}: {err}"))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            channels.push((e.clone(), ch));
        }
        Ok(Self {
            channels,
            secret: AttachSecret::new(secret),
            current: AtomicU64::new(0),
        })
    }

    /// Calls `f` on each meta process in turn, starting with the last one
    /// that answered, until one answers without a transport error or a 503.
    async fn call<T, F, Fut>(&self, f: F) -> EngineResult<T>
    where
        F: Fn(MetaRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        T: HasHeader,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed) as usize;
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let (name, ch) = &self.channels[idx];
            match f(MetaServiceClient::with_interceptor(
                ch.clone(),
                self.secret.clone(),
            ))
            .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    match resp.header() {
                        Some(h) if h.code == 503 => {
                            last = format!("{name}: {}", h.error);
                        }
                        _ => {
                            self.current.store(idx as u64, Ordering::Relaxed);
                            return Ok(resp);
                        }
                    }
                }
                Err(status) => last = format!("{name}: {}", status.message()),
            }
        }
        Err(unavailable(last))
    }
}

trait HasHeader {
    fn header(&self) -> Option<&MetaHeader>;
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn header(&self) -> Option<&MetaHeader> {
                self.header.as_ref()
            }
        }
    )*};
}

has_header!(
    strata_proto::meta::HeartbeatResponse,
    strata_proto::meta::ShardLockResponse,
    strata_proto::meta::DdlResponse,
    strata_proto::meta::TableResponse,
    strata_proto::meta::CatalogResponse,
    strata_proto::meta::MetaRouteResponse
);

/// Checks a meta answer's header; maps 404/409 to the engine's errors.
fn check(
    header: Option<&MetaHeader>,
    not_found: impl FnOnce() -> strata_engine::Error,
    exists: impl FnOnce() -> strata_engine::Error,
) -> EngineResult<()> {
    match header.map_or(500, |h| h.code) {
        200 => Ok(()),
        404 => Err(not_found()),
        409 => Err(exists()),
        400 => Err(strata_engine::Error::Unsupported(
            header.map(|h| h.error.clone()).unwrap_or_default(),
        )),
        503 => Err(unavailable(header.map(|h| h.error.as_str()).unwrap_or(""))),
        _ => Err(strata_engine::Error::Catalog(
            header.map(|h| h.error.clone()).unwrap_or_default(),
        )),
    }
}

/// Whether meta answered that a newer process took this node id over.
fn is_superseded(header: Option<&MetaHeader>) -> bool {
    header.is_some_and(|h| h.code == 409 && h.error.starts_with("superseded"))
}

/// Checks an answer that has no expected 404 or 409.
fn check_ok(header: Option<&MetaHeader>) -> EngineResult<()> {
    check(
        header,
        || strata_engine::Error::Catalog("unexpected 404 from meta".into()),
        || strata_engine::Error::Catalog("unexpected 409 from meta".into()),
    )
}

/// What meta stores as a table's definition.
#[derive(serde::Serialize, serde::Deserialize)]
struct Definition {
    schema: TableSchema,
    options: TableOptions,
}

/// Meta's table record, as the engine's catalog entry.
fn entry_of(json: &str) -> EngineResult<TableEntry> {
    let r: strata_meta::model::TableRecord = serde_json::from_str(json)
        .map_err(|e| strata_engine::Error::Catalog(format!("a table from meta: {e}")))?;
    let def: Definition = serde_json::from_value(r.definition)
        .map_err(|e| strata_engine::Error::Catalog(format!("table {}: {e}", r.name)))?;
    Ok(TableEntry {
        id: TableId(r.id),
        database: r.database,
        name: r.name,
        schema: def.schema,
        options: def.options,
        shard: ShardId(r.shard),
        created_at_ms: r.created_at_ms,
    })
}

fn record_json(e: &TableEntry) -> EngineResult<String> {
    let record = strata_meta::model::TableRecord {
        id: e.id.0,
        database: e.database.clone(),
        name: e.name.clone(),
        shard: e.shard.0,
        definition: definition(&e.schema, &e.options)?,
        created_at_ms: e.created_at_ms,
    };
    serde_json::to_string(&record).map_err(|err| strata_engine::Error::Internal(err.to_string()))
}

fn definition(schema: &TableSchema, options: &TableOptions) -> EngineResult<serde_json::Value> {
    serde_json::to_value(Definition {
        schema: schema.clone(),
        options: options.clone(),
    })
    .map_err(|e| strata_engine::Error::Internal(format!("encoding a table definition: {e}")))
}

/// DDL through meta.
#[derive(Debug)]
pub struct MetaCatalog {
    meta: Arc<MetaClient>,
}

impl MetaCatalog {
    pub fn new(meta: Arc<MetaClient>) -> Self {
        Self { meta }
    }
}

#[async_trait]
impl ClusterCatalog for MetaCatalog {
    async fn create_database(&self, name: &str, if_not_exists: bool) -> EngineResult<bool> {
        let req = DatabaseRequest {
            name: name.to_string(),
            if_not_exists,
            if_exists: false,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_database(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::Catalog("unexpected 404".into()),
            || strata_engine::Error::DatabaseExists {
                name: name.to_string(),
            },
        )?;
        Ok(resp.changed)
    }

    async fn drop_database(&self, name: &str, if_exists: bool) -> EngineResult<bool> {
        let req = DatabaseRequest {
            name: name.to_string(),
            if_not_exists: false,
            if_exists,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.drop_database(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::DatabaseNotFound {
                name: name.to_string(),
            },
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )?;
        Ok(resp.changed)
    }

    async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        if_not_exists: bool,
    ) -> EngineResult<Option<TableEntry>> {
        let req = CreateTableRequest {
            database: database.to_string(),
            name: name.to_string(),
            definition_json: definition(&schema, &options)?.to_string(),
            if_not_exists,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::DatabaseNotFound {
                name: database.to_string(),
            },
            || strata_engine::Error::TableExists {
                name: name.to_string(),
            },
        )?;
        if !resp.changed {
            return Ok(None);
        }
        entry_of(&resp.record_json).map(Some)
    }

    async fn alter_table(&self, entry: &TableEntry) -> EngineResult<()> {
        let req = AlterTableRequest {
            database: entry.database.clone(),
            name: entry.name.clone(),
            definition_json: definition(&entry.schema, &entry.options)?.to_string(),
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.alter_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::TableNotFound {
                name: entry.name.clone(),
            },
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )
    }

    async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> EngineResult<Option<TableEntry>> {
        let req = TableRequest {
            database: database.to_string(),
            name: name.to_string(),
            if_exists,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.drop_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::TableNotFound {
                name: name.to_string(),
            },
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )?;
        if !resp.changed {
            return Ok(None);
        }
        entry_of(&resp.record_json).map(Some)
    }
}

/// A shard's assignment as this instance last heard it from meta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub shard: u64,
    pub version: u64,
    pub leader: String,
    pub endpoint: String,
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
    config: Config,
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
}

impl Cluster {
    pub fn new(
        node_id: String,
        http_endpoint: String,
        meta: Arc<MetaClient>,
        engine: Arc<Engine>,
        config: Config,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            instance_id: format!("{:016x}", rand::random::<u64>()),
            superseded: AtomicBool::new(false),
            http_endpoint,
            started_at_ms: strata_meta::model::now_ms(),
            meta,
            engine,
            config,
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
        })
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
        let tables = resp
            .tables_json
            .iter()
            .map(|j| entry_of(j))
            .collect::<EngineResult<Vec<_>>>()?;
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

    async fn heartbeat(self: &Arc<Self>) -> EngineResult<()> {
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
        let req = HeartbeatRequest {
            node_id: self.node_id.clone(),
            endpoint: self.node_id.clone(),
            http_endpoint: self.http_endpoint.clone(),
            started_at_ms: self.started_at_ms,
            shards: shards
                .iter()
                .map(|s| ShardState {
                    id: s.id().0,
                    version: versions.get(&s.id().0).map_or(0, |a| a.version),
                    wal_offset: s.applied_offset(),
                    tables: s.tables().len() as u64,
                })
                .collect(),
            tables_json,
            memtable_bytes: self.engine.write_buffer_usage().0 as u64,
            instance_id: self.instance_id.clone(),
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
                        },
                    )
                })
                .collect();
        }
        if resp.catalog_fingerprint != self.fingerprint.load(Ordering::Relaxed)
            && !self.report_tables.load(Ordering::Relaxed)
        {
            self.refresh_catalog().await?;
        }
        self.reconcile().await;
        Ok(())
    }

    async fn reconcile(self: &Arc<Self>) {
        if self.superseded.load(Ordering::Acquire) {
            return;
        }
        let assignments = self.assignments();
        let open: BTreeSet<u64> = self.engine.shards().iter().map(|s| s.id().0).collect();
        for a in &assignments {
            let mine = a.leader == self.node_id;
            if mine && !open.contains(&a.shard) {
                if self
                    .open_backoff
                    .lock()
                    .get(&a.shard)
                    .is_some_and(|(at, _)| std::time::Instant::now() < *at)
                {
                    continue;
                }
                self.spawn_busy(a.shard, |me, shard| async move {
                    let result = me.clone().open_shard(shard).await;
                    me.note_open(shard, result.is_ok());
                    result
                });
            } else if !mine && !open.contains(&a.shard) {
                self.engine.discard_interrupted_open(ShardId(a.shard));
                self.open_backoff.lock().remove(&a.shard);
                self.forget_wal_loss(a.shard);
            } else if !mine && open.contains(&a.shard) {
                self.spawn_busy(
                    a.shard,
                    |me, shard| async move { me.hand_back(shard).await },
                );
            } else if mine && open.contains(&a.shard) {
                // Confirm the lock: after a lease expiry (meta or etcd away)
                // it is re-taken; if another node took it, stop at once.
                match self.acquire(a.shard).await {
                    Ok(Some(epoch))
                        if self
                            .engine
                            .shard(ShardId(a.shard))
                            .is_some_and(|s| s.epoch().0 != epoch) =>
                    {
                        // The lease expired meanwhile and the lock was taken
                        // again under a new epoch: what runs under the old
                        // one may have been fenced; reopen under the new one.
                        tracing::warn!(
                            shard = a.shard,
                            epoch,
                            "the shard's lock was re-taken under a new epoch; reopening"
                        );
                        self.spawn_busy(a.shard, |me, shard| async move {
                            me.engine
                                .close_shard(ShardId(shard), false)
                                .await
                                .map(|_| ())
                        });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(shard = a.shard, "lost the shard's lock; closing it");
                        self.spawn_busy(a.shard, |me, shard| async move {
                            me.close_shard(shard, false).await
                        });
                    }
                    Err(e) => tracing::debug!(shard = a.shard, error = %e, "confirming a lock"),
                }
            }
        }
    }

    /// Forgets a WAL loss this instance found on `shard` when it tried to
    /// open it (`/health` reports it as DEGRADED): the shard is another
    /// instance's now, which finds the loss itself if the WAL still has it.
    fn forget_wal_loss(&self, shard: u64) {
        strata_wal::loss::clear(&format!("shard {shard}"));
        if let crate::config::WalConfig::Kafka(k) = &self.config.wal {
            strata_wal::loss::clear(&crate::storage::kafka_topic(
                &k.topic_prefix,
                &self.config.engine.cluster,
                ShardId(shard),
            ));
        }
    }

    /// Records how an open of `shard` went: after a failure the next try
    /// waits, twice as long each time (1 s to 30 s); an interrupted replay
    /// goes on from where it stopped.
    fn note_open(&self, shard: u64, ok: bool) {
        let mut backoff = self.open_backoff.lock();
        if ok {
            backoff.remove(&shard);
            return;
        }
        let delay = backoff
            .get(&shard)
            .map_or(Duration::from_secs(1), |(_, d)| {
                (*d * 2).min(Duration::from_secs(30))
            });
        tracing::info!(
            shard,
            retry_in_ms = delay.as_millis() as u64,
            "shard open failed; backing off"
        );
        backoff.insert(shard, (std::time::Instant::now() + delay, delay));
    }

    fn spawn_busy<F, Fut>(self: &Arc<Self>, shard: u64, f: F)
    where
        F: FnOnce(Arc<Self>, u64) -> Fut,
        Fut: std::future::Future<Output = EngineResult<()>> + Send + 'static,
    {
        if !self.busy.lock().insert(shard) {
            return;
        }
        let me = self.clone();
        let fut = f(me.clone(), shard);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(shard, error = %e, "shard transition failed; retrying on the next heartbeat");
            }
            me.busy.lock().remove(&shard);
        });
    }

    /// Takes (or confirms) a shard's lock; `None` when refused.
    async fn acquire(&self, shard: u64) -> EngineResult<Option<u64>> {
        let min_epoch = self.min_epoch.lock().get(&shard).copied().unwrap_or(0);
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch,
            instance_id: self.instance_id.clone(),
            confirm_only: false,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_shard(req).await }
            })
            .await?;
        if is_superseded(resp.header.as_ref()) {
            return Ok(None);
        }
        check(
            resp.header.as_ref(),
            || strata_engine::Error::Catalog("unexpected 404".into()),
            || {
                strata_engine::Error::MetaUnavailable(
                    resp.header
                        .as_ref()
                        .map(|h| h.error.clone())
                        .unwrap_or_default(),
                )
            },
        )?;
        Ok(resp.granted.then_some(resp.epoch))
    }

    /// Whether this process holds the shard's lock now (never takes it).
    async fn confirm(&self, shard: u64) -> EngineResult<bool> {
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch: 0,
            instance_id: self.instance_id.clone(),
            confirm_only: true,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_shard(req).await }
            })
            .await?;
        if is_superseded(resp.header.as_ref()) {
            return Ok(false);
        }
        check_ok(resp.header.as_ref())?;
        Ok(resp.granted)
    }

    /// Hands a shard meta moved elsewhere back: flushes it first (so the
    /// next owner replays little) only while this process still holds its
    /// lock; a shard whose lock was lost (a pause past the lease, a
    /// partition) closes without writing anything. The manifest's epoch
    /// check refuses a flush that races a takeover anyway.
    async fn hand_back(self: Arc<Self>, shard: u64) -> EngineResult<()> {
        let held = match self.confirm(shard).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot confirm the shard's lock; closing without a flush");
                false
            }
        };
        if !held {
            tracing::warn!(
                shard,
                "the shard was moved and its lock is gone; closing it without a flush"
            );
        }
        self.close_shard(shard, held).await
    }

    /// Meta said a newer process serves this node id: close every shard
    /// without writing anything more.
    async fn supersede(self: &Arc<Self>) {
        if self.superseded.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(node = %self.node_id, instance = %self.instance_id,
            "a newer process took this node id over; closing every shard without a flush");
        for s in self.engine.shards() {
            s.owner().fence(u64::MAX);
            if let Err(e) = self.engine.close_shard(s.id(), false).await {
                tracing::warn!(shard = %s.id(), error = %e, "closing a superseded shard");
            }
        }
    }

    async fn open_shard(self: Arc<Self>, shard: u64) -> EngineResult<()> {
        let Some(epoch) = self.acquire(shard).await? else {
            tracing::debug!(shard, "the shard's lock is still held elsewhere; waiting");
            return Ok(());
        };
        let started = std::time::Instant::now();
        let wal = match storage::open_wal(&self.config, ShardId(shard)).await {
            Ok(wal) => wal,
            Err(e) => {
                // Every failure after the lock was taken releases it: a
                // lock kept by a live process (its lease renewed by its
                // heartbeats) would keep the shard from the instance meta
                // gives it next, for good (seen in a chaos run: the topic
                // could not be created while the broker was stalled).
                self.release(shard).await;
                return Err(strata_engine::Error::Internal(e.to_string()));
            }
        };
        match self
            .engine
            .open_shard(ShardId(shard), wal, Epoch(epoch))
            .await
        {
            Ok(s) => {
                tracing::info!(
                    shard,
                    epoch,
                    tables = s.tables().len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "opened shard"
                );
                Ok(())
            }
            Err(strata_engine::Error::EpochBehind { highest, .. }) => {
                // The WAL saw a higher epoch than meta handed out (meta lost
                // its state): ask for one above it next time.
                self.min_epoch.lock().insert(shard, highest + 1);
                self.release(shard).await;
                Err(strata_engine::Error::EpochBehind {
                    shard: ShardId(shard),
                    epoch,
                    highest,
                })
            }
            Err(e) => {
                self.release(shard).await;
                Err(e)
            }
        }
    }

    async fn close_shard(self: Arc<Self>, shard: u64, flush: bool) -> EngineResult<()> {
        let result = self.engine.close_shard(ShardId(shard), flush).await;
        if let Err(e) = &result {
            tracing::warn!(shard, error = %e, "flushing on close failed; the WAL keeps the rows");
        }
        // Release whether or not it flushed: a lock left held by a live
        // process (its lease kept alive) would keep the shard from its next
        // owner for good. Meta releases it only if this process holds it.
        self.release(shard).await;
        Ok(())
    }

    async fn release(&self, shard: u64) {
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch: 0,
            instance_id: self.instance_id.clone(),
            confirm_only: false,
        };
        if let Err(e) = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_shard(req).await }
            })
            .await
        {
            tracing::warn!(shard, error = %e, "releasing a shard lock failed; it expires with the lease");
        }
    }

    /// Closes shards whose WAL fenced them (another leader wrote).
    async fn close_fenced(self: &Arc<Self>) {
        for s in self.engine.shards() {
            if s.is_fenced() {
                tracing::warn!(shard = %s.id(), "the shard was fenced by a newer leader; closing it");
                let id = s.id().0;
                self.spawn_busy(
                    id,
                    |me, shard| async move { me.close_shard(shard, false).await },
                );
            }
        }
    }
}

/// Runs an instance in cluster mode until a shutdown signal: registers with
/// meta, serves the shards meta assigns, and answers gRPC and HTTP.
pub async fn run(mut config: Config, meta_endpoints: Vec<String>) -> crate::error::Result<()> {
    use crate::{bootstrap, error::Error, sql::QueryEngine};
    if config.engine.cluster == strata_engine::EngineConfig::default().cluster {
        // Never share topics and object-store paths with a standalone
        // process on the same Kafka and S3.
        config.engine.cluster = "cluster".to_string();
    }
    if !matches!(config.wal, crate::config::WalConfig::Kafka(_)) {
        return Err(Error::InvalidArgument(
            "cluster mode needs the Kafka WAL (wal.kind = \"kafka\"): a shard's WAL must be readable by whichever instance opens it".into(),
        ));
    }
    if matches!(
        config.object_store,
        crate::config::ObjectStoreConfig::Local { .. }
    ) {
        tracing::warn!(
            "cluster mode with a local object store: every instance must share the directory"
        );
    }
    std::fs::create_dir_all(&config.server.data_dir)
        .map_err(|e| Error::Internal(format!("creating the data directory: {e}")))?;
    let store = storage::open_object_store(&config)?;
    let listeners = bootstrap::bind(&config).await?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let advertise = config.server.advertise_addr.unwrap_or(grpc_addr);
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(Error::InvalidArgument(format!(
            "the advertised address {advertise} is not one peers can reach: set server.advertise_addr \
             (or --advertise-addr) to this instance's address, or listen on a specific one"
        )));
    }
    let secret = config.server.cluster_secret.clone();
    if secret.is_none() {
        tracing::error!(
            "no cluster secret is configured (server.cluster_secret or $STRATA_CLUSTER_SECRET): \
             this instance refuses every control RPC from meta (shard events, table drops) and \
             learns of changes only from its heartbeats; a meta that has a secret refuses this \
             instance. Set the same secret on meta and every instance"
        );
    }
    let meta = Arc::new(
        MetaClient::new(&meta_endpoints, secret.as_ref()).map_err(Error::InvalidArgument)?,
    );
    let engine = Engine::open_cluster(
        config.engine.clone(),
        store,
        Arc::new(MetaCatalog::new(meta.clone())),
    )?;
    let cluster = Cluster::new(
        advertise.to_string(),
        http_addr.to_string(),
        meta,
        engine.clone(),
        config.clone(),
    );
    // Ready once meta knows us and the catalog is loaded.
    loop {
        match cluster.heartbeat().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for meta");
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        }
    }
    cluster.meta_reachable.store(true, Ordering::Relaxed);
    let heartbeats = tokio::spawn(cluster.clone().run());
    let query_runtime = bootstrap::query_runtime(&config)?;
    let query = QueryEngine::with_cluster(
        engine.clone(),
        query_runtime.handle().clone(),
        bootstrap::query_threads(&config),
        Some(cluster.clone()),
    )
    .with_limits(crate::sql::QueryLimits::new(&config.query));
    let control = strata_proto::meta::shard_control_server::ShardControlServer::new(
        ShardControlService::new(cluster.clone(), secret),
    );
    bootstrap::serve(&config, query, listeners, "server", Some(control)).await?;
    heartbeats.abort();
    // Hand the shards back: flush, close and release each lock, so that
    // meta can move them at once instead of waiting for the lease to expire.
    for shard in engine.shards() {
        let id = shard.id().0;
        if let Err(e) = cluster.clone().hand_back(id).await {
            tracing::warn!(shard = id, error = %e, "closing a shard on shutdown failed");
        }
    }
    if let Err(e) = engine.close().await {
        tracing::warn!(error = %e, "closing the engine failed; the WAL holds every acknowledged row");
    }
    query_runtime.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// The instance's side of meta's shard events (`ShardControl`): each applies
/// at once what the next heartbeat would bring anyway.
///
/// Every call must carry the cluster secret (`DropTableOnShard` deletes a
/// table's files); without a secret configured, every call is refused.
#[derive(Debug, Clone)]
pub struct ShardControlService {
    cluster: Arc<Cluster>,
    secret: Option<ClusterSecret>,
}

impl ShardControlService {
    pub fn new(cluster: Arc<Cluster>, secret: Option<ClusterSecret>) -> Self {
        Self { cluster, secret }
    }

    fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        match &self.secret {
            Some(secret) => strata_meta::secret::verify(secret, request.metadata()),
            None => Err(tonic::Status::permission_denied(
                "this instance has no cluster secret configured and refuses every control request",
            )),
        }
    }
}

fn event_ok() -> tonic::Response<ShardEventResponse> {
    tonic::Response::new(ShardEventResponse {
        header: Some(MetaHeader {
            code: 200,
            error: String::new(),
        }),
    })
}

fn event_err(e: &strata_engine::Error) -> tonic::Response<ShardEventResponse> {
    tonic::Response::new(ShardEventResponse {
        header: Some(MetaHeader {
            code: 500,
            error: e.to_string(),
        }),
    })
}

impl Cluster {
    /// Applies a leader change meta announced, unless a newer one is known.
    async fn apply_shard_event(self: &Arc<Self>, e: ShardEvent) {
        {
            let mut a = self.assignments.write();
            let newer = a.get(&e.shard).is_none_or(|cur| cur.version <= e.version);
            if newer {
                a.insert(
                    e.shard,
                    Assignment {
                        shard: e.shard,
                        version: e.version,
                        leader: e.leader,
                        endpoint: e.leader_endpoint,
                    },
                );
            }
        }
        self.reconcile().await;
    }
}

#[tonic::async_trait]
impl ShardControl for ShardControlService {
    async fn open_shard(
        &self,
        request: tonic::Request<ShardEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        self.cluster.apply_shard_event(request.into_inner()).await;
        Ok(event_ok())
    }

    async fn close_shard(
        &self,
        request: tonic::Request<ShardEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        self.cluster.apply_shard_event(request.into_inner()).await;
        Ok(event_ok())
    }

    async fn create_table_on_shard(
        &self,
        request: tonic::Request<TableEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        let result = match entry_of(&request.into_inner().record_json) {
            Ok(entry) => self.cluster.engine.install_table(entry).await,
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(()) => event_ok(),
            Err(e) => event_err(&e),
        })
    }

    async fn drop_table_on_shard(
        &self,
        request: tonic::Request<TableEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        let result = match entry_of(&request.into_inner().record_json) {
            // The leader deletes the files (the instance that ran the DROP
            // may not serve the shard).
            Ok(entry) => self
                .cluster
                .engine
                .uninstall_table(entry.id, true)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(()) => event_ok(),
            Err(e) => event_err(&e),
        })
    }
}
