//! Idle connections: one with no request in flight for `server.idle_timeout` is closed, so that
//! clients that connect and then say nothing (an HTTP/2 preface and SETTINGS, then silence; a
//! kept-alive HTTP/1.1 connection) cannot hold `server.max_connections` for ever. HTTP/2 pings do
//! not help here: a silent peer still answers them.
//!
//! A request is in flight from when it reaches the server until its answer's body is done (a
//! watch stays in flight for as long as it streams). The layer finds the connection of a request
//! by its peer address, which is unique among open connections.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt as _};
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::server::connections::reason;
use crate::telemetry::Metrics;

/// The open connections' activity, by peer address, and the timeout.
#[derive(Debug, Clone)]
pub(crate) struct Idle {
    connections: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
    timeout: Duration,
    metrics: Metrics,
}

impl Idle {
    pub(crate) fn new(timeout: Duration, metrics: Metrics) -> Self {
        Self {
            connections: Arc::default(),
            timeout,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wraps each connection of `incoming` so that it is closed once idle for the timeout.
    pub(crate) fn track<T: Connected<ConnectInfo = TcpConnectInfo>>(
        &self,
        incoming: impl Stream<Item = io::Result<T>> + Send + 'static,
    ) -> impl Stream<Item = io::Result<Tracked<T>>> + Send + 'static {
        let idle = self.clone();
        incoming.map(move |accepted| {
            accepted.map(|io| {
                let activity = Arc::new(Activity::default());
                let peer = io.connect_info().remote_addr();
                if let Some(peer) = peer {
                    idle.lock().insert(peer, Arc::clone(&activity));
                }
                let deadline = Instant::now() + idle.timeout;
                Tracked {
                    io,
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    activity,
                    peer,
                    idle: idle.clone(),
                }
            })
        })
    }

    /// The request's connection is busy until the returned guard is dropped.
    fn busy<B>(&self, request: &http::Request<B>) -> Option<Busy> {
        let peer = crate::server::ageing::peer(request)?;
        let activity = Arc::clone(self.lock().get(&peer)?);
        activity.state().in_flight += 1;
        Some(Busy(activity))
    }
}

/// One connection's requests in flight, since when it has had none, and the task reading it.
#[derive(Debug)]
struct Activity(Mutex<State>);

#[derive(Debug)]
struct State {
    in_flight: usize,
    idle_since: Instant,
    reader: Option<Waker>,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Mutex::new(State {
            in_flight: 0,
            idle_since: Instant::now(),
            reader: None,
        }))
    }
}

impl Activity {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in flight; when the last one ends, the connection's idle time starts and its
/// reader is woken to keep time.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A connection that fails its reads once it has been idle for the timeout (hyper then closes
/// it).
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    io: T,
    sleep: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    peer: Option<SocketAddr>,
    idle: Idle,
}

impl<T> Tracked<T> {
    /// An error once idle for the timeout; otherwise keeps time until then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = {
            let mut state = self.activity.state();
            if !state
                .reader
                .as_ref()
                .is_some_and(|reader| reader.will_wake(cx.waker()))
            {
                state.reader = Some(cx.waker().clone());
            }
            if state.in_flight > 0 {
                return Ok(());
            }
            state.idle_since + self.idle.timeout
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        tracing::debug!(timeout = ?self.idle.timeout, "closing a connection idle for server.idle_timeout");
        self.idle.metrics.connection_closed(reason::IDLE_TIMEOUT);
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed: no request for server.idle_timeout",
        ))
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            let mut connections = self.idle.lock();
            if connections
                .get(&peer)
                .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
            {
                connections.remove(&peer);
            }
        }
    }
}

impl<T: Connected> Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S> tower::Layer<S> for Idle {
    type Service = IdleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleService {
            inner,
            idle: self.clone(),
        }
    }
}

/// Marks each request's connection busy until its answer's body is done.
#[derive(Debug, Clone)]
pub(crate) struct IdleService<S> {
    inner: S,
    idle: Idle,
}

impl<S, B> tower::Service<http::Request<B>> for IdleService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let busy = self.idle.busy(&request);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match busy {
                Some(busy) => response.map(|body| Body::new(Held { body, _busy: busy })),
                None => response,
            })
        })
    }
}

/// An answer's body, holding its connection busy until it is dropped.
struct Held {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
