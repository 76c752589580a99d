//! The gRPC `StorageService`, wire-compatible with HoraeDB's for Route,
//! Write, StreamWrite, SqlQuery and StreamSqlQuery.
//!
//! Errors are reported the way HoraeDB's SDKs expect: a normal gRPC response
//! whose header carries an HTTP-style `code` and a message, plus Strata's
//! typed `kind` and `retryable` extensions. A malformed request never takes
//! the server down; it gets a 400.

pub mod write;

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::{Stream, StreamExt};
use strata_engine::{catalog::DEFAULT_DATABASE, Engine, ErrorKind};
use strata_proto::{
    common::{ErrorKind as PbKind, ResponseHeader},
    storage::{
        sql_query_response::Output as PbOutput, storage_service_server::StorageService, Endpoint,
        ExecutePlanRequest, RequestContext, Route, RouteRequest, RouteResponse, ShardRole,
        SqlQueryRequest, SqlQueryResponse, WriteArrowRequest, WriteRequest, WriteResponse,
    },
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    error::{Error, Result},
    metrics,
    route::Target,
    sql::{Output, QueryEngine},
    writer::{columns_of, table_for_write, Forward},
};

/// The pause a `ShardMoving` answer asks for.
const SHARD_MOVING_RETRY_MS: u32 = 500;

/// Rows per response message of `StreamSqlQuery`.
const STREAM_CHUNK_ROWS: usize = 8192;

pub fn ok_header() -> ResponseHeader {
    ResponseHeader {
        code: 200,
        ..Default::default()
    }
}

pub fn error_header(e: &Error) -> ResponseHeader {
    let kind = match e.kind() {
        ErrorKind::InvalidArgument => PbKind::InvalidArgument,
        ErrorKind::TableNotFound => PbKind::TableNotFound,
        ErrorKind::DatabaseNotFound => PbKind::DatabaseNotFound,
        ErrorKind::AlreadyExists => PbKind::AlreadyExists,
        ErrorKind::Unavailable => PbKind::Unavailable,
        ErrorKind::NotLeader => PbKind::NotLeader,
        ErrorKind::ShardMoving => PbKind::ShardMoving,
        ErrorKind::Internal => PbKind::Internal,
        ErrorKind::Unsupported => PbKind::Unsupported,
        ErrorKind::ResourcesExhausted => PbKind::ResourcesExhausted,
        ErrorKind::Timeout => PbKind::Timeout,
        ErrorKind::Overloaded => PbKind::Overloaded,
    };
    ResponseHeader {
        code: u32::from(e.status_code()),
        error: e.to_string(),
        kind: kind as i32,
        retryable: e.is_retryable(),
        retry_after_ms: if kind == PbKind::ShardMoving {
            SHARD_MOVING_RETRY_MS
        } else {
            0
        },
    }
}

fn database(ctx: &Option<RequestContext>) -> String {
    ctx.as_ref()
        .map(|c| c.database.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string())
}

/// The gRPC service of one instance.
#[derive(Clone)]
pub struct StorageServiceImpl {
    query: QueryEngine,
    /// The address clients are told to use for this node: host and port.
    advertise: (String, u16),
    auto_create_table: bool,
    /// The most a request's compressed payload may decode to.
    max_decoded: usize,
}

impl StorageServiceImpl {
    pub fn new(query: QueryEngine, advertise: (String, u16), auto_create_table: bool) -> Self {
        Self {
            query,
            advertise,
            auto_create_table,
            max_decoded: usize::try_from(crate::config::DEFAULT_REQUEST_LIMIT)
                .unwrap_or(usize::MAX),
        }
    }

    /// Bounds what a request's compressed payload may decode to
    /// (`server.max_decoded_size`).
    pub fn with_max_decoded(mut self, max_decoded: usize) -> Self {
        self.max_decoded = max_decoded;
        self
    }

    /// `server.max_decoded_size`: also bounds decompressed HTTP bodies.
    pub fn max_decoded(&self) -> usize {
        self.max_decoded
    }

    /// `server.auto_create_table`: a write to an unknown table creates it.
    pub fn auto_create_table(&self) -> bool {
        self.auto_create_table
    }

    fn engine(&self) -> &Arc<Engine> {
        self.query.engine()
    }

    /// Refreshes the catalog from meta when `db.table` is unknown here (it
    /// may have been created through another instance a moment ago).
    async fn ensure_known(&self, db: &str, table: &str) -> Result<()> {
        if self.engine().entry(db, table).is_err() {
            self.query.router().refresh_catalog().await?;
        }
        Ok(())
    }

    /// Writes every table of one request; returns the rows written. Each
    /// table's rows are built in its columns as this instance knows them,
    /// then written through the write path ([`crate::writer`]): in cluster
    /// mode the tables led elsewhere are forwarded to their leaders as
    /// `WriteArrow` (unless the request was itself forwarded, or the client
    /// did not ask for proxy mode: then `NotLeader` names the leader).
    pub(crate) async fn write_request(
        &self,
        req: WriteRequest,
        forwarded: bool,
        proxy: bool,
    ) -> Result<u32> {
        let db = database(&req.context);
        let engine = self.engine();
        let router = self.query.router().clone();
        // One refresh covers every table; a request can name several.
        if let Some(t) = req
            .table_requests
            .iter()
            .find(|t| engine.entry(&db, &t.table).is_err())
        {
            self.ensure_known(&db, &t.table.clone()).await?;
        }
        if !engine.database_exists(&db) {
            return Err(strata_engine::Error::DatabaseNotFound { name: db }.into());
        }
        let deadline = std::time::Instant::now() + crate::route::MOVE_WAIT;
        // Every table is resolved (created on write when missing) and, for
        // a client that did not ask for proxy mode, checked to be led here
        // before any row is converted.
        let mut columns = Vec::with_capacity(req.table_requests.len());
        for t in &req.table_requests {
            if t.table.is_empty() {
                return Err(Error::InvalidArgument("a write names no table".to_string()));
            }
            let new_schema = self
                .auto_create_table
                .then_some(|| write::schema_for_new_table(t));
            let resolved = table_for_write(&self.query, &db, &t.table, new_schema).await?;
            let c = (resolved.schema, resolved.arrow);
            if let Ok(strata_engine::Located::Remote(entry)) = engine.locate(&db, &t.table) {
                if forwarded || !router.is_distributed() {
                    // A forwarded request is not forwarded again.
                    return Err(strata_engine::Error::NotServedHere {
                        table: t.table.clone(),
                        shard: entry.shard,
                    }
                    .into());
                }
                if !proxy {
                    if let Target::Remote { endpoint, version } =
                        router.target(&entry, deadline).await?
                    {
                        return Err(Error::Query {
                            kind: ErrorKind::NotLeader,
                            message: format!(
                                "NotLeader: table {} is on shard {} (version {version}), led by {endpoint}; write there, or ask for proxy mode",
                                t.table, entry.shard
                            ),
                        });
                    }
                }
            }
            columns.push(c);
        }
        // Convert everything first so that a bad table fails the request
        // before anything is written.
        let mut batches = Vec::with_capacity(req.table_requests.len());
        for (t, (schema, arrow)) in req.table_requests.iter().zip(columns) {
            let batch = match write::to_batch(&t.table, &schema, arrow, t, self.max_decoded) {
                Ok(batch) => batch,
                // A column added through another instance a moment ago
                // (its write was forwarded here before this instance's
                // catalog caught up): take meta's catalog and try again.
                Err(Error::InvalidArgument(m))
                    if router.is_distributed() && m.contains("does not exist") =>
                {
                    router.refresh_catalog().await?;
                    let (schema, arrow) = columns_of(engine, &db, &t.table)?;
                    write::to_batch(&t.table, &schema, arrow, t, self.max_decoded)?
                }
                Err(e) => return Err(e),
            };
            batches.push((t.table.clone(), batch));
        }
        let forward = if forwarded {
            Forward::Never
        } else if proxy {
            Forward::Whole
        } else {
            Forward::Partitions
        };
        let written = crate::writer::write_batches(
            &self.query,
            &db,
            batches,
            self.max_decoded,
            forward,
            deadline,
        )
        .await?;
        Ok(u32::try_from(written).unwrap_or(u32::MAX))
    }

    /// Writes Arrow rows into a table led here (a forwarded write).
    async fn write_arrow_request(&self, req: WriteArrowRequest) -> Result<u32> {
        let db = database(&req.context);
        self.query
            .router()
            .sync_catalog(req.catalog_fingerprint)
            .await?;
        self.ensure_known(&db, &req.table).await?;
        let table = self.engine().table(&db, &req.table)?;
        let Some(rows) = req.rows else {
            return Err(Error::InvalidArgument(
                "a write carries no rows".to_string(),
            ));
        };
        let batches = strata_client::decode_payload_checked(rows, self.max_decoded, &|ipc| {
            strata_engine::codec::check_ipc_stream(ipc).map_err(|e| e.to_string())
        })
        .map_err(|e| Error::InvalidArgument(format!("the rows cannot be decoded: {e}")))?;
        // Columns are matched by name (see `fit_rows`), and the batches are
        // written as one: refused whole, or written whole.
        let invalid = |e: strata_engine::Error| strata_engine::Error::InvalidWrite {
            table: req.table.clone(),
            reason: e.to_string(),
        };
        let router = self.query.router();
        // A partition takes only its own rows (a forward of a split write,
        // or a client naming it), as its partitioned table's key says: a
        // table this instance's catalog may not show yet (meta's
        // announcement of a new or altered one racing with this write).
        let check = |table: &strata_engine::table::Table| {
            batches.iter().try_for_each(|batch| {
                strata_frontend::sql::partitioned::check_partition_rows(
                    self.engine(),
                    &table.meta().entry,
                    batch,
                )
            })
        };
        let table = match check(&table) {
            Ok(()) => table,
            // The parent, or a column, this catalog does not show yet.
            Err(e)
                if router.is_distributed()
                    && (e.to_string().contains("is gone")
                        || e.to_string().contains("does not exist")) =>
            {
                if router.refresh_catalog().await.is_err() {
                    return Err(e.into());
                }
                let table = self.engine().table(&db, &req.table)?;
                check(&table)?;
                table
            }
            Err(e) => return Err(e.into()),
        };
        let (table, rows) = match strata_engine::schema::fit_all(&batches, &table.arrow_schema()) {
            Ok(rows) => (table, rows),
            // A column the sender added a moment ago, which this
            // instance's catalog does not show yet: take meta's and retry.
            Err(e) if router.is_distributed() && e.to_string().contains("does not exist") => {
                router.refresh_catalog().await?;
                let table = self.engine().table(&db, &req.table)?;
                let rows = strata_engine::schema::fit_all(&batches, &table.arrow_schema())
                    .map_err(invalid)?;
                (table, rows)
            }
            Err(e) => return Err(invalid(e).into()),
        };
        let written = table.write(rows).await?;
        Ok(u32::try_from(written).unwrap_or(u32::MAX))
    }

    /// Runs a request's SQL under the query limits (a forwarded request,
    /// part of a query another instance admitted, takes a slot of the
    /// forwarded set). A forwarded request first brings the catalog up to
    /// the sender's, once admitted: the fingerprint is the client's to set.
    async fn sql(
        &self,
        req: &SqlQueryRequest,
        preference: Option<strata_frontend::config::ReadPreference>,
    ) -> Result<Output> {
        let db = database(&req.context);
        let query = match preference {
            Some(p) => self
                .query
                .reading_followers(p == strata_frontend::config::ReadPreference::Follower),
            None => self.query.clone(),
        };
        query
            .limited(req.forwarded, |q| async move {
                // A request from another instance (forwarded, or a read it
                // offloaded here) names the catalog it was sent under.
                if req.forwarded || req.catalog_fingerprint != 0 {
                    q.router().sync_catalog(req.catalog_fingerprint).await?;
                }
                q.execute_with(&db, &req.sql, req.forwarded).await
            })
            .await
    }

    /// Routes from this instance's view of the cluster.
    fn cluster_routes(&self, db: &str, tables: Vec<String>) -> Vec<Route> {
        let router = self.query.router();
        if !router.is_distributed() {
            return Vec::new();
        }
        tables
            .into_iter()
            .filter_map(|table| {
                let entry = self.engine().entry(db, &table).ok()?;
                if entry.partition.is_some() {
                    // A partitioned table is on no one shard: any instance
                    // takes its writes and forwards each partition's rows
                    // to its leader, and answers its queries. This one.
                    let (ip, port) = router.node_id().rsplit_once(':')?;
                    return Some(Route {
                        table,
                        endpoint: Some(Endpoint {
                            ip: ip.to_string(),
                            port: port.parse().ok()?,
                        }),
                        shard_id: entry.shard.0,
                        shard_version: 0,
                        role: ShardRole::Leader as i32,
                    });
                }
                let a = router.assignment(entry.shard)?;
                let (ip, port) = a.endpoint.rsplit_once(':')?;
                Some(Route {
                    table,
                    endpoint: Some(Endpoint {
                        ip: ip.to_string(),
                        port: port.parse().ok()?,
                    }),
                    shard_id: a.shard,
                    shard_version: a.version,
                    role: ShardRole::Leader as i32,
                })
            })
            .collect()
    }
}

fn sql_response(output: Output) -> Result<SqlQueryResponse> {
    let output = match output {
        Output::AffectedRows(n) => PbOutput::AffectedRows(u32::try_from(n).unwrap_or(u32::MAX)),
        Output::Rows { schema, batches } => PbOutput::Arrow(
            strata_client::payload::encode(&schema, &batches)
                .map_err(|e| Error::Internal(format!("encoding results: {e}")))?,
        ),
    };
    Ok(SqlQueryResponse {
        header: Some(ok_header()),
        output: Some(output),
    })
}

fn error_sql_response(e: &Error) -> SqlQueryResponse {
    SqlQueryResponse {
        header: Some(error_header(e)),
        output: None,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SqlQueryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for StorageServiceImpl {
    async fn route(
        &self,
        request: Request<RouteRequest>,
    ) -> Result<Response<RouteResponse>, Status> {
        let req = request.into_inner();
        if self.query.router().is_distributed() {
            let db = database(&req.context);
            if let Some(t) = req.tables.first() {
                if let Err(e) = self.ensure_known(&db, t).await {
                    return Ok(Response::new(RouteResponse {
                        header: Some(error_header(&e)),
                        routes: Vec::new(),
                    }));
                }
            }
            return Ok(Response::new(RouteResponse {
                header: Some(ok_header()),
                routes: self.cluster_routes(&db, req.tables),
            }));
        }
        // Standalone: this node serves every table, and every table lives on
        // shard 0, whose version never changes.
        let routes = req
            .tables
            .into_iter()
            .map(|table| Route {
                table,
                endpoint: Some(Endpoint {
                    ip: self.advertise.0.clone(),
                    port: u32::from(self.advertise.1),
                }),
                shard_id: strata_engine::STANDALONE_SHARD.0,
                shard_version: 1,
                role: ShardRole::Leader as i32,
            })
            .collect();
        Ok(Response::new(RouteResponse {
            header: Some(ok_header()),
            routes,
        }))
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let started = Instant::now();
        let forwarded = request
            .metadata()
            .contains_key(strata_client::FORWARDED_HEADER);
        let proxy = request.metadata().contains_key(strata_client::PROXY_HEADER);
        let req = request.into_inner();
        let result = self.write_request(req, forwarded, proxy).await;
        metrics::observe_request("grpc_write", started, result.is_ok());
        Ok(Response::new(match result {
            Ok(success) => WriteResponse {
                header: Some(ok_header()),
                success,
                failed: 0,
            },
            Err(e) => {
                tracing::debug!(error = %e, "write failed");
                WriteResponse {
                    header: Some(error_header(&e)),
                    success: 0,
                    failed: 0,
                }
            }
        }))
    }

    async fn stream_write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let proxy = request.metadata().contains_key(strata_client::PROXY_HEADER);
        let mut stream = request.into_inner();
        let mut success = 0u32;
        // Whether a message already written had an APPEND table's rows: a
        // failure after it is then a partial write (a retry of the whole
        // stream would write those rows twice), not a retryable error.
        let mut appended = false;
        while let Some(req) = stream.next().await {
            let req = req?;
            let db = database(&req.context);
            let append = req.table_requests.iter().any(|t| {
                self.engine().entry(&db, &t.table).is_ok_and(|e| {
                    e.options.update_mode != strata_engine::options::UpdateMode::Overwrite
                })
            });
            match self.write_request(req, false, proxy).await {
                Ok(n) => {
                    success = success.saturating_add(n);
                    appended |= append && n > 0;
                }
                Err(e) => {
                    let e = if appended && e.is_retryable() {
                        Error::from(strata_engine::Error::PartialWrite {
                            written: u64::from(success),
                            tables: "the earlier messages of this stream".to_string(),
                            reason: e.to_string(),
                        })
                    } else {
                        e
                    };
                    return Ok(Response::new(WriteResponse {
                        header: Some(error_header(&e)),
                        success,
                        failed: 0,
                    }));
                }
            }
        }
        Ok(Response::new(WriteResponse {
            header: Some(ok_header()),
            success,
            failed: 0,
        }))
    }

    async fn write_arrow(
        &self,
        request: Request<WriteArrowRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let started = Instant::now();
        let result = self.write_arrow_request(request.into_inner()).await;
        metrics::observe_request("grpc_write_arrow", started, result.is_ok());
        Ok(Response::new(match result {
            Ok(success) => WriteResponse {
                header: Some(ok_header()),
                success,
                failed: 0,
            },
            Err(e) => WriteResponse {
                header: Some(error_header(&e)),
                success: 0,
                failed: 0,
            },
        }))
    }

    async fn sql_query(
        &self,
        request: Request<SqlQueryRequest>,
    ) -> Result<Response<SqlQueryResponse>, Status> {
        let started = Instant::now();
        let preference = read_preference(&request);
        let req = request.into_inner();
        let result = match preference {
            Ok(p) => self.sql(&req, p).await.and_then(sql_response),
            Err(e) => Err(e),
        };
        metrics::observe_request("grpc_sql", started, result.is_ok());
        Ok(Response::new(match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, sql = %req.sql, "query failed");
                error_sql_response(&e)
            }
        }))
    }

    type ExecutePlanStream = ResponseStream;

    /// Runs part of another instance's query plan over a table led here,
    /// under the limits of forwarded requests; the rows as they come, an
    /// error as the stream's one message.
    async fn execute_plan(
        &self,
        request: Request<ExecutePlanRequest>,
    ) -> Result<Response<Self::ExecutePlanStream>, Status> {
        let req = request.into_inner();
        let query = self.query.clone();
        let (responses, receiver) = tokio::sync::mpsc::channel::<SqlQueryResponse>(4);
        tokio::spawn(async move {
            let started = Instant::now();
            let fingerprint = req.catalog_fingerprint;
            let part = strata_frontend::sql::distributed::PlanPart::from_request(req);
            let (rows, mut produced) = tokio::sync::mpsc::channel(4);
            let run = query.limited(true, |q| async move {
                q.router().sync_catalog(fingerprint).await?;
                q.execute_plan_part(part, rows).await
            });
            let sender = responses.clone();
            let send = async move {
                while let Some(batch) = produced.recv().await {
                    let batch: arrow::record_batch::RecordBatch = batch;
                    let resp = sql_response(Output::Rows {
                        schema: batch.schema(),
                        batches: vec![batch],
                    })
                    .unwrap_or_else(|e| error_sql_response(&e));
                    if sender.send(resp).await.is_err() {
                        // The client went away; dropping `produced` stops
                        // the plan.
                        break;
                    }
                }
            };
            // The sender going away (its query failed, finished or was
            // cancelled) stops the part, even one that sends nothing
            // until its input ends (an aggregate, a sort).
            let result = tokio::select! {
                (result, ()) = async { tokio::join!(run, send) } => result,
                () = responses.closed() => return,
            };
            metrics::observe_request("grpc_execute_plan", started, result.is_ok());
            let last = match result {
                // The last message says every row was sent: a stream that
                // ends without it (this task gone) is an error there.
                Ok(()) => SqlQueryResponse {
                    header: Some(ok_header()),
                    output: Some(PbOutput::AffectedRows(0)),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "a plan part failed");
                    error_sql_response(&e)
                }
            };
            let _ = responses.send(last).await;
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|r| (Ok(r), receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamSqlQueryStream = ResponseStream;

    async fn stream_sql_query(
        &self,
        request: Request<SqlQueryRequest>,
    ) -> Result<Response<Self::StreamSqlQueryStream>, Status> {
        let started = Instant::now();
        let preference = read_preference(&request);
        let req = request.into_inner();
        let result = match preference {
            Ok(p) => self.sql(&req, p).await,
            Err(e) => Err(e),
        };
        metrics::observe_request("grpc_stream_sql", started, result.is_ok());
        let responses: Vec<Result<SqlQueryResponse, Status>> = match result {
            Err(e) => vec![Ok(error_sql_response(&e))],
            Ok(Output::AffectedRows(n)) => {
                vec![sql_response(Output::AffectedRows(n)).or_else(|e| Ok(error_sql_response(&e)))]
            }
            Ok(Output::Rows { schema, batches }) => {
                let mut out = Vec::new();
                let mut chunk = Vec::new();
                let mut rows = 0;
                for batch in batches {
                    rows += batch.num_rows();
                    chunk.push(batch);
                    if rows >= STREAM_CHUNK_ROWS {
                        out.push(std::mem::take(&mut chunk));
                        rows = 0;
                    }
                }
                if !chunk.is_empty() || out.is_empty() {
                    out.push(chunk);
                }
                out.into_iter()
                    .map(|batches| {
                        Ok(sql_response(Output::Rows {
                            schema: schema.clone(),
                            batches,
                        })
                        .unwrap_or_else(|e| error_sql_response(&e)))
                    })
                    .collect()
            }
        };
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }
}

/// The read preference a request's metadata asks for
/// (`x-strata-read-preference: follower`); `None` when it names none.
fn read_preference<T>(
    request: &Request<T>,
) -> Result<Option<strata_frontend::config::ReadPreference>> {
    use strata_frontend::config::ReadPreference;
    request
        .metadata()
        .get(ReadPreference::HEADER)
        .map(|v| ReadPreference::parse(&String::from_utf8_lossy(v.as_bytes())))
        .transpose()
}
