//! Reconciliation: opening the shards meta assigns here (lock, WAL open,
//! replay) and closing the ones it moved away or another node fenced.

use super::{meta_client::*, *};
use std::{
    collections::BTreeSet,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use strata_proto::meta::ShardLockRequest;
use strata_sst::ShardId;
use strata_wal::Epoch;

impl Cluster {
    pub(super) async fn reconcile(self: &Arc<Self>) {
        // A compute instance holds no shard, whatever it is told.
        if self.superseded.load(Ordering::Acquire) || self.compute {
            return;
        }
        let assignments = self.assignments();
        let open: BTreeSet<u64> = self.engine.shards().iter().map(|s| s.id().0).collect();
        let followed: BTreeSet<u64> = self.engine.followers().iter().map(|f| f.id().0).collect();
        // Meta lists every shard there is: one open or followed here and
        // not listed was retired by a merge (its tables are another
        // shard's). Not before meta's first answer.
        let listed: BTreeSet<u64> = assignments.iter().map(|a| a.shard).collect();
        // (Not while meta rebuilds its state from the instances' reports:
        // a shard a split created is listed again once they are in.)
        if !listed.is_empty() && !self.report_tables.load(Ordering::Relaxed) {
            for shard in open.difference(&listed) {
                tracing::info!(shard, "the shard was retired; closing it");
                self.spawn_busy(*shard, |me, shard| async move { me.hand_back(shard).await });
            }
            for shard in followed.difference(&listed) {
                self.spawn_busy(*shard, |me, shard| async move {
                    me.engine.close_follower(ShardId(shard)).await;
                    Ok(())
                });
            }
        }
        for a in &assignments {
            let mine = a.leader == self.node_id;
            let follow = !mine && a.followers.iter().any(|f| *f == self.node_id);
            if follow && !open.contains(&a.shard) && !followed.contains(&a.shard) {
                self.spawn_busy(
                    a.shard,
                    |me, shard| async move { me.open_follower(shard).await },
                );
            } else if !follow && !mine && followed.contains(&a.shard) {
                self.spawn_busy(a.shard, |me, shard| async move {
                    me.engine.close_follower(ShardId(shard)).await;
                    Ok(())
                });
            }
            if mine && !open.contains(&a.shard) {
                if self
                    .open_backoff
                    .lock()
                    .get(&a.shard)
                    .is_some_and(|(at, _)| std::time::Instant::now() < *at)
                {
                    continue;
                }
                self.spawn_busy(a.shard, |me, shard| async move {
                    let result = me.clone().open_shard(shard).await;
                    me.note_open(shard, result.is_ok());
                    result
                });
            } else if !mine && !open.contains(&a.shard) {
                self.engine.discard_interrupted_open(ShardId(a.shard));
                self.open_backoff.lock().remove(&a.shard);
                self.forget_wal_loss(a.shard);
            } else if !mine && open.contains(&a.shard) {
                self.spawn_busy(
                    a.shard,
                    |me, shard| async move { me.hand_back(shard).await },
                );
            } else if mine && open.contains(&a.shard) {
                // Confirm the lock: after a lease expiry (meta or etcd away)
                // it is re-taken; if another node took it, stop at once.
                match self.acquire(a.shard).await {
                    Ok(Some(epoch))
                        if self
                            .engine
                            .shard(ShardId(a.shard))
                            .is_some_and(|s| s.epoch().0 != epoch) =>
                    {
                        // The lease expired meanwhile and the lock was taken
                        // again under a new epoch: what runs under the old
                        // one may have been fenced; reopen under the new one.
                        tracing::warn!(
                            shard = a.shard,
                            epoch,
                            "the shard's lock was re-taken under a new epoch; reopening"
                        );
                        self.spawn_busy(a.shard, |me, shard| async move {
                            me.engine
                                .close_shard(ShardId(shard), false)
                                .await
                                .map(|_| ())
                        });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(shard = a.shard, "lost the shard's lock; closing it");
                        self.spawn_busy(a.shard, |me, shard| async move {
                            me.close_shard(shard, false).await
                        });
                    }
                    Err(e) => tracing::debug!(shard = a.shard, error = %e, "confirming a lock"),
                }
            }
        }
    }

    /// Forgets a WAL loss this instance found on `shard` when it tried to
    /// open it (`/health` reports it as DEGRADED): the shard is another
    /// instance's now, which finds the loss itself if the WAL still has it.
    pub(super) fn forget_wal_loss(&self, shard: u64) {
        strata_wal::loss::clear(&format!("shard {shard}"));
        for key in self.wal.loss_keys(ShardId(shard)) {
            strata_wal::loss::clear(&key);
        }
    }

    /// Records how an open of `shard` went: after a failure the next try
    /// waits, twice as long each time (1 s to 30 s); an interrupted replay
    /// goes on from where it stopped.
    pub(super) fn note_open(&self, shard: u64, ok: bool) {
        let mut backoff = self.open_backoff.lock();
        if ok {
            backoff.remove(&shard);
            return;
        }
        let delay = backoff
            .get(&shard)
            .map_or(Duration::from_secs(1), |(_, d)| {
                (*d * 2).min(Duration::from_secs(30))
            });
        tracing::info!(
            shard,
            retry_in_ms = delay.as_millis() as u64,
            "shard open failed; backing off"
        );
        backoff.insert(shard, (std::time::Instant::now() + delay, delay));
    }

    pub(super) fn spawn_busy<F, Fut>(self: &Arc<Self>, shard: u64, f: F)
    where
        F: FnOnce(Arc<Self>, u64) -> Fut,
        Fut: std::future::Future<Output = EngineResult<()>> + Send + 'static,
    {
        if !self.busy.lock().insert(shard) {
            return;
        }
        let me = self.clone();
        let fut = f(me.clone(), shard);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(shard, error = %e, "shard transition failed; retrying on the next heartbeat");
            }
            me.busy.lock().remove(&shard);
        });
    }

    /// Takes (or confirms) a shard's lock; `None` when refused.
    pub(super) async fn acquire(&self, shard: u64) -> EngineResult<Option<u64>> {
        let min_epoch = self.min_epoch.lock().get(&shard).copied().unwrap_or(0);
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch,
            instance_id: self.instance_id.clone(),
            confirm_only: false,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_shard(req).await }
            })
            .await?;
        if is_superseded(resp.header.as_ref()) {
            return Ok(None);
        }
        check(
            resp.header.as_ref(),
            || strata_engine::Error::Catalog("unexpected 404".into()),
            || {
                strata_engine::Error::MetaUnavailable(
                    resp.header
                        .as_ref()
                        .map(|h| h.error.clone())
                        .unwrap_or_default(),
                )
            },
        )?;
        Ok(resp.granted.then_some(resp.epoch))
    }

    /// Whether this process holds the shard's lock now (never takes it).
    pub(super) async fn confirm(&self, shard: u64) -> EngineResult<bool> {
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch: 0,
            instance_id: self.instance_id.clone(),
            confirm_only: true,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_shard(req).await }
            })
            .await?;
        if is_superseded(resp.header.as_ref()) {
            return Ok(false);
        }
        check_ok(resp.header.as_ref())?;
        Ok(resp.granted)
    }

    /// Hands a shard meta moved elsewhere back: flushes it first (so the
    /// next owner replays little) only while this process still holds its
    /// lock; a shard whose lock was lost (a pause past the lease, a
    /// partition) closes without writing anything. The manifest's epoch
    /// check refuses a flush that races a takeover anyway.
    pub(super) async fn hand_back(self: Arc<Self>, shard: u64) -> EngineResult<()> {
        let held = match self.confirm(shard).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot confirm the shard's lock; closing without a flush");
                false
            }
        };
        if !held {
            tracing::warn!(
                shard,
                "the shard was moved and its lock is gone; closing it without a flush"
            );
        }
        self.close_shard(shard, held).await
    }

    /// Meta said a newer process serves this node id: close every shard
    /// without writing anything more.
    pub(super) async fn supersede(self: &Arc<Self>) {
        if self.superseded.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(node = %self.node_id, instance = %self.instance_id,
            "a newer process took this node id over; closing every shard without a flush");
        for s in self.engine.shards() {
            s.owner().fence(u64::MAX);
            if let Err(e) = self.engine.close_shard(s.id(), false).await {
                tracing::warn!(shard = %s.id(), error = %e, "closing a superseded shard");
            }
        }
        for f in self.engine.followers() {
            self.engine.close_follower(f.id()).await;
        }
    }

    /// Opens a read-only follower of a shard led elsewhere. It takes no
    /// lock: it writes nothing.
    pub(super) async fn open_follower(self: Arc<Self>, shard: u64) -> EngineResult<()> {
        let started = std::time::Instant::now();
        let wal = self.wal.open(ShardId(shard)).await?;
        let f = self.engine.open_follower(ShardId(shard), wal).await?;
        tracing::info!(
            shard,
            tables = f.tables().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "following shard"
        );
        Ok(())
    }

    pub(super) async fn open_shard(self: Arc<Self>, shard: u64) -> EngineResult<()> {
        let Some(epoch) = self.acquire(shard).await? else {
            tracing::debug!(shard, "the shard's lock is still held elsewhere; waiting");
            return Ok(());
        };
        let started = std::time::Instant::now();
        // Every record in the WAL was written to a table meta had created
        // before we took the lock: load the catalog as of now, so that no
        // record is skipped as one of an unknown table (a table created
        // just before a failover, which the heartbeat had not brought yet).
        if let Err(e) = self.refresh_catalog().await {
            self.release(shard).await;
            return Err(e);
        }
        let wal = match self.wal.open(ShardId(shard)).await {
            Ok(wal) => wal,
            Err(e) => {
                // Every failure after the lock was taken releases it: a
                // lock kept by a live process (its lease renewed by its
                // heartbeats) would keep the shard from the instance meta
                // gives it next, for good (seen in a chaos run: the topic
                // could not be created while the broker was stalled).
                self.release(shard).await;
                return Err(e);
            }
        };
        // A follower here is promoted: it has the shard's data already and
        // reads only the WAL it had not applied.
        let promoted = self.engine.follower(ShardId(shard)).is_some();
        match self
            .engine
            .promote_follower(ShardId(shard), wal, Epoch(epoch))
            .await
        {
            Ok(s) => {
                tracing::info!(
                    shard,
                    epoch,
                    promoted,
                    tables = s.tables().len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "opened shard"
                );
                Ok(())
            }
            Err(strata_engine::Error::EpochBehind { highest, .. }) => {
                // The WAL saw a higher epoch than meta handed out (meta lost
                // its state): ask for one above it next time.
                self.min_epoch.lock().insert(shard, highest + 1);
                self.release(shard).await;
                Err(strata_engine::Error::EpochBehind {
                    shard: ShardId(shard),
                    epoch,
                    highest,
                })
            }
            Err(e) => {
                self.release(shard).await;
                Err(e)
            }
        }
    }

    pub(super) async fn close_shard(self: Arc<Self>, shard: u64, flush: bool) -> EngineResult<()> {
        let result = self.engine.close_shard(ShardId(shard), flush).await;
        if let Err(e) = &result {
            tracing::warn!(shard, error = %e, "flushing on close failed; the WAL keeps the rows");
        }
        // Release whether or not it flushed: a lock left held by a live
        // process (its lease kept alive) would keep the shard from its next
        // owner for good. Meta releases it only if this process holds it.
        self.release(shard).await;
        Ok(())
    }

    pub(super) async fn release(&self, shard: u64) {
        let req = ShardLockRequest {
            node_id: self.node_id.clone(),
            shard,
            min_epoch: 0,
            instance_id: self.instance_id.clone(),
            confirm_only: false,
        };
        if let Err(e) = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_shard(req).await }
            })
            .await
        {
            tracing::warn!(shard, error = %e, "releasing a shard lock failed; it expires with the lease");
        }
    }

    /// Closes shards whose WAL fenced them (another leader wrote).
    pub(super) async fn close_fenced(self: &Arc<Self>) {
        for s in self.engine.shards() {
            if s.is_fenced() {
                tracing::warn!(shard = %s.id(), "the shard was fenced by a newer leader; closing it");
                let id = s.id().0;
                self.spawn_busy(
                    id,
                    |me, shard| async move { me.close_shard(shard, false).await },
                );
            }
        }
    }
}
