//! The Rust client for Strata's gRPC `StorageService`, and the `strata sql`
//! shell.
//!
//! Position in the data flow: the outermost layer. It depends only on
//! `strata-proto`; results arrive as Arrow IPC and are decoded into
//! `RecordBatch`es. Server errors keep their typed kind (`TableNotFound`,
//! `InvalidArgument`, …) and retryability, so callers can act on them without
//! parsing messages.

pub mod format;
pub mod payload;
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
        RouteResponse, SqlQueryRequest, SqlQueryResponse, WriteArrowRequest, WriteRequest,
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

    /// Whether the server does not know the call (an older version).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Error::Rpc(status) if status.code() == tonic::Code::Unimplemented)
    }

    /// Whether retrying may succeed: server-declared retryable errors and
    /// transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { retryable, .. } => *retryable,
            Error::Connect { .. } => true,
            Error::Rpc(status) => {
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) || went_away(status)
            }
            Error::Decode(_) => false,
        }
    }
}

/// Whether the server closed the connection gracefully (an HTTP/2 GOAWAY,
/// as a stopping server sends) before it took the request: a stopping
/// server finishes the requests it took, so this one never ran. tonic
/// reports it as `Internal`, with the h2 error as its source.
fn went_away(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        // Sent by the server (`Remote`), not raised by this side's h2 on
        // a protocol error (which resets streams the server may have run).
        let debug = format!("{e:?}");
        if debug.contains("GoAway(") && debug.contains("Remote)") {
            return true;
        }
        source = e.source();
    }
    false
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

/// The most [`decode_payload`] decompresses: 1 GiB.
pub const MAX_DECODED_PAYLOAD: usize = 1 << 30;

/// A message of an [`Client::execute_plan`] stream.
#[derive(Debug)]
pub enum PlanMessage {
    Rows(Vec<RecordBatch>),
    /// The node sent every row (its last message).
    Done,
}

/// The next message of an [`Client::execute_plan`] stream: rows, the end,
/// or the error the node answered. A stream that ends without
/// [`PlanMessage::Done`] (the node went away mid-answer) is an error.
pub async fn next_plan_rows(
    stream: &mut tonic::Streaming<SqlQueryResponse>,
) -> Result<PlanMessage> {
    let Some(resp) = stream.message().await? else {
        return Err(Error::Decode(
            "the plan part's answer ended before its last message".to_string(),
        ));
    };
    check(resp.header)?;
    match resp.output {
        Some(PbOutput::Arrow(payload)) => Ok(PlanMessage::Rows(decode_payload(payload)?)),
        Some(PbOutput::AffectedRows(_)) => Ok(PlanMessage::Done),
        None => Err(Error::Decode("the response has no output".to_string())),
    }
}

/// Decodes an `ArrowPayload` into record batches (at most
/// [`MAX_DECODED_PAYLOAD`] bytes once decompressed).
pub fn decode_payload(payload: ArrowPayload) -> Result<Vec<RecordBatch>> {
    decode_payload_limited(payload, MAX_DECODED_PAYLOAD)
}

/// Decodes an `ArrowPayload` into record batches. The payload's bytes after
/// decompression may total at most `max_decoded`: zstd is read through a
/// bounded reader, and the IPC stream's declared message and body lengths
/// are checked against the bytes present before anything is allocated for
/// them.
pub fn decode_payload_limited(
    payload: ArrowPayload,
    max_decoded: usize,
) -> Result<Vec<RecordBatch>> {
    decode_payload_checked(payload, max_decoded, &|_| Ok(()))
}

/// [`decode_payload_limited`] that also runs `check` on each decompressed
/// IPC stream before reading it (a server refuses declared buffer sizes
/// there), and turns a panic of the Arrow reader on damaged bytes into an
/// error.
pub fn decode_payload_checked(
    payload: ArrowPayload,
    max_decoded: usize,
    check: &dyn Fn(&[u8]) -> std::result::Result<(), String>,
) -> Result<Vec<RecordBatch>> {
    use std::io::Read;
    let compressed = payload.compression() == Compression::Zstd;
    let too_large = || {
        Error::Decode(format!(
            "the payload decodes to more than {max_decoded} bytes"
        ))
    };
    let mut total = 0usize;
    let mut out = Vec::new();
    for bytes in payload.record_batches {
        let left = max_decoded.saturating_sub(total);
        let bytes = if compressed {
            let decoder = zstd::stream::read::Decoder::new(Cursor::new(bytes))
                .map_err(|e| Error::Decode(e.to_string()))?;
            let mut decoded = Vec::new();
            decoder
                .take(u64::try_from(left).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut decoded)
                .map_err(|e| Error::Decode(e.to_string()))?;
            decoded
        } else {
            bytes
        };
        if bytes.len() > left {
            return Err(too_large());
        }
        total += bytes.len();
        check_ipc_framing(&bytes)?;
        check(&bytes).map_err(Error::Decode)?;
        let read = std::panic::catch_unwind(|| -> Result<Vec<RecordBatch>> {
            let reader = StreamReader::try_new(Cursor::new(bytes), None)
                .map_err(|e| Error::Decode(e.to_string()))?;
            reader
                .map(|b| b.map_err(|e| Error::Decode(e.to_string())))
                .collect()
        });
        match read {
            Ok(batches) => out.extend(batches?),
            Err(_) => {
                return Err(Error::Decode(
                    "malformed Arrow IPC stream: the reader refused it".to_string(),
                ))
            }
        }
    }
    Ok(out)
}

/// Checks that every message of an Arrow IPC stream lies within `bytes`:
/// the reader allocates a message's declared metadata and body lengths
/// before reading them, so a few bytes declaring gigabytes must be refused
/// first.
fn check_ipc_framing(bytes: &[u8]) -> Result<()> {
    let bad = |what: &str| Error::Decode(format!("malformed Arrow IPC stream: {what}"));
    let read_i32 = |pos: usize| -> Result<i32> {
        bytes
            .get(pos..pos.saturating_add(4))
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
            .ok_or_else(|| bad("truncated length"))
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let mut len = read_i32(pos)?;
        pos += 4;
        if len == -1 {
            // The continuation marker of the current format.
            len = read_i32(pos)?;
            pos += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| bad("negative metadata length"))?;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad("metadata past the end"))?;
        let message = arrow::ipc::root_as_message(&bytes[pos..end])
            .map_err(|e| bad(&format!("metadata: {e}")))?;
        pos = end;
        let body =
            usize::try_from(message.bodyLength()).map_err(|_| bad("negative body length"))?;
        pos = pos
            .checked_add(body)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad("body past the end"))?;
    }
    Ok(())
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

    /// Runs part of a query plan over a table led there: the rows, as the
    /// stream of responses the node sends (see [`next_plan_rows`]).
    pub async fn execute_plan(
        &self,
        request: strata_proto::storage::ExecutePlanRequest,
    ) -> Result<tonic::Streaming<SqlQueryResponse>> {
        Ok(self.inner.clone().execute_plan(request).await?.into_inner())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::{
        array::{ArrayRef, Int64Array},
        ipc::writer::StreamWriter,
    };

    use super::*;

    fn ipc(rows: i64) -> Vec<u8> {
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows));
        let batch = RecordBatch::try_from_iter([("v", col)]).unwrap();
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new(&mut buf, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        buf
    }

    fn payload(bytes: Vec<u8>, compression: Compression) -> ArrowPayload {
        ArrowPayload {
            record_batches: vec![bytes],
            compression: compression as i32,
        }
    }

    #[test]
    fn payloads_decode_within_their_bound() {
        let bytes = ipc(1000);
        let batches = decode_payload(payload(bytes.clone(), Compression::None)).unwrap();
        assert_eq!(batches[0].num_rows(), 1000);
        let z = zstd::bulk::compress(&bytes, 1).unwrap();
        let batches =
            decode_payload_limited(payload(z.clone(), Compression::Zstd), 1 << 20).unwrap();
        assert_eq!(batches[0].num_rows(), 1000);
        // The same payload over a smaller bound is refused.
        let err = decode_payload_limited(payload(z, Compression::Zstd), 100).unwrap_err();
        assert!(err.to_string().contains("more than 100 bytes"), "{err}");
        // A zstd bomb: 256 MiB of zeros in a few kilobytes.
        let bomb = zstd::bulk::compress(&vec![0u8; 256 << 20], 3).unwrap();
        assert!(bomb.len() < 1 << 20);
        let err = decode_payload_limited(payload(bomb, Compression::Zstd), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn declared_lengths_past_the_bytes_are_refused() {
        let mut bytes = ipc(10);
        // The first message's metadata length, after the continuation
        // marker: declare 1 GiB.
        bytes[4..8].copy_from_slice(&(1i32 << 30).to_le_bytes());
        let err = decode_payload(payload(bytes, Compression::None)).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        // A truncated stream (the record batch's body cut off).
        let bytes = ipc(1000);
        let cut = bytes[..bytes.len() - 100].to_vec();
        assert!(decode_payload(payload(cut, Compression::None)).is_err());
    }
}
