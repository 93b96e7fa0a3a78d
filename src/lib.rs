//! dds-gateway: a gRPC gateway that upgrades the MongoDB engine version of ApsaraDB for MongoDB
//! instances through signed Alibaba Cloud API calls, so that no caller holds an AccessKey.
//!
//! # Layout
//! - [`pb`]: the generated protobuf API (`dds.gateway.v1`), never edited.
//! - [`config`]: the TOML file, environment overrides and start-up checks; a leaf, one file per
//!   section ([`config::server`], [`config::alibaba`], [`config::credentials`],
//!   [`config::callers`], [`config::telemetry`] with `[audit]`, [`config::idempotency`],
//!   [`config::watch`], [`config::state`]), the region table ([`config::regions`]) and the
//!   environment table ([`config::env`]).
//! - [`secret`]: a string that never prints itself, held by config and credentials alike.
//! - [`validation`]: wire request → [`validation::ValidUpgradeRequest`], every violation at once.
//! - [`credentials`]: secret types and the credentials provider trait.
//! - [`signer`]: Alibaba RPC signatures V2 and V3 ([`signer::v3`]), pure functions.
//! - [`alibaba`]: the Dds API client (endpoints, sending, answers); [`alibaba::codes`], the one
//!   classification of Alibaba's answers (retry, did Alibaba act, gRPC code and reason);
//!   [`alibaba::calls`], the facade that owns the client and its retry policy;
//!   [`alibaba::clock`], the time and nonces signatures are made with.
//! - [`auth`]: caller identity from bearer tokens and client certificates; the callers table.
//! - [`policy`]: what each caller may do (regions, instance globs, versions, validate-only).
//! - [`limits`]: per-caller token buckets (local, or shared through the state store) and the
//!   global in-flight limit.
//! - [`gate`]: the tower service that authenticates, rate-limits and sheds before decoding.
//! - [`reload`]: SIGHUP and config-file changes: `[[callers]]` and credential files reloaded.
//! - [`tls`]: TLS and mTLS for the listener.
//! - [`error`]: failures to gRPC statuses (codes and reasons from [`alibaba::codes`]).
//! - [`idempotency`]: `request_id` keys and per-instance upgrade locks (store trait, memory store).
//! - [`state`]: `[state]`: the memory or Redis store, shared between replicas.
//! - [`preflight`]: checks of the instance before an upgrade.
//! - [`upgrade`]: one intended upgrade: idempotency, preflight, upgrade, reconcile.
//! - [`status`]: `GetEngineVersion` and `WatchUpgrade`.
//! - [`deadline`]: the caller's `grpc-timeout`, read at the edge, enforced by the handler.
//! - [`service`]: the `EngineVersionService` implementation.
//! - [`json`]: JSON over HTTP on the gRPC port, routed by the proto's `google.api.http` options.
//! - [`server`]: the tonic server: health, reflection, limits, graceful shutdown.
//! - [`connections`]: accepted connections: the cap, and the deadline for the HTTP/2 preface.
//! - [`rollout`]: connections that age out (rebalancing) and a hard end to shutdown.
//! - [`sandbox`]: a loopback simulation of the Dds API that checks signatures like Alibaba.
//! - [`client`]: the `dds-gateway upgrade` command-line client.
//! - [`telemetry`]: traces (OTLP), metrics (OTLP, Prometheus), logs with trace ids.
//! - [`audit`]: the audit trail of upgrades and validate-only checks.
#![forbid(unsafe_code)]

pub mod alibaba;
pub mod api;
pub mod audit;
pub mod client;
pub mod config;
pub mod deadline;
pub mod limits;
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
