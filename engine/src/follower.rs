//! A follower of a shard led by another instance: a read-only copy that
//! serves queries and makes failover fast.
//!
//! A follower opens the shard's tables from their manifests without claiming
//! them, then tails the shard's WAL exactly as a replay would (the same
//! epoch filter, the same skipping of records below a table's flushed
//! offset), applying each record to its memtables. Every `sync_interval` it
//! re-reads the manifests: the SSTs the leader's flushes, compactions and
//! TTL expiry committed replace its SST list, and memtable rows below the
//! new flushed offset are dropped, in one version swap per table. It never
//! writes: no WAL record, no SST, no manifest edit, no deletion (its tables'
//! owner is relinquished from the start, so every commit path refuses, and
//! the engine's maintenance and compaction never see follower shards).
//!
//! Promotion ([`crate::Engine::promote_follower`]) stops the tail and hands
//! its tables and its position to a normal shard open under the new epoch:
//! the manifests are claimed, the memtables adopted, the fence marker
//! appended, and only the records after the follower's position are read.
//! The time it takes does not depend on how much of the WAL is unflushed.
//!
//! A record of a table this instance does not know yet (created a moment
//! ago), or written under a newer schema than it knows (an `ALTER` it has
//! not heard of), stops the tail at that record until the catalog catches
//! up: applying it would lose the record or its new columns.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use strata_sst::{layout, ShardId, TableId};
use strata_wal::{fence::EpochFence, Wal, WalOffset};
use tokio::task::JoinHandle;

use crate::{
    catalog::TableEntry, codec, context::EngineContext, ownership::Ownership, table::Table, Error,
    Result,
};

/// Bytes of WAL payload read per call.
const TAIL_READ_BYTES: usize = 8 * 1024 * 1024;
/// How long the tail sleeps when it has read everything.
const TAIL_IDLE: Duration = Duration::from_millis(50);
/// How long it waits for the catalog before reading a record again.
const CATALOG_WAIT: Duration = Duration::from_millis(200);

/// What the catalog says about a table id met in the WAL.
#[derive(Debug, Clone)]
pub enum Known {
    Entry(Box<TableEntry>),
    /// Dropped (an id below one the catalog lists, and absent).
    Dropped,
    /// Not known yet: wait for the catalog.
    Unknown,
}

/// How a follower asks the catalog about a table id.
pub type Lookup = Arc<dyn Fn(TableId) -> Known + Send + Sync>;

/// Where a follower stands: the next WAL offset to apply and the epoch
/// filter, exactly as a replay would have them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Position {
    pub next: WalOffset,
    pub fence: EpochFence,
}

/// What a stopped follower hands to the shard that replaces it.
#[derive(Debug)]
pub(crate) struct Seed {
    pub tables: HashMap<TableId, Arc<Table>>,
    pub position: Position,
}

/// A follower's state, as `system.shards` and heartbeats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The offset after the last record applied.
    pub applied: u64,
    /// The end of the WAL when last looked at.
    pub end: u64,
    /// Records behind (`end - applied`).
    pub lag_records: u64,
    /// How long it has been behind the WAL's end (0 when caught up).
    pub lag_ms: u64,
    /// Stopped at a record whose table or schema the catalog does not show
    /// yet.
    pub waiting_for_catalog: bool,
}

#[derive(Debug)]
struct Inner {
    id: ShardId,
    wal: Arc<dyn Wal>,
    ctx: Arc<EngineContext>,
    /// Relinquished from the start: commits nothing.
    owner: Arc<Ownership>,
    tables: RwLock<HashMap<TableId, Arc<Table>>>,
    position: tokio::sync::Mutex<Position>,
    applied: AtomicU64,
    end: AtomicU64,
    /// Since when it has been behind; `None` while caught up.
    behind_since: Mutex<Option<Instant>>,
    waiting: AtomicBool,
    sync_interval: Duration,
    /// Tables whose records the tail skips (dropped, or on another shard).
    skipped: RwLock<std::collections::HashSet<TableId>>,
    /// Every complete record below this offset is applied: the end of the
    /// WAL as known before a read that found nothing more to apply. Above
    /// `applied` when the last record was written in chunks (a record's
    /// offset is its first chunk's).
    settled: AtomicU64,
    /// Woken after each batch the tail reads and each manifest sync
    /// (readers waiting to catch up).
    progress: tokio::sync::Notify,
    /// Wakes an idle tail (a reader is waiting for it, or the catalog
    /// changed).
    wake: tokio::sync::Notify,
    /// Manifest syncs asked for (a table's definition changed: a TTL
    /// change must not show rows the leader's expiry already removed), and
    /// the last such request a completed sync covered.
    sync_requested: AtomicU64,
    synced: AtomicU64,
    /// The last read of the WAL's end from the broker, shared by readers.
    end_probe: Arc<tokio::sync::Mutex<EndProbe>>,
    /// Stopped (closed or promoted): readers stop waiting.
    stopped: AtomicBool,
}

/// The WAL's end as last read from the broker, and when that read began.
#[derive(Debug, Default)]
struct EndProbe {
    started: Option<tokio::time::Instant>,
    end: u64,
}

/// A read-only follower of one shard.
pub struct Follower {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Every complete record below this offset is applied.
    fn caught_up_to(&self) -> u64 {
        self.applied
            .load(Ordering::Acquire)
            .max(self.settled.load(Ordering::Acquire))
    }

    fn status(&self) -> FollowerStatus {
        let applied = self.caught_up_to();
        let end = self.end.load(Ordering::Acquire).max(applied);
        FollowerStatus {
            applied,
            end,
            lag_records: end - applied,
            lag_ms: self
                .behind_since
                .lock()
                .map_or(0, |t| t.elapsed().as_millis() as u64),
            waiting_for_catalog: self.waiting.load(Ordering::Acquire),
        }
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Follower(shard {})", self.inner.id)
    }
}

impl Follower {
    /// Opens a follower of shard `id` with `entries` (its tables in the
    /// catalog), reading `wal`, and starts tailing it.
    pub(crate) async fn open(
        id: ShardId,
        wal: Arc<dyn Wal>,
        entries: Vec<TableEntry>,
        ctx: Arc<EngineContext>,
        lookup: Lookup,
        sync_interval: Duration,
    ) -> Result<Arc<Self>> {
        let owner = Arc::new(Ownership::new(id, 0));
        owner.relinquish();
        let opened = futures::future::try_join_all(
            entries
                .into_iter()
                .map(|e| Table::open_follower(e, ctx.clone(), owner.clone())),
        )
        .await?;
        let tables = opened.into_iter().map(|t| (t.id(), t)).collect();
        let inner = Arc::new(Inner {
            id,
            wal,
            ctx,
            owner,
            tables: RwLock::new(tables),
            position: tokio::sync::Mutex::new(Position::default()),
            applied: AtomicU64::new(0),
            end: AtomicU64::new(0),
            behind_since: Mutex::new(Some(Instant::now())),
            waiting: AtomicBool::new(false),
            sync_interval,
            skipped: RwLock::new(Default::default()),
            settled: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
            wake: tokio::sync::Notify::new(),
            sync_requested: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            end_probe: Default::default(),
            stopped: AtomicBool::new(false),
        });
        let task = tokio::spawn(run_tail(inner.clone(), lookup));
        tracing::info!(shard = %id, tables = inner.tables.read().len(), "opened shard as a follower");
        Ok(Arc::new(Self {
            inner,
            task: Mutex::new(Some(task)),
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

    /// The offset after the last WAL record applied.
    pub fn applied_offset(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    pub fn status(&self) -> FollowerStatus {
        self.inner.status()
    }

    /// Waits until the follower has applied every record the WAL held when
    /// called, and has re-read its manifests if a table's definition
    /// changed since: a read that follows sees every write acknowledged
    /// before it began, as on the leader (the follower's manifests may be a
    /// second older, but rows leave its memtables only when it adopts the
    /// SSTs holding them). Fails with `FollowerBehind` after
    /// `engine.follower_read_timeout`, when the WAL's end cannot be read, or
    /// at once when the follower is stopped; the caller reads the leader
    /// instead.
    pub async fn catch_up(&self) -> Result<()> {
        let result = self.wait_caught_up().await;
        match &result {
            Ok(()) => crate::metrics::FOLLOWER_READS.inc(),
            Err(_) => crate::metrics::FOLLOWER_READS_BEHIND.inc(),
        }
        result
    }

    async fn wait_caught_up(&self) -> Result<()> {
        let since = tokio::time::Instant::now();
        let deadline = since + self.inner.ctx.config.follower_read_timeout;
        let sync_wanted = self.inner.sync_requested.load(Ordering::Acquire);
        let behind = |end: u64| Error::FollowerBehind {
            shard: self.inner.id,
            applied: self.inner.caught_up_to(),
            end,
        };
        let end = self.wal_end(since, deadline).await.map_err(|e| {
            tracing::debug!(shard = %self.inner.id, error = %e, "reading the end of a followed WAL");
            behind(self.inner.end.load(Ordering::Acquire))
        })?;
        self.inner.end.fetch_max(end, Ordering::AcqRel);
        loop {
            // Registered before the checks: no progress is missed in between.
            let progressed = self.inner.progress.notified();
            if self.inner.stopped.load(Ordering::Acquire) {
                return Err(behind(end));
            }
            if self.inner.caught_up_to() >= end
                && self.inner.synced.load(Ordering::Acquire) >= sync_wanted
            {
                return Ok(());
            }
            self.inner.wake.notify_one();
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return Err(behind(end));
            }
        }
    }

    /// The WAL's end, from a read of it that began after `since`. One read
    /// at a time per follower, shared by the readers waiting for it; it
    /// goes on after a reader gives up, and holds the others back until it
    /// ends (a slow broker does not pile up blocked reads).
    async fn wal_end(
        &self,
        since: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        let timed_out = || Error::Internal("timed out reading the end of a followed WAL".into());
        let probe = tokio::time::timeout_at(deadline, self.inner.end_probe.clone().lock_owned())
            .await
            .map_err(|_| timed_out())?;
        if probe.started.is_some_and(|s| s >= since) {
            return Ok(probe.end);
        }
        let wal = self.inner.wal.clone();
        let read = tokio::spawn(async move {
            let mut probe = probe;
            let started = tokio::time::Instant::now();
            let end = wal.end_offset().await?.0;
            *probe = EndProbe {
                started: Some(started),
                end,
            };
            Ok::<u64, strata_wal::Error>(end)
        });
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(Ok(end))) => Ok(end),
            Ok(Ok(Err(source))) => Err(Error::Wal {
                op: "reading the end of a followed WAL",
                source: Box::new(source),
            }),
            Ok(Err(e)) => Err(Error::Internal(format!("reading the WAL's end: {e}"))),
            Err(_) => Err(timed_out()),
        }
    }

    /// Opens a table created on the shard (or applies a changed
    /// definition).
    pub(crate) async fn apply_entry(&self, entry: TableEntry) -> Result<()> {
        let changed = self
            .inner
            .tables
            .read()
            .get(&entry.id)
            .is_some_and(|t| t.meta().entry != entry);
        // Asked for before the new definition shows: a reader that sees it
        // waits for a sync begun after it.
        if changed {
            self.inner.sync_requested.fetch_add(1, Ordering::AcqRel);
        }
        // A table that came (back) to this shard: its records from now on
        // are applied (older ones are below its flushed offset).
        self.inner.skipped.write().remove(&entry.id);
        match add_or_update(&self.inner, entry).await {
            Ok(_) => {}
            // Handed here and not yet claimed: opened by the tail when it
            // meets the table's first record, which follows the claim.
            Err(e @ Error::TableMoving { .. }) => {
                tracing::debug!(shard = %self.inner.id, error = %e, "a table handed to this shard is not claimed yet");
            }
            Err(e) => return Err(e),
        }
        // A tail waiting for this table or schema goes on at once.
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Forgets a dropped table.
    pub(crate) fn remove_table(&self, id: TableId) {
        if let Some(t) = self.inner.tables.write().remove(&id) {
            t.mark_dropped();
        }
    }

    /// Stops tailing and returns the tables and the position, for a
    /// promotion. The follower is unusable afterwards.
    pub(crate) async fn stop(&self) -> Seed {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.progress.notify_waiters();
        let task = self.task.lock().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        let shard = self.inner.id.to_string();
        let _ = crate::metrics::FOLLOWER_LAG_RECORDS.remove_label_values(&[&shard]);
        let _ = crate::metrics::FOLLOWER_LAG_MS.remove_label_values(&[&shard]);
        let position = self.inner.position.lock().await.clone();
        let tables = std::mem::take(&mut *self.inner.tables.write());
        Seed { tables, position }
    }

    /// Stops tailing and drops the tables (their memtables were never
    /// counted in the write buffer: nothing to give back).
    pub(crate) async fn close(&self) {
        let seed = self.stop().await;
        for t in seed.tables.values() {
            t.mark_dropped();
        }
        tracing::info!(shard = %self.inner.id, "closed follower");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

/// Opens `entry`'s table on the follower, or installs its new definition.
async fn add_or_update(inner: &Inner, entry: TableEntry) -> Result<Arc<Table>> {
    let existing = inner.tables.read().get(&entry.id).cloned();
    if let Some(t) = existing {
        if t.meta().entry != entry {
            t.install_meta(entry);
        }
        return Ok(t);
    }
    let t = Table::open_follower(entry, inner.ctx.clone(), inner.owner.clone()).await?;
    Ok(inner.tables.write().entry(t.id()).or_insert(t).clone())
}

enum Step {
    Applied,
    CaughtUp,
    WaitingForCatalog,
}

async fn run_tail(inner: Arc<Inner>, lookup: Lookup) {
    let mut last_sync: Option<Instant> = None;
    let mut failing = false;
    loop {
        let sync_wanted = inner.sync_requested.load(Ordering::Acquire);
        if last_sync.is_none_or(|t| t.elapsed() >= inner.sync_interval)
            || sync_wanted > inner.synced.load(Ordering::Acquire)
        {
            // A sync that could not read every manifest does not count
            // as the one asked for: it is tried again.
            if sync_manifests(&inner).await {
                inner.synced.fetch_max(sync_wanted, Ordering::AcqRel);
            }
            match inner.wal.end_offset().await {
                Ok(end) => {
                    inner.end.fetch_max(end.0, Ordering::AcqRel);
                }
                Err(e) => tracing::debug!(shard = %inner.id, error = %e, "reading the WAL's end"),
            }
            last_sync = Some(Instant::now());
        }
        let result = step(&inner, &lookup).await;
        publish_lag(&inner);
        inner.progress.notify_waiters();
        match result {
            Ok(step) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(shard = %inner.id, "the follower reads its WAL again");
                }
                inner
                    .waiting
                    .store(matches!(step, Step::WaitingForCatalog), Ordering::Release);
                match step {
                    Step::Applied => tokio::task::yield_now().await,
                    Step::CaughtUp => {
                        tokio::select! {
                            () = tokio::time::sleep(TAIL_IDLE) => {}
                            () = inner.wake.notified() => {}
                        }
                    }
                    Step::WaitingForCatalog => {
                        tokio::select! {
                            () = tokio::time::sleep(CATALOG_WAIT) => {}
                            () = inner.wake.notified() => {}
                        }
                    }
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(shard = %inner.id, error = %e, "the follower cannot read its WAL; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sets the lag gauges of `/metrics`.
fn publish_lag(inner: &Inner) {
    let status = inner.status();
    let shard = inner.id.to_string();
    crate::metrics::FOLLOWER_LAG_RECORDS
        .with_label_values(&[&shard])
        .set(i64::try_from(status.lag_records).unwrap_or(i64::MAX));
    crate::metrics::FOLLOWER_LAG_MS
        .with_label_values(&[&shard])
        .set(i64::try_from(status.lag_ms).unwrap_or(i64::MAX));
}

/// Reads and applies one batch of records.
async fn step(inner: &Inner, lookup: &Lookup) -> Result<Step> {
    let mut position = inner.position.lock().await;
    // Known before the read: the broker's end at the read is at least this.
    let end_before = inner.end.load(Ordering::Acquire);
    let entries = inner
        .wal
        .read(position.next, TAIL_READ_BYTES)
        .await
        .map_err(|source| Error::Wal {
            op: "follower read",
            source: Box::new(source),
        })?;
    if entries.is_empty() {
        // Nothing left to apply below the broker's end at this read (at
        // most the trailing chunks of the last record, applied already).
        inner.end.fetch_max(position.next.0, Ordering::AcqRel);
        inner
            .settled
            .fetch_max(end_before.max(position.next.0), Ordering::AcqRel);
        if inner.caught_up_to() >= inner.end.load(Ordering::Acquire) {
            *inner.behind_since.lock() = None;
        }
        return Ok(Step::CaughtUp);
    }
    if let Some(last) = entries.last() {
        inner.end.fetch_max(last.offset.0 + 1, Ordering::AcqRel);
        inner.behind_since.lock().get_or_insert_with(Instant::now);
    }
    for (i, entry) in entries.into_iter().enumerate() {
        if i % 32 == 31 {
            tokio::task::yield_now().await;
        }
        let offset = entry.offset;
        if !position.fence.admit(&entry) || codec::is_fence(&entry.payload) {
            position.next = offset.next();
            inner.applied.store(position.next.0, Ordering::Release);
            continue;
        }
        let record = codec::decode(&entry.payload)?;
        if inner.skipped.read().contains(&record.table) {
            position.next = offset.next();
            inner.applied.store(position.next.0, Ordering::Release);
            continue;
        }
        let existing = inner.tables.read().get(&record.table).cloned();
        let table = match existing {
            Some(t) => t,
            None => match lookup(record.table) {
                Known::Entry(e) if e.shard == inner.id => add_or_update(inner, *e).await?,
                // The catalog here may not show yet that the table moved
                // to this shard (a split or a merge): its manifest says.
                // Skipping its records for good would lose them.
                Known::Entry(e) if claimed_here(inner, &e).await? => {
                    return Ok(Step::WaitingForCatalog)
                }
                Known::Entry(_) | Known::Dropped => {
                    // Met again, it is skipped without asking.
                    inner.skipped.write().insert(record.table);
                    position.next = offset.next();
                    inner.applied.store(position.next.0, Ordering::Release);
                    continue;
                }
                Known::Unknown => return Ok(Step::WaitingForCatalog),
            },
        };
        if record.schema_version > table.meta().entry.schema.version {
            return Ok(Step::WaitingForCatalog);
        }
        table.apply_replayed(record.batch, offset.0)?;
        position.next = offset.next();
        inner.applied.store(position.next.0, Ordering::Release);
    }
    Ok(Step::Applied)
}

/// Whether the table's manifest says it is (or is being handed to) this
/// follower's shard.
async fn claimed_here(inner: &Inner, entry: &TableEntry) -> Result<bool> {
    let dir = layout::manifest_dir(&inner.ctx.config.cluster, entry.home(), entry.id);
    let state = crate::manifest::load(&inner.ctx.store, &dir, entry.id).await?;
    let here = inner.id.0;
    Ok((state.shard == Some(here) && state.handed_to().is_none())
        || state.handed_to() == Some(here))
}

/// Brings every table in line with its manifest on the store; whether
/// every manifest was read.
async fn sync_manifests(inner: &Inner) -> bool {
    let tables: Vec<Arc<Table>> = inner.tables.read().values().cloned().collect();
    let store = inner.ctx.store.clone();
    let cluster = inner.ctx.config.cluster.clone();
    let mut loads = futures::stream::iter(tables.into_iter().map(|t| {
        let store = store.clone();
        let dir = layout::manifest_dir(&cluster, t.meta().entry.home(), t.id());
        async move {
            let state = crate::manifest::load(&store, &dir, t.id()).await;
            (t, state)
        }
    }))
    .buffer_unordered(8);
    let mut all = true;
    while let Some((table, state)) = loads.next().await {
        let applied = inner.applied.load(Ordering::Acquire);
        let result = state.and_then(|s| table.follow(&s, applied));
        if let Err(e) = result {
            all = false;
            tracing::debug!(shard = %inner.id, table = %table.name(), error = %e,
                "a follower could not read its table's manifest; trying again");
        }
    }
    all
}
