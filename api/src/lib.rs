//! chatsys-api: the REST API's routes over the chat service, started in two shapes. `serve` runs
//! against MySQL, Redis, RabbitMQ and OpenSearch (or the embedded index a worker writes); `standalone`
//! runs the whole system in one process with embedded storage, queue, cache and search. The wiring of
//! either lives in `chatsys-runtime`.

pub mod http;

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatsys_core::live::LiveSettings;
use chatsys_core::service::ChatService;
use chatsys_core::telemetry as metric;
use chatsys_runtime::Running;
use chatsys_runtime::boot::{ApiRoutes, Role, Served, boot};
use chatsys_runtime::telemetry;
use chatsys_settings::{Access, HttpSettings, ServeArgs, StandaloneArgs};

use crate::http::error::{ApiError, ErrorCode};

/// The API's routes over the wired ports: the chat service with its live streams, limits and caches.
fn app(served: Served, args: &AppArgs<'_>) -> axum::Router {
    telemetry::count_from_zero(&[
        metric::CACHE_ERRORS,
        metric::CACHE_PAGES_TOO_LARGE,
        metric::LIVE_STREAMS,
        metric::LIVE_REPAIRS,
    ]);
    let service = ChatService::with_live(
        served.ports,
        Arc::new(http::render::ApiRender),
        live_settings(args.http),
        served.stopped,
    )
    .with_hot_pages(args.hot_page_cache_bytes)
    .with_write_quota(args.access.rate_limit_per_app);
    http::router(Arc::new(http::AppState {
        service,
        readiness: served.readiness,
        admin_key: args.access.admin_key.clone(),
        max_request_bytes: args.max_request_bytes,
        body_timeout: args.http.body_timeout(),
        body_budget: http::BodyBudget::new(args.http.max_inflight_body_bytes),
        metrics_elsewhere: args.metrics_elsewhere,
        // The settings' parser took only origins, which are valid header values.
        cors_allowed_origins: args
            .access
            .cors_allowed_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect(),
        limits: http::RequestLimits {
            uri_bytes: args.http.max_uri_bytes as usize,
            headers: args.http.max_headers as usize,
            header_bytes: args.http.max_header_bytes as usize,
        },
    }))
}

/// The settings the API's routes take, from either way of running.
struct AppArgs<'a> {
    access: &'a Access,
    http: &'a HttpSettings,
    max_request_bytes: usize,
    hot_page_cache_bytes: u64,
    metrics_elsewhere: bool,
}

fn live_settings(http: &HttpSettings) -> LiveSettings {
    LiveSettings {
        heartbeat: http.event_heartbeat(),
        max_quiet: http.event_max_quiet(),
        max_behind: http.event_max_behind as usize,
        max_behind_bytes: usize::try_from(http.event_max_behind_bytes).unwrap_or(usize::MAX),
        max_lifetime: http.event_max_lifetime(),
        max_streams: http.event_max_streams(),
        max_streams_per_application: http.event_max_streams_per_app as usize,
        max_chats: http.event_max_chats as usize,
    }
}

/// What a request other than a probe gets while the API waits for its backing services.
fn starting() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServiceUnavailable,
        "starting: waiting for the backing services, retry shortly",
    )
    .into_response()
}

/// The API against MySQL, Redis, RabbitMQ and OpenSearch (or the embedded index). It listens at
/// once and waits for each service (see [`chatsys_runtime::startup`]); it returns once it serves its
/// routes.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let app_args = AppArgs {
        access: &args.access,
        http: &args.http,
        max_request_bytes: args.max_request_bytes,
        hot_page_cache_bytes: args.hot_page_cache_bytes,
        metrics_elsewhere: args.metrics_listen.is_some(),
    };
    let api = ApiRoutes {
        starting,
        routes: Box::new(|served| app(served, &app_args)),
    };
    boot(Role::Api(args, api)).await
}

/// The whole system in one process: the routes over standalone's ports and ingest loop. Its cache is
/// in process already, so it holds no hot pages in front of it.
pub async fn start_standalone(args: &StandaloneArgs) -> anyhow::Result<Running> {
    let app_args = AppArgs {
        access: &args.access,
        http: &args.http,
        max_request_bytes: args.max_request_bytes,
        hot_page_cache_bytes: 0,
        metrics_elsewhere: false,
    };
    let api = ApiRoutes {
        starting,
        routes: Box::new(|served| app(served, &app_args)),
    };
    boot(Role::Standalone(args, api)).await
}
