//! `/healthz`, `/readyz` and `/metrics` for the kubelet and Prometheus.

use crate::error::{Error, Result};
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;

/// Installs the global metrics recorder; its handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    describe_metrics();
    Ok(handle)
}

/// Help texts, and the reconcile counter at zero so a scrape before the first reconcile sees it.
fn describe_metrics() {
    metrics::describe_counter!(
        "chatsys_operator_reconciles_total",
        "Reconciles of ChatSystem resources started."
    );
    metrics::describe_counter!(
        "chatsys_operator_reconcile_errors_total",
        "Reconciles that failed, by kind of error."
    );
    metrics::describe_histogram!(
        "chatsys_operator_reconcile_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of each reconcile."
    );
    metrics::counter!("chatsys_operator_reconciles_total").absolute(0);
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

#[cfg(test)]
mod tests {
    use super::router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower::ServiceExt;

    async fn get(app: axum::Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8(bytes.to_vec()).expect("UTF-8"))
    }

    #[tokio::test]
    async fn health_and_metrics_are_served() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let app = router(recorder.handle());
        metrics::with_local_recorder(&recorder, || {
            super::describe_metrics();
            metrics::counter!("chatsys_operator_reconciles_total").increment(3);
        });
        assert_eq!(
            get(app.clone(), "/healthz").await,
            (StatusCode::OK, "ok".to_string())
        );
        assert_eq!(
            get(app.clone(), "/readyz").await,
            (StatusCode::OK, "ok".to_string())
        );
        let (status, body) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("chatsys_operator_reconciles_total 3"),
            "{body}"
        );
    }
}
