//! The engine: the catalog, the shards and their tables, and the background
//! maintenance that keeps storage tidy (TTL expiry, compaction, garbage
//! collection).
//!
//! Two modes:
//! - **standalone**: the catalog is persisted in the object store and the
//!   one shard is always open;
//! - **cluster**: the catalog is a copy of the meta service's, DDL goes
//!   through a [`ClusterCatalog`], and shards open and close as meta
//!   assigns them. A table whose shard is not open here is known (its
//!   entry) but not served: lookups fail with a `NotLeader` error.

mod maintenance;
mod readers;
mod tables;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use strata_sst::ShardId;
use strata_wal::{Epoch, Wal};
use tokio::task::JoinHandle;

use crate::{
    cache::{reader_factory, CountingMetadataCache},
    catalog::{Catalog, TableEntry},
    compaction::{CompactionSignal, Compactor},
    context::{EngineConfig, EngineContext},
    follower::Follower,
    gc::Gc,
    memory::WriteBufferManager,
    options::TableOptions,
    schema::{ColumnSchema, TableSchema},
    shard::Shard,
    table::Table,
    Error, Result,
};

/// The shard every table lives on in standalone mode.
pub const STANDALONE_SHARD: ShardId = ShardId(0);

/// The writer epoch of standalone mode, where there is only ever one writer.
pub const STANDALONE_EPOCH: Epoch = Epoch(1);

/// A change made by `ALTER TABLE`.
#[derive(Debug, Clone)]
pub enum AlterTable {
    AddColumns(Vec<ColumnSchema>),
    ModifySettings(Vec<(String, String)>),
}

/// DDL in cluster mode: the meta service allocates ids, picks shards and
/// persists definitions. Implemented by the server over meta's gRPC API.
#[async_trait]
pub trait ClusterCatalog: Send + Sync + std::fmt::Debug {
    async fn create_database(&self, name: &str, if_not_exists: bool) -> Result<bool>;
    async fn drop_database(&self, name: &str, if_exists: bool) -> Result<bool>;
    /// Creates a table, partitioned when `partition` says so; returns the
    /// table, then its partitions (each on the shard meta chose), or
    /// `None` when it existed and `if_not_exists`.
    async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        partition: Option<&crate::partition::PartitionSpec>,
        if_not_exists: bool,
    ) -> Result<Option<Vec<TableEntry>>>;
    /// Replaces a table's definition (ALTER TABLE), and its partitions'
    /// with it, if it is still `base` (the one the change was made to; else
    /// `CatalogChanged`, and nothing changes); returns the entries changed
    /// (the table first).
    async fn alter_table(&self, base: &TableEntry, entry: &TableEntry) -> Result<Vec<TableEntry>>;
    /// Drops a table and its partitions; returns them (the table first),
    /// none when it was missing and `if_exists`.
    async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> Result<Vec<TableEntry>>;
}

/// Where a table is served.
#[derive(Debug, Clone)]
pub enum Located {
    /// On a shard open on this instance.
    Local(Arc<Table>),
    /// On a shard this instance does not serve.
    Remote(Box<TableEntry>),
    /// A partitioned table: its rows are in its partitions
    /// ([`Engine::partitions`]), each located on its own.
    Partitioned(Box<TableEntry>),
}

/// The storage engine: a catalog and the shards open on this instance.
#[derive(Debug)]
pub struct Engine {
    ctx: Arc<EngineContext>,
    catalog: Catalog,
    /// `Some` in cluster mode.
    cluster: Option<Arc<dyn ClusterCatalog>>,
    shards: parking_lot::RwLock<BTreeMap<ShardId, Arc<Shard>>>,
    /// Shards followed here (read-only copies of shards led elsewhere).
    followers: parking_lot::RwLock<BTreeMap<ShardId, Arc<Follower>>>,
    /// A compute instance's read-only copies of tables (their SSTs, from
    /// their manifests) and when each manifest was read.
    readers: readers::Readers,
    /// The last table id meta had handed out as of the catalog about to be
    /// installed ([`Self::note_last_table_id`]).
    pending_last_table_id: std::sync::atomic::AtomicU64,
    /// The last whole catalog meta sent ([`Self::install_catalog`]): the
    /// last table id handed out when it was read, and the ids it lists. A
    /// follower calls a table dropped only by this one snapshot (tables
    /// announced one by one arrive out of order with it).
    snapshot: parking_lot::Mutex<(u64, std::collections::HashSet<strata_sst::TableId>)>,
    /// Opens interrupted during replay, resumed by the next open.
    partials: crate::shard::PartialOpens,
    ddl_lock: tokio::sync::Mutex<()>,
    maintenance: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// Runs the compactions that flushes and maintenance rounds ask for.
    compactor: Arc<Compactor>,
    /// What shards opened here signal the compaction loop with.
    compaction: CompactionSignal,
    /// The compaction loop ([`crate::compaction::run_signals`]).
    compaction_loop: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// Standalone opened fenced: where the owner's epoch is published, so
    /// that an older process notices a newer one before it runs DDL.
    owner_marker: Option<Path>,
}

fn build_context(config: EngineConfig, store: Arc<dyn ObjectStore>) -> Result<Arc<EngineContext>> {
    crate::metrics::register_all();
    let store_url = ObjectStoreUrl::parse("strata://store")
        .map_err(|e| Error::Internal(format!("object store url: {e}")))?;
    let metadata_cache = Arc::new(CountingMetadataCache::new(
        config.sst_metadata_cache_size as usize,
    ));
    Ok(Arc::new(EngineContext {
        flush_permits: tokio::sync::Semaphore::new(config.max_concurrent_flushes.max(1)),
        gc: Gc::new(store.clone(), config.gc_grace),
        write_buffer: WriteBufferManager::new(
            config.write_buffer_soft_limit as usize,
            config.write_buffer_hard_limit as usize,
            config.write_stall_timeout,
        ),
        reader_factory: reader_factory(store.clone(), metadata_cache),
        config,
        store,
        store_url,
    }))
}

impl Engine {
    /// Opens a standalone engine: loads the catalog, opens every table and
    /// replays the WAL. `store` holds SSTs, manifests and the catalog; `wal`
    /// is the shard's WAL region.
    pub async fn open(
        config: EngineConfig,
        store: Arc<dyn ObjectStore>,
        wal: Arc<dyn Wal>,
    ) -> Result<Arc<Self>> {
        Self::open_fenced(config, store, wal, None).await
    }

    /// Opens a standalone engine whose WAL or object store another process
    /// could reach (Kafka, S3): the shard is opened like a cluster shard,
    /// under an epoch above any the WAL or a manifest holds (starting from
    /// `epoch`, normally the time in milliseconds), with a fence marker in
    /// the WAL and a claim on every manifest. An older process still
    /// running on the same WAL and store (a rolling update) is fenced:
    /// it can commit nothing more. `None` opens unfenced under
    /// [`STANDALONE_EPOCH`] (a local WAL, which one process holds).
    pub async fn open_fenced(
        config: EngineConfig,
        store: Arc<dyn ObjectStore>,
        wal: Arc<dyn Wal>,
        epoch: Option<Epoch>,
    ) -> Result<Arc<Self>> {
        let ctx = build_context(config, store)?;
        let (signal, signals) = CompactionSignal::channel();
        let catalog = Catalog::open(ctx.store.clone(), &ctx.config.cluster).await?;
        let entries: Vec<TableEntry> = catalog
            .all_tables()
            .into_iter()
            .filter(|t| t.shard == STANDALONE_SHARD)
            .collect();
        let mut attempt_epoch = epoch.unwrap_or(STANDALONE_EPOCH);
        let mut attempts = 0;
        let partials = crate::shard::PartialOpens::default();
        let shard = loop {
            attempts += 1;
            match Shard::open(
                STANDALONE_SHARD,
                wal.clone(),
                attempt_epoch,
                entries.clone(),
                ctx.clone(),
                signal.clone(),
                epoch.is_some(),
                &partials,
                None,
            )
            .await
            {
                Ok(shard) => break shard,
                Err(Error::EpochBehind { highest, .. }) if epoch.is_some() && attempts < 4 => {
                    tracing::warn!(
                        epoch = attempt_epoch.0,
                        highest,
                        "the WAL or a manifest holds a higher epoch (clock skew?); opening above it"
                    );
                    attempt_epoch = Epoch(highest + 1);
                }
                // The broker or disk hiccuped during the marker or the
                // replay: go on from where it stopped, under the same epoch.
                Err(Error::Wal { op, source })
                    if epoch.is_some() && source.is_retryable() && attempts < 6 =>
                {
                    tracing::warn!(op, error = %source, attempt = attempts,
                        "opening the standalone shard was interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(250 << attempts)).await;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(
            epoch = attempt_epoch.0,
            fenced = epoch.is_some(),
            "opened the standalone shard"
        );
        let marker = epoch.map(|_| {
            Path::from(format!(
                "{}/shards/{}/owner.json",
                ctx.config.cluster, STANDALONE_SHARD
            ))
        });
        if let Some(path) = &marker {
            let body = serde_json::json!({ "epoch": attempt_epoch.0 }).to_string();
            ctx.store
                .put(path, body.into_bytes().into())
                .await
                .map_err(|source| Error::ObjectStore {
                    op: "publish the owner epoch",
                    path: path.to_string(),
                    source: Box::new(source),
                })?;
        }
        Ok(Self::start(
            ctx,
            catalog,
            None,
            BTreeMap::from([(STANDALONE_SHARD, shard)]),
            marker,
            (signal, signals),
        ))
    }

    /// Opens a cluster-mode engine with no shard open and an empty catalog:
    /// install meta's catalog with [`Self::install_catalog`], then open the
    /// shards meta assigns with [`Self::open_shard`].
    pub fn open_cluster(
        config: EngineConfig,
        store: Arc<dyn ObjectStore>,
        ddl: Arc<dyn ClusterCatalog>,
    ) -> Result<Arc<Self>> {
        let ctx = build_context(config, store)?;
        Ok(Self::start(
            ctx,
            Catalog::in_memory(),
            Some(ddl),
            BTreeMap::new(),
            None,
            CompactionSignal::channel(),
        ))
    }

    fn start(
        ctx: Arc<EngineContext>,
        catalog: Catalog,
        cluster: Option<Arc<dyn ClusterCatalog>>,
        shards: BTreeMap<ShardId, Arc<Shard>>,
        owner_marker: Option<Path>,
        (compaction, signals): (
            CompactionSignal,
            tokio::sync::mpsc::UnboundedReceiver<std::sync::Weak<Table>>,
        ),
    ) -> Arc<Self> {
        let compactor = Arc::new(Compactor::new(&ctx.config));
        let compaction_loop =
            tokio::spawn(crate::compaction::run_signals(compactor.clone(), signals));
        let engine = Arc::new(Self {
            ctx,
            catalog,
            cluster,
            shards: parking_lot::RwLock::new(shards),
            followers: parking_lot::RwLock::new(BTreeMap::new()),
            readers: Default::default(),
            pending_last_table_id: std::sync::atomic::AtomicU64::new(0),
            snapshot: parking_lot::Mutex::new((0, Default::default())),
            partials: Default::default(),
            ddl_lock: tokio::sync::Mutex::new(()),
            maintenance: parking_lot::Mutex::new(None),
            compactor,
            compaction,
            compaction_loop: parking_lot::Mutex::new(Some(compaction_loop)),
            owner_marker,
        });
        let task = tokio::spawn(maintenance::run_maintenance(Arc::downgrade(&engine)));
        *engine.maintenance.lock() = Some(task);
        engine
    }

    /// Whether the engine runs in cluster mode.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Opens shard `id` on this instance with its WAL region, writing under
    /// `epoch` (the shard lock's). Its tables are the catalog's entries on
    /// that shard. Idempotent: an open shard is returned as it is.
    pub async fn open_shard(
        &self,
        id: ShardId,
        wal: Arc<dyn Wal>,
        epoch: Epoch,
    ) -> Result<Arc<Shard>> {
        self.open_shard_seeded(id, wal, epoch, None).await
    }

    /// Makes this instance the leader of shard `id`, which it follows: the
    /// follower stops, and the shard opens under `epoch` with the
    /// follower's memtables and position, reading only the WAL records the
    /// follower had not applied. Without a follower here this is
    /// [`Self::open_shard`]. `wal` must be freshly opened (a follower's
    /// view of the region's end is old).
    pub async fn promote_follower(
        &self,
        id: ShardId,
        wal: Arc<dyn Wal>,
        epoch: Epoch,
    ) -> Result<Arc<Shard>> {
        if let Some(s) = self.shard(id) {
            return Ok(s);
        }
        let follower = self.followers.write().remove(&id);
        let seed = match follower {
            Some(f) => Some(f.stop().await),
            None => None,
        };
        self.open_shard_seeded(id, wal, epoch, seed).await
    }

    async fn open_shard_seeded(
        &self,
        id: ShardId,
        wal: Arc<dyn Wal>,
        epoch: Epoch,
        seed: Option<crate::follower::Seed>,
    ) -> Result<Arc<Shard>> {
        if let Some(s) = self.shard(id) {
            return Ok(s);
        }
        let entries = self.entries_on(id);
        let shard = Shard::open(
            id,
            wal,
            epoch,
            entries,
            self.ctx.clone(),
            self.compaction.clone(),
            self.is_cluster(),
            &self.partials,
            seed,
        )
        .await?;
        // Tables created or altered while the shard was opening: apply them
        // now, under the DDL lock so that no change slips in between.
        let _guard = self.ddl_lock.lock().await;
        let shard = self.shards.write().entry(id).or_insert(shard).clone();
        for entry in self.entries_on(id) {
            self.apply_entry(&shard, entry).await?;
        }
        Ok(shard)
    }

    /// Closes shard `id`: stops taking writes, flushes its memtables (when
    /// `flush`, and it was not fenced) and releases it. Acknowledged writes
    /// stay in the WAL whether or not the flush succeeds.
    pub async fn close_shard(&self, id: ShardId, flush: bool) -> Result<bool> {
        let Some(shard) = self.shards.write().remove(&id) else {
            return Ok(false);
        };
        shard.close().await;
        let mut result = Ok(());
        if flush && !shard.is_fenced() {
            result = shard.flush_all().await;
        }
        // Background flushes and compactions still running commit nothing
        // from here on; wait for a commit already under way to end.
        shard.owner().relinquish();
        for t in shard.tables() {
            drop(t.manifest.lock().await);
        }
        for t in shard.tables() {
            self.ctx.write_buffer.release(t.version().memtable_bytes());
        }
        tracing::info!(shard = %id, "closed shard");
        result.map(|()| true)
    }

    /// Opens shard `id` here as a read-only follower of its leader, reading
    /// `wal`. Idempotent.
    pub async fn open_follower(
        self: &Arc<Self>,
        id: ShardId,
        wal: Arc<dyn Wal>,
    ) -> Result<Arc<Follower>> {
        if let Some(f) = self.follower(id) {
            return Ok(f);
        }
        if self.shard(id).is_some() {
            return Err(Error::Internal(format!(
                "shard {id} is led here; it cannot also be followed"
            )));
        }
        let entries = self.entries_on(id);
        let weak = Arc::downgrade(self);
        let lookup: crate::follower::Lookup = Arc::new(move |table| match weak.upgrade() {
            Some(engine) => engine.known(table),
            None => crate::follower::Known::Unknown,
        });
        let follower = Follower::open(
            id,
            wal,
            entries,
            self.ctx.clone(),
            lookup,
            self.ctx.config.follower_sync_interval,
        )
        .await?;
        let _guard = self.ddl_lock.lock().await;
        let follower = self.followers.write().entry(id).or_insert(follower).clone();
        for entry in self.entries_on(id) {
            follower.apply_entry(entry).await?;
        }
        Ok(follower)
    }

    /// The catalog's tables on shard `id`.
    fn entries_on(&self, id: ShardId) -> Vec<TableEntry> {
        self.catalog
            .all_tables()
            .into_iter()
            .filter(|t| t.shard == id)
            .collect()
    }

    /// What the catalog says about a table id a follower met in the WAL.
    fn known(&self, id: strata_sst::TableId) -> crate::follower::Known {
        use crate::follower::Known;
        if let Some(e) = self.catalog.table_by_id(id) {
            return Known::Entry(Box::new(e));
        }
        // Ids are handed out in increasing order and meta's catalog is a
        // snapshot: an id at or below the last one handed out when it was
        // read, which it does not list, was dropped. Anything else (a
        // table created since, not heard of yet) is waited for.
        if self.dropped_by_snapshot(id) {
            Known::Dropped
        } else {
            Known::Unknown
        }
    }

    /// Records the last table id meta handed out, as of the catalog about
    /// to be installed (call before [`Self::install_catalog`]).
    pub fn note_last_table_id(&self, id: u64) {
        self.pending_last_table_id
            .store(id, std::sync::atomic::Ordering::Release);
    }

    /// Records meta's whole catalog as the snapshot followers judge dropped
    /// tables by (see `snapshot`).
    /// Returns the snapshot's last table id.
    pub(crate) fn note_snapshot(&self, tables: &[TableEntry]) -> u64 {
        let ids: std::collections::HashSet<strata_sst::TableId> =
            tables.iter().map(|t| t.id).collect();
        // Without meta's last id (an older meta), the highest id listed:
        // the snapshot is consistent, so an absent id below it was dropped.
        let last = self
            .pending_last_table_id
            .swap(0, std::sync::atomic::Ordering::AcqRel)
            .max(ids.iter().map(|t| t.0).max().unwrap_or(0));
        *self.snapshot.lock() = (last, ids);
        last
    }

    /// Whether meta's last whole catalog shows table `id` dropped (an id it
    /// had handed out, which it does not list).
    pub(crate) fn dropped_by_snapshot(&self, id: strata_sst::TableId) -> bool {
        let snapshot = self.snapshot.lock();
        id.0 <= snapshot.0 && !snapshot.1.contains(&id)
    }

    /// Stops following shard `id`.
    pub async fn close_follower(&self, id: ShardId) -> bool {
        let follower = self.followers.write().remove(&id);
        match follower {
            Some(f) => {
                f.close().await;
                true
            }
            None => false,
        }
    }

    /// A shard followed here.
    pub fn follower(&self, id: ShardId) -> Option<Arc<Follower>> {
        self.followers.read().get(&id).cloned()
    }

    /// The shards followed here, by id.
    pub fn followers(&self) -> Vec<Arc<Follower>> {
        self.followers.read().values().cloned().collect()
    }

    /// Forgets what an interrupted open of shard `id` had replayed (the
    /// shard is no longer this instance's to open).
    pub fn discard_interrupted_open(&self, id: ShardId) {
        if let Some(p) = self.partials.lock().remove(&id) {
            tracing::info!(shard = %id, "discarding an interrupted open");
            p.discard(&self.ctx);
        }
    }

    /// A shard open on this instance.
    pub fn shard(&self, id: ShardId) -> Option<Arc<Shard>> {
        self.shards.read().get(&id).cloned()
    }

    /// The shards open on this instance, by id.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards.read().values().cloned().collect()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.ctx.config
    }

    /// The object store holding SSTs.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.ctx.store.clone()
    }

    /// The URL under which [`Self::object_store`] must be registered with
    /// DataFusion's runtime for scans to find SSTs.
    pub fn object_store_url(&self) -> &ObjectStoreUrl {
        &self.ctx.store_url
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Bytes held by all memtables, and the soft and hard limits.
    pub fn write_buffer_usage(&self) -> (usize, usize, usize) {
        let wb = &self.ctx.write_buffer;
        (wb.used(), wb.soft_limit(), wb.hard_limit())
    }

    /// Flushes everything and stops the background tasks. Acknowledged writes
    /// are durable in the WAL whether or not this runs.
    pub async fn close(&self) -> Result<()> {
        self.stop_background();
        let mut result = Ok(());
        let ids: Vec<ShardId> = self.shards.read().keys().copied().collect();
        for id in ids {
            if let Err(e) = self.close_shard(id, true).await {
                result = Err(e);
            }
        }
        result
    }
}

impl Engine {
    /// Stops the maintenance and compaction loops. Compactions already
    /// running finish on their own; they commit nothing once their shard
    /// is closed.
    fn stop_background(&self) {
        for task in [&self.maintenance, &self.compaction_loop] {
            if let Some(t) = task.lock().take() {
                t.abort();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_background();
    }
}
