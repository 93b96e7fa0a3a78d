//! dds-gateway: a gRPC gateway that upgrades the MongoDB engine version of ApsaraDB for MongoDB
//! instances through signed Alibaba Cloud API calls, so that no caller holds an AccessKey.
//!
//! # Layout
//! One folder per stage, in the order a request travels; a module imports only from its own
//! stage and the ones below it (`scripts/layout.py` checks this and that there is no cycle).
//! - `server`: the listener: `server::connections` (the cap, the HTTP/2 preface deadline),
//!   `server::ageing` (connections that age out, the hard end of shutdown),
//!   `server::reload` (`[[callers]]` and credential files reloaded), health, reflection and
//!   graceful shutdown.
//! - `api`: the edge of a call: `api::gate` (authenticate, rate-limit and shed before
//!   decoding) with `api::auth` and `api::policy`, `api::service` (the gRPC service),
//!   `api::json` (the same calls as JSON over HTTP) and `api::error` (the API's refusals as
//!   statuses).
//! - `rollout`: fleet rollouts between the API and the upgrade path: `rollout::plan`,
//!   `rollout::start`, `rollout::driver` (leases, waves, one send per instance),
//!   `rollout::control`; their records live in `state::rollouts`.
//! - `upgrade`: the work of a call: `upgrade::validation`, `upgrade::idempotency`,
//!   `upgrade::preflight` with `upgrade::instance`, `upgrade::upgrader` (one upgrade, sent
//!   at most once), `upgrade::status` (`GetEngineVersion`, `WatchUpgrade`),
//!   `upgrade::error` and the statuses' details (`upgrade::details`).
//! - `state`: where keys, upgrade locks, shared rates and rollouts live: `state::store`
//!   (the contract), `state::memory`, `state::redis`, `state::rollouts`.
//! - `alibaba`: calls to the Dds API: `alibaba::signer` (V2, V3, pure),
//!   `alibaba::credentials` (the official chain), `alibaba::sign`, `alibaba::client`,
//!   `alibaba::codes` (the one classification of answers), `alibaba::retry` and the facade
//!   `alibaba::calls`.
//! - `telemetry`: traces (OTLP), metrics (OTLP, Prometheus), logs with trace ids.
//! - Primitives every stage may use: `limits` (callers' rates, places in flight), `audit`
//!   (the audit trail), `tls` (rustls set-up), `deadline` (the caller's deadline).
//! - `config`: the TOML file, environment overrides and start-up checks; a leaf, one file per
//!   section. `secret`: a string that never prints itself.
//! - [`run`]: start-up of the commands (configuration, credentials, sandbox, serving), so that
//!   the binary only parses arguments; [`exit`]: the exit codes (sysexits). `backoff`: the one
//!   jittered exponential backoff.
//! - Beside the request's path: `sandbox` (a loopback simulation of the Dds API that checks
//!   signatures like Alibaba), [`client`] (the `dds-gateway upgrade` command-line client), and
//!   [`pb`], the generated protobuf API (`dds.gateway.v1`), never edited.
#![forbid(unsafe_code)]

mod alibaba;
mod api;
mod audit;
mod backoff;
pub mod client;
mod config;
mod deadline;
pub mod exit;
mod limits;
mod rollout;
pub mod run;
mod sandbox;
mod secret;
mod server;
mod state;
mod telemetry;
mod tls;
mod upgrade;

// The binary's commands: `client` (the command-line client), `run` (serving), `exit` (codes).

pub use alibaba::signer;
pub use api::auth::{generate_token, hash_token};
pub use secret::Secret;
pub use tls::install_crypto_provider;

/// Generated protobuf types and gRPC stubs of `dds.gateway.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dds.gateway.v1");

    /// The gateway's protobuf package: every service of it with `google.api.http` options is
    /// served as JSON over HTTP.
    pub const PACKAGE: &str = "dds.gateway.v1";

    /// The encoded file descriptor set with its imports and options, for server reflection and
    /// the JSON routes (`google.api.http`).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/dds_gateway_descriptor.bin"));

    /// `google.rpc.Status` and its details' types, to write errors as JSON.
    pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));
}

/// What the integration tests reach inside the crate, under the paths of its modules; not a
/// stable API.
#[doc(hidden)]
pub mod testing {
    pub mod alibaba {
        pub use crate::alibaba::client::AlibabaClient;
        pub use crate::alibaba::clock::Clock;
        pub use crate::alibaba::dds::action;
        pub use crate::alibaba::response::CallError;
        pub use crate::alibaba::signer;

        pub mod credentials {
            pub use crate::alibaba::credentials::chain::build;
            pub use crate::alibaba::credentials::credential::{
                Credential, CredentialsError, CredentialsProvider, StaticProvider,
            };
            pub use crate::secret::Secret;

            pub mod cache {
                pub use crate::alibaba::credentials::cache::{Fetch, RefreshPolicy, Refreshing};
            }
        }

        pub mod response {
            pub use crate::alibaba::response::{Answer, CallError};
        }
    }

    pub mod api {
        pub mod auth {
            pub use crate::api::auth::{Callers, CallersHandle, hash_token};
        }

        pub mod service {
            pub use crate::api::service::{
                EngineVersionService, RECONCILED_HEADER, REPLAYED_HEADER, SERVICE_NAME,
            };
        }
    }

    pub mod config {
        pub use crate::config::alibaba::SignatureVersion;
        pub use crate::config::state::{RedisUrl, StoreKind};
        pub use crate::config::{Config, Overrides};
    }

    pub mod deadline {
        pub use crate::deadline::Deadline;
    }

    pub mod limits {
        pub use crate::limits::rate::{Rate, SharedBucket, SharedRates};
    }

    pub mod sandbox {
        pub use crate::sandbox::{
            ACCESS_KEY_ID, ACCESS_KEY_SECRET, Failure, FailureRule, Fault, FleetSpec, Instance,
            Received, Sandbox, SandboxConfig, UpgradeCall,
        };
    }

    pub mod secret {
        pub use crate::secret::Secret;
    }

    pub mod server {
        pub use crate::server::{ServeError, serve, serve_with};

        pub mod console {
            pub use crate::server::console::{CONTENT_SECURITY_POLICY, asset_names};
        }

        pub mod reload {
            pub use crate::server::reload::reload;
        }
    }

    pub mod state {
        pub mod activity {
            pub use crate::state::activity::{Activity, CAPACITY};
        }

        pub mod memory {
            pub use crate::state::memory::MemoryStore;
        }

        pub mod redis {
            pub use crate::state::redis::RedisStore;
        }

        pub mod store {
            pub use crate::state::store::{
                Accepted, Claim, Fingerprint, Hold, InstanceLock, Key, QuotaPlace, Settlement,
                StateStore, StoreError, StoreLimits, Token,
            };
        }
    }

    pub mod telemetry {
        pub use crate::config::telemetry::{Otlp, Protocol};
        pub use crate::telemetry::Telemetry;
        pub use crate::telemetry::logs::LogOutput;
        pub use crate::telemetry::metrics::Metrics;
    }

    pub mod tls {
        pub use crate::tls::install_crypto_provider;
    }

    pub mod upgrade {
        pub mod idempotency {
            pub use crate::upgrade::idempotency::fingerprint;
        }

        pub mod validation {
            pub use crate::upgrade::validation::Validator;
        }
    }
}
