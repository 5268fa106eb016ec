//! One start-up for every process, by role: it listens at once (answering `/healthz`, and a `/readyz`
//! naming what it waits for), wires the role's ports while waiting for each backing service, starts the
//! role's background work (the ingest loop, the counts repair, queue depths), then serves the role's
//! routes. The API and standalone add their routes over the ports; the worker serves only its health.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chatsys_adapters::amqp;
use chatsys_core::ingest::{self, IngestHealth, IngestPorts, IngestSettings};
use chatsys_core::ports::CommandSource;
use chatsys_core::ports::{BatchLimits, Queue, Store};
use chatsys_core::service::Ports;
use chatsys_core::telemetry as metric;
use chatsys_settings::{HttpSettings, ServeArgs, StandaloneArgs, WorkerArgs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::Check;
use crate::lifecycle::{Running, bind, spawn_server};
use crate::startup::{self, Connecting};
use crate::{ops, telemetry, wiring};

/// What a process is.
pub enum Role<'a> {
    /// The REST API of a deployment, over MySQL, Redis, RabbitMQ and OpenSearch.
    Api(&'a ServeArgs, ApiRoutes<'a>),
    /// The worker of a deployment: it stores, indexes and caches what the API queued, and serves only
    /// its health and metrics.
    Worker(&'a WorkerArgs),
    /// The whole system in one process, with embedded storage, queue, cache and search.
    Standalone(&'a StandaloneArgs, ApiRoutes<'a>),
}

/// The API's answers: what a request gets while the process starts, and the routes over the ports.
pub struct ApiRoutes<'a> {
    pub starting: fn() -> Response,
    pub routes: Box<dyn FnOnce(Served) -> Router + Send + 'a>,
}

/// What the API's routes are made of, once the ports are wired.
pub struct Served {
    /// The ports the use cases run on.
    pub ports: Ports,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// Turns true when the process stops.
    pub stopped: watch::Receiver<bool>,
}

/// Starts a process in its role. It listens at once; until the ports are wired, probes are answered
/// with what it waits for and other requests with the role's "starting"; then with the role's routes.
/// Returns once it serves them.
pub async fn boot(role: Role<'_>) -> anyhow::Result<Running> {
    // Installed before anything is recorded, so that no metric is lost.
    let _ = telemetry::metrics_handle();
    let (listen, http, starting, waits_for): (_, _, fn() -> Response, &[&'static str]) = match &role
    {
        Role::Api(args, api) => (args.listen, args.http.clone(), api.starting, DEPLOYMENT),
        Role::Worker(args) => (
            args.listen,
            HttpSettings::default(),
            worker_starting,
            DEPLOYMENT,
        ),
        Role::Standalone(args, api) => (args.listen, args.http.clone(), api.starting, &[]),
    };
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let connecting = Connecting::new(waits_for);
    let served = Arc::new(OnceLock::new());
    let (shutdown, stopped) = watch::channel(false);
    let mut tasks = vec![spawn_server(
        listener,
        startup::switch(connecting.clone(), served.clone(), starting),
        &http,
        stopped.clone(),
    )];
    if let Role::Api(
        ServeArgs {
            metrics_listen: Some(metrics_listen),
            ..
        },
        _,
    ) = &role
    {
        let metrics = Router::new().route(
            "/metrics",
            axum::routing::get(|| async { crate::ops::metrics() }),
        );
        tasks.push(spawn_server(
            bind(*metrics_listen).await?,
            metrics,
            &http,
            stopped.clone(),
        ));
    }
    match wire(role, &connecting, &stopped, &mut tasks).await {
        Ok(routes) => {
            let _ = served.set(routes);
        }
        Err(error) => {
            let _ = shutdown.send(true);
            return Err(error);
        }
    }
    Ok(Running::new(addr, shutdown, tasks))
}

/// The check names a deployment's process waits for at start.
const DEPLOYMENT: &[&str] = &["database", "redis", "search"];

/// Wires the role's ports, waiting for each backing service, starts its background work, and returns
/// its routes.
async fn wire(
    role: Role<'_>,
    connecting: &Connecting,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Router> {
    match role {
        Role::Api(args, api) => {
            let ports = wiring::serve_ports(args, connecting).await?;
            Ok((api.routes)(Served {
                readiness: Readiness::of_ports(&ports, None),
                ports,
                stopped: stopped.clone(),
            }))
        }
        Role::Worker(args) => {
            let ports = wiring::ingest_ports(&args.backends, connecting).await?;
            let store = ports.store.clone();
            let queues =
                amqp::CommandQueues::new(&args.backends.queue, args.backends.queue_shards.into());
            let prefetch = ingest::prefetch_within(args.prefetch, args.prefetch_bytes);
            let source = amqp::AmqpSource::new(args.backends.amqp_url()?, queues.clone(), prefetch);
            let settings = IngestSettings {
                batch: BatchLimits {
                    commands: args.batch_size.max(1),
                    bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
                    wait: Duration::from_millis(args.batch_wait_ms),
                },
                max_attempts: args.max_attempts.max(1),
            };
            let (ingest_task, ingest_health) =
                spawn_ingest(source, ports, settings, stopped.clone());
            let depths =
                amqp::AmqpQueue::new(args.backends.amqp_url()?, queues, 1, QUEUE_CALL_TIMEOUT);
            tasks.extend([
                ingest_task,
                tokio::spawn(sample_queue_depths(depths, stopped.clone())),
                spawn_repair(store.clone(), args.repair_interval_secs, stopped),
            ]);
            // Ready when the database answers and the last batch went through; `degraded` while
            // indexing fails.
            let readiness = Readiness {
                backends: Backends::Database(store),
                ingest: Some(ingest_health),
            };
            Ok(ops::router(move || {
                let readiness = readiness.clone();
                async move { readiness.checks().await }
            }))
        }
        Role::Standalone(args, api) => {
            let standalone = wiring::standalone(args).await?;
            let (ingest_task, ingest_health) = spawn_ingest(
                standalone.source,
                standalone.ingest,
                STANDALONE_INGEST,
                stopped.clone(),
            );
            tasks.extend([
                ingest_task,
                spawn_repair(standalone.ports.store.clone(), 300, stopped),
            ]);
            Ok((api.routes)(Served {
                readiness: Readiness::of_ports(&standalone.ports, Some(ingest_health)),
                ports: standalone.ports,
                stopped: stopped.clone(),
            }))
        }
    }
}

/// What the worker answers, other than its probes, while it waits for its backing services.
fn worker_starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "starting" })),
    )
        .into_response()
}

/// What `/readyz` checks: each backing service a process uses answers, and, where the process runs
/// one, the ingest loop stores and indexes.
#[derive(Clone)]
pub struct Readiness {
    backends: Backends,
    ingest: Option<watch::Receiver<IngestHealth>>,
}

/// The backing services a process uses.
#[derive(Clone)]
enum Backends {
    /// The API's: the database, Redis, the queue and search.
    Api(Ports),
    /// The worker's own check: the database (its ingest loop reports the rest).
    Database(Arc<dyn Store>),
}

impl Readiness {
    /// Every port the API uses, and standalone's ingest loop.
    fn of_ports(ports: &Ports, ingest: Option<watch::Receiver<IngestHealth>>) -> Self {
        Readiness {
            backends: Backends::Api(ports.clone()),
            ingest,
        }
    }

    pub async fn checks(&self) -> Vec<Check> {
        let mut checks = match &self.backends {
            Backends::Api(p) => {
                let (store, numbers, queue, search) = tokio::join!(
                    p.store.ping(),
                    p.numbers.ping(),
                    p.queue.ping(),
                    p.search.ping()
                );
                vec![
                    Check::ping("database", store),
                    Check::ping("redis", numbers),
                    Check::ping("queue", queue),
                    Check::ping("search", search),
                ]
            }
            Backends::Database(store) => vec![Check::ping("database", store.ping().await)],
        };
        if let Some(ingest) = &self.ingest {
            checks.extend(Check::ingest(&ingest.borrow()));
        }
        checks
    }
}

/// Standalone's settings of the ingest loop: small batches soon, since one process does everything.
const STANDALONE_INGEST: IngestSettings = IngestSettings {
    batch: BatchLimits {
        commands: 1000,
        bytes: 16 << 20,
        wait: Duration::from_millis(5),
    },
    max_attempts: 5,
};

/// Runs the ingest loop over `source` until `stopped`; its health is what `/readyz` reports.
fn spawn_ingest(
    mut source: impl CommandSource + 'static,
    ports: IngestPorts,
    settings: IngestSettings,
    stopped: watch::Receiver<bool>,
) -> (JoinHandle<()>, watch::Receiver<IngestHealth>) {
    let (health, ingest_health) = watch::channel(IngestHealth::default());
    // Counted from zero, so that a process that never settles a command shows a rate of zero.
    metrics::counter!(metric::WORKER_COMMANDS.name, "result" => "applied").increment(0);
    telemetry::count_from_zero(&[metric::WORKER_INDEX_FAILURES]);
    let task = tokio::spawn(async move {
        ingest::run(&mut source, &ports, &settings, stopped, health).await;
    });
    (task, ingest_health)
}

/// Recomputes counts from the rows every `every_secs`; drift only comes from manual edits or bugs.
fn spawn_repair(
    store: Arc<dyn Store>,
    every_secs: u64,
    stopped: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut stopped = stopped.clone();
    let every = Duration::from_secs(every_secs.max(1));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            match store.repair_counts().await {
                Ok(0) => {}
                Ok(fixed) => {
                    tracing::warn!(fixed, "repaired counts that had drifted from the rows")
                }
                Err(e) => tracing::warn!(error = %e, "count repair failed; will try again"),
            }
        }
    })
}

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
                    metrics::gauge!(metric::QUEUE_MESSAGES.name, "queue" => label)
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
