//! The engine: the catalog, the shards and their tables.

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use strata_sst::{layout, ShardId};
use strata_wal::{Epoch, Wal};

use crate::{
    catalog::{Catalog, TableEntry},
    context::{EngineConfig, EngineContext},
    options::TableOptions,
    schema::TableSchema,
    shard::Shard,
    table::Table,
    Error, Result,
};

/// The shard every table lives on in standalone mode.
pub const STANDALONE_SHARD: ShardId = ShardId(0);

/// The writer epoch of standalone mode, where there is only ever one writer.
pub const STANDALONE_EPOCH: Epoch = Epoch(1);

/// A standalone storage engine: one catalog, one shard.
#[derive(Debug)]
pub struct Engine {
    ctx: Arc<EngineContext>,
    catalog: Catalog,
    shard: Arc<Shard>,
    ddl_lock: tokio::sync::Mutex<()>,
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
        let store_url = ObjectStoreUrl::parse("strata://store")
            .map_err(|e| Error::Internal(format!("object store url: {e}")))?;
        let ctx = Arc::new(EngineContext {
            flush_permits: tokio::sync::Semaphore::new(config.max_concurrent_flushes.max(1)),
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
        Ok(Arc::new(Self {
            ctx,
            catalog,
            shard,
            ddl_lock: tokio::sync::Mutex::new(()),
        }))
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
            let files: Result<Vec<_>, _> = store.list(Some(&dir)).try_collect().await;
            match files {
                Ok(files) => {
                    for f in files {
                        if let Err(e) = store.delete(&f.location).await {
                            tracing::warn!(path = %f.location, error = %e, "deleting a dropped table's file failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %dir, error = %e, "listing a dropped table's files failed")
                }
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

    /// Flushes one table's memtables to SSTs.
    pub async fn flush_table(&self, table: &Table) -> Result<()> {
        self.shard.flush_table(table).await
    }

    /// Flushes everything and stops the background tasks. Acknowledged writes
    /// are durable in the WAL whether or not this runs.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.shard.flush_all().await;
        self.shard.close().await;
        flushed
    }
}
