//! Strata's wire protocols: protobuf messages and tonic services.
//!
//! This crate sits at the bottom of the dependency graph. `storage` is the
//! client-facing `StorageService`, wire-compatible with HoraeDB's for Route,
//! Write, SqlQuery and StreamSqlQuery; `common` holds the response header and
//! error kinds. Strata's extensions use field numbers from 10 upwards.

#![allow(clippy::all, rust_2018_idioms, missing_docs)]

/// Shared response header and error kinds.
pub mod common {
    tonic::include_proto!("common");
}

/// The client-facing storage service.
pub mod storage {
    tonic::include_proto!("storage");
}

/// The meta service: heartbeats, shard locks, DDL and routes.
pub mod meta {
    tonic::include_proto!("strata.meta");
}
