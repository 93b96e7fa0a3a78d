//! Calls to Alibaba Cloud's Dds API, bottom to top: [`signer`] (signatures V2 and V3, pure),
//! [`clock`] (the time and nonces they are made with), [`credentials`] (the gateway's own
//! AccessKey or STS token, from the official chain), [`sign`] (a request signed with a
//! credential), [`http`] and [`endpoint`] (where it goes), [`response`] (the answer, or why there
//! is none), [`client`] (one signed call), [`trace`] (its client span), [`codes`] (the one
//! classification of answers: retry, did Alibaba act, gRPC code and reason), [`retry`] and
//! [`calls`] (the facade that owns the client and the retry policy), [`inventory`] (the fleet
//! as `DescribeDBInstances` lists it), [`quota`] (the account's budget of calls, per region,
//! shared by the replicas).

pub(crate) mod calls;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod codes;
pub(crate) mod credentials;
pub(crate) mod dds;
pub(crate) mod endpoint;
pub(crate) mod http;
pub(crate) mod inventory;
pub(crate) mod quota;
pub(crate) mod response;
pub(crate) mod retry;
pub(crate) mod sign;
pub mod signer;
pub(crate) mod trace;

pub(crate) use calls::Alibaba;
pub(crate) use client::AlibabaClient;
pub(crate) use dds::{API_VERSION, action};
pub(crate) use response::{AvailableEngineVersions, CallError, InstanceAttribute, UpstreamError};
