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

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use strata_sst::{layout, ShardId, TableId};
use strata_wal::{Epoch, Wal};
use tokio::task::JoinHandle;

use crate::{
    cache::{reader_factory, CountingMetadataCache},
    catalog::{Catalog, TableEntry},
    compaction::{CompactionReport, Compactor},
    context::{EngineConfig, EngineContext},
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

/// How often, in maintenance rounds, orphan files are looked for.
const ORPHAN_SCAN_EVERY: u64 = 10;

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
    /// Creates a table; `None` when it existed and `if_not_exists`.
    async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        if_not_exists: bool,
    ) -> Result<Option<TableEntry>>;
    /// Replaces a table's definition (ALTER TABLE).
    async fn alter_table(&self, entry: &TableEntry) -> Result<()>;
    /// Drops a table; `None` when it was missing and `if_exists`.
    async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> Result<Option<TableEntry>>;
}

/// Where a table is served.
#[derive(Debug, Clone)]
pub enum Located {
    /// On a shard open on this instance.
    Local(Arc<Table>),
    /// On a shard this instance does not serve.
    Remote(Box<TableEntry>),
}

/// The storage engine: a catalog and the shards open on this instance.
#[derive(Debug)]
pub struct Engine {
    ctx: Arc<EngineContext>,
    catalog: Catalog,
    /// `Some` in cluster mode.
    cluster: Option<Arc<dyn ClusterCatalog>>,
    shards: parking_lot::RwLock<BTreeMap<ShardId, Arc<Shard>>>,
    /// Opens interrupted during replay, resumed by the next open.
    partials: crate::shard::PartialOpens,
    ddl_lock: tokio::sync::Mutex<()>,
    maintenance: parking_lot::Mutex<Option<JoinHandle<()>>>,
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
        compactor: Arc::new(Compactor::new(&config)),
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
                epoch.is_some(),
                &partials,
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
        ))
    }

    fn start(
        ctx: Arc<EngineContext>,
        catalog: Catalog,
        cluster: Option<Arc<dyn ClusterCatalog>>,
        shards: BTreeMap<ShardId, Arc<Shard>>,
        owner_marker: Option<Path>,
    ) -> Arc<Self> {
        let engine = Arc::new(Self {
            ctx,
            catalog,
            cluster,
            shards: parking_lot::RwLock::new(shards),
            partials: Default::default(),
            ddl_lock: tokio::sync::Mutex::new(()),
            maintenance: parking_lot::Mutex::new(None),
            owner_marker,
        });
        let task = tokio::spawn(run_maintenance(Arc::downgrade(&engine)));
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
        if let Some(s) = self.shard(id) {
            return Ok(s);
        }
        let entries: Vec<TableEntry> = self
            .catalog
            .all_tables()
            .into_iter()
            .filter(|t| t.shard == id)
            .collect();
        let shard = Shard::open(
            id,
            wal,
            epoch,
            entries,
            self.ctx.clone(),
            self.is_cluster(),
            &self.partials,
        )
        .await?;
        // Tables created or altered while the shard was opening: apply them
        // now, under the DDL lock so that no change slips in between.
        let _guard = self.ddl_lock.lock().await;
        let shard = self.shards.write().entry(id).or_insert(shard).clone();
        for entry in self
            .catalog
            .all_tables()
            .into_iter()
            .filter(|t| t.shard == id)
        {
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

    /// Replaces the catalog with meta's, then opens the tables new on open
    /// shards, applies changed definitions and closes dropped tables.
    pub async fn install_catalog(
        &self,
        databases: Vec<String>,
        tables: Vec<TableEntry>,
    ) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        let wanted: BTreeMap<TableId, TableEntry> =
            tables.iter().map(|t| (t.id, t.clone())).collect();
        self.catalog.install(databases, tables);
        for shard in self.shards() {
            for table in shard.tables() {
                if !wanted.contains_key(&table.id()) {
                    shard.remove_table(table.id());
                }
            }
            for entry in wanted.values().filter(|e| e.shard == shard.id()) {
                self.apply_entry(&shard, entry.clone()).await?;
            }
        }
        Ok(())
    }

    /// Installs one table's record from meta (created or altered), opening
    /// it when its shard is open here.
    pub async fn install_table(&self, entry: TableEntry) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        self.catalog.install_table(entry.clone());
        if let Some(shard) = self.shard(entry.shard) {
            self.apply_entry(&shard, entry).await?;
        }
        Ok(())
    }

    /// Forgets a dropped table; when `delete_files`, and its shard is open
    /// here, its files are deleted in the background.
    pub async fn uninstall_table(&self, id: TableId, delete_files: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        let entry = self.catalog.remove_table(id);
        let mut found = entry.is_some();
        for shard in self.shards() {
            if shard.remove_table(id).is_some() {
                found = true;
                if delete_files {
                    if let Some(e) = &entry {
                        self.delete_table_files(e);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Installs a database present (or absent) in meta.
    pub fn install_database(&self, name: &str, present: bool) {
        self.catalog.install_database(name, present);
    }

    async fn apply_entry(&self, shard: &Arc<Shard>, entry: TableEntry) -> Result<()> {
        match shard.table(entry.id) {
            Some(table) if table.meta().entry != entry => {
                table.install_meta(entry);
            }
            Some(_) => {}
            None => {
                shard.add_table(entry).await?;
            }
        }
        Ok(())
    }

    fn delete_table_files(&self, entry: &TableEntry) {
        let store = self.ctx.store.clone();
        let dir = layout::table_dir(&self.ctx.config.cluster, entry.shard, entry.id);
        tokio::spawn(async move {
            if let Err(e) = delete_prefix(&store, &dir, Duration::ZERO).await {
                tracing::warn!(dir = %dir, error = %e, "deleting a dropped table's files failed; the orphan scan will retry");
            }
        });
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

    /// Standalone on shared storage: refuses DDL once a newer process
    /// published a higher epoch (a rolling update), before it changes the
    /// catalog or deletes files.
    async fn check_owner(&self) -> Result<()> {
        let (Some(path), Some(shard)) = (&self.owner_marker, self.shard(STANDALONE_SHARD)) else {
            return Ok(());
        };
        shard.owner().check()?;
        let got = self
            .ctx
            .store
            .get(path)
            .await
            .map_err(|source| Error::ObjectStore {
                op: "read the owner epoch",
                path: path.to_string(),
                source: Box::new(source),
            })?;
        let bytes = got.bytes().await.map_err(|source| Error::ObjectStore {
            op: "read the owner epoch",
            path: path.to_string(),
            source: Box::new(source),
        })?;
        let epoch = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or(0);
        shard.owner().fence(epoch);
        shard.owner().check()
    }

    pub async fn create_database(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        match &self.cluster {
            Some(meta) => {
                crate::catalog::validate_database_name(name)?;
                let created = meta.create_database(name, if_not_exists).await?;
                self.catalog.install_database(name, true);
                Ok(created)
            }
            None => self.catalog.create_database(name, if_not_exists).await,
        }
    }

    pub async fn drop_database(&self, name: &str, if_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        match &self.cluster {
            Some(meta) => {
                if name == crate::catalog::DEFAULT_DATABASE {
                    return Err(Error::Unsupported(format!(
                        "the {name} database cannot be dropped"
                    )));
                }
                let dropped = meta.drop_database(name, if_exists).await?;
                self.catalog.install_database(name, false);
                Ok(dropped)
            }
            None => self.catalog.drop_database(name, if_exists).await,
        }
    }

    pub fn databases(&self) -> Vec<String> {
        self.catalog.databases()
    }

    pub fn database_exists(&self, name: &str) -> bool {
        self.catalog.database_exists(name)
    }

    /// Creates a table. Returns `None` when it existed and `if_not_exists`.
    pub async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        if_not_exists: bool,
    ) -> Result<Option<TableEntry>> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        let entry = match &self.cluster {
            Some(meta) => {
                if name.is_empty() {
                    return Err(Error::InvalidSchema("table name must not be empty".into()));
                }
                meta.create_table(database, name, schema, options, if_not_exists)
                    .await?
            }
            None => {
                self.catalog
                    .create_table(
                        database,
                        name,
                        schema,
                        options,
                        STANDALONE_SHARD,
                        if_not_exists,
                    )
                    .await?
            }
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        self.catalog.install_table(entry.clone());
        if let Some(shard) = self.shard(entry.shard) {
            self.apply_entry(&shard, entry.clone()).await?;
        }
        tracing::info!(database, table = name, id = %entry.id, shard = %entry.shard, "created table");
        Ok(Some(entry))
    }

    /// Changes a table online: adds columns or modifies settings. The change
    /// is persisted before it applies; writes and queries continue.
    pub async fn alter_table(&self, database: &str, name: &str, change: AlterTable) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        let current = self.entry(database, name)?;
        let apply = |current: &TableEntry| -> Result<TableEntry> {
            let mut next = current.clone();
            match &change {
                AlterTable::AddColumns(columns) => {
                    for c in columns {
                        next.schema = next.schema.with_column(c.clone())?;
                    }
                }
                AlterTable::ModifySettings(pairs) => {
                    next.options = next
                        .options
                        .modified(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
                }
            }
            Ok(next)
        };
        let entry = match &self.cluster {
            Some(meta) => {
                let next = apply(&current)?;
                meta.alter_table(&next).await?;
                self.catalog.install_table(next.clone());
                next
            }
            None => self.catalog.update_table(current.id, apply).await?,
        };
        if let Some(shard) = self.shard(entry.shard) {
            self.apply_entry(&shard, entry).await?;
        }
        tracing::info!(database, table = name, ?change, "altered table");
        Ok(())
    }

    /// Drops a table and, in the background, deletes its files. Returns false
    /// when it did not exist and `if_exists`.
    pub async fn drop_table(&self, database: &str, name: &str, if_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        let entry = match &self.cluster {
            Some(meta) => meta.drop_table(database, name, if_exists).await?,
            None => self.catalog.drop_table(database, name, if_exists).await?,
        };
        let Some(entry) = entry else {
            return Ok(false);
        };
        self.catalog.remove_table(entry.id);
        if let Some(shard) = self.shard(entry.shard) {
            shard.remove_table(entry.id);
            self.delete_table_files(&entry);
        }
        tracing::info!(database, table = name, id = %entry.id, "dropped table");
        Ok(true)
    }

    /// A table's catalog entry, wherever it is served.
    pub fn entry(&self, database: &str, name: &str) -> Result<TableEntry> {
        if !self.catalog.database_exists(database) {
            return Err(Error::DatabaseNotFound {
                name: database.to_string(),
            });
        }
        self.catalog
            .table(database, name)
            .ok_or_else(|| Error::TableNotFound {
                name: name.to_string(),
            })
    }

    /// Where a table is served.
    pub fn locate(&self, database: &str, name: &str) -> Result<Located> {
        let entry = self.entry(database, name)?;
        match self.shard(entry.shard) {
            Some(shard) => match shard.table(entry.id) {
                Some(t) => Ok(Located::Local(t)),
                // Its shard is open here but the table is still being
                // opened (a CREATE TABLE in progress): not there yet.
                None => Err(Error::TableNotFound {
                    name: name.to_string(),
                }),
            },
            None => Ok(Located::Remote(Box::new(entry))),
        }
    }

    /// Looks a table up by name; fails with `NotLeader` when its shard is not
    /// open here.
    pub fn table(&self, database: &str, name: &str) -> Result<Arc<Table>> {
        match self.locate(database, name)? {
            Located::Local(t) => Ok(t),
            Located::Remote(e) => Err(Error::NotServedHere {
                table: name.to_string(),
                shard: e.shard,
            }),
        }
    }

    /// The catalog entries of a database's tables, by name.
    pub fn table_entries(&self, database: &str) -> Vec<TableEntry> {
        self.catalog.tables(database)
    }

    /// The local tables of a database, by name.
    pub fn tables(&self, database: &str) -> Vec<Arc<Table>> {
        self.catalog
            .tables(database)
            .into_iter()
            .filter_map(|e| self.shard(e.shard).and_then(|s| s.table(e.id)))
            .collect()
    }

    /// Every local table of every database.
    pub fn all_tables(&self) -> Vec<Arc<Table>> {
        let mut all: Vec<Arc<Table>> = self.shards().iter().flat_map(|s| s.tables()).collect();
        all.sort_by(|a, b| (a.database(), a.name()).cmp(&(b.database(), b.name())));
        all
    }

    /// The shard a table is on.
    fn shard_of(&self, table: &Table) -> Result<Arc<Shard>> {
        let id = table.meta().entry.shard;
        self.shard(id).ok_or(Error::ShardNotOpen { shard: id })
    }

    /// Flushes one table's memtables to SSTs.
    pub async fn flush_table(&self, table: &Table) -> Result<()> {
        self.shard_of(table)?.flush_table(table).await
    }

    /// Compacts one table now: every segment with more than one SST is
    /// merged (within the compaction memory budget).
    pub async fn compact_table(&self, table: &Arc<Table>) -> Result<CompactionReport> {
        self.ctx.compactor.compact(table, true).await
    }

    /// Runs one round of maintenance now: TTL expiry, compaction checks,
    /// garbage collection and (when `orphans`) the orphan scan.
    pub async fn maintain(&self, orphans: bool) -> Result<()> {
        for table in self.all_tables() {
            if let Err(e) = table.resync_if_stale().await {
                tracing::warn!(table = %table.name(), error = %e, "re-reading the manifest failed; retrying later");
                continue;
            }
            if let Err(e) = table.expire().await {
                tracing::warn!(table = %table.name(), error = %e, "TTL expiry failed; retrying later");
            }
            self.ctx.compactor.schedule(table.clone());
        }
        self.ctx.gc.collect().await?;
        if orphans {
            self.remove_orphans().await?;
        }
        Ok(())
    }

    /// Deletes SST files no manifest references, and (standalone) the files
    /// of dropped tables, once they are older than `orphan_min_age`. In
    /// cluster mode a dropped table's files are deleted by the shard leader
    /// that drops it: the catalog copy here is not authoritative.
    pub async fn remove_orphans(&self) -> Result<usize> {
        let cfg = &self.ctx.config;
        let mut deleted = 0;
        for shard in self.shards() {
            if shard.is_fenced() {
                continue;
            }
            for table in shard.tables() {
                let dir = layout::sst_dir(&cfg.cluster, shard.id(), table.id());
                // The live set is read from the manifest on the store after
                // the listing (and joined with what this process has in
                // memory), never from memory alone: an SST another writer
                // committed is live whether or not this process knows it.
                // Reading it also notices a newer owner, and then nothing
                // is deleted.
                deleted += self
                    .ctx
                    .gc
                    .remove_orphans_checked(&dir, cfg.orphan_min_age, || async {
                        let mut live = table.stored_live_ssts().await?;
                        live.extend(table.version().ssts.iter().map(|s| s.info.id));
                        Ok(live)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(table = %table.name(), error = %e,
                            "orphan scan of a table skipped; retrying next time");
                        0
                    });
            }
        }
        if self.is_cluster() {
            return Ok(deleted);
        }
        // Directories of tables the catalog no longer has.
        let live_tables: HashSet<TableId> = self.all_tables().iter().map(|t| t.id()).collect();
        let tables_dir = Path::from(format!(
            "{}/shards/{}/tables",
            cfg.cluster, STANDALONE_SHARD
        ));
        let listing = self
            .ctx
            .store
            .list_with_delimiter(Some(&tables_dir))
            .await
            .map_err(|source| Error::ObjectStore {
                op: "list",
                path: tables_dir.to_string(),
                source: Box::new(source),
            })?;
        for prefix in listing.common_prefixes {
            let Some(id) = prefix.filename().and_then(|f| f.parse::<u64>().ok()) else {
                continue;
            };
            if !live_tables.contains(&TableId(id))
                && self.catalog.table_by_id(TableId(id)).is_none()
            {
                // A table this process does not know may be a newer
                // process's (a rolling update): its manifest says so.
                let Some(shard) = self.shard(STANDALONE_SHARD) else {
                    break;
                };
                let dir = layout::manifest_dir(&cfg.cluster, STANDALONE_SHARD, TableId(id));
                let state = crate::manifest::load(&self.ctx.store, &dir, TableId(id)).await?;
                if state.epoch > shard.owner().epoch {
                    shard.owner().fence(state.epoch);
                }
                if shard.owner().is_over() {
                    break;
                }
                deleted += delete_prefix(&self.ctx.store, &prefix, cfg.orphan_min_age).await?;
            }
        }
        Ok(deleted)
    }

    /// Flushes everything and stops the background tasks. Acknowledged writes
    /// are durable in the WAL whether or not this runs.
    pub async fn close(&self) -> Result<()> {
        if let Some(t) = self.maintenance.lock().take() {
            t.abort();
        }
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

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(t) = self.maintenance.lock().take() {
            t.abort();
        }
    }
}

/// Deletes every object under `prefix` older than `min_age`.
async fn delete_prefix(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    min_age: Duration,
) -> Result<usize> {
    let objects: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|source| Error::ObjectStore {
            op: "list",
            path: prefix.to_string(),
            source: Box::new(source),
        })?;
    let now = chrono::Utc::now();
    let mut deleted = 0;
    for meta in objects {
        if (now - meta.last_modified).to_std().unwrap_or_default() < min_age {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(source) => {
                return Err(Error::ObjectStore {
                    op: "delete",
                    path: meta.location.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
    Ok(deleted)
}

/// The maintenance loop: every `gc_interval`, expire, check compactions and
/// collect garbage; every tenth round, scan for orphans. Stops when the
/// engine is dropped.
async fn run_maintenance(engine: std::sync::Weak<Engine>) {
    let interval = match engine.upgrade() {
        Some(e) => e.ctx.config.gc_interval.max(Duration::from_millis(100)),
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut round = 0u64;
    loop {
        ticker.tick().await;
        round += 1;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if let Err(e) = engine
            .maintain(round.is_multiple_of(ORPHAN_SCAN_EVERY))
            .await
        {
            tracing::warn!(error = %e, "maintenance round failed; retrying next round");
        }
    }
}
