//! Strata's table engine.
//!
//! Position in the data flow: the server hands this crate validated Arrow
//! batches; the engine appends them to the shard's WAL (through
//! `strata_wal::Wal`), applies them to columnar memtables and acknowledges.
//! Memtables flush to Parquet SSTs (through `strata_sst`) in the object store,
//! and each flush commits a manifest edit recording the new SSTs and the WAL
//! offset below which the table's rows are durable in SSTs. On open, each
//! shard replays its WAL above the smallest flushed offset of its tables.
//! Queries reach the engine through [`provider::StrataTableProvider`], a
//! DataFusion `TableProvider` that merges memtables and SSTs.
//!
//! Main types: [`Engine`] (catalog plus shards), [`shard::Shard`] (one WAL
//! region, group commit, replay), [`table::Table`] (schema, version,
//! flush), [`memtable::Memtable`], [`manifest::Manifest`].

pub mod cache;
pub mod catalog;
pub mod codec;
pub mod compaction;
pub mod context;
mod engine;
mod error;
pub mod failpoint;
pub mod follower;
pub mod gc;
pub mod last_values;
pub mod manifest;
pub mod memory;
pub mod memtable;
pub mod metrics;
pub mod options;
pub mod ownership;
pub mod partition;
pub mod provider;
pub mod schema;
pub mod shard;
pub mod sort;
pub mod table;
pub mod table_meta;

#[cfg(test)]
mod tests;

pub use context::EngineConfig;
pub use engine::{AlterTable, ClusterCatalog, Engine, Located, STANDALONE_EPOCH, STANDALONE_SHARD};

/// Types used by the engine's public API.
pub mod engine_api {
    pub use crate::engine::AlterTable;
}
pub use error::{Error, ErrorKind, Result};
