//! chatsys-worker: consumes the command queue with the ingest loop (store a batch, cache and index it,
//! then acknowledge), and repairs drifted counts now and then. Its wiring, start-up and health server
//! are `chatsys-runtime`'s.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chatsys_adapters::amqp;
use chatsys_core::health::Check;
use chatsys_core::ingest::{self, IngestHealth, IngestSettings};
use chatsys_core::ports::{BatchLimits, Queue};
use chatsys_core::telemetry;
use chatsys_runtime::startup::{self, Connecting};
use chatsys_runtime::{Running, bind, ops, spawn_server, wiring};
use chatsys_settings::{HttpSettings, WorkerArgs};
use tokio::sync::watch;

/// How often the worker reads the depths of the command and dead-letter queues; until a read has
/// succeeded (the queues are declared as the worker connects), every second.
const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
const QUEUE_FIRST_SAMPLE_RETRY: Duration = Duration::from_secs(1);
/// How long one read of a queue's depth may take.
const QUEUE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps `chatsys_queue_messages` current: the backlog alerts and KEDA-less dashboards read it, and
/// it works the same for a RabbitMQ the operator runs and one the user runs. A failed read keeps the
/// last value; the broker's own health is reported elsewhere.
async fn sample_queue_depths(queue: amqp::AmqpQueue, mut stopped: watch::Receiver<bool>) {
    let mut sampled = false;
    loop {
        let reads = tokio::time::timeout(QUEUE_CALL_TIMEOUT, async {
            [
                ("commands", queue.backlog().await),
                ("dead_letters", queue.dead_letters().await),
            ]
        })
        .await;
        let mut all_read = reads.is_ok();
        for (label, depth) in reads.into_iter().flatten() {
            match depth {
                Ok(depth) => {
                    metrics::gauge!(telemetry::QUEUE_MESSAGES.name, "queue" => label)
                        .set(depth as f64);
                }
                Err(error) => {
                    all_read = false;
                    tracing::debug!(%error, queue = label, "reading the queue's depth");
                }
            }
        }
        sampled |= all_read;
        let pause = if sampled {
            QUEUE_SAMPLE_INTERVAL
        } else {
            QUEUE_FIRST_SAMPLE_RETRY
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// What a path other than a probe gets while the worker waits for its backing services.
fn starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "starting" })),
    )
        .into_response()
}

/// Starts the worker: it listens at once, waits for each backing service (see
/// [`chatsys_runtime::startup`]), then consumes. The returned address is that of its health and
/// metrics endpoints.
pub async fn start(args: &WorkerArgs) -> anyhow::Result<Running> {
    let _ = telemetry::metrics_handle();
    let listener = bind(args.listen).await?;
    let health_addr = listener.local_addr()?;
    let connecting = Connecting::new(&["database", "redis", "search"]);
    let routes = Arc::new(OnceLock::new());
    let (shutdown, stopped) = watch::channel(false);
    let http_task = spawn_server(
        listener,
        startup::switch(connecting.clone(), routes.clone(), starting),
        &HttpSettings::default(),
        stopped.clone(),
    );
    let ports = wiring::ingest_ports(&args.backends, &connecting).await?;
    let store = ports.store.clone();
    let settings = IngestSettings {
        batch: BatchLimits {
            commands: args.batch_size.max(1),
            bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
            wait: Duration::from_millis(args.batch_wait_ms),
        },
        max_attempts: args.max_attempts.max(1),
    };
    let (health, ingest_health) = watch::channel(IngestHealth::default());
    let queues = amqp::CommandQueues::new(&args.backends.queue, args.backends.queue_shards.into());
    let prefetch = ingest::prefetch_within(args.prefetch, args.prefetch_bytes);
    let mut source = amqp::AmqpSource::new(args.backends.amqp_url()?, queues.clone(), prefetch);
    let ingest_stop = stopped.clone();
    let ingest_task = tokio::spawn(async move {
        ingest::run(&mut source, &ports, &settings, ingest_stop, health).await;
    });
    // Counted from zero, so that a worker that never settles a command shows a rate of zero.
    metrics::counter!(telemetry::WORKER_COMMANDS.name, "result" => "applied").increment(0);
    telemetry::count_from_zero(&[telemetry::WORKER_INDEX_FAILURES]);
    let depths = amqp::AmqpQueue::new(args.backends.amqp_url()?, queues, 1, QUEUE_CALL_TIMEOUT);
    let depths_task = tokio::spawn(sample_queue_depths(depths, stopped.clone()));
    let repair_task = tokio::spawn(wiring::repair_periodically(
        store.clone(),
        Duration::from_secs(args.repair_interval_secs.max(1)),
        stopped,
    ));
    // Ready when the database answers and the last batch went through; `degraded` while indexing fails.
    let _ = routes.set(ops::router(move || {
        let store = store.clone();
        let ingest_health = ingest_health.clone();
        async move {
            let mut checks = vec![Check::ping("database", store.ping().await)];
            checks.extend(Check::ingest(&ingest_health.borrow()));
            checks
        }
    }));
    Ok(Running::new(
        health_addr,
        shutdown,
        vec![ingest_task, depths_task, repair_task, http_task],
    ))
}
