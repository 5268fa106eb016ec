//! What operators and tools read: liveness, readiness, metrics and this API's own description.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chatsys_runtime::health::Readiness;
use chatsys_runtime::ops;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Shared, openapi};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The body of `/healthz`.
#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness
///
/// 200 while the process runs, whatever the state of the services behind it: a liveness probe that
/// failed when the database did would restart healthy pods for nothing.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "The process runs", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness
///
/// 200 when every backing service answers (`degraded` when search lags behind), 503 naming the ones that
/// do not. The reasons are in the logs, not here.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready, or degraded", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(State(state): Shared) -> Response {
    ops::readiness(&state.readiness.checks().await)
}

/// Metrics
///
/// Counters and histograms of requests and of the backing services, in the Prometheus text format.
/// 404 here when the API serves them on a port of their own (`CHATSYS_METRICS_LISTEN`).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String),
        (status = 404, description = "Served on the metrics port instead", body = ErrorBody)))]
pub async fn metrics(State(state): Shared) -> Response {
    if state.metrics_elsewhere {
        return ApiError::for_status(axum::http::StatusCode::NOT_FOUND).into_response();
    }
    ops::metrics()
}

/// This document
///
/// The OpenAPI 3.1 description of this API, to generate clients from.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "An OpenAPI 3.1 document",
        body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
}
