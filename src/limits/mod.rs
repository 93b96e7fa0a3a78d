//! Overload protection: a rate (GCRA) per authenticated caller (keyed by who the caller is,
//! never by its peer address) and limits on how much runs at once (calls in flight, watches)
//! that shed the excess at once instead of queueing it. Each caller may hold only its share of
//! such a limit, so that one caller within its rate cannot take every place.
//!
//! With a shared state store the callers' rates are kept there ([`SharedRates`]), so that a
//! caller's burst is shared by every replica; [`Rates`] falls back to this process's rates
//! while the store cannot be reached, because refusing every call would turn a store outage into
//! a gateway outage.
//!
//! [`rate`] keeps the callers' rates, [`in_flight`] the places.

pub(crate) mod in_flight;
pub(crate) mod rate;

pub(crate) use in_flight::{Full, InFlight, Place};
pub(crate) use rate::{Rate, Rates, SharedBucket, SharedRates};
