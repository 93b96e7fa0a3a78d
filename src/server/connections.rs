//! Accepted connections, before HTTP/2 sees them: at most `server.max_connections` are open at
//! once (beyond that a new connection is closed as it is accepted), and each must send the
//! HTTP/2 client preface, or the whole head of its first HTTP/1.1 request, within
//! `server.preface_timeout` or be closed, so that connections that never speak (or dribble a
//! request's headers a byte at a time) cannot pile up.
//!
//! The preface is counted in bytes read from the socket. Over TLS those are the handshake's
//! first bytes, and the TLS handshake has its own time limit (see [`tls`](crate::tls)).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::Metrics;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// The end of an HTTP/1.1 request head, as the last four bytes read.
const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");

/// The listener's connections, as tonic's server takes them.
#[derive(Debug)]
pub(crate) struct Incoming {
    listener: TcpListener,
    open: Arc<Semaphore>,
    max: usize,
    preface_timeout: Duration,
    metrics: Metrics,
    /// Connections closed at accept in the current episode of being full.
    refused: u64,
}

impl Incoming {
    pub(crate) fn new(
        listener: TcpListener,
        max_connections: usize,
        preface_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
            preface_timeout,
            metrics,
            refused: 0,
        }
    }

    /// Closes a connection beyond the limit; the first of an episode is logged.
    fn refuse(&mut self, stream: TcpStream) {
        drop(stream);
        if self.refused == 0 {
            tracing::warn!(
                max_connections = self.max,
                "connection limit reached: closing new connections until one ends (server.max_connections)"
            );
        }
        self.refused += 1;
        self.metrics.connection_closed(reason::MAX_CONNECTIONS);
    }

    fn admit(&mut self, stream: TcpStream, permit: OwnedSemaphorePermit) -> Connection {
        if self.refused > 0 {
            tracing::info!(
                refused = self.refused,
                "accepting connections again after closing some at the connection limit"
            );
            self.refused = 0;
        }
        // Small gRPC messages go out at once rather than wait for more (Nagle).
        let _ = stream.set_nodelay(true);
        self.metrics.connection_opened();
        Connection {
            stream,
            preface: Some(Preface {
                received: 0,
                first: None,
                last_four: 0,
                deadline: Box::pin(tokio::time::sleep(self.preface_timeout)),
            }),
            metrics: self.metrics.clone(),
            _permit: permit,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (stream, _) = match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Pending => return Poll::Pending,
            };
            match Arc::clone(&self.open).try_acquire_owned() {
                Ok(permit) => return Poll::Ready(Some(Ok(self.admit(stream, permit)))),
                Err(_) => self.refuse(stream),
            }
        }
    }
}

/// Values of the `reason` attribute of `dds_gateway.connections.closed`.
pub(crate) mod reason {
    /// Closed at accept: `server.max_connections` were open.
    pub(crate) const MAX_CONNECTIONS: &str = "max_connections";
    /// No HTTP/2 preface within `server.preface_timeout`.
    pub(crate) const PREFACE_TIMEOUT: &str = "preface_timeout";
    /// No request in flight for `server.idle_timeout` (see `server::idle`).
    pub(crate) const IDLE_TIMEOUT: &str = "idle_timeout";
}

/// One accepted connection: holds its place among the open ones until dropped, and fails its
/// reads once the preface is overdue (hyper then closes it).
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    preface: Option<Preface>,
    metrics: Metrics,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct Preface {
    received: usize,
    /// The connection's first byte: it tells TLS and HTTP/1.1 apart from HTTP/2's preface.
    first: Option<u8>,
    /// The last four bytes read, to find the end of an HTTP/1.1 request head.
    last_four: u32,
    deadline: Pin<Box<Sleep>>,
}

impl Preface {
    /// Counts `bytes`; `true` once the connection has spoken enough: the HTTP/2 preface's length
    /// (or a TLS handshake's first bytes), or the whole head of an HTTP/1.1 request.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let Some(&first) = self.first.as_ref().or(bytes.first()) else {
            return false;
        };
        self.first = Some(first);
        self.received += bytes.len();
        if first == TLS_HANDSHAKE || first == PREFACE[0] {
            return self.received >= PREFACE.len();
        }
        bytes.iter().any(|&b| {
            self.last_four = (self.last_four << 8) | u32::from(b);
            self.last_four == HEAD_END
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.connection_ended();
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(preface) = &mut this.preface else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if preface.read(&buf.filled()[before..]) {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if preface.deadline.as_mut().poll(cx).is_ready() => {
                tracing::debug!(
                    "closing a connection that sent no HTTP/2 preface or HTTP/1.1 request head in time"
                );
                this.metrics.connection_closed(reason::PREFACE_TIMEOUT);
                this.preface = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface or HTTP/1.1 request head within server.preface_timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
