//! Names shared by the code that emits telemetry and the layers that turn it into metrics, so
//! that a metric never depends on the wording of a log line.

/// The upstream attempt's span (made by [`alibaba::trace`](crate::alibaba::trace)) and the
/// fields the metrics layer reads from it.
pub mod upstream {
    /// The `tracing` name of an attempt's span (the OpenTelemetry name is `Dds.<Action>`).
    pub const SPAN_NAME: &str = "alibaba.request";
    pub const ACTION: &str = "alibaba_cloud.action";
    pub const HTTP_STATUS: &str = "http.response.status_code";
    pub const ERROR_CODE: &str = "alibaba_cloud.error_code";
    pub const ERROR_TYPE: &str = "error.type";
}

/// The field on the event a credential fetch or refresh ends with: `"ok"` or `"error"`. Counted
/// as `dds_gateway.credentials.refreshes{outcome}`; `tracing` macros take field names as
/// identifiers, so emitters write `credential_outcome = "ok"`, and a test pins the two together.
pub const CREDENTIAL_OUTCOME: &str = "credential_outcome";
