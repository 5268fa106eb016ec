//! chatsys-worker: consumes the command queue, writes batches to MySQL, indexes them, refreshes the cache,
//! and only then acknowledges. It also repairs drifted counts now and then.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chatsys_api::{Backends, Running, startup};
use chatsys_core::adapters::{amqp, redis};
use chatsys_core::health::{self, Check};
use chatsys_core::ingest::{self, IngestHealth, IngestPorts, IngestSettings};
use chatsys_core::ports::Store;
use clap::Parser;
use serde_json::json;
use tokio::sync::watch;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chatsys-worker",
    version,
    about = "Applies queued chat and message commands to MySQL and the search index"
)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub backends: Backends,
    /// Health and metrics listen address.
    #[arg(long, env = "CHATSYS_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Commands written per transaction.
    #[arg(long, env = "CHATSYS_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// How long a partial batch waits for more commands.
    #[arg(long, env = "CHATSYS_BATCH_WAIT_MS", default_value_t = 20)]
    pub batch_wait_ms: u64,
    /// Unacknowledged deliveries held.
    #[arg(long, env = "CHATSYS_PREFETCH", default_value_t = 8000)]
    pub prefetch: u16,
    /// Tries before a refused command goes to the dead-letter queue.
    #[arg(long, env = "CHATSYS_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Period of the counts repair.
    #[arg(long, env = "CHATSYS_REPAIR_INTERVAL_SECS", default_value_t = 300)]
    pub repair_interval_secs: u64,
}

struct HealthState {
    store: Arc<dyn Store>,
    ingest: watch::Receiver<IngestHealth>,
}

/// Starts the worker: it listens at once, waits for each backing service (see
/// [`chatsys_api::startup`]), then consumes. The returned address is that of its health and metrics
/// endpoints.
pub async fn start(args: &WorkerArgs) -> anyhow::Result<Running> {
    let listener = chatsys_api::bind(args.listen).await?;
    let health_addr = listener.local_addr()?;
    let connecting = startup::Connecting::new(&["database", "redis", "search"]);
    let routes = Arc::new(OnceLock::new());
    let (shutdown, stopped) = watch::channel(false);
    let app = startup::switch(connecting.clone(), routes.clone());
    let mut http_stop = stopped.clone();
    let http_task = tokio::spawn(async move {
        let stopped = async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "health server failed");
        }
    });

    let (store, redis) =
        chatsys_api::connect_database_and_redis(&connecting, &args.backends, 4).await?;
    let cache = Arc::new(redis::RedisCache::new(
        redis,
        redis::Keys::new(&args.backends.redis_prefix),
        Duration::from_secs(args.backends.cache_ttl_secs),
        args.backends.cache_max_page_bytes,
    ));
    let search = connecting
        .connect("search", || {
            chatsys_api::open_search(
                args.backends.opensearch_url.as_deref(),
                &args.backends.data_dir,
                true,
            )
        })
        .await
        .context("cannot open the search index")?;
    let ports = IngestPorts {
        store: store.clone(),
        search,
        cache,
    };
    let settings = IngestSettings {
        batch_size: args.batch_size.max(1),
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        max_attempts: args.max_attempts.max(1),
    };
    let (health, health_rx) = watch::channel(IngestHealth::default());
    let mut source = amqp::AmqpSource::new(
        args.backends.amqp_url()?,
        &args.backends.queue,
        args.prefetch,
    );
    let ingest_stop = stopped.clone();
    let ingest_task = tokio::spawn(async move {
        ingest::run(&mut source, &ports, &settings, ingest_stop, health).await;
    });
    let repair_task = tokio::spawn(chatsys_api::repair_periodically(
        store.clone(),
        Duration::from_secs(args.repair_interval_secs.max(1)),
        stopped,
    ));
    let _ = routes.set(
        Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(readyz))
            .route(
                "/metrics",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        chatsys_api::metrics_handle().render(),
                    )
                }),
            )
            .with_state(Arc::new(HealthState {
                store,
                ingest: health_rx,
            })),
    );
    Ok(Running::new(
        health_addr,
        shutdown,
        vec![ingest_task, repair_task, http_task],
    ))
}

/// Ready when the database answers and the last batch went through; `degraded` while indexing fails.
async fn readyz(State(state): State<Arc<HealthState>>) -> Response {
    let mut checks = vec![Check::ping("database", state.store.ping().await)];
    checks.extend(Check::ingest(&state.ingest.borrow()));
    let (ready, body) = health::report(&checks);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
