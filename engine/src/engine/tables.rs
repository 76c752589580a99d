//! The catalog side of the engine: meta's catalog installed in cluster
//! mode, DDL, and finding tables.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use object_store::ObjectStoreExt;
use strata_sst::{layout, TableId};

use super::{maintenance::delete_prefix, AlterTable, Engine, Located, STANDALONE_SHARD};
use crate::{
    catalog::TableEntry, options::TableOptions, schema::TableSchema, shard::Shard, table::Table,
    Error, Result,
};

impl Engine {
    /// Replaces the catalog with meta's, then opens the tables new on open
    /// shards, applies changed definitions and closes dropped tables.
    ///
    /// A table created after meta read this catalog (its id above the
    /// snapshot's last id), and announced here meanwhile, is kept: the
    /// snapshot is older than it, not a sign it was dropped (dropping it
    /// would throw away the rows written to it since).
    pub async fn install_catalog(
        &self,
        databases: Vec<String>,
        mut tables: Vec<TableEntry>,
    ) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        let last = self.note_snapshot(&tables);
        for newer in self.catalog.all_tables() {
            if newer.id.0 > last && !tables.iter().any(|t| t.id == newer.id) {
                tables.push(newer);
            }
        }
        let wanted: BTreeMap<TableId, TableEntry> =
            tables.iter().map(|t| (t.id, t.clone())).collect();
        self.catalog.install(databases, tables);
        for shard in self.shards() {
            for table in shard.tables() {
                match wanted.get(&table.id()) {
                    None => {
                        shard.remove_table(table.id());
                    }
                    Some(e) if e.shard != shard.id() => remove_moved(&shard, &table),
                    Some(_) => {}
                }
            }
            for entry in wanted.values().filter(|e| e.shard == shard.id()) {
                self.apply_entry(&shard, entry.clone()).await?;
            }
        }
        for follower in self.followers() {
            for table in follower.tables() {
                if wanted
                    .get(&table.id())
                    .is_none_or(|e| e.shard != follower.id())
                {
                    follower.remove_table(table.id());
                }
            }
            for entry in wanted.values().filter(|e| e.shard == follower.id()) {
                follower.apply_entry(entry.clone()).await?;
            }
        }
        Ok(())
    }

    /// Installs one table's record from meta (created or altered), opening
    /// it when its shard is open here.
    pub async fn install_table(&self, entry: TableEntry) -> Result<()> {
        let _guard = self.ddl_lock.lock().await;
        if self.dropped_by_snapshot(entry.id) {
            // A late announcement of a table meta's catalog already shows
            // dropped.
            return Ok(());
        }
        self.catalog.install_table(entry.clone());
        // Moved to another shard (a split or a merge).
        for shard in self.shards() {
            if shard.id() != entry.shard {
                if let Some(table) = shard.table(entry.id) {
                    remove_moved(&shard, &table);
                }
            }
        }
        for follower in self.followers() {
            if follower.id() != entry.shard {
                follower.remove_table(entry.id);
            }
        }
        if let Some(follower) = self.follower(entry.shard) {
            follower.apply_entry(entry.clone()).await?;
        }
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
        for follower in self.followers() {
            follower.remove_table(id);
        }
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

    pub(super) async fn apply_entry(&self, shard: &Arc<Shard>, entry: TableEntry) -> Result<()> {
        match shard.table(entry.id) {
            // Handed away by this process, and the catalog still (or again)
            // places it here: opened anew when it was handed back (a
            // hand-back this instance's catalog saw only the end of), which
            // claims it and replaces the handed-over one; left as it is
            // while its manifest says another shard's.
            Some(table) if table.is_handed_over() => {
                self.add_claimed(shard, entry).await?;
            }
            Some(table) if table.meta().entry != entry => {
                table.install_meta(entry);
            }
            Some(_) => {}
            None => self.add_claimed(shard, entry).await?,
        }
        Ok(())
    }

    /// Opens a table on `shard` (claiming it if it was handed there).
    async fn add_claimed(&self, shard: &Arc<Shard>, entry: TableEntry) -> Result<()> {
        match shard.add_table(entry).await {
            Ok(_) => Ok(()),
            // Another shard's, by its manifest: the catalog and the
            // manifest disagree until a handover finishes (meta moves the
            // table in its catalog only once it is handed over, so this is
            // a stale catalog): not opened here, and the rest of the
            // catalog is installed.
            Err(e @ Error::TableMoved { .. }) => {
                tracing::warn!(shard = %shard.id(), error = %e, "a table the catalog places here is another shard's; not opened");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hands `tables`, all on shard `from` open here, to shard `to`: the
    /// first step of a split or a merge (see [`Shard::hand_over`]). Meta
    /// then moves them to `to` in its catalog, and `to`'s leader claims
    /// them.
    pub async fn hand_over_tables(
        &self,
        from: strata_sst::ShardId,
        tables: &[TableId],
        to: strata_sst::ShardId,
    ) -> Result<()> {
        let shard = self
            .shard(from)
            .ok_or(Error::ShardNotOpen { shard: from })?;
        let mut entries = Vec::with_capacity(tables.len());
        for id in tables {
            let entry = self
                .catalog
                .table_by_id(*id)
                .ok_or_else(|| Error::TableNotFound {
                    name: id.to_string(),
                })?;
            if entry.partition.is_some() {
                return Err(Error::Unsupported(format!(
                    "{} is partitioned: its partitions move, not the table",
                    entry.name
                )));
            }
            if entry.shard != from && entry.shard != to {
                return Err(Error::NotServedHere {
                    table: entry.name,
                    shard: from,
                });
            }
            entries.push(entry);
        }
        shard
            .hand_over(&entries, to, self.ctx.config.handover_drain_timeout)
            .await
    }

    fn delete_table_files(&self, entry: &TableEntry) {
        let store = self.ctx.store.clone();
        let dir = layout::table_dir(&self.ctx.config.cluster, entry.home(), entry.id);
        tokio::spawn(async move {
            if let Err(e) = delete_prefix(&store, &dir, Duration::ZERO).await {
                tracing::warn!(dir = %dir, error = %e, "deleting a dropped table's files failed; the orphan scan will retry");
            }
        });
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
                meta.create_table(database, name, schema, options, None, if_not_exists)
                    .await?
                    .and_then(|created| created.into_iter().next())
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

    /// Creates a partitioned table: `spec.count` partitions, each an
    /// ordinary table (see [`crate::partition`]); in cluster mode meta
    /// spreads them over the shards. Returns `None` when it existed and
    /// `if_not_exists`.
    pub async fn create_partitioned_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        spec: crate::partition::PartitionSpec,
        if_not_exists: bool,
    ) -> Result<Option<TableEntry>> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        let (entry, parts) = match &self.cluster {
            Some(meta) => {
                spec.validate(&schema, &options)?;
                if name.is_empty() {
                    return Err(Error::InvalidSchema("table name must not be empty".into()));
                }
                let Some(mut created) = meta
                    .create_table(database, name, schema, options, Some(&spec), if_not_exists)
                    .await?
                else {
                    return Ok(None);
                };
                let entry = created.remove(0);
                if entry.partition.as_ref() != Some(&spec) || created.len() != spec.count as usize {
                    return Err(Error::Catalog(format!(
                        "meta created table {name} with {} partitions, not as asked",
                        created.len()
                    )));
                }
                (entry, created)
            }
            None => {
                let Some(entry) = self
                    .catalog
                    .create_partitioned_table(database, name, schema, options, spec, if_not_exists)
                    .await?
                else {
                    return Ok(None);
                };
                let parts = self.catalog.partitions(entry.id);
                (entry, parts)
            }
        };
        self.catalog.install_table(entry.clone());
        for part in parts {
            self.catalog.install_table(part.clone());
            if let Some(shard) = self.shard(part.shard) {
                self.apply_entry(&shard, part).await?;
            }
        }
        tracing::info!(database, table = name, id = %entry.id, "created partitioned table");
        Ok(Some(entry))
    }

    /// The partitions of a partitioned table, in partition order (none for
    /// another table).
    pub fn partitions(&self, parent: &TableEntry) -> Vec<TableEntry> {
        if parent.partition.is_none() {
            return Vec::new();
        }
        self.catalog.partitions(parent.id)
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
        if current.partition_of.is_some() {
            return Err(Error::Unsupported(format!(
                "{name} is a partition: alter its partitioned table"
            )));
        }
        // A partitioned table and its partitions change together, in one
        // catalog version (one meta transaction in cluster mode).
        let entries = match &self.cluster {
            Some(meta) => meta.alter_table(&current, &apply(&current)?).await?,
            None => {
                let mut ids: Vec<TableId> =
                    self.partitions(&current).iter().map(|p| p.id).collect();
                ids.push(current.id);
                self.catalog.update_tables(&ids, apply).await?
            }
        };
        for entry in entries {
            self.catalog.install_table(entry.clone());
            if let Some(shard) = self.shard(entry.shard) {
                self.apply_entry(&shard, entry).await?;
            }
        }
        tracing::info!(database, table = name, ?change, "altered table");
        Ok(())
    }

    /// Drops a table and, in the background, deletes its files. Returns false
    /// when it did not exist and `if_exists`.
    pub async fn drop_table(&self, database: &str, name: &str, if_exists: bool) -> Result<bool> {
        let _guard = self.ddl_lock.lock().await;
        self.check_owner().await?;
        let parts = match self.catalog.table(database, name) {
            // (A partition whose table is gone, after meta was rebuilt
            // from an empty etcd, can be dropped.)
            Some(e)
                if e.partition_of
                    .is_some_and(|p| self.catalog.table_by_id(p.parent).is_some()) =>
            {
                return Err(Error::Unsupported(format!(
                    "{name} is a partition: drop its partitioned table"
                )))
            }
            Some(e) => self.partitions(&e),
            None => Vec::new(),
        };
        let (entry, parts) = match &self.cluster {
            Some(meta) => {
                let mut dropped = meta.drop_table(database, name, if_exists).await?;
                if dropped.is_empty() {
                    return Ok(false);
                }
                let entry = dropped.remove(0);
                (entry, dropped)
            }
            None => match self.catalog.drop_table(database, name, if_exists).await? {
                Some(entry) => (entry, parts),
                None => return Ok(false),
            },
        };
        for entry in parts.iter().chain(std::iter::once(&entry)) {
            self.catalog.remove_table(entry.id);
            if let Some(shard) = self.shard(entry.shard) {
                shard.remove_table(entry.id);
                self.delete_table_files(entry);
            }
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
        if entry.partition.is_some() {
            return Ok(Located::Partitioned(Box::new(entry)));
        }
        match self.shard(entry.shard) {
            Some(shard) => match shard.table(entry.id) {
                // Handed to another shard; the catalog here moves it there
                // shortly.
                Some(t) if t.is_handed_over() => Err(Error::TableMoving {
                    table: name.to_string(),
                }),
                Some(t) => Ok(Located::Local(t)),
                // Its shard is open here but the table is still being
                // opened (a CREATE TABLE in progress, or a table handed to
                // the shard being claimed): there shortly.
                None => Err(Error::TableMoving {
                    table: name.to_string(),
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
            Located::Partitioned(_) => Err(Error::Unsupported(format!(
                "{name} is partitioned: this operation applies to one partition at a time"
            ))),
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
        let mut all: Vec<Arc<Table>> = self
            .shards()
            .iter()
            .flat_map(|s| s.tables())
            .filter(|t| !t.is_handed_over())
            .collect();
        all.sort_by(|a, b| (a.database(), a.name()).cmp(&(b.database(), b.name())));
        all
    }

    /// The shard a table is on.
    pub(super) fn shard_of(&self, table: &Table) -> Result<Arc<Shard>> {
        let id = table.meta().entry.shard;
        self.shard(id).ok_or(Error::ShardNotOpen { shard: id })
    }
}

/// Closes a table that moved to another shard. Only a table handed over
/// by this process is closed (its rows are all in SSTs); one still served
/// here stays open and is logged: closing it would drop the rows in its
/// memtables, and this shard's replay skips the table's records from then.
fn remove_moved(shard: &Shard, table: &Table) {
    if table.is_handed_over() {
        shard.remove_table(table.id());
        tracing::info!(shard = %shard.id(), table = %table.name(), "closed a table handed to another shard");
    } else {
        tracing::error!(shard = %shard.id(), table = %table.name(),
            "the catalog moved a table this shard did not hand over; keeping it open");
    }
}
