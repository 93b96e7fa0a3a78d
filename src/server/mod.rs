//! The listener stage: builds and runs the tonic server with the engine version service behind
//! its gate, `grpc.health.v1`, server reflection (v1 and v1alpha), JSON over HTTP and request size
//! limits; accepted connections are capped ([`connections`]) and age out ([`ageing`]); callers
//! and credential files reload ([`reload`]). Graceful shutdown: health turns `NOT_SERVING` at
//! once, the gateway serves on for `server.shutdown_delay`, then refuses new connections and
//! calls, in-flight calls finish within `server.shutdown_grace`, and whatever is left is closed.

pub(crate) mod ageing;
pub(crate) mod connections;
pub(crate) mod console;
pub(crate) mod idle;
pub(crate) mod reload;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tracing::instrument::WithSubscriber as _;

use crate::alibaba::AlibabaClient;
use crate::alibaba::credentials::CredentialsProvider;
use crate::api::auth::{Callers, CallersHandle};
use crate::api::gate::{self, Gate};
use crate::api::rollouts::RolloutService;
use crate::api::service::EngineVersionService;
use crate::audit::Audit;
use crate::config::Config;
use crate::deadline;
use crate::limits::InFlight;
use crate::pb::engine_version_service_server::EngineVersionServiceServer;
use crate::pb::rollout_service_server::RolloutServiceServer;
use crate::telemetry::rpc::RpcLayer;
use crate::telemetry::{Metrics, Telemetry};

/// Concurrent calls one connection may have open.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 pings on idle connections, so that a caller that vanished without closing its
/// connection (a killed pod, a dropped NAT entry) frees what it held, such as a watch's place,
/// within a minute instead of at the kernel's TCP timeout.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An unauthenticated gateway on a non-loopback address.
    #[error(
        "server.listen: {local} is not a loopback address and no [[callers]] are configured; \
         an unauthenticated gateway may only listen on loopback (127.0.0.1 or ::1)"
    )]
    Unauthenticated { local: std::net::SocketAddr },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("audit.file: {0}")]
    Audit(#[source] crate::audit::AuditError),
    #[error("cannot listen on {addr} (telemetry.admin_listen): {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    StateStore(String),
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("cannot build the JSON routes: {0}")]
    Routes(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the listener's address: {0}")]
    Io(#[from] std::io::Error),
}

impl ServeError {
    /// The process's exit code for this error (sysexits): a setting to fix is `EX_CONFIG`
    /// (78), something the gateway needs that is not there now is `EX_UNAVAILABLE` (69), a
    /// fault of the gateway itself is `EX_SOFTWARE` (70).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unauthenticated { .. }
            | Self::Tls(_)
            | Self::Audit(_)
            | Self::StateStore(_)
            | Self::Telemetry(_) => crate::exit::EX_CONFIG,
            Self::AdminListen { .. } | Self::Transport(_) | Self::Io(_) => {
                crate::exit::EX_UNAVAILABLE
            }
            Self::Routes(_) | Self::HttpClient(_) | Self::Reflection(_) => crate::exit::EX_SOFTWARE,
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` completes, then drains in-flight calls for
/// at most `server.shutdown_grace`. Telemetry is built from `config` and flushed at the end; log
/// events go to the subscriber in place when this is called. [`serve_with`] takes a pipeline
/// built by the caller.
pub async fn serve(
    config: Config,
    credentials: Arc<dyn CredentialsProvider>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Logs keep going to the caller's subscriber, which filters them itself.
    let ambient = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    let (logs, filter) = if ambient.is::<tracing::subscriber::NoSubscriber>() {
        (crate::telemetry::LogOutput::Off, "off")
    } else {
        (crate::telemetry::LogOutput::Forward(ambient), "trace")
    };
    let telemetry = Telemetry::new(
        &config.telemetry,
        logs,
        tracing_subscriber::EnvFilter::new(filter),
    )?;
    let served = serve_with(config, credentials, listener, shutdown, telemetry.clone()).await;
    telemetry.shutdown().await;
    served
}

/// [`serve`] with the caller's telemetry pipeline, which the caller shuts down (flushes) after.
pub async fn serve_with(
    config: Config,
    credentials: Arc<dyn CredentialsProvider>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    telemetry: Telemetry,
) -> Result<(), ServeError> {
    // Everything the server logs or traces goes to this gateway's pipeline.
    serve_inner(config, credentials, listener, shutdown, telemetry.clone())
        .with_subscriber(telemetry.dispatch().clone())
        .await
}

async fn serve_inner(
    config: Config,
    credentials: Arc<dyn CredentialsProvider>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    telemetry: Telemetry,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    check_listen(local, &config)?;
    let callers = CallersHandle::new(Callers::new(&config.callers, None));
    let in_flight = InFlight::new(
        config.server.max_in_flight,
        config.server.max_in_flight_per_caller,
    );
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    let audit = open_audit(&config)?.counting_failures(telemetry.metrics().audit_write_failures());
    let _reloader = AbortOnDrop(crate::server::reload::spawn(
        config.file.clone(),
        config.server.callers_file.clone(),
        config.server.reload_interval,
        callers.clone(),
        Arc::clone(&credentials),
        telemetry.metrics().clone(),
        audit.clone(),
    ));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let _admin = spawn_admin(&config, &telemetry, async {
        let _ = admin_stopped.await;
    })
    .await?;

    let state = crate::state::State::open(&config)
        .await
        .map_err(ServeError::StateStore)?;
    // Every audit event (upgrades, rollout actions) also goes to the recent-activity list.
    let activity = crate::state::activity::Activity::of(&state);
    let audit = audit.with_recent(Arc::new(activity.clone()));
    // Health and reflection stay open (probes carry no token); the engine service is gated.
    let (engine_versions, upgrades, shared_reads) = gated_service(
        &config,
        &state,
        credentials,
        audit.clone(),
        activity,
        callers.clone(),
        in_flight.clone(),
        telemetry.metrics(),
    )?;
    // Rollouts call Alibaba through the same client (one account budget, one set of metrics)
    // and follow instances through the same polls as WatchUpgrade.
    let (rollouts, _supervisor) = gated_rollouts(
        &config,
        &telemetry,
        &state,
        shared_reads,
        audit,
        callers,
        in_flight,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EngineVersionServiceServer<EngineVersionService>>()
        .await;
    health
        .set_serving::<RolloutServiceServer<RolloutService>>()
        .await;
    let store_health = AbortOnDrop(tokio::spawn(
        report_store_health(
            state.clone(),
            health.clone(),
            telemetry.metrics().clone(),
            config.state.readiness_follows_store,
        )
        .with_current_subscriber(),
    ));
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // JSON over HTTP, routed by the proto's `google.api.http` options, into the same calls.
    let json = crate::api::json::JsonLayer::new(telemetry.clone(), config.server.max_request_bytes)
        .map_err(ServeError::Routes)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ends = crate::server::ageing::ConnectionEnds::default();
    let idle =
        crate::server::idle::Idle::new(config.server.idle_timeout, telemetry.metrics().clone());
    let (close_all, incoming) = crate::server::ageing::bounded_connections(
        idle.track(incoming(listener, &config, &telemetry)),
        config.server.max_connection_age,
        config.server.max_connection_age_grace,
        ends.clone(),
    );
    let console = crate::server::console::ConsoleLayer::new(config.server.console == Some(true));
    let builder = listener_builder(&config.server, tls)?;
    let server = builder
        // A connection is busy from a request's arrival to its answer's end (see `idle`).
        .layer(idle)
        // The console's files are answered before any RPC layer sees the request.
        .layer(console.clone())
        // Outermost: the call's span, metrics and access line cover everything below.
        .layer(RpcLayer::new(telemetry.clone()))
        // Before the layers below, which then see a JSON call as the gRPC call it becomes.
        .layer(json.clone())
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_max_header_list_size(crate::api::MAX_HEADER_LIST_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Read the caller's deadline before tonic strips `grpc-timeout` from the metadata.
        .layer(tower::util::MapRequestLayer::new(
            deadline::record::<tonic::body::Body>,
        ))
        // Long streams end before their connection ages out (see `ageing`).
        .layer(tower::util::MapRequestLayer::new(
            move |request: http::Request<tonic::body::Body>| ends.mark(request),
        ))
        // Every error carries ErrorInfo, also those tonic answers itself.
        .layer(tower::util::MapResponseLayer::new(
            gate::error_info::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(engine_versions)
        .add_service(rollouts)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tracing::info!(routes = %json.describe(), "JSON over HTTP on the same port");
    if console.is_enabled() {
        tracing::info!(url = %format!("http://{local}{}", crate::server::console::PREFIX), "web console on (server.console)");
    }
    tracing::info!(%local, version = env!("CARGO_PKG_VERSION"), "dds-gateway listening");

    tokio::select! {
        result = &mut server => return result.map_err(ServeError::from),
        () = shutdown => {}
    }
    drain(
        server,
        &config.server,
        Draining {
            store_health,
            health,
            stop: stop_tx,
            admin_stop,
            close_all,
            upgrades,
        },
    )
    .await
}

/// What server reflection serves: the API, health, and `google/rpc/error_details.proto`, which
/// no service names but every error's details use (`ErrorInfo`, `BadRequest`, `RetryInfo`), so
/// that reflection clients such as grpcurl can decode them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::pb::GOOGLE_RPC_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The engine version service behind the gate: callers, rates (shared through Redis when the
/// state is there), the in-flight limit and the request deadline.
#[expect(
    clippy::too_many_arguments,
    reason = "the server's shared parts, each built once by serve_inner and handed over here"
)]
fn gated_service(
    config: &Config,
    state: &crate::state::State,
    credentials: Arc<dyn CredentialsProvider>,
    audit: Audit,
    activity: crate::state::activity::Activity,
    callers: CallersHandle,
    in_flight: InFlight,
    metrics: &Metrics,
) -> Result<
    (
        Gate<EngineVersionServiceServer<EngineVersionService>>,
        Upgrades,
        SharedReads,
    ),
    ServeError,
> {
    let quota = crate::alibaba::quota::Quota::new(
        crate::state::quota::store_for(state),
        config.alibaba.quota.into(),
        config.state.lease,
    );
    let client = Arc::new(
        AlibabaClient::new(&config.alibaba, credentials)?
            .with_metrics(metrics.clone())
            .with_quota(Arc::new(quota)),
    );
    let service = EngineVersionService::from_config(config, client, Some(Arc::clone(&state.store)))
        .with_audit(audit)
        .with_activity(activity)
        .with_rollouts(Arc::clone(&state.rollouts));
    let upgrades = service.open_upgrades();
    let shared_reads = service.shared_reads();
    let engine_versions = EngineVersionServiceServer::new(service)
        // Larger messages are refused with OUT_OF_RANGE before they are decoded.
        .max_decoding_message_size(config.server.max_request_bytes);
    let rates = match &state.redis {
        Some(redis) => crate::limits::Rates::shared(Arc::clone(redis) as _)
            .counting_fallbacks(metrics.rate_limit_fallbacks()),
        None => crate::limits::Rates::local(),
    };
    let gate = Gate::new(
        engine_versions,
        callers,
        in_flight,
        config.server.request_timeout,
    )
    .with_rates(rates);
    Ok((gate, upgrades, shared_reads))
}

/// The engine service's Alibaba facade (with the account budget) and its shared polls.
type SharedReads = (crate::alibaba::Alibaba, crate::upgrade::poller::Poller);

/// The upgrade tasks still running, and the audit trail their abandonment is recorded in.
type Upgrades = (crate::upgrade::upgrader::OpenUpgrades, Audit);

/// The rollout service behind the same gate, and the task that drives rollouts whose lease is
/// free (aborted when dropped).
fn gated_rollouts(
    config: &Config,
    telemetry: &Telemetry,
    state: &crate::state::State,
    (alibaba, poller): SharedReads,
    audit: Audit,
    callers: CallersHandle,
    in_flight: InFlight,
) -> (Gate<RolloutServiceServer<RolloutService>>, AbortOnDrop) {
    let upgrader = crate::upgrade::upgrader::Upgrader::new(
        alibaba.clone(),
        crate::upgrade::upgrader::UpgradeSettings {
            preflight: config.alibaba.preflight,
            settle_window: config.idempotency.settle_window,
        },
        crate::upgrade::idempotency::Idempotency::new(Arc::clone(&state.store)),
        audit.clone(),
    );
    let rollouts = crate::rollout::Rollouts::new(
        Arc::clone(&state.rollouts),
        alibaba,
        poller,
        upgrader,
        crate::upgrade::validation::Validator::new(config),
        audit,
        crate::rollout::RolloutSettings::from_config(config),
    )
    .with_metrics(telemetry.metrics().clone());
    let supervisor = AbortOnDrop(rollouts.spawn_supervisor());
    let service =
        RolloutServiceServer::new(RolloutService::new(rollouts, config.watch.max_duration))
            .max_decoding_message_size(config.server.max_request_bytes);
    let rates = match &state.redis {
        Some(redis) => crate::limits::Rates::shared(Arc::clone(redis) as _),
        None => crate::limits::Rates::local(),
    };
    let gated =
        Gate::new(service, callers, in_flight, config.server.request_timeout).with_rates(rates);
    (gated, supervisor)
}

/// The listener's settings: connection age, and TLS when configured.
fn listener_builder(
    server: &crate::config::ServerConfig,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<Server, ServeError> {
    let builder = with_connection_age(Server::builder(), server);
    let Some(tls) = tls else {
        return Ok(builder);
    };
    let builder = builder
        .tls_config(tls)
        .map_err(crate::tls::TlsError::Settings)?;
    tracing::info!(
        client_certificates = server.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "TLS on"
    );
    Ok(builder)
}

/// An unauthenticated gateway listens on loopback only.
fn check_listen(local: std::net::SocketAddr, config: &Config) -> Result<(), ServeError> {
    if config.callers.is_empty() {
        if !local.ip().is_loopback() {
            return Err(ServeError::Unauthenticated { local });
        }
        tracing::warn!(%local, "no [[callers]] configured: serving without caller authentication on loopback only");
    } else {
        tracing::info!(callers = config.callers.len(), "caller authentication on");
    }
    Ok(())
}

/// `audit.file`, or the audit log target alone.
fn open_audit(config: &Config) -> Result<Audit, ServeError> {
    match &config.audit.file {
        Some(path) => Audit::open(path).map_err(ServeError::Audit),
        None => Ok(Audit::log_only()),
    }
}

/// `telemetry.admin_listen`: the Prometheus endpoint, until `stopped`.
async fn spawn_admin(
    config: &Config,
    telemetry: &Telemetry,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<AbortOnDrop>, ServeError> {
    let Some(addr) = config.telemetry.admin_listen else {
        return Ok(None);
    };
    let admin = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::AdminListen { addr, source })?;
    let task = tokio::spawn(
        crate::telemetry::admin::serve(telemetry.clone(), admin, stopped).with_current_subscriber(),
    );
    Ok(Some(AbortOnDrop(tokio::spawn(async move {
        if let Ok(Err(err)) = task.await {
            tracing::error!(error = %err, "admin endpoint failed");
        }
    }))))
}

/// What shutting down stops, in order.
struct Draining {
    store_health: AbortOnDrop,
    health: tonic_health::server::HealthReporter,
    stop: tokio::sync::oneshot::Sender<()>,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    close_all: crate::server::ageing::CloseAll,
    upgrades: Upgrades,
}

/// Graceful shutdown: NOT_SERVING at once, serving on for `server.shutdown_delay`, then no new
/// calls, in-flight ones and upgrade tasks (also those whose caller has gone) finishing within
/// `server.shutdown_grace`, and whatever is left closed; upgrades still open then are audited
/// `abandoned`.
async fn drain<F>(
    mut server: std::pin::Pin<&mut F>,
    config: &crate::config::ServerConfig,
    draining: Draining,
) -> Result<(), ServeError>
where
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    let Draining {
        store_health,
        health,
        stop,
        admin_stop,
        close_all,
        upgrades: (upgrades, audit),
    } = draining;
    // The store's health reporter stops first, so that it cannot turn readiness back on.
    drop(store_health);
    // Readiness first, while the listener still answers: balancers and health-checking clients
    // see NOT_SERVING and move away before connections are refused.
    health
        .set_not_serving::<EngineVersionServiceServer<EngineVersionService>>()
        .await;
    health
        .set_not_serving::<RolloutServiceServer<RolloutService>>()
        .await;
    let delay = config.shutdown_delay;
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "shutting down: health NOT_SERVING, still serving for the delay"
        );
        tokio::select! {
            result = server.as_mut() => return result.map_err(ServeError::from),
            () = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: refusing new calls, finishing in-flight ones");
    let _ = stop.send(());
    let _ = admin_stop.send(());
    let grace_over = tokio::time::Instant::now() + config.shutdown_grace;
    let result = match tokio::time::timeout_at(grace_over, server.as_mut()).await {
        Ok(result) => result.map_err(ServeError::from),
        Err(_) => {
            tracing::warn!(
                "grace period over with calls still in flight; closing their connections"
            );
            Ok(())
        }
    };
    drop(close_all);
    // Upgrades whose caller has gone still run: their outcome is audited and their key settled
    // if they end within the grace.
    if !upgrades.is_empty() {
        tracing::info!(
            open = upgrades.len(),
            "shutting down: waiting for upgrades still under way"
        );
    }
    let abandoned = upgrades.finish(grace_over, &audit).await;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "grace period over with upgrades still open; their outcome is unknown"
        );
    }
    result
}

/// `server.max_connection_age`: tonic sends GOAWAY after the age and lets calls in flight finish.
/// Its own grace timer is not used: with one set, tonic skips the GOAWAY and only closes the
/// connection at age + grace. The grace is enforced by [`crate::server::ageing::Bounded`] instead.
fn with_connection_age(builder: Server, server: &crate::config::ServerConfig) -> Server {
    match server.max_connection_age {
        Some(age) => builder.max_connection_age(age),
        None => builder,
    }
}

/// Watches the state store's reachability (every second): the `dds_gateway_state_store_up`
/// gauge, a log line on each change and, only with `state.readiness_follows_store`, the engine
/// service's health (`NOT_SERVING` while the store cannot be reached). By default health stays
/// `SERVING`: every replica shares the store, so following it would take them all out of the
/// Service at once, reads and validate-only calls included, while only upgrades need the store
/// (they are refused with `STATE_STORE_UNAVAILABLE`). The whole server's health ("") never
/// follows it, so liveness probes do not restart a replica for it.
async fn report_store_health(
    state: crate::state::State,
    health: tonic_health::server::HealthReporter,
    metrics: crate::telemetry::metrics::Metrics,
    readiness_follows_store: bool,
) {
    metrics.state_store_reachable(true);
    if state.redis.is_none() {
        return;
    }
    let mut reachable = true;
    let mut tick = tokio::time::interval(crate::state::HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = state.reachable().await;
        metrics.state_store_reachable(now);
        if now == reachable {
            continue;
        }
        reachable = now;
        match (reachable, readiness_follows_store) {
            (true, true) => {
                tracing::info!("the state store can be reached again: health SERVING");
                health
                    .set_serving::<EngineVersionServiceServer<EngineVersionService>>()
                    .await;
            }
            (false, true) => {
                tracing::warn!(
                    "the state store cannot be reached: upgrades are refused, health NOT_SERVING for the engine service (state.readiness_follows_store)"
                );
                health
                    .set_not_serving::<EngineVersionServiceServer<EngineVersionService>>()
                    .await;
            }
            (true, false) => {
                tracing::info!("the state store can be reached again: serving upgrades")
            }
            (false, false) => tracing::warn!(
                "the state store cannot be reached: upgrades are refused until it is back; reads and validate-only calls go on"
            ),
        }
    }
}

/// The listener's connections, capped and held to the preface deadline.
fn incoming(
    listener: TcpListener,
    config: &Config,
    telemetry: &Telemetry,
) -> crate::server::connections::Incoming {
    crate::server::connections::Incoming::new(
        listener,
        config.server.max_connections,
        config.server.preface_timeout,
        telemetry.metrics().clone(),
    )
}

/// Stops a background task when the server stops.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on SIGINT or SIGTERM (SIGINT only where SIGTERM does not exist).
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
