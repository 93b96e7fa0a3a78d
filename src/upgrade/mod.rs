//! The work of a call: [`validation`] (wire request to a valid one), [`idempotency`]
//! (`request_id` keys and per-instance locks over the state store), [`preflight`] (checks of
//! the instance), [`upgrader`] (one intended upgrade, sent at most once) and [`status`]
//! (`GetEngineVersion` and `WatchUpgrade`).

pub mod details;
pub mod error;
pub mod idempotency;
pub mod instance;
pub mod preflight;
pub mod status;
pub mod upgrader;
pub mod validation;
