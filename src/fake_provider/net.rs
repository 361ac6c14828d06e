//! Transport-level fault injection: killable connections and abortable bodies.
//!
//! Two faults cannot be expressed as an ordinary HTTP response:
//!
//! * **`reset`** — close the TCP connection without sending anything. axum
//!   hands handlers no access to the socket, so [`serve`](super::serve) runs
//!   axum on a custom [`axum::serve::Listener`] ([`KillableListener`]) whose
//!   connections are [`KillableStream`]s. Each connection's [`ConnKill`]
//!   switch reaches the handlers through axum's `ConnectInfo` mechanism. A
//!   handler that wants a reset flips the switch and returns a dummy
//!   response; when hyper then tries to write that response, the stream sets
//!   `SO_LINGER=0` and fails the write with `ConnectionReset`; hyper gives up
//!   on the connection and drops the socket, and the kernel answers with an
//!   RST. The client sees "connection reset" / "connection closed before
//!   message completed" and not a single response byte.
//!
//!   When the router from [`app`](super::app) is served by someone else (no
//!   `ConnectInfo<ConnKill>` available), `reset` degrades to a response whose
//!   body fails before its first byte; hyper then aborts the connection, which
//!   clients also see as a transport error (possibly after the status line).
//!
//! * **`drop_stream`** — end a response body abruptly. [`ScriptedBody`] turns
//!   a list of frames (with pacing delays) into a body stream; an
//!   [`Frame::Abort`] frame yields an `io::Error`, which makes hyper abort the
//!   connection without the chunked-encoding terminator, so the client gets
//!   an "incomplete message"/"unexpected EOF" body error.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::state::InFlightGuard;

/// Per-connection kill switch, available to handlers as
/// `ConnectInfo<ConnKill>` when served through [`KillableListener`].
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnKill(Arc<AtomicBool>);

impl ConnKill {
    /// Marks the connection for an abortive close (RST) at its next I/O.
    pub fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A `TcpListener` whose connections can be reset by handlers.
pub(crate) struct KillableListener(pub TcpListener);

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    // Best effort: latency matters more than throughput here.
                    let _ = stream.set_nodelay(true);
                    let io = KillableStream {
                        inner: stream,
                        kill: ConnKill::default(),
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // Same policy as axum's own TcpListener impl: connection
                    // errors are per-connection; others (EMFILE...) need a pause.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!("fake provider accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().kill.clone()
    }
}

/// A TCP stream that fails all I/O (and closes with RST) once killed.
pub(crate) struct KillableStream {
    inner: TcpStream,
    kill: ConnKill,
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.kill.is_killed() {
            // SO_LINGER=0 makes the close (when hyper drops us) send an RST
            // instead of a FIN.
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake provider: connection reset by scenario",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Pause before a scripted abort, so that earlier frames reach the client.
const ABORT_FLUSH_DELAY: Duration = Duration::from_millis(20);

/// One step of a scripted response body.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Send these bytes.
    Data(Bytes),
    /// Fail the body here: hyper aborts the connection mid-response.
    Abort,
}

/// A response body that emits scripted frames, sleeping `delay` between
/// them, and holds the request's in-flight guard until it ends.
pub(crate) struct ScriptedBody {
    frames: std::iter::Peekable<std::vec::IntoIter<Frame>>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    started: bool,
    done: bool,
    _guard: Option<InFlightGuard>,
}

impl ScriptedBody {
    pub fn new(frames: Vec<Frame>, delay: Duration, guard: Option<InFlightGuard>) -> Self {
        ScriptedBody {
            frames: frames.into_iter().peekable(),
            delay,
            sleep: None,
            started: false,
            done: false,
            _guard: guard,
        }
    }

    /// Converts into an axum body.
    pub fn into_body(self) -> axum::body::Body {
        axum::body::Body::from_stream(self)
    }
}

impl Stream for ScriptedBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Pace every frame but the first. What was sent before an abort
        // (data frames, or just the response head when the body aborts
        // first) gets a moment to be flushed: hyper buffers writes, and
        // failing the body right away could discard it unsent.
        let aborting = matches!(this.frames.peek(), Some(Frame::Abort));
        let delay = if aborting { this.delay.max(ABORT_FLUSH_DELAY) } else { this.delay };
        if (this.started || aborting) && !delay.is_zero() {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        this.started = true;
        match this.frames.next() {
            Some(Frame::Data(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Some(Frame::Abort) => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "fake provider: stream dropped by scenario",
                ))))
            }
            None => {
                this.done = true;
                this._guard = None;
                Poll::Ready(None)
            }
        }
    }
}
