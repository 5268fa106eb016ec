//! The ports of each way of running, built from the settings: a deployment's real adapters, or
//! standalone's embedded ones.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatsys_adapters::{
    amqp, embedded_search::EmbeddedSearch, memory, mysql, opensearch, redis, sqlite, sqlite_keys,
    sqlite_queue,
};
use chatsys_core::error::CoreResult;
use chatsys_core::ingest::IngestPorts;
use chatsys_core::ports::{self, Store};
use chatsys_core::service::{Ports, ReseedFloor};
use chatsys_settings::{Backends, MigrateArgs, ReindexArgs, ServeArgs, StandaloneArgs};

use crate::startup::Connecting;

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
        // A directory of this release's own: the index of folded text has another schema, which
        // tantivy will not open over an earlier release's index.
        None => Arc::new(EmbeddedSearch::open(&data_dir.join("search-v2"), writable)?),
    })
}

/// Indexes every message of the database (MySQL, or the standalone one) into the search index
/// (OpenSearch, or the embedded one); returns how many.
pub async fn reindex(args: &ReindexArgs) -> anyhow::Result<u64> {
    let store: Arc<dyn Store> = match &args.database_url {
        Some(url) => Arc::new(mysql::MySqlStore::connect(url, 2)?),
        None => {
            let pool = sqlite::open(&args.data_dir.join("chatsys.db")).await?;
            Arc::new(sqlite::SqliteStore::new(pool))
        }
    };
    store.migrate().await.context("migrations failed")?;
    let search = open_search(args.opensearch_url.as_deref(), &args.data_dir, true).await?;
    Ok(chatsys_core::reindex::reindex(store.as_ref(), search.as_ref()).await?)
}

/// Applies the migrations (under the store's lock, so concurrent runs are safe), waiting for the
/// database to answer first: a migration Job started with MySQL still starting waits, it does not fail.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    // The lock's connection is the third of `connections::MIGRATE`.
    let store = mysql::MySqlStore::connect(
        args.database_url()?,
        chatsys_settings::connections::MIGRATE - 1,
    )?;
    Connecting::new(&["database"])
        .connect("database", || store.migrate())
        .await
        .context("migrations failed")?;
    Ok(())
}

/// The Redis connections: the one of numbers and state, and the cache's when it is a Redis of its own.
pub struct RedisConnections {
    pub state: redis::ConnectionManager,
    pub cache: Option<redis::ConnectionManager>,
}

/// The database (migrated first when `backends.migrate`) and Redis, each waited for.
pub async fn connect_database_and_redis(
    connecting: &Connecting,
    backends: &Backends,
    pool_size: u32,
) -> anyhow::Result<(Arc<dyn Store>, RedisConnections)> {
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
    let state = connecting
        .connect("redis", || redis::connect(redis_url))
        .await
        .context("cannot connect to Redis")?;
    let cache = match backends.redis_cache_url.as_deref() {
        Some(url) => Some(
            connecting
                .connect("redis", || redis::connect(url))
                .await
                .context("cannot connect to the cache's Redis")?,
        ),
        None => None,
    };
    Ok((store, RedisConnections { state, cache }))
}

/// The search port of a deployment, waited for.
async fn connect_search(
    connecting: &Connecting,
    backends: &Backends,
    writable: bool,
) -> anyhow::Result<Arc<dyn ports::Search>> {
    connecting
        .connect("search", || {
            open_search(
                backends.opensearch_url.as_deref(),
                &backends.data_dir,
                writable,
            )
        })
        .await
        .context("cannot open the search index")
}

fn redis_cache(redis: RedisConnections, backends: &Backends) -> redis::RedisCache {
    redis::RedisCache::new(
        redis.state,
        redis.cache,
        redis::Keys::new(&backends.redis_prefix),
        redis::CacheLimits {
            ttl: Duration::from_secs(backends.cache_ttl_secs),
            max_page_bytes: backends.cache_max_page_bytes,
            max_application_bytes: backends.cache_max_app_bytes,
        },
    )
}

/// The API's ports in a deployment: MySQL, Redis numbers and cache, RabbitMQ, OpenSearch (or the
/// embedded index a worker writes), each waited for.
pub async fn serve_ports(args: &ServeArgs, connecting: &Connecting) -> anyhow::Result<Ports> {
    let backends = &args.backends;
    let (store, redis) =
        connect_database_and_redis(connecting, backends, args.db_pool_size).await?;
    let queue: Arc<dyn ports::Queue> = Arc::new(amqp::AmqpQueue::new(
        backends.amqp_url()?,
        amqp::CommandQueues::new(&backends.queue, backends.queue_shards.into()),
        args.publish_channels,
        Duration::from_millis(args.publish_timeout_ms),
    ));
    let floor = Arc::new(ReseedFloor {
        store: store.clone(),
        queue: queue.clone(),
        margin: args.reseed_margin,
    });
    let search = connect_search(connecting, backends, false).await?;
    let announcements = Arc::new(redis::RedisAnnouncements::start(
        backends.redis_url()?,
        redis::Keys::new(&backends.redis_prefix),
    )?);
    Ok(Ports {
        store,
        numbers: Arc::new(redis::RedisNumbers::new(
            redis.state.clone(),
            redis::Keys::new(&backends.redis_prefix),
        )),
        floor,
        queue,
        keys: Arc::new(redis::RedisKeyCells::new(
            redis.state.clone(),
            redis::Keys::new(&backends.redis_prefix),
        )),
        cache: Arc::new(redis_cache(redis, backends)),
        search,
        announcements,
    })
}

/// The worker's ports: MySQL, the Redis cache and the index it writes, each waited for.
pub async fn ingest_ports(
    backends: &Backends,
    connecting: &Connecting,
) -> anyhow::Result<IngestPorts> {
    let (store, redis) = connect_database_and_redis(
        connecting,
        backends,
        chatsys_settings::connections::WORKER_POOL,
    )
    .await?;
    let search = connect_search(connecting, backends, true).await?;
    Ok(IngestPorts {
        store,
        search,
        announcer: Arc::new(redis::RedisAnnouncer::new(
            redis.state.clone(),
            redis::Keys::new(&backends.redis_prefix),
        )),
        cache: Arc::new(redis_cache(redis, backends)),
    })
}

/// The whole system in one process, before it runs: the ports the API serves from, and the ingest
/// loop's ports and the queue it consumes.
pub struct Standalone {
    pub ports: Ports,
    pub ingest: IngestPorts,
    pub source: sqlite_queue::SqliteSource,
}

/// SQLite store and queue, in-process numbers and cache, tantivy.
pub async fn standalone(args: &StandaloneArgs) -> anyhow::Result<Standalone> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let pool = sqlite::open(&args.data_dir.join("chatsys.db")).await?;
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    store.migrate().await.context("migrations failed")?;
    let keys = Arc::new(sqlite_keys::SqliteKeyCells::new(pool.clone()));
    let queue = sqlite_queue::SqliteQueue::new(pool);
    let cache: Arc<dyn ports::Cache> = Arc::new(memory::MemoryCache::new(
        Duration::from_secs(args.cache_ttl_secs),
        args.cache_max_bytes,
        args.cache_max_page_bytes,
    ));
    let search = open_search(None, &args.data_dir, true).await?;
    let announcements = Arc::new(memory::LocalAnnouncements::default());
    let ports = Ports {
        store: store.clone(),
        numbers: Arc::new(memory::LocalNumbers::new()),
        // Exact in standalone: every number stored or still queued.
        floor: Arc::new(queue.clone()),
        queue: Arc::new(queue.clone()),
        cache: cache.clone(),
        search: search.clone(),
        announcements: announcements.clone(),
        keys,
    };
    let ingest = IngestPorts {
        store,
        search,
        cache,
        announcer: announcements,
    };
    Ok(Standalone {
        ports,
        ingest,
        source: queue.source(),
    })
}
