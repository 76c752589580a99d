//! A compute instance's copies of tables: it leads and follows no shard,
//! and reads a table's SSTs straight from the object store, through the
//! manifest the table's leader commits (never claimed, never written).
//! The rows not flushed yet come from the leader at query time
//! ([`Table::unflushed_since`] there), over the flushed offset of the
//! manifest read here: together, every acknowledged row once.
//!
//! A copy's manifest is read again when it is older than
//! `follower_sync_interval` (well under `gc_grace`, so the SSTs it lists
//! outlive the queries that read them) or when the leader answers
//! `FlushedBeyond`. One read at a time per table, each installed only if
//! it is newer than the installed one: a slow read finishing after a
//! faster, newer one must not put an older SST list under a newer flushed
//! offset (rows between the two would be in neither).

use std::{collections::HashMap, sync::Arc, time::Instant};

use strata_sst::{layout, TableId};

use super::Engine;
use crate::{catalog::TableEntry, ownership::Ownership, table::Table, Result};

#[derive(Clone)]
struct Copy {
    table: Arc<Table>,
    /// When the installed manifest's read began.
    read_at: Instant,
    /// The installed manifest state.
    state: Arc<crate::manifest::ManifestState>,
    /// Held while the manifest is read and installed.
    reading: Arc<tokio::sync::Mutex<()>>,
    /// Set by [`Engine::reread`]: the next read uses a manifest read after
    /// this instant, whatever its age.
    read_after: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Readers {
    tables: parking_lot::RwLock<HashMap<TableId, Copy>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("tables", &self.tables.read().len())
            .finish()
    }
}

/// Whether `entry` is a newer definition than the one `table` has (a
/// query planned on an older catalog never rolls a copy back).
fn newer(entry: &TableEntry, table: &Table) -> bool {
    let have = table.meta();
    (entry.schema.version, entry.revision) > (have.entry.schema.version, have.entry.revision)
}

impl Engine {
    /// This instance's read-only copy of `entry`'s table, its manifest read
    /// within `follower_sync_interval`, or, with `fresh`, read after this
    /// call began.
    pub async fn reader(&self, entry: &TableEntry, fresh: bool) -> Result<Arc<Table>> {
        let asked = Instant::now();
        let max_age = self.ctx.config.follower_sync_interval;
        let cached = self.readers.tables.read().get(&entry.id).cloned();
        let Some(copy) = cached else {
            let read_at = Instant::now();
            let owner = Arc::new(Ownership::new(entry.shard, 0));
            owner.relinquish();
            let table = Table::open_follower(entry.clone(), self.ctx.clone(), owner).await?;
            let state = Arc::new(table.manifest_state().await);
            let mut tables = self.readers.tables.write();
            // Copies of dropped tables go (ids are never reused).
            tables.retain(|id, _| self.catalog.table_by_id(*id).is_some());
            return Ok(tables
                .entry(entry.id)
                .or_insert(Copy {
                    table,
                    read_at,
                    state,
                    reading: Default::default(),
                    read_after: None,
                })
                .table
                .clone());
        };
        let good = |c: &Copy| {
            !newer(entry, &c.table)
                && c.read_after.is_none_or(|t| c.read_at >= t)
                && if fresh {
                    c.read_at >= asked
                } else {
                    c.read_at.elapsed() < max_age
                }
        };
        if good(&copy) {
            return Ok(copy.table);
        }
        let reading = copy.reading.clone();
        let _reading = reading.lock().await;
        // Another query may have read it meanwhile.
        let copy = self
            .readers
            .tables
            .read()
            .get(&entry.id)
            .cloned()
            .unwrap_or(copy);
        if good(&copy) {
            return Ok(copy.table);
        }
        let read_at = Instant::now();
        let dir = layout::manifest_dir(&self.ctx.config.cluster, entry.home(), entry.id);
        // Only the edits since the installed state, when they follow it.
        let state = crate::manifest::load_since(&self.ctx.store, &dir, &copy.state).await?;
        if newer(entry, &copy.table) {
            copy.table.install_meta(entry.clone());
        }
        let newer_state = state.last_edit >= copy.state.last_edit;
        if newer_state {
            copy.table.follow(&state, state.flushed_offset)?;
        }
        let mut tables = self.readers.tables.write();
        // The same copy (not one that replaced it meanwhile).
        if let Some(c) = tables
            .get_mut(&entry.id)
            .filter(|c| Arc::ptr_eq(&c.table, &copy.table))
        {
            c.read_at = read_at;
            if newer_state {
                c.state = Arc::new(state);
            }
        }
        Ok(copy.table)
    }

    /// The next read of table `id` through this instance's copy reads the
    /// manifest again: called after this instance forwarded a statement
    /// that rewrote the manifest (FLUSH, COMPACT), so that what its client
    /// reads next (EXPLAIN ANALYZE's SST counts among it) follows it.
    pub fn reread(&self, id: TableId) {
        if let Some(c) = self.readers.tables.write().get_mut(&id) {
            c.read_after = Some(Instant::now());
        }
    }
}
