//! chatsys-api: the REST API's routes over the chat service, started in two shapes. `serve` runs
//! against MySQL, Redis, RabbitMQ and OpenSearch (or the embedded index a worker writes); `standalone`
//! runs the whole system in one process with embedded storage, queue, cache and search. The wiring of
//! either lives in `chatsys-runtime`.

pub mod http;

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatsys_core::live::LiveSettings;
use chatsys_core::service::ChatService;
use chatsys_core::telemetry;
use chatsys_runtime::startup::{self, Connecting};
use chatsys_runtime::{Running, bind, spawn_server, wiring};
use chatsys_settings::{Access, HttpSettings, ServeArgs, StandaloneArgs};
use tokio::sync::watch;

use crate::http::error::{ApiError, ErrorCode};

fn app(
    service: ChatService,
    access: &Access,
    max_request_bytes: usize,
    settings: &HttpSettings,
    metrics_elsewhere: bool,
) -> axum::Router {
    // Installed before the first request so that no metric recorded is lost.
    let _ = telemetry::metrics_handle();
    telemetry::count_from_zero(&[
        telemetry::CACHE_ERRORS,
        telemetry::CACHE_PAGES_TOO_LARGE,
        telemetry::LIVE_STREAMS,
        telemetry::LIVE_REPAIRS,
    ]);
    http::router(Arc::new(http::AppState {
        service,
        admin_key: access.admin_key.clone(),
        max_request_bytes,
        body_timeout: settings.body_timeout(),
        body_budget: http::BodyBudget::new(settings.max_inflight_body_bytes),
        metrics_elsewhere,
        // The settings' parser took only origins, which are valid header values.
        cors_allowed_origins: access
            .cors_allowed_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect(),
        limits: http::RequestLimits {
            uri_bytes: settings.max_uri_bytes as usize,
            headers: settings.max_headers as usize,
            header_bytes: settings.max_header_bytes as usize,
        },
    }))
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
/// once and waits for each service (see [`startup`]); it returns once it serves its routes.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let connecting = Connecting::new(&["database", "redis", "search"]);
    let routes = Arc::new(OnceLock::new());
    let (shutdown, stopped) = watch::channel(false);
    let server = spawn_server(
        listener,
        startup::switch(connecting.clone(), routes.clone(), starting),
        &args.http,
        stopped,
    );
    let mut servers = vec![server];
    if let Some(metrics_listen) = args.metrics_listen {
        let metrics = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { chatsys_runtime::ops::metrics() }),
        );
        servers.push(spawn_server(
            bind(metrics_listen).await?,
            metrics,
            &args.http,
            shutdown.subscribe(),
        ));
    }
    let ports = wiring::serve_ports(args, &connecting).await?;
    let _ = routes.set(app(
        ChatService::with_live(ports, live_settings(&args.http), shutdown.subscribe())
            .with_hot_pages(args.hot_page_cache_bytes)
            .with_write_quota(args.access.rate_limit_per_app),
        &args.access,
        args.max_request_bytes,
        &args.http,
        args.metrics_listen.is_some(),
    ));
    Ok(Running::new(addr, shutdown, servers))
}

/// The whole system in one process: the routes over standalone's ports and ingest loop.
pub async fn start_standalone(args: &StandaloneArgs) -> anyhow::Result<Running> {
    let (shutdown, stopped) = watch::channel(false);
    let standalone = wiring::standalone(args, stopped.clone()).await?;
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let routes = app(
        ChatService::with_live(standalone.ports, live_settings(&args.http), stopped.clone())
            .with_ingest_health(standalone.ingest_health)
            .with_write_quota(args.access.rate_limit_per_app),
        &args.access,
        args.max_request_bytes,
        &args.http,
        false,
    );
    let mut tasks = standalone.tasks;
    tasks.push(spawn_server(listener, routes, &args.http, stopped));
    Ok(Running::new(addr, shutdown, tasks))
}
