//! Splits and merges (`docs/rfcs/0006-split-and-merge.md`): meta's side of
//! handing tables from one shard to another.
//!
//! An admin request (or, later, the balancer) records the procedure in etcd
//! ([`MetaStore::start_reshape`]); the leading meta advances it each round:
//!
//! 1. `handing_over`: asks the leader of `from` to hand the tables over
//!    (`ShardControl.HandOverTables`: their writes stop, they are flushed and
//!    their manifests record the handover), retrying until it answers that
//!    it did. Nothing has changed in the catalog yet: the procedure can
//!    stop here and leave every table where it was (the handed-over ones
//!    refuse writes retryably until it goes on).
//! 2. `moved`: one transaction moves the tables to `to` in the catalog;
//!    both leaders are told (and every instance sees the catalog version
//!    change at its next heartbeat); `to`'s leader claims each table when
//!    it opens it. A merge then retires `from`.
//!
//! Every step is idempotent, so a meta that takes the lead over in the
//! middle repeats the step it finds recorded.

use std::{sync::Arc, time::Duration};

use strata_proto::meta::{shard_control_client::ShardControlClient, HandOverRequest, TableEvent};

use super::{encode_record, Event, Meta};
use crate::{
    model::{now_ms, Reshape, ReshapeKind, ReshapeStep, TableRecord, PARTITIONED_SHARD},
    Error, Result,
};

/// How long meta waits for a leader to hand tables over (their flush
/// included).
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(120);

/// A `HandOverTables` call running for one procedure (its start, shards
/// and tables), and its outcome once it ended.
#[derive(Debug)]
pub(super) struct HandOverCall {
    key: (i64, u64, u64, Vec<u64>),
    outcome: Arc<parking_lot::Mutex<Option<std::result::Result<(), String>>>>,
}

impl Meta {
    /// Starts splitting `shard`: `tables` (by default every second of its
    /// tables, by id) go to a new shard, led at first by `shard`'s leader
    /// (the balancer may move it after). Answers `Err` with a reason when
    /// the request cannot be carried out.
    pub async fn split_shard(
        &self,
        shard: u64,
        tables: Option<Vec<u64>>,
    ) -> Result<std::result::Result<Reshape, String>> {
        let store = self.store();
        let Some((info, _)) = store
            .shards()
            .await?
            .into_iter()
            .find(|(s, _)| s.id == shard)
        else {
            return Ok(Err(format!("shard {shard} does not exist")));
        };
        let on_shard: Vec<u64> = store
            .tables()
            .await?
            .into_iter()
            .filter(|t| t.shard == shard)
            .map(|t| t.id)
            .collect();
        let tables = match tables {
            Some(t) if t.is_empty() => return Ok(Err("no table to split off".to_string())),
            Some(t) => {
                if let Some(id) = t.iter().find(|id| !on_shard.contains(id)) {
                    return Ok(Err(format!("table {id} is not on shard {shard}")));
                }
                t
            }
            None if on_shard.len() < 2 => {
                return Ok(Err(format!(
                    "shard {shard} holds {} table(s): nothing to split",
                    on_shard.len()
                )))
            }
            None => on_shard.iter().skip(1).step_by(2).copied().collect(),
        };
        let reshape = Reshape::new(ReshapeKind::Split, shard, 0, tables);
        self.start_reshape(reshape, info.leader.clone()).await
    }

    async fn start_reshape(
        &self,
        reshape: Reshape,
        leader: Option<String>,
    ) -> Result<std::result::Result<Reshape, String>> {
        match self.store().start_reshape(reshape, leader).await? {
            Some(r) => {
                tracing::info!(kind = ?r.kind, from = r.from, to = r.to, tables = ?r.tables,
                    "starting a split or merge");
                Ok(Ok(r))
            }
            None => Ok(Err(
                "a split or merge is in progress; one runs at a time".to_string()
            )),
        }
    }

    /// Starts merging shard `from` into shard `into`: every table of `from`
    /// goes to `into`, then `from` is retired.
    pub async fn merge_shards(
        &self,
        into: u64,
        from: u64,
    ) -> Result<std::result::Result<Reshape, String>> {
        if into == from || from == PARTITIONED_SHARD || into == PARTITIONED_SHARD {
            return Ok(Err(format!("cannot merge shard {from} into {into}")));
        }
        let store = self.store();
        let shards = store.shards().await?;
        for id in [into, from] {
            if !shards.iter().any(|(s, _)| s.id == id) {
                return Ok(Err(format!("shard {id} does not exist")));
            }
        }
        let tables: Vec<u64> = store
            .tables()
            .await?
            .into_iter()
            .filter(|t| t.shard == from)
            .map(|t| t.id)
            .collect();
        let reshape = Reshape::new(ReshapeKind::Merge, from, into, tables);
        self.start_reshape(reshape, None).await
    }

    /// Takes the procedure in progress as far as it goes now.
    pub(super) async fn advance_reshape(&self) -> Result<()> {
        let store = self.store();
        for _ in 0..3 {
            let Some((r, rev)) = store.reshape().await? else {
                return Ok(());
            };
            match r.step {
                ReshapeStep::HandingOver => match self.hand_over_result(&r) {
                    // Still running, or just started.
                    None => return Ok(()),
                    Some(Ok(())) => {
                        let Some(records) = store.move_reshaped_tables(&r, rev).await? else {
                            continue;
                        };
                        tracing::info!(
                            from = r.from,
                            to = r.to,
                            tables = records.len(),
                            "tables handed over and moved in the catalog"
                        );
                        self.tell_leaders(&r, &records).await?;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(from = r.from, to = r.to, attempts = r.attempts + 1, error = %e,
                            "handing tables over failed; retrying");
                        store.reshape_failed(&r, rev, &e).await?;
                        return Ok(());
                    }
                },
                ReshapeStep::Moved => {
                    let tables = store.tables().await?;
                    if r.kind == ReshapeKind::Merge {
                        // Created on the retiring shard meanwhile: they go
                        // too before it is retired.
                        let left: Vec<u64> = tables
                            .iter()
                            .filter(|t| t.shard == r.from)
                            .map(|t| t.id)
                            .collect();
                        if !left.is_empty() {
                            store.restart_reshape(&r, rev, left).await?;
                            continue;
                        }
                    }
                    let records: Vec<TableRecord> = tables
                        .into_iter()
                        .filter(|t| r.tables.contains(&t.id))
                        .collect();
                    self.tell_leaders(&r, &records).await?;
                    if store.finish_reshape(&r, rev).await? {
                        tracing::info!(kind = ?r.kind, from = r.from, to = r.to,
                            elapsed_ms = now_ms() - r.started_ms, "split or merge done");
                    }
                    return Ok(());
                }
                ReshapeStep::Done => {
                    store.finish_reshape(&r, rev).await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The outcome of the `HandOverTables` call for `r`, once there is one;
    /// starts the call (in the background: a flush may outlast meta's
    /// lease, which the leader's round must renew) when none runs.
    fn hand_over_result(&self, r: &Reshape) -> Option<std::result::Result<(), String>> {
        let key = (r.started_ms, r.from, r.to, r.tables.clone());
        let mut call = self.inner.hand_over_call.lock();
        match call.as_mut() {
            Some(c) if c.key == key => {
                let outcome = c.outcome.lock().take();
                if outcome.is_some() {
                    *call = None;
                }
                outcome
            }
            _ => {
                let outcome = Arc::new(parking_lot::Mutex::new(None));
                let (me, r, slot) = (self.clone(), r.clone(), outcome.clone());
                tokio::spawn(async move {
                    let result = me.hand_over(&r).await;
                    *slot.lock() = Some(result);
                });
                *call = Some(HandOverCall { key, outcome });
                None
            }
        }
    }

    /// Asks `from`'s leader, once it holds the shard, to hand the tables
    /// over; `Err` with why not.
    async fn hand_over(&self, r: &Reshape) -> std::result::Result<(), String> {
        let store = self.store();
        let err = |e: Error| e.to_string();
        // Dropped since, or no longer on `from` (moved by an earlier
        // attempt): not asked for.
        let tables: Vec<u64> = store
            .tables()
            .await
            .map_err(err)?
            .into_iter()
            .filter(|t| t.shard == r.from && r.tables.contains(&t.id))
            .map(|t| t.id)
            .collect();
        if tables.is_empty() {
            return Ok(());
        }
        let shards = store.shards().await.map_err(err)?;
        let Some((from, _)) = shards.iter().find(|(s, _)| s.id == r.from) else {
            return Err(format!("shard {} no longer exists", r.from));
        };
        let Some(leader) = &from.leader else {
            return Err(format!("shard {} has no leader", r.from));
        };
        let holder = store.lock_holder(r.from).await.map_err(err)?;
        if holder.as_ref().map(|h| &h.node) != Some(leader) {
            return Err(format!(
                "shard {}'s leader {leader} has not opened it yet",
                r.from
            ));
        }
        let nodes = store.nodes().await.map_err(err)?;
        let Some(endpoint) = nodes
            .iter()
            .find(|n| &n.id == leader)
            .map(|n| n.endpoint.clone())
        else {
            return Err(format!("shard {}'s leader {leader} is not alive", r.from));
        };
        let secret = crate::secret::AttachSecret::new(self.inner.opts.cluster_secret.as_ref());
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| format!("endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(HAND_OVER_TIMEOUT)
            .connect_lazy();
        let mut client = ShardControlClient::with_interceptor(ch, secret);
        let resp = client
            .hand_over_tables(HandOverRequest {
                from_shard: r.from,
                to_shard: r.to,
                tables,
            })
            .await
            .map_err(|s| format!("{endpoint}: {}", s.message()))?
            .into_inner();
        match resp.header {
            Some(h) if h.code != 200 => Err(format!("{endpoint}: {}", h.error)),
            _ => Ok(()),
        }
    }

    /// Tells the leaders of both shards about the tables' new records, at
    /// once and best effort (heartbeats carry the catalog change anyway):
    /// `from`'s closes them, `to`'s claims and opens them.
    async fn tell_leaders(&self, r: &Reshape, records: &[TableRecord]) -> Result<()> {
        let store = self.store();
        let shards = store.shards().await?;
        let nodes = store.nodes().await?;
        for shard in [r.from, r.to] {
            let Some(endpoint) = shards
                .iter()
                .find(|(s, _)| s.id == shard)
                .and_then(|(s, _)| s.leader.clone())
                .and_then(|l| nodes.iter().find(|n| n.id == l))
                .map(|n| n.endpoint.clone())
            else {
                continue;
            };
            for record in records {
                self.notify(
                    endpoint.clone(),
                    Event::Table(TableEvent {
                        record_json: encode_record(record)?,
                    }),
                );
            }
        }
        Ok(())
    }
}
