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

/// Prometheus remote write (`prompb.WriteRequest`), with the fields Strata
/// reads and the loader in `bench/` writes. Hand-written prost messages:
/// the field numbers are Prometheus's.
pub mod prometheus {
    /// Prometheus's `prompb.WriteRequest`, with the fields Strata reads.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemoteWriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        /// Native histograms: not supported; their presence is refused.
        #[prost(bytes = "vec", repeated, tag = "4")]
        pub histograms: Vec<Vec<u8>>,
    }

    impl TimeSeries {
        /// A series from label pairs and `(timestamp ms, value)` samples.
        pub fn new(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Self {
            Self {
                labels: labels
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| Sample { value, timestamp })
                    .collect(),
                histograms: Vec::new(),
            }
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}
