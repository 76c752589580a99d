//! The global write buffer: how many bytes all memtables hold, with a soft
//! and a hard limit (HoraeDB #1397, #843).
//!
//! - Above the **soft** limit, the engine flushes the largest memtables.
//! - At the **hard** limit, writes wait for flushes to free memory, up to
//!   `write_stall_timeout`; then they fail with a retryable
//!   [`Error::WriteStalled`]. Memory therefore stays bounded however fast
//!   clients write.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{metrics, Error, Result};

#[derive(Debug)]
pub struct WriteBufferManager {
    used: AtomicUsize,
    soft: usize,
    hard: usize,
    stall_timeout: Duration,
    freed: Notify,
}

impl WriteBufferManager {
    pub fn new(soft: usize, hard: usize, stall_timeout: Duration) -> Self {
        Self {
            used: AtomicUsize::new(0),
            soft: soft.min(hard),
            hard,
            stall_timeout,
            freed: Notify::new(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn soft_limit(&self) -> usize {
        self.soft
    }

    pub fn hard_limit(&self) -> usize {
        self.hard
    }

    pub fn over_soft(&self) -> bool {
        self.used() > self.soft
    }

    /// Records memory taken by memtable inserts.
    pub fn add(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        metrics::MEMTABLE_BYTES.set(now as i64);
    }

    /// Records memory given back by a flushed or dropped memtable.
    pub fn release(&self, bytes: usize) {
        let mut current = self.used.load(Ordering::Acquire);
        loop {
            let next = current.saturating_sub(bytes);
            match self
                .used
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    metrics::MEMTABLE_BYTES.set(next as i64);
                    break;
                }
                Err(actual) => current = actual,
            }
        }
        self.freed.notify_waiters();
    }

    /// Waits until a write may enter: immediately below the hard limit,
    /// otherwise until flushes free memory or the stall timeout passes.
    pub async fn admit(&self, table: &str) -> Result<()> {
        if self.used() < self.hard {
            return Ok(());
        }
        metrics::WRITE_STALLS.inc();
        let started = Instant::now();
        let deadline = started + self.stall_timeout;
        loop {
            let freed = self.freed.notified();
            if self.used() < self.hard {
                metrics::WRITE_STALL_SECONDS.inc_by(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::WRITE_STALL_SECONDS.inc_by(started.elapsed().as_secs_f64());
                metrics::WRITE_STALL_TIMEOUTS.inc();
                return Err(Error::WriteStalled {
                    table: table.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                    used: self.used(),
                    limit: self.hard,
                });
            }
            // Flushes notify on release; the timeout also re-checks now and
            // then in case a release raced with registration.
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, freed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn writes_wait_at_the_hard_limit_then_fail_or_proceed() {
        let m = Arc::new(WriteBufferManager::new(50, 100, Duration::from_millis(200)));
        m.add(60);
        assert!(m.over_soft());
        m.admit("t").await.unwrap_or_else(|e| panic!("{e}"));
        m.add(50);
        let err = m.admit("t").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");

        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.admit("t").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        m.release(80);
        assert!(waiter.await.unwrap_or_else(|e| panic!("{e}")).is_ok());
        assert_eq!(m.used(), 30);
    }
}
