//! `/healthz`, `/readyz` and `/metrics` for the kubelet and Prometheus.

use crate::error::{Error, Result};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A failing watch is retried with a backoff that stays under this; an error no older than it means
/// the watches are still failing.
const WATCH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Whether the controller's watches deliver: the last watch error and when it happened.
#[derive(Default)]
pub struct WatchHealth {
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl WatchHealth {
    pub fn failed(&self, error: &str) {
        *self.lock() = Some((Instant::now(), error.to_string()));
    }

    /// `Err` with the last error while a watch failed within the window.
    pub fn check(&self) -> std::result::Result<(), String> {
        match &*self.lock() {
            Some((at, error)) if at.elapsed() < WATCH_FAILURE_WINDOW => Err(error.clone()),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub fn router(metrics: PrometheusHandle, watches: Arc<WatchHealth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match watches.check() {
                    Ok(()) => (StatusCode::OK, "ok".to_string()),
                    Err(error) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("watches failing: {error}"),
                    ),
                };
                std::future::ready(answer)
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    watches: Arc<WatchHealth>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(Error::Serve)?;
    axum::serve(listener, router(metrics, watches))
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::{WatchHealth, router};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::sync::Arc;
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
        let watches = Arc::new(WatchHealth::default());
        let app = router(recorder.handle(), watches.clone());
        metrics::with_local_recorder(&recorder, || {
            crate::metrics::describe();
            metrics::counter!(crate::metrics::RECONCILES).increment(3);
        });
        assert_eq!(
            get(app.clone(), "/healthz").await,
            (StatusCode::OK, "ok".to_string())
        );
        assert_eq!(
            get(app.clone(), "/readyz").await,
            (StatusCode::OK, "ok".to_string())
        );
        let (status, body) = get(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("chatsys_operator_reconciles_total 3"),
            "{body}"
        );
        watches.failed("watch of chatsystems: 403 Forbidden");
        assert_eq!(
            get(app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "watches failing: watch of chatsystems: 403 Forbidden".to_string()
            )
        );
    }
}
