//! The gateway's own Alibaba Cloud credentials: secret-holding types that never print their
//! secrets and are zeroized on drop, and the [`CredentialsProvider`] trait that every source
//! implements: environment, OIDC role, profile files, RAM role ARN, ECS RAM role, credentials
//! URI (see [`chain`]), and the sandbox's static keys.

pub(crate) mod cache;
pub(crate) mod chain;
pub(crate) mod context;
pub(crate) mod credential;
pub(crate) mod ecs;
pub(crate) mod environment;
mod http;
pub(crate) mod profile;
pub(crate) mod sts;
pub(crate) mod uri;

pub(crate) use crate::secret::Secret;
pub(crate) use chain::build;
pub(crate) use credential::{
    Credential, CredentialsError, CredentialsProvider, StaticProvider, masked,
};
