//! The routing seam: where a table is served, and how to reach the instance
//! that serves it.
//!
//! Everything above the engine (SQL, the write path, the protocols) asks a
//! [`Router`] and never looks at cluster state itself. Two implementations:
//! [`LocalRouter`] (standalone, and the context of requests another
//! instance forwarded here, which must not be forwarded again: every table
//! is local or not served) and `cluster::Cluster` (meta's assignments,
//! learnt from heartbeats). Tests implement it to place tables wherever
//! they like, and [`Peer`] to stand in for the other instances.

use std::{collections::BTreeSet, fmt, sync::Arc, time::Instant};

use async_trait::async_trait;
use strata_engine::{catalog::TableEntry, table::Table, Engine, STANDALONE_SHARD};
use strata_proto::storage::{ExecutePlanRequest, SqlQueryRequest, WriteArrowRequest};
use strata_sst::ShardId;

/// How long a request waits for a shard that is between owners (a move or
/// a failover) before it fails with a retryable `NotLeader`.
pub const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// How often a waiting request looks at the assignment again.
pub const MOVE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// What `Result` the router's catalog calls return.
pub type EngineResult<T> = strata_engine::Result<T>;

/// A shard's assignment as this instance last heard it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub shard: u64,
    pub version: u64,
    /// The leader's node id.
    pub leader: String,
    /// The leader's gRPC endpoint; empty while the shard has no leader.
    pub endpoint: String,
    /// The node ids of the shard's followers.
    pub followers: Vec<String>,
    /// Their gRPC endpoints (same order; empty for one not registered).
    pub follower_endpoints: Vec<String>,
}

/// Where a table's rows are, once its shard has a serving leader.
#[derive(Debug)]
pub enum Target {
    /// The shard is open here.
    Local(Arc<Table>),
    /// Led by another instance.
    Remote { endpoint: String, version: u64 },
}

/// Rows another instance sends as they come (see [`Peer::execute_plan`]).
pub type RowStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<arrow::record_batch::RecordBatch, strata_client::Error>>
            + Send,
    >,
>;

/// Another instance, as the write path and SQL reach it.
/// `strata_client::Client` implements it.
#[async_trait]
pub trait Peer: Send + Sync {
    /// Runs SQL there.
    async fn query(
        &self,
        req: SqlQueryRequest,
    ) -> Result<strata_client::SqlOutput, strata_client::Error>;
    /// Writes Arrow rows into one table led there.
    async fn write_arrow(&self, req: WriteArrowRequest) -> Result<u32, strata_client::Error>;
    /// Runs part of a query plan over a table led there. The first
    /// message has been read when this returns, so that a refusal (the
    /// shard moved: `NotLeader`) is this call's error.
    async fn execute_plan(
        &self,
        req: ExecutePlanRequest,
    ) -> Result<RowStream, strata_client::Error>;
}

#[async_trait]
impl Peer for strata_client::Client {
    async fn query(
        &self,
        req: SqlQueryRequest,
    ) -> Result<strata_client::SqlOutput, strata_client::Error> {
        strata_client::Client::query(self, req).await
    }

    async fn write_arrow(&self, req: WriteArrowRequest) -> Result<u32, strata_client::Error> {
        strata_client::Client::write_arrow(self, req).await
    }

    async fn execute_plan(
        &self,
        req: ExecutePlanRequest,
    ) -> Result<RowStream, strata_client::Error> {
        use futures::StreamExt;
        use strata_client::PlanMessage;
        let mut stream = strata_client::Client::execute_plan(self, req).await?;
        // The first message read here, so that a refusal is this call's
        // error; then each message as it comes, until the last one.
        let first = strata_client::next_plan_rows(&mut stream).await?;
        let rest = match first {
            PlanMessage::Done => None,
            PlanMessage::Rows(_) => Some(stream),
        };
        let first = match first {
            PlanMessage::Rows(b) => b,
            PlanMessage::Done => Vec::new(),
        };
        let rest = futures::stream::unfold(rest, |stream| async move {
            let mut stream = stream?;
            match strata_client::next_plan_rows(&mut stream).await {
                Ok(PlanMessage::Rows(batches)) => Some((Ok(batches), Some(stream))),
                Ok(PlanMessage::Done) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        let batches = futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .flat_map(|r| {
                futures::stream::iter(match r {
                    Ok(batches) => batches.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
            });
        Ok(Box::pin(batches))
    }
}

/// Where tables are served and how to reach their leaders.
#[async_trait]
pub trait Router: Send + Sync + fmt::Debug {
    /// This instance's node id.
    fn node_id(&self) -> &str;
    /// Whether tables may be served by other instances. `false`: every
    /// table this instance knows is served here or nowhere.
    fn is_distributed(&self) -> bool;
    /// A shard's assignment, if known.
    fn assignment(&self, shard: ShardId) -> Option<Assignment>;
    /// Every shard's assignment (`system.shards`, `system.nodes`).
    fn assignments(&self) -> Vec<Assignment>;
    /// The table's leader once its shard has one: waits while the shard
    /// moves (until `deadline`), then fails with `ShardNotOpen`.
    async fn target(&self, entry: &TableEntry, deadline: Instant) -> EngineResult<Target>;
    /// A connection to another instance.
    async fn peer(&self, endpoint: &str) -> Result<Arc<dyn Peer>, strata_client::Error>;
    /// The fingerprint of the catalog this instance has (0: not shared).
    fn fingerprint(&self) -> u64;
    /// Reloads the catalog from where it is kept; `false` when there is
    /// nothing to reload from (it is this instance's own).
    async fn refresh_catalog(&self) -> EngineResult<bool>;
    /// Brings the catalog up to a peer's, known by its fingerprint.
    async fn sync_catalog(&self, peer_fingerprint: u64) -> EngineResult<()>;

    /// Whether this is a compute instance: it leads no shard, and reads
    /// tables' SSTs from the object store itself, asking their leaders
    /// only for the rows not flushed yet.
    fn reads_storage(&self) -> bool {
        false
    }

    /// The gRPC endpoints of the compute instances meta lists.
    fn compute_endpoints(&self) -> Vec<String> {
        Vec::new()
    }

    /// The table's catalog entry as this instance knows it now (after a
    /// split or merge moved it to another shard, say); `None` when the
    /// router keeps no catalog of its own.
    fn current_entry(&self, _entry: &TableEntry) -> Option<TableEntry> {
        None
    }

    /// The assignment of a shard another instance leads, if it has a leader.
    fn remote_leader(&self, shard: ShardId) -> Option<Assignment> {
        self.assignment(shard)
            .filter(|a| a.leader != self.node_id() && !a.endpoint.is_empty())
    }

    /// The endpoints of the other instances leading a shard.
    fn peer_endpoints(&self) -> BTreeSet<String> {
        self.assignments()
            .into_iter()
            .filter(|a| a.leader != self.node_id() && !a.endpoint.is_empty())
            .map(|a| a.endpoint)
            .collect()
    }
}

/// The router of an instance whose engine owns its catalog (standalone),
/// and of requests forwarded from another instance: every table is served
/// here or not at all.
#[derive(Debug)]
pub struct LocalRouter {
    engine: Arc<Engine>,
}

/// The node id standalone reports (`system.nodes`, `system.shards`).
pub const STANDALONE_NODE: &str = "standalone";

impl LocalRouter {
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self { engine })
    }
}

#[async_trait]
impl Router for LocalRouter {
    fn node_id(&self) -> &str {
        STANDALONE_NODE
    }

    fn is_distributed(&self) -> bool {
        false
    }

    fn assignment(&self, shard: ShardId) -> Option<Assignment> {
        (shard == STANDALONE_SHARD).then(|| Assignment {
            shard: STANDALONE_SHARD.0,
            version: 1,
            leader: STANDALONE_NODE.to_string(),
            endpoint: String::new(),
            ..Default::default()
        })
    }

    fn assignments(&self) -> Vec<Assignment> {
        self.assignment(STANDALONE_SHARD).into_iter().collect()
    }

    async fn target(&self, entry: &TableEntry, _deadline: Instant) -> EngineResult<Target> {
        match self
            .engine
            .shard(entry.shard)
            .and_then(|s| s.table(entry.id))
        {
            Some(t) => Ok(Target::Local(t)),
            None => Err(strata_engine::Error::NotServedHere {
                table: entry.name.clone(),
                shard: entry.shard,
            }),
        }
    }

    async fn peer(&self, endpoint: &str) -> Result<Arc<dyn Peer>, strata_client::Error> {
        Err(strata_client::Error::Server {
            code: 500,
            kind: strata_proto::common::ErrorKind::Internal,
            retryable: false,
            message: format!("{endpoint}: this instance does not forward requests"),
            retry_after: None,
        })
    }

    fn fingerprint(&self) -> u64 {
        0
    }

    async fn refresh_catalog(&self) -> EngineResult<bool> {
        Ok(false)
    }

    async fn sync_catalog(&self, _peer_fingerprint: u64) -> EngineResult<()> {
        Ok(())
    }
}
