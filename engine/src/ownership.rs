//! Who may write a shard: the epoch of this process's claim on it, and
//! whether a newer owner has been seen since.
//!
//! Every durable write of a shard is guarded by its epoch: WAL records carry
//! it (the WAL refuses an append once a record of a higher epoch follows
//! ours), and every manifest edit carries it (a writer whose conditional put
//! loses to an edit of a higher epoch stops). Once a newer owner is seen by
//! either path, the shard is *fenced* for good: it commits nothing more and
//! is closed without a flush. See `docs/rfcs/0004-fencing.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use strata_sst::ShardId;

use crate::{metrics, Error, Result};

/// One process's claim on one shard.
#[derive(Debug)]
pub struct Ownership {
    pub shard: ShardId,
    /// The epoch this process writes under (the shard lock's).
    pub epoch: u64,
    /// The epoch of the owner that replaced this one; 0 while none was seen.
    fenced_by: AtomicU64,
    /// Set when this process closed the shard: tasks still running (a
    /// flush retrying in the background) commit nothing more.
    relinquished: AtomicBool,
}

impl Ownership {
    pub fn new(shard: ShardId, epoch: u64) -> Self {
        Self {
            shard,
            epoch,
            fenced_by: AtomicU64::new(0),
            relinquished: AtomicBool::new(false),
        }
    }

    /// Records that an owner with epoch `by` took over. Idempotent; an epoch
    /// not above ours is ignored.
    pub fn fence(&self, by: u64) {
        if by <= self.epoch {
            return;
        }
        if self.fenced_by.fetch_max(by, Ordering::AcqRel) == 0 {
            metrics::SHARDS_FENCED.inc();
            tracing::warn!(shard = %self.shard, epoch = self.epoch, by,
                "a newer owner took this shard over; it commits nothing more");
        }
    }

    /// The epoch of the newer owner, once one was seen.
    pub fn fenced_by(&self) -> Option<u64> {
        match self.fenced_by.load(Ordering::Acquire) {
            0 => None,
            by => Some(by),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced_by().is_some()
    }

    /// Marks the shard closed by this process.
    pub fn relinquish(&self) {
        self.relinquished.store(true, Ordering::Release);
    }

    /// Whether this process may no longer write the shard (fenced or
    /// closed).
    pub fn is_over(&self) -> bool {
        self.is_fenced() || self.relinquished.load(Ordering::Acquire)
    }

    /// Fails with [`Error::ShardFenced`] once fenced, and with
    /// [`Error::ShardNotOpen`] once closed here.
    pub fn check(&self) -> Result<()> {
        match self.fenced_by() {
            Some(by) => Err(self.fenced_error(by)),
            None if self.relinquished.load(Ordering::Acquire) => {
                Err(Error::ShardNotOpen { shard: self.shard })
            }
            None => Ok(()),
        }
    }

    pub fn fenced_error(&self, by: u64) -> Error {
        Error::ShardFenced {
            shard: self.shard,
            epoch: self.epoch,
            by,
        }
    }
}
