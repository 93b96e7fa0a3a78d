//! The HTTP client every call to Alibaba Cloud starts from, the form `POST` that Dds and STS
//! requests signed with V2 travel in, and error chains for logs.

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

/// The HTTP client every call the gateway makes to Alibaba Cloud starts from (Dds, STS, the
/// metadata service, credentials URIs): rustls with ring, the gateway's user agent, and no
/// redirects, which would send a signed or token-bearing request somewhere nobody configured.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dds-gateway/", env!("CARGO_PKG_VERSION")))
}

/// A `POST` of a form body. Everything goes in the body, none in the URL: URLs end up in proxy
/// and error logs, and the body carries the security token and signature. Alibaba signs the
/// union of query and body parameters, so both placements verify the same.
pub(crate) fn form_post(
    http: &reqwest::Client,
    url: Url,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .body(body)
}

/// `error: cause: cause` for logs.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
