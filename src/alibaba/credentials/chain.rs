//! Builds the gateway's credentials provider from `[credentials]` and the official
//! `ALIBABA_CLOUD_*` variables: one provider chosen explicitly, or the official default chain
//! (environment, OIDC role, CLI profile, credentials file, ECS RAM role, credentials URI) that
//! keeps the first provider that answers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;

use super::cache::RefreshPolicy;
use super::context::Context;
use super::credential::{Credential, CredentialsError, CredentialsProvider};
use super::ecs::{self, EcsRamRole};
use super::environment;
use super::profile::{FileProfile, Format};
use super::sts::{self, OidcRoleArn, RamRoleArn};
use super::uri::CredentialsUri;
use crate::config::{CredentialsConfig, ProviderKind};
use crate::telemetry::Metrics;

/// The official variables the chain reads (besides the environment provider's own).
pub(crate) mod var {
    pub(crate) const ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
    pub(crate) const OIDC_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
    pub(crate) const OIDC_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
    pub(crate) const ROLE_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";
    pub(crate) const PROFILE: &str = "ALIBABA_CLOUD_PROFILE";
    pub(crate) const CREDENTIALS_FILE: &str = "ALIBABA_CLOUD_CREDENTIALS_FILE";
    pub(crate) const CONFIG_FILE: &str = "ALIBABA_CLOUD_CONFIG_FILE";
    pub(crate) const CLI_PROFILE_DISABLED: &str = "ALIBABA_CLOUD_CLI_PROFILE_DISABLED";
    pub(crate) const ECS_METADATA: &str = "ALIBABA_CLOUD_ECS_METADATA";
    pub(crate) const ECS_METADATA_DISABLED: &str = "ALIBABA_CLOUD_ECS_METADATA_DISABLED";
    pub(crate) const IMDSV1_DISABLED: &str = "ALIBABA_CLOUD_IMDSV1_DISABLED";
    pub(crate) const CREDENTIALS_URI: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";
    pub(crate) const STS_ENDPOINT: &str = "ALIBABA_CLOUD_STS_ENDPOINT";
    pub(crate) const STS_REGION: &str = "ALIBABA_CLOUD_STS_REGION";
    pub(crate) const VPC_ENDPOINT_ENABLED: &str = "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED";
    pub(crate) const HOME: &str = "HOME";
}

/// Builds the provider `config` selects, counting its fetches and reloads in `metrics`.
/// Explicitly selected providers fail here when they are not configured; the default chain fails
/// later, at the first credential, if none answers.
pub fn build(
    config: &CredentialsConfig,
    env: &dyn Fn(&str) -> Option<String>,
    metrics: &Metrics,
) -> Result<Arc<dyn CredentialsProvider>, CredentialsError> {
    let var_of = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let context = context(config, &var_of, metrics)?;
    let builder = Builder {
        config,
        env: &var_of,
        context,
    };
    match config.provider {
        ProviderKind::Default => Ok(Arc::new(builder.default_chain())),
        ProviderKind::Environment => Ok(Arc::new(environment::from_environment(env)?)),
        ProviderKind::OidcRoleArn => builder.oidc().unwrap_or_else(|| {
            Err(not_configured(
                "oidc_role_arn",
                format!(
                    "set credentials.role_arn, credentials.oidc_provider_arn and credentials.oidc_token_file (or {}, {} and {})",
                    var::ROLE_ARN,
                    var::OIDC_PROVIDER_ARN,
                    var::OIDC_TOKEN_FILE
                ),
            ))
        }),
        ProviderKind::CliProfile => builder.cli_profile(),
        ProviderKind::Profile => builder.profile(),
        ProviderKind::RamRoleArn => builder.ram_role_arn(),
        ProviderKind::EcsRamRole => Ok(builder.ecs_ram_role()),
        ProviderKind::CredentialsUri => builder.credentials_uri().unwrap_or_else(|| {
            Err(not_configured(
                "credentials_uri",
                format!(
                    "set credentials.credentials_uri (or {})",
                    var::CREDENTIALS_URI
                ),
            ))
        }),
    }
}

/// The shared settings of every provider, from `[credentials]` and the official variables.
#[expect(
    clippy::expect_used,
    reason = "a constant URL, pinned by a test, always parses"
)]
fn context(
    config: &CredentialsConfig,
    var_of: &dyn Fn(&str) -> Option<String>,
    metrics: &Metrics,
) -> Result<Context, CredentialsError> {
    let flag = |name: &str| var_of(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let http = super::http::client(Duration::from_secs(5), Duration::from_secs(15))
        .map_err(|reason| unavailable("default", reason))?;
    let imds_http = super::http::client(Duration::from_secs(1), Duration::from_secs(5))
        .map_err(|reason| unavailable("ecs_ram_role", reason))?;
    let sts_endpoint = match (&config.sts_endpoint, var_of(var::STS_ENDPOINT)) {
        (Some(configured), _) => Some(configured.clone()),
        (None, Some(value)) => Some(sts::parse_endpoint(&value).ok_or_else(|| {
            not_configured(
                "default",
                format!(
                    "{}: expected a host such as sts-vpc.cn-hangzhou.aliyuncs.com or an http(s) URL, got {value:?}",
                    var::STS_ENDPOINT
                ),
            )
        })?),
        (None, None) => None,
    };
    Ok(Context {
        http,
        imds_http,
        sts_endpoint,
        sts_region: var_of(var::STS_REGION),
        vpc: flag(var::VPC_ENDPOINT_ENABLED),
        imds_endpoint: config.imds_endpoint.clone().unwrap_or_else(|| {
            Url::parse(ecs::DEFAULT_ENDPOINT)
                .expect("the metadata endpoint constant is a valid URL")
        }),
        imdsv1_disabled: config
            .imdsv1_disabled
            .unwrap_or_else(|| flag(var::IMDSV1_DISABLED)),
        session_duration: config.session_duration,
        role_session_name: config
            .role_session_name
            .clone()
            .or_else(|| var_of(var::ROLE_SESSION_NAME)),
        policy: RefreshPolicy {
            refresh_ahead: config.refresh_ahead,
            ..RefreshPolicy::default()
        },
        metrics: metrics.clone(),
    })
}

fn not_configured(provider: &'static str, reason: String) -> CredentialsError {
    CredentialsError::NotConfigured { provider, reason }
}

fn unavailable(provider: &'static str, reason: String) -> CredentialsError {
    CredentialsError::Unavailable { provider, reason }
}

type Built = Result<Arc<dyn CredentialsProvider>, CredentialsError>;

struct Builder<'a> {
    config: &'a CredentialsConfig,
    env: &'a dyn Fn(&str) -> Option<String>,
    context: Context,
}

impl Builder<'_> {
    fn home(&self, relative: &str) -> Option<PathBuf> {
        (self.env)(var::HOME).map(|home| PathBuf::from(home).join(relative))
    }

    fn profile_name(&self) -> Option<String> {
        self.config
            .profile
            .clone()
            .or_else(|| (self.env)(var::PROFILE))
    }

    /// The official chain, in order, with the providers whose settings are present.
    fn default_chain(&self) -> DefaultChain {
        let mut candidates: Vec<Built> = Vec::new();
        candidates.push(
            environment::from_environment(self.env)
                .map(|p| Arc::new(p) as Arc<dyn CredentialsProvider>),
        );
        if let Some(oidc) = self.oidc() {
            candidates.push(oidc);
        }
        if !(self.env)(var::CLI_PROFILE_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            candidates.push(self.cli_profile());
        }
        candidates.push(self.profile());
        if !(self.env)(var::ECS_METADATA_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            candidates.push(Ok(self.ecs_ram_role()));
        }
        if let Some(uri) = self.credentials_uri() {
            candidates.push(uri);
        }
        DefaultChain {
            candidates,
            chosen: Mutex::new(None),
        }
    }

    /// `None` when the OIDC settings are absent altogether (the chain then skips it).
    fn oidc(&self) -> Option<Built> {
        let c = self.config;
        let role_arn = c.role_arn.clone().or_else(|| (self.env)(var::ROLE_ARN));
        let provider_arn = c
            .oidc_provider_arn
            .clone()
            .or_else(|| (self.env)(var::OIDC_PROVIDER_ARN));
        let token_file = c
            .oidc_token_file
            .clone()
            .or_else(|| (self.env)(var::OIDC_TOKEN_FILE).map(PathBuf::from));
        let (role_arn, provider_arn, token_file) = match (role_arn, provider_arn, token_file) {
            (Some(r), Some(p), Some(t)) => (r, p, t),
            (None, None, None) => return None,
            _ => {
                return Some(Err(not_configured(
                    "oidc_role_arn",
                    "the role ARN, OIDC provider ARN and OIDC token file must all be set".into(),
                )));
            }
        };
        Some(Ok(Arc::new(self.context.refreshing(OidcRoleArn {
            sts: self.context.sts(None),
            session: self.context.session(role_arn, None, None),
            oidc_provider_arn: provider_arn,
            oidc_token_file: token_file,
        }))))
    }

    fn cli_profile(&self) -> Built {
        let path = self
            .config
            .cli_config_file
            .clone()
            .or_else(|| (self.env)(var::CONFIG_FILE).map(PathBuf::from))
            .or_else(|| self.home(".aliyun/config.json"))
            .ok_or_else(|| {
                not_configured(
                    "cli_profile",
                    "no HOME to find ~/.aliyun/config.json".into(),
                )
            })?;
        self.file(path, Format::CliJson)
    }

    fn profile(&self) -> Built {
        let path = self
            .config
            .credentials_file
            .clone()
            .or_else(|| (self.env)(var::CREDENTIALS_FILE).map(PathBuf::from))
            .or_else(|| {
                // Python and Java read `credentials.ini`, Go reads `credentials`: take whichever exists.
                let ini = self.home(".alibabacloud/credentials.ini")?;
                let plain = self.home(".alibabacloud/credentials")?;
                Some(if !ini.exists() && plain.exists() {
                    plain
                } else {
                    ini
                })
            })
            .ok_or_else(|| {
                not_configured(
                    "profile",
                    "no HOME to find ~/.alibabacloud/credentials.ini".into(),
                )
            })?;
        self.file(path, Format::Ini)
    }

    fn file(&self, path: PathBuf, format: Format) -> Built {
        let profile = FileProfile::load(path, format, self.profile_name(), self.context.clone())?;
        Ok(Arc::new(profile.watch(self.config.file_poll_interval)))
    }

    fn ram_role_arn(&self) -> Built {
        let role_arn = self.config.role_arn.clone().ok_or_else(|| {
            not_configured(
                "ram_role_arn",
                "set credentials.role_arn to the role to assume".into(),
            )
        })?;
        // The base credential comes from the rest of the chain.
        Ok(Arc::new(self.context.refreshing(RamRoleArn {
            sts: self.context.sts(None),
            base: Arc::new(self.default_chain()),
            session: self.context.session(role_arn, None, None),
        })))
    }

    fn ecs_ram_role(&self) -> Arc<dyn CredentialsProvider> {
        Arc::new(
            self.context.refreshing(EcsRamRole {
                http: self.context.imds_http.clone(),
                endpoint: self.context.imds_endpoint.clone(),
                role_name: self
                    .config
                    .ecs_role_name
                    .clone()
                    .or_else(|| (self.env)(var::ECS_METADATA)),
                imdsv1_disabled: self.context.imdsv1_disabled,
            }),
        )
    }

    fn credentials_uri(&self) -> Option<Built> {
        let uri = self
            .config
            .credentials_uri
            .as_ref()
            .map(|s| s.expose().to_string())
            .or_else(|| (self.env)(var::CREDENTIALS_URI))?;
        Some(match Url::parse(&uri) {
            Ok(uri) if matches!(uri.scheme(), "http" | "https") => {
                Ok(Arc::new(self.context.refreshing(CredentialsUri {
                    http: self.context.http.clone(),
                    uri,
                })))
            }
            _ => Err(not_configured(
                "credentials_uri",
                "the credentials URI is not an http or https URL".into(),
            )),
        })
    }
}

/// The official default chain: asks each provider in turn and keeps the first that answers.
pub(crate) struct DefaultChain {
    /// Providers in chain order; those that could not even be built carry why.
    candidates: Vec<Built>,
    chosen: Mutex<Option<Arc<dyn CredentialsProvider>>>,
}

impl DefaultChain {
    fn chosen(&self) -> Option<Arc<dyn CredentialsProvider>> {
        self.chosen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait::async_trait]
impl CredentialsProvider for DefaultChain {
    fn name(&self) -> &'static str {
        self.chosen().map_or("default", |p| p.name())
    }

    async fn credential(&self) -> Result<Credential, CredentialsError> {
        // Like the official libraries, a provider that answered once is the one used from then on.
        if let Some(chosen) = self.chosen() {
            return chosen.credential().await;
        }
        let mut reasons = Vec::new();
        // A source set up for this gateway (an OIDC role, a credentials URI, a profile) that
        // cannot be reached makes the chain unavailable, not unconfigured: it may answer later.
        // The metadata service is tried on every machine, so its silence says nothing.
        let mut unreachable = false;
        for candidate in &self.candidates {
            match candidate {
                Ok(provider) => match provider.credential().await {
                    Ok(credential) => {
                        *self
                            .chosen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(Arc::clone(provider));
                        return Ok(credential);
                    }
                    Err(err) => {
                        unreachable |= matches!(err, CredentialsError::Unavailable { .. })
                            && provider.name() != "ecs_ram_role";
                        reasons.push(err.to_string());
                    }
                },
                Err(err) => reasons.push(err.to_string()),
            }
        }
        let reason = format!(
            "no provider in the default chain has credentials: {}",
            reasons.join("; ")
        );
        Err(if unreachable {
            CredentialsError::Unavailable {
                provider: "default",
                reason,
            }
        } else {
            CredentialsError::NotConfigured {
                provider: "default",
                reason,
            }
        })
    }

    async fn reload(&self) {
        for provider in self.candidates.iter().flatten() {
            provider.reload().await;
        }
    }

    fn rejected_as_expired(&self, credential: &Credential) {
        if let Some(chosen) = self.chosen() {
            chosen.rejected_as_expired(credential);
        }
    }
}

impl std::fmt::Debug for DefaultChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultChain")
            .field("chosen", &self.chosen().map(|p| p.name()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    /// The STS endpoint the chain uses with `[credentials]` `toml` and only `vars` set.
    fn sts_endpoint(toml: &str, vars: &[(&str, &str)]) -> Result<String, CredentialsError> {
        let config = Config::from_toml(
            &format!("[credentials]\n{toml}"),
            "test",
            |_| None,
            &Overrides::default(),
        )
        .unwrap();
        let var_of = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        Ok(context(&config.credentials, &var_of, &Metrics::default())?
            .sts(None)
            .endpoint()
            .to_string())
    }

    #[test]
    fn sts_region_picks_the_regional_endpoint() {
        assert_eq!(sts_endpoint("", &[]).unwrap(), "https://sts.aliyuncs.com/");
        assert_eq!(
            sts_endpoint("", &[(var::STS_REGION, "cn-shanghai")]).unwrap(),
            "https://sts.cn-shanghai.aliyuncs.com/"
        );
    }

    #[test]
    fn vpc_endpoint_enabled_picks_the_regions_vpc_endpoint() {
        assert_eq!(
            sts_endpoint(
                "",
                &[
                    (var::STS_REGION, "cn-shanghai"),
                    (var::VPC_ENDPOINT_ENABLED, "true")
                ]
            )
            .unwrap(),
            "https://sts-vpc.cn-shanghai.aliyuncs.com/"
        );
        // Without a region there is no VPC endpoint to pick: the public one, as the official
        // libraries do.
        assert_eq!(
            sts_endpoint("", &[(var::VPC_ENDPOINT_ENABLED, "true")]).unwrap(),
            "https://sts.aliyuncs.com/"
        );
        assert_eq!(
            sts_endpoint(
                "",
                &[
                    (var::STS_REGION, "cn-shanghai"),
                    (var::VPC_ENDPOINT_ENABLED, "false")
                ]
            )
            .unwrap(),
            "https://sts.cn-shanghai.aliyuncs.com/"
        );
    }

    #[test]
    fn sts_endpoint_variable_wins_over_region_and_loses_to_the_config_key() {
        let webhook = [
            (var::STS_ENDPOINT, "sts-vpc.cn-hangzhou.aliyuncs.com"),
            (var::STS_REGION, "cn-shanghai"),
            (var::VPC_ENDPOINT_ENABLED, "true"),
        ];
        assert_eq!(
            sts_endpoint("", &webhook).unwrap(),
            "https://sts-vpc.cn-hangzhou.aliyuncs.com/"
        );
        assert_eq!(
            sts_endpoint("sts_endpoint = \"https://sts.example.internal\"", &webhook).unwrap(),
            "https://sts.example.internal/"
        );
    }

    #[test]
    fn a_bad_sts_endpoint_variable_is_an_error_naming_it() {
        let err = sts_endpoint("", &[(var::STS_ENDPOINT, "sts.aliyuncs.com/x?y=z")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ALIBABA_CLOUD_STS_ENDPOINT"), "{err}");
    }
}
