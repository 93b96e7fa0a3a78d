//! The gateway's own Alibaba Cloud credentials: secret-holding types that never print their
//! secrets and are zeroized on drop, and the [`CredentialsProvider`] trait that every source
//! implements: environment, OIDC role, profile files, RAM role ARN, ECS RAM role, credentials
//! URI (see [`chain`]), and the sandbox's static keys.

pub mod cache;
pub mod chain;
pub mod context;
pub mod credential;
pub mod ecs;
pub mod environment;
mod http;
pub mod profile;
pub mod sts;
pub mod uri;

pub use crate::secret::Secret;
pub use chain::build;
pub use credential::{Credential, CredentialsError, CredentialsProvider, StaticProvider, masked};
pub use environment::{
    ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET, ENV_SECURITY_TOKEN, from_environment,
};
