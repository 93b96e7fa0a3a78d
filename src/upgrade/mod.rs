//! The work of a call: [`validation`] (wire request to a valid one), [`idempotency`]
//! (`request_id` keys and per-instance locks over the state store), [`preflight`] (checks of
//! the instance, with [`instance`]: states, version order, why not), [`upgrader`] (one intended
//! upgrade, sent at most once), [`status`] (`GetEngineVersion` and `WatchUpgrade`),
//! [`poller`] (one poll per followed instance, shared by its watchers), [`inventory`]
//! (`ListInstances`) and [`lifecycle`] (where a version stands against its end of life). Their
//! failures are [`error`]'s; each becomes a status with the messages and details of [`details`].

pub(crate) mod details;
pub(crate) mod error;
pub(crate) mod idempotency;
pub(crate) mod instance;
pub(crate) mod inventory;
pub(crate) mod lifecycle;
pub(crate) mod poller;
pub(crate) mod preflight;
pub(crate) mod status;
pub(crate) mod upgrader;
pub(crate) mod validation;
