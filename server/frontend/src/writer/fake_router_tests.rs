//! The SQL front end and the write path against a fake router: tables led
//! by other instances, reached through fake peers.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use arrow::{
    array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray},
    datatypes::SchemaRef,
};
use parking_lot::Mutex;
use strata_engine::{
    options::TableOptions,
    schema::{ColumnSchema, ColumnType, TableSchema},
    ClusterCatalog, EngineConfig,
};
use strata_proto::common::ErrorKind;
use strata_sst::TableId;

use std::{fmt, sync::Arc, time::Instant};

use async_trait::async_trait;
use strata_engine::{catalog::TableEntry, Engine, STANDALONE_SHARD};
use strata_proto::storage::{SqlQueryRequest, WriteArrowRequest};
use strata_sst::ShardId;

use crate::{
    route::{Assignment, EngineResult, LocalRouter, Peer, Router, Target},
    sql::{Output, QueryEngine},
};

/// The shard the test table is on, which no instance opens here.
const SHARD: ShardId = ShardId(3);
const FINGERPRINT: u64 = 99;

/// DDL is not what these tests exercise: every call is refused.
#[derive(Debug)]
struct NoDdl;

#[async_trait]
impl ClusterCatalog for NoDdl {
    async fn create_database(&self, _: &str, _: bool) -> EngineResult<bool> {
        Err(strata_engine::Error::Internal("no DDL in this test".into()))
    }
    async fn drop_database(&self, _: &str, _: bool) -> EngineResult<bool> {
        Err(strata_engine::Error::Internal("no DDL in this test".into()))
    }
    async fn create_table(
        &self,
        _: &str,
        _: &str,
        _: TableSchema,
        _: TableOptions,
        _: Option<&strata_engine::partition::PartitionSpec>,
        _: bool,
    ) -> EngineResult<Option<Vec<TableEntry>>> {
        Err(strata_engine::Error::Internal("no DDL in this test".into()))
    }
    async fn alter_table(&self, _: &TableEntry, _: &TableEntry) -> EngineResult<Vec<TableEntry>> {
        Err(strata_engine::Error::Internal("no DDL in this test".into()))
    }
    async fn drop_table(&self, _: &str, _: &str, _: bool) -> EngineResult<Vec<TableEntry>> {
        Err(strata_engine::Error::Internal("no DDL in this test".into()))
    }
}

/// A cluster-mode engine that knows table `public.cpu` on [`SHARD`],
/// which is not open here, and `public.mem` on [`LOCAL_SHARD`], which is.
async fn engine() -> Arc<Engine> {
    engine_with(false).await
}

/// [`engine`], and with `partitioned`, table `public.pcpu` (the TSBS
/// columns that matter here: `hostname`, `usage_user`, `usage_system`,
/// `timestamp`), `PARTITION BY KEY(hostname) PARTITIONS 4`, partitions 0
/// and 2 on [`SHARD`] (led by `b:1`), 1 and 3 here.
async fn engine_with(partitioned: bool) -> Arc<Engine> {
    let store = Arc::new(object_store::memory::InMemory::new());
    let engine = Engine::open_cluster(EngineConfig::default(), store, Arc::new(NoDdl)).unwrap();
    let column = |name: &str, column_type, is_tag| ColumnSchema {
        name: name.to_string(),
        column_type,
        is_tag,
        nullable: !is_tag,
        comment: String::new(),
    };
    let schema = TableSchema::try_new(
        vec![
            column("host", ColumnType::String, true),
            column("ts", ColumnType::Timestamp, false),
            column("usage", ColumnType::Double, false),
        ],
        "ts",
        &[],
    )
    .unwrap();
    let entry = TableEntry {
        id: TableId(7),
        database: "public".to_string(),
        name: "cpu".to_string(),
        schema,
        options: TableOptions::default(),
        shard: SHARD,
        created_at_ms: 0,
        partition: None,
        partition_of: None,
        revision: 0,
        home: None,
    };
    let local = TableEntry {
        id: TableId(8),
        name: "mem".to_string(),
        shard: LOCAL_SHARD,
        options: TableOptions {
            update_mode: strata_engine::options::UpdateMode::Append,
            ..TableOptions::default()
        },
        ..entry.clone()
    };
    let mut entries = vec![entry.clone(), local];
    if partitioned {
        let schema = TableSchema::try_new(
            vec![
                column("hostname", ColumnType::String, true),
                column("usage_user", ColumnType::Double, false),
                column("usage_system", ColumnType::Double, false),
                column("timestamp", ColumnType::Timestamp, false),
            ],
            "timestamp",
            &[],
        )
        .unwrap();
        let parent = TableEntry {
            id: TableId(20),
            name: "pcpu".to_string(),
            schema,
            partition: Some(strata_engine::partition::PartitionSpec {
                columns: vec!["hostname".to_string()],
                count: 4,
                random: false,
            }),
            ..entry.clone()
        };
        for i in 0..4u32 {
            entries.push(TableEntry {
                id: TableId(21 + u64::from(i)),
                name: format!("__pcpu_{i}"),
                shard: if i % 2 == 0 { SHARD } else { LOCAL_SHARD },
                partition: None,
                partition_of: Some(strata_engine::partition::PartitionOf {
                    parent: parent.id,
                    index: i,
                }),
                ..parent.clone()
            });
        }
        entries.push(parent);
    }
    engine
        .install_catalog(vec!["public".to_string()], entries)
        .await
        .unwrap();
    engine
        .open_shard(
            LOCAL_SHARD,
            Arc::new(strata_wal::memory::MemoryWal::new()),
            strata_wal::Epoch(1),
        )
        .await
        .unwrap();
    engine
}

/// The shard of table `public.mem` (APPEND), open here.
const LOCAL_SHARD: ShardId = ShardId(1);

/// What the fake peers were asked, by endpoint.
#[derive(Default)]
struct Calls {
    writes: Mutex<Vec<(String, WriteArrowRequest, usize)>>,
    queries: Mutex<Vec<(String, SqlQueryRequest)>>,
    /// Writes still to refuse with `NotLeader`, each moving the shard.
    refusals: AtomicU32,
    plans: Mutex<Vec<(String, strata_proto::storage::ExecutePlanRequest)>>,
    /// Answer plan parts as an instance of an older version would.
    old_version: std::sync::atomic::AtomicBool,
    /// Runs the plan parts sent to the leader, over table `mem` here
    /// (same columns as `cpu`).
    leader: Mutex<Option<QueryEngine>>,
}

/// An instance "a" whose only other peer leads [`SHARD`]. A refused write
/// moves the shard to the next endpoint, as a heartbeat would show.
#[derive(Debug)]
struct FakeRouter {
    leader: Mutex<Assignment>,
    calls: Arc<CallsDebug>,
}

#[derive(Default)]
struct CallsDebug(Calls);

impl fmt::Debug for CallsDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Calls")
    }
}

impl FakeRouter {
    fn new(refusals: u32) -> Arc<Self> {
        let calls = Arc::new(CallsDebug::default());
        calls.0.refusals.store(refusals, Ordering::SeqCst);
        Arc::new(Self {
            leader: Mutex::new(Assignment {
                shard: SHARD.0,
                version: 4,
                leader: "b".to_string(),
                endpoint: "b:1".to_string(),
                ..Default::default()
            }),
            calls,
        })
    }
}

struct FakePeer {
    endpoint: String,
    router: Arc<FakeRouter>,
}

#[async_trait]
impl Peer for FakePeer {
    async fn query(
        &self,
        req: SqlQueryRequest,
    ) -> Result<strata_client::SqlOutput, strata_client::Error> {
        self.router
            .calls
            .0
            .queries
            .lock()
            .push((self.endpoint.clone(), req));
        Ok(strata_client::SqlOutput::AffectedRows(41))
    }

    async fn write_arrow(&self, req: WriteArrowRequest) -> Result<u32, strata_client::Error> {
        let rows: usize = strata_client::decode_payload(req.rows.clone().unwrap())
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        let calls = &self.router.calls.0;
        calls.writes.lock().push((self.endpoint.clone(), req, rows));
        if calls
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // The shard moved on: the next route points elsewhere.
            let mut leader = self.router.leader.lock();
            leader.version += 1;
            leader.leader = format!("n{}", leader.version);
            leader.endpoint = format!("n{}:1", leader.version);
            return Err(strata_client::Error::Server {
                code: 409,
                kind: ErrorKind::NotLeader,
                retryable: true,
                message: "NotLeader: the shard moved".to_string(),
                retry_after: None,
            });
        }
        Ok(rows as u32)
    }

    async fn execute_plan(
        &self,
        req: strata_proto::storage::ExecutePlanRequest,
    ) -> Result<crate::route::RowStream, strata_client::Error> {
        let calls = &self.router.calls.0;
        calls
            .plans
            .lock()
            .push((self.endpoint.clone(), req.clone()));
        if calls.old_version.load(Ordering::SeqCst) {
            return Err(strata_client::Error::Rpc(tonic::Status::unimplemented(
                "unknown method ExecutePlan",
            )));
        }
        let leader = calls.leader.lock().clone();
        let Some(leader) = leader else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let mut part = crate::sql::distributed::PlanPart::from_request(req);
        part.table = "mem".to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        leader.execute_plan_part(part, tx).await.unwrap();
        let mut rows = Vec::new();
        while let Some(b) = rx.recv().await {
            rows.push(Ok(b));
        }
        Ok(Box::pin(futures::stream::iter(rows)))
    }
}

/// The router the engine's `Arc<dyn Router>` holds, and the handle the
/// test keeps: the same fake.
#[derive(Debug)]
struct Shared(Arc<FakeRouter>);

#[async_trait]
impl Router for Shared {
    fn node_id(&self) -> &str {
        "a"
    }
    fn is_distributed(&self) -> bool {
        true
    }
    fn assignment(&self, shard: ShardId) -> Option<Assignment> {
        (shard == SHARD).then(|| self.0.leader.lock().clone())
    }
    fn assignments(&self) -> Vec<Assignment> {
        vec![self.0.leader.lock().clone()]
    }
    async fn target(&self, entry: &TableEntry, _deadline: Instant) -> EngineResult<Target> {
        let a = self.remote_leader(entry.shard).unwrap();
        Ok(Target::Remote {
            endpoint: a.endpoint,
            version: a.version,
        })
    }
    async fn peer(&self, endpoint: &str) -> Result<Arc<dyn Peer>, strata_client::Error> {
        Ok(Arc::new(FakePeer {
            endpoint: endpoint.to_string(),
            router: self.0.clone(),
        }))
    }
    fn fingerprint(&self) -> u64 {
        FINGERPRINT
    }
    async fn refresh_catalog(&self) -> EngineResult<bool> {
        Ok(true)
    }
    async fn sync_catalog(&self, _: u64) -> EngineResult<()> {
        Ok(())
    }
}

fn rows(schema: SchemaRef) -> RecordBatch {
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["h1", "h2"])),
            Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000])),
            Arc::new(Float64Array::from(vec![0.5, 0.25])),
        ],
    )
    .unwrap()
}

fn query_engine(engine: &Arc<Engine>, router: &Arc<FakeRouter>) -> QueryEngine {
    QueryEngine::with_router(
        engine.clone(),
        tokio::runtime::Handle::current(),
        1,
        Arc::new(Shared(router.clone())),
    )
}

#[tokio::test]
async fn a_write_to_a_table_led_elsewhere_goes_to_its_leader_as_arrow() {
    let engine = engine().await;
    let router = FakeRouter::new(0);
    let query = query_engine(&engine, &router);
    let schema = engine.entry("public", "cpu").unwrap().schema.arrow_schema();
    let written = crate::writer::write_batches(
        &query,
        "public",
        vec![("cpu".to_string(), rows(schema))],
        64 << 20,
        crate::writer::Forward::Whole,
        Instant::now() + crate::route::MOVE_WAIT,
    )
    .await
    .unwrap();
    assert_eq!(written, 2);
    let writes = router.calls.0.writes.lock();
    assert_eq!(writes.len(), 1);
    let (endpoint, req, n) = &writes[0];
    assert_eq!(endpoint, "b:1");
    assert_eq!((req.table.as_str(), req.shard_version), ("cpu", 4));
    assert_eq!(req.catalog_fingerprint, FINGERPRINT);
    assert_eq!(req.context.as_ref().unwrap().database, "public");
    assert_eq!(*n, 2);
}

#[tokio::test]
async fn a_write_refused_because_the_shard_moved_is_routed_again() {
    let engine = engine().await;
    // Refused twice: by b, then by the leader after it.
    let router = FakeRouter::new(2);
    let query = query_engine(&engine, &router);
    let schema = engine.entry("public", "cpu").unwrap().schema.arrow_schema();
    let written = crate::writer::write_batches(
        &query,
        "public",
        vec![("cpu".to_string(), rows(schema))],
        64 << 20,
        crate::writer::Forward::Whole,
        Instant::now() + crate::route::MOVE_WAIT,
    )
    .await
    .unwrap();
    assert_eq!(written, 2);
    let writes = router.calls.0.writes.lock();
    let went: Vec<(&str, u64)> = writes
        .iter()
        .map(|(e, r, _)| (e.as_str(), r.shard_version))
        .collect();
    assert_eq!(went, [("b:1", 4), ("n5:1", 5), ("n6:1", 6)]);
}

#[tokio::test]
async fn a_statement_on_tables_one_other_instance_leads_runs_there() {
    let engine = engine().await;
    let router = FakeRouter::new(0);
    let query = query_engine(&engine, &router);
    let sql = "SELECT count(*) FROM cpu WHERE host = 'h1'";
    match query.execute("public", sql).await.unwrap() {
        Output::AffectedRows(n) => assert_eq!(n, 41),
        other => panic!("expected the peer's answer, got {other:?}"),
    }
    let queries = router.calls.0.queries.lock();
    assert_eq!(queries.len(), 1);
    let (endpoint, req) = &queries[0];
    assert_eq!(endpoint, "b:1");
    assert_eq!(req.sql, sql);
    assert!(req.forwarded);
    assert_eq!(req.catalog_fingerprint, FINGERPRINT);
}

#[tokio::test]
async fn a_local_router_answers_as_standalone_did() {
    let engine = engine().await;
    let router = LocalRouter::new(engine.clone());
    assert!(!router.is_distributed());
    assert_eq!(router.node_id(), "standalone");
    // system.shards and system.nodes: one shard, led here, no endpoint.
    assert_eq!(
        router.assignments(),
        [Assignment {
            shard: 0,
            version: 1,
            leader: "standalone".to_string(),
            endpoint: String::new(),
            ..Default::default()
        }]
    );
    assert_eq!(router.remote_leader(STANDALONE_SHARD), None);
    assert!(router.peer_endpoints().is_empty());
    assert!(!router.refresh_catalog().await.unwrap());
    assert_eq!(router.fingerprint(), 0);
    // A table on a shard not open here is not served, and not waited for.
    let entry = engine.entry("public", "cpu").unwrap();
    let err = router
        .target(&entry, Instant::now() + std::time::Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(err, strata_engine::Error::NotServedHere { shard, .. } if shard == SHARD),
        "{err}"
    );
    assert!(router.peer("b:1").await.is_err());
    // SQL through it refuses such a table instead of forwarding it.
    let query =
        QueryEngine::with_router(engine.clone(), tokio::runtime::Handle::current(), 1, router);
    let err = query
        .execute("public", "SELECT * FROM cpu")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), strata_engine::ErrorKind::NotLeader, "{err}");
}

async fn count(query: &QueryEngine, table: &str) -> u64 {
    match query
        .execute("public", &format!("SELECT count(*) AS n FROM {table}"))
        .await
        .unwrap()
    {
        Output::Rows { batches, .. } => batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0) as u64,
        other => panic!("expected a count, got {other:?}"),
    }
}

fn both(engine: &Arc<Engine>) -> Vec<(String, RecordBatch)> {
    ["cpu", "mem"]
        .iter()
        .map(|t| {
            let schema = engine.entry("public", t).unwrap().schema.arrow_schema();
            (t.to_string(), rows(schema))
        })
        .collect()
}

#[tokio::test]
async fn a_refused_forward_leaves_nothing_of_the_request_written_here() {
    let engine = engine().await;
    // Every forward is refused: the shard keeps moving past the deadline.
    let router = FakeRouter::new(u32::MAX);
    let query = query_engine(&engine, &router);
    let err = crate::writer::write_batches(
        &query,
        "public",
        both(&engine),
        64 << 20,
        crate::writer::Forward::Whole,
        Instant::now() + std::time::Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), strata_engine::ErrorKind::ShardMoving, "{err}");
    assert!(!router.calls.0.writes.lock().is_empty());
    assert_eq!(count(&query, "mem").await, 0, "the local table was written");
    // Once the forward goes through, both tables are written.
    router.calls.0.refusals.store(0, Ordering::SeqCst);
    let written = crate::writer::write_batches(
        &query,
        "public",
        both(&engine),
        64 << 20,
        crate::writer::Forward::Whole,
        Instant::now() + crate::route::MOVE_WAIT,
    )
    .await
    .unwrap();
    assert_eq!(written, 4);
    assert_eq!(count(&query, "mem").await, 2);
}

#[tokio::test]
async fn what_cannot_be_forwarded_is_refused_before_anything_is_written() {
    let engine = engine().await;
    let router = FakeRouter::new(0);
    let query = query_engine(&engine, &router);
    let write = |forward, max_decoded| {
        crate::writer::write_batches(
            &query,
            "public",
            both(&engine),
            max_decoded,
            forward,
            Instant::now() + crate::route::MOVE_WAIT,
        )
    };
    // A request forwarded here is not forwarded again.
    let err = write(crate::writer::Forward::Never, 64 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            crate::error::Error::Engine(strata_engine::Error::NotServedHere { shard, .. })
                if shard == SHARD
        ),
        "{err}"
    );
    // Rows larger than one forward may carry, when they must go whole.
    let err = write(crate::writer::Forward::Whole, 64).await.unwrap_err();
    assert!(matches!(err, crate::error::Error::TooLarge(_)), "{err}");
    assert!(router.calls.0.writes.lock().is_empty());
    assert_eq!(count(&query, "mem").await, 0);
    // Remote write's split: the OVERWRITE table's rows in several forwards.
    let written = write(crate::writer::Forward::Split, 64).await.unwrap();
    assert_eq!(written, 4);
    let writes = router.calls.0.writes.lock();
    assert_eq!(writes.len(), 2, "one forward per row");
    assert!(writes.iter().all(|(_, r, n)| r.table == "cpu" && *n == 1));
}

/// A write that reaches several tables is not atomic across them: when an
/// APPEND table's rows were written and another table's failed with a
/// retryable error, the answer says so and is not retryable (a retry of the
/// whole would write the APPEND rows twice). With nothing written, the
/// error stays retryable.
#[tokio::test]
async fn a_partly_written_request_is_not_answered_as_retryable() {
    let engine = engine().await;
    // Every forward is refused: the shard keeps moving.
    let router = FakeRouter::new(u32::MAX);
    let query = query_engine(&engine, &router);
    let write = |tables| {
        crate::writer::write_batches(
            &query,
            "public",
            tables,
            64 << 20,
            crate::writer::Forward::Split,
            Instant::now() + std::time::Duration::from_millis(500),
        )
    };
    let err = write(both(&engine)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .contains("2 rows of this write were written"),
        "{err}"
    );
    assert_eq!(count(&query, "mem").await, 2);
    let cpu_only: Vec<_> = both(&engine).into_iter().take(1).collect();
    let err = write(cpu_only).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

/// A scan of a table led elsewhere asks its leader when the plan runs, not
/// while planning: `EXPLAIN` sends nothing and shows the SQL the leader
/// would run; the query sends it once.
#[tokio::test]
async fn a_remote_scan_asks_the_leader_only_when_the_plan_runs() {
    let engine = engine().await;
    let router = FakeRouter::new(0);
    let query = query_engine(&engine, &router);
    // `mem` is local, so the statement is not forwarded whole.
    let sql = "SELECT host FROM cpu WHERE usage > 1 UNION ALL SELECT host FROM mem";
    let plan = match query
        .execute("public", &format!("EXPLAIN {sql}"))
        .await
        .unwrap()
    {
        Output::Rows { batches, .. } => batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected a plan, got {other:?}"),
    };
    assert!(router.calls.0.queries.lock().is_empty(), "{plan}");
    assert!(
        plan.contains(r#"RemoteScanExec: table=cpu, leader=b:1, sql=SELECT "host", "usage" FROM "public"."cpu" WHERE (("usage" > 1"#),
        "{plan}"
    );
    query.execute("public", sql).await.unwrap();
    let queries = router.calls.0.queries.lock();
    assert_eq!(queries.len(), 1);
    let (endpoint, req) = &queries[0];
    assert_eq!(endpoint, "b:1");
    assert!(
        req.sql
            .starts_with(r#"SELECT "host", "usage" FROM "public"."cpu" WHERE"#),
        "{}",
        req.sql
    );
    assert!(req.forwarded);
}

/// The rows of a query's answer as sorted lines.
fn lines(output: Output) -> Vec<String> {
    let Output::Rows { batches, .. } = output else {
        panic!("expected rows, got {output:?}");
    };
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_partial_aggregate_and_a_top_k_run_on_the_leader() {
    let engine = engine().await;
    let router = FakeRouter::new(0);
    let query = query_engine(&engine, &router);
    // The "leader" runs the parts it is sent over `mem`, which has the
    // same columns as `cpu`: each query's `cpu` half answers what its
    // `mem` half does, computed through a serialized part.
    *router.calls.0.leader.lock() = Some(QueryEngine::new(
        engine.clone(),
        tokio::runtime::Handle::current(),
        2,
    ));
    query
        .execute(
            "public",
            "INSERT INTO mem (host, ts, usage) VALUES ('a', 1, 1.0), ('a', 2, 3.0), ('b', 1, 10.0), ('b', 2, NULL), ('c', 5, 7.5)",
        )
        .await
        .unwrap();
    let cases = [
        (
            "SELECT host, count(*) AS n, avg(usage) AS a, count(DISTINCT usage) AS d, max(ts) AS m FROM {t} WHERE usage IS NOT NULL OR host = 'b' GROUP BY host",
            "AggregateExec: mode=Partial",
        ),
        ("SELECT sum(usage) AS s, count(usage) AS c FROM {t}", "AggregateExec: mode=Partial"),
        (
            "SELECT host, usage FROM {t} WHERE usage > 2 ORDER BY usage DESC LIMIT 2",
            "SortExec: TopK(fetch=2)",
        ),
    ];
    for (shape, pushed) in cases {
        let sql = format!(
            "SELECT 'cpu' AS t, * FROM ({}) UNION ALL SELECT 'mem' AS t, * FROM ({})",
            shape.replace("{t}", "cpu"),
            shape.replace("{t}", "mem")
        );
        let plan = physical_plan(&query, &sql).await;
        let remote = plan
            .lines()
            .find(|l| l.contains("RemotePlanExec: table=cpu, leader=b:1"))
            .unwrap_or_else(|| panic!("{plan}"));
        assert!(remote.contains(pushed), "{remote}");
        let before = router.calls.0.plans.lock().len();
        let answer = lines(query.execute("public", &sql).await.unwrap());
        assert_eq!(router.calls.0.plans.lock().len(), before + 1, "{sql}");
        assert!(router.calls.0.queries.lock().is_empty());
        let (cpu, mem): (Vec<_>, Vec<_>) = answer.iter().partition(|l| l.contains("| cpu "));
        let strip = |v: Vec<&String>| {
            v.iter()
                .map(|l| {
                    l.replacen("| cpu ", "| x   ", 1)
                        .replacen("| mem ", "| x   ", 1)
                })
                .collect::<Vec<_>>()
        };
        assert!(!mem.is_empty(), "{sql}");
        assert_eq!(strip(cpu), strip(mem), "{sql}");
    }
    let (_, req) = router.calls.0.plans.lock()[0].clone();
    assert_eq!(req.table, "cpu");
    assert!(
        !req.filters.is_empty(),
        "the scan's filters are sent for pruning"
    );
    // A leader of an older version, which runs no plan parts: its rows are
    // read with SQL and the part runs here.
    router.calls.0.old_version.store(true, Ordering::SeqCst);
    let sql = "SELECT host, count(*) FROM cpu GROUP BY host UNION ALL SELECT host, count(*) FROM mem GROUP BY host";
    lines(query.execute("public", sql).await.unwrap());
    let queries = router.calls.0.queries.lock().clone();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert!(
        queries[0]
            .1
            .sql
            .starts_with(r#"SELECT "host" FROM "public"."cpu""#),
        "{queries:?}"
    );
    router.calls.0.queries.lock().clear();
    router.calls.0.old_version.store(false, Ordering::SeqCst);

    // A sort without a limit over both tables: the leader sorts `cpu`'s
    // rows, `mem`'s are sorted here, the two merged; the same rows in the
    // same order as over `mem` twice.
    let sorted = "SELECT host, usage, ts FROM {a} WHERE usage > 0 UNION ALL \
                  SELECT host, usage, ts FROM {b} WHERE usage > 0 ORDER BY usage DESC, host";
    let both = sorted.replace("{a}", "cpu").replace("{b}", "mem");
    let plan = physical_plan(&query, &both).await;
    assert!(
        plan.contains("RemotePlanExec: table=cpu, leader=b:1, runs=[SortPreservingMergeExec"),
        "{plan}"
    );
    let before = router.calls.0.plans.lock().len();
    let got = lines(query.execute("public", &both).await.unwrap());
    assert_eq!(router.calls.0.plans.lock().len(), before + 1);
    let local = sorted.replace("{a}", "mem").replace("{b}", "mem");
    let expected = lines(query.execute("public", &local).await.unwrap());
    assert_eq!(got, expected);
    assert!(got.len() > 6, "{got:?}");
    // A window over both: its sort is sent too when DataFusion plans it
    // over one merged stream (a sort per hash partition would stay here:
    // a part does not keep that partitioning), and it answers as over
    // local tables.
    let window = "SELECT host, ts, row_number() OVER (PARTITION BY host ORDER BY ts) AS r \
                  FROM (SELECT host, ts FROM {a} UNION ALL SELECT host, ts FROM {b}) \
                  ORDER BY host, ts, r";
    let over = |a: &str| window.replace("{a}", a).replace("{b}", "mem");
    let got = lines(query.execute("public", &over("cpu")).await.unwrap());
    let expected = lines(query.execute("public", &over("mem")).await.unwrap());
    assert_eq!(got, expected);
    assert!(got.len() > 6, "{got:?}");

    // Shapes whose operator stays here: a limit under the aggregate (a
    // part would limit each part, not the whole), a scalar subquery (the
    // leader cannot evaluate it): the leader is sent a scan, no part.
    let sent = router.calls.0.plans.lock().len();
    for shape in [
        "SELECT count(*) AS n FROM (SELECT * FROM {t} WHERE usage > 0 LIMIT 2)",
        "SELECT count(*) AS n FROM {t} WHERE usage > (SELECT avg(usage) FROM mem)",
    ] {
        let sql = format!(
            "SELECT 'cpu' AS t, * FROM ({}) UNION ALL SELECT 'mem' AS t, * FROM ({})",
            shape.replace("{t}", "cpu"),
            shape.replace("{t}", "mem")
        );
        let plan = physical_plan(&query, &sql).await;
        assert!(!plan.contains("RemotePlanExec"), "{plan}");
        assert!(plan.contains("RemoteScanExec: table=cpu"), "{plan}");
    }
    assert_eq!(router.calls.0.plans.lock().len(), sent);
}

/// The physical plan `EXPLAIN` shows, one line per operator.
async fn physical_plan(query: &QueryEngine, sql: &str) -> String {
    let rows = query
        .execute("public", &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    let Output::Rows { batches, .. } = rows else {
        panic!("expected a plan");
    };
    let mut out = String::new();
    for b in &batches {
        let kind = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let plan = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            if kind.value(i) == "physical_plan" {
                out.push_str(plan.value(i));
            }
        }
    }
    out
}

/// Distributed plans of the TSBS query shapes over a partitioned table
/// with two partitions led here and two by instance `b:1`: what runs on
/// the leader (`RemotePlanExec`), what runs here.
#[tokio::test]
async fn distributed_plans_of_the_tsbs_query_shapes() {
    let engine = engine_with(true).await;
    let router = FakeRouter::new(0);
    let query = QueryEngine::with_router(
        engine.clone(),
        tokio::runtime::Handle::current(),
        2,
        Arc::new(Shared(router.clone())),
    );
    let window = "\"timestamp\" >= TIMESTAMP '2024-01-01 00:00:00' AND \"timestamp\" < TIMESTAMP '2024-01-01 12:00:00'";
    let shapes = [
        (
            "single_groupby_1_1_1",
            format!("SELECT date_trunc('minute', \"timestamp\") AS minute, max(usage_user) AS max_usage_user FROM pcpu WHERE {window} AND hostname IN ('host_1') GROUP BY 1 ORDER BY 1"),
        ),
        (
            "double_groupby_all",
            format!("SELECT date_trunc('hour', \"timestamp\") AS hour, hostname, avg(usage_user) AS a, avg(usage_system) AS b FROM pcpu WHERE {window} GROUP BY 1, 2 ORDER BY 1, 2"),
        ),
        (
            "high_cpu_all",
            format!("SELECT \"timestamp\", hostname, usage_user FROM pcpu WHERE usage_user > 90.0 AND {window} ORDER BY \"timestamp\", hostname"),
        ),
        (
            "groupby_orderby_limit",
            "SELECT date_trunc('minute', \"timestamp\") AS minute, max(usage_user) AS m FROM pcpu GROUP BY 1 ORDER BY 1 DESC LIMIT 5".to_string(),
        ),
        (
            "top_k",
            "SELECT hostname, usage_user FROM pcpu ORDER BY usage_user DESC LIMIT 3".to_string(),
        ),
        (
            "count_distinct",
            "SELECT count(DISTINCT hostname), count(*) FROM pcpu".to_string(),
        ),
        (
            "lastpoint_join",
            "SELECT c.hostname, c.usage_user FROM pcpu c JOIN (SELECT hostname, max(\"timestamp\") AS t FROM pcpu GROUP BY hostname) m ON c.hostname = m.hostname AND c.\"timestamp\" = m.t ORDER BY c.hostname".to_string(),
        ),
    ];
    for (name, sql) in shapes {
        let plan = physical_plan(&query, &sql).await;
        insta::assert_snapshot!(name, plan, &sql);
    }
    // Planning asked no instance anything.
    assert!(router.calls.0.plans.lock().is_empty());
    assert!(router.calls.0.queries.lock().is_empty());
}
