//! Connection ageing, for clean deployments and rebalancing. A gRPC client keeps one HTTP/2
//! connection for as long as it can, so a balancer that spreads connections never moves its
//! calls: after `server.max_connection_age` the server sends GOAWAY (tonic's own timer), calls in
//! flight finish and the client reconnects, maybe to a new replica. What tonic does not bound,
//! this module does: a connection is closed once the age's grace is over, and every connection
//! is closed when a shutdown's grace is over, so a stuck peer can hold neither a replica nor a
//! terminating pod.
//!
//! Long streams (`WatchUpgrade`) would be cut by that close mid-body. So each call learns when
//! its connection's streams must end ([`ConnectionEnd`], half-way through the grace, well after
//! the GOAWAY): a watch ends there with UNAVAILABLE and RetryInfo, a whole answer the caller
//! resumes on a new connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::server::TcpConnectInfo;

use crate::deadline::ConnectionEnd;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;

/// Closes every connection [`bounded_connections`] accepted when dropped.
#[derive(Debug)]
pub(crate) struct CloseAll {
    _close: watch::Sender<()>,
}

/// When each open connection's streams must end, by the peer's address (unique among open
/// connections), so that a call can learn its own from the peer address tonic gives it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionEnds(Arc<Mutex<HashMap<SocketAddr, Instant>>>);

impl ConnectionEnds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives `request` its connection's [`ConnectionEnd`], if it has one (used with
    /// `MapRequestLayer`).
    pub(crate) fn mark<B>(&self, mut request: http::Request<B>) -> http::Request<B> {
        let end = peer(&request).and_then(|peer| self.lock().get(&peer).copied());
        if let Some(end) = end {
            request.extensions_mut().insert(ConnectionEnd(end));
        }
        request
    }
}

/// The peer address of the connection a request came on, over TCP or TLS.
pub(crate) fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// Wraps each connection of `incoming` so that it is closed `age + grace` after it was accepted
/// (with an age) and when the returned [`CloseAll`] is dropped, whatever its calls are doing; its
/// calls find when their streams must end in `ends`.
pub(crate) fn bounded_connections<
    T: tonic::transport::server::Connected<ConnectInfo = TcpConnectInfo>,
>(
    incoming: impl Stream<Item = io::Result<T>> + Send + 'static,
    age: Option<Duration>,
    grace: Duration,
    ends: ConnectionEnds,
) -> (
    CloseAll,
    impl Stream<Item = io::Result<Bounded<T>>> + Send + 'static,
) {
    let (close_all, closing) = watch::channel(());
    let incoming = incoming.map(move |accepted| {
        accepted.map(|io| {
            let registered = age.and_then(|age| {
                let peer = io.connect_info().remote_addr()?;
                let end = crate::deadline::later(Instant::now(), streams_end(age, grace));
                ends.lock().insert(peer, end);
                Some(Registered {
                    ends: ends.clone(),
                    peer,
                })
            });
            Bounded::new(io, age_limit(age, grace), closing.clone(), registered)
        })
    });
    (CloseAll { _close: close_all }, incoming)
}

/// The hard limit of a connection under `max_connection_age`: the age, then its grace.
fn age_limit(max_age: Option<Duration>, grace: Duration) -> Option<Duration> {
    max_age.map(|age| age.saturating_add(grace))
}

/// When, after accepting a connection, its streams end: half-way through the grace, late enough
/// that the client has the GOAWAY (sent at the age) and opens the next stream elsewhere, early
/// enough that the last message and the status go out before the connection is closed.
fn streams_end(age: Duration, grace: Duration) -> Duration {
    age.saturating_add(grace / 2)
}

/// A connection's entry in [`ConnectionEnds`], removed when the connection is.
#[derive(Debug)]
struct Registered {
    ends: ConnectionEnds,
    peer: SocketAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ends.lock().remove(&self.peer);
    }
}

/// A connection that fails every read and write once its end has come, which makes hyper drop it
/// (and the socket) even when the peer stopped reading or a call never ends.
pub(crate) struct Bounded<T> {
    io: T,
    /// Completes at the end; `None` once it has.
    end: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    _registered: Option<Registered>,
}

impl<T> Bounded<T> {
    fn new(
        io: T,
        limit: Option<Duration>,
        mut closing: watch::Receiver<()>,
        registered: Option<Registered>,
    ) -> Self {
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
        Self {
            io,
            end: Some(end),
            _registered: registered,
        }
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
