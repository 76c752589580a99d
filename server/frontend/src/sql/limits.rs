//! Query limits: a memory pool per query, a timeout, and a bound on the
//! queries that run at once (`[query]` in the configuration; see
//! docs/operations/limits.md).
//!
//! A query is one client request of any query protocol. Its entry point
//! calls [`QueryEngine::limited`](super::QueryEngine::limited), which waits
//! for a slot (`max_concurrent`, at most `queue_timeout`), gives the request
//! a DataFusion memory pool of its own (`memory_limit`, shared by every
//! statement the request runs, e.g. the several reads of one PromQL query),
//! and cancels it after `timeout`. Requests another instance forwards as
//! part of its own query (admitted there) wait for a slot of a second set
//! of `max_concurrent`, so that they never wait behind the queries that wait
//! for them (a forwarded request is never forwarded again), and get a pool
//! and the timeout of their own. The flag is the client's to set, so a
//! client that sets it only reaches that second set: the instance runs at
//! most `2 × max_concurrent` requests whatever clients send.

use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryPool, TrackConsumersPool, UnboundedMemoryPool,
};
use strata_engine::ErrorKind;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::QueryConfig,
    error::{Error, Result},
};

/// The limits of one instance, shared by every request.
#[derive(Debug)]
pub struct QueryLimits {
    /// Bytes per query; `None`: unbounded.
    memory_limit: Option<usize>,
    timeout: Option<Duration>,
    /// Slots for queries running at once; `None`: unbounded.
    slots: Option<Arc<Semaphore>>,
    /// As many slots again, for requests forwarded by other instances.
    forwarded_slots: Option<Arc<Semaphore>>,
    max_concurrent: usize,
    queue_timeout: Duration,
}

impl QueryLimits {
    pub fn new(config: &QueryConfig) -> Self {
        Self {
            memory_limit: (config.memory_limit > 0)
                .then(|| usize::try_from(config.memory_limit).unwrap_or(usize::MAX)),
            timeout: (!config.timeout.is_zero()).then_some(config.timeout),
            slots: (config.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent))),
            forwarded_slots: (config.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent))),
            max_concurrent: config.max_concurrent,
            queue_timeout: config.queue_timeout,
        }
    }

    /// No limit at all (embedded uses and tests).
    pub fn unlimited() -> Self {
        Self {
            memory_limit: None,
            timeout: None,
            slots: None,
            forwarded_slots: None,
            max_concurrent: 0,
            queue_timeout: Duration::ZERO,
        }
    }

    /// A memory pool for one query. When it is exhausted, the error names
    /// the largest consumers.
    pub(crate) fn pool(&self) -> Arc<dyn MemoryPool> {
        match self.memory_limit {
            Some(limit) => Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(limit),
                NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
            )),
            None => Arc::new(UnboundedMemoryPool::default()),
        }
    }

    /// Waits for a slot (forwarded requests for one of their own set);
    /// `Overloaded` when none frees up in time.
    pub(crate) async fn admit(&self, forwarded: bool) -> Result<Option<OwnedSemaphorePermit>> {
        let slots = if forwarded {
            &self.forwarded_slots
        } else {
            &self.slots
        };
        let Some(slots) = slots.as_ref() else {
            return Ok(None);
        };
        let which = if forwarded { " forwarded" } else { "" };
        match tokio::time::timeout(self.queue_timeout, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(_)) => Err(Error::Internal("the query slots are closed".to_string())),
            Err(_) => Err(Error::Query {
                kind: ErrorKind::Overloaded,
                message: format!(
                    "Overloaded: {}{which} queries are running and none finished within {} \
                     (query.max_concurrent, query.queue_timeout); retry later",
                    self.max_concurrent,
                    humantime::format_duration(self.queue_timeout)
                ),
            }),
        }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The error of a query cancelled at its timeout.
    pub(crate) fn timed_out(&self, after: Duration) -> Error {
        Error::Query {
            kind: ErrorKind::Timeout,
            message: format!(
                "Timeout: the query ran longer than {} (query.timeout) and was cancelled",
                humantime::format_duration(after)
            ),
        }
    }

    /// Names the setting in a memory error.
    pub(crate) fn explain(&self, e: Error) -> Error {
        match (e.kind(), self.memory_limit) {
            (ErrorKind::ResourcesExhausted, Some(limit)) if !e.to_string().contains("query.memory_limit") => {
                Error::Query {
                    kind: ErrorKind::ResourcesExhausted,
                    message: format!(
                        "ResourcesExhausted: the query needs more memory than query.memory_limit ({limit} bytes) allows: {e}"
                    ),
                }
            }
            _ => e,
        }
    }
}

/// What an admitted request holds while it runs: its slot and its memory
/// pool.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) pool: Arc<dyn MemoryPool>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub(crate) fn new(pool: Arc<dyn MemoryPool>, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self { pool, _slot: slot }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(max_concurrent: usize, queue_timeout: Duration) -> QueryConfig {
        QueryConfig {
            memory_limit: 1024,
            max_concurrent,
            queue_timeout,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_instance_refuses_after_the_queue_timeout() {
        let limits = QueryLimits::new(&config(1, Duration::from_millis(50)));
        let held = limits.admit(false).await.unwrap();
        assert!(held.is_some());
        let err = limits.admit(false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        assert!(err.is_retryable());
        // Forwarded parts of a query admitted elsewhere wait for a slot of
        // their own set, not behind the queries that wait for them ...
        let forwarded = limits.admit(true).await.unwrap();
        assert!(forwarded.is_some());
        // ... which is bounded too: a client that marks its requests
        // forwarded does not get past the limit.
        let err = limits.admit(true).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        assert!(err.to_string().contains("1 forwarded queries"), "{err}");
        drop(held);
        assert!(limits.admit(false).await.unwrap().is_some());
        drop(forwarded);
        assert!(limits.admit(true).await.unwrap().is_some());
    }

    #[test]
    fn the_pool_refuses_beyond_the_limit() {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let limits = QueryLimits::new(&config(1, Duration::from_millis(50)));
        let pool = limits.pool();
        let r = MemoryConsumer::new("test").register(&pool);
        assert!(r.try_grow(1000).is_ok());
        let err = Error::from(r.try_grow(1000).unwrap_err());
        assert_eq!(err.kind(), ErrorKind::ResourcesExhausted);
        assert_eq!(err.status_code(), 429);
        let err = limits.explain(err);
        assert!(
            err.to_string().contains("query.memory_limit (1024 bytes)"),
            "{err}"
        );
    }
}
