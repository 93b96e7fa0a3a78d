//! Calls to Alibaba Cloud's Dds API, bottom to top: [`signer`] (signatures V2 and V3, pure),
//! [`clock`] (the time and nonces they are made with), [`credentials`] (the gateway's own
//! AccessKey or STS token, from the official chain), [`sign`] (a request signed with a
//! credential), [`http`] and [`endpoint`] (where it goes), [`response`] (the answer, or why there
//! is none), [`client`] (one signed call), [`trace`] (its client span), [`codes`] (the one
//! classification of answers: retry, did Alibaba act, gRPC code and reason), [`retry`] and
//! [`calls`] (the facade that owns the client and the retry policy), [`inventory`] (the fleet
//! as `DescribeDBInstances` lists it), [`quota`] (the account's budget of calls, per region,
//! shared by the replicas).

pub mod calls;
pub mod client;
pub mod clock;
pub mod codes;
pub mod credentials;
pub mod dds;
pub mod endpoint;
pub mod http;
pub mod inventory;
pub mod quota;
pub mod response;
pub mod retry;
pub mod sign;
pub mod signer;
pub mod trace;

pub use calls::Alibaba;
pub use client::AlibabaClient;
pub use clock::Clock;
pub use dds::{API_VERSION, action};
pub use response::{AvailableEngineVersions, CallError, InstanceAttribute, UpstreamError};
