//! The sandbox's HTTP listener: every request is read and recorded, then answered by a queued
//! fault, or verified and answered by the simulated Dds, or both (a fault after acting).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::connection::{Connection, SeverableListener};
use super::dds::Dds;
use super::faults::{Fault, FaultQueue, inject};
use super::request::{self, Incoming, Received};
use super::signature::Verifier;

/// Everything the sandbox keeps between requests.
pub(super) struct SandboxState {
    pub(super) verifier: Verifier,
    pub(super) dds: Dds,
    pub(super) faults: FaultQueue,
    /// Every request received, in order.
    pub(super) received: Vec<Received>,
    /// Requests being answered now, and the most there ever were at once.
    pub(super) in_flight: usize,
    pub(super) peak_in_flight: usize,
}

/// Counts a request as in flight from its arrival until its answer is ready (or it is dropped).
struct InFlight(Shared);

impl InFlight {
    fn enter(state: &Shared) -> Self {
        let mut locked = lock(state);
        locked.in_flight += 1;
        locked.peak_in_flight = locked.peak_in_flight.max(locked.in_flight);
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

pub(super) type Shared = Arc<Mutex<SandboxState>>;

pub(super) fn lock(state: &Shared) -> MutexGuard<'_, SandboxState> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves every request on `listener` from `state` until the task is aborted.
pub(super) fn spawn(listener: TcpListener, state: Shared) -> JoinHandle<()> {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state)
        .into_make_service_with_connect_info::<Connection>();
    let listener = SeverableListener::new(listener);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "sandbox stopped");
        }
    })
}

async fn handle(
    State(state): State<Shared>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let params = match request::collect_params(query.as_deref(), &headers, &body) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    let version = request::signature_version(&headers);
    let (action, api_version) = request::action_and_version(version, &params, &headers);
    let fault = {
        let mut state = lock(&state);
        state.received.push(Received {
            method: method.to_string(),
            signature_version: version,
            action: action.clone(),
            params: params.clone(),
            raw_query: query.clone(),
            headers: request::header_map(&headers),
            body: body.clone(),
            at: tokio::time::Instant::now(),
        });
        state.faults.take_for(&action)
    };
    let incoming = Incoming {
        version,
        method: method.as_str(),
        path: uri.path(),
        query: query.as_deref(),
        headers: &headers,
        body: &body,
        params: &params,
        action: &action,
        api_version: &api_version,
    };
    match fault {
        Some(Fault::AfterActing(inner)) => {
            let answer = act(&state, &incoming);
            inject(*inner, &connection).await.unwrap_or(answer)
        }
        Some(fault) => match inject(fault, &connection).await {
            Some(response) => response,
            None => act(&state, &incoming),
        },
        None => act(&state, &incoming),
    }
}

/// Verifies the signature (V2 or V3) and answers the request, changing the simulated instances.
fn act(state: &Shared, incoming: &Incoming<'_>) -> Response {
    let mut state = lock(state);
    if let Err(response) = state.verifier.verify(incoming) {
        return *response;
    }
    state
        .dds
        .answer(incoming.action, incoming.api_version, incoming.params)
}
