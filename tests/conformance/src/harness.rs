//! Starts the system under test in this process, on port 0, with its own storage: the standalone server
//! on a fresh data directory, or the API and the worker on a fresh MySQL database, queue and Redis
//! prefix, all removed when the test ends. The backing services must be running: when one is missing,
//! setup fails loudly.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use chatsys_runtime::Running;
use chatsys_settings::WorkerArgs;
use chatsys_settings::{Access, Backends, HttpSettings, ServeArgs, StandaloneArgs};

use crate::scratch::{Scratch, off_runtime};
use crate::target::{HoldsTarget, Target};

pub const ADMIN_KEY: &str = "conformance-admin-key";

/// The web origin the servers started here allow (CORS).
pub const ALLOWED_ORIGIN: &str = "http://allowed.chatsys.test:3000";

/// The admin key and the allowed origin of every server started here.
fn access() -> Access {
    Access {
        admin_key: Some(ADMIN_KEY.into()),
        cors_allowed_origins: vec![ALLOWED_ORIGIN.into()],
        rate_limit_per_app: 0.0,
    }
}

/// MySQL server used by full-stack runs (a database is created per run).
pub fn mysql_server_url() -> String {
    std::env::var("CHATSYS_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    std::env::var("CHATSYS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn amqp_url() -> String {
    std::env::var("CHATSYS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A system started for one test; stopped, and its storage removed, when dropped.
pub struct Served {
    pub target: Target,
    /// The other API replicas, on the same backing services, when more than one was started.
    pub replicas: Vec<Target>,
    /// What the full stack's API replicas were started with.
    pub serve_args: Option<ServeArgs>,
    apis: Vec<Running>,
    worker: Option<Running>,
    _data: tempfile::TempDir,
    _scratch: Scratch,
}

impl Drop for Served {
    /// Stops the processes before the scratch goes (a field, dropped after this): a worker or an API
    /// still running would declare its queues again once they were deleted.
    fn drop(&mut self) {
        let apis = std::mem::take(&mut self.apis);
        let worker = self.worker.take();
        off_runtime(async move {
            for api in apis {
                api.stop().await;
            }
            if let Some(worker) = worker {
                worker.stop().await;
            }
        });
    }
}

impl HoldsTarget for Served {
    fn target(&self) -> &Target {
        &self.target
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The server's settings with a heartbeat every second, so the heartbeat case does not wait 15 s.
fn quick_heartbeat() -> HttpSettings {
    HttpSettings {
        event_heartbeat_ms: 1000,
        ..HttpSettings::default()
    }
}

pub async fn standalone() -> Served {
    let data = tempfile::tempdir().expect("temporary data directory");
    let args = StandaloneArgs {
        listen: loopback(),
        data_dir: data.path().to_path_buf(),
        access: access(),
        cache_ttl_secs: 300,
        cache_max_bytes: 64 << 20,
        cache_max_page_bytes: 1 << 20,
        max_request_bytes: 1_048_576,
        http: quick_heartbeat(),
        log_format: "text".into(),
    };
    let api = chatsys_api::start_standalone(&args)
        .await
        .expect("start the standalone server");
    Served {
        target: Target::new(url(api.addr), Some(ADMIN_KEY.into()))
            .with_allowed_origin(ALLOWED_ORIGIN),
        replicas: Vec::new(),
        serve_args: None,
        apis: vec![api],
        worker: None,
        _data: data,
        _scratch: Scratch::default(),
    }
}

/// How long a process of the full stack may take to reach its backing services.
const START_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn full_stack() -> Served {
    full_stack_replicas(1).await
}

/// The full stack with `replicas` API processes on the same backing services (and one worker).
pub async fn full_stack_replicas(replicas: usize) -> Served {
    let run = unique_name();
    let queue = format!("chatsys.test.{run}");
    let redis_prefix = format!("chatsys-test-{run}");
    let redis_cache_url = format!("{}/1", redis_url().trim_end_matches('/'));
    let mut scratch = Scratch::default();
    scratch.owns_command_queues(&amqp_url(), &queue);
    scratch.owns_redis_keys(&redis_url(), &redis_prefix);
    scratch.owns_redis_keys(&redis_cache_url, &redis_prefix);
    let database = TestDatabase::create(&run, &mut scratch).await;
    let data = tempfile::tempdir().expect("temporary data directory");
    let backends = Backends {
        database_url: Some(database.url),
        redis_url: Some(redis_url()),
        // The cache's role in a logical database of its own, so the contract runs over both roles.
        redis_cache_url: Some(redis_cache_url),
        amqp_url: Some(amqp_url()),
        opensearch_url: None,
        data_dir: data.path().to_path_buf(),
        queue,
        // Two queues, so that the whole contract also runs with commands spread over queues.
        queue_shards: 2,
        redis_prefix,
        migrate: true,
        cache_ttl_secs: 300,
        cache_max_page_bytes: 1 << 20,
        cache_max_app_bytes: 64 << 20,
        log_format: "text".into(),
    };
    let worker_args = WorkerArgs {
        backends: backends.clone(),
        listen: loopback(),
        batch_size: 500,
        batch_wait_ms: 20,
        batch_bytes: chatsys_settings::DEFAULT_BATCH_BYTES,
        prefetch: 2000,
        prefetch_bytes: chatsys_settings::DEFAULT_PREFETCH_BYTES,
        max_attempts: 3,
        repair_interval_secs: 300,
    };
    // The processes wait for a missing service rather than fail: bound the wait, so a missing
    // service fails the test instead of hanging it.
    let worker = tokio::time::timeout(START_WITHIN, chatsys_worker::start(&worker_args))
        .await
        .expect("the worker started within 30 s (are MariaDB, Redis and RabbitMQ running?)")
        .expect("start the worker");
    let api_args = ServeArgs {
        listen: loopback(),
        metrics_listen: None,
        backends: Backends {
            migrate: false,
            ..backends
        },
        access: access(),
        db_pool_size: 8,
        publish_channels: 1,
        publish_timeout_ms: 5000,
        max_request_bytes: 1_048_576,
        hot_page_cache_bytes: 33_554_432,
        http: quick_heartbeat(),
        reseed_margin: 10_000,
    };
    let mut apis = Vec::new();
    for _ in 0..replicas.max(1) {
        let api = tokio::time::timeout(START_WITHIN, chatsys_api::start(&api_args))
            .await
            .expect("the API started within 30 s (are MariaDB, Redis and RabbitMQ running?)")
            .expect("start the API");
        apis.push(api);
    }
    let mut targets = apis.iter().map(|api| {
        Target::new(url(api.addr), Some(ADMIN_KEY.into())).with_allowed_origin(ALLOWED_ORIGIN)
    });
    Served {
        target: targets.next().expect("one replica at least"),
        replicas: targets.collect(),
        serve_args: Some(api_args),
        apis,
        worker: Some(worker),
        _data: data,
        _scratch: scratch,
    }
}

/// `t<seconds>_<random>`: unique per run, and old ones can be recognised and removed.
pub fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    format!("t{now}_{:08x}", rand::random::<u32>())
}

/// A MySQL database for one run, dropped with the scratch that owns it. Databases left by runs over an
/// hour old (a test killed before it could drop its own) are dropped on creation.
pub struct TestDatabase {
    pub url: String,
}

impl TestDatabase {
    pub async fn create(run: &str, scratch: &mut Scratch) -> TestDatabase {
        use sqlx::Connection;
        let server = mysql_server_url();
        let mut conn = sqlx::MySqlConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("MariaDB is not reachable at {server}: {e}"));
        let name = format!("chatsys_{run}");
        let stale: Vec<(String,)> = sqlx::query_as("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'chatsys\\_t%'")
            .fetch_all(&mut conn)
            .await
            .expect("list test databases");
        let hour_ago = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            .saturating_sub(3600);
        for (old,) in stale {
            let created = old
                .trim_start_matches("chatsys_t")
                .split('_')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            if created.is_some_and(|t| t < hour_ago) {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{old}`"
                )))
                .execute(&mut conn)
                .await;
            }
        }
        scratch.owns_database(&server, &name);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )))
        .execute(&mut conn)
        .await
        .expect("create the test database");
        TestDatabase {
            url: format!("{}/{name}", server.trim_end_matches('/')),
        }
    }
}
