//! Profile files: the INI credentials file (`~/.alibabacloud/credentials.ini`, types
//! `access_key`, `sts`, `ram_role_arn`, `ecs_ram_role`, `oidc_role_arn`) and the Aliyun CLI's
//! `~/.aliyun/config.json` (modes `AK`, `StsToken`, `RamRoleArn`, `EcsRamRole`, `OIDC`,
//! `ChainableRamRoleArn`). A [`FileProfile`] re-reads its file when the contents change (polled)
//! or on SIGHUP, and swaps the provider it built; calls already holding a credential keep it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::instrument::WithSubscriber as _;

use super::context::Context;
use super::credential::{Credential, CredentialsError, CredentialsProvider, StaticProvider};
use super::ecs::EcsRamRole;
use super::sts::{OidcRoleArn, RamRoleArn};
use crate::secret::Secret;

/// Which of the two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `credentials.ini`: `[profile]` sections with a `type`.
    Ini,
    /// The Aliyun CLI's `config.json`: `profiles` with a `mode`.
    CliJson,
}

impl Format {
    /// The provider name this format goes by in config and logs.
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Format::Ini => "profile",
            Format::CliJson => "cli_profile",
        }
    }
}

/// What a profile asks for, independent of the file format.
#[derive(Debug)]
enum Spec {
    AccessKey {
        id: String,
        secret: Secret,
        token: Option<Secret>,
    },
    RamRoleArn {
        base: Box<Spec>,
        role_arn: String,
        session_name: Option<String>,
        duration: Option<Duration>,
        sts_region: Option<String>,
    },
    EcsRamRole {
        role_name: Option<String>,
    },
    OidcRoleArn {
        role_arn: String,
        oidc_provider_arn: String,
        token_file: PathBuf,
        session_name: Option<String>,
        duration: Option<Duration>,
        sts_region: Option<String>,
    },
}

/// A provider built from a profile in a file, rebuilt when the file changes.
pub(crate) struct FileProfile {
    shared: Arc<Shared>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    format: Format,
    profile: Option<String>,
    context: Context,
    current: RwLock<Loaded>,
}

struct Loaded {
    digest: [u8; 32],
    provider: Arc<dyn CredentialsProvider>,
}

impl FileProfile {
    /// Reads `path` and builds the provider of `profile` (the file's default when `None`).
    pub(crate) fn load(
        path: PathBuf,
        format: Format,
        profile: Option<String>,
        context: Context,
    ) -> Result<Self, CredentialsError> {
        let text = std::fs::read(&path).map_err(|e| CredentialsError::NotConfigured {
            provider: format.provider(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let loaded = build_loaded(&text, &path, format, profile.as_deref(), &context)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                format,
                profile,
                context,
                current: RwLock::new(loaded),
            }),
            watcher: None,
        })
    }

    /// Re-reads the file every `interval` and reloads when its contents changed.
    pub(crate) fn watch(mut self, interval: Duration) -> Self {
        let shared = Arc::downgrade(&self.shared);
        let watch = async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.reload().await;
            }
        };
        // Logs go to the subscriber current at start-up (the gateway's telemetry).
        self.watcher = Some(tokio::spawn(watch.with_current_subscriber()));
        self
    }
}

impl Shared {
    fn provider(&self) -> Arc<dyn CredentialsProvider> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current.provider)
    }

    fn digest(&self) -> [u8; 32] {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .digest
    }

    /// Re-reads the file; a changed, valid file replaces the provider. A broken or missing file
    /// keeps the last good one (and says so), so a half-written file never stops the gateway.
    async fn reload(&self) {
        let metrics = &self.context.metrics;
        let text = match tokio::fs::read(&self.path).await {
            Ok(text) => zeroize::Zeroizing::new(text),
            Err(err) => {
                metrics.config_reloaded("credentials", false);
                tracing::warn!(file = %self.path.display(), error = %err, "cannot re-read the credentials file; keeping the credentials already loaded");
                return;
            }
        };
        if Sha256::digest(&text[..]).as_slice() == self.digest() {
            return;
        }
        match build_loaded(
            &text,
            &self.path,
            self.format,
            self.profile.as_deref(),
            &self.context,
        ) {
            Ok(loaded) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
                metrics.config_reloaded("credentials", true);
                tracing::info!(file = %self.path.display(), provider = self.format.provider(), "credentials file changed; new credentials loaded");
            }
            Err(err) => {
                metrics.config_reloaded("credentials", false);
                tracing::warn!(file = %self.path.display(), error = %err, "the changed credentials file is not usable; keeping the credentials already loaded");
            }
        }
    }
}

#[async_trait::async_trait]
impl CredentialsProvider for FileProfile {
    fn name(&self) -> &'static str {
        self.shared.format.provider()
    }

    async fn credential(&self) -> Result<Credential, CredentialsError> {
        self.shared.provider().credential().await
    }

    async fn reload(&self) {
        self.shared.reload().await;
    }

    fn rejected_as_expired(&self, credential: &Credential) {
        self.shared.provider().rejected_as_expired(credential);
    }
}

impl Drop for FileProfile {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
    }
}

impl std::fmt::Debug for FileProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileProfile")
            .field("path", &self.shared.path)
            .field("format", &self.shared.format)
            .field("profile", &self.shared.profile)
            .finish_non_exhaustive()
    }
}

fn build_loaded(
    text: &[u8],
    path: &Path,
    format: Format,
    profile: Option<&str>,
    context: &Context,
) -> Result<Loaded, CredentialsError> {
    let provider = format.provider();
    let not_configured = |reason: String| CredentialsError::NotConfigured {
        provider,
        reason: format!("{}: {reason}", path.display()),
    };
    let text = std::str::from_utf8(text).map_err(|_| not_configured("not UTF-8".into()))?;
    let spec = match format {
        Format::Ini => ini_spec(text, profile),
        Format::CliJson => cli_spec(text, profile),
    }
    .map_err(not_configured)?;
    Ok(Loaded {
        digest: Sha256::digest(text.as_bytes()).into(),
        provider: build(spec, context, provider),
    })
}

/// Turns a profile into a provider; temporary credentials get a refreshing cache.
fn build(spec: Spec, context: &Context, provider: &'static str) -> Arc<dyn CredentialsProvider> {
    match spec {
        Spec::AccessKey { id, secret, token } => Arc::new(StaticProvider::new(Credential::new(
            id, secret, token, None, provider,
        ))),
        Spec::RamRoleArn {
            base,
            role_arn,
            session_name,
            duration,
            sts_region,
        } => Arc::new(context.refreshing(RamRoleArn {
            sts: context.sts(sts_region.as_deref()),
            base: build(*base, context, provider),
            session: context.session(role_arn, session_name, duration),
        })),
        Spec::EcsRamRole { role_name } => Arc::new(context.refreshing(EcsRamRole {
            http: context.imds_http.clone(),
            endpoint: context.imds_endpoint.clone(),
            role_name,
            imdsv1_disabled: context.imdsv1_disabled,
        })),
        Spec::OidcRoleArn {
            role_arn,
            oidc_provider_arn,
            token_file,
            session_name,
            duration,
            sts_region,
        } => Arc::new(context.refreshing(OidcRoleArn {
            sts: context.sts(sts_region.as_deref()),
            session: context.session(role_arn, session_name, duration),
            oidc_provider_arn,
            oidc_token_file: token_file,
        })),
    }
}

/// Parses an INI file into sections of `key = value`. `#` and `;` start comments (also after a
/// value, as the official Python library strips them).
fn parse_ini(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let line = strip_inline_comment(line).trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some((key, value)) = line.split_once('=') {
            let section = current
                .as_ref()
                .ok_or_else(|| format!("line {}: a key before any [profile]", number + 1))?;
            sections
                .entry(section.clone())
                .or_default()
                .insert(key.trim().to_string(), value.trim().to_string());
        } else {
            return Err(format!(
                "line {}: expected `key = value` or `[profile]`",
                number + 1
            ));
        }
    }
    Ok(sections)
}

/// Cuts a ` #` or ` ;` comment off a line.
fn strip_inline_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for i in 1..bytes.len() {
        if matches!(bytes[i], b'#' | b';') && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

fn ini_spec(text: &str, profile: Option<&str>) -> Result<Spec, String> {
    let sections = parse_ini(text)?;
    let name = profile.unwrap_or("default");
    let section = sections
        .get(name)
        .ok_or_else(|| format!("no [{name}] profile"))?;
    let get = |key: &str| section.get(key).filter(|v| !v.is_empty()).cloned();
    let need = |key: &str| get(key).ok_or_else(|| format!("[{name}] has no {key}"));
    let kind = need("type")?;
    let access_key = |token: Option<Secret>| -> Result<Spec, String> {
        Ok(Spec::AccessKey {
            id: need("access_key_id")?,
            secret: Secret::new(need("access_key_secret")?),
            token,
        })
    };
    match kind.as_str() {
        "access_key" => access_key(None),
        "sts" => access_key(Some(Secret::new(need("security_token")?))),
        "ram_role_arn" => Ok(Spec::RamRoleArn {
            base: Box::new(access_key(None)?),
            role_arn: need("role_arn")?,
            session_name: get("role_session_name"),
            duration: None,
            sts_region: get("sts_region"),
        }),
        "ecs_ram_role" => Ok(Spec::EcsRamRole {
            role_name: get("role_name"),
        }),
        "oidc_role_arn" => Ok(Spec::OidcRoleArn {
            role_arn: need("role_arn")?,
            oidc_provider_arn: need("oidc_provider_arn")?,
            token_file: PathBuf::from(need("oidc_token_file_path")?),
            session_name: get("role_session_name"),
            duration: None,
            sts_region: get("sts_region"),
        }),
        other => Err(format!(
            "[{name}] has type {other:?}; supported: access_key, sts, ram_role_arn, ecs_ram_role, oidc_role_arn"
        )),
    }
}

#[derive(serde::Deserialize)]
struct CliConfig {
    #[serde(default)]
    current: Option<String>,
    #[serde(default)]
    profiles: Vec<BTreeMap<String, serde_json::Value>>,
}

fn cli_spec(text: &str, profile: Option<&str>) -> Result<Spec, String> {
    let config: CliConfig =
        serde_json::from_str(text).map_err(|e| format!("not an Aliyun CLI config: {e}"))?;
    let name = profile
        .map(str::to_string)
        .or(config.current.clone())
        .ok_or("no profile named and no \"current\" profile")?;
    cli_profile_spec(&config, &name, 0)
}

fn cli_profile_spec(config: &CliConfig, name: &str, depth: usize) -> Result<Spec, String> {
    if depth > 4 {
        return Err(format!(
            "profile {name:?}: source_profile chain too long (a loop?)"
        ));
    }
    let profile = config
        .profiles
        .iter()
        .find(|p| p.get("name").and_then(|v| v.as_str()) == Some(name))
        .ok_or_else(|| format!("no profile named {name:?}"))?;
    let get = |key: &str| {
        profile
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let need = |key: &str| get(key).ok_or_else(|| format!("profile {name:?} has no {key}"));
    let duration = profile
        .get("expired_seconds")
        .and_then(|v| v.as_u64())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let access_key = |token: Option<Secret>| -> Result<Spec, String> {
        Ok(Spec::AccessKey {
            id: need("access_key_id")?,
            secret: Secret::new(need("access_key_secret")?),
            token,
        })
    };
    let mode = need("mode")?;
    match mode.as_str() {
        "AK" => access_key(None),
        "StsToken" => access_key(Some(Secret::new(need("sts_token")?))),
        "RamRoleArn" | "ChainableRamRoleArn" => {
            let base = if mode == "RamRoleArn" {
                access_key(None)?
            } else {
                cli_profile_spec(config, &need("source_profile")?, depth + 1)?
            };
            Ok(Spec::RamRoleArn {
                base: Box::new(base),
                role_arn: need("ram_role_arn")?,
                session_name: get("ram_session_name"),
                duration,
                sts_region: get("sts_region"),
            })
        }
        "EcsRamRole" => Ok(Spec::EcsRamRole {
            role_name: get("ram_role_name"),
        }),
        "OIDC" => Ok(Spec::OidcRoleArn {
            role_arn: need("ram_role_arn")?,
            oidc_provider_arn: need("oidc_provider_arn")?,
            token_file: PathBuf::from(need("oidc_token_file")?),
            session_name: get("ram_session_name"),
            duration,
            sts_region: get("sts_region"),
        }),
        other => Err(format!(
            "profile {name:?} has mode {other:?}; supported: AK, StsToken, RamRoleArn, ChainableRamRoleArn, EcsRamRole, OIDC"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_reads_the_documented_example() {
        let text = "[default]\ntype = access_key                  # Authentication method is access_key\naccess_key_id = foo                # Key\naccess_key_secret = bar            # Secret\n\n[project1]\ntype = ecs_ram_role\nrole_name = EcsRamRoleTest\n\n[project2]\ntype = ram_role_arn\naccess_key_id = foo\naccess_key_secret = bar\nrole_arn = role_arn\nrole_session_name = session_name\n\n[project3]\ntype=oidc_role_arn\noidc_provider_arn=oidc_provider_arn\noidc_token_file_path=oidc_token_file_path\nrole_arn=role_arn\nrole_session_name=session_name\n";
        match ini_spec(text, None).unwrap() {
            Spec::AccessKey { id, secret, token } => {
                assert_eq!(id, "foo");
                assert_eq!(secret.expose(), "bar");
                assert!(token.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ini_spec(text, Some("project1")).unwrap(),
            Spec::EcsRamRole { role_name: Some(r) } if r == "EcsRamRoleTest"
        ));
        assert!(matches!(
            ini_spec(text, Some("project2")).unwrap(),
            Spec::RamRoleArn { role_arn, session_name: Some(s), .. } if role_arn == "role_arn" && s == "session_name"
        ));
        assert!(matches!(
            ini_spec(text, Some("project3")).unwrap(),
            Spec::OidcRoleArn { token_file, .. } if token_file == Path::new("oidc_token_file_path")
        ));
    }

    #[test]
    fn ini_errors_name_the_profile_and_key_but_no_value() {
        let err =
            ini_spec("[default]\ntype = access_key\naccess_key_id = foo\n", None).unwrap_err();
        assert!(err.contains("access_key_secret"), "{err}");
        assert!(!err.contains("foo"), "{err}");
        assert!(
            ini_spec("[a]\ntype = access_key\n", None)
                .unwrap_err()
                .contains("[default]")
        );
        assert!(
            ini_spec("[default]\ntype = rsa_key_pair\n", None)
                .unwrap_err()
                .contains("rsa_key_pair")
        );
        assert!(
            ini_spec("key = value\n", None)
                .unwrap_err()
                .contains("line 1")
        );
        // A `#` inside a value without a space before it is part of the value.
        match ini_spec(
            "[default]\ntype=access_key\naccess_key_id=a#b\naccess_key_secret=s\n",
            None,
        )
        .unwrap()
        {
            Spec::AccessKey { id, .. } => assert_eq!(id, "a#b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_config_reads_the_documented_modes() {
        let text = r#"{
          "current": "AK",
          "profiles": [
            {"name": "AK", "mode": "AK", "access_key_id": "access_key_id", "access_key_secret": "access_key_secret"},
            {"name": "Sts", "mode": "StsToken", "access_key_id": "STS.id", "access_key_secret": "s", "sts_token": "t"},
            {"name": "RamRoleArn", "mode": "RamRoleArn", "access_key_id": "access_key_id", "access_key_secret": "access_key_secret",
             "ram_role_arn": "ram_role_arn", "ram_session_name": "ram_session_name", "expired_seconds": 3600, "sts_region": "cn-hangzhou"},
            {"name": "EcsRamRole", "mode": "EcsRamRole", "ram_role_name": "ram_role_name"},
            {"name": "OIDC", "mode": "OIDC", "ram_role_arn": "ram_role_arn", "oidc_token_file": "path/to/oidc/file",
             "oidc_provider_arn": "oidc_provider_arn", "ram_session_name": "ram_session_name", "expired_seconds": 3600, "sts_region": "cn-hangzhou"},
            {"name": "ChainableRamRoleArn", "mode": "ChainableRamRoleArn", "source_profile": "AK",
             "ram_role_arn": "ram_role_arn", "ram_session_name": "ram_session_name", "expired_seconds": 3600, "sts_region": "cn-hangzhou"},
            {"name": "Loop", "mode": "ChainableRamRoleArn", "source_profile": "Loop", "ram_role_arn": "r"}
          ]
        }"#;
        assert!(
            matches!(cli_spec(text, None).unwrap(), Spec::AccessKey { id, token: None, .. } if id == "access_key_id")
        );
        assert!(matches!(
            cli_spec(text, Some("Sts")).unwrap(),
            Spec::AccessKey { token: Some(_), .. }
        ));
        assert!(matches!(
            cli_spec(text, Some("RamRoleArn")).unwrap(),
            Spec::RamRoleArn { duration: Some(d), sts_region: Some(r), .. } if d == Duration::from_secs(3600) && r == "cn-hangzhou"
        ));
        assert!(matches!(
            cli_spec(text, Some("EcsRamRole")).unwrap(),
            Spec::EcsRamRole { role_name: Some(_) }
        ));
        assert!(matches!(
            cli_spec(text, Some("OIDC")).unwrap(),
            Spec::OidcRoleArn { .. }
        ));
        assert!(matches!(
            cli_spec(text, Some("ChainableRamRoleArn")).unwrap(),
            Spec::RamRoleArn { base, .. } if matches!(*base, Spec::AccessKey { .. })
        ));
        assert!(cli_spec(text, Some("Loop")).unwrap_err().contains("loop"));
        assert!(cli_spec(text, Some("Nope")).unwrap_err().contains("Nope"));
    }
}
