//! The SQL front end.
//!
//! Strata's own statements (DDL with `TAG` and `TIMESTAMP KEY`, `SHOW`,
//! `DESCRIBE`, `USE`, databases) are parsed here; everything else (queries,
//! `INSERT`, `EXPLAIN [ANALYZE]`) is planned and run by DataFusion over the
//! engine's table providers. Query execution runs on a dedicated runtime so
//! that heavy scans do not stall the network I/O threads.

pub mod alter_table;
mod catalog;
mod coercion;
mod compute;
pub mod create_table;
pub mod distributed;
mod insert_check;
mod last_values;
pub mod limits;
pub mod partitioned;
pub mod pg_compat;
pub(crate) mod remote;
mod remote_scan;
mod statements;
pub use statements::{parse_set_read_preference, SetReadPreference};
pub mod system;
pub mod tokens;

use std::{future::Future, sync::Arc};

use arrow::{
    array::{Array, AsArray, RecordBatch},
    datatypes::{DataType, SchemaRef, UInt64Type},
};
use datafusion::{
    common::ScalarValue,
    dataframe::DataFrame,
    execution::{
        context::SQLOptions,
        memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation},
        runtime_env::RuntimeEnv,
        session_state::{SessionState, SessionStateBuilder},
    },
    logical_expr::LogicalPlan,
    optimizer::analyzer::{
        resolve_grouping_function::ResolveGroupingFunction, type_coercion::TypeCoercion,
    },
    prelude::{SessionConfig, SessionContext},
};
use strata_client::split::split_statements;
use strata_engine::{catalog::DEFAULT_DATABASE, Engine};

pub use self::{catalog::CATALOG_NAME, limits::QueryLimits};
pub use crate::error::RemoteError;
use crate::{
    error::{Error, Result},
    route::{LocalRouter, Router},
};

/// The bytes a batch's rows take: its slice of each buffer (a batch cut
/// from a larger one shares that one's buffers, which
/// `get_array_memory_size` would count whole for every slice).
pub(crate) fn batch_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// Runs a query and gathers its rows, counting them against the request's
/// memory pool: a result larger than `query.memory_limit` fails with
/// `ResourcesExhausted` as it grows, instead of being collected whole.
async fn collect_counted(df: DataFrame, pool: &Arc<dyn MemoryPool>) -> Result<Vec<RecordBatch>> {
    use futures::StreamExt;
    let mut stream = df.execute_stream().await?;
    let reservation = MemoryConsumer::new("query result").register(pool);
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        reservation.try_grow(batch_size(&batch))?;
        out.push(batch);
    }
    Ok(out)
}

/// Parses `sql` as [`QueryEngine::execute`] would before planning
/// anything: splits it into statements, then runs Strata's own statement
/// parsers (`USE`, `CREATE TABLE`, `ALTER TABLE`) and DataFusion's parser
/// (with the dialect and limits of a default session) over each. Nothing
/// is planned or run. The fuzz targets (`fuzz/`) call this; any input must
/// return, with `Ok` or an error.
#[doc(hidden)]
pub fn parse_only(sql: &str) -> Result<()> {
    static STATE: std::sync::OnceLock<SessionState> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_DATABASE)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build()
    });
    let dialect = state.config().options().sql_parser.dialect;
    for stmt in split_statements(sql) {
        if statements::parse_use(&stmt)?.is_some()
            || statements::parse_set_read_preference(&stmt)?.is_some()
        {
            continue;
        }
        // Each parser refuses what is not its statement; errors are
        // answers, only a panic (or a hang) is a bug.
        let _ = create_table::parse(&stmt);
        let _ = alter_table::parse(&stmt);
        state.sql_to_statement(&stmt, &dialect)?;
    }
    Ok(())
}

/// The result of one statement.
#[derive(Debug)]
pub enum Output {
    AffectedRows(u64),
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
}

/// Runs SQL against the engine.
#[derive(Clone)]
pub struct QueryEngine {
    engine: Arc<Engine>,
    ctx: SessionContext,
    /// Cluster mode: the context for requests forwarded by another
    /// instance, which resolves only the tables open here.
    local_ctx: SessionContext,
    /// The context of read-only statements under `read_preference =
    /// follower`: a table whose shard this instance follows is read from
    /// its follower copy (possibly behind the leader), the rest as `ctx`.
    follower_ctx: SessionContext,
    /// Whether this engine's read-only statements prefer followers.
    follower_reads: bool,
    /// Whether clients' read-only statements go to compute instances
    /// (`query.offload_reads`); the next one to ask.
    offload_reads: bool,
    offload_next: Arc<std::sync::atomic::AtomicUsize>,
    /// Where tables are served: [`LocalRouter`] in standalone.
    router: Arc<dyn Router>,
    runtime: tokio::runtime::Handle,
    /// Prometheus series labels by series id, for PromQL and remote read.
    prom_labels: Arc<crate::prom::LabelCache>,
    limits: Arc<QueryLimits>,
    /// Set on the copy [`QueryEngine::limited`] hands a request: its slot
    /// and memory pool, which every statement of the request shares.
    admission: Option<Arc<limits::Admission>>,
}

/// Aborts the spawned task when dropped, so a cancelled request stops its
/// query.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Gives the values of a statement's parameters (`$1` first), given the
/// types DataFusion inferred for its placeholders (`None` where it inferred
/// none; the slice may be shorter than the parameters sent).
pub type Binder = Arc<dyn Fn(&[Option<DataType>]) -> Result<Vec<ScalarValue>> + Send + Sync>;

/// A [`Binder`] for values already decoded: each is cast to the type
/// inferred for its placeholder, if it has another.
pub fn cast_binder(values: Vec<ScalarValue>) -> Binder {
    Arc::new(move |types: &[Option<DataType>]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match types.get(i).cloned().flatten() {
                Some(want) if want != DataType::Null && v.data_type() != want => {
                    v.cast_to(&want).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "parameter ${}: {v} cannot be read as {want}: {e}",
                            i + 1
                        ))
                    })
                }
                _ => Ok(v.clone()),
            })
            .collect()
    })
}

/// `state` with unqualified table names resolving in `database`.
fn in_database(mut state: SessionState, database: &str) -> SessionState {
    state.config_mut().options_mut().catalog.default_schema = database.to_string();
    // Planning folds `current_database()` with the configuration taken when
    // the state was made: take it again now that it names the database.
    state.mark_start_execution();
    state
}

/// The most parameters one statement may have (PostgreSQL's own bound).
const MAX_PARAMETERS: usize = 65_535;

/// Binds a plan's placeholders to the values `bind` gives for their types.
fn bind_plan(plan: LogicalPlan, bind: &Binder) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    let count = types
        .keys()
        .filter_map(|id| id.strip_prefix('$')?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    // The placeholder numbers come from the client's text (`$4000000000`):
    // PostgreSQL's own bound on parameters.
    if count > MAX_PARAMETERS {
        return Err(Error::InvalidArgument(format!(
            "parameter ${count} is above the limit of {MAX_PARAMETERS} parameters"
        )));
    }
    let ordered: Vec<Option<DataType>> = (1..=count)
        .map(|n| types.get(&format!("${n}")).cloned().flatten())
        .collect();
    let values = bind(&ordered)?;
    Ok(plan.with_param_values(values)?)
}

/// The one statement of `sql` (parameters bind to one statement only).
fn single_statement(sql: &str) -> Result<String> {
    crate::limits::check_sql(sql)?;
    let mut statements = split_statements(sql);
    match statements.len() {
        0 => Err(Error::InvalidArgument("empty SQL statement".to_string())),
        1 => Ok(statements.remove(0)),
        n => Err(Error::InvalidArgument(format!(
            "cannot insert multiple commands into a prepared statement ({n} statements given)"
        ))),
    }
}

/// The statement's first word, lower-cased.
fn first_word(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Whether a statement DataFusion plans returns rows.
fn returns_rows(sql: &str) -> bool {
    matches!(
        first_word(sql).as_str(),
        "select" | "with" | "values" | "" | "explain"
    )
}

impl QueryEngine {
    /// `runtime` runs query execution; it should be separate from the one
    /// serving network I/O.
    pub fn new(
        engine: Arc<Engine>,
        runtime: tokio::runtime::Handle,
        target_partitions: usize,
    ) -> Self {
        let router = LocalRouter::new(engine.clone());
        Self::with_router(engine, runtime, target_partitions, router)
    }

    /// A query engine whose tables `router` places (a cluster's, or a
    /// [`LocalRouter`]).
    pub fn with_router(
        engine: Arc<Engine>,
        runtime: tokio::runtime::Handle,
        target_partitions: usize,
        router: Arc<dyn Router>,
    ) -> Self {
        let ctx = Self::context(&engine, target_partitions, router.clone(), false);
        // Requests forwarded here are not forwarded again.
        let local_ctx = Self::context(
            &engine,
            target_partitions,
            LocalRouter::new(engine.clone()),
            false,
        );
        let follower_ctx = Self::context(&engine, target_partitions, router.clone(), true);
        Self {
            engine,
            ctx,
            local_ctx,
            follower_ctx,
            follower_reads: false,
            offload_reads: false,
            offload_next: Default::default(),
            router,
            runtime,
            prom_labels: Default::default(),
            limits: Arc::new(QueryLimits::unlimited()),
            admission: None,
        }
    }

    /// This engine, with read-only statements reading the tables of shards
    /// followed here from the followers (`read_preference = follower`: a
    /// follower may be behind its leader; `system.shards` shows by how
    /// much) or, with `false`, always from the leaders (the default:
    /// read-your-writes).
    pub fn reading_followers(&self, yes: bool) -> Self {
        let mut q = self.clone();
        q.follower_reads = yes;
        q
    }

    /// This engine, sending clients' read-only statements to compute
    /// instances (`query.offload_reads`).
    pub fn offloading_reads(&self, yes: bool) -> Self {
        let mut q = self.clone();
        q.offload_reads = yes;
        q
    }

    /// Whether read-only statements read from followers.
    pub fn reads_followers(&self) -> bool {
        self.follower_reads
    }

    /// Applies `limits` to the requests run through [`Self::limited`].
    pub fn with_limits(mut self, limits: QueryLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// Runs one client request under the query limits: waits (up to
    /// `query.queue_timeout`) for one of `query.max_concurrent` slots,
    /// hands `run` a query engine whose statements share one memory pool of
    /// `query.memory_limit`, and cancels the request after `query.timeout`.
    /// `forwarded` requests (part of a query another instance admitted)
    /// wait for a slot of a second set of the same size. Nested calls run under the outer request's limits.
    pub async fn limited<T, F, Fut>(&self, forwarded: bool, run: F) -> Result<T>
    where
        F: FnOnce(QueryEngine) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.admission.is_some() {
            return run(self.clone()).await;
        }
        let slot = self.limits.admit(forwarded).await?;
        let admitted = QueryEngine {
            admission: Some(Arc::new(limits::Admission::new(self.limits.pool(), slot))),
            ..self.clone()
        };
        let result = match self.limits.timeout() {
            Some(after) => tokio::time::timeout(after, run(admitted))
                .await
                .unwrap_or_else(|_| Err(self.limits.timed_out(after))),
            None => run(admitted).await,
        };
        result.map_err(|e| self.limits.explain(e))
    }

    /// A reservation on the request's memory pool, for what a request
    /// holds outside DataFusion's operators (the series a PromQL query
    /// evaluates, its answer): growing it past `query.memory_limit` fails
    /// with `ResourcesExhausted`.
    pub(crate) fn reservation(&self, name: &str) -> MemoryReservation {
        let pool = self
            .admission
            .as_ref()
            .map_or_else(|| self.limits.pool(), |a| a.pool.clone());
        MemoryConsumer::new(name).register(&pool)
    }

    pub(crate) fn prom_labels(&self) -> &crate::prom::LabelCache {
        &self.prom_labels
    }

    /// Where tables are served.
    pub fn router(&self) -> &Arc<dyn Router> {
        &self.router
    }

    /// Refreshes the catalog once when `db` is unknown here (it may have
    /// been created through another instance a moment ago); then
    /// `DatabaseNotFound`.
    pub async fn ensure_database(&self, db: &str) -> Result<()> {
        if !self.engine.database_exists(db) {
            self.router.refresh_catalog().await?;
        }
        if !self.engine.database_exists(db) {
            return Err(strata_engine::Error::DatabaseNotFound {
                name: db.to_string(),
            }
            .into());
        }
        Ok(())
    }

    fn context(
        engine: &Arc<Engine>,
        target_partitions: usize,
        router: Arc<dyn Router>,
        followers: bool,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_DATABASE)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        if target_partitions > 0 {
            config = config.with_target_partitions(target_partitions);
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rules(vec![
                Arc::new(ResolveGroupingFunction::new()),
                Arc::new(coercion::IntegerAsTimestamp),
                Arc::new(TypeCoercion::new()),
            ])
            // After DataFusion's rules: partial aggregates and top-k sorts
            // run where the rows are.
            .with_physical_optimizer_rule(Arc::new(distributed::PushToData))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(pg_compat::current_setting_udf());
        for udf in pg_compat::session_database_udfs() {
            ctx.register_udf(udf);
        }
        ctx.register_udtf(
            last_values::NAME,
            Arc::new(last_values::LastValuesFunction {
                engine: engine.clone(),
                router: router.clone(),
            }),
        );
        ctx.register_catalog(
            CATALOG_NAME,
            Arc::new(catalog::StrataCatalog::new(
                engine.clone(),
                router,
                followers,
            )),
        );
        ctx.runtime_env()
            .register_object_store(engine.object_store_url().as_ref(), engine.object_store());
        ctx
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A session whose unqualified table names resolve in `database`, for
    /// parsing and resolving names only.
    fn parse_session(&self, database: &str) -> SessionState {
        in_database(self.ctx.state(), database)
    }

    /// A session whose unqualified table names resolve in `database`, and
    /// whose operators draw on the request's memory pool (a pool of its own
    /// outside [`Self::limited`]).
    fn session(&self, database: &str, forwarded: bool, read_only: bool) -> SessionState {
        let base = if forwarded {
            self.local_ctx.state()
        } else if read_only && self.follower_reads {
            self.follower_ctx.state()
        } else {
            self.ctx.state()
        };
        let pool = self
            .admission
            .as_ref()
            .map_or_else(|| self.limits.pool(), |a| a.pool.clone());
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: pool,
            ..RuntimeEnv::clone(base.runtime_env())
        });
        let state = SessionStateBuilder::new_from_existing(base)
            .with_runtime_env(runtime)
            .build();
        in_database(state, database)
    }

    /// Runs `fut` on the query runtime; dropping the returned future cancels it.
    async fn on_query_runtime<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let mut task = AbortOnDrop(self.runtime.spawn(fut));
        match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!("query task failed: {e}"))),
        }
    }

    /// Runs every statement in `sql` in order and returns the last one's
    /// output. `USE db` changes the database for the statements after it.
    pub async fn execute(&self, database: &str, sql: &str) -> Result<Output> {
        self.execute_with(database, sql, false).await
    }

    /// Runs SQL; `forwarded` requests (from another instance) see only the
    /// tables whose shards are open here, and are never forwarded again.
    pub async fn execute_with(&self, database: &str, sql: &str, forwarded: bool) -> Result<Output> {
        let database = if database.is_empty() {
            DEFAULT_DATABASE
        } else {
            database
        };
        crate::limits::check_sql(sql)?;
        let statements = split_statements(sql);
        if statements.is_empty() {
            return Err(Error::InvalidArgument("empty SQL statement".to_string()));
        }
        let mut current = database.to_string();
        let mut last = Output::AffectedRows(0);
        // `SET read_preference` changes it for the rest of the request.
        let mut preferring: Option<Self> = None;
        for stmt in statements {
            if let Some(db) = statements::parse_use(&stmt)? {
                if !self.engine.database_exists(&db) {
                    return Err(strata_engine::Error::DatabaseNotFound { name: db }.into());
                }
                current = db;
                last = Output::AffectedRows(0);
                continue;
            }
            if let Some(set) = statements::parse_set_read_preference(&stmt)? {
                preferring = Some(self.reading_followers(match set {
                    statements::SetReadPreference::To(p) => {
                        p == crate::config::ReadPreference::Follower
                    }
                    statements::SetReadPreference::Default => self.follower_reads,
                }));
                last = Output::AffectedRows(0);
                continue;
            }
            let q = preferring.as_ref().unwrap_or(self);
            let started = std::time::Instant::now();
            last = loop {
                match q.execute_one(&current, &stmt, forwarded).await {
                    // Cluster mode: the catalog may lag meta by a heartbeat
                    // (a table created through another instance); refresh
                    // once.
                    Err(e) if catalog_may_lag(&e) => {
                        if !self.router.refresh_catalog().await? {
                            return Err(e);
                        }
                        break q.execute_one(&current, &stmt, forwarded).await?;
                    }
                    // A table being opened on its shard (just created, or
                    // handed over by a split or merge): nothing ran.
                    Err(e) if table_moving(&e) && started.elapsed() < crate::route::MOVE_WAIT => {
                        tokio::time::sleep(crate::route::MOVE_POLL).await;
                    }
                    other => break other?,
                }
            };
        }
        Ok(last)
    }

    async fn execute_one(&self, database: &str, sql: &str, forwarded: bool) -> Result<Output> {
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let forwardable = matches!(
            first.as_str(),
            "select" | "insert" | "explain" | "with" | "delete" | "update" | "("
        );
        let read_only = matches!(first_word(sql).as_str(), "select" | "with");
        if self.offload_reads
            && read_only
            && !forwarded
            && !self.router.reads_storage()
            // The system tables describe the instance asked (a statement
            // that names `system` at all, in any quoting, stays here).
            && database != system::SYSTEM_DATABASE
            && !sql.to_ascii_lowercase().contains(system::SYSTEM_DATABASE)
            // Follower reads are this instance's own copies.
            && !self.follower_reads
        {
            let computes = self.router.compute_endpoints();
            if !computes.is_empty() {
                let next = self
                    .offload_next
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let endpoint = &computes[next % computes.len()];
                // A statement of its own there (not a forwarded one, which
                // would see only shards open there: none).
                match self.forward_as(endpoint, database, sql, false).await {
                    Err(e)
                        if matches!(
                            e.kind(),
                            strata_engine::ErrorKind::Unavailable
                                | strata_engine::ErrorKind::Overloaded
                        ) =>
                    {
                        tracing::debug!(%endpoint, error = %e,
                            "a compute instance did not take a read; running it here");
                    }
                    other => return other,
                }
            }
        }
        if self.router.is_distributed() && !forwarded && forwardable {
            // Every table the statement names is led by one other instance:
            // that instance runs the whole statement (its plan, EXPLAIN and
            // INSERT checks are the leader's own).
            if let Some(endpoint) = self
                .single_remote_leader(database, sql)
                .filter(|_| !(read_only && self.follower_reads && self.follows_any(database, sql)))
                // A compute instance reads tables itself (its reason to be).
                .filter(|_| !(self.router.reads_storage() && (read_only || first == "explain")))
            {
                match self.forward(&endpoint, database, sql).await {
                    Err(e)
                        if matches!(
                            e.kind(),
                            strata_engine::ErrorKind::NotLeader
                                | strata_engine::ErrorKind::ShardMoving
                        ) =>
                    {
                        // It moved meanwhile: run it here, reaching the
                        // tables through their new leaders.
                    }
                    other => return other,
                }
            }
        }
        if self.router.is_distributed()
            && !forwarded
            && matches!(first.as_str(), "flush" | "compact")
        {
            if let Some((verb, db, name)) = statements::maintenance_statement(sql) {
                let db = db.unwrap_or_else(|| database.to_string());
                if let Some(entry) = self
                    .engine
                    .entry(&db, &name)
                    .ok()
                    .filter(|e| e.partition.is_some())
                {
                    return self.maintain_partitions(verb, &entry).await;
                }
            }
        }
        match statements::try_execute(&self.engine, database, sql).await {
            Ok(Some(output)) => {
                if matches!(first.as_str(), "create" | "drop" | "alter") {
                    // Take the catalog's new fingerprint, which requests
                    // forwarded from here carry to the leaders.
                    self.router.refresh_catalog().await?;
                }
                return Ok(output);
            }
            Ok(None) => {}
            // A statement on one table (FLUSH, COMPACT) led elsewhere.
            Err(Error::Engine(strata_engine::Error::NotServedHere { shard, table }))
                if !forwarded =>
            {
                let leader = self.router.remote_leader(shard).ok_or(
                    strata_engine::Error::NotServedHere {
                        table: table.clone(),
                        shard,
                    },
                )?;
                let output = self.forward(&leader.endpoint, database, sql).await?;
                if self.router.reads_storage() {
                    // This instance's copy of the table reads the manifest
                    // the statement rewrote before its next query.
                    if let Some((_, db, name)) = statements::maintenance_statement(sql) {
                        let db = db.unwrap_or_else(|| database.to_string());
                        if let Ok(entry) = self.engine.entry(&db, &name) {
                            self.engine.reread(entry.id);
                        }
                    }
                }
                return Ok(output);
            }
            Err(e) => return Err(e),
        }
        self.run_datafusion(database, sql, forwarded, None).await
    }

    /// Plans and runs one statement with DataFusion. With `bind`, the
    /// statement's `$n` placeholders are bound to the values it gives (for
    /// the types DataFusion inferred for them) on the logical plan: values
    /// never become SQL text.
    async fn run_datafusion(
        &self,
        database: &str,
        sql: &str,
        forwarded: bool,
        bind: Option<Binder>,
    ) -> Result<Output> {
        let read_only = matches!(first_word(sql).as_str(), "select" | "with");
        let state = self.session(database, forwarded, read_only);
        let engine = self.engine.clone();
        let database = database.to_string();
        let sql = sql.to_string();
        // The slot stays taken until the task ends, even when a timeout
        // dropped the request first.
        let admission = self.admission.clone();
        self.on_query_runtime(async move {
            let _admission = admission;
            let dialect = state.config().options().sql_parser.dialect;
            let statement = state.sql_to_statement(&sql, &dialect)?;
            insert_check::check(&statement, &engine, &database)?;
            let plan = state.statement_to_plan(statement).await?;
            let plan = match bind {
                Some(bind) => bind_plan(plan, &bind)?,
                None => plan,
            };
            if SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_statements(false)
                .verify_plan(&plan)
                .is_err()
            {
                let what = match &plan {
                    LogicalPlan::Ddl(ddl) => format!(
                        "Unsupported: {} is not supported; Strata runs its own DDL (CREATE/DROP TABLE, CREATE/DROP DATABASE)",
                        ddl.name()
                    ),
                    _ => "Unsupported: SET, transactions and prepared statements are not supported".to_string(),
                };
                return Err(Error::Unsupported(what));
            }
            let is_dml = matches!(plan, LogicalPlan::Dml(_));
            let pool = state.runtime_env().memory_pool.clone();
            let df = DataFrame::new(state, plan);
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = collect_counted(df, &pool).await?;
            if is_dml {
                let count = batches
                    .first()
                    .and_then(|b| {
                        b.column(0)
                            .as_primitive_opt::<UInt64Type>()
                            .map(|c| c.value(0))
                    })
                    .unwrap_or(0);
                return Ok(Output::AffectedRows(count));
            }
            Ok(Output::Rows { schema, batches })
        })
        .await
    }

    /// Runs one statement whose `$1`, `$2`, … placeholders are bound to
    /// values by `bind` (the PostgreSQL extended protocol). Only statements
    /// DataFusion plans take parameters (queries, `INSERT`, `EXPLAIN`);
    /// several statements at once are refused. In a cluster the statement
    /// runs here, reaching other instances' tables through their leaders.
    pub async fn execute_bound(&self, database: &str, sql: &str, bind: Binder) -> Result<Output> {
        let database = if database.is_empty() {
            DEFAULT_DATABASE
        } else {
            database
        };
        let sql = single_statement(sql)?;
        let started = std::time::Instant::now();
        loop {
            match self
                .run_datafusion(database, &sql, false, Some(bind.clone()))
                .await
            {
                Err(e) if catalog_may_lag(&e) => {
                    if !self.router.refresh_catalog().await? {
                        return Err(e);
                    }
                    return self.run_datafusion(database, &sql, false, Some(bind)).await;
                }
                Err(e) if table_moving(&e) && started.elapsed() < crate::route::MOVE_WAIT => {
                    tokio::time::sleep(crate::route::MOVE_POLL).await;
                }
                other => return other,
            }
        }
    }

    /// The columns of a statement whose placeholders `bind` binds (see
    /// [`Self::execute_bound`]), without running it; `None` for statements
    /// that return no rows.
    pub async fn describe_bound(
        &self,
        database: &str,
        sql: &str,
        bind: Binder,
    ) -> Result<Option<SchemaRef>> {
        let sql = single_statement(sql)?;
        if !returns_rows(&sql) {
            return Ok(None);
        }
        let state = self.session(database, false, false);
        self.on_query_runtime(async move {
            let dialect = state.config().options().sql_parser.dialect;
            let statement = state.sql_to_statement(&sql, &dialect)?;
            let plan = bind_plan(state.statement_to_plan(statement).await?, &bind)?;
            Ok(Some(Arc::new(plan.schema().as_arrow().clone()) as SchemaRef))
        })
        .await
    }

    /// The columns a statement returns, without running it: DataFusion plans
    /// queries; Strata's read-only `SHOW` and `DESCRIBE` run (they only read
    /// the catalog); any other statement returns no rows (`None`). Used by
    /// the PostgreSQL protocol's Describe.
    pub async fn describe(&self, database: &str, sql: &str) -> Result<Option<SchemaRef>> {
        crate::limits::check_sql(sql)?;
        match first_word(sql).as_str() {
            "select" | "with" | "values" | "" | "explain" => {
                let state = self.session(database, false, false);
                let sql = sql.to_string();
                self.on_query_runtime(async move {
                    let dialect = state.config().options().sql_parser.dialect;
                    let statement = state.sql_to_statement(&sql, &dialect)?;
                    let plan = state.statement_to_plan(statement).await?;
                    Ok(Some(Arc::new(plan.schema().as_arrow().clone()) as SchemaRef))
                })
                .await
            }
            "show" | "describe" | "desc" => match self.execute(database, sql).await? {
                Output::Rows { schema, .. } => Ok(Some(schema)),
                Output::AffectedRows(_) => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// The endpoint of the one other instance that leads every table the
    /// statement names, if there is one.
    fn single_remote_leader(&self, database: &str, sql: &str) -> Option<String> {
        let state = self.parse_session(database);
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).ok()?;
        let refs = state.resolve_table_references(&statement).ok()?;
        let mut leader: Option<String> = None;
        for r in refs {
            if r.catalog().is_some_and(|c| c != CATALOG_NAME) {
                return None;
            }
            let db = r.schema().unwrap_or(database);
            let Ok(strata_engine::Located::Remote(entry)) = self.engine.locate(db, r.table())
            else {
                return None;
            };
            let a = self.router.remote_leader(entry.shard)?;
            match &leader {
                None => leader = Some(a.endpoint),
                Some(l) if *l == a.endpoint => {}
                Some(_) => return None,
            }
        }
        leader
    }

    /// Whether a table the statement names is on a shard followed here.
    fn follows_any(&self, database: &str, sql: &str) -> bool {
        let state = self.parse_session(database);
        let dialect = state.config().options().sql_parser.dialect;
        let Ok(statement) = state.sql_to_statement(sql, &dialect) else {
            return false;
        };
        let Ok(refs) = state.resolve_table_references(&statement) else {
            return false;
        };
        refs.iter().any(|r| {
            let db = r.schema().unwrap_or(database);
            self.engine.entry(db, r.table()).is_ok_and(|e| {
                self.engine
                    .follower(e.shard)
                    .is_some_and(|f| f.table(e.id).is_some())
            })
        })
    }

    /// Runs one statement on another instance.
    /// `FLUSH` or `COMPACT` of a partitioned table in a cluster: the same
    /// statement on each partition, here or on its leader; `COMPACT`'s
    /// report is the sum of the partitions'.
    async fn maintain_partitions(
        &self,
        verb: &str,
        entry: &strata_engine::catalog::TableEntry,
    ) -> Result<Output> {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut sum: Option<(SchemaRef, Vec<u64>)> = None;
        for part in self.engine.partitions(entry) {
            let stmt = format!(
                "{verb} TABLE {}.{}",
                quote(&part.database),
                quote(&part.name)
            );
            let output = Box::pin(self.execute_one(&part.database, &stmt, false)).await?;
            if let Output::Rows { schema, batches } = output {
                let values: Vec<u64> = (0..schema.fields().len())
                    .map(|i| {
                        batches
                            .iter()
                            .filter_map(|b| {
                                b.column(i)
                                    .as_any()
                                    .downcast_ref::<arrow::array::UInt64Array>()
                                    .map(|a| a.iter().flatten().sum::<u64>())
                            })
                            .sum()
                    })
                    .collect();
                match &mut sum {
                    Some((_, total)) => {
                        for (t, v) in total.iter_mut().zip(values) {
                            *t += v;
                        }
                    }
                    None => sum = Some((schema, values)),
                }
            }
        }
        let Some((schema, total)) = sum else {
            return Ok(Output::AffectedRows(0));
        };
        let columns = total
            .into_iter()
            .map(|v| Arc::new(arrow::array::UInt64Array::from(vec![v])) as arrow::array::ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("summing the partitions' reports: {e}")))?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }

    async fn forward(&self, endpoint: &str, database: &str, sql: &str) -> Result<Output> {
        self.forward_as(endpoint, database, sql, true).await
    }

    /// Runs `sql` on another instance, as a request `forwarded` from here
    /// (never forwarded again, seeing only the shards open there) or as
    /// one of its own.
    async fn forward_as(
        &self,
        endpoint: &str,
        database: &str,
        sql: &str,
        forwarded: bool,
    ) -> Result<Output> {
        let remote = |e: strata_client::Error| Error::Query {
            kind: crate::error::remote_kind(&e),
            message: e.to_string(),
        };
        let client = self.router.peer(endpoint).await.map_err(remote)?;
        let output = client
            .query(strata_proto::storage::SqlQueryRequest {
                context: Some(strata_proto::storage::RequestContext {
                    database: database.to_string(),
                }),
                tables: Vec::new(),
                sql: sql.to_string(),
                forwarded,
                catalog_fingerprint: self.router.fingerprint(),
            })
            .await
            .map_err(remote)?;
        Ok(match output {
            strata_client::SqlOutput::AffectedRows(n) => Output::AffectedRows(u64::from(n)),
            strata_client::SqlOutput::Rows(batches) => Output::Rows {
                schema: batches.first().map_or_else(
                    || Arc::new(arrow::datatypes::Schema::empty()),
                    |b| b.schema(),
                ),
                batches,
            },
        })
    }
}

/// Whether a statement failed, before it changed anything, on a table
/// being opened on its shard (created a moment ago, or handed over by a
/// split or merge): `strata_engine::Error::TableMoving`, possibly carried
/// through DataFusion.
fn table_moving(e: &Error) -> bool {
    e.kind() == strata_engine::ErrorKind::ShardMoving
        && e.to_string()
            .contains("is moving between shards or being opened")
}

/// Whether an error may come from a catalog that lags meta's by a
/// heartbeat (a table or database created through another instance, or an
/// ALTER meta refused because another instance changed the table since
/// this one read it: nothing was changed, so running it again on the
/// refreshed catalog is safe).
fn catalog_may_lag(e: &Error) -> bool {
    matches!(
        e.kind(),
        strata_engine::ErrorKind::TableNotFound | strata_engine::ErrorKind::DatabaseNotFound
    ) || matches!(e, Error::Engine(strata_engine::Error::CatalogChanged(_)))
}
