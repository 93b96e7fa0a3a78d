//! Why a JSON over HTTP request makes no call: route, method, content type, size, body, query.

/// What is wrong with a JSON request before it reaches the service; [`api::error`](crate::api::error)
/// maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no route for {method} {path}; the routes are: {routes}")]
    RouteNotFound {
        method: String,
        path: String,
        routes: String,
    },
    #[error("{path} does not take {method}, only {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    #[error("the body must be JSON: send content-type: application/json (got {found:?})")]
    UnsupportedMediaType { found: String },
    #[error("the request body is larger than server.max_request_bytes ({limit} bytes)")]
    TooLarge { limit: usize },
    #[error("invalid JSON body: {detail}")]
    InvalidJson {
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("{name}: {detail}")]
    InvalidParameter { name: String, detail: String },
    #[error("the request headers take {size} bytes, more than the {limit} bytes allowed")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
}
