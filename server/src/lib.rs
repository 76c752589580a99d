//! The Strata instance: protocols, the SQL front end, and the `strata`
//! binary's subcommands.
//!
//! Position in the data flow: the top. Requests arrive over gRPC
//! ([`grpc`], HoraeDB-compatible `StorageService`) or HTTP ([`http`]); SQL is
//! parsed and planned by [`sql`] (Strata's DDL here, queries by DataFusion);
//! rows are handed to `strata_engine`, which owns the WAL, memtables and SSTs.

pub mod bootstrap;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod grpc;
pub mod http;
pub mod influx;
pub mod limits;
pub mod metrics;
pub mod pg;
pub mod prom;
pub mod prom_api;
pub mod prom_read;
pub mod promql;
pub mod sql;
pub mod standalone;
pub mod storage;
mod writer;

/// Cluster mode on an instance and the routing seam (crate `strata-cluster`).
pub use strata_cluster as cluster;
pub use strata_cluster::route;
