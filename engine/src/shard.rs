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
    compaction::CompactionSignal,
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
    /// Fenced mode: the offset of this writer's latest record (its fence
    /// marker at first); `u64::MAX` otherwise. The WAL is never truncated
    /// above it, so a later replay always starts at a record of this epoch
    /// and drops every older writer's record after it (an older writer's
    /// refused records land after our marker; a replay that started past
    /// our last record would see them before any record of ours).
    pub anchor: AtomicU64,
    /// This process's claim on the shard: fenced once the WAL or a
    /// manifest shows a newer owner, and the shard must then close.
    pub owner: Arc<Ownership>,
    pub ctx: Arc<EngineContext>,
    /// Asks the engine for a compaction check after a flush.
    pub compaction: CompactionSignal,
}

/// A shard's load as of one look ([`Shard::load`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub counters: crate::table::LoadCounters,
    pub memtable_bytes: u64,
    /// WAL records above the oldest row still only in memory.
    pub wal_backlog: u64,
    /// Each table's rows written since it was opened here.
    pub tables: Vec<(strata_sst::TableId, u64)>,
}

/// A shard of the engine.
#[derive(Debug)]
pub struct Shard {
    inner: Arc<ShardInner>,
    /// One handover at a time: a failed one resumes writes, which must not
    /// happen under another still going on.
    handover: tokio::sync::Mutex<()>,
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
    ///
    /// An open that fails during the fence marker or the replay leaves its
    /// progress in `partials`; the next open of the shard under the same
    /// epoch goes on from there (the marker is appended once per epoch, and
    /// what was replayed is not read again). A different epoch discards it.
    #[allow(clippy::too_many_arguments)] // each is a distinct input of the open
    pub(crate) async fn open(
        id: ShardId,
        wal: Arc<dyn Wal>,
        epoch: Epoch,
        entries: Vec<TableEntry>,
        ctx: Arc<EngineContext>,
        compaction: CompactionSignal,
        fence: bool,
        partials: &PartialOpens,
        seed: Option<crate::follower::Seed>,
    ) -> Result<Arc<Self>> {
        let partial = match partials.lock().remove(&id) {
            // Resumed only under the same epoch (the lock was held all
            // along), past the marker, and with the same tables as the
            // catalog now lists (no DDL in between).
            Some(p) if p.epoch == epoch && p.progress.is_some() && p.same_tables(&entries) => {
                Some(p)
            }
            Some(p) => {
                p.discard(&ctx);
                None
            }
            None => None,
        };
        // A promoted follower's position: the replay goes on from there.
        let mut seeded: Option<crate::follower::Position> = None;
        let (tables, owner, sender, receiver, progress) = match partial {
            Some(p) => {
                tracing::info!(shard = %id, epoch = epoch.0,
                    next = p.progress.as_ref().map(|r| r.next.0),
                    "resuming an interrupted shard open");
                (p.tables, p.owner, p.sender, p.receiver, p.progress)
            }
            None => {
                let (sender, receiver) = mpsc::channel(ctx.config.max_write_batch.max(16) * 4);
                let owner = Arc::new(Ownership::new(id, epoch.0));
                let wal_end = wal.next_offset().0;
                let results =
                    futures::future::join_all(entries.into_iter().map(|e| {
                        Table::open(e, ctx.clone(), owner.clone(), sender.clone(), wal_end)
                    }))
                    .await;
                let mut opened = Vec::with_capacity(results.len());
                for result in results {
                    match result {
                        Ok(t) => opened.push(t),
                        // Handed to another shard, and the catalog does not
                        // say so yet: not this shard's (its WAL records
                        // are skipped by the replay).
                        Err(e @ Error::TableMoved { .. }) => {
                            tracing::warn!(shard = %id, error = %e,
                                "a table of this shard was handed to another; not opened");
                        }
                        // A manifest carries a newer epoch than the one we
                        // were given (meta lost its state): a higher epoch
                        // is needed.
                        Err(Error::ShardFenced { shard, epoch, by }) => {
                            owner.relinquish();
                            return Err(Error::EpochBehind {
                                shard,
                                epoch,
                                highest: by,
                            });
                        }
                        Err(e) => {
                            owner.relinquish();
                            return Err(e);
                        }
                    }
                }
                if let Some(seed) = seed {
                    for t in &opened {
                        if let Some(theirs) = seed.tables.get(&t.id()) {
                            t.adopt(theirs)?;
                        }
                    }
                    seeded = Some(seed.position);
                }
                let tables = opened.into_iter().map(|t| (t.id(), t)).collect();
                (tables, owner, sender, receiver, None)
            }
        };
        let inner = Arc::new(ShardInner {
            id,
            wal,
            epoch,
            tables: RwLock::new(tables),
            applied: AtomicU64::new(0),
            anchor: AtomicU64::new(u64::MAX),
            owner,
            ctx,
            compaction,
        });
        let stash = |inner: &Arc<ShardInner>,
                     receiver: mpsc::Receiver<WriteJob>,
                     progress: Option<ReplayProgress>| {
            partials.lock().insert(
                id,
                PartialOpen {
                    epoch,
                    tables: inner.tables.read().clone(),
                    owner: inner.owner.clone(),
                    sender: sender.clone(),
                    receiver,
                    progress,
                },
            );
        };
        let progress = match progress {
            Some(p) => {
                inner.anchor.store(p.anchor, Ordering::Release);
                p
            }
            None => {
                if fence {
                    if let Err(e) = check_wal_reaches_manifests(&inner) {
                        stash(&inner, receiver, None);
                        return Err(e);
                    }
                    let marker = inner
                        .wal
                        .append(epoch, vec![codec::encode_fence(epoch.0)])
                        .await;
                    match marker {
                        Ok(res) => {
                            if let Some(at) = res.first() {
                                inner.anchor.store(at.0, Ordering::Release);
                            }
                        }
                        Err(source) => {
                            stash(&inner, receiver, None);
                            return Err(Error::Wal {
                                op: "fence marker append",
                                source: Box::new(source),
                            });
                        }
                    }
                }
                let mut p = ReplayProgress::start(&inner, fence);
                if let Some(position) = seeded {
                    tracing::info!(shard = %id, epoch = epoch.0, from = position.next.0,
                        "promoting a follower: reading only the WAL it has not applied");
                    p.start = position.next.0;
                    p.next = position.next;
                    p.fence = position.fence;
                    p.needed = true;
                }
                p
            }
        };
        let highest = match replay(&inner, progress).await {
            Ok(highest) => highest,
            Err((e, progress)) => {
                stash(&inner, receiver, Some(progress));
                return Err(e);
            }
        };
        if fence && highest > epoch {
            inner.owner.relinquish();
            for t in inner.tables.read().values() {
                inner.ctx.write_buffer.release(t.version().memtable_bytes());
            }
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

        strata_wal::loss::clear(&format!("shard {id}"));
        let writer = tokio::spawn(run_writer(inner.clone(), receiver));
        if inner.ctx.write_buffer.over_soft() {
            // A promoted follower's memtables now count: flush the largest
            // rather than stall writes at the hard limit.
            flush_largest(&inner);
        }
        let ticker = tokio::spawn(run_ticker(inner.clone()));
        Ok(Arc::new(Self {
            inner,
            handover: tokio::sync::Mutex::new(()),
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
        // The end of the WAL as the writer knows it: no record of a table
        // not yet open here lies at or above it (see `Manifest::open`).
        let wal_end = self.inner.wal.next_offset().0;
        let table = Table::open(
            entry,
            self.inner.ctx.clone(),
            self.inner.owner.clone(),
            self.sender.clone(),
            wal_end,
        )
        .await?;
        self.inner.tables.write().insert(table.id(), table.clone());
        Ok(table)
    }

    /// Hands `tables` to shard `to` (a split or a merge; see
    /// `docs/rfcs/0006-split-and-merge.md`): stops their writes and waits
    /// for those already admitted to be applied, flushes them, and commits
    /// a handover to each manifest. From then on this shard writes, reads
    /// and replays none of them; the catalog moving them to `to` removes
    /// them here ([`Self::remove_table`]).
    ///
    /// Idempotent: a table already handed to `to` (open here or not) is
    /// done. On failure, tables not yet handed over take writes again; the
    /// caller retries (a handover is only ever finished, never undone, once
    /// one table's is committed).
    pub async fn hand_over(
        &self,
        tables: &[TableEntry],
        to: ShardId,
        drain_timeout: Duration,
    ) -> Result<()> {
        let _one = self.handover.lock().await;
        self.inner.owner.check()?;
        if to == self.inner.id {
            return Err(Error::Internal(format!(
                "shard {to}: tables cannot be handed to their own shard"
            )));
        }
        let started = Instant::now();
        let mut open = Vec::with_capacity(tables.len());
        for entry in tables {
            match self.table(entry.id) {
                Some(t) => open.push(t),
                None => self.check_handed_over(entry, to).await?,
            }
        }
        let result = async {
            for t in &open {
                t.stop_writes(drain_timeout).await?;
            }
            for t in &open {
                if !t.is_handed_over() {
                    t.hand_over(to).await?;
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            for t in &open {
                t.resume_writes();
            }
        }
        result?;
        crate::failpoint::pause("handover.after_commit").await;
        metrics::HANDOVER_PAUSE_SECONDS.observe(started.elapsed().as_secs_f64());
        tracing::info!(shard = %self.inner.id, to = %to, tables = open.len(),
            pause_ms = started.elapsed().as_millis() as u64, "handed tables to another shard");
        if let Err(e) = truncate_wal(&self.inner).await {
            tracing::warn!(shard = %self.inner.id, error = %e, "WAL truncation after a handover failed");
        }
        Ok(())
    }

    /// A table not open in this shard: done when its manifest shows it
    /// handed to (or claimed by) `to`.
    async fn check_handed_over(&self, entry: &TableEntry, to: ShardId) -> Result<()> {
        let id = entry.id;
        let dir =
            strata_sst::layout::manifest_dir(&self.inner.ctx.config.cluster, entry.home(), id);
        let state = crate::manifest::load(&self.inner.ctx.store, &dir, id).await?;
        // Handed to `to`, or claimed by it since (not merely `to`'s before
        // it was handed here and not claimed yet).
        if state.handed_to() == Some(to.0)
            || (state.shard == Some(to.0) && state.handed_to().is_none())
        {
            return Ok(());
        }
        Err(Error::NotServedHere {
            table: entry.name.clone(),
            shard: self.inner.id,
        })
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

    /// What the shard's tables were asked to do (their counters summed),
    /// the bytes their memtables hold, and the WAL records a failover would
    /// replay (those above the oldest row still only in memory).
    pub fn load(&self) -> ShardLoad {
        let applied = self.applied_offset();
        let mut load = ShardLoad::default();
        let mut min_unflushed: Option<u64> = None;
        for table in self.tables() {
            if table.is_handed_over() {
                continue;
            }
            let counters = table.load().counters();
            load.counters.add(counters);
            load.tables.push((table.id(), counters.rows_written));
            let version = table.version();
            load.memtable_bytes += version.memtable_bytes() as u64;
            if let Some(m) = version.min_unflushed_offset() {
                min_unflushed = Some(min_unflushed.map_or(m, |x| x.min(m)));
            }
        }
        load.wal_backlog = min_unflushed.map_or(0, |m| applied.saturating_sub(m));
        load
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

/// Shards whose open was interrupted, with what it had done.
pub(crate) type PartialOpens = parking_lot::Mutex<HashMap<ShardId, PartialOpen>>;

/// What an open interrupted at the fence marker or during replay leaves for
/// the next attempt under the same epoch.
#[derive(Debug)]
pub(crate) struct PartialOpen {
    epoch: Epoch,
    tables: HashMap<TableId, Arc<Table>>,
    owner: Arc<Ownership>,
    sender: mpsc::Sender<WriteJob>,
    receiver: mpsc::Receiver<WriteJob>,
    /// Set once the fence marker (when one is needed) is durable.
    progress: Option<ReplayProgress>,
}

impl PartialOpen {
    /// Whether the catalog's entries for the shard are the ones this open
    /// started with.
    fn same_tables(&self, entries: &[TableEntry]) -> bool {
        entries.len() == self.tables.len()
            && entries
                .iter()
                .all(|e| self.tables.get(&e.id).is_some_and(|t| t.meta().entry == *e))
    }

    /// Drops an interrupted open that will not be resumed: its tables give
    /// their memory back and commit nothing more.
    pub(crate) fn discard(self, ctx: &EngineContext) {
        self.owner.relinquish();
        for t in self.tables.values() {
            ctx.write_buffer.release(t.version().memtable_bytes());
        }
    }
}

/// How far a replay got.
#[derive(Debug, Clone)]
pub(crate) struct ReplayProgress {
    start: u64,
    next: WalOffset,
    fence: EpochFence,
    replayed: u64,
    skipped: u64,
    /// Nothing to replay (no tables, outside fenced mode).
    needed: bool,
    /// The fence marker's offset (`u64::MAX` without one).
    anchor: u64,
}

impl ReplayProgress {
    /// Replay starts at the smallest flushed offset of the shard's tables,
    /// or at the truncation watermark with `whole`.
    fn start(inner: &ShardInner, whole: bool) -> Self {
        let min_flushed = inner
            .tables
            .read()
            .values()
            .map(|t| t.version().flushed_offset)
            .min();
        let (start, needed) = match min_flushed {
            _ if whole => (0, true),
            Some(start) => (start, true),
            None => (0, false),
        };
        Self {
            start,
            next: WalOffset(start),
            fence: EpochFence::new(),
            replayed: 0,
            skipped: 0,
            needed,
            anchor: inner.anchor.load(Ordering::Acquire),
        }
    }
}

/// Fails when a table's manifest counts offsets as flushed that the WAL
/// never reached: the WAL was recreated or lost its records.
fn check_wal_reaches_manifests(inner: &ShardInner) -> Result<()> {
    let id = inner.id;
    let flushed = inner
        .tables
        .read()
        .values()
        .map(|t| t.version().flushed_offset)
        .max()
        .unwrap_or(0);
    let end = inner.wal.next_offset().0;
    if flushed <= end {
        return Ok(());
    }
    let region = format!("shard {id}");
    let detail = format!(
        "the WAL ends at offset {end}, below offset {flushed} that a table has already flushed"
    );
    tracing::error!(shard = %id, %detail, "the WAL lost acknowledged records; refusing to open the shard");
    strata_wal::loss::record(&region, &detail);
    Err(Error::Wal {
        op: "open",
        source: Box::new(strata_wal::Error::RecordsLost {
            topic: region,
            detail,
        }),
    })
}

/// Replays the WAL from where `progress` stands; returns the highest epoch
/// seen, or the error with how far it got.
async fn replay(
    inner: &ShardInner,
    mut progress: ReplayProgress,
) -> std::result::Result<Epoch, (Error, ReplayProgress)> {
    if !progress.needed {
        return Ok(Epoch(0));
    }
    let started = Instant::now();
    loop {
        let entries = match inner.wal.read(progress.next, REPLAY_READ_BYTES).await {
            Ok(entries) => entries,
            Err(source) => {
                tracing::warn!(shard = %inner.id, next = progress.next.0, replayed = progress.replayed,
                    error = %source, "WAL replay interrupted; the next attempt goes on from here");
                return Err((
                    Error::Wal {
                        op: "replay read",
                        source: Box::new(source),
                    },
                    progress,
                ));
            }
        };
        if entries.is_empty() {
            break;
        }
        for (i, entry) in entries.into_iter().enumerate() {
            // Decoding and applying is CPU work: let the other shards'
            // writes and queries run every few records.
            if i % 32 == 31 {
                tokio::task::yield_now().await;
            }
            // Applied records are never applied twice: `next` moves past
            // each one as it is applied, so a retry starts after it.
            let offset = entry.offset;
            if !progress.fence.admit(&entry) || codec::is_fence(&entry.payload) {
                progress.next = offset.next();
                continue;
            }
            let record = match codec::decode(&entry.payload) {
                Ok(r) => r,
                Err(e) => return Err((e, progress)),
            };
            let Some(table) = inner.tables.read().get(&record.table).cloned() else {
                progress.skipped += 1;
                progress.next = offset.next();
                continue;
            };
            if let Err(e) = table.apply_replayed(record.batch, offset.0) {
                return Err((e, progress));
            }
            progress.replayed += 1;
            progress.next = offset.next();
            if table.version().active.bytes() as u64 >= table.write_buffer_size() {
                // Past the record already: a retry does not apply it twice.
                if let Err(e) = table.flush().await {
                    return Err((e, progress));
                }
            }
        }
        tokio::task::yield_now().await;
    }
    metrics::WAL_REPLAYED_RECORDS.inc_by(progress.replayed);
    tracing::info!(
        shard = %inner.id,
        from = progress.start,
        to = progress.next.0,
        replayed = progress.replayed,
        skipped = progress.skipped,
        fenced = progress.fence.dropped(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed WAL"
    );
    Ok(progress.fence.highest())
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
    let below = min_unflushed
        .map_or(applied, |m| m.min(applied))
        .min(inner.anchor.load(Ordering::Acquire));
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
        // A fenced append may still have committed its leading records
        // (they landed before the newer writer's first record, and its
        // replay applies them): acknowledge those, refuse the rest.
        let (appended, refused) = match appended {
            Err(strata_wal::Error::Fenced {
                epoch,
                by,
                committed,
            }) if !committed.is_empty() => {
                let rest = jobs.split_off(committed.len().min(jobs.len()));
                (
                    Ok(strata_wal::AppendResult { offsets: committed }),
                    Some((epoch, by, rest)),
                )
            }
            other => (other, None),
        };
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
                        job.table.load().wrote(*rows, job.payload.len());
                    }
                    if !touched.iter().any(|t| Arc::ptr_eq(t, &job.table)) {
                        touched.push(job.table.clone());
                    }
                    let _ = job.reply.send(result);
                }
                if let Some(last) = res.last() {
                    inner.applied.store(last.0 + 1, Ordering::Release);
                    if inner.anchor.load(Ordering::Acquire) != u64::MAX {
                        inner.anchor.fetch_max(last.0, Ordering::AcqRel);
                    }
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
            Err(strata_wal::Error::Fenced { epoch, by, .. }) => {
                refuse_fenced(&inner, epoch, by, &mut jobs);
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
        if let Some((epoch, by, mut rest)) = refused {
            refuse_fenced(&inner, epoch, by, &mut rest);
        }
    }
}

/// Refuses `jobs`: a newer leader took the shard's WAL over, and replay
/// drops their records.
fn refuse_fenced(inner: &ShardInner, epoch: Epoch, by: Epoch, jobs: &mut Vec<WriteJob>) {
    tracing::warn!(shard = %inner.id, epoch = epoch.0, by = by.0, refused = jobs.len(),
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
            inner.compaction.send(&table);
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
