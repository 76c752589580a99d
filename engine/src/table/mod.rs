//! One table: its definition, its current version (memtables and SSTs), its
//! manifest, and its write and flush paths.

use std::sync::{
    atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
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

mod flush;
mod load;

use crate::{
    catalog::TableEntry,
    codec,
    context::EngineContext,
    gc::SstHandle,
    last_values::LastValues,
    manifest::{Manifest, ManifestEdit, ManifestState},
    memtable::Memtable,
    options::UpdateMode,
    ownership::Ownership,
    schema::adapt_batch,
    Error, Result,
};

pub use crate::table_meta::TableMeta;
pub use load::{LoadCounters, TableLoad};

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
    /// Counts the job among its table's writes in flight until the writer
    /// is done with it (replied, or dropped it).
    pub _in_flight: InFlight,
}

/// One write of a table between its admission and its reply.
pub(crate) struct InFlight(Arc<Table>);

impl InFlight {
    fn new(table: &Arc<Table>) -> Self {
        table.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(table.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a table stands in a handover to another shard.
const SERVING: u8 = 0;
/// Writes are refused; reads are served (nothing new is written).
const MOVING: u8 = 1;
/// The handover edit was put, and may be committed even if the put
/// failed: writes stay refused until a retry settles it.
const COMMITTING: u8 = 2;
/// The handover is committed: another shard owns the table, and this
/// process serves it no more.
const HANDED_OVER: u8 = 3;

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
    /// The shard's owner: every commit of this table is under its epoch.
    pub(crate) owner: Arc<Ownership>,
    writer: mpsc::Sender<WriteJob>,
    /// The newest row of every series.
    last_values: LastValues,
    /// Write guards of SSTs referenced by an edit whose commit outcome is
    /// unknown: the orphan scan leaves them alone until the manifest is
    /// re-read.
    parked: parking_lot::Mutex<Vec<crate::gc::WriteGuard>>,
    /// A follower's table: read-only, and its memtables are not counted in
    /// the write buffer (their size follows the leader's flushes, which
    /// this instance's flushes cannot reduce).
    follower: bool,
    /// Writes and scans since the table was opened here.
    load: Arc<TableLoad>,
    /// Writes admitted and not yet answered by the shard's writer.
    in_flight: AtomicUsize,
    /// [`SERVING`], [`MOVING`], [`COMMITTING`] or [`HANDED_OVER`].
    handover: AtomicU8,
}

impl Table {
    pub(crate) async fn open(
        entry: TableEntry,
        ctx: Arc<EngineContext>,
        owner: Arc<Ownership>,
        writer: mpsc::Sender<WriteJob>,
        wal_end: u64,
    ) -> Result<Arc<Self>> {
        let dir = layout::manifest_dir(&ctx.config.cluster, entry.home(), entry.id);
        // Loading claims the manifest for this owner: from here on an older
        // owner can commit nothing to it. A table handed to this shard is
        // claimed at `wal_end` (the shard's WAL holds none of its rows).
        let manifest =
            Manifest::open(ctx.store.clone(), dir, entry.id, owner.clone(), wal_end).await?;
        // With no SSTs, every row the table will hold is folded as it is
        // applied (WAL replay included).
        let complete = manifest.state().ssts.is_empty();
        Ok(Self::from_manifest(
            entry, ctx, owner, writer, manifest, complete, false,
        ))
    }

    /// Opens a table read-only, for a follower of its shard: the manifest is
    /// read, never claimed, and `owner` (relinquished) refuses every commit;
    /// writes sent to it fail (nothing receives them).
    pub(crate) async fn open_follower(
        entry: TableEntry,
        ctx: Arc<EngineContext>,
        owner: Arc<Ownership>,
    ) -> Result<Arc<Self>> {
        debug_assert!(owner.is_over());
        let dir = layout::manifest_dir(&ctx.config.cluster, entry.home(), entry.id);
        let manifest =
            Manifest::open_read_only(ctx.store.clone(), dir, entry.id, owner.clone()).await?;
        if !manifest.state().is_on(owner.shard) {
            // Handed to this shard and not yet claimed by its leader: the
            // flushed offset is still the old shard's (a WAL offset that
            // means nothing here). Opened once the claim shows.
            return Err(Error::TableMoving { table: entry.name });
        }
        let (writer, _) = mpsc::channel(1);
        // The last-value cache is seeded by a scan at the first query: the
        // tail may skip rows the leader flushed before the follower read them.
        Ok(Self::from_manifest(
            entry, ctx, owner, writer, manifest, false, true,
        ))
    }

    /// A table whose SSTs and flushed offset are `manifest`'s.
    fn from_manifest(
        entry: TableEntry,
        ctx: Arc<EngineContext>,
        owner: Arc<Ownership>,
        writer: mpsc::Sender<WriteJob>,
        manifest: Manifest,
        complete: bool,
        follower: bool,
    ) -> Arc<Self> {
        let state = manifest.state();
        let meta = TableMeta::new(entry);
        let last_values = LastValues::new(&meta, ctx.config.last_value_cache_max_series, complete);
        let version = TableVersion {
            active: Arc::new(Memtable::new(meta.clone())),
            frozen: Vec::new(),
            ssts: Arc::new(state.ssts.values().cloned().map(SstHandle::new).collect()),
            flushed_offset: state.flushed_offset,
            meta: meta.clone(),
        };
        Arc::new(Self {
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
            owner,
            writer,
            last_values,
            parked: parking_lot::Mutex::new(Vec::new()),
            follower,
            load: Default::default(),
            in_flight: AtomicUsize::new(0),
            handover: AtomicU8::new(SERVING),
        })
    }

    /// Writes and scans of this table since it was opened here.
    pub fn load(&self) -> &Arc<TableLoad> {
        &self.load
    }

    /// A follower's table takes the leader's manifest `state` as it is now:
    /// its SST list, and its flushed offset, below which the memtables' rows
    /// are dropped (they are in the SSTs). Nothing is retired: the files
    /// are the leader's to delete. One version swap, so a query sees either
    /// the rows in memory or the SSTs holding them, never both or neither.
    /// `applied` is where the follower's tail stands: rows the leader
    /// flushed beyond it are skipped by the tail, never folded into the
    /// last-value cache, which is then re-seeded.
    pub(crate) fn follow(&self, state: &ManifestState, applied: u64) -> Result<()> {
        if !state.is_on(self.owner.shard) {
            // Claimed by another shard: its offsets are not this WAL's.
            return Err(Error::TableMoved {
                table: self.id,
                from: self.owner.shard,
                to: strata_sst::ShardId(state.shard.unwrap_or_default()),
            });
        }
        let mut guard = self.version.write();
        let same = guard.ssts.len() == state.ssts.len()
            && guard
                .ssts
                .iter()
                .all(|h| state.ssts.contains_key(&h.info.id))
            && guard.flushed_offset >= state.flushed_offset;
        if same {
            return Ok(());
        }
        let mut next = (**guard).clone();
        let mut all: Vec<Arc<SstHandle>> = Vec::with_capacity(state.ssts.len());
        for (id, info) in &state.ssts {
            match guard.ssts.iter().find(|h| h.info.id == *id) {
                Some(h) => all.push(h.clone()),
                None => all.push(SstHandle::new(info.clone())),
            }
        }
        next.ssts = Arc::new(all);
        let flushed = next.flushed_offset.max(state.flushed_offset);
        next.flushed_offset = flushed;
        let mut frozen = Vec::with_capacity(next.frozen.len());
        for m in &next.frozen {
            match trim(m, flushed)? {
                Trimmed::Same => frozen.push(m.clone()),
                Trimmed::Gone => {}
                Trimmed::Kept(k) => frozen.push(k),
            }
        }
        next.frozen = frozen;
        match trim(&next.active, flushed)? {
            Trimmed::Same => {}
            Trimmed::Gone => {
                next.active = Arc::new(Memtable::new(next.active.meta().clone()));
            }
            Trimmed::Kept(k) => next.active = k,
        }
        *guard = Arc::new(next);
        drop(guard);
        if flushed > applied {
            // Rows between the tail and the new flushed offset are never
            // applied here, so never folded: re-seed (after the swap, so
            // the seeding scan reads the SSTs holding them).
            self.last_values.invalidate();
        }
        Ok(())
    }

    /// A promoted follower's rows: this table (just opened by the new
    /// leader, its manifest claimed) takes over the memtables of the
    /// follower's table `from`, without the rows its manifest records as
    /// flushed. From here on their memory counts in the write buffer.
    pub(crate) fn adopt(&self, from: &Table) -> Result<()> {
        let theirs = from.version();
        let mut guard = self.version.write();
        let mut next = (**guard).clone();
        let flushed = next.flushed_offset;
        let mut kept: Vec<Arc<Memtable>> = Vec::new();
        for m in theirs.memtables() {
            match trim(m, flushed)? {
                Trimmed::Same => kept.push(m.clone()),
                Trimmed::Gone => {}
                Trimmed::Kept(k) => kept.push(k),
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        let added: usize = kept.iter().map(|m| m.bytes()).sum();
        // The newest takes writes when it has the current schema; the rest
        // wait for the next flush, oldest first.
        if kept
            .last()
            .is_some_and(|m| m.meta().entry.schema == next.meta.entry.schema)
        {
            next.active = kept.pop().unwrap_or_else(|| next.active.clone());
        }
        next.frozen = kept;
        *guard = Arc::new(next);
        drop(guard);
        self.ctx.write_buffer.add(added);
        // The rows it holds were never folded into this table's cache.
        self.last_values.invalidate();
        Ok(())
    }

    /// For a compute instance reading this table's SSTs through a manifest
    /// whose flushed offset is `from`: the rows of sequence `from` and
    /// above that are still in memory here, in the current storage schema.
    /// With the SSTs of that manifest (every row below `from`), they are
    /// every row this table has acknowledged, each once. Fails with
    /// [`Error::FlushedBeyond`] when this table has flushed past `from`:
    /// the rows between are in SSTs that manifest does not list. The
    /// caller checks ownership.
    pub fn unflushed_since(&self, from: u64) -> Result<(Arc<TableMeta>, Vec<RecordBatch>)> {
        let version = self.version();
        if version.flushed_offset > from {
            return Err(Error::FlushedBeyond {
                table: self.name.clone(),
                flushed: version.flushed_offset,
                asked: from,
            });
        }
        let storage = version.meta.storage_schema.clone();
        let mut rows = Vec::new();
        for m in version.memtables() {
            let batches = match trim(m, from)? {
                Trimmed::Same => m.snapshot(),
                Trimmed::Gone => continue,
                Trimmed::Kept(k) => k.snapshot(),
            };
            for b in batches {
                if b.num_rows() > 0 {
                    rows.push(adapt_batch(&b, &storage)?);
                }
            }
        }
        Ok((version.meta.clone(), rows))
    }

    /// The manifest's state as this table last loaded it.
    pub(crate) async fn manifest_state(&self) -> ManifestState {
        self.manifest.lock().await.state().clone()
    }

    pub fn id(&self) -> TableId {
        self.id
    }

    /// Whether this is a follower's read-only copy.
    pub fn is_follower(&self) -> bool {
        self.follower
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

    /// Refuses writes (and, once handed over, reads) of a table being
    /// handed to another shard: retryable, the table is served again, by
    /// its new shard, shortly.
    pub fn check_serving(&self) -> Result<()> {
        match self.handover.load(Ordering::SeqCst) {
            SERVING => Ok(()),
            _ => Err(Error::TableMoving {
                table: self.name.clone(),
            }),
        }
    }

    /// Whether the table was handed to another shard by this process.
    pub fn is_handed_over(&self) -> bool {
        self.handover.load(Ordering::SeqCst) == HANDED_OVER
    }

    /// Stops new writes and waits (up to `timeout`) until none admitted
    /// earlier is still on its way through the shard's writer.
    pub(crate) async fn stop_writes(&self, timeout: std::time::Duration) -> Result<()> {
        let _ = self
            .handover
            .compare_exchange(SERVING, MOVING, Ordering::SeqCst, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::TableMoving {
                    table: self.name.clone(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Takes writes again after a handover that did not happen: only when
    /// its edit was never put (one put with an unknown outcome may have
    /// committed it, and rows written after it would be lost).
    pub(crate) fn resume_writes(&self) {
        let _ = self
            .handover
            .compare_exchange(MOVING, SERVING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Flushes the table (its writes stopped) and commits its handover to
    /// shard `to`: from then on this process serves it no more.
    pub(crate) async fn hand_over(&self, to: strata_sst::ShardId) -> Result<()> {
        match self.handover.load(Ordering::SeqCst) {
            SERVING => {
                return Err(Error::Internal(format!(
                    "table {}: handed over with its writes running",
                    self.name
                )))
            }
            HANDED_OVER => return Ok(()),
            // A retry after a handover put that failed: the flush before
            // it was complete (no write came since), and the manifest may
            // already say the table is `to`'s (a flush would be refused).
            COMMITTING => {}
            _ => {
                self.flush().await?;
                if self.version().memtables().any(|m| !m.is_empty()) {
                    return Err(Error::Internal(format!(
                        "table {}: rows left in memory after the flush before its handover",
                        self.name
                    )));
                }
                crate::failpoint::pause("handover.before_commit").await;
            }
        }
        let mut manifest = self.manifest.lock().await;
        match self
            .handover
            .compare_exchange(MOVING, COMMITTING, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) | Err(COMMITTING) => {}
            Err(_) => {
                return Err(Error::Internal(format!(
                    "table {}: writes resumed during its handover",
                    self.name
                )))
            }
        }
        // Settles an earlier put with an unknown outcome first.
        manifest.hand_over(to).await?;
        self.handover.store(HANDED_OVER, Ordering::SeqCst);
        tracing::info!(table = %self.name, to = %to, "handed the table to another shard");
        Ok(())
    }

    /// After a commit refused with [`Error::TableMoved`]: another shard
    /// owns the table (this process missed its handover: it was paused, or
    /// its catalog is behind), so it serves the table no more.
    pub(crate) fn note_moved(&self, e: &Error) {
        if matches!(e, Error::TableMoved { .. })
            && self.handover.swap(HANDED_OVER, Ordering::SeqCst) != HANDED_OVER
        {
            tracing::warn!(table = %self.name, error = %e, "the table is another shard's now; no longer served here");
        }
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
        self.check_serving()?;
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
        // Counted before the mark is checked: a handover that set the mark
        // and then sees no write in flight knows none will reach the WAL.
        let in_flight = InFlight::new(self);
        self.check_serving()?;
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteJob {
                table: self.clone(),
                payload,
                batch,
                time_range,
                reply,
                _in_flight: in_flight,
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
        if !self.follower {
            self.ctx
                .write_buffer
                .add(version.active.bytes().saturating_sub(before));
        }
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
        let Some(cutoff) = crate::options::ttl_cutoff(self.meta().options().ttl) else {
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
        {
            let mut manifest = self.manifest.lock().await;
            let committed = manifest
                .commit(
                    ManifestEdit {
                        remove: expired.clone(),
                        ..Default::default()
                    },
                    |s| expired.iter().all(|id| s.ssts.contains_key(id)),
                )
                .await;
            if let Err(e) = committed {
                self.note_moved(&e);
                self.sync_with(manifest.state());
                return Err(e);
            }
            self.install_sst_change(&expired, Vec::new());
            self.sync_with(manifest.state());
        }
        crate::metrics::TTL_EXPIRED_FILES.inc_by(expired.len() as u64);
        tracing::info!(table = %self.name, files = expired.len(), "removed expired SSTs");
        Ok(expired.len())
    }

    /// Flushes every memtable to SSTs: freezes the active one, then writes the
    /// frozen ones oldest first. Returns once the manifest records them.
    pub async fn flush(&self) -> Result<()> {
        let _guard = self.flush_lock.lock().await;
        self.owner.check()?;
        self.freeze();
        loop {
            self.resync_if_stale().await?;
            let Some(memtable) = self.version().frozen.first().cloned() else {
                return Ok(());
            };
            if let Err(e) = flush::flush_memtable(self, &memtable).await {
                self.note_moved(&e);
                return Err(e);
            }
        }
    }

    /// After a commit whose outcome was unknown: re-reads the manifest and
    /// brings the version in line with it.
    pub(crate) async fn resync_if_stale(&self) -> Result<()> {
        let mut manifest = self.manifest.lock().await;
        if manifest.is_stale() {
            if let Err(e) = manifest.reload().await {
                self.note_moved(&e);
                return Err(e);
            }
            self.sync_with(manifest.state());
            // Settled: what the manifest lists is live, the rest orphans.
            self.parked.lock().clear();
        }
        Ok(())
    }

    /// Keeps write guards until the manifest is re-read (see `parked`).
    pub(crate) fn park_guards(&self, guards: Vec<crate::gc::WriteGuard>) {
        self.parked.lock().extend(guards);
    }

    /// Brings the version in line with the manifest's `state` (after a
    /// reload found changes this process did not make, or made without
    /// knowing: a commit with an unknown outcome): SSTs it no longer lists
    /// are retired, SSTs it lists are added, and frozen memtables whose rows
    /// it records as flushed are dropped.
    pub(crate) fn sync_with(&self, state: &ManifestState) {
        if self.owner.is_over() || !state.is_on(self.owner.shard) {
            // Fenced: the state is a newer owner's, and this process must
            // not retire (and so delete) files on its behalf. Closed here,
            // a follower's table, or a table another shard claimed: the
            // files are another writer's.
            return;
        }
        let mut guard = self.version.write();
        let same = guard.ssts.len() == state.ssts.len()
            && guard
                .ssts
                .iter()
                .all(|h| state.ssts.contains_key(&h.info.id))
            && guard.flushed_offset >= state.flushed_offset;
        if same {
            return;
        }
        let mut next = (**guard).clone();
        let mut all: Vec<Arc<SstHandle>> = Vec::with_capacity(state.ssts.len());
        for h in next.ssts.iter() {
            if state.ssts.contains_key(&h.info.id) {
                all.push(h.clone());
            } else {
                self.ctx.gc.retire(h);
            }
        }
        for (id, info) in &state.ssts {
            if !all.iter().any(|h| h.info.id == *id) {
                all.push(SstHandle::new(info.clone()));
            }
        }
        next.ssts = Arc::new(all);
        next.flushed_offset = next.flushed_offset.max(state.flushed_offset);
        let flushed = next.flushed_offset;
        let mut released = 0;
        next.frozen.retain(|m| {
            let done = m.max_offset().is_some_and(|max| max < flushed);
            if done {
                released += m.bytes();
            }
            !done
        });
        *guard = Arc::new(next);
        drop(guard);
        self.ctx.write_buffer.release(released);
        tracing::info!(table = %self.name, ssts = state.ssts.len(), flushed_offset = flushed,
            "brought the table in line with its manifest");
    }

    /// The ids of the SSTs the manifest on the store lists, read now (not
    /// from memory). Fences the owner when the manifest carries a newer
    /// epoch.
    pub(crate) async fn stored_live_ssts(
        &self,
    ) -> Result<std::collections::HashSet<strata_sst::SstId>> {
        let dir = layout::manifest_dir(&self.ctx.config.cluster, self.meta().entry.home(), self.id);
        let state = crate::manifest::load(&self.ctx.store, &dir, self.id).await?;
        let mine = self.owner.shard.0;
        match (state.shard, state.handed_to) {
            // Moved (or moving) to another shard: its epochs are not ours
            // to compare, and its files are its new owner's to collect.
            (Some(shard), _) if shard != mine => {
                return Err(Error::TableMoved {
                    table: self.id,
                    from: self.owner.shard,
                    to: strata_sst::ShardId(shard),
                })
            }
            (_, Some(to)) => {
                return Err(Error::TableMoved {
                    table: self.id,
                    from: self.owner.shard,
                    to: strata_sst::ShardId(to),
                })
            }
            _ => {}
        }
        if state.epoch > self.owner.epoch {
            self.owner.fence(state.epoch);
        }
        self.owner.check()?;
        Ok(state.ssts.keys().copied().collect())
    }
}

/// What is left of a memtable once rows below an offset are dropped.
enum Trimmed {
    Same,
    Gone,
    Kept(Arc<Memtable>),
}

fn trim(m: &Arc<Memtable>, from: u64) -> Result<Trimmed> {
    match (m.min_offset(), m.max_offset()) {
        (Some(lo), _) if lo >= from => Ok(Trimmed::Same),
        (None, _) => Ok(Trimmed::Same),
        (_, Some(hi)) if hi < from => Ok(Trimmed::Gone),
        _ => Ok(match m.retain_from(from)? {
            Some(k) => Trimmed::Kept(Arc::new(k)),
            None => Trimmed::Gone,
        }),
    }
}
