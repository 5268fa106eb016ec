//! The answers of `/healthz`, `/readyz` and `/metrics`, for the API (which documents them in its
//! OpenAPI description) and the worker alike.

use std::future::Future;
use std::sync::Arc;

use crate::health::{self, Check};
use crate::telemetry;
use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// 200 when every check passes (or only lags), 503 otherwise, with the checks' states.
pub fn readiness(checks: &[Check]) -> Response {
    let (ready, body) = health::report(checks);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The metrics of this process in the Prometheus text format.
pub fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::metrics_handle().render(),
    )
        .into_response()
}

/// `/healthz`, `/readyz` (from `checks`) and `/metrics`: the whole HTTP surface of a process with no API.
pub fn router<F, Fut>(checks: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Check>> + Send,
{
    let checks = Arc::new(checks);
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move { readiness(&checks().await) }
            }),
        )
        .route("/metrics", get(|| async { metrics() }))
}
