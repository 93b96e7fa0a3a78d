//! The admin HTTP server (`telemetry.admin_listen`): `GET /metrics` in the Prometheus text
//! format. Separate from the gRPC port, so that scraping needs no caller token and the port can
//! stay on loopback or a private interface.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::Telemetry;

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    telemetry: Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        telemetry.set_admin_addr(addr);
        tracing::info!(%addr, "admin endpoint listening (GET /metrics)");
    }
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(telemetry);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, PROMETHEUS_TEXT)],
        telemetry.prometheus_text(),
    )
}
