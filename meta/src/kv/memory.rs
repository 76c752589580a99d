//! An in-memory [`KvStore`] for unit tests, with etcd's semantics.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Compare, KeyValue, KvStore, LeaseId, Op, TxnResult};
use crate::{Error, Result};

#[derive(Debug, Default)]
struct State {
    revision: i64,
    data: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: LeaseId,
}

impl State {
    /// Drops expired leases and their keys.
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let keys: Vec<Vec<u8>> = self
            .data
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if !keys.is_empty() {
            self.revision += 1;
            for k in keys {
                self.data.remove(&k);
            }
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Absent(k) => !self.data.contains_key(k),
            Compare::ModRevision(k, r) => self.data.get(k).is_some_and(|kv| kv.mod_revision == *r),
            Compare::Value(k, v) => self.data.get(k).is_some_and(|kv| &kv.value == v),
        }
    }

    fn apply(&mut self, op: &Op, revision: i64) -> Result<()> {
        match op {
            Op::Put { key, value, lease } => {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(Error::LeaseExpired(*lease));
                }
                let version = self.data.get(key).map_or(0, |kv| kv.version) + 1;
                self.data.insert(
                    key.clone(),
                    KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        mod_revision: revision,
                        version,
                        lease: *lease,
                    },
                );
            }
            Op::Delete { key } => {
                self.data.remove(key);
            }
        }
        Ok(())
    }
}

/// An in-memory store; clones share the data.
#[derive(Debug, Default, Clone)]
pub struct MemoryKv {
    state: Arc<Mutex<State>>,
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let mut s = self.state.lock();
        s.expire();
        Ok(s.data.get(key).cloned())
    }

    async fn range(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let mut s = self.state.lock();
        s.expire();
        Ok(s.data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<i64> {
        let mut s = self.state.lock();
        s.expire();
        let rev = s.revision + 1;
        s.apply(
            &Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
            },
            rev,
        )?;
        s.revision = rev;
        Ok(rev)
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let mut s = self.state.lock();
        s.expire();
        if s.data.remove(key).is_some() {
            s.revision += 1;
            return Ok(true);
        }
        Ok(false)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult> {
        let mut s = self.state.lock();
        s.expire();
        if !compares.iter().all(|c| s.holds(c)) {
            return Ok(TxnResult {
                succeeded: false,
                revision: s.revision,
            });
        }
        for op in &ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !s.leases.contains_key(lease) {
                    return Err(Error::LeaseExpired(*lease));
                }
            }
        }
        let rev = s.revision + 1;
        for op in &ops {
            s.apply(op, rev)?;
        }
        if !ops.is_empty() {
            s.revision = rev;
        }
        Ok(TxnResult {
            succeeded: true,
            revision: s.revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut s = self.state.lock();
        s.next_lease += 1;
        let id = s.next_lease;
        s.leases.insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut s = self.state.lock();
        s.expire();
        match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(Error::LeaseExpired(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut s = self.state.lock();
        s.drop_lease(lease);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_kv_passes_conformance_suite() {
        super::super::conformance::run_all(&MemoryKv::new()).await;
    }
}
