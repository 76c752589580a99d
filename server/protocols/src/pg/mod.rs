//! The PostgreSQL wire protocol (`--pg-addr`, default 127.0.0.1:5433), on
//! the `pgwire` crate, so that `psql`, `psycopg` and Grafana's PostgreSQL
//! data source can query Strata.
//!
//! - **Sessions.** Authentication is off: any user name is accepted. The
//!   connection's database name selects the Strata database (`public` when
//!   it names none or `postgres`).
//! - **Simple protocol.** Each statement of a query string runs through the
//!   same SQL front end as gRPC and HTTP, and gets its own response.
//! - **Extended protocol** (prepared statements). `$n` parameters are
//!   bound as values, never pasted into the SQL text: the statement is
//!   planned by DataFusion with its placeholders, each parameter is decoded
//!   (text or binary) by its declared type and cast to the type DataFusion
//!   inferred for its placeholder, and the plan's placeholders are replaced
//!   by those values. One statement per Parse; several are refused
//!   (SQLSTATE 42601). Describe plans the statement to report its columns
//!   without running it.
//! - **Session statements** that Strata has no use for are accepted and
//!   ignored: `SET`, `RESET`, `DISCARD`, `DEALLOCATE`, and transaction
//!   control (`BEGIN`, `COMMIT`, `ROLLBACK`): every statement commits on
//!   its own. `SHOW` of the usual PostgreSQL settings answers constants.
//! - **Types.** Arrow types map to PostgreSQL ones (see
//!   `docs/protocols/postgresql.md`), in text or binary format as the client
//!   asks.
use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use pgwire::{
    api::{
        auth::noop::NoopStartupHandler,
        portal::Format,
        query::{ExtendedQueryHandler, SimpleQueryHandler},
        results::{FieldInfo, Response, Tag},
        stmt::NoopQueryParser,
        ClientInfo, PgWireServerHandlers, Type,
    },
    error::{ErrorInfo, PgWireError, PgWireResult},
};
use strata_engine::{catalog::DEFAULT_DATABASE, ErrorKind};
use tokio::net::TcpListener;

use crate::{
    error::Error,
    sql::{Output, QueryEngine},
};

/// The PostgreSQL version Strata reports (`server_version`, `SHOW`).
pub use crate::sql::pg_compat::SERVER_VERSION;

pub mod conn;
mod encode;
mod extended;
#[cfg(test)]
mod tests;

use self::encode::{fields, response};
/// One handler for all connections; per-connection state is the client's
/// metadata (its database).
pub struct PgHandler {
    query: QueryEngine,
    parser: Arc<NoopQueryParser>,
}

#[async_trait]
impl NoopStartupHandler for PgHandler {
    /// Refuses a connection to a database that does not exist, as
    /// PostgreSQL does.
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<pgwire::messages::PgWireBackendMessage> + Unpin + Send,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        let db = database(client);
        let engine = self.query.engine();
        if !engine.database_exists(&db) {
            let _ = self.query.router().refresh_catalog().await;
        }
        if engine.database_exists(&db) {
            Ok(())
        } else {
            Err(user_error(
                "3D000",
                format!("database \"{db}\" does not exist"),
            ))
        }
    }
}

impl PgWireServerHandlers for PgHandler {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone_handler())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone_handler())
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(self.clone_handler())
    }
}

impl PgHandler {
    pub fn new(query: QueryEngine) -> Self {
        Self {
            query,
            parser: Arc::new(NoopQueryParser::new()),
        }
    }

    fn clone_handler(&self) -> Self {
        Self {
            query: self.query.clone(),
            parser: self.parser.clone(),
        }
    }
}

/// Accepts connections until `stop` fires; each runs on its own task.
pub async fn serve(
    listener: TcpListener,
    query: QueryEngine,
    limits: crate::pg::conn::PgLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handler = Arc::new(PgHandler::new(query));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handler = handler.clone();
                    let limits = limits.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::pg::conn::serve_connection(socket, handler, limits).await {
                            tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a PostgreSQL connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Binds the PostgreSQL listener.
pub async fn bind(addr: SocketAddr) -> crate::error::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("binding PostgreSQL to {addr}: {e}")))
}

/// The Strata database a connection uses.
pub(super) fn database<C: ClientInfo>(client: &C) -> String {
    match client.metadata().get("database").map(String::as_str) {
        None | Some("") | Some("postgres") => DEFAULT_DATABASE.to_string(),
        Some(db) => db.to_string(),
    }
}

/// A Strata error as a PostgreSQL error with a fitting SQLSTATE.
pub(super) fn pg_error(e: Error) -> PgWireError {
    let code = match e.kind() {
        _ if matches!(e, Error::TooComplex(_)) => "54001",
        ErrorKind::InvalidArgument => "42601",
        ErrorKind::TableNotFound => "42P01",
        ErrorKind::DatabaseNotFound => "3D000",
        ErrorKind::AlreadyExists => "42P07",
        ErrorKind::Unsupported => "0A000",
        ErrorKind::Unavailable | ErrorKind::ShardMoving | ErrorKind::NotLeader => "57P03",
        // out_of_memory, query_canceled (as for statement_timeout) and
        // insufficient_resources.
        ErrorKind::ResourcesExhausted => "53200",
        ErrorKind::Timeout => "57014",
        ErrorKind::Overloaded => "53000",
        ErrorKind::Internal => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        e.to_string(),
    )))
}

pub(super) fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// Statements answered here rather than by the SQL front end.
pub(super) fn session_statement(sql: &str) -> Option<Response> {
    let text = sql.trim().trim_end_matches(';').trim();
    let lower = text.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let first = words.next()?;
    Some(match first {
        "begin" | "start" => Response::TransactionStart(Tag::new("BEGIN")),
        "commit" | "end" => Response::TransactionEnd(Tag::new("COMMIT")),
        "rollback" | "abort" => Response::TransactionEnd(Tag::new("ROLLBACK")),
        "set" => Response::Execution(Tag::new("SET")),
        "reset" => Response::Execution(Tag::new("RESET")),
        "discard" => Response::Execution(Tag::new("DISCARD ALL")),
        "deallocate" => Response::Execution(Tag::new("DEALLOCATE")),
        "show" => {
            let name = lower["show".len()..].trim().to_string();
            let value = crate::sql::pg_compat::pg_setting(&name)?;
            encode::one_text_value(&name.replace(' ', "_"), value).ok()?
        }
        _ => return None,
    })
}

/// The connection's metadata key holding its `SET read_preference`.
const READ_PREFERENCE_KEY: &str = "strata.read_preference";

impl PgHandler {
    /// The query engine for a connection: reading followers or not as its
    /// `SET read_preference` (or the configured default) says.
    pub(super) fn query_for<C: ClientInfo>(&self, client: &C) -> QueryEngine {
        match client
            .metadata()
            .get(READ_PREFERENCE_KEY)
            .map(String::as_str)
        {
            Some("follower") => self.query.reading_followers(true),
            Some("leader") => self.query.reading_followers(false),
            _ => self.query.clone(),
        }
    }

    /// `SET`, `RESET` and `SHOW read_preference`, which change or show the
    /// connection's read preference; `None` for other statements.
    pub(super) fn read_preference_statement<C: ClientInfo>(
        &self,
        client: &mut C,
        sql: &str,
    ) -> PgWireResult<Option<Response>> {
        use strata_frontend::sql::{parse_set_read_preference, SetReadPreference};
        let text = sql.trim().trim_end_matches(';').trim();
        // They reset every setting (a pool hands the connection on).
        let lower = text.to_ascii_lowercase();
        if lower.split_whitespace().eq(["discard", "all"])
            || lower.split_whitespace().eq(["reset", "all"])
        {
            client.metadata_mut().remove(READ_PREFERENCE_KEY);
            return Ok(None);
        }
        if text
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .eq(["show", "read_preference"])
        {
            let value = if self.query_for(client).reads_followers() {
                "follower"
            } else {
                "leader"
            };
            return Ok(Some(encode::one_text_value("read_preference", value)?));
        }
        match parse_set_read_preference(sql).map_err(pg_error)? {
            None => Ok(None),
            Some(set) => {
                let metadata = client.metadata_mut();
                match set {
                    SetReadPreference::To(p) => {
                        let value = match p {
                            strata_frontend::config::ReadPreference::Leader => "leader",
                            strata_frontend::config::ReadPreference::Follower => "follower",
                        };
                        metadata.insert(READ_PREFERENCE_KEY.to_string(), value.to_string());
                        Ok(Some(Response::Execution(Tag::new("SET"))))
                    }
                    SetReadPreference::Default => {
                        metadata.remove(READ_PREFERENCE_KEY);
                        let tag = if sql.trim_start().to_ascii_lowercase().starts_with("reset") {
                            "RESET"
                        } else {
                            "SET"
                        };
                        Ok(Some(Response::Execution(Tag::new(tag))))
                    }
                }
            }
        }
    }

    async fn run(
        &self,
        query: &QueryEngine,
        db: &str,
        sql: &str,
        format: &Format,
    ) -> PgWireResult<Response> {
        if let Some(r) = session_statement(sql) {
            return Ok(r);
        }
        let started = std::time::Instant::now();
        let result = query
            .limited(false, |q| async move {
                let output = q.execute(db, sql).await?;
                // A forwarded query with no rows comes back without its
                // columns.
                Ok(match output {
                    Output::Rows { schema, batches }
                        if schema.fields().is_empty() && batches.is_empty() =>
                    {
                        match q.describe(db, sql).await {
                            Ok(Some(schema)) => Output::Rows { schema, batches },
                            _ => Output::Rows { schema, batches },
                        }
                    }
                    other => other,
                })
            })
            .await;
        crate::metrics::observe_request("pg_query", started, result.is_ok());
        let output = result.map_err(pg_error)?;
        response(output, format, sql)
    }

    async fn describe_sql(
        &self,
        db: &str,
        sql: &str,
        format: &Format,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let text = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
        if text.split_whitespace().eq(["show", "read_preference"]) {
            return Ok(vec![FieldInfo::new(
                "read_preference".to_string(),
                None,
                None,
                Type::TEXT,
                format.format_for(0),
            )]);
        }
        if session_statement(sql).is_some() {
            let text = sql.trim().to_ascii_lowercase();
            if let Some(name) = text.strip_prefix("show") {
                let name = name.trim().trim_end_matches(';').trim().replace(' ', "_");
                return Ok(vec![FieldInfo::new(
                    name,
                    None,
                    None,
                    Type::TEXT,
                    format.format_for(0),
                )]);
            }
            return Ok(Vec::new());
        }
        let sql = sql.to_string();
        match self
            .query
            .limited(false, |q| async move { q.describe(db, &sql).await })
            .await
            .map_err(pg_error)?
        {
            Some(schema) => Ok(fields(&schema, format)),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let db = database(client);
        let statements = strata_client::split::split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            let result = match self.read_preference_statement(client, &s) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => {
                    let query = self.query_for(client);
                    self.run(&query, &db, &s, &Format::UnifiedText).await
                }
                Err(e) => Err(e),
            };
            // PostgreSQL stops at the first failing statement.
            match result {
                Ok(r) => out.push(r),
                Err(PgWireError::UserError(info)) => {
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
