//! The gate in front of the engine version service, before any message is decoded:
//! authenticate the caller, take from its rate, and take a place among the calls in flight
//! within the caller's share of them (or shed the call at once). The admitted caller rides in the request's extensions to the service,
//! which checks its policy; its message must arrive by the call's deadline, so that a caller who
//! stalls cannot keep its place. Also: the layer that gives tonic's own error answers an
//! `ErrorInfo`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::api::auth::{Caller, CallersHandle};
use crate::api::error::Error;
use crate::deadline;
use crate::limits::{Full, InFlight, Place, Rates};

/// The caller a call was admitted for, as a request extension (absent on an open gateway).
#[derive(Debug, Clone)]
pub(crate) struct Admitted(pub Arc<Caller>);

/// Wraps one gRPC service with the gate.
#[derive(Debug, Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    callers: CallersHandle,
    in_flight: InFlight,
    /// `server.request_timeout`: how long a message may take to arrive without a caller deadline.
    request_timeout: Duration,
    /// Where callers' rates are kept.
    rates: Rates,
}

impl<S> Gate<S> {
    pub(crate) fn new(
        inner: S,
        callers: CallersHandle,
        in_flight: InFlight,
        request_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            callers,
            in_flight,
            request_timeout,
            rates: Rates::local(),
        }
    }

    /// Takes callers' calls from `rates` (shared between replicas) instead of this process's
    /// buckets only.
    pub(crate) fn with_rates(mut self, rates: Rates) -> Self {
        self.rates = rates;
        self
    }

    /// The caller (if the gateway has any configured) and a place among the calls in flight,
    /// or the refusal, logged and ready to send.
    fn admit<B>(
        &self,
        request: &http::Request<B>,
    ) -> Result<(Option<Arc<Caller>>, Place), tonic::Status> {
        // The method, never the path as sent: a path is whatever an unauthenticated caller wrote.
        let method = crate::telemetry::rpc::method_label(request.uri().path());
        let refuse = |err: Error, caller: &str| {
            tracing::warn!(method, caller, refused = %err, "call refused at the gate");
            tonic::Status::from(err)
        };
        let callers = self.callers.current();
        let caller = if callers.is_open() {
            None
        } else {
            let peer_certs = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs);
            let leaf = peer_certs.as_ref().and_then(|certs| certs.first());
            let caller = callers
                .authenticate(request.headers(), leaf.map(|c| c.as_ref()))
                .map_err(|e| refuse(e.into(), ""))?;
            Some(caller)
        };
        let name = caller.as_deref().map(Caller::name);
        let place = self.in_flight.try_enter(name).map_err(|full| {
            let err = Error::Overloaded;
            // Its own share full (server.max_in_flight_per_caller), or every place taken.
            let share_full = full == Full::Caller;
            tracing::warn!(method, caller = name.unwrap_or_default(), share_full, refused = %err, "call refused at the gate");
            tonic::Status::from(err)
        })?;
        Ok((caller, place))
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let (caller, permit) = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let rated = caller.clone();
        let rates = self.rates.clone();
        let method = crate::telemetry::rpc::method_label(request.uri().path());
        if let Some(caller) = caller {
            crate::telemetry::rpc::note_caller(request.extensions(), caller.name());
            request.extensions_mut().insert(Admitted(caller));
        }
        let by = deadline::effective(request.extensions().get(), self.request_timeout);
        let request = request.map(|body| Body::new(BodyDeadline::new(body, by)));
        // The clone that was made ready is the one called; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // The caller's rate may live in the shared store: taken here, where waiting is allowed.
            if let Some(caller) = rated
                && let Err(retry_after) = caller.take_call_from(&rates).await
            {
                let err = Error::RateLimited {
                    caller: caller.name().to_string(),
                    retry_after,
                };
                tracing::warn!(method, caller = caller.name(), refused = %err, "call refused at the gate");
                return Ok(tonic::Status::from(err).into_http());
            }
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}

/// A request body that fails with `REQUEST_INCOMPLETE` if it has not ended by a deadline. tonic
/// reads the whole message before the handler starts, so this bounds only the wait for the
/// message, never the handler's work.
struct BodyDeadline {
    body: Body,
    expiry: Pin<Box<Sleep>>,
}

impl BodyDeadline {
    fn new(body: Body, deadline: Instant) -> Self {
        Self {
            body,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.expiry.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Error::RequestIncomplete.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Adds `ErrorInfo` to an error answered in the response headers (a "trailers-only" answer)
/// that has none: tonic's own refusals of oversized or undecodable messages, unknown methods.
pub(crate) fn error_info<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let failed = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() != b"0");
    if !failed || headers.contains_key("grpc-status-details-bin") {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return response;
    };
    let status = crate::upgrade::details::with_error_info(status);
    let headers = response.headers_mut();
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    if status.add_header(headers).is_err() {
        tracing::warn!("could not add ErrorInfo to a transport error");
    }
    response
}
