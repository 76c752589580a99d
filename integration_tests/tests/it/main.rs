//! End-to-end tests against real `strata` processes. One test binary with
//! many modules keeps link time down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_input;
mod broker;
mod chaos;
mod cli;
mod cluster;
mod cluster_compute;
mod cluster_followers;
mod cluster_load;
mod cluster_pause;
mod cluster_secret;
mod cluster_split;
mod crash;
mod docker;
mod fuzz_corpus;
mod grpc;
mod helm;
mod horaedb_python;
mod influx;
mod limits;
mod partitioned;
mod persistence;
mod pg;
mod prom;
mod promql;
mod remote;
mod sqllogic;
mod storage;
