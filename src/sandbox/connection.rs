//! Connections the sandbox can cut on purpose (`Fault::Drop`): each accepted socket carries a
//! flag; once a handler sets it, the next read or write fails and the socket closes with a reset.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub(super) struct SeverableListener {
    listener: TcpListener,
    /// Connections accepted so far, for tests of the client's connection reuse.
    accepted: Arc<AtomicUsize>,
}

impl SeverableListener {
    pub(super) fn new(listener: TcpListener, accepted: Arc<AtomicUsize>) -> Self {
        Self { listener, accepted }
    }
}

impl axum::serve::Listener for SeverableListener {
    type Io = Severable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    let severed = Arc::new(AtomicBool::new(false));
                    return (Severable { stream, severed }, addr);
                }
                // E.g. out of file descriptors: wait a little rather than spin.
                Err(err) => {
                    tracing::warn!(error = %err, "sandbox cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A handler's handle on its connection.
#[derive(Clone)]
pub(super) struct Connection(Arc<AtomicBool>);

impl Connection {
    pub(super) fn sever(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SeverableListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, SeverableListener>) -> Self {
        Self(Arc::clone(&stream.io().severed))
    }
}

pub(super) struct Severable {
    stream: TcpStream,
    severed: Arc<AtomicBool>,
}

impl Severable {
    fn cut(&self) -> Option<io::Error> {
        if !self.severed.load(Ordering::SeqCst) {
            return None;
        }
        // Closing with a zero linger sends a reset rather than an orderly end.
        let _ = self.stream.set_zero_linger();
        Some(io::Error::from(io::ErrorKind::ConnectionReset))
    }
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.cut() {
            Some(err) => Poll::Ready(Err(err)),
            None => Pin::new(&mut self.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.cut() {
            Some(err) => Poll::Ready(Err(err)),
            None => Pin::new(&mut self.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.cut() {
            Some(err) => Poll::Ready(Err(err)),
            None => Pin::new(&mut self.stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.cut() {
            Some(err) => Poll::Ready(Err(err)),
            None => Pin::new(&mut self.stream).poll_shutdown(cx),
        }
    }
}
