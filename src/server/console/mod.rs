//! The web console: a few hand-written files (HTML, JavaScript modules, CSS) embedded in the
//! binary and served under `/ui/` on the main port, so that the page and the JSON API share one
//! origin and the page needs nothing from elsewhere (clusters are often air-gapped).
//!
//! The console is a view over the JSON API and has no power of its own: the files are public
//! (they hold no data), and every call the page makes goes through the same gate as any other
//! caller's (bearer token, policy, rate limits). Each answer carries a strict
//! Content-Security-Policy (no inline script, nothing from another origin, no framing), and an
//! `ETag` so that a browser revalidates instead of downloading again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest as _, Sha256};
use tonic::body::Body;

/// Where the console lives.
pub(crate) const PREFIX: &str = "/ui/";

/// The policy of every console answer: scripts and styles from the gateway only (no inline
/// script), calls to the gateway only, no framing, no `<base>`, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    /// The path under [`PREFIX`]; `index.html` also answers the bare prefix.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// The console's files, embedded at build time.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/console.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("assets/api.js"),
    },
    Asset {
        name: "view.js",
        content_type: JS,
        body: include_bytes!("assets/view.js"),
    },
    Asset {
        name: "fleet.js",
        content_type: JS,
        body: include_bytes!("assets/fleet.js"),
    },
    Asset {
        name: "rollouts.js",
        content_type: JS,
        body: include_bytes!("assets/rollouts.js"),
    },
    Asset {
        name: "activity.js",
        content_type: JS,
        body: include_bytes!("assets/activity.js"),
    },
];

/// The names of the embedded files, for tests and the start-up log.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

/// The tower layer; add it outermost, so that the console's files never reach the RPC stack.
/// When the console is off, every request passes through (and `/ui/` is an unknown route).
#[derive(Debug, Clone)]
pub(crate) struct ConsoleLayer {
    files: Option<Arc<Files>>,
}

#[derive(Debug)]
struct Files {
    /// Each asset with its strong `ETag` (a digest of its bytes).
    assets: Vec<(&'static Asset, HeaderValue)>,
}

impl ConsoleLayer {
    /// The console when `enabled`, else a layer that passes everything on.
    pub(crate) fn new(enabled: bool) -> Self {
        let files = enabled.then(|| {
            Arc::new(Files {
                assets: ASSETS.iter().map(|a| (a, etag(a.body))).collect(),
            })
        });
        Self { files }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.files.is_some()
    }
}

/// `"<first 16 bytes of the SHA-256, hex>"`.
fn etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

impl<S> tower::Layer<S> for ConsoleLayer {
    type Service = ConsoleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsoleService {
            inner,
            files: self.files.clone(),
        }
    }
}

/// See [`ConsoleLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ConsoleService<S> {
    inner: S,
    files: Option<Arc<Files>>,
}

impl<S, B> tower::Service<http::Request<B>> for ConsoleService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(files) = &self.files
            && is_console(request.uri().path())
        {
            let response = files.answer(&request);
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// `/ui` and everything under `/ui/`.
fn is_console(path: &str) -> bool {
    path == "/ui" || path.starts_with(PREFIX)
}

impl Files {
    fn answer<B>(&self, request: &http::Request<B>) -> http::Response<Body> {
        let path = request.uri().path();
        if path == "/ui" {
            let mut response = plain(StatusCode::PERMANENT_REDIRECT, "the console is at /ui/\n");
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static(PREFIX));
            return response;
        }
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console's files are read with GET or HEAD\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let name = match &path[PREFIX.len()..] {
            "" => "index.html",
            name => name,
        };
        let Some((asset, etag)) = self.assets.iter().find(|(a, _)| a.name == name) else {
            return plain(StatusCode::NOT_FOUND, "no such file in the console\n");
        };
        let fresh = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|tags| matches_etag(tags, etag));
        let (status, body) = if fresh {
            (StatusCode::NOT_MODIFIED, &[][..])
        } else if method == Method::HEAD {
            (StatusCode::OK, &[][..])
        } else {
            (StatusCode::OK, asset.body)
        };
        let mut response =
            http::Response::new(Body::new(Full::new(bytes::Bytes::from_static(body))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        secure(headers);
        headers.insert(header::ETAG, etag.clone());
        // Always revalidate: a new gateway version serves new files under the same names.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if status == StatusCode::OK {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        }
        response
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by their value.
fn matches_etag(tags: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(tags) = tags.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The security headers of every console answer.
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A short text answer with the security headers.
fn plain(status: StatusCode, text: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Full::new(bytes::Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    secure(headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_strong_weak_and_any() {
        let tag = etag(b"console");
        let text = tag.to_str().unwrap().to_string();
        assert!(text.starts_with('"') && text.ends_with('"') && text.len() == 34);
        for header in [
            text.clone(),
            format!("W/{text}"),
            "\"x\", ".to_string() + &text,
            "*".to_string(),
        ] {
            assert!(
                matches_etag(&HeaderValue::from_str(&header).unwrap(), &tag),
                "{header}"
            );
        }
        assert!(!matches_etag(&HeaderValue::from_static("\"other\""), &tag));
        assert_ne!(etag(b"a"), etag(b"b"));
    }

    #[test]
    fn no_inline_script_in_the_page() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        // Every script is an external module; no handler attributes, no `javascript:` links.
        for found in page.match_indices("<script") {
            let tag = &page[found.0..found.0 + page[found.0..].find('>').unwrap()];
            assert!(tag.contains("src="), "inline script: {tag}");
        }
        for bad in [
            " onclick=",
            " onload=",
            " onsubmit=",
            "javascript:",
            " style=",
        ] {
            assert!(!page.contains(bad), "{bad}");
        }
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for outside in ["http://", "https://", "//cdn"] {
                // The SVG namespace is a name, not a fetch.
                let fetches = text
                    .match_indices(outside)
                    .any(|(i, _)| !text[i..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!fetches, "{} refers to {outside}", asset.name);
            }
        }
    }
}
