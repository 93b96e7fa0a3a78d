//! Where signing gets the time and its single-use nonces. The signer is pure (both go in as
//! arguments); the client and STS ask one [`Clock`], which tests replace to sign reproducibly.

use std::fmt::Debug;
use std::time::SystemTime;

use uuid::Uuid;

/// The time and nonces a signature is made with.
pub trait Clock: Send + Sync + Debug {
    /// The wall-clock time (Alibaba refuses a `Timestamp` 15 minutes off).
    fn now(&self) -> SystemTime;
    /// A nonce never used before (`SignatureNonce`, `x-acs-signature-nonce`).
    fn nonce(&self) -> Uuid;
}

/// The system's wall clock and random v4 UUIDs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one wall clock behind every signature; the signer itself is given the time"
    )]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "the one source of signature nonces; the signer itself is given the nonce"
    )]
    fn nonce(&self) -> Uuid {
        Uuid::new_v4()
    }
}
