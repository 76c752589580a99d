//! One PostgreSQL connection: pgwire's message loop, with the two bounds
//! pgwire leaves open.
//!
//! - **Message size.** pgwire accepts a `Query`, `Parse` or `Bind` message
//!   of up to 1 GiB and buffers it whole. [`Bounded`] reads the frame
//!   headers as the bytes arrive and ends the connection with `FATAL 54000`
//!   (program_limit_exceeded) as soon as one declares more than
//!   `server.pg_max_message_size`, before the body is read.
//! - **Connections.** At most `server.pg_max_connections` connections are
//!   served at once; one more gets `FATAL 53300` (too_many_connections), as
//!   PostgreSQL answers past `max_connections`.
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
    api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers},
    error::ErrorInfo,
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

/// The largest untyped (startup-phase) message PostgreSQL accepts.
const MAX_STARTUP_MESSAGE: u64 = 10_000;

/// The request codes of the untyped messages after which another untyped
/// message follows (the client asked for TLS or GSS encryption, was told
/// no, and now sends its startup message).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

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
    pub fn new(max_message: u64, max_connections: usize) -> Self {
        Self {
            max_message,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
        }
    }
}

/// What the frame reader is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// Reading the header of a startup-phase message: length (4 bytes,
    /// counting itself) and request code (4 bytes).
    UntypedHeader,
    /// Reading the header of a message: type (1 byte), length (4 bytes,
    /// counting itself).
    TypedHeader,
    /// Skipping the rest of a message's body.
    Body { left: u64, then_typed: bool },
}

/// The frontend's framing, followed byte by byte: whether a message
/// declared a length over the limit.
#[derive(Debug)]
struct FrameReader {
    frame: Frame,
    header: [u8; 8],
    have: usize,
    max_message: u64,
}

impl FrameReader {
    fn new(max_message: u64) -> Self {
        Self {
            frame: Frame::UntypedHeader,
            header: [0; 8],
            have: 0,
            max_message,
        }
    }

    /// Feeds bytes the client sent; `Err(declared length)` once a message
    /// declares more than the limit (or an impossible length).
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            match self.frame {
                Frame::Body { left, then_typed } => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[usize::try_from(n).unwrap_or(bytes.len())..];
                    self.frame = if n == left {
                        Self::next_header(then_typed)
                    } else {
                        Frame::Body {
                            left: left - n,
                            then_typed,
                        }
                    };
                }
                Frame::UntypedHeader | Frame::TypedHeader => {
                    let need = if self.frame == Frame::UntypedHeader {
                        8
                    } else {
                        5
                    };
                    let take = (need - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    if self.have < need {
                        continue;
                    }
                    self.have = 0;
                    self.frame = self.after_header()?;
                }
            }
        }
        Ok(())
    }

    fn next_header(typed: bool) -> Frame {
        if typed {
            Frame::TypedHeader
        } else {
            Frame::UntypedHeader
        }
    }

    /// The frame after a complete header.
    fn after_header(&self) -> Result<Frame, u64> {
        let h = &self.header;
        if self.frame == Frame::UntypedHeader {
            let len = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
            let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if !(8..=MAX_STARTUP_MESSAGE.min(self.max_message)).contains(&len) {
                return Err(len);
            }
            let then_typed = !matches!(code, SSL_REQUEST | GSSENC_REQUEST);
            Ok(Self::body(len - 8, then_typed))
        } else {
            let len = u64::from(u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
            if !(4..=self.max_message).contains(&len) {
                return Err(len);
            }
            Ok(Self::body(len - 4, true))
        }
    }

    fn body(left: u64, then_typed: bool) -> Frame {
        if left == 0 {
            Self::next_header(then_typed)
        } else {
            Frame::Body { left, then_typed }
        }
    }
}

/// A client stream whose frames are checked as they are read.
pub struct Bounded<S> {
    inner: S,
    frames: FrameReader,
    /// The length the offending message declared, once one did.
    refused: Option<u64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(len) = self.refused {
            return Poll::Ready(Err(too_large(len)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(len) = this.frames.feed(&buf.filled()[before..]) {
                    this.refused = Some(len);
                    return Poll::Ready(Err(too_large(len)));
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

fn too_large(len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a message declared {len} bytes"),
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
    let permit = limits.connections.clone().try_acquire_owned().ok();
    let startup = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup);
    // Answers an SSL request with "no" (this listener has no TLS).
    let negotiated = tokio::select! {
        _ = &mut startup => return Ok(()),
        s = negotiate_tls(tcp, None) => s?,
    };
    let Some(socket) = negotiated else {
        return Ok(());
    };
    // The rest goes through the frame check; what negotiation already read
    // is checked first.
    let parts = socket.into_parts();
    let mut frames = FrameReader::new(limits.max_message);
    let refused = frames.feed(&parts.read_buf).err();
    let mut bounded = FramedParts::new(
        Bounded {
            inner: parts.io,
            frames,
            refused,
        },
        parts.codec,
    );
    bounded.read_buf = parts.read_buf;
    bounded.write_buf = parts.write_buf;
    let mut socket: Socket<_> = Framed::from_parts(bounded);

    if permit.is_none() {
        // PostgreSQL reads the startup message before it refuses, so that
        // the client is listening for the answer.
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        let _ = socket
            .send(fatal(
                "53300",
                format!(
                    "sorry, too many clients already: {} connections are open \
                     (server.pg_max_connections)",
                    limits.max_connections
                ),
            ))
            .await;
        return Ok(());
    }

    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
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
                let answer = match socket.get_ref().refused {
                    Some(len) => fatal(
                        "54000",
                        format!(
                            "message too large: {len} bytes, more than the {} allowed \
                             (server.pg_max_message_size)",
                            limits.max_message
                        ),
                    ),
                    None => {
                        let info: ErrorInfo = e.into();
                        fatal(&info.code, info.message)
                    }
                };
                let _ = socket.send(answer).await;
                break;
            }
        };
        // A Terminate ends the session; the client waits for the close.
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => msg.is_extended_query(),
        };
        let is_cancel_request = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_are_followed_across_reads_of_any_size() {
        let mut stream = untyped(SSL_REQUEST, b"");
        stream.extend(untyped(196_608, b"user\0u\0\0"));
        stream.extend(typed(b'Q', b"SELECT 1\0"));
        stream.extend(typed(b'P', &[0; 900]));
        stream.extend(typed(b'S', b""));
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut r = FrameReader::new(1000);
            for piece in stream.chunks(chunk) {
                r.feed(piece).unwrap();
            }
            assert_eq!(r.frame, Frame::TypedHeader, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_its_header() {
        let mut r = FrameReader::new(1000);
        r.feed(&untyped(196_608, b"user\0u\0\0")).unwrap();
        r.feed(&typed(b'Q', &[b'x'; 996])).unwrap();
        // A header that declares 1 GiB, without the body.
        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
        assert_eq!(r.feed(&huge), Err(1 << 30));
        // Impossible lengths, and startup messages over PostgreSQL's own
        // bound.
        let mut r = FrameReader::new(1000);
        r.feed(&untyped(196_608, b"")).unwrap();
        assert_eq!(r.feed(&[b'Q', 0, 0, 0, 3]), Err(3));
        let mut r = FrameReader::new(1 << 20);
        let mut big_startup = 20_000u32.to_be_bytes().to_vec();
        big_startup.extend_from_slice(&196_608u32.to_be_bytes());
        assert_eq!(r.feed(&big_startup), Err(20_000));
    }
}
