//! Meta's shard events (`ShardControl`), applied at once.

use super::{meta_catalog::*, *};
use std::sync::Arc;

use strata_meta::secret::ClusterSecret;
use strata_proto::meta::{
    shard_control_server::ShardControl, HandOverRequest, MetaHeader, ShardEvent,
    ShardEventResponse, TableEvent,
};

/// The instance's side of meta's shard events (`ShardControl`): each applies
/// at once what the next heartbeat would bring anyway.
///
/// Every call must carry the cluster secret (`DropTableOnShard` deletes a
/// table's files); without a secret configured, every call is refused.
#[derive(Debug, Clone)]
pub struct ShardControlService {
    cluster: Arc<Cluster>,
    secret: Option<ClusterSecret>,
}

impl ShardControlService {
    pub fn new(cluster: Arc<Cluster>, secret: Option<ClusterSecret>) -> Self {
        Self { cluster, secret }
    }

    fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        match &self.secret {
            Some(secret) => strata_meta::secret::verify(secret, request.metadata()),
            None => Err(tonic::Status::permission_denied(
                "this instance has no cluster secret configured and refuses every control request",
            )),
        }
    }
}

fn event_ok() -> tonic::Response<ShardEventResponse> {
    tonic::Response::new(ShardEventResponse {
        header: Some(MetaHeader {
            code: 200,
            error: String::new(),
        }),
    })
}

fn event_err(e: &strata_engine::Error) -> tonic::Response<ShardEventResponse> {
    tonic::Response::new(ShardEventResponse {
        header: Some(MetaHeader {
            code: 500,
            error: e.to_string(),
        }),
    })
}

impl Cluster {
    /// Applies a leader change meta announced, unless a newer one is known.
    async fn apply_shard_event(self: &Arc<Self>, e: ShardEvent) {
        {
            let mut a = self.assignments.write();
            let newer = a.get(&e.shard).is_none_or(|cur| cur.version <= e.version);
            if newer {
                // The event names the leader only: the followers stay as
                // last heard (without the new leader) until the heartbeat.
                let (followers, follower_endpoints) = a
                    .get(&e.shard)
                    .map(|cur| {
                        cur.followers
                            .iter()
                            .zip(&cur.follower_endpoints)
                            .filter(|(f, _)| **f != e.leader)
                            .map(|(f, ep)| (f.clone(), ep.clone()))
                            .unzip()
                    })
                    .unwrap_or_default();
                a.insert(
                    e.shard,
                    Assignment {
                        shard: e.shard,
                        version: e.version,
                        leader: e.leader,
                        endpoint: e.leader_endpoint,
                        followers,
                        follower_endpoints,
                    },
                );
            }
        }
        self.reconcile().await;
    }
}

#[tonic::async_trait]
impl ShardControl for ShardControlService {
    async fn open_shard(
        &self,
        request: tonic::Request<ShardEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        self.cluster.apply_shard_event(request.into_inner()).await;
        Ok(event_ok())
    }

    async fn close_shard(
        &self,
        request: tonic::Request<ShardEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        self.cluster.apply_shard_event(request.into_inner()).await;
        Ok(event_ok())
    }

    async fn create_table_on_shard(
        &self,
        request: tonic::Request<TableEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        let result = match entry_of(&request.into_inner().record_json) {
            Ok(entry) => self.cluster.engine.install_table(entry).await,
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(()) => event_ok(),
            Err(e) => event_err(&e),
        })
    }

    async fn drop_table_on_shard(
        &self,
        request: tonic::Request<TableEvent>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        let result = match entry_of(&request.into_inner().record_json) {
            // The leader deletes the files (the instance that ran the DROP
            // may not serve the shard).
            Ok(entry) => self
                .cluster
                .engine
                .uninstall_table(entry.id, true)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(()) => event_ok(),
            Err(e) => event_err(&e),
        })
    }

    async fn hand_over_tables(
        &self,
        request: tonic::Request<HandOverRequest>,
    ) -> Result<tonic::Response<ShardEventResponse>, tonic::Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let tables: Vec<strata_sst::TableId> =
            req.tables.into_iter().map(strata_sst::TableId).collect();
        let result = self
            .cluster
            .engine
            .hand_over_tables(
                strata_sst::ShardId(req.from_shard),
                &tables,
                strata_sst::ShardId(req.to_shard),
            )
            .await;
        Ok(match result {
            Ok(()) => event_ok(),
            Err(e) => event_err(&e),
        })
    }
}
