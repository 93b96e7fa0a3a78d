//! `[credentials]`: where the gateway's own Alibaba Cloud credentials come from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{ConfigError, DAY, HOUR, duration, invalid};
use crate::secret::Secret;

/// Which source of Alibaba Cloud credentials the gateway uses (`credentials.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The official chain: environment, OIDC role, CLI profile, credentials file, ECS RAM role,
    /// credentials URI; the first that answers is kept.
    Default,
    Environment,
    OidcRoleArn,
    CliProfile,
    Profile,
    RamRoleArn,
    EcsRamRole,
    CredentialsUri,
}

impl ProviderKind {
    const NAMES: &[(&str, ProviderKind)] = &[
        ("default", ProviderKind::Default),
        ("environment", ProviderKind::Environment),
        ("oidc_role_arn", ProviderKind::OidcRoleArn),
        ("cli_profile", ProviderKind::CliProfile),
        ("profile", ProviderKind::Profile),
        ("ram_role_arn", ProviderKind::RamRoleArn),
        ("ecs_ram_role", ProviderKind::EcsRamRole),
        ("credentials_uri", ProviderKind::CredentialsUri),
    ];
}

/// `[credentials]`: where the gateway's own Alibaba Cloud credentials come from. Unset keys fall
/// back to the official `ALIBABA_CLOUD_*` variables, then to the official defaults.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub provider: ProviderKind,
    /// Profile name in the credentials file or CLI config (`ALIBABA_CLOUD_PROFILE`).
    pub profile: Option<String>,
    /// The INI credentials file (`ALIBABA_CLOUD_CREDENTIALS_FILE`).
    pub credentials_file: Option<PathBuf>,
    /// The Aliyun CLI config (`ALIBABA_CLOUD_CONFIG_FILE`).
    pub cli_config_file: Option<PathBuf>,
    /// For `ram_role_arn`, and for `oidc_role_arn` (`ALIBABA_CLOUD_ROLE_ARN`).
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
    pub oidc_provider_arn: Option<String>,
    pub oidc_token_file: Option<PathBuf>,
    /// The ECS RAM role (`ALIBABA_CLOUD_ECS_METADATA`); discovered when unset.
    pub ecs_role_name: Option<String>,
    pub imdsv1_disabled: Option<bool>,
    /// May carry a token in its query, hence a secret.
    pub credentials_uri: Option<Secret>,
    pub sts_endpoint: Option<reqwest::Url>,
    pub imds_endpoint: Option<reqwest::Url>,
    /// How long assumed-role sessions last (STS `DurationSeconds`, 15 min to 12 h).
    pub session_duration: Duration,
    /// How long before expiry temporary credentials are refreshed.
    pub refresh_ahead: Duration,
    /// How often credential files are checked for changes.
    pub file_poll_interval: Duration,
    /// How long `serve` keeps asking a configured source that cannot be reached at start-up
    /// before it gives up (exit 69), so that a sidecar starting late is no crash loop.
    pub startup_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    provider: Option<String>,
    profile: Option<String>,
    credentials_file: Option<String>,
    cli_config_file: Option<String>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
    oidc_provider_arn: Option<String>,
    oidc_token_file: Option<String>,
    ecs_role_name: Option<String>,
    imdsv1_disabled: Option<bool>,
    credentials_uri: Option<String>,
    sts_endpoint: Option<String>,
    imds_endpoint: Option<String>,
    session_duration: Option<String>,
    refresh_ahead: Option<String>,
    file_poll_interval: Option<String>,
    startup_timeout: Option<String>,
}

pub(super) fn check(raw: RawCredentials) -> Result<CredentialsConfig, ConfigError> {
    let provider = match raw.provider.as_deref().map(str::trim) {
        None | Some("") => ProviderKind::Default,
        Some(name) => ProviderKind::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                let names: Vec<&str> = ProviderKind::NAMES.iter().map(|(n, _)| *n).collect();
                invalid(
                    "credentials.provider",
                    format!("expected one of {}, got {name:?}", names.join(", ")),
                )
            })?,
    };
    let text = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let path = |v: Option<String>| text(v).map(PathBuf::from);
    let url = |key: &str, v: Option<String>| {
        text(v)
            .map(|v| {
                let url = reqwest::Url::parse(&v)
                    .map_err(|e| invalid(key, format!("expected an http or https URL ({e})")))?;
                if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                    return Err(invalid(key, "expected an http or https URL with a host"));
                }
                Ok(url)
            })
            .transpose()
    };
    let session_duration = duration(
        "credentials.session_duration",
        raw.session_duration,
        HOUR,
        12 * HOUR,
    )?;
    if !(Duration::from_secs(900)..=Duration::from_secs(12 * 3600)).contains(&session_duration) {
        return Err(invalid(
            "credentials.session_duration",
            "expected between 15m and 12h (STS DurationSeconds)",
        ));
    }
    Ok(CredentialsConfig {
        provider,
        profile: text(raw.profile),
        credentials_file: path(raw.credentials_file),
        cli_config_file: path(raw.cli_config_file),
        role_arn: text(raw.role_arn),
        role_session_name: text(raw.role_session_name),
        oidc_provider_arn: text(raw.oidc_provider_arn),
        oidc_token_file: path(raw.oidc_token_file),
        ecs_role_name: text(raw.ecs_role_name),
        imdsv1_disabled: raw.imdsv1_disabled,
        credentials_uri: text(raw.credentials_uri).map(Secret::new),
        sts_endpoint: url("credentials.sts_endpoint", raw.sts_endpoint)?,
        imds_endpoint: url("credentials.imds_endpoint", raw.imds_endpoint)?,
        session_duration,
        refresh_ahead: duration(
            "credentials.refresh_ahead",
            raw.refresh_ahead,
            300,
            12 * HOUR,
        )?,
        file_poll_interval: duration(
            "credentials.file_poll_interval",
            raw.file_poll_interval,
            5,
            DAY,
        )?,
        startup_timeout: duration("credentials.startup_timeout", raw.startup_timeout, 60, HOUR)?,
    })
}
