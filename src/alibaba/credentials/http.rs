//! The HTTP plumbing shared by the credential sources that answer over HTTP (STS, the ECS
//! metadata service, credentials URIs): one client shape, capped bodies, and errors that never
//! carry a URL.

use std::time::Duration;

use zeroize::Zeroizing;

/// Credential answers are a few hundred bytes; anything past this is not one.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A client for credential endpoints, with the given timeouts.
pub(super) fn client(
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    crate::alibaba::http::http_client_builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", send_error(e)))
}

/// Reads an answer's body, at most [`MAX_BODY_BYTES`]; zeroized when dropped because it holds
/// secrets.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(send_error)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("answer larger than {MAX_BODY_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A reqwest failure as text, without its URL (a credentials URI may carry a token).
pub(super) fn send_error(err: reqwest::Error) -> String {
    crate::alibaba::http::error_chain(&err.without_url())
}
