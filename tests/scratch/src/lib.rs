//! What a test or a bench run makes on the shared MariaDB, Redis and RabbitMQ (a database, command
//! queues, keys under a prefix), removed when it ends, passed or failed: a [`Scratch`] removes what it
//! owns when it is dropped, and a failed assertion drops it too. Runs otherwise pile their queues,
//! databases and keys up on services that every run and every developer shares.
//!
//! A crate of its own, with no chatsys crate but the settings below it, so that the tests of every crate
//! and the bench can use it.

use std::future::Future;
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use sqlx::Connection as _;

/// How long a removal, or a stop before it, may take before the test goes on without it.
const WITHIN: Duration = Duration::from_secs(10);

/// The databases, command queues and Redis keys one test made, removed when this is dropped.
#[derive(Default)]
pub struct Scratch {
    /// (MySQL server URL, database name)
    databases: Vec<(String, String)>,
    /// (AMQP URL, base name of the command queues)
    command_queues: Vec<(String, String)>,
    /// (Redis URL, key prefix)
    redis_keys: Vec<(String, String)>,
}

impl Scratch {
    /// Database `name` on the server at `server_url`, to be dropped. Register it before creating it, so
    /// that a failed creation leaves nothing either.
    pub fn owns_database(&mut self, server_url: &str, name: &str) {
        self.databases.push((server_url.into(), name.into()));
    }

    /// The command queues named `base` (see [`command_queue_names`]).
    pub fn owns_command_queues(&mut self, amqp_url: &str, base: &str) {
        self.command_queues.push((amqp_url.into(), base.into()));
    }

    /// Every key under `prefix` (keys are `<prefix>:…`) in the Redis database at `redis_url`.
    pub fn owns_redis_keys(&mut self, redis_url: &str, prefix: &str) {
        self.redis_keys.push((redis_url.into(), prefix.into()));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut self.databases);
        let command_queues = std::mem::take(&mut self.command_queues);
        let redis_keys = std::mem::take(&mut self.redis_keys);
        if databases.is_empty() && command_queues.is_empty() && redis_keys.is_empty() {
            return;
        }
        let removed = off_runtime(async move {
            let mut failures = Vec::new();
            for (server, name) in &databases {
                if let Err(error) = drop_database(server, name).await {
                    failures.push(format!("database {name}: {error}"));
                }
            }
            for (url, base) in &command_queues {
                if let Err(error) = delete_queues(url, &command_queue_names(base)).await {
                    failures.push(format!("queues {base}: {error}"));
                }
            }
            for (url, prefix) in &redis_keys {
                if let Err(error) = unlink_keys(url, prefix).await {
                    failures.push(format!("Redis keys {prefix}:* at {url}: {error}"));
                }
            }
            failures
        });
        // A panic here would abort a test that is already failing, and hide why: say it instead.
        match removed {
            Some(failures) if failures.is_empty() => {}
            Some(failures) => eprintln!("left behind: {}", failures.join("; ")),
            None => eprintln!("left behind: the removal did not finish"),
        }
    }
}

/// Runs `future` to its end on a thread and runtime of its own: `None` when it took over [`WITHIN`], or
/// panicked (which the panic says). A
/// `Drop` may run inside the test's runtime, where nothing can block on a future; the test's runtime
/// still runs its tasks meanwhile, so this can also wait for them to stop.
pub fn off_runtime<F>(future: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the clean-up")
            .block_on(async { tokio::time::timeout(WITHIN, future).await })
            .ok()
    })
    .join()
    .ok()
    .flatten()
}

/// The MySQL server the tests use, as a URL without a database: `CHATSYS_TEST_MYSQL_URL`, or the
/// local MariaDB.
pub fn mysql_server() -> String {
    std::env::var("CHATSYS_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A connection to [`mysql_server`] as its administrator; a server that is not there fails the test.
pub async fn mysql_admin() -> sqlx::MySqlConnection {
    let server = mysql_server();
    sqlx::MySqlConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {server}: {e}"))
}

/// Drops database `name` on the MySQL server at `server` (a URL without a database), if it exists.
pub async fn drop_database(server: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut connection = sqlx::MySqlConnection::connect(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&mut connection)
    .await?;
    connection.close().await
}

/// Every queue the command queues named `base` can be: each shard the settings allow (a worker consumes,
/// and an API declares, more than a run may have set), quorum and classic (a test of the migration
/// from classic queues makes those), and both dead-letter queues.
pub fn command_queue_names(base: &str) -> Vec<String> {
    (0..usize::from(chatsys_settings::MAX_QUEUE_SHARDS))
        .flat_map(|shard| {
            [
                chatsys_settings::command_queue_name(base, shard),
                chatsys_settings::classic_command_queue_name(base, shard),
            ]
        })
        .chain([
            chatsys_settings::dead_letter_queue_name(base),
            chatsys_settings::classic_dead_letter_queue_name(base),
        ])
        .collect()
}

/// Deletes the queues named, those that exist.
pub async fn delete_queues(url: &str, names: &[String]) -> Result<(), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut channel = connection.create_channel().await?;
    for name in names {
        let name = name.as_str();
        // RabbitMQ deletes a queue that is not there as a no-op; a broker that refuses it closes the
        // channel instead, so the next queue gets a new one.
        if channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .is_err()
        {
            channel = connection.create_channel().await?;
        }
    }
    connection.close(200, "scratch removed".into()).await
}

/// Deletes every key under `prefix` (`<prefix>:…`). SCAN and UNLINK, not KEYS: the Redis is shared, and
/// KEYS blocks it for the whole keyspace.
pub async fn unlink_keys(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
