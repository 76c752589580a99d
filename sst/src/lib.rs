//! Strata's SST format and object-store layout.
//!
//! Position in the data flow: a memtable flush hands this crate rows that are
//! already sorted by primary key and deduplicated; they become one Parquet
//! file per time segment, uploaded through `object_store` (local filesystem
//! in standalone mode, S3 in cluster mode). Queries read SSTs back through
//! DataFusion's Parquet scan, which uses the statistics, page index and bloom
//! filters written here.
//!
//! The format (see [`writer`]): Parquet, zstd, dictionary-encoded tag columns
//! with bloom filters, page-level statistics, rows sorted by
//! (tags…, timestamp), an extra `__seq` column holding each row's write
//! sequence, and a `strata.sst` key-value entry in the footer with
//! [`SstInfo`] as JSON.

pub mod disk_cache;
pub mod durable;
mod error;
pub mod fault;
pub mod ids;
pub mod layout;
pub mod meta;
pub mod reader;
pub mod s3;
mod stats;
pub mod store_conformance;
pub mod writer;

pub use error::{Error, Result};
pub use ids::{ShardId, SstId, TableId};
pub use meta::{ColumnStats, SstInfo, TimeRange};

/// The name of the hidden column that holds each row's write sequence.
pub const SEQ_COLUMN: &str = "__seq";

/// The footer key under which [`SstInfo`] is stored as JSON.
pub const SST_INFO_KEY: &str = "strata.sst";
