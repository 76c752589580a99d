//! A shard: a set of tables that share one WAL region and replay together.
//!
//! One writer task per shard performs group commit: it takes every write
//! waiting in its queue, appends them to the WAL in one call (one fsync or one
//! produce), applies them to the tables' memtables in offset order, and only
//! then acknowledges them. Because rows enter memtables in offset order, a
//! frozen memtable always holds every row of its table below its largest
//! offset, which is what makes "flushed offset = max offset + 1" safe.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::RwLock;
use strata_sst::{ShardId, TableId};
use strata_wal::{fence::EpochFence, Epoch, Wal, WalOffset};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    catalog::TableEntry,
    codec,
    context::EngineContext,
    metrics,
    ownership::Ownership,
    table::{Table, WriteJob},
    Error, Result,
};

/// Bytes of WAL payload read per call during replay.
const REPLAY_READ_BYTES: usize = 8 * 1024 * 1024;

/// The state shared by the shard handle and its background tasks.
#[derive(Debug)]
pub(crate) struct ShardInner {
    pub id: ShardId,
    pub wal: Arc<dyn Wal>,
    pub epoch: Epoch,
    pub tables: RwLock<HashMap<TableId, Arc<Table>>>,
    /// The offset after the last WAL record applied to memtables.
    pub applied: AtomicU64,
    /// This process's claim on the shard: fenced once the WAL or a
    /// manifest shows a newer owner, and the shard must then close.
    pub owner: Arc<Ownership>,
    pub ctx: Arc<EngineContext>,
}

/// A shard of the engine.
#[derive(Debug)]
pub struct Shard {
    inner: Arc<ShardInner>,
    sender: mpsc::Sender<WriteJob>,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    ticker: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Shard {
    /// Opens a shard: loads its tables' manifests, replays the WAL above
    /// their flushed offsets, and starts the writer.
    ///
    /// With `fence` (cluster mode, where leadership moves), a fence marker
    /// is appended under `epoch` before the replay, and the replay covers
    /// the whole retained WAL: the open fails with [`Error::EpochBehind`]
    /// when the WAL already holds a higher epoch, since records written
    /// under `epoch` would then be dropped by the next replay.
    pub(crate) async fn open(
        id: ShardId,
        wal: Arc<dyn Wal>,
        epoch: Epoch,
        entries: Vec<TableEntry>,
        ctx: Arc<EngineContext>,
        fence: bool,
    ) -> Result<Arc<Self>> {
        let (sender, receiver) = mpsc::channel(ctx.config.max_write_batch.max(16) * 4);
        let inner = Arc::new(ShardInner {
            id,
            wal,
            epoch,
            tables: RwLock::new(HashMap::new()),
            applied: AtomicU64::new(0),
            owner: Arc::new(Ownership::new(id, epoch.0)),
            ctx,
        });
        let opened = futures::future::try_join_all(
            entries
                .into_iter()
                .map(|e| Table::open(e, inner.ctx.clone(), inner.owner.clone(), sender.clone())),
        )
        .await
        .map_err(|e| match e {
            // A manifest carries a newer epoch than the one we were given
            // (meta lost its state): a higher epoch is needed.
            Error::ShardFenced { shard, epoch, by } => Error::EpochBehind {
                shard,
                epoch,
                highest: by,
            },
            e => e,
        })?;
        {
            let mut tables = inner.tables.write();
            for t in opened {
                tables.insert(t.id(), t);
            }
        }
        if fence {
            inner
                .wal
                .append(epoch, vec![codec::encode_fence(epoch.0)])
                .await
                .map_err(|source| Error::Wal {
                    op: "fence marker append",
                    source: Box::new(source),
                })?;
        }
        let highest = replay(&inner, fence).await?;
        if fence && highest > epoch {
            return Err(Error::EpochBehind {
                shard: id,
                epoch: epoch.0,
                highest: highest.0,
            });
        }
        inner
            .applied
            .store(inner.wal.next_offset().0, Ordering::Release);
        // Truncate what replay proved unneeded (e.g. everything, after a
        // clean flush before shutdown).
        if let Err(e) = truncate_wal(&inner).await {
            tracing::warn!(shard = %id, error = %e, "WAL truncation after replay failed");
        }

        let writer = tokio::spawn(run_writer(inner.clone(), receiver));
        let ticker = tokio::spawn(run_ticker(inner.clone()));
        Ok(Arc::new(Self {
            inner,
            sender,
            writer: parking_lot::Mutex::new(Some(writer)),
            ticker: parking_lot::Mutex::new(Some(ticker)),
        }))
    }

    pub fn id(&self) -> ShardId {
        self.inner.id
    }

    pub fn table(&self, id: TableId) -> Option<Arc<Table>> {
        self.inner.tables.read().get(&id).cloned()
    }

    pub fn tables(&self) -> Vec<Arc<Table>> {
        self.inner.tables.read().values().cloned().collect()
    }

    /// Opens a newly created table on this shard.
    pub(crate) async fn add_table(&self, entry: TableEntry) -> Result<Arc<Table>> {
        let table = Table::open(
            entry,
            self.inner.ctx.clone(),
            self.inner.owner.clone(),
            self.sender.clone(),
        )
        .await?;
        self.inner.tables.write().insert(table.id(), table.clone());
        Ok(table)
    }

    /// Closes a dropped table. Its WAL records are skipped from now on.
    pub(crate) fn remove_table(&self, id: TableId) -> Option<Arc<Table>> {
        let table = self.inner.tables.write().remove(&id);
        if let Some(t) = &table {
            t.mark_dropped();
            self.inner
                .ctx
                .write_buffer
                .release(t.version().memtable_bytes());
        }
        table
    }

    /// Flushes one table, then truncates the WAL as far as now possible.
    pub async fn flush_table(&self, table: &Table) -> Result<()> {
        table.flush().await?;
        truncate_wal(&self.inner).await
    }

    /// Flushes every table (on shutdown, so the next start replays little).
    pub async fn flush_all(&self) -> Result<()> {
        for table in self.tables() {
            table.flush().await?;
        }
        truncate_wal(&self.inner).await
    }

    /// Stops the background tasks. Writes already queued are completed.
    pub async fn close(&self) {
        if let Some(t) = self.ticker.lock().take() {
            t.abort();
        }
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            w.abort();
            let _ = w.await;
        }
    }

    pub fn wal(&self) -> &Arc<dyn Wal> {
        &self.inner.wal
    }

    /// The epoch this shard writes its WAL records under.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    /// The offset after the last WAL record applied.
    pub fn applied_offset(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    /// Whether a newer writer took this shard's WAL over: the shard refuses
    /// writes and must be closed.
    pub fn is_fenced(&self) -> bool {
        self.inner.owner.is_fenced()
    }

    /// This process's claim on the shard.
    pub fn owner(&self) -> &Arc<Ownership> {
        &self.inner.owner
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.lock().take() {
            t.abort();
        }
        if let Some(w) = self.writer.lock().take() {
            w.abort();
        }
    }
}

/// Replays the WAL from the smallest flushed offset of the shard's tables
/// (from the truncation watermark with `whole`); returns the highest epoch
/// seen.
async fn replay(inner: &ShardInner, whole: bool) -> Result<Epoch> {
    let tables: Vec<Arc<Table>> = inner.tables.read().values().cloned().collect();
    let start = match tables.iter().map(|t| t.version().flushed_offset).min() {
        _ if whole => 0,
        Some(start) => start,
        None => return Ok(Epoch(0)),
    };
    let started = Instant::now();
    let mut fence = EpochFence::new();
    let mut next = WalOffset(start);
    let mut replayed = 0u64;
    let mut skipped = 0u64;
    loop {
        let entries = inner
            .wal
            .read(next, REPLAY_READ_BYTES)
            .await
            .map_err(|source| Error::Wal {
                op: "replay read",
                source: Box::new(source),
            })?;
        let Some(last) = entries.last() else { break };
        next = last.offset.next();
        for entry in entries {
            if !fence.admit(&entry) || codec::is_fence(&entry.payload) {
                continue;
            }
            let record = codec::decode(&entry.payload)?;
            let Some(table) = inner.tables.read().get(&record.table).cloned() else {
                skipped += 1;
                continue;
            };
            table.apply_replayed(record.batch, entry.offset.0)?;
            replayed += 1;
            if table.version().active.bytes() as u64 >= table.write_buffer_size() {
                table.flush().await?;
            }
        }
    }
    metrics::WAL_REPLAYED_RECORDS.inc_by(replayed);
    tracing::info!(
        shard = %inner.id,
        from = start,
        to = next.0,
        replayed,
        skipped,
        fenced = fence.dropped(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed WAL"
    );
    Ok(fence.highest())
}

/// Deletes WAL records that every table has flushed.
pub(crate) async fn truncate_wal(inner: &ShardInner) -> Result<()> {
    // Read the applied offset first: every record below it is already in a
    // memtable or an SST, so the minimum over memtables read afterwards is a
    // safe bound.
    let applied = inner.applied.load(Ordering::Acquire);
    let tables: Vec<Arc<Table>> = inner.tables.read().values().cloned().collect();
    let min_unflushed = tables
        .iter()
        .filter_map(|t| t.version().min_unflushed_offset())
        .min();
    let below = min_unflushed.map_or(applied, |m| m.min(applied));
    if below > inner.wal.low_watermark().0 {
        inner
            .wal
            .truncate(WalOffset(below))
            .await
            .map_err(|source| Error::Wal {
                op: "truncate",
                source: Box::new(source),
            })?;
    }
    Ok(())
}

async fn run_writer(inner: Arc<ShardInner>, mut receiver: mpsc::Receiver<WriteJob>) {
    let max_batch = inner.ctx.config.max_write_batch.max(1);
    let mut jobs: Vec<WriteJob> = Vec::with_capacity(max_batch);
    loop {
        jobs.clear();
        if receiver.recv_many(&mut jobs, max_batch).await == 0 {
            return;
        }
        if let Some(by) = inner.owner.fenced_by() {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(inner.owner.fenced_error(by)));
            }
            continue;
        }
        let payloads = jobs.iter().map(|j| j.payload.clone()).collect();
        let started = Instant::now();
        let appended = inner.wal.append(inner.epoch, payloads).await;
        metrics::WAL_APPEND_SECONDS.observe(started.elapsed().as_secs_f64());
        match appended {
            Ok(res) => {
                metrics::WAL_GROUP_COMMITS.inc();
                metrics::WAL_RECORDS.inc_by(jobs.len() as u64);
                let mut touched: Vec<Arc<Table>> = Vec::new();
                for (job, offset) in jobs.drain(..).zip(res.offsets.iter().map(|o| o.0)) {
                    let result = job.table.apply(&job.batch, offset, job.time_range);
                    if let Ok(rows) = &result {
                        metrics::ROWS_WRITTEN.inc_by(*rows as u64);
                        metrics::WRITE_BATCHES.inc();
                    }
                    if !touched.iter().any(|t| Arc::ptr_eq(t, &job.table)) {
                        touched.push(job.table.clone());
                    }
                    let _ = job.reply.send(result);
                }
                if let Some(last) = res.last() {
                    inner.applied.store(last.0 + 1, Ordering::Release);
                }
                for table in touched {
                    if table.version().active.bytes() as u64 >= table.write_buffer_size() {
                        schedule_flush(&inner, table);
                    }
                }
                if inner.ctx.write_buffer.over_soft() {
                    flush_largest(&inner);
                }
            }
            Err(strata_wal::Error::Fenced { epoch, by }) => {
                tracing::warn!(shard = %inner.id, epoch = epoch.0, by = by.0,
                    "this shard was taken over by a newer leader; refusing writes");
                inner.owner.fence(by.0);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(Error::ShardFenced {
                        shard: inner.id,
                        epoch: epoch.0,
                        by: by.0,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(shard = %inner.id, error = %e, "WAL append failed");
                let retryable = e.is_retryable();
                let reason = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(Error::WalAppend {
                        reason: reason.clone(),
                        retryable,
                    }));
                }
            }
        }
    }
}

/// Above the global soft limit: flushes the largest memtables until the
/// memory they hold brings usage back under the limit.
fn flush_largest(inner: &Arc<ShardInner>) {
    let wb = &inner.ctx.write_buffer;
    let excess = wb.used().saturating_sub(wb.soft_limit());
    let mut tables: Vec<(usize, Arc<Table>)> = inner
        .tables
        .read()
        .values()
        .map(|t| (t.version().active.bytes(), t.clone()))
        .filter(|(bytes, _)| *bytes > 0)
        .collect();
    tables.sort_by_key(|t| std::cmp::Reverse(t.0));
    let mut freed = 0usize;
    for (bytes, table) in tables {
        if freed >= excess {
            break;
        }
        if !table.flush_scheduled.load(Ordering::Acquire) {
            schedule_flush(inner, table);
        }
        freed += bytes;
    }
}

/// Starts a background flush of `table` unless one is already scheduled.
pub(crate) fn schedule_flush(inner: &Arc<ShardInner>, table: Arc<Table>) {
    if table.flush_scheduled.swap(true, Ordering::AcqRel) {
        return;
    }
    let inner = inner.clone();
    metrics::FLUSH_PENDING.inc();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let result = {
                let _permit = inner.ctx.flush_permits.acquire().await;
                table.flush().await
            };
            match result {
                Ok(()) => break,
                Err(e) if table.is_dropped() || inner.owner.is_over() => {
                    tracing::debug!(table = %table.name(), error = %e, "flush of a dropped table abandoned");
                    break;
                }
                Err(e) => {
                    metrics::FLUSH_FAILURES.inc();
                    tracing::warn!(table = %table.name(), error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "flush failed; the WAL keeps the rows, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        table.flush_scheduled.store(false, Ordering::Release);
        metrics::FLUSH_PENDING.dec();
        if let Err(e) = truncate_wal(&inner).await {
            tracing::warn!(shard = %inner.id, error = %e, "WAL truncation failed");
        }
        if !table.is_dropped() {
            inner.ctx.compactor.schedule(table);
        }
    });
}

/// Flushes memtables that have held data for too long, and keeps the
/// memtable gauge current.
async fn run_ticker(inner: Arc<ShardInner>) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        let tables: Vec<Arc<Table>> = inner.tables.read().values().cloned().collect();
        let mut bytes = 0i64;
        for table in tables {
            let version = table.version();
            bytes += version.memtables().map(|m| m.bytes() as i64).sum::<i64>();
            if !version.active.is_empty()
                && version.active.age() >= inner.ctx.config.max_memtable_age
            {
                schedule_flush(&inner, table);
            }
        }
        metrics::MEMTABLE_BYTES.set(bytes);
    }
}
