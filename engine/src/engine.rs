//! The engine: the catalog, the shards and their tables, and the background
//! maintenance that keeps storage tidy (TTL expiry, compaction, garbage
//! collection).

use std::{collections::HashSet, sync::Arc, time::Duration};

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

/// A standalone storage engine: one catalog, one shard.
#[derive(Debug)]
pub struct Engine {
    ctx: Arc<EngineContext>,
    catalog: Catalog,
    shard: Arc<Shard>,
    ddl_lock: tokio::sync::Mutex<()>,
    maintenance: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Opens the engine: loads the catalog, opens every table and replays the
    /// WAL. `store` holds SSTs, manifests and the catalog; `wal` is the
    /// shard's WAL region.
    pub async fn open(
        config: EngineConfig,
        store: Arc<dyn ObjectStore>,
        wal: Arc<dyn Wal>,
    ) -> Result<Arc<Self>> {
        crate::metrics::register_all();
        let store_url = ObjectStoreUrl::parse("strata://store")
            .map_err(|e| Error::Internal(format!("object store url: {e}")))?;
        let metadata_cache = Arc::new(CountingMetadataCache::new(
            config.sst_metadata_cache_size as usize,
        ));
        let ctx = Arc::new(EngineContext {
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
        });
        let catalog = Catalog::open(ctx.store.clone(), &ctx.config.cluster).await?;
        let entries: Vec<TableEntry> = catalog
            .all_tables()
            .into_iter()
            .filter(|t| t.shard == STANDALONE_SHARD)
            .collect();
        let shard = Shard::open(
            STANDALONE_SHARD,
            wal,
            STANDALONE_EPOCH,
            entries,
            ctx.clone(),
        )
        .await?;
        let engine = Arc::new(Self {
            ctx,
            catalog,
            shard,
            ddl_lock: tokio::sync::Mutex::new(()),
            maintenance: parking_lot::Mutex::new(None),
        });
        let task = tokio::spawn(run_maintenance(Arc::downgrade(&engine)));
        *engine.maintenance.lock() = Some(task);
        Ok(engine)
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

    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// Bytes held by all memtables, and the soft and hard limits.
    pub fn write_buffer_usage(&self) -> (usize, usize, usize) {
        let wb = &self.ctx.write_buffer;
        (wb.used(), wb.soft_limit(), wb.hard_limit())
    }

    pub async fn create_database(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.catalog.create_database(name, if_not_exists).await
    }

    pub async fn drop_database(&self, name: &str, if_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.catalog.drop_database(name, if_exists).await
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
    ) -> Result<Option<Arc<Table>>> {
        let _guard = self.ddl_lock.lock().await;
        let Some(entry) = self
            .catalog
            .create_table(
                database,
                name,
                schema,
                options,
                STANDALONE_SHARD,
                if_not_exists,
            )
            .await?
        else {
            return Ok(None);
        };
        let table = self.shard.add_table(entry).await?;
        tracing::info!(database, table = name, id = %table.id(), "created table");
        Ok(Some(table))
    }

    /// Changes a table online: adds columns or modifies settings. The change
    /// is persisted before it applies; writes and queries continue.
    pub async fn alter_table(&self, database: &str, name: &str, change: AlterTable) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        let table = self.table(database, name)?;
        let entry = self
            .catalog
            .update_table(table.id(), |current| {
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
            })
            .await?;
        table.install_meta(entry);
        tracing::info!(database, table = name, ?change, "altered table");
        Ok(())
    }

    /// Drops a table and, in the background, deletes its files. Returns false
    /// when it did not exist and `if_exists`.
    pub async fn drop_table(&self, database: &str, name: &str, if_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        let Some(entry) = self.catalog.drop_table(database, name, if_exists).await? else {
            return Ok(false);
        };
        self.shard.remove_table(entry.id);
        let store = self.ctx.store.clone();
        let dir = layout::table_dir(&self.ctx.config.cluster, entry.shard, entry.id);
        tokio::spawn(async move {
            if let Err(e) = delete_prefix(&store, &dir, Duration::ZERO).await {
                tracing::warn!(dir = %dir, error = %e, "deleting a dropped table's files failed; the orphan scan will retry");
            }
        });
        tracing::info!(database, table = name, id = %entry.id, "dropped table");
        Ok(true)
    }

    /// Looks a table up by name.
    pub fn table(&self, database: &str, name: &str) -> Result<Arc<Table>> {
        if !self.catalog.database_exists(database) {
            return Err(Error::DatabaseNotFound {
                name: database.to_string(),
            });
        }
        self.catalog
            .table(database, name)
            .and_then(|e| self.shard.table(e.id))
            .ok_or_else(|| Error::TableNotFound {
                name: name.to_string(),
            })
    }

    /// The tables of a database, by name.
    pub fn tables(&self, database: &str) -> Vec<Arc<Table>> {
        self.catalog
            .tables(database)
            .into_iter()
            .filter_map(|e| self.shard.table(e.id))
            .collect()
    }

    /// Every table of every database.
    pub fn all_tables(&self) -> Vec<Arc<Table>> {
        let mut all = self.shard.tables();
        all.sort_by(|a, b| (a.database(), a.name()).cmp(&(b.database(), b.name())));
        all
    }

    /// Flushes one table's memtables to SSTs.
    pub async fn flush_table(&self, table: &Table) -> Result<()> {
        self.shard.flush_table(table).await
    }

    /// Compacts one table now: every segment with more than one SST is
    /// merged (within the compaction memory budget).
    pub async fn compact_table(&self, table: &Arc<Table>) -> Result<CompactionReport> {
        self.ctx.compactor.compact(table, true).await
    }

    /// Runs one round of maintenance now: TTL expiry, compaction checks,
    /// garbage collection and (when `orphans`) the orphan scan.
    pub async fn maintain(&self, orphans: bool) -> Result<()> {
        for table in self.shard.tables() {
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

    /// Deletes SST files no manifest references, and the files of dropped
    /// tables, once they are older than `orphan_min_age`.
    pub async fn remove_orphans(&self) -> Result<usize> {
        let cfg = &self.ctx.config;
        let mut deleted = 0;
        let live_tables: HashSet<TableId> = self.shard.tables().iter().map(|t| t.id()).collect();
        for table in self.shard.tables() {
            let dir = layout::sst_dir(&cfg.cluster, STANDALONE_SHARD, table.id());
            let live = || table.version().ssts.iter().map(|s| s.info.id).collect();
            deleted += self
                .ctx
                .gc
                .remove_orphans(&dir, live, cfg.orphan_min_age)
                .await?;
        }
        // Directories of tables the catalog no longer has.
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
        let flushed = self.shard.flush_all().await;
        self.shard.close().await;
        flushed
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
