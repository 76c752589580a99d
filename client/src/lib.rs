//! The Rust client for Strata's gRPC `StorageService`, and the `strata sql`
//! shell.
//!
//! Position in the data flow: the outermost layer. It depends only on
//! `strata-proto`; results arrive as Arrow IPC and are decoded into
//! `RecordBatch`es. Server errors keep their typed kind (`TableNotFound`,
//! `InvalidArgument`, …) and retryability, so callers can act on them without
//! parsing messages.

pub mod format;
pub mod routed;
pub mod shell;
pub mod split;

use std::{io::Cursor, time::Duration};

use arrow::{ipc::reader::StreamReader, record_batch::RecordBatch};
use strata_proto::{
    common::{ErrorKind, ResponseHeader},
    storage::{
        arrow_payload::Compression, sql_query_response::Output as PbOutput,
        storage_service_client::StorageServiceClient, ArrowPayload, RequestContext, RouteRequest,
        RouteResponse, SqlQueryRequest, WriteArrowRequest, WriteRequest,
    },
};
use tonic::transport::{Channel, Endpoint};

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },

    #[error("request failed: {0}")]
    Rpc(#[from] tonic::Status),

    /// The server refused the request; `kind` says why.
    #[error("{message}")]
    Server {
        code: u32,
        kind: ErrorKind,
        retryable: bool,
        message: String,
        /// With `ShardMoving`: how long to wait before retrying.
        retry_after: Option<Duration>,
    },

    #[error("cannot decode the server's response: {0}")]
    Decode(String),
}

impl Error {
    /// The server's error kind, if the server answered.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Server { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether retrying may succeed: server-declared retryable errors and
    /// transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { retryable, .. } => *retryable,
            Error::Connect { .. } => true,
            Error::Rpc(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            Error::Decode(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The output of one SQL statement.
#[derive(Debug, Clone)]
pub enum SqlOutput {
    AffectedRows(u32),
    Rows(Vec<RecordBatch>),
}

fn check(header: Option<ResponseHeader>) -> Result<()> {
    match header {
        Some(h) if h.code != 200 => Err(Error::Server {
            code: h.code,
            kind: ErrorKind::try_from(h.kind).unwrap_or(ErrorKind::Unspecified),
            retryable: h.retryable,
            message: h.error,
            retry_after: (h.retry_after_ms > 0)
                .then(|| Duration::from_millis(u64::from(h.retry_after_ms))),
        }),
        _ => Ok(()),
    }
}

/// Decodes an `ArrowPayload` into record batches.
pub fn decode_payload(payload: ArrowPayload) -> Result<Vec<RecordBatch>> {
    let compressed = payload.compression() == Compression::Zstd;
    let mut out = Vec::new();
    for bytes in payload.record_batches {
        let bytes = if compressed {
            zstd::stream::decode_all(Cursor::new(bytes))
                .map_err(|e| Error::Decode(e.to_string()))?
        } else {
            bytes
        };
        let reader = StreamReader::try_new(Cursor::new(bytes), None)
            .map_err(|e| Error::Decode(e.to_string()))?;
        for batch in reader {
            out.push(batch.map_err(|e| Error::Decode(e.to_string()))?);
        }
    }
    Ok(out)
}

/// The gRPC metadata key that marks a request one instance forwarded to
/// another.
pub const FORWARDED_HEADER: &str = "x-strata-forwarded";

/// The gRPC metadata key by which a client asks an instance to forward a
/// write for a shard it does not lead (proxy mode) instead of answering
/// `NotLeader`.
pub const PROXY_HEADER: &str = "x-strata-proxy";

/// A connection to one Strata node.
#[derive(Debug, Clone)]
pub struct Client {
    inner: StorageServiceClient<Channel>,
    endpoint: String,
}

impl Client {
    /// Connects to `endpoint` (`host:port`, or a full `http://` URL).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|source| Error::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| Error::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let inner = StorageServiceClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024);
        Ok(Self {
            inner,
            endpoint: endpoint.to_string(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs SQL (one or more statements; the last one's output is returned)
    /// in `database` (empty means `public`).
    pub async fn sql(&self, database: &str, sql: &str) -> Result<SqlOutput> {
        self.query(SqlQueryRequest {
            context: Some(RequestContext {
                database: database.to_string(),
            }),
            tables: Vec::new(),
            sql: sql.to_string(),
            forwarded: false,
            catalog_fingerprint: 0,
        })
        .await
    }

    /// Runs a prepared `SqlQueryRequest`.
    pub async fn query(&self, request: SqlQueryRequest) -> Result<SqlOutput> {
        let resp = self.inner.clone().sql_query(request).await?.into_inner();
        check(resp.header)?;
        match resp.output {
            Some(PbOutput::AffectedRows(n)) => Ok(SqlOutput::AffectedRows(n)),
            Some(PbOutput::Arrow(payload)) => Ok(SqlOutput::Rows(decode_payload(payload)?)),
            None => Err(Error::Decode("the response has no output".to_string())),
        }
    }

    /// Writes rows; returns how many were written.
    pub async fn write(&self, request: WriteRequest) -> Result<u32> {
        let resp = self.inner.clone().write(request).await?.into_inner();
        check(resp.header)?;
        Ok(resp.success)
    }

    /// Writes rows through this node, which forwards the tables it does not
    /// lead to their leaders (proxy mode).
    pub async fn write_proxied(&self, request: WriteRequest) -> Result<u32> {
        let mut req = tonic::Request::new(request);
        req.metadata_mut().insert(
            PROXY_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let resp = self.inner.clone().write(req).await?.into_inner();
        check(resp.header)?;
        Ok(resp.success)
    }

    /// Writes rows on behalf of another instance: the receiver must lead the
    /// tables' shards and never forwards the request again.
    pub async fn write_forwarded(&self, request: WriteRequest) -> Result<u32> {
        let mut req = tonic::Request::new(request);
        req.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let resp = self.inner.clone().write(req).await?.into_inner();
        check(resp.header)?;
        Ok(resp.success)
    }

    /// Writes Arrow rows into one table (instances forward writes this way).
    pub async fn write_arrow(&self, request: WriteArrowRequest) -> Result<u32> {
        let resp = self.inner.clone().write_arrow(request).await?.into_inner();
        check(resp.header)?;
        Ok(resp.success)
    }

    /// Asks where tables are served.
    pub async fn route(&self, database: &str, tables: Vec<String>) -> Result<RouteResponse> {
        let resp = self
            .inner
            .clone()
            .route(RouteRequest {
                context: Some(RequestContext {
                    database: database.to_string(),
                }),
                tables,
            })
            .await?
            .into_inner();
        check(resp.header.clone())?;
        Ok(resp)
    }
}
