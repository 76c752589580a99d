//! Background maintenance: flushes and compactions on demand, the periodic
//! round (manifest re-reads, TTL expiry, compaction checks, garbage
//! collection) and the orphan scan.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use strata_sst::{layout, TableId};

use super::{Engine, STANDALONE_SHARD};
use crate::{compaction::CompactionReport, table::Table, Error, Result};

/// How often, in maintenance rounds, orphan files are looked for.
const ORPHAN_SCAN_EVERY: u64 = 10;

impl Engine {
    /// Flushes one table's memtables to SSTs.
    pub async fn flush_table(&self, table: &Table) -> Result<()> {
        self.shard_of(table)?.flush_table(table).await
    }

    /// Compacts one table now: every segment with more than one SST is
    /// merged (within the compaction memory budget).
    pub async fn compact_table(&self, table: &Arc<Table>) -> Result<CompactionReport> {
        self.compactor.compact(table, true).await
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
            self.compactor.schedule(table.clone());
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
                if table.is_handed_over() {
                    continue;
                }
                let dir = layout::sst_dir(&cfg.cluster, table.meta().entry.home(), table.id());
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
}

/// Deletes every object under `prefix` older than `min_age`.
pub(super) async fn delete_prefix(
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
pub(super) async fn run_maintenance(engine: std::sync::Weak<Engine>) {
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
