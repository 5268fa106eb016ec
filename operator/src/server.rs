//! `/healthz`, `/readyz` and `/metrics` for the kubelet and Prometheus.

use crate::error::{Error, Result};
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;

/// Installs the global metrics recorder; its handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))
}

pub fn router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

pub async fn serve(listen: SocketAddr, metrics: PrometheusHandle) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(Error::Serve)?;
    axum::serve(listener, router(metrics))
        .await
        .map_err(Error::Serve)
}
