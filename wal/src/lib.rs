//! The write-ahead log contract and its backends.
//!
//! Position in the data flow: the engine's shard writer encodes each write as
//! one record, appends it here, and acknowledges the client only after
//! [`Wal::append`] returns. Recovery reads the log back from the smallest
//! offset that is not yet in an SST; after a flush the engine truncates the
//! log below that offset. Nothing above this crate touches files or brokers
//! directly: the engine and server see only `dyn Wal`.
//!
//! One [`Wal`] is one *region*: an ordered log that belongs to one shard.
//! Backends:
//! - [`local::LocalWal`]: segment files on local disk, CRC per record,
//!   group commit with fsync, torn-tail truncation on reopen.
//! - [`memory::MemoryWal`]: in memory, for unit tests.
//!
//! Every backend passes the same [`conformance`] suite.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use bytes::Bytes;

pub mod conformance;
mod error;
pub mod fence;
pub mod kafka;
pub mod local;
pub mod loss;
pub mod memory;

pub use error::{Error, Result};

/// The position of a record in one WAL region. Offsets are assigned by the
/// WAL and strictly increase in append order. The local WAL numbers records
/// 0, 1, 2, …; the Kafka WAL uses broker offsets, which may have gaps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalOffset(pub u64);

impl WalOffset {
    /// The offset right after this one.
    pub fn next(self) -> WalOffset {
        WalOffset(self.0 + 1)
    }
}

impl Debug for WalOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalOffset({})", self.0)
    }
}

impl fmt::Display for WalOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of the writer that appended a record: in cluster mode the
/// revision of the shard's lease lock, in standalone mode a constant. Readers
/// use it to fence off the late writes of a stale leader (see [`fence`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Epoch(pub u64);

/// One record read back from the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WalEntry {
    pub offset: WalOffset,
    pub epoch: Epoch,
    pub payload: Bytes,
}

/// The offsets given to one appended batch, one per record, increasing.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AppendResult {
    pub offsets: Vec<WalOffset>,
}

impl AppendResult {
    pub fn first(&self) -> Option<WalOffset> {
        self.offsets.first().copied()
    }

    pub fn last(&self) -> Option<WalOffset> {
        self.offsets.last().copied()
    }
}

/// One region of the write-ahead log.
///
/// Guarantees every backend gives, checked by [`conformance`]:
/// - **Durability**: when `append` returns `Ok`, its records survive a crash
///   of the process (local: fsynced; Kafka: acknowledged by all in-sync
///   replicas).
/// - **Order**: the records of one `append` get increasing offsets in the
///   order given, and all of them are above every offset handed out before.
///   Concurrent `append`s are serialised; offsets never repeat.
/// - **Atomic records**: a record is read back whole or not at all, however
///   large (a backend may split it internally).
/// - **Cancellation**: dropping an `append` future before it completes leaves
///   the outcome unknown: the records may or may not be durable and readable
///   later. It never leaves a partial record visible.
/// - **Failure**: when `append` returns `Err`, none of its records are
///   acknowledged; a later reopen may still see some of them (a write that
///   reached disk before the fsync failed), so callers must not assume they
///   are absent.
#[async_trait]
pub trait Wal: Send + Sync + Debug {
    /// Appends `payloads` as consecutive records written under `epoch`, and
    /// returns once all of them are durable.
    async fn append(&self, epoch: Epoch, payloads: Vec<Bytes>) -> Result<AppendResult>;

    /// Reads records with offset `>= from`, in offset order, stopping after
    /// about `max_bytes` of payload (always at least one record when any is
    /// available). Returns an empty vector at the end of the log. Records
    /// below the truncation watermark are never returned: reading from below
    /// it starts at the watermark.
    async fn read(&self, from: WalOffset, max_bytes: usize) -> Result<Vec<WalEntry>>;

    /// Declares that records below `below` are no longer needed, and persists
    /// that watermark. Afterwards, and after any reopen, no read returns them.
    /// Space is reclaimed where the backend can do so. Idempotent; a watermark
    /// lower than the current one is ignored.
    async fn truncate(&self, below: WalOffset) -> Result<()>;

    /// A bound above every offset appended so far: the next record's offset
    /// will be at least this.
    fn next_offset(&self) -> WalOffset;

    /// The truncation watermark: the lowest offset reads may return.
    fn low_watermark(&self) -> WalOffset;

    /// The end of the log as the backend stores it now, including records
    /// other processes appended (a follower measures its lag by it). The
    /// default is [`Self::next_offset`], exact for backends one process
    /// owns.
    async fn end_offset(&self) -> Result<WalOffset> {
        Ok(self.next_offset())
    }
}
