//! dds-gateway: a gRPC gateway that upgrades the MongoDB engine version of ApsaraDB for MongoDB
//! instances through signed Alibaba Cloud API calls, so that no caller holds an AccessKey.
//!
//! # Layout
//! One folder per stage, in the order a request travels; a module imports only from its own
//! stage and the ones below it (`scripts/layout.py` checks this and that there is no cycle).
//! - [`server`]: the listener: [`server::connections`] (the cap, the HTTP/2 preface deadline),
//!   [`server::ageing`] (connections that age out, the hard end of shutdown),
//!   [`server::reload`] (`[[callers]]` and credential files reloaded), health, reflection and
//!   graceful shutdown.
//! - [`api`]: the edge of a call: [`api::gate`] (authenticate, rate-limit and shed before
//!   decoding) with [`api::auth`] and [`api::policy`], [`api::service`] (the gRPC service),
//!   [`api::json`] (the same calls as JSON over HTTP) and [`api::error`] (the API's refusals as
//!   statuses).
//! - [`upgrade`]: the work of a call: [`upgrade::validation`], [`upgrade::idempotency`],
//!   [`upgrade::preflight`] with [`upgrade::instance`], [`upgrade::upgrader`] (one upgrade, sent
//!   at most once), [`upgrade::status`] (`GetEngineVersion`, `WatchUpgrade`),
//!   [`upgrade::error`] and the statuses' details ([`upgrade::details`]).
//! - [`state`]: where keys, upgrade locks and shared rates live: [`state::store`] (the
//!   contract), [`state::memory`], [`state::redis`].
//! - [`alibaba`]: calls to the Dds API: [`alibaba::signer`] (V2, V3, pure),
//!   [`alibaba::credentials`] (the official chain), [`alibaba::sign`], [`alibaba::client`],
//!   [`alibaba::codes`] (the one classification of answers), [`alibaba::retry`] and the facade
//!   [`alibaba::calls`].
//! - [`telemetry`]: traces (OTLP), metrics (OTLP, Prometheus), logs with trace ids.
//! - Primitives every stage may use: [`limits`] (callers' rates, places in flight), [`audit`]
//!   (the audit trail), [`tls`] (rustls set-up), [`deadline`] (the caller's deadline).
//! - [`config`]: the TOML file, environment overrides and start-up checks; a leaf, one file per
//!   section. [`secret`]: a string that never prints itself.
//! - [`run`]: start-up of the commands (configuration, credentials, sandbox, serving), so that
//!   the binary only parses arguments; [`exit`]: the exit codes (sysexits). `backoff`: the one
//!   jittered exponential backoff.
//! - Beside the request's path: [`sandbox`] (a loopback simulation of the Dds API that checks
//!   signatures like Alibaba), [`client`] (the `dds-gateway upgrade` command-line client), and
//!   [`pb`], the generated protobuf API (`dds.gateway.v1`), never edited.
#![forbid(unsafe_code)]

pub mod alibaba;
pub mod api;
pub mod audit;
pub(crate) mod backoff;
pub mod client;
pub mod config;
pub mod deadline;
pub mod exit;
pub mod limits;
pub mod run;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upgrade;

/// Generated protobuf types and gRPC stubs of `dds.gateway.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dds.gateway.v1");

    /// The encoded file descriptor set with its imports and options, for server reflection and
    /// the JSON routes (`google.api.http`).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/dds_gateway_descriptor.bin"));

    /// `google.rpc.Status` and its details' types, to write errors as JSON.
    pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));
}
