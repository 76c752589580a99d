//! Strata's meta service.
//!
//! Position in the data flow: beside the data path. Instances register and
//! heartbeat here; the meta service keeps the cluster's metadata (nodes,
//! shards, tables, id allocators, procedures) in etcd, assigns shards to
//! instances and reassigns them when an instance dies. Reads and writes of
//! rows never pass through it.
//!
//! Everything stateful goes through the [`kv::KvStore`] contract, with an
//! etcd backend for real clusters and an in-memory backend for unit tests;
//! both pass the same [`kv::conformance`] suite.

pub mod balance;
mod error;
pub mod http;
pub mod kv;
pub mod model;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;

pub use error::{Error, Result};
