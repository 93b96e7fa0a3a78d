//! The Alibaba Cloud API client: one pooled HTTPS client that turns a Dds operation into a
//! signed RPC-style request (`POST`, product `Dds`, version `2015-12-01`, signature V2 or V3 as
//! configured), sends it to the region's endpoint, and reads the answer ([`response`]).
//! What a failure means, down to its gRPC status, is [`codes`]' answer.
//!
//! Requests are signed with the time and a nonce from one injected [`Clock`]: nothing here reads
//! the wall clock or a random source for a signature (`clippy.toml` denies it).
#![deny(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tracing::Instrument as _;

use super::clock::{Clock, SystemClock};
use super::codes;
use super::credentials::credential::{Credential, CredentialsProvider};
use super::dds::{API_VERSION, PRODUCT, action};
use super::endpoint;
use super::http::{error_chain, form_post, http_client_builder};
use super::inventory::{self, InstanceFilter, InstanceType, Page};
use super::quota::{NoPlace, Place, Quota};
use super::response::{self, Answer, AvailableEngineVersions, CallError, InstanceAttribute};
use super::sign::{sign_v3, v2_form_body};
use crate::config::{AlibabaConfig, SignatureVersion};
use crate::telemetry::Metrics;

/// The most of an answer body the gateway reads; Dds answers are a few kilobytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A Dds API client. Cheap to share behind an `Arc`; the HTTP connection pool is inside.
#[derive(Debug)]
pub struct AlibabaClient {
    http: reqwest::Client,
    endpoint: Option<Url>,
    credentials: Arc<dyn CredentialsProvider>,
    signature_version: SignatureVersion,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// The account's budget every call takes a place in, if set.
    quota: Option<Arc<Quota>>,
}

impl AlibabaClient {
    /// Builds the client. Fails only if the TLS stack cannot be set up.
    pub fn new(
        config: &AlibabaConfig,
        credentials: Arc<dyn CredentialsProvider>,
    ) -> Result<Self, reqwest::Error> {
        // Calls in flight are bounded per region by the quota, so idle connections to keep are
        // bounded by the same number: every call after the first finds one to reuse.
        let http = http_client_builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.quota.max_in_flight as usize)
            .build()?;
        Ok(Self {
            http,
            endpoint: config.endpoint.clone(),
            credentials,
            signature_version: config.signature_version,
            clock: Arc::new(SystemClock),
            metrics: Metrics::default(),
            quota: None,
        })
    }

    /// Counts each request attempt (and its duration) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes a place in `quota` before every call.
    pub fn with_quota(mut self, quota: Arc<Quota>) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Signs with the time and nonces of `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The URL a region's requests go to: the configured endpoint, or the table's host.
    /// Validation has already refused regions outside the table when no endpoint is configured.
    pub fn endpoint(&self, region_id: &str) -> Option<Url> {
        match &self.endpoint {
            Some(url) => Some(url.clone()),
            None => Url::parse(&format!("https://{}/", endpoint::host(region_id)?)).ok(),
        }
    }

    /// `UpgradeDBInstanceEngineVersion`, signed but not sent: the caller of [`send_upgrade`]
    /// decides at the last moment whether it leaves.
    ///
    /// [`send_upgrade`]: Self::send_upgrade
    pub async fn sign_upgrade(
        &self,
        region_id: &str,
        db_instance_id: &str,
        engine_version: &str,
        switch_mode: Option<&'static str>,
    ) -> Result<Signed, CallError> {
        let mut params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
            ("EngineVersion", engine_version.to_string()),
        ];
        if let Some(mode) = switch_mode {
            params.push(("SwitchMode", mode.to_string()));
        }
        self.sign(
            action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
            region_id,
            params,
        )
        .await
    }

    /// Sends a signed `UpgradeDBInstanceEngineVersion`; returns Alibaba's `RequestId`.
    pub async fn send_upgrade(&self, signed: Signed) -> Result<String, CallError> {
        self.send_upgrade_keeping_place(signed).await.0
    }

    /// [`send_upgrade`](Self::send_upgrade), handing the call's place in the budget (if any) to
    /// the caller instead of giving it back: its line place is free already (the answer is in),
    /// and the caller gives the shared place back, by dropping it or with a step of its own.
    pub(crate) async fn send_upgrade_keeping_place(
        &self,
        signed: Signed,
    ) -> (Result<String, CallError>, Option<Place>) {
        let (body, place) = self.send_keeping_place(signed).await;
        let sent = match body {
            Ok(body) => serde_json::from_slice::<response::RequestIdBody>(&body.bytes)
                .map(|parsed| parsed.request_id)
                .map_err(|_| CallError::Unreadable {
                    http_status: body.http_status,
                }),
            Err(err) => Err(err),
        };
        (sent, place)
    }

    /// `DescribeDBInstanceAttribute`; `Ok(None)` when the answer lists no such instance.
    pub async fn describe_db_instance_attribute(
        &self,
        region_id: &str,
        db_instance_id: &str,
    ) -> Result<Option<InstanceAttribute>, CallError> {
        let params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
        ];
        let body = self
            .call(action::DESCRIBE_DB_INSTANCE_ATTRIBUTE, region_id, params)
            .await?;
        response::parse_instance_attribute(&body.bytes, db_instance_id).map_err(|()| {
            CallError::Unreadable {
                http_status: body.http_status,
            }
        })
    }

    /// `DescribeAvailableEngineVersion`: the versions the instance can be upgraded to.
    pub async fn describe_available_engine_version(
        &self,
        region_id: &str,
        db_instance_id: &str,
    ) -> Result<AvailableEngineVersions, CallError> {
        let params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
        ];
        let body = self
            .call(action::DESCRIBE_AVAILABLE_ENGINE_VERSION, region_id, params)
            .await?;
        response::parse_available_engine_versions(&body.bytes).map_err(|()| CallError::Unreadable {
            http_status: body.http_status,
        })
    }

    /// One page of `DescribeDBInstances`: the instances of `region_id` and `instance_type`
    /// that match what `filter` sends to Alibaba.
    pub async fn describe_db_instances(
        &self,
        filter: &InstanceFilter,
        region_id: &str,
        instance_type: InstanceType,
        page_number: usize,
    ) -> Result<Page, CallError> {
        let params = filter.params(region_id, instance_type, page_number);
        let body = self
            .call(action::DESCRIBE_DB_INSTANCES, region_id, params)
            .await?;
        inventory::parse_page(&body.bytes, region_id, instance_type).map_err(|()| {
            CallError::Unreadable {
                http_status: body.http_status,
            }
        })
    }

    /// Signs and sends one RPC call and returns the body of a successful (2xx) answer.
    #[tracing::instrument(skip(self, params), fields(product = PRODUCT, region_id = %region_id))]
    pub async fn call(
        &self,
        action: &'static str,
        region_id: &str,
        params: Vec<(&'static str, String)>,
    ) -> Result<Answer, CallError> {
        let signed = self.sign(action, region_id, params).await?;
        self.send(signed).await
    }

    /// Everything before the send, which may wait (a credential refresh, STS): resolves the
    /// credential and signs the request afresh (a new nonce and the current time).
    pub async fn sign(
        &self,
        action: &'static str,
        region_id: &str,
        params: Vec<(&'static str, String)>,
    ) -> Result<Signed, CallError> {
        let url = self
            .endpoint(region_id)
            .ok_or(CallError::Unsupported("region has no endpoint"))?;
        // The place is taken before signing (a signature ages) and held until the answer is in.
        let place = match &self.quota {
            Some(quota) => {
                let waiting = std::time::Instant::now();
                let place = quota.acquire(region_id, super::quota::deadline()).await;
                let outcome = match &place {
                    Ok(_) => "granted",
                    Err(NoPlace::DeadlinePassed) => "deadline",
                    Err(NoPlace::Exhausted(_)) => "exhausted",
                };
                self.metrics.quota_wait(outcome, waiting.elapsed());
                Some(place.map_err(|e| match e {
                    NoPlace::DeadlinePassed => CallError::DeadlinePassed,
                    NoPlace::Exhausted(e) => CallError::QuotaExhausted {
                        retry_after: e.retry_after,
                    },
                })?)
            }
            None => None,
        };
        let credential = self
            .credentials
            .credential()
            .instrument(crate::alibaba::trace::credentials_span())
            .await?;
        let (time, nonce) = (self.clock.now(), self.clock.nonce());
        let request = match self.signature_version {
            SignatureVersion::V2 => {
                let body = v2_form_body(action, API_VERSION, &credential, params, time, nonce);
                form_post(&self.http, url.clone(), body)
            }
            SignatureVersion::V3 => sign_v3(
                &self.http,
                url.clone(),
                action,
                &credential,
                &params,
                time,
                nonce,
            )
            .map_err(CallError::Unsupported)?,
        };
        Ok(Signed {
            action,
            region_id: region_id.to_string(),
            url,
            request,
            credential,
            place,
        })
    }

    /// Sends a signed request: the bytes leave here, in one CLIENT span.
    pub async fn send(&self, signed: Signed) -> Result<Answer, CallError> {
        self.send_keeping_place(signed).await.0
    }

    /// [`send`](Self::send), handing the place back to the caller once the answer is in (see
    /// [`send_upgrade_keeping_place`](Self::send_upgrade_keeping_place)).
    async fn send_keeping_place(
        &self,
        signed: Signed,
    ) -> (Result<Answer, CallError>, Option<Place>) {
        let span = crate::alibaba::trace::span(signed.action, &signed.region_id, &signed.url);
        // `traceparent` is not a signed header (neither `host`, `content-type` nor `x-acs-*`).
        let Signed {
            action,
            request,
            credential,
            place,
            ..
        } = signed;
        let request = request.headers(crate::alibaba::trace::trace_headers(&span));
        let started = std::time::Instant::now();
        let answer = send(request).instrument(span.clone()).await;
        let mut place = place;
        if let Some(place) = &mut place {
            place.answered();
        }
        let (outcome, error_code) = crate::alibaba::trace::outcome(&answer);
        self.metrics
            .upstream_attempt(action, outcome, error_code, started.elapsed());
        crate::alibaba::trace::record(&span, &answer);
        if let Err(err) = &answer
            && codes::credential_expired(err)
        {
            // The retry that follows (see `retry`) signs with a fresh credential.
            self.credentials.rejected_as_expired(&credential);
        }
        (answer, place)
    }
}

/// A request signed and ready to leave; nothing has been sent. Signatures expire (Alibaba
/// refuses timestamps 15 minutes off) and nonces are single-use: sign again for each attempt.
pub struct Signed {
    action: &'static str,
    region_id: String,
    url: Url,
    request: reqwest::RequestBuilder,
    /// What it was signed with, to drop from the cache if Alibaba says it has expired.
    credential: Credential,
    /// Its place in the account's budget, given back when the answer is in (or it is dropped).
    place: Option<Place>,
}

// The request carries the signature and any security token.
impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("action", &self.action)
            .field("region_id", &self.region_id)
            .finish_non_exhaustive()
    }
}

/// Sends one signed request and classifies the answer.
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, CallError> {
    let response = request.send().await.map_err(classify_send_error)?;
    let http_status = response.status().as_u16();
    let retry_after = response::parse_retry_after(
        response
            .headers()
            .get("x-acs-retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let bytes = read_body(response).await?;
    if (200..300).contains(&http_status) {
        return Ok(Answer { http_status, bytes });
    }
    match response::parse_error(http_status, &bytes, retry_after) {
        Some(err) => Err(CallError::Upstream(err)),
        None if http_status >= 500 => Err(CallError::OutcomeUnknown(format!(
            "http {http_status} without an alibaba error body"
        ))),
        None => Err(CallError::Unreadable { http_status }),
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer.
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let http_status = response.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify_send_error)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(CallError::Unreadable { http_status });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Sorts a reqwest failure into "never sent" and "outcome unknown". The URL is dropped from the
/// error first: it is the endpoint only, but errors must never grow a place for secrets.
fn classify_send_error(err: reqwest::Error) -> CallError {
    let err = err.without_url();
    let detail = error_chain(&err);
    if err.is_connect() {
        CallError::Unreachable(detail)
    } else {
        CallError::OutcomeUnknown(detail)
    }
}
