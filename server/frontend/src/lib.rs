//! The front end of a Strata instance: what every protocol adapter of
//! `strata-server` calls, and what runs a request once it is decoded.
//!
//! - [`sql`]: the `QueryEngine`: SQL parsing (Strata's DDL), planning and
//!   execution with DataFusion, the catalogs and `system` tables, admission
//!   and memory limits, and remote tables read from their owner.
//! - [`writer`]: the one write path: rows of any protocol, as Arrow
//!   batches, written to local tables or forwarded to their leader in one
//!   format.
//! - [`prom`] and [`prom_read`]: the Prometheus storage layout (RFC 0003):
//!   remote write decoded straight into its tables' rows, and the samples
//!   that remote read and PromQL (`strata_promql::SampleSource`) read back.
//! - [`config`], [`error`] and [`limits`]: the instance's configuration, its
//!   errors and how clients see them, and the bounds on one SQL request.
//!
//! Below it: the routing seam and cluster runtime (`strata-cluster`) and the
//! engine (`strata-engine`).

pub mod config;
pub mod error;
pub mod limits;
pub mod prom;
pub mod prom_read;
pub mod sql;
pub mod writer;

pub use strata_cluster::route;
