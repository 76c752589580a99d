//! The `strata` binary's library: configuration, opening the WAL and object
//! store ([`storage`]), and the start-up of an instance, the same way for
//! both roles ([`bootstrap`]; [`standalone::run`], `bootstrap::run_cluster`).
//!
//! An instance is layered in crates, each with one job (see
//! `ARCHITECTURE.md`): the protocol adapters (`strata-protocols`) over the
//! front end (`strata-frontend`: SQL, the one write path, the Prometheus
//! layout), over PromQL evaluation (`strata-promql`) and the cluster
//! runtime and routing seam (`strata-cluster`), over the engine
//! (`strata-engine`). They are re-exported here under the paths tools and
//! tests use.

pub mod bootstrap;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod standalone;
pub mod storage;

/// Cluster mode on an instance and the routing seam (crate `strata-cluster`).
pub use strata_cluster as cluster;
pub use strata_cluster::route;
/// The front end (crate `strata-frontend`).
pub use strata_frontend::{config, error, limits, prom, prom_read, sql, writer};
/// The protocol adapters (crate `strata-protocols`).
pub use strata_protocols::{grpc, http, influx, metrics, pg, prom_api};
