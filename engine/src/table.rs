//! One table: its definition, its current version (memtables and SSTs), its
//! manifest, and its write and flush paths.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use arrow::{
    array::{Array, ArrayRef, AsArray, UInt64Array},
    compute::{max, min},
    datatypes::{SchemaRef, TimestampMillisecondType},
    record_batch::RecordBatch,
};
use parking_lot::RwLock;
use strata_sst::{layout, SstInfo, TableId, TimeRange};
use tokio::sync::{mpsc, oneshot};

use crate::{
    catalog::TableEntry,
    codec,
    context::EngineContext,
    flush,
    gc::SstHandle,
    last_values::LastValues,
    manifest::Manifest,
    memtable::Memtable,
    options::{TableOptions, UpdateMode},
    schema::{adapt_batch, TableSchema},
    Error, Result,
};

/// A table's definition at one schema version: the catalog entry and the
/// Arrow schemas derived from it.
#[derive(Debug)]
pub struct TableMeta {
    pub entry: TableEntry,
    /// The schema users see.
    pub arrow_schema: SchemaRef,
    /// The schema of memtables and SSTs: user columns plus `__seq`.
    pub storage_schema: SchemaRef,
}

impl TableMeta {
    pub fn new(entry: TableEntry) -> Arc<Self> {
        Arc::new(Self {
            arrow_schema: entry.schema.arrow_schema(),
            storage_schema: entry.schema.storage_schema(),
            entry,
        })
    }

    pub fn schema(&self) -> &TableSchema {
        &self.entry.schema
    }

    pub fn options(&self) -> &TableOptions {
        &self.entry.options
    }
}

/// What a query or a flush sees of a table at one moment. Holding an
/// `Arc<TableVersion>` pins it: its definition, memtables and SSTs do not
/// change, and the SST files it lists are not deleted (see [`crate::gc`]).
#[derive(Debug, Clone)]
pub struct TableVersion {
    pub meta: Arc<TableMeta>,
    /// Takes new writes.
    pub active: Arc<Memtable>,
    /// Frozen, waiting to be flushed, oldest first.
    pub frozen: Vec<Arc<Memtable>>,
    pub ssts: Arc<Vec<Arc<SstHandle>>>,
    /// Every WAL record of this table below this offset is in `ssts`.
    pub flushed_offset: u64,
}

impl TableVersion {
    /// All memtables, oldest first.
    pub fn memtables(&self) -> impl Iterator<Item = &Arc<Memtable>> {
        self.frozen.iter().chain(std::iter::once(&self.active))
    }

    /// The smallest WAL offset still held only in memory.
    pub fn min_unflushed_offset(&self) -> Option<u64> {
        self.memtables().filter_map(|m| m.min_offset()).min()
    }

    /// Bytes held by all memtables.
    pub fn memtable_bytes(&self) -> usize {
        self.memtables().map(|m| m.bytes()).sum()
    }
}

/// A write on its way to the shard's WAL writer.
pub(crate) struct WriteJob {
    pub table: Arc<Table>,
    pub payload: bytes::Bytes,
    pub batch: RecordBatch,
    pub time_range: TimeRange,
    pub reply: oneshot::Sender<Result<usize>>,
}

/// A table of the engine.
#[derive(Debug)]
pub struct Table {
    id: TableId,
    name: String,
    database: String,
    version: RwLock<Arc<TableVersion>>,
    pub(crate) manifest: tokio::sync::Mutex<Manifest>,
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    pub(crate) flush_scheduled: AtomicBool,
    pub(crate) compaction_scheduled: AtomicBool,
    /// Serialises changes of the SST set other than flushes: compaction and
    /// TTL expiry.
    pub(crate) maintenance: tokio::sync::Mutex<()>,
    dropped: AtomicBool,
    pub(crate) ctx: Arc<EngineContext>,
    writer: mpsc::Sender<WriteJob>,
    /// The newest row of every series.
    last_values: LastValues,
}

impl Table {
    pub(crate) async fn open(
        entry: TableEntry,
        ctx: Arc<EngineContext>,
        writer: mpsc::Sender<WriteJob>,
    ) -> Result<Arc<Self>> {
        let dir = layout::manifest_dir(&ctx.config.cluster, entry.shard, entry.id);
        let manifest = Manifest::open(ctx.store.clone(), dir, entry.id).await?;
        let state = manifest.state();
        let meta = TableMeta::new(entry);
        // With no SSTs, every row the table will hold is folded as it is
        // applied (WAL replay included).
        let last_values = LastValues::new(
            &meta,
            ctx.config.last_value_cache_max_series,
            state.ssts.is_empty(),
        );
        let version = TableVersion {
            active: Arc::new(Memtable::new(meta.clone())),
            frozen: Vec::new(),
            ssts: Arc::new(state.ssts.values().cloned().map(SstHandle::new).collect()),
            flushed_offset: state.flushed_offset,
            meta: meta.clone(),
        };
        Ok(Arc::new(Self {
            id: meta.entry.id,
            name: meta.entry.name.clone(),
            database: meta.entry.database.clone(),
            version: RwLock::new(Arc::new(version)),
            manifest: tokio::sync::Mutex::new(manifest),
            flush_lock: tokio::sync::Mutex::new(()),
            flush_scheduled: AtomicBool::new(false),
            compaction_scheduled: AtomicBool::new(false),
            maintenance: tokio::sync::Mutex::new(()),
            dropped: AtomicBool::new(false),
            ctx,
            writer,
            last_values,
        }))
    }

    pub fn id(&self) -> TableId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The current definition.
    pub fn meta(&self) -> Arc<TableMeta> {
        self.version.read().meta.clone()
    }

    /// The Arrow schema users see, now.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.meta().arrow_schema.clone()
    }

    pub fn update_mode(&self) -> UpdateMode {
        self.meta().entry.options.update_mode
    }

    pub fn write_buffer_size(&self) -> u64 {
        self.meta()
            .entry
            .options
            .write_buffer_size
            .unwrap_or(self.ctx.config.default_write_buffer_size)
    }

    /// The current version, pinned.
    pub fn version(&self) -> Arc<TableVersion> {
        self.version.read().clone()
    }

    /// The last-value cache.
    pub fn last_values(&self) -> &LastValues {
        &self.last_values
    }

    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Checks rows against `meta`'s schema and returns their time range.
    fn validate(meta: &TableMeta, batch: &RecordBatch) -> Result<TimeRange> {
        let invalid = |reason: String| Error::InvalidWrite {
            table: meta.entry.name.clone(),
            reason,
        };
        let schema = batch.schema();
        let expected = &meta.arrow_schema;
        if schema.fields().len() != expected.fields().len() {
            return Err(invalid(format!(
                "expected {} columns, got {}",
                expected.fields().len(),
                schema.fields().len()
            )));
        }
        for ((got, want), col) in schema
            .fields()
            .iter()
            .zip(expected.fields())
            .zip(&meta.entry.schema.columns)
        {
            if got.name() != want.name() || got.data_type() != want.data_type() {
                return Err(invalid(format!(
                    "column {} expects {}, got {} {}",
                    want.name(),
                    col.column_type,
                    got.name(),
                    got.data_type()
                )));
            }
        }
        for (i, col) in meta.entry.schema.columns.iter().enumerate() {
            if !col.nullable && batch.column(i).null_count() > 0 {
                return Err(invalid(format!("column {} cannot be null", col.name)));
            }
        }
        let ts = batch
            .column(meta.entry.schema.timestamp_index)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| invalid("timestamp column has the wrong type".into()))?;
        match (min(ts), max(ts)) {
            (Some(lo), Some(hi)) => Ok(TimeRange::new(lo, hi.saturating_add(1))),
            _ => Ok(TimeRange::new(0, 0)),
        }
    }

    /// Writes rows (in [`Self::arrow_schema`]). Returns once they are durable
    /// in the WAL and visible to queries.
    pub async fn write(self: &Arc<Self>, batch: RecordBatch) -> Result<usize> {
        if self.is_dropped() {
            return Err(Error::TableNotFound {
                name: self.name.clone(),
            });
        }
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let meta = self.meta();
        let time_range = Self::validate(&meta, &batch)?;
        self.ctx.write_buffer.admit(self.name()).await?;
        let payload = codec::encode_write(self.id, meta.entry.schema.version, &batch)?;
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteJob {
                table: self.clone(),
                payload,
                batch,
                time_range,
                reply,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Applies rows that the WAL holds at `offset` to the active memtable.
    /// Rows written under an older schema are adapted to the current one.
    pub(crate) fn apply(
        &self,
        batch: &RecordBatch,
        offset: u64,
        time_range: TimeRange,
    ) -> Result<usize> {
        let rows = batch.num_rows();
        let version = self.version.read();
        let target = &version.active.meta().arrow_schema;
        let batch = if batch.schema().fields() == target.fields() {
            batch.clone()
        } else {
            adapt_batch(batch, target)?
        };
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_value(offset, rows)));
        let with_seq =
            RecordBatch::try_new(version.active.schema().clone(), columns).map_err(|source| {
                Error::Arrow {
                    op: "adding sequence numbers",
                    source: Box::new(source),
                }
            })?;
        let before = version.active.bytes();
        version.active.insert(with_seq, offset, time_range)?;
        // Sequence 0 is for rows read back by a seeding scan.
        self.last_values
            .fold(version.active.meta(), &batch, offset + 1);
        self.ctx
            .write_buffer
            .add(version.active.bytes().saturating_sub(before));
        Ok(rows)
    }

    /// Applies a replayed WAL record whose batch may come from an older
    /// schema version.
    pub(crate) fn apply_replayed(&self, batch: RecordBatch, offset: u64) -> Result<()> {
        let meta = {
            let version = self.version.read();
            if offset < version.flushed_offset {
                return Ok(());
            }
            version.meta.clone()
        };
        let batch = adapt_batch(&batch, &meta.arrow_schema)?;
        let time_range = Self::validate(&meta, &batch)?;
        self.apply(&batch, offset, time_range)?;
        Ok(())
    }

    /// Moves the active memtable to the frozen list. Returns false when it
    /// was empty.
    pub(crate) fn freeze(&self) -> bool {
        let mut guard = self.version.write();
        if guard.active.is_empty() {
            return false;
        }
        let mut next = (**guard).clone();
        next.frozen.push(next.active.clone());
        next.active = Arc::new(Memtable::new(next.meta.clone()));
        *guard = Arc::new(next);
        true
    }

    /// Installs a new definition. A schema change freezes the active
    /// memtable, so that every memtable holds rows of one schema.
    pub(crate) fn install_meta(&self, entry: TableEntry) {
        let meta = TableMeta::new(entry);
        let mut guard = self.version.write();
        let mut next = (**guard).clone();
        if next.meta.entry.schema != meta.entry.schema {
            if !next.active.is_empty() {
                next.frozen.push(next.active.clone());
            }
            next.active = Arc::new(Memtable::new(meta.clone()));
        }
        next.meta = meta;
        *guard = Arc::new(next);
    }

    /// Publishes the result of flushing `memtable`: adds `ssts`, drops the
    /// memtable from the frozen list.
    pub(crate) fn install_flush(
        &self,
        memtable: &Arc<Memtable>,
        ssts: Vec<SstInfo>,
        flushed_offset: u64,
    ) {
        let mut guard = self.version.write();
        let mut next = (**guard).clone();
        next.frozen.retain(|m| !Arc::ptr_eq(m, memtable));
        let mut all = (*next.ssts).clone();
        all.extend(ssts.into_iter().map(SstHandle::new));
        next.ssts = Arc::new(all);
        next.flushed_offset = next.flushed_offset.max(flushed_offset);
        *guard = Arc::new(next);
        drop(guard);
        self.ctx.write_buffer.release(memtable.bytes());
    }

    /// Publishes a change of the SST set (compaction, TTL): removes `removed`
    /// and adds `added`. The removed files go to the garbage collector, which
    /// deletes them once no pinned version lists them.
    pub(crate) fn install_sst_change(&self, removed: &[strata_sst::SstId], added: Vec<SstInfo>) {
        let mut guard = self.version.write();
        let mut next = (**guard).clone();
        let mut all: Vec<Arc<SstHandle>> = Vec::with_capacity(next.ssts.len());
        for h in next.ssts.iter() {
            if removed.contains(&h.info.id) {
                self.ctx.gc.retire(h);
            } else {
                all.push(h.clone());
            }
        }
        all.extend(added.into_iter().map(SstHandle::new));
        next.ssts = Arc::new(all);
        *guard = Arc::new(next);
    }

    /// Removes SSTs whose rows have all expired under the table's TTL.
    /// Returns how many were removed.
    pub async fn expire(&self) -> Result<usize> {
        let Some(cutoff) = crate::provider::ttl_cutoff(self.meta().options().ttl) else {
            return Ok(0);
        };
        let _maintenance = self.maintenance.lock().await;
        let expired: Vec<strata_sst::SstId> = self
            .version()
            .ssts
            .iter()
            .filter(|s| s.info.time_range.end <= cutoff)
            .map(|s| s.info.id)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.manifest
            .lock()
            .await
            .commit(crate::manifest::ManifestEdit {
                remove: expired.clone(),
                ..Default::default()
            })
            .await?;
        self.install_sst_change(&expired, Vec::new());
        crate::metrics::TTL_EXPIRED_FILES.inc_by(expired.len() as u64);
        tracing::info!(table = %self.name, files = expired.len(), "removed expired SSTs");
        Ok(expired.len())
    }

    /// Flushes every memtable to SSTs: freezes the active one, then writes the
    /// frozen ones oldest first. Returns once the manifest records them.
    pub async fn flush(&self) -> Result<()> {
        let _guard = self.flush_lock.lock().await;
        self.freeze();
        loop {
            let Some(memtable) = self.version().frozen.first().cloned() else {
                return Ok(());
            };
            flush::flush_memtable(self, &memtable).await?;
        }
    }
}
