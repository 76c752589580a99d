//! The protocol adapters of a Strata instance. Each decodes its requests,
//! bounds what one may cost, hands the work to the front end (crate
//! `strata-frontend`) and renders the answer as its clients expect:
//!
//! - [`grpc`]: HoraeDB's `StorageService` (SQL queries, `Write`, the
//!   `WriteArrow` forwards between instances, route lookups);
//! - [`http`]: the HTTP routes: SQL, InfluxDB line protocol ([`influx`]),
//!   Prometheus remote write and read, the PromQL query endpoints (crate
//!   `strata-promql`) and the metadata API ([`prom_api`]), health and
//!   metrics;
//! - [`pg`]: PostgreSQL's wire protocol;
//! - [`metrics`]: the instance's Prometheus metrics.
//!
//! Adapters do not import each other, except that the HTTP router mounts
//! line protocol and Prometheus, and HTTP's SQL and write routes run
//! through the same `StorageServiceImpl` as gRPC.

pub mod grpc;
pub mod http;
pub mod influx;
pub mod metrics;
pub mod pg;
pub mod prom_api;

// The front end's modules, under the paths the adapters use.
use strata_cluster::route;
use strata_frontend::{config, error, prom, prom_read, sql, writer};
