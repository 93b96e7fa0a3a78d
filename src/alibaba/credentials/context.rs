//! What every credentials provider is built with: HTTP clients, endpoints, session and refresh
//! settings, and the metrics they count in.

use std::time::{Duration, SystemTime};

use reqwest::Url;

use super::cache::{Fetch, RefreshPolicy, Refreshing};
use super::sts::{self, RoleSession, Sts};

/// What every provider needs to be built: HTTP clients, endpoints, session and refresh settings.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub http: reqwest::Client,
    /// The metadata service answers in milliseconds or not at all: short timeouts.
    pub imds_http: reqwest::Client,
    /// The configured STS endpoint (`credentials.sts_endpoint`, else `ALIBABA_CLOUD_STS_ENDPOINT`),
    /// if any; it wins over a profile's `sts_region` and `ALIBABA_CLOUD_STS_REGION`.
    pub sts_endpoint: Option<Url>,
    pub sts_region: Option<String>,
    pub vpc: bool,
    pub imds_endpoint: Url,
    pub imdsv1_disabled: bool,
    pub session_duration: Duration,
    pub role_session_name: Option<String>,
    pub policy: RefreshPolicy,
    /// Where fetches, refreshes and credential file reloads are counted.
    pub metrics: crate::telemetry::Metrics,
}

impl Context {
    /// `fetch` behind a cache that refreshes it as the policy says, counting in the metrics.
    pub(crate) fn refreshing<F: Fetch>(&self, fetch: F) -> Refreshing<F> {
        Refreshing::new(fetch, self.policy, self.metrics.clone())
    }

    /// The STS endpoint: configured, else the region's (a profile's or `ALIBABA_CLOUD_STS_REGION`),
    /// else the public one.
    #[expect(
        clippy::expect_used,
        reason = "a constant URL, pinned by a test, always parses"
    )]
    pub(crate) fn sts(&self, profile_region: Option<&str>) -> Sts {
        let endpoint = self
            .sts_endpoint
            .clone()
            .or_else(|| {
                profile_region
                    .or(self.sts_region.as_deref())
                    .and_then(|region| sts::regional_endpoint(region, self.vpc))
            })
            .unwrap_or_else(|| {
                Url::parse(sts::DEFAULT_ENDPOINT)
                    .expect("the default STS endpoint constant is a valid URL")
            });
        Sts::new(self.http.clone(), endpoint)
    }

    pub(crate) fn session(
        &self,
        role_arn: String,
        session_name: Option<String>,
        duration: Option<Duration>,
    ) -> RoleSession {
        RoleSession {
            role_arn,
            role_session_name: session_name
                .or_else(|| self.role_session_name.clone())
                .unwrap_or_else(default_session_name),
            duration: duration.unwrap_or(self.session_duration),
        }
    }
}

/// `dds-gateway-<unix seconds>`, like the official libraries' `credentials-<lang>-<unix>`.
fn default_session_name() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("dds-gateway-{now}")
}

#[cfg(test)]
mod tests {
    use reqwest::Url;

    use super::super::{ecs, sts};

    #[test]
    fn the_default_endpoints_are_urls() {
        assert!(Url::parse(sts::DEFAULT_ENDPOINT).is_ok());
        assert!(Url::parse(ecs::DEFAULT_ENDPOINT).is_ok());
    }
}
