//! One table: its schema and options, its current version (memtables and
//! SSTs), its manifest, and its write and flush paths.

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
    catalog::TableEntry, codec, context::EngineContext, flush, manifest::Manifest,
    memtable::Memtable, options::UpdateMode, schema::TableSchema, Error, Result,
};

/// What a query or a flush sees of a table at one moment. Holding an
/// `Arc<TableVersion>` pins it: its memtables and SST list do not change.
#[derive(Debug, Clone)]
pub struct TableVersion {
    /// Takes new writes.
    pub active: Arc<Memtable>,
    /// Frozen, waiting to be flushed, oldest first.
    pub frozen: Vec<Arc<Memtable>>,
    pub ssts: Arc<Vec<SstInfo>>,
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
    entry: TableEntry,
    storage_schema: SchemaRef,
    arrow_schema: SchemaRef,
    version: RwLock<Arc<TableVersion>>,
    pub(crate) manifest: tokio::sync::Mutex<Manifest>,
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    pub(crate) flush_scheduled: AtomicBool,
    dropped: AtomicBool,
    pub(crate) ctx: Arc<EngineContext>,
    writer: mpsc::Sender<WriteJob>,
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
        let storage_schema = entry.schema.storage_schema();
        let version = TableVersion {
            active: Arc::new(Memtable::new(storage_schema.clone())),
            frozen: Vec::new(),
            ssts: Arc::new(state.ssts.values().cloned().collect()),
            flushed_offset: state.flushed_offset,
        };
        Ok(Arc::new(Self {
            arrow_schema: entry.schema.arrow_schema(),
            storage_schema,
            entry,
            version: RwLock::new(Arc::new(version)),
            manifest: tokio::sync::Mutex::new(manifest),
            flush_lock: tokio::sync::Mutex::new(()),
            flush_scheduled: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            ctx,
            writer,
        }))
    }

    pub fn id(&self) -> TableId {
        self.entry.id
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    pub fn database(&self) -> &str {
        &self.entry.database
    }

    pub fn entry(&self) -> &TableEntry {
        &self.entry
    }

    pub fn schema(&self) -> &TableSchema {
        &self.entry.schema
    }

    /// The Arrow schema users see.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow_schema
    }

    /// The Arrow schema of memtables and SSTs (user columns plus `__seq`).
    pub fn storage_schema(&self) -> &SchemaRef {
        &self.storage_schema
    }

    pub fn update_mode(&self) -> UpdateMode {
        self.entry.options.update_mode
    }

    pub fn write_buffer_size(&self) -> u64 {
        self.entry
            .options
            .write_buffer_size
            .unwrap_or(self.ctx.config.default_write_buffer_size)
    }

    /// The current version, pinned.
    pub fn version(&self) -> Arc<TableVersion> {
        self.version.read().clone()
    }

    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Checks rows against the schema and returns their time range.
    fn validate(&self, batch: &RecordBatch) -> Result<TimeRange> {
        let invalid = |reason: String| Error::InvalidWrite {
            table: self.entry.name.clone(),
            reason,
        };
        let schema = batch.schema();
        if schema.fields().len() != self.arrow_schema.fields().len() {
            return Err(invalid(format!(
                "expected {} columns, got {}",
                self.arrow_schema.fields().len(),
                schema.fields().len()
            )));
        }
        for ((got, want), col) in schema
            .fields()
            .iter()
            .zip(self.arrow_schema.fields())
            .zip(&self.entry.schema.columns)
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
        for (i, col) in self.entry.schema.columns.iter().enumerate() {
            if !col.nullable && batch.column(i).null_count() > 0 {
                return Err(invalid(format!("column {} cannot be null", col.name)));
            }
        }
        let ts = batch
            .column(self.entry.schema.timestamp_index)
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
                name: self.entry.name.clone(),
            });
        }
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let time_range = self.validate(&batch)?;
        let payload = codec::encode_write(self.entry.id, self.entry.schema.version, &batch)?;
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
    pub(crate) fn apply(
        &self,
        batch: &RecordBatch,
        offset: u64,
        time_range: TimeRange,
    ) -> Result<usize> {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_value(offset, rows)));
        let with_seq =
            RecordBatch::try_new(self.storage_schema.clone(), columns).map_err(|source| {
                Error::Arrow {
                    op: "adding sequence numbers",
                    source: Box::new(source),
                }
            })?;
        let version = self.version.read();
        version.active.insert(with_seq, offset, time_range)?;
        Ok(rows)
    }

    /// Applies a replayed WAL record whose batch may come from an older
    /// schema version.
    pub(crate) fn apply_replayed(&self, batch: RecordBatch, offset: u64) -> Result<()> {
        if offset < self.version.read().flushed_offset {
            return Ok(());
        }
        let time_range = self.validate(&batch)?;
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
        next.active = Arc::new(Memtable::new(self.storage_schema.clone()));
        *guard = Arc::new(next);
        true
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
        all.extend(ssts);
        next.ssts = Arc::new(all);
        next.flushed_offset = next.flushed_offset.max(flushed_offset);
        *guard = Arc::new(next);
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

    /// The primary key column indices, within the storage schema.
    pub fn primary_key(&self) -> &[usize] {
        &self.entry.schema.primary_key
    }
}
