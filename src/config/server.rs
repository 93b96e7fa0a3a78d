//! `[server]`: the listener, its limits and TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{ConfigError, DAY, HOUR, MINUTE, duration, invalid, share};

/// Where the gateway listens when nothing says otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request message accepted; larger ones are refused before decoding.
    pub max_request_bytes: usize,
    /// Upper bound on one RPC, whatever deadline the caller sets.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Calls served at once; more are shed with UNAVAILABLE at once, never queued.
    pub max_in_flight: usize,
    /// Calls one caller may have in flight at once (default: half of `max_in_flight`, at least 1).
    pub max_in_flight_per_caller: usize,
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface (or its first HTTP/1.1
    /// request's head) before it is closed.
    pub preface_timeout: Duration,
    /// How long a connection may stay open with no request in flight before it is closed, so
    /// that idle connections (HTTP/2 or HTTP/1.1 keep-alive) cannot hold `max_connections`.
    pub idle_timeout: Duration,
    /// TLS for the listener: certificate chain and key (PEM); mTLS when `client_ca` is set.
    pub tls: Option<TlsConfig>,
    /// How often the config file is checked for changed `[[callers]]`.
    pub reload_interval: Duration,
    /// A second file of `[[callers]]` (e.g. a mounted Kubernetes Secret), added to the config
    /// file's callers and reloaded like them.
    pub callers_file: Option<PathBuf>,
    /// After this long a connection is asked to go away (HTTP/2 GOAWAY): its calls in flight
    /// finish and the client reconnects, so clients spread over new replicas. `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls in flight may go on after `max_connection_age`; then the connection is
    /// closed.
    pub max_connection_age_grace: Duration,
    /// At shutdown, how long the gateway keeps serving (health already `NOT_SERVING`) before it
    /// stops accepting connections, so that balancers and health-checking clients move away.
    pub shutdown_delay: Duration,
    /// `server.console`: the web console under `/ui/` on the main port. `None` when not set:
    /// off, except with `--sandbox`, which turns it on.
    pub console: Option<bool>,
}

/// `server.tls_cert`, `server.tls_key`, `server.client_ca`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA identify callers by subject CN or SAN.
    pub client_ca: Option<PathBuf>,
}

/// `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    max_request_bytes: Option<usize>,
    request_timeout: Option<String>,
    shutdown_grace: Option<String>,
    max_in_flight: Option<usize>,
    max_in_flight_per_caller: Option<usize>,
    max_connections: Option<usize>,
    preface_timeout: Option<String>,
    idle_timeout: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    client_ca: Option<String>,
    reload_interval: Option<String>,
    callers_file: Option<String>,
    max_connection_age: Option<String>,
    max_connection_age_grace: Option<String>,
    shutdown_delay: Option<String>,
    console: Option<bool>,
}

pub(super) fn check(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("expected an IP address and port such as {DEFAULT_LISTEN}, got {listen:?}"),
        )
    })?;
    let max_request_bytes = raw.max_request_bytes.unwrap_or(64 * 1024);
    if !(1024..=4 * 1024 * 1024).contains(&max_request_bytes) {
        return Err(invalid(
            "server.max_request_bytes",
            "expected a size between 1024 and 4194304 bytes",
        ));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(64);
    if !(1..=100_000).contains(&max_in_flight) {
        return Err(invalid(
            "server.max_in_flight",
            "expected a number of calls between 1 and 100000",
        ));
    }
    let max_in_flight_per_caller = share(
        "server.max_in_flight_per_caller",
        raw.max_in_flight_per_caller,
        max_in_flight,
        "server.max_in_flight",
    )?;
    let max_connections = raw.max_connections.unwrap_or(1024);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(invalid(
            "server.max_connections",
            "expected a number of connections between 1 and 1000000",
        ));
    }
    // A grace is the grace of an age: alone it would silently do nothing.
    let grace_without_age =
        raw.max_connection_age_grace.is_some() && raw.max_connection_age.is_none();
    let config = ServerConfig {
        listen,
        max_request_bytes,
        request_timeout: duration("server.request_timeout", raw.request_timeout, 60, HOUR)?,
        shutdown_grace: duration("server.shutdown_grace", raw.shutdown_grace, 30, HOUR)?,
        max_in_flight,
        max_in_flight_per_caller,
        max_connections,
        preface_timeout: duration(
            "server.preface_timeout",
            raw.preface_timeout,
            10,
            5 * MINUTE,
        )?,
        idle_timeout: duration("server.idle_timeout", raw.idle_timeout, 60, DAY)?,
        tls: tls(raw.tls_cert, raw.tls_key, raw.client_ca)?,
        reload_interval: duration("server.reload_interval", raw.reload_interval, 5, DAY)?,
        callers_file: raw
            .callers_file
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from),
        max_connection_age: raw
            .max_connection_age
            .map(|age| duration("server.max_connection_age", Some(age), 0, DAY))
            .transpose()?,
        max_connection_age_grace: duration(
            "server.max_connection_age_grace",
            raw.max_connection_age_grace,
            60,
            HOUR,
        )?,
        shutdown_delay: match raw.shutdown_delay {
            // Zero is the default, and a valid choice: stop accepting at once.
            Some(delay) if humantime::parse_duration(delay.trim()).is_ok_and(|d| d.is_zero()) => {
                Duration::ZERO
            }
            delay => duration("server.shutdown_delay", delay, 0, HOUR)?,
        },
        console: raw.console,
    };
    if grace_without_age {
        return Err(invalid(
            "server.max_connection_age_grace",
            "only used with server.max_connection_age, which is not set: set both, or neither",
        ));
    }
    Ok(config)
}

fn tls(
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
) -> Result<Option<TlsConfig>, ConfigError> {
    let path = |v: Option<String>| v.filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    match (path(cert), path(key), path(client_ca)) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsConfig {
            cert,
            key,
            client_ca,
        })),
        (_, _, Some(_)) => Err(invalid(
            "server.client_ca",
            "client certificates need TLS: set server.tls_cert and server.tls_key too",
        )),
        (Some(_), None, None) => Err(invalid(
            "server.tls_key",
            "set together with server.tls_cert",
        )),
        (None, Some(_), None) => Err(invalid(
            "server.tls_cert",
            "set together with server.tls_key",
        )),
    }
}
