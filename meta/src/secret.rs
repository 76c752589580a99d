//! The cluster secret: a shared string that authenticates the RPCs between
//! meta and instances until real authentication exists.
//!
//! Meta sends it with every `ShardControl` call (shard events, and
//! `DropTableOnShard`, which deletes a table's files); instances send it
//! with every `MetaService` call (heartbeats, shard locks, DDL). It travels
//! as the gRPC metadata [`HEADER`] and is compared in constant time.
//!
//! An instance with no secret refuses every control request; meta with no
//! secret checks nothing (and logs an error at start). Rotation is a
//! restart of every process with the new secret.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use tonic::{
    metadata::{AsciiMetadataValue, MetadataMap},
    service::Interceptor,
    Request, Status,
};

/// The gRPC metadata key that carries the secret.
pub const HEADER: &str = "x-strata-cluster-secret";

/// The environment variable both `strata meta` and `strata server` read.
pub const ENV: &str = "STRATA_CLUSTER_SECRET";

/// A cluster secret. Its `Debug` and `Serialize` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<str>);

impl ClusterSecret {
    /// A secret must be usable as gRPC metadata: visible ASCII, no spaces
    /// at either end, at least one character.
    pub fn new(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("the cluster secret is empty".to_string());
        }
        if value.trim() != value || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(
                "the cluster secret must be printable ASCII without leading or trailing spaces"
                    .to_string(),
            );
        }
        Ok(Self(value.into()))
    }

    /// The secret from `$STRATA_CLUSTER_SECRET`, when set and not empty.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => Self::new(&v).map(Some),
            _ => Ok(None),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, in time independent of where
    /// they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }

    fn metadata(&self) -> Option<AsciiMetadataValue> {
        AsciiMetadataValue::try_from(self.expose()).ok()
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl Serialize for ClusterSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for ClusterSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A client interceptor that attaches the secret (when there is one) to
/// every request.
#[derive(Clone, Default)]
pub struct AttachSecret(Option<AsciiMetadataValue>);

impl fmt::Debug for AttachSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AttachSecret(<redacted>)"
        } else {
            "AttachSecret(none)"
        })
    }
}

impl AttachSecret {
    pub fn new(secret: Option<&ClusterSecret>) -> Self {
        Self(secret.and_then(ClusterSecret::metadata))
    }
}

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(HEADER, v.clone());
        }
        Ok(request)
    }
}

/// Checks a request's secret against `expected`: `Unauthenticated` when it
/// carries none, `PermissionDenied` when it carries another one.
pub fn verify(expected: &ClusterSecret, metadata: &MetadataMap) -> Result<(), Status> {
    match metadata.get(HEADER) {
        None => Err(Status::unauthenticated(format!(
            "this RPC needs the cluster secret (gRPC metadata {HEADER})"
        ))),
        Some(v) if expected.matches(v.as_bytes()) => Ok(()),
        Some(_) => Err(Status::permission_denied("wrong cluster secret")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_secret_is_checked_and_never_shown() {
        let s = ClusterSecret::new("s3cret-value").unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!format!("{:?}", AttachSecret::new(Some(&s))).contains("s3cret"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert!(ClusterSecret::new("").is_err());
        assert!(ClusterSecret::new(" padded").is_err());
        assert!(ClusterSecret::new("tab\there").is_err());

        let mut attach = AttachSecret::new(Some(&s));
        let req = attach.call(Request::new(())).unwrap();
        assert!(verify(&s, req.metadata()).is_ok());

        let missing = verify(&s, Request::new(()).metadata()).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let other = ClusterSecret::new("s3cret-valuf").unwrap();
        let req = AttachSecret::new(Some(&other))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            verify(&s, req.metadata()).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let shorter = ClusterSecret::new("s3cret").unwrap();
        let req = AttachSecret::new(Some(&shorter))
            .call(Request::new(()))
            .unwrap();
        assert!(verify(&s, req.metadata()).is_err());
    }
}
