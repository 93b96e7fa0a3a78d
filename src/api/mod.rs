//! The edge of a call: [`gate`] (authenticate, rate-limit and shed before decoding, with
//! [`auth`] and [`policy`]), [`service`] (the `EngineVersionService` gRPC implementation),
//! [`rollouts`] (the `RolloutService`: permissions, then the rollout stage),
//! [`json`] (the same calls as JSON over HTTP) and [`error`] (every failure as a gRPC status).

pub mod auth;
pub mod error;
pub mod gate;
pub mod json;
pub mod policy;
pub mod rollouts;
pub mod service;
