//! The sandbox's HTTP listener: every request is read and recorded, then answered by a queued
//! fault, or verified and answered by the simulated Dds, or both (a fault after acting).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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
use crate::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION;

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
    /// Every upgrade call, from its arrival to its answer (or its dropped connection).
    pub(super) upgrade_calls: Vec<UpgradeCall>,
}

/// One `UpgradeDBInstanceEngineVersion` call as the sandbox saw it, for oracles that check how
/// many upgrades of one instance were ever sent, and whether two were in flight at once.
#[derive(Debug, Clone)]
pub struct UpgradeCall {
    pub db_instance_id: String,
    pub engine_version: String,
    pub received_at: Instant,
    /// When the answer was ready, or the connection went away first; `None` while in flight.
    pub ended_at: Option<Instant>,
    /// Whether the sandbox started the upgrade (whatever the client heard).
    pub started: bool,
    /// The HTTP status of the answer given, or `None` if none was (the connection was severed,
    /// or the client went away first).
    pub answered: Option<u16>,
}

/// Marks an upgrade call's end when its handler finishes or is dropped (the client went away).
struct CallEnd {
    state: Shared,
    index: usize,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        if let Some(call) = lock(&self.state).upgrade_calls.get_mut(self.index) {
            call.ended_at.get_or_insert_with(Instant::now);
        }
    }
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
/// `accepted` counts the connections accepted.
pub(super) fn spawn(
    listener: TcpListener,
    state: Shared,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) -> JoinHandle<()> {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state)
        .into_make_service_with_connect_info::<Connection>();
    let listener = SeverableListener::new(listener, accepted);
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
        let fault = state.faults.take_for(&action);
        (fault, upgrade_call(&mut state, &action, &params))
    };
    let (fault, upgrade) = fault;
    let _end = upgrade.map(|index| CallEnd {
        state: Arc::clone(&state),
        index,
    });
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
    let act = |state: &Shared, incoming: &Incoming<'_>| {
        let answer = act(state, incoming);
        if let Some(index) = upgrade {
            let started = answer.status().is_success();
            if let Some(call) = lock(state).upgrade_calls.get_mut(index) {
                call.started = started;
            }
        }
        answer
    };
    let severs = fault.as_ref().is_some_and(Fault::severs);
    let response = match fault {
        Some(Fault::AfterActing(inner)) => {
            let answer = act(&state, &incoming);
            inject(*inner, &connection).await.unwrap_or(answer)
        }
        Some(fault) => match inject(fault, &connection).await {
            Some(response) => response,
            None => act(&state, &incoming),
        },
        None => act(&state, &incoming),
    };
    if let Some(index) = upgrade.filter(|_| !severs)
        && let Some(call) = lock(&state).upgrade_calls.get_mut(index)
    {
        call.answered = Some(response.status().as_u16());
    }
    response
}

/// Records an upgrade call's arrival; its index in the log, or `None` for other actions.
fn upgrade_call(
    state: &mut SandboxState,
    action: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Option<usize> {
    if action != UPGRADE_DB_INSTANCE_ENGINE_VERSION {
        return None;
    }
    let param = |name: &str| params.get(name).cloned().unwrap_or_default();
    state.upgrade_calls.push(UpgradeCall {
        db_instance_id: param("DBInstanceId"),
        engine_version: param("EngineVersion"),
        received_at: Instant::now(),
        ended_at: None,
        started: false,
        answered: None,
    });
    Some(state.upgrade_calls.len() - 1)
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
