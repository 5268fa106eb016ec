//! chatsys-api: the REST API over the chat service, in two shapes. `serve` runs against MySQL, Redis,
//! RabbitMQ and OpenSearch (or the embedded index a worker writes); `standalone` runs the whole system in
//! one process with embedded storage, queue, cache and search.

pub mod http;
pub mod server;
pub mod settings;
pub mod startup;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use chatsys_core::adapters::{
    amqp, embedded_search::EmbeddedSearch, memory, mysql, opensearch, redis, sqlite,
};
use chatsys_core::error::CoreResult;
use chatsys_core::ingest::{self, IngestPorts, IngestSettings};
use chatsys_core::ports::{self, Store};
use chatsys_core::service::{ChatService, Ports, ReseedFloor};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use settings::{Backends, Cli, Command, HttpSettings, MigrateArgs, ServeArgs, StandaloneArgs};

/// The process-wide Prometheus recorder (one per process, however many servers a test starts).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Opens the search port: OpenSearch when a URL is given, else the embedded index under `data_dir`.
pub async fn open_search(
    opensearch_url: Option<&str>,
    data_dir: &Path,
    writable: bool,
) -> CoreResult<Arc<dyn ports::Search>> {
    Ok(match opensearch_url {
        Some(url) => {
            Arc::new(opensearch::OpenSearchIndex::connect(url, opensearch::DEFAULT_INDEX).await?)
        }
        None => Arc::new(EmbeddedSearch::open(&data_dir.join("search"), writable)?),
    })
}

/// A started process part (the API, standalone, or the worker): the address it listens on, and how to
/// stop it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn new(
        addr: SocketAddr,
        shutdown: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        Running {
            addr,
            shutdown,
            tasks,
        }
    }

    /// Stops accepting, finishes requests in flight and the batches being written, then returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Listens on `listen` at once, before anything else is ready, so probes get an answer from the start.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

fn app(
    service: ChatService,
    admin_key: Option<String>,
    max_request_bytes: usize,
    settings: &HttpSettings,
) -> axum::Router {
    http::router(Arc::new(http::AppState {
        service,
        admin_key,
        metrics: metrics_handle(),
        max_request_bytes,
        body_timeout: settings.body_timeout(),
        body_budget: http::BodyBudget::new(settings.max_inflight_body_bytes),
    }))
}

fn spawn_server(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    settings: &HttpSettings,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let settings = settings.clone();
    tokio::spawn(async move {
        server::serve(listener, router, &settings, shutdown).await;
    })
}

/// Applies the migrations (under the store's lock, so concurrent runs are safe), waiting for the
/// database to answer first: a migration Job started with MySQL still starting waits, it does not fail.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let store = mysql::MySqlStore::connect(args.database_url()?, 2)?;
    startup::Connecting::new(&["database"])
        .connect("database", || store.migrate())
        .await
        .context("migrations failed")?;
    Ok(())
}

/// The database (migrated first when `backends.migrate`) and Redis, each waited for.
pub async fn connect_database_and_redis(
    connecting: &startup::Connecting,
    backends: &Backends,
    pool_size: u32,
) -> anyhow::Result<(Arc<dyn Store>, redis::ConnectionManager)> {
    let store: Arc<dyn Store> = Arc::new(mysql::MySqlStore::connect(
        backends.database_url()?,
        pool_size,
    )?);
    connecting
        .connect("database", || async {
            if backends.migrate {
                store.migrate().await
            } else {
                store.ping().await
            }
        })
        .await
        .context("cannot use the database")?;
    let redis_url = backends.redis_url()?;
    let redis = connecting
        .connect("redis", || redis::connect(redis_url))
        .await
        .context("cannot connect to Redis")?;
    Ok((store, redis))
}

/// The API against MySQL, Redis, RabbitMQ and OpenSearch (or the embedded index). It listens at
/// once and waits for each service (see [`startup`]); it returns once it serves its routes.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let connecting = startup::Connecting::new(&["database", "redis", "search"]);
    let routes = Arc::new(OnceLock::new());
    let (shutdown, stopped) = watch::channel(false);
    let server = spawn_server(
        listener,
        startup::switch(connecting.clone(), routes.clone()),
        &args.http,
        stopped,
    );
    let (store, redis) =
        connect_database_and_redis(&connecting, &args.backends, args.db_pool_size).await?;
    let keys = redis::Keys::new(&args.backends.redis_prefix);
    let queue: Arc<dyn ports::Queue> = Arc::new(amqp::AmqpQueue::new(
        args.backends.amqp_url()?,
        &args.backends.queue,
        args.publish_channels,
        Duration::from_millis(args.publish_timeout_ms),
    ));
    let floor = Arc::new(ReseedFloor {
        store: store.clone(),
        queue: queue.clone(),
        margin: args.reseed_margin,
    });
    let search = connecting
        .connect("search", || {
            open_search(
                args.backends.opensearch_url.as_deref(),
                &args.backends.data_dir,
                false,
            )
        })
        .await
        .context("cannot open the search index")?;
    let ports = Ports {
        store,
        numbers: Arc::new(redis::RedisNumbers::new(redis.clone(), keys.clone(), floor)),
        queue,
        cache: Arc::new(redis::RedisCache::new(
            redis,
            keys,
            Duration::from_secs(args.backends.cache_ttl_secs),
            args.backends.cache_max_page_bytes,
        )),
        search,
    };
    let _ = routes.set(app(
        ChatService::new(ports),
        args.admin_key.clone(),
        args.max_request_bytes,
        &args.http,
    ));
    Ok(Running {
        addr,
        shutdown,
        tasks: vec![server],
    })
}

/// The whole system in one process: SQLite store and queue, in-process numbers and cache, tantivy.
pub async fn start_standalone(args: &StandaloneArgs) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let pool = sqlite::open(&args.data_dir.join("chatsys.db")).await?;
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    store.migrate().await.context("migrations failed")?;
    let queue = sqlite::SqliteQueue::new(pool);
    let cache: Arc<dyn ports::Cache> = Arc::new(memory::MemoryCache::new(
        Duration::from_secs(args.cache_ttl_secs),
        args.cache_max_bytes,
        args.cache_max_page_bytes,
    ));
    let search = open_search(None, &args.data_dir, true).await?;
    let ports = Ports {
        store: store.clone(),
        numbers: Arc::new(memory::LocalNumbers::new(Arc::new(queue.clone()))),
        queue: Arc::new(queue.clone()),
        cache: cache.clone(),
        search: search.clone(),
    };
    let (shutdown, stopped) = watch::channel(false);
    let ingest_ports = IngestPorts {
        store: store.clone(),
        search,
        cache,
    };
    let settings = IngestSettings {
        batch_size: 1000,
        batch_wait: Duration::from_millis(5),
        max_attempts: 5,
    };
    let mut source = queue.source();
    let ingest_stop = stopped.clone();
    let (health, ingest_health) = watch::channel(ingest::IngestHealth::default());
    let ingest_task = tokio::spawn(async move {
        ingest::run(&mut source, &ingest_ports, &settings, ingest_stop, health).await;
    });
    let repair_task = tokio::spawn(repair_periodically(
        store,
        Duration::from_secs(300),
        stopped.clone(),
    ));
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let routes = app(
        ChatService::new(ports).with_ingest_health(ingest_health),
        args.admin_key.clone(),
        args.max_request_bytes,
        &args.http,
    );
    let http_task = spawn_server(listener, routes, &args.http, stopped);
    Ok(Running {
        addr,
        shutdown,
        tasks: vec![http_task, ingest_task, repair_task],
    })
}

/// Recomputes counts from the rows now and then; drift only comes from manual edits or bugs.
pub async fn repair_periodically(
    store: Arc<dyn Store>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match store.repair_counts().await {
            Ok(0) => {}
            Ok(fixed) => tracing::warn!(fixed, "repaired counts that had drifted from the rows"),
            Err(e) => tracing::warn!(error = %e, "count repair failed; will try again"),
        }
    }
}
