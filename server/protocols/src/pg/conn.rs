//! One PostgreSQL connection: pgwire's message loop, with the two bounds
//! pgwire leaves open.
//!
//! - **Message size.** pgwire accepts a `Query`, `Parse` or `Bind` message
//!   of up to 1 GiB and buffers it whole. [`Bounded`] counts the bytes that
//!   pgwire has read but not yet turned into a message, and ends the
//!   connection with `FATAL 54000` (program_limit_exceeded) once they pass
//!   `server.pg_max_message_size`: pgwire reads more only while the message
//!   at the head of its buffer is incomplete, so no message larger than the
//!   limit can be buffered, whatever lengths the client declares (counting
//!   pgwire's own buffer, rather than following the framing separately,
//!   cannot be misled by a message whose decoder reads less or more than
//!   its declared length).
//! - **Connections.** At most `server.pg_max_connections` connections are
//!   served at once; one more gets `FATAL 53300` (too_many_connections), as
//!   PostgreSQL answers past `max_connections`, within a few seconds.
//! - **Prepared statements and portals.** pgwire keeps every named
//!   statement (`Parse`) and portal (`Bind`) until the client closes it, and
//!   never clears portals. [`Held`] tracks them: past [`MAX_HELD`] of
//!   either, or [`MAX_HELD_BYTES`] in all, a `Parse` or `Bind` that would
//!   add one is refused with `ERROR 54000` (the connection stays usable;
//!   closing statements makes room).
//!
//! A decoding error that pgwire's own loop would answer by dropping the
//! connection without a word gets a `FATAL` error message first.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use pgwire::{
    api::{
        store::PortalStore, ClientInfo, ClientPortalStore, ErrorHandler, PgWireConnectionState,
        PgWireServerHandlers,
    },
    error::{ErrorInfo, PgWireError},
    messages::{PgWireBackendMessage, PgWireFrontendMessage},
    tokio::server::{
        negotiate_tls, process_error, process_message, MaybeTls, PgWireMessageServerCodec,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Semaphore,
};
use tokio_util::codec::{Framed, FramedParts};

/// How long a client has to finish its startup (pgwire's own bound).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection refused for being one too many may take to be
/// told so.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// After refusing a message too large, how long and how much more of it
/// is read and dropped before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const DRAIN_BYTES: u64 = 64 << 20;

/// A message's type byte and length, which pgwire may hold besides the
/// message itself.
const HEADER: u64 = 5;

/// Named prepared statements, and named portals, one connection may hold.
pub const MAX_HELD: usize = 1024;
/// The bytes they may hold in all (statement text, parameters).
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// The named statements and portals a connection holds, with their sizes,
/// as pgwire stores them (a name given again replaces the old entry; an
/// unnamed one is replaced by the next and not counted).
#[derive(Debug, Default)]
struct Held {
    statements: std::collections::HashMap<String, usize>,
    portals: std::collections::HashMap<String, usize>,
    bytes: usize,
    /// The entry the last admitted message added, and the one it replaced:
    /// undone when pgwire then refuses the message (a `Parse` of bad SQL
    /// stores nothing).
    last: Option<(bool, String, Option<usize>)>,
}

impl Held {
    /// Records what `msg` adds or removes; `Err` (and nothing recorded)
    /// when it would pass a bound.
    fn admit(&mut self, msg: &PgWireFrontendMessage) -> Result<(), String> {
        self.last = None;
        use pgwire::messages::extendedquery::{
            TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
        };
        let named = |n: &Option<String>| n.as_deref().filter(|n| !n.is_empty()).map(str::to_string);
        match msg {
            PgWireFrontendMessage::Parse(p) => match named(&p.name) {
                Some(name) => {
                    let size = p.query.len() + 4 * p.type_oids.len();
                    self.put(true, name, size)
                }
                None => Ok(()),
            },
            PgWireFrontendMessage::Bind(b) => match named(&b.portal_name) {
                Some(name) => {
                    let size = b
                        .parameters
                        .iter()
                        .map(|p| p.as_ref().map_or(0, |p| p.len()) + 4)
                        .sum::<usize>()
                        + 2 * (b.parameter_format_codes.len() + b.result_column_format_codes.len());
                    self.put(false, name, size)
                }
                None => Ok(()),
            },
            PgWireFrontendMessage::Close(c) => {
                if let Some(name) = named(&c.name) {
                    let map = match c.target_type {
                        TARGET_TYPE_BYTE_STATEMENT => &mut self.statements,
                        TARGET_TYPE_BYTE_PORTAL => &mut self.portals,
                        _ => return Ok(()),
                    };
                    if let Some(size) = map.remove(&name) {
                        self.bytes -= size;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn put(&mut self, statement: bool, name: String, size: usize) -> Result<(), String> {
        let (map, what) = if statement {
            (&mut self.statements, "prepared statements")
        } else {
            (&mut self.portals, "portals")
        };
        let replaced = map.get(&name).copied();
        if replaced.is_none() && map.len() >= MAX_HELD {
            return Err(format!(
                "this connection holds {MAX_HELD} named {what}, the most it may: close some first"
            ));
        }
        let bytes = self.bytes - replaced.unwrap_or(0) + size;
        if bytes > MAX_HELD_BYTES {
            return Err(format!(
                "this connection's prepared statements and portals would hold {bytes} bytes, \
                 more than {MAX_HELD_BYTES}: close some first"
            ));
        }
        map.insert(name.clone(), size);
        self.bytes = bytes;
        self.last = Some((statement, name, replaced));
        Ok(())
    }

    /// Forgets a statement a `DEALLOCATE name` released.
    fn forget_statement(&mut self, name: &str) {
        if let Some(size) = self.statements.remove(name) {
            self.bytes -= size;
        }
    }

    /// Forgets every statement (`DEALLOCATE ALL`) and, with `portals`,
    /// every portal too (`DISCARD ALL`); returns the names forgotten.
    fn forget_all(&mut self, portals: bool) -> (Vec<String>, Vec<String>) {
        let statements: Vec<String> = self.statements.drain().map(|(n, _)| n).collect();
        let closed: Vec<String> = if portals {
            self.portals.drain().map(|(n, _)| n).collect()
        } else {
            Vec::new()
        };
        self.bytes = self.portals.values().sum();
        (statements, closed)
    }

    /// Forgets what the last admitted message added (pgwire refused it).
    fn undo_last(&mut self) {
        let Some((statement, name, replaced)) = self.last.take() else {
            return;
        };
        let map = if statement {
            &mut self.statements
        } else {
            &mut self.portals
        };
        if let Some(size) = map.remove(&name) {
            self.bytes -= size;
        }
        if let Some(old) = replaced {
            map.insert(name, old);
            self.bytes += old;
        }
    }
}

/// What SQL text releases: `DEALLOCATE [PREPARE] name`, `DEALLOCATE ALL`
/// (`Some(None)` for all), `DISCARD ALL` (also closes the portals; the
/// flag). Drivers release statements so (psycopg 3 keeps its 100 most used
/// and deallocates the rest), so the bound above must see it.
fn releases(sql: &str) -> Vec<(Option<String>, bool)> {
    let mut out = Vec::new();
    for statement in sql.split(';') {
        let mut words = statement.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.eq_ignore_ascii_case("discard") {
            if words.next().is_some_and(|w| w.eq_ignore_ascii_case("all")) {
                out.push((None, true));
            }
            continue;
        }
        if !first.eq_ignore_ascii_case("deallocate") {
            continue;
        }
        let mut name = words.next();
        if name.is_some_and(|w| w.eq_ignore_ascii_case("prepare")) {
            name = words.next();
        }
        match name {
            Some(w) if w.eq_ignore_ascii_case("all") => out.push((None, false)),
            Some(w) => {
                let unquoted = match w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                    Some(q) => q.replace("\"\"", "\""),
                    None => w.to_ascii_lowercase(),
                };
                out.push((Some(unquoted), false));
            }
            None => {}
        }
    }
    out
}

/// The bounds of the PostgreSQL listener.
#[derive(Debug, Clone)]
pub struct PgLimits {
    /// The largest message a client may send, in bytes.
    pub max_message: u64,
    /// Connections served at once.
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
}

impl PgLimits {
    /// `max_connections` 0: no limit.
    pub fn new(max_message: u64, max_connections: usize) -> Self {
        let permits = if max_connections == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max_connections
        };
        Self {
            max_message,
            connections: Arc::new(Semaphore::new(permits)),
            max_connections,
        }
    }
}

/// A client stream that refuses to let pgwire buffer more than one
/// message's worth of unread bytes.
pub struct Bounded<S> {
    inner: S,
    /// Bytes read that pgwire has not yet decoded into a message: reset to
    /// what its buffer holds whenever it yields one.
    pending: u64,
    max_message: u64,
    /// The bytes pending when the limit was passed.
    refused: Option<u64>,
}

impl<S> Bounded<S> {
    fn new(inner: S, pending: u64, max_message: u64) -> Self {
        Self {
            inner,
            pending,
            max_message,
            refused: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(n) = self.refused {
            return Poll::Ready(Err(too_large(n)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.pending += (buf.filled().len() - before) as u64;
                if this.pending > this.max_message.saturating_add(HEADER) {
                    this.refused = Some(this.pending);
                    return Poll::Ready(Err(too_large(this.pending)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn too_large(pending: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{pending} bytes of an unfinished message"),
    )
}

fn fatal(code: &str, message: String) -> PgWireBackendMessage {
    PgWireBackendMessage::ErrorResponse(
        ErrorInfo::new("FATAL".to_string(), code.to_string(), message).into(),
    )
}

type Socket<St> = Framed<Bounded<MaybeTls>, PgWireMessageServerCodec<St>>;

/// Serves one connection until it ends.
pub async fn serve_connection<H>(tcp: TcpStream, handlers: H, limits: PgLimits) -> io::Result<()>
where
    H: PgWireServerHandlers,
{
    let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(tcp, &limits)).await;
        return Ok(());
    };
    let startup = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup);
    let negotiated = tokio::select! {
        _ = &mut startup => None,
        s = bounded(tcp, limits.max_message) => s?,
    };
    let Some(mut socket) = negotiated else {
        return Ok(());
    };

    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
    let mut prepared = Held::default();
    loop {
        let msg = if matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        ) {
            tokio::select! {
                _ = &mut startup => None,
                msg = socket.next() => msg,
            }
        } else {
            socket.next().await
        };
        let msg: PgWireFrontendMessage = match msg {
            None => break,
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                let refused = socket.get_ref().refused.is_some();
                let answer = if refused {
                    too_large_answer(limits.max_message)
                } else {
                    let info: ErrorInfo = e.into();
                    fatal(&info.code, info.message)
                };
                let _ = socket.send(answer).await;
                if refused {
                    // Closing with the rest of the message unread would
                    // reset the connection, and the client could lose the
                    // answer: read (and drop) what it still sends, briefly.
                    let _ = tokio::time::timeout(
                        DRAIN_TIMEOUT,
                        drain(&mut socket.get_mut().inner, DRAIN_BYTES),
                    )
                    .await;
                }
                break;
            }
        };
        // What pgwire still holds is the start of the next message.
        let held = socket.read_buffer().len() as u64;
        socket.get_mut().pending = held;
        // A Terminate ends the session; the client waits for the close.
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => msg.is_extended_query(),
        };
        let is_cancel_request = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
        // pgwire skips what arrives while it waits for a Sync after an
        // error; only what it would store is counted.
        if !matches!(socket.state(), PgWireConnectionState::AwaitingSync) {
            let text = match &msg {
                PgWireFrontendMessage::Query(q) => Some(q.query.as_str()),
                PgWireFrontendMessage::Parse(p) => Some(p.query.as_str()),
                _ => None,
            };
            for (name, portals) in text.map(releases).unwrap_or_default() {
                let store = socket.portal_store();
                match name {
                    Some(name) => {
                        prepared.forget_statement(&name);
                        store.rm_statement(&name);
                    }
                    None => {
                        let (statements, closed) = prepared.forget_all(portals);
                        for name in statements {
                            store.rm_statement(&name);
                        }
                        for name in closed {
                            store.rm_portal(&name);
                        }
                    }
                }
            }
            if let Err(why) = prepared.admit(&msg) {
                let e = PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".to_string(),
                    "54000".to_string(),
                    why,
                )));
                process_error(&mut socket, e, is_extended_query).await?;
                continue;
            }
        }
        if let Err(mut e) = process_message(
            msg,
            &mut socket,
            startup_handler.clone(),
            simple_query_handler.clone(),
            extended_query_handler.clone(),
            copy_handler.clone(),
            cancel_handler.clone(),
        )
        .await
        {
            prepared.undo_last();
            error_handler.on_error(&socket, &mut e);
            let is_fatal = e.is_fatal();
            process_error(&mut socket, e, is_extended_query).await?;
            if is_fatal {
                break;
            }
        }
        if is_cancel_request {
            break;
        }
    }
    drop(permit);
    Ok(())
}

/// Negotiates (an SSL request is answered "no": this listener has no TLS)
/// and puts the byte budget under pgwire's framing; `None` when the client
/// asked for direct TLS.
async fn bounded<St>(tcp: TcpStream, max_message: u64) -> io::Result<Option<Socket<St>>> {
    let Some(socket) = negotiate_tls(tcp, None).await? else {
        return Ok(None);
    };
    let parts = socket.into_parts();
    let pending = parts.read_buf.len() as u64;
    let mut out = FramedParts::new(Bounded::new(parts.io, pending, max_message), parts.codec);
    out.read_buf = parts.read_buf;
    out.write_buf = parts.write_buf;
    Ok(Some(Framed::from_parts(out)))
}

/// Tells a connection past `pg_max_connections` so, after its startup
/// message (PostgreSQL does the same, so that the client is listening for
/// the answer). A cancel request is not refused: it is only closed, as
/// this server does not cancel queries.
async fn refuse(tcp: TcpStream, limits: &PgLimits) -> io::Result<()> {
    let Some(mut socket) = bounded::<String>(tcp, limits.max_message).await? else {
        return Ok(());
    };
    if let Some(Ok(PgWireFrontendMessage::CancelRequest(_))) = socket.next().await {
        return Ok(());
    }
    socket
        .send(fatal(
            "53300",
            format!(
                "sorry, too many clients already: {} connections are open \
                 (server.pg_max_connections)",
                limits.max_connections
            ),
        ))
        .await
}

/// Reads and drops up to `limit` bytes, until the client stops sending.
async fn drain<S: AsyncRead + Unpin>(from: &mut S, limit: u64) {
    use tokio::io::AsyncReadExt;
    let mut scratch = vec![0u8; 64 << 10];
    let mut read = 0u64;
    while read < limit {
        match from.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n as u64,
        }
    }
}

fn too_large_answer(max: u64) -> PgWireBackendMessage {
    fatal(
        "54000",
        format!(
            "message too large: more than the {max} bytes allowed (server.pg_max_message_size)"
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn named_statements_and_portals_are_counted_and_bounded() {
        use pgwire::messages::extendedquery::{Bind, Close, Parse};
        let parse = |name: &str, sql: &str| {
            PgWireFrontendMessage::Parse(Parse::new(
                Some(name.to_string()),
                sql.to_string(),
                vec![],
            ))
        };
        let mut held = Held::default();
        // Unnamed statements are replaced, not counted.
        for _ in 0..3 * MAX_HELD {
            held.admit(&parse("", "SELECT 1")).unwrap();
        }
        for i in 0..MAX_HELD {
            held.admit(&parse(&format!("s{i}"), "SELECT 1")).unwrap();
        }
        assert_eq!(held.bytes, MAX_HELD * 8);
        assert!(held.admit(&parse("one-more", "SELECT 1")).is_err());
        // A name given again replaces its statement.
        held.admit(&parse("s0", "SELECT 22")).unwrap();
        assert_eq!(held.bytes, MAX_HELD * 8 + 1);
        let close =
            |t: u8, name: &str| PgWireFrontendMessage::Close(Close::new(t, Some(name.to_string())));
        held.admit(&close(b'S', "s0")).unwrap();
        // A Parse pgwire refuses (bad SQL) stores nothing.
        held.admit(&parse("bad", "SELEC")).unwrap();
        held.undo_last();
        assert!(!held.statements.contains_key("bad"));
        assert_eq!(held.bytes, (MAX_HELD - 1) * 8);
        held.admit(&parse("one-more", "SELECT 1")).unwrap();
        // Portals count their parameters; a huge one is refused by bytes.
        let bind = |portal: &str, size: usize| {
            PgWireFrontendMessage::Bind(Bind::new(
                Some(portal.to_string()),
                Some("s1".to_string()),
                vec![],
                vec![Some(bytes::Bytes::from(vec![0u8; size]))],
                vec![],
            ))
        };
        held.admit(&bind("p", 1000)).unwrap();
        assert!(held.admit(&bind("q", MAX_HELD_BYTES)).is_err());
        held.admit(&close(b'P', "p")).unwrap();
        assert_eq!(held.portals.len(), 0);
        // DEALLOCATE (as psycopg sends it) releases; DISCARD ALL releases all.
        assert_eq!(
            releases("deallocate _pg3_7; DEALLOCATE PREPARE \"Q\"\"x\"; select 1"),
            vec![
                (Some("_pg3_7".to_string()), false),
                (Some("Q\"x".to_string()), false)
            ]
        );
        assert_eq!(releases("DEALLOCATE ALL"), vec![(None, false)]);
        assert_eq!(releases(" discard all "), vec![(None, true)]);
        assert!(releases("discard plans").is_empty());
        held.forget_statement("s1");
        assert!(!held.statements.contains_key("s1"));
        held.admit(&bind("p", 10)).unwrap();
        let (statements, portals) = held.forget_all(true);
        assert_eq!((statements.len(), portals.len()), (MAX_HELD - 1, 1));
        assert_eq!(held.bytes, 0);
    }

    #[tokio::test]
    async fn reads_past_the_budget_are_refused_until_it_is_reset() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut b = Bounded::new(server, 0, 100);
        client.write_all(&[0u8; 100]).await.unwrap();
        let mut buf = [0u8; 100];
        b.read_exact(&mut buf).await.unwrap();
        // pgwire decoded a message and holds nothing more.
        b.pending = 0;
        client.write_all(&[0u8; 105]).await.unwrap();
        let mut buf = [0u8; 105];
        b.read_exact(&mut buf).await.unwrap();
        // Without a reset, one byte more passes the limit (100 + a header).
        client.write_all(&[0u8; 1]).await.unwrap();
        let err = b.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(b.refused, Some(106));
        // And stays refused.
        assert!(b.read(&mut [0u8; 1]).await.is_err());
    }
}
