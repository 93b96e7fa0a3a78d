//! The edge of a call: [`gate`] (authenticate, rate-limit and shed before decoding, with
//! [`auth`] and [`policy`]), [`service`] (the `EngineVersionService` gRPC implementation),
//! [`rollouts`] (the `RolloutService`: permissions, then the rollout stage),
//! [`json`] (the same calls as JSON over HTTP) and [`error`] (every failure as a gRPC status).

/// Largest metadata (headers) block accepted from a caller, over HTTP/2 (by h2) and HTTP/1.1
/// (by the JSON layer) alike.
pub(crate) const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod gate;
pub(crate) mod json;
pub(crate) mod policy;
pub(crate) mod rollouts;
pub(crate) mod service;
