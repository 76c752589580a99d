//! The etcd [`KvStore`].

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as ECompare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp,
};

use super::{Compare, KeyValue, KvStore, LeaseId, Op, TxnResult};
use crate::{Error, Result};

fn err(op: &'static str) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::Etcd { op, source }
}

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdKv")
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

impl EtcdKv {
    /// Connects to `endpoints` (`host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(err("connect"))?;
        Ok(Self { client })
    }
}

fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
            TxnOp::put(key, value, opts)
        }
        Op::Delete { key } => TxnOp::delete(key, None),
    }
}

#[async_trait]
impl KvStore for EtcdKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let resp = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(err("get"))?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn range(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(err("range"))?;
        Ok(resp.kvs().iter().map(convert).collect())
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<i64> {
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let resp = self
            .client
            .clone()
            .put(key, value, opts)
            .await
            .map_err(|e| lease_error(e, lease, "put"))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let resp = self
            .client
            .clone()
            .delete(key, None)
            .await
            .map_err(err("delete"))?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult> {
        let leases: Vec<LeaseId> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .collect();
        let compares: Vec<ECompare> = compares
            .into_iter()
            .map(|c| match c {
                Compare::Absent(k) => ECompare::version(k, CompareOp::Equal, 0),
                Compare::ModRevision(k, r) => ECompare::mod_revision(k, CompareOp::Equal, r),
                Compare::Value(k, v) => ECompare::value(k, CompareOp::Equal, v),
            })
            .collect();
        let txn = Txn::new()
            .when(compares)
            .and_then(ops.into_iter().map(txn_op).collect::<Vec<_>>());
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| lease_error(e, leases.first().copied().unwrap_or(0), "txn"))?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(err("lease grant"))?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(e, lease, "lease keep-alive"))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(e, lease, "lease keep-alive"))?;
        match stream
            .message()
            .await
            .map_err(|e| lease_error(e, lease, "lease keep-alive"))?
        {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(Error::LeaseExpired(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
            Err(e) => Err(err("lease revoke")(e)),
        }
    }
}

fn lease_error(e: etcd_client::Error, lease: LeaseId, op: &'static str) -> Error {
    if e.to_string().contains("lease not found") {
        Error::LeaseExpired(lease)
    } else {
        Error::Etcd { op, source: e }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// The conformance suite against a real etcd, reached through
    /// `STRATA_ETCD_ENDPOINTS` (set by `scripts/test-services env`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_kv_passes_conformance_suite() {
        let endpoints = std::env::var("STRATA_ETCD_ENDPOINTS").unwrap_or_else(|_| {
            panic!("STRATA_ETCD_ENDPOINTS is not set: start etcd with `scripts/test-services start` and `eval \"$(scripts/test-services env)\"`")
        });
        let kv = EtcdKv::connect(&[endpoints]).await.unwrap();
        super::super::conformance::run_all(&kv).await;
    }
}
