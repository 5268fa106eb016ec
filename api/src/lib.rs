//! chatsys-api: the REST API over the chat service, in two shapes. `serve` runs against MySQL, Redis,
//! RabbitMQ and OpenSearch (or the embedded index a worker writes); `standalone` runs the whole system in
//! one process with embedded storage, queue, cache and search.

pub mod http;
pub mod server;
pub mod settings;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use chatsys_core::adapters::{
    amqp, embedded_search::EmbeddedSearch, memory, mysql, opensearch, redis, sqlite,
};
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
) -> anyhow::Result<Arc<dyn ports::Search>> {
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

async fn serve(
    listen: SocketAddr,
    service: ChatService,
    admin_key: Option<String>,
    max_request_bytes: usize,
    settings: &HttpSettings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(http::AppState {
        service,
        admin_key,
        metrics: metrics_handle(),
        max_request_bytes,
        body_timeout: settings.body_timeout(),
        body_budget: http::BodyBudget::new(settings.max_inflight_body_bytes),
    });
    let app = http::router(state);
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        server::serve(listener, app, &settings, shutdown).await;
    });
    Ok((addr, task))
}

/// Applies the migrations (under the store's lock, so concurrent replicas are safe).
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let store = mysql::MySqlStore::connect(args.database_url()?, 2)?;
    store.migrate().await.context("migrations failed")?;
    Ok(())
}

/// The API against MySQL, Redis, RabbitMQ and OpenSearch (or the embedded index).
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let store: Arc<dyn Store> = Arc::new(mysql::MySqlStore::connect(
        args.backends.database_url()?,
        args.db_pool_size,
    )?);
    if args.backends.migrate {
        store.migrate().await.context("migrations failed")?;
    }
    let redis = redis::connect(args.backends.redis_url()?)
        .await
        .context("cannot connect to Redis")?;
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
        search: open_search(
            args.backends.opensearch_url.as_deref(),
            &args.backends.data_dir,
            false,
        )
        .await?,
    };
    let (shutdown, stopped) = watch::channel(false);
    let (addr, task) = serve(
        args.listen,
        ChatService::new(ports),
        args.admin_key.clone(),
        args.max_request_bytes,
        &args.http,
        stopped,
    )
    .await?;
    Ok(Running {
        addr,
        shutdown,
        tasks: vec![task],
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
    let (addr, http_task) = serve(
        args.listen,
        ChatService::new(ports).with_ingest_health(ingest_health),
        args.admin_key.clone(),
        args.max_request_bytes,
        &args.http,
        stopped,
    )
    .await?;
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
