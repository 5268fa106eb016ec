//! Every setting of the chatsys binaries, defined once: its flag, its environment variable and its
//! default. The binaries parse them with these types; the operator writes the environment variables by
//! the names in [`env`], and a test of the operator parses what it renders with these parsers.
//! docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The environment variable of each setting.
pub mod env {
    pub const AMQP_URL: &str = "AMQP_URL";
    pub const CHATSYS_ADMIN_KEY: &str = "CHATSYS_ADMIN_KEY";
    pub const CHATSYS_BODY_TIMEOUT_MS: &str = "CHATSYS_BODY_TIMEOUT_MS";
    pub const CHATSYS_CACHE_MAX_BYTES: &str = "CHATSYS_CACHE_MAX_BYTES";
    pub const CHATSYS_CACHE_MAX_PAGE_BYTES: &str = "CHATSYS_CACHE_MAX_PAGE_BYTES";
    pub const CHATSYS_CACHE_TTL_SECS: &str = "CHATSYS_CACHE_TTL_SECS";
    pub const CHATSYS_CORS_ALLOWED_ORIGINS: &str = "CHATSYS_CORS_ALLOWED_ORIGINS";
    pub const CHATSYS_DATA_DIR: &str = "CHATSYS_DATA_DIR";
    pub const CHATSYS_DB_POOL_SIZE: &str = "CHATSYS_DB_POOL_SIZE";
    pub const CHATSYS_EVENT_HEARTBEAT_MS: &str = "CHATSYS_EVENT_HEARTBEAT_MS";
    pub const CHATSYS_EVENT_MAX_BEHIND: &str = "CHATSYS_EVENT_MAX_BEHIND";
    pub const CHATSYS_EVENT_MAX_BEHIND_BYTES: &str = "CHATSYS_EVENT_MAX_BEHIND_BYTES";
    pub const CHATSYS_EVENT_MAX_STREAMS_PER_APP: &str = "CHATSYS_EVENT_MAX_STREAMS_PER_APP";
    pub const CHATSYS_EVENT_MAX_CHATS: &str = "CHATSYS_EVENT_MAX_CHATS";
    pub const CHATSYS_RATE_LIMIT_PER_APP: &str = "CHATSYS_RATE_LIMIT_PER_APP";
    pub const CHATSYS_EVENT_MAX_QUIET_SECS: &str = "CHATSYS_EVENT_MAX_QUIET_SECS";
    pub const CHATSYS_EVENT_MAX_LIFETIME_SECS: &str = "CHATSYS_EVENT_MAX_LIFETIME_SECS";
    pub const CHATSYS_HEADER_TIMEOUT_MS: &str = "CHATSYS_HEADER_TIMEOUT_MS";
    pub const CHATSYS_HOT_PAGE_CACHE_BYTES: &str = "CHATSYS_HOT_PAGE_CACHE_BYTES";
    pub const CHATSYS_IDLE_TIMEOUT_SECS: &str = "CHATSYS_IDLE_TIMEOUT_SECS";
    pub const CHATSYS_LISTEN: &str = "CHATSYS_LISTEN";
    pub const CHATSYS_LOG_FORMAT: &str = "CHATSYS_LOG_FORMAT";
    pub const CHATSYS_MAX_CONNECTIONS: &str = "CHATSYS_MAX_CONNECTIONS";
    pub const CHATSYS_MAX_HEADER_BYTES: &str = "CHATSYS_MAX_HEADER_BYTES";
    pub const CHATSYS_MAX_HEADERS: &str = "CHATSYS_MAX_HEADERS";
    pub const CHATSYS_MAX_URI_BYTES: &str = "CHATSYS_MAX_URI_BYTES";
    pub const CHATSYS_METRICS_LISTEN: &str = "CHATSYS_METRICS_LISTEN";
    pub const CHATSYS_MAX_INFLIGHT_BODY_BYTES: &str = "CHATSYS_MAX_INFLIGHT_BODY_BYTES";
    pub const CHATSYS_MAX_REQUEST_BYTES: &str = "CHATSYS_MAX_REQUEST_BYTES";
    pub const CHATSYS_MIGRATE: &str = "CHATSYS_MIGRATE";
    pub const CHATSYS_PUBLISH_CHANNELS: &str = "CHATSYS_PUBLISH_CHANNELS";
    pub const CHATSYS_PUBLISH_TIMEOUT_MS: &str = "CHATSYS_PUBLISH_TIMEOUT_MS";
    pub const CHATSYS_QUEUE: &str = "CHATSYS_QUEUE";
    pub const CHATSYS_QUEUE_SHARDS: &str = "CHATSYS_QUEUE_SHARDS";
    pub const CHATSYS_REDIS_PREFIX: &str = "CHATSYS_REDIS_PREFIX";
    pub const CHATSYS_RESEED_MARGIN: &str = "CHATSYS_RESEED_MARGIN";
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const OPENSEARCH_URL: &str = "OPENSEARCH_URL";
    pub const REDIS_URL: &str = "REDIS_URL";
    pub const REDIS_CACHE_URL: &str = "REDIS_CACHE_URL";
    pub const CHATSYS_CACHE_MAX_APP_BYTES: &str = "CHATSYS_CACHE_MAX_APP_BYTES";
    pub const CHATSYS_BATCH_SIZE: &str = "CHATSYS_BATCH_SIZE";
    pub const CHATSYS_BATCH_WAIT_MS: &str = "CHATSYS_BATCH_WAIT_MS";
    pub const CHATSYS_PREFETCH: &str = "CHATSYS_PREFETCH";
    pub const CHATSYS_PREFETCH_BYTES: &str = "CHATSYS_PREFETCH_BYTES";
    pub const CHATSYS_BATCH_BYTES: &str = "CHATSYS_BATCH_BYTES";
    pub const CHATSYS_MAX_ATTEMPTS: &str = "CHATSYS_MAX_ATTEMPTS";
    pub const CHATSYS_REPAIR_INTERVAL_SECS: &str = "CHATSYS_REPAIR_INTERVAL_SECS";
}

/// The worker's defaults for the bytes of a batch and of its prefetch; the operator sizes the worker's
/// memory limit from the values it sets.
pub const DEFAULT_BATCH_BYTES: u64 = 16 << 20;
pub const DEFAULT_PREFETCH_BYTES: u64 = 256 << 20;

/// The most queues commands may be spread over.
pub const MAX_QUEUE_SHARDS: u16 = 64;

/// Queue `shard` of the command queues that `--queue` and `--queue-shards` name, all quorum queues:
/// `<queue>.quorum` for shard 0, so raising the count keeps what is queued, and `<queue>.quorum.<shard>`
/// for the others. The API publishes to them, the workers consume them, and the operator's autoscaler
/// watches them. Names of their own: a queue's type cannot change, and the classic queues of earlier
/// releases (see [`classic_command_queue_name`]) keep theirs while they drain.
pub fn command_queue_name(queue: &str, shard: usize) -> String {
    shard_name(&format!("{queue}.quorum"), shard)
}

/// The quorum dead-letter queue of the command queues named `queue`: `<queue>.quorum.dead`.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}.quorum.dead")
}

/// Classic queue `shard` of the releases before quorum queues: `<queue>`, then `<queue>.<shard>`. The
/// workers drain them and delete them once empty; nothing publishes to them but an API of an earlier
/// release.
pub fn classic_command_queue_name(queue: &str, shard: usize) -> String {
    shard_name(queue, shard)
}

/// The classic dead-letter queue of the releases before quorum queues, `<queue>.dead`: kept, with
/// whatever commands it holds, until an operator empties and deletes it.
pub fn classic_dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}.dead")
}

fn shard_name(first: &str, shard: usize) -> String {
    match shard {
        0 => first.to_string(),
        shard => format!("{first}.{shard}"),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "chatsys-api",
    version,
    about = "The chatsys REST API",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API against MySQL, Redis, RabbitMQ and OpenSearch (the default).
    Serve(ServeArgs),
    /// Apply the schema migrations and exit.
    Migrate(MigrateArgs),
    /// The whole system in one process, with embedded storage, queue, cache and search.
    Standalone(StandaloneArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Index every message the database holds, and exit: once after an upgrade whose release notes say
    /// the search index changed, or to rebuild a lost index. Harmless to repeat.
    Reindex(ReindexArgs),
}

fn required<'a>(value: &'a Option<String>, name: &str) -> anyhow::Result<&'a str> {
    value
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("{name} is required"))
}

/// Where the backing services are, shared by the API and the worker.
#[derive(Args, Debug, Clone)]
pub struct Backends {
    /// MySQL URL, mysql://user:password@host:3306/database.
    #[arg(long, env = env::DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL, redis://host:6379/0.
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A second Redis for what the cache can always read again from the database (stored
    /// applications, chats and messages, list pages), run with `allkeys-lru` and a `maxmemory`; numbers,
    /// tokens, idempotency keys and writes not yet stored stay in `REDIS_URL` (run with `noeviction`).
    /// Without it, `REDIS_URL` takes both.
    #[arg(long, env = env::REDIS_CACHE_URL, hide_env_values = true)]
    pub redis_cache_url: Option<String>,
    /// RabbitMQ URL, amqp://user:password@host:5672/%2f.
    #[arg(long, env = env::AMQP_URL, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// OpenSearch URL; when absent, the embedded index under the data directory (one worker writes it,
    /// the API reads it).
    #[arg(long, env = env::OPENSEARCH_URL, hide_env_values = true)]
    pub opensearch_url: Option<String>,
    /// Where the embedded search index lives.
    #[arg(long, env = env::CHATSYS_DATA_DIR, default_value = "./chatsys-data")]
    pub data_dir: PathBuf,
    /// The base name of the command queues (quorum queues `<queue>.quorum`, `<queue>.quorum.1` …);
    /// refused commands go to `<queue>.quorum.dead`.
    #[arg(long, env = env::CHATSYS_QUEUE, default_value = "chatsys.commands")]
    pub queue: String,
    /// Queues the API spreads commands over (by chat): `<queue>.quorum`, `<queue>.quorum.1` … Past one queue's
    /// ceiling (one Erlang process in RabbitMQ), more queues carry more. A worker consumes at least
    /// this many, and every command queue it finds besides, so none is stranded whatever the API's.
    #[arg(long, env = env::CHATSYS_QUEUE_SHARDS, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_SHARDS as i64))]
    pub queue_shards: u16,
    /// Prefix of every Redis key (several systems may share one Redis).
    #[arg(long, env = env::CHATSYS_REDIS_PREFIX, default_value = "chatsys")]
    pub redis_prefix: String,
    /// Apply migrations at start (safe with many replicas).
    #[arg(long, env = env::CHATSYS_MIGRATE, default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Lifetime of cache entries and read-your-writes records.
    #[arg(long, env = env::CHATSYS_CACHE_TTL_SECS, default_value_t = 300)]
    pub cache_ttl_secs: u64,
    /// Largest rendered list page kept in the cache, in bytes; larger pages are read from the
    /// database each time.
    #[arg(
        long,
        env = env::CHATSYS_CACHE_MAX_PAGE_BYTES,
        default_value_t = 1_048_576
    )]
    pub cache_max_page_bytes: usize,
    /// Bytes of list pages one application may write into the cache within its TTL (and so hold at
    /// most); past it, its pages are read from the database until the window passes.
    #[arg(long, env = env::CHATSYS_CACHE_MAX_APP_BYTES, default_value_t = 67_108_864)]
    pub cache_max_app_bytes: usize,
    /// json or text; the level comes from RUST_LOG.
    #[arg(long, env = env::CHATSYS_LOG_FORMAT, default_value = "json")]
    pub log_format: String,
}

impl Backends {
    pub fn database_url(&self) -> anyhow::Result<&str> {
        required(&self.database_url, "--database-url (DATABASE_URL)")
    }
    pub fn redis_url(&self) -> anyhow::Result<&str> {
        required(&self.redis_url, "--redis-url (REDIS_URL)")
    }
    pub fn amqp_url(&self) -> anyhow::Result<&str> {
        required(&self.amqp_url, "--amqp-url (AMQP_URL)")
    }
}

/// MySQL connections each process opens, for sizing the database's connection limit (the operator
/// does so from the replica maxima).
pub mod connections {
    /// The API's pool, by default (`CHATSYS_DB_POOL_SIZE`).
    pub const API_POOL: u32 = 16;
    /// The worker's pool: one batch writes at a time, plus the counts repair and reads.
    pub const WORKER_POOL: u32 = 4;
    /// `chatsys-api migrate`: its pool and the connection that holds the migration lock.
    pub const MIGRATE: u32 = 3;
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = env::CHATSYS_LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// When set, `/metrics` is served on this address and no longer on the API's port, so what
    /// routes clients to the API cannot reach it.
    #[arg(long, env = env::CHATSYS_METRICS_LISTEN)]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub backends: Backends,
    #[command(flatten)]
    pub access: Access,
    /// MySQL connections.
    #[arg(long, env = env::CHATSYS_DB_POOL_SIZE, default_value_t = connections::API_POOL)]
    pub db_pool_size: u32,
    /// Envelopes awaiting their confirms at once per command queue, each on an AMQP channel of its own:
    /// the commands waiting meanwhile go out together in the next one.
    #[arg(long, env = env::CHATSYS_PUBLISH_CHANNELS, default_value_t = 1)]
    pub publish_channels: usize,
    /// A publish not confirmed by then answers 503.
    #[arg(long, env = env::CHATSYS_PUBLISH_TIMEOUT_MS, default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// Larger requests get 413.
    #[arg(long, env = env::CHATSYS_MAX_REQUEST_BYTES, default_value_t = 1_048_576)]
    pub max_request_bytes: usize,
    /// Bytes of rendered list pages each API process also keeps in its own memory (0: none), so a hot
    /// page is served without asking Redis; as fresh as the Redis cache (a commit shows within 250 ms).
    #[arg(long, env = env::CHATSYS_HOT_PAGE_CACHE_BYTES, default_value_t = 33_554_432)]
    pub hot_page_cache_bytes: u64,
    #[command(flatten)]
    pub http: HttpSettings,
    /// Numbers skipped when a counter lost from Redis is rebuilt; must exceed what can be in flight
    /// (prefetch × workers plus publishes under way).
    #[arg(long, env = env::CHATSYS_RESEED_MARGIN, default_value_t = 10_000)]
    pub reseed_margin: u64,
}

/// Who may call the API besides token holders (the admin key, and the origins of web pages), and how
/// much each application may write.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// The key that lists every application (`Authorization: Bearer <key>` on GET /applications);
    /// without one, listing is refused.
    #[arg(long, env = env::CHATSYS_ADMIN_KEY, hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Origins whose web pages may call the API (exact, comma-separated, as a browser sends them:
    /// `https://app.example.com`); none by default. A request from any other origin is refused.
    #[arg(long, env = env::CHATSYS_CORS_ALLOWED_ORIGINS, value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allowed_origins: Vec<String>,
    /// Writes one application may make per second on one API replica (creates and edits; a message
    /// counts once per started 16 KiB of body), with a burst of one second's worth; past it, 429 with
    /// Retry-After. 0 leaves writes unlimited. What keeps one tenant from filling the queue that every
    /// tenant's writes wait in.
    #[arg(long, env = env::CHATSYS_RATE_LIMIT_PER_APP, default_value_t = 0.0)]
    pub rate_limit_per_app: f64,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// MySQL URL, mysql://user:password@host:3306/database.
    #[arg(long, env = env::DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// json or text.
    #[arg(long, env = env::CHATSYS_LOG_FORMAT, default_value = "json")]
    pub log_format: String,
}

impl MigrateArgs {
    pub fn database_url(&self) -> anyhow::Result<&str> {
        required(&self.database_url, "--database-url (DATABASE_URL)")
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReindexArgs {
    /// MySQL URL; when absent, the standalone database under `--data-dir`.
    #[arg(long, env = env::DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// OpenSearch URL; when absent, the embedded index under `--data-dir` (stop the process that writes
    /// it first: one process at a time may).
    #[arg(long, env = env::OPENSEARCH_URL, hide_env_values = true)]
    pub opensearch_url: Option<String>,
    #[arg(long, env = env::CHATSYS_DATA_DIR, default_value = "./chatsys-data")]
    pub data_dir: PathBuf,
    /// json or text.
    #[arg(long, env = env::CHATSYS_LOG_FORMAT, default_value = "text")]
    pub log_format: String,
}

#[derive(Args, Debug, Clone)]
pub struct StandaloneArgs {
    /// HTTP listen address.
    #[arg(long, env = env::CHATSYS_LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database, the queue and the search index live; kept across restarts.
    #[arg(long, env = env::CHATSYS_DATA_DIR, default_value = "./chatsys-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub access: Access,
    /// Lifetime of cache entries.
    #[arg(long, env = env::CHATSYS_CACHE_TTL_SECS, default_value_t = 300)]
    pub cache_ttl_secs: u64,
    /// Bytes of messages and list pages the in-process cache holds at most (half each).
    #[arg(long, env = env::CHATSYS_CACHE_MAX_BYTES, default_value_t = 67_108_864)]
    pub cache_max_bytes: u64,
    /// Largest rendered list page kept in the cache, in bytes; larger pages are read from the
    /// database each time.
    #[arg(
        long,
        env = env::CHATSYS_CACHE_MAX_PAGE_BYTES,
        default_value_t = 1_048_576
    )]
    pub cache_max_page_bytes: usize,
    /// Larger requests get 413.
    #[arg(long, env = env::CHATSYS_MAX_REQUEST_BYTES, default_value_t = 1_048_576)]
    pub max_request_bytes: usize,
    #[command(flatten)]
    pub http: HttpSettings,
    /// json or text; the level comes from RUST_LOG.
    #[arg(long, env = env::CHATSYS_LOG_FORMAT, default_value = "text")]
    pub log_format: String,
}

/// How long the HTTP server waits for clients, and how many of them it takes at once: the limits that
/// keep slow or silent clients from holding sockets and memory. Shared by `serve` and `standalone`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// A request's head (request line and headers) must arrive within this many milliseconds of the
    /// connection opening or of its first byte; otherwise the connection is closed.
    #[arg(long, env = env::CHATSYS_HEADER_TIMEOUT_MS, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// A request's body must arrive whole within this many milliseconds of the handler starting to read
    /// it; otherwise 408.
    #[arg(long, env = env::CHATSYS_BODY_TIMEOUT_MS, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,
    /// A kept-alive connection with no request for this many seconds is closed.
    #[arg(long, env = env::CHATSYS_IDLE_TIMEOUT_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    #[arg(long, env = env::CHATSYS_MAX_CONNECTIONS, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Bytes of request bodies held in memory at once, over all requests; an upload that would go over
    /// it (after a short wait) gets 503 with Retry-After.
    #[arg(long, env = env::CHATSYS_MAX_INFLIGHT_BODY_BYTES, default_value_t = 67_108_864, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_inflight_body_bytes: u64,
    /// A live event stream with nothing to send for this many milliseconds sends a comment line, so
    /// proxies do not close it as idle.
    #[arg(long, env = env::CHATSYS_EVENT_HEARTBEAT_MS, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_heartbeat_ms: u64,
    /// A live event stream that sent no event for this many seconds ends (its client resumes with its
    /// last id): heartbeats keep proxies from closing a quiet stream, but do not keep it for ever, so a
    /// client that stopped reading does not hold its connection.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_QUIET_SECS, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_max_quiet_secs: u64,
    /// Events a live stream's client may be behind before the stream is ended (it resumes from its last
    /// id): what bounds the memory a slow reader holds.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_BEHIND, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_max_behind: u32,
    /// Bytes of events each streamed chat keeps for its streams behind; a stream further behind is
    /// ended the same way.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_BEHIND_BYTES, default_value_t = 4_194_304, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_max_behind_bytes: u64,
    /// Live event streams one application may have open on one server; more get 429. The server's
    /// own streams stop short of `max_connections`, keeping a tenth of them (8 at least) for other
    /// requests and health checks.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_STREAMS_PER_APP, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_max_streams_per_app: u32,
    /// Distinct chats one server streams at once (each costs a little memory and a subscription);
    /// a stream of one more gets 429.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_CHATS, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_max_chats: u32,
    /// A live event stream ends after this many seconds (its client reconnects with its last id, losing
    /// nothing): long-lived connections spread again over the replicas after a scale-out, and no stream
    /// outlives a proxy's timeout.
    #[arg(long, env = env::CHATSYS_EVENT_MAX_LIFETIME_SECS, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_max_lifetime_secs: u64,
    /// Longest request target (path and query) answered, in bytes; a longer one gets 414.
    #[arg(long, env = env::CHATSYS_MAX_URI_BYTES, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(64..=MAX_URI_BYTES_CEILING as i64))]
    pub max_uri_bytes: u32,
    /// Most request headers answered; more get 431.
    #[arg(long, env = env::CHATSYS_MAX_HEADERS, default_value_t = 100, value_parser = clap::value_parser!(u32).range(8..=MAX_HEADERS_CEILING as i64))]
    pub max_headers: u32,
    /// Most bytes of request headers (names and values) answered; more get 431.
    #[arg(long, env = env::CHATSYS_MAX_HEADER_BYTES, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1024..=MAX_HEADER_BYTES_CEILING as i64))]
    pub max_header_bytes: u32,
}

/// The highest the request limits may be set: the HTTP server's own limits sit above them, so that
/// every request over one of ours reaches the API and is answered in its error format.
pub const MAX_URI_BYTES_CEILING: u32 = 32_768;
pub const MAX_HEADERS_CEILING: u32 = 200;
pub const MAX_HEADER_BYTES_CEILING: u32 = 65_536;

/// What follows an origin's `http://` or `https://`: its host and maybe its port.
pub fn origin_authority(origin: &str) -> Option<&str> {
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
}

/// An origin as browsers send it in `Origin`: `http` or `https`, a host and maybe a port, nothing after.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim();
    let authority = origin_authority(origin).ok_or_else(|| {
        format!("{origin:?} is not an origin: it starts with http:// or https://")
    })?;
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err(format!(
            "{origin:?} is not an origin: a scheme, a host and maybe a port, with no path (no trailing /)"
        ));
    }
    Ok(origin.to_ascii_lowercase())
}

/// The same values as the flags' defaults (a test checks that they agree).
impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_secs: 60,
            max_connections: 10_000,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            event_heartbeat_ms: 15_000,
            event_max_quiet_secs: 300,
            event_max_behind: 1024,
            event_max_behind_bytes: 4 * 1024 * 1024,
            event_max_streams_per_app: 100,
            event_max_chats: 2000,
            event_max_lifetime_secs: 3600,
            max_uri_bytes: 8192,
            max_headers: 100,
            max_header_bytes: 16_384,
        }
    }
}

impl HttpSettings {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn event_heartbeat(&self) -> Duration {
        Duration::from_millis(self.event_heartbeat_ms)
    }

    pub fn event_max_quiet(&self) -> Duration {
        Duration::from_secs(self.event_max_quiet_secs)
    }

    pub fn event_max_lifetime(&self) -> Duration {
        Duration::from_secs(self.event_max_lifetime_secs)
    }

    /// Live event streams served at once: the connections less a tenth (8 at least, all but one at
    /// most), which other requests and health checks keep.
    pub fn event_max_streams(&self) -> usize {
        let connections = self.max_connections as usize;
        let kept = (connections / 10).max(8).min(connections - 1);
        connections - kept
    }
}

/// The worker's settings.
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
    #[arg(long, env = env::CHATSYS_LISTEN, default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Commands written per transaction.
    #[arg(long, env = env::CHATSYS_BATCH_SIZE, default_value_t = 1000)]
    pub batch_size: usize,
    /// How long a partial batch waits for more commands.
    #[arg(long, env = env::CHATSYS_BATCH_WAIT_MS, default_value_t = 20)]
    pub batch_wait_ms: u64,
    /// Payload bytes written per transaction at most (a larger single command goes alone).
    #[arg(long, env = env::CHATSYS_BATCH_BYTES, default_value_t = DEFAULT_BATCH_BYTES)]
    pub batch_bytes: u64,
    /// Unacknowledged deliveries held.
    #[arg(long, env = env::CHATSYS_PREFETCH, default_value_t = 8000)]
    pub prefetch: u16,
    /// Bytes of unacknowledged deliveries held at most, counting each as the largest command can be:
    /// the prefetch is lowered to fit (with the default, about 4,000 deliveries).
    #[arg(long, env = env::CHATSYS_PREFETCH_BYTES, default_value_t = DEFAULT_PREFETCH_BYTES)]
    pub prefetch_bytes: u64,
    /// Tries before a refused command goes to the dead-letter queue.
    #[arg(long, env = env::CHATSYS_MAX_ATTEMPTS, default_value_t = 5)]
    pub max_attempts: u32,
    /// Period of the counts repair.
    #[arg(long, env = env::CHATSYS_REPAIR_INTERVAL_SECS, default_value_t = 300)]
    pub repair_interval_secs: u64,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn http_settings_default_to_the_flags_defaults() {
        let cli = Cli::try_parse_from(["chatsys-api", "standalone"]).unwrap();
        let Some(Command::Standalone(standalone)) = cli.command else {
            panic!("standalone parsed as {:?}", cli.command);
        };
        assert_eq!(standalone.http, HttpSettings::default());
        let serve = Cli::try_parse_from(["chatsys-api"]).unwrap().serve;
        assert_eq!(serve.http, HttpSettings::default());
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let standalone = |args: &[&str]| {
            let argv = [&["chatsys-api", "standalone"][..], args].concat();
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Some(Command::Standalone(standalone)) => standalone.access.cors_allowed_origins,
                other => panic!("standalone parsed as {other:?}"),
            })
        };
        assert_eq!(standalone(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            standalone(&[
                "--cors-allowed-origins",
                "https://App.example.com,http://127.0.0.1:3000"
            ])
            .unwrap(),
            ["https://app.example.com", "http://127.0.0.1:3000"]
        );
        for refused in [
            "https://app.example.com/",
            "app.example.com",
            "*",
            "null",
            "https://a b",
        ] {
            assert!(
                standalone(&["--cors-allowed-origins", refused]).is_err(),
                "{refused:?} was taken as an origin"
            );
        }
    }
}
