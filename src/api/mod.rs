//! The edge of a call: [`gate`] (authenticate, rate-limit and shed before decoding, with
//! [`auth`] and [`policy`]), [`service`] (the `EngineVersionService` gRPC implementation),
//! [`json`] (the same calls as JSON over HTTP) and [`error`] (every failure as a gRPC status).

/// Largest metadata (headers) block accepted from a caller, over HTTP/2 (by h2) and HTTP/1.1
/// (by the JSON layer) alike.
pub const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

pub mod auth;
pub mod error;
pub mod gate;
pub mod json;
pub mod policy;
pub mod service;
