//! The key-value contract the meta service stores everything through.
//!
//! Semantics follow etcd, so the etcd backend is a thin mapping:
//! - every change bumps one cluster-wide **revision**; a key records the
//!   revision of its last change (`mod_revision`) and how often it changed
//!   since it was created (`version`, 0 when absent);
//! - [`KvStore::txn`] applies its operations atomically when all its
//!   comparisons hold, and not at all otherwise;
//! - a key may be attached to a **lease**: when the lease expires or is
//!   revoked, its keys are deleted. Leases back node liveness, leader
//!   election and shard locks.

pub mod conformance;
pub mod etcd;
pub mod memory;

use std::{fmt::Debug, time::Duration};

use async_trait::async_trait;

use crate::Result;

/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// Changes since the key was created (1 after creation).
    pub version: i64,
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key does not exist.
    Absent(Vec<u8>),
    /// The key's last change was at this revision.
    ModRevision(Vec<u8>, i64),
    /// The key holds exactly this value.
    Value(Vec<u8>, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every comparison held (and the operations were applied).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// A strongly consistent key-value store with transactions and leases.
///
/// Guarantees (checked by [`conformance`]): linearizable reads and writes;
/// atomic transactions; a key attached to a lease disappears when the lease
/// expires (after its TTL without keep-alive) or is revoked. Every method
/// may fail with a retryable error while the store is unreachable; a write
/// whose future is dropped may or may not have been applied.
#[async_trait]
pub trait KvStore: Send + Sync + Debug {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, in key order.
    async fn range(&self, prefix: &[u8]) -> Result<Vec<KeyValue>>;

    /// Writes `value`; returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<i64>;

    /// Deletes the key; returns whether it existed.
    async fn delete(&self, key: &[u8]) -> Result<bool>;

    /// Applies `ops` atomically if every comparison holds.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult>;

    /// A new lease that expires after `ttl` without keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease for another TTL. Fails with `LeaseExpired` when it is
    /// gone: its keys are deleted already.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
}
