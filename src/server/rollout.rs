//! Clean rollouts and rebalancing. A gRPC client keeps one HTTP/2 connection for as long as it
//! can, so a balancer that spreads connections never moves its calls: after
//! `server.max_connection_age` the server sends GOAWAY (tonic's own timer), calls in flight finish
//! and the client reconnects, maybe to a new replica. What tonic does not bound, this module does:
//! a connection is closed once the age's grace is over, and every connection is closed when a
//! shutdown's grace is over, so a stuck peer can hold neither a replica nor a terminating pod.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;

/// Closes every connection [`bounded_connections`] accepted when dropped.
#[derive(Debug)]
pub struct CloseAll {
    _close: watch::Sender<()>,
}

/// Wraps each connection of `incoming` so that it is closed `limit` after it was accepted (if
/// any) and when the returned [`CloseAll`] is dropped, whatever its calls are doing.
pub fn bounded_connections<T>(
    incoming: impl Stream<Item = io::Result<T>> + Send + 'static,
    limit: Option<Duration>,
) -> (
    CloseAll,
    impl Stream<Item = io::Result<Bounded<T>>> + Send + 'static,
) {
    let (close_all, closing) = watch::channel(());
    let incoming =
        incoming.map(move |accepted| accepted.map(|io| Bounded::new(io, limit, closing.clone())));
    (CloseAll { _close: close_all }, incoming)
}

/// The hard limit of a connection under `max_connection_age`: the age, then its grace.
pub fn age_limit(max_age: Option<Duration>, grace: Duration) -> Option<Duration> {
    max_age.map(|age| age.saturating_add(grace))
}

/// A connection that fails every read and write once its end has come, which makes hyper drop it
/// (and the socket) even when the peer stopped reading or a call never ends.
pub struct Bounded<T> {
    io: T,
    /// Completes at the end; `None` once it has.
    end: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl<T> Bounded<T> {
    fn new(io: T, limit: Option<Duration>, mut closing: watch::Receiver<()>) -> Self {
        let end = Box::pin(async move {
            let aged = async {
                match limit {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = aged => {}
                // Nothing is ever sent: this completes when the sender is dropped.
                _ = closing.changed() => {}
            }
        });
        Self { io, end: Some(end) }
    }

    /// An error once the end has come; registers the task to be woken at the end otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(end) = &mut self.end {
            if end.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.end = None;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed: past server.max_connection_age and its grace, or the shutdown grace",
        ))
    }
}

impl<T> std::fmt::Debug for Bounded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("ended", &self.end.is_none())
            .finish_non_exhaustive()
    }
}

impl<T: Connected> Connected for Bounded<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Bounded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Bounded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
