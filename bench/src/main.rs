//! The benchmark of issue 6: throughput and latency of the running system, next to the raw limits of the
//! services it is built on, measured in one run and reported as ratios.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chatsys_bench::client::{Connection, create_application, create_chat_number, metric_sum};
use chatsys_bench::cpu::{CpuSnapshot, CpuUse, MACHINE, find_processes, services};
use chatsys_bench::isolation::{self, IsolationFigures};
use chatsys_bench::load::{self, ChatTarget, Outcome, Pace};
use chatsys_bench::raw::{self, DatabaseLimits, QueueFlow, QueueLimits, QueueLoad};
use chatsys_bench::stats::{LatencySummary, Rate};
use chatsys_bench::system::{Endpoints, Options, Role, System, parse_env};
use clap::Parser;
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::time::Instant;

/// Measures chatsys against the limits of MariaDB, Redis and RabbitMQ on this machine.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The whole pipeline at tiny sizes, in seconds (CI keeps the benchmark working with it).
    #[arg(long)]
    smoke: bool,
    /// Measure only the raw limits of the services, without starting chatsys.
    #[arg(long)]
    raw_only: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the database, queues, Redis keys and process logs of the run.
    #[arg(long)]
    keep: bool,
    /// Extra environment for the chatsys processes, e.g. `--env CHATSYS_BATCH_SIZE=100`; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[arg(long, default_value_t = 20)]
    apps: usize,
    #[arg(long, default_value_t = 10)]
    chats_per_app: usize,
    /// Keep-alive connections of the create and read load.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Every message create carries a fresh `Idempotency-Key`, as a client that retries sends them.
    #[arg(long)]
    idempotency_keys: bool,
    /// Length of each measured load phase.
    #[arg(long, default_value_t = 10)]
    phase_secs: u64,
    /// Offered rate of the end-to-end visibility phase, messages/s.
    #[arg(long, default_value_t = 1000.0)]
    visibility_rate: f64,
    /// Chats the visibility phase writes to, each watched by one poller.
    #[arg(long, default_value_t = 20)]
    visibility_chats: usize,
    /// Messages queued while the worker is stopped, then drained.
    #[arg(long, default_value_t = 60_000)]
    ingest_messages: u64,
    /// Length of each raw-limit measurement.
    #[arg(long, default_value_t = 5)]
    raw_secs: u64,
    /// Upper bound of raw publishes (and consumes).
    #[arg(long, default_value_t = 150_000)]
    raw_publishes: u64,
    /// Bodies of 64 KiB one application writes while another's small messages are timed to search.
    #[arg(long, default_value_t = 1000)]
    isolation_large: u64,
}

/// The sizes a run uses: the flags, or the smoke sizes.
#[derive(Debug, Clone, Serialize)]
struct Sizes {
    apps: usize,
    chats_per_app: usize,
    connections: usize,
    body_bytes: usize,
    idempotency_keys: bool,
    phase_secs: f64,
    visibility_rate: f64,
    visibility_chats: usize,
    ingest_messages: u64,
    raw_secs: f64,
    raw_publishes: u64,
    isolation_large: u64,
    isolation_probes: usize,
    concurrent_searches: usize,
}

impl Sizes {
    fn of(args: &Args) -> Self {
        if args.smoke {
            return Self {
                apps: 2,
                chats_per_app: 2,
                connections: 4,
                body_bytes: args.body_bytes,
                idempotency_keys: args.idempotency_keys,
                phase_secs: 1.0,
                visibility_rate: 50.0,
                visibility_chats: 2,
                ingest_messages: 200,
                raw_secs: 0.5,
                raw_publishes: 2_000,
                isolation_large: 20,
                isolation_probes: 2,
                concurrent_searches: 2,
            };
        }
        Self {
            apps: args.apps,
            chats_per_app: args.chats_per_app,
            connections: args.connections,
            body_bytes: args.body_bytes,
            idempotency_keys: args.idempotency_keys,
            phase_secs: args.phase_secs as f64,
            visibility_rate: args.visibility_rate,
            visibility_chats: args.visibility_chats.min(args.apps * args.chats_per_app),
            ingest_messages: args.ingest_messages,
            raw_secs: args.raw_secs as f64,
            raw_publishes: args.raw_publishes,
            isolation_large: args.isolation_large,
            isolation_probes: 10,
            concurrent_searches: 16,
        }
    }

    fn phase(&self) -> Duration {
        Duration::from_secs_f64(self.phase_secs)
    }

    fn raw(&self) -> Duration {
        Duration::from_secs_f64(self.raw_secs)
    }
}

#[derive(Debug, Default, Serialize)]
struct Report {
    smoke: bool,
    sizes: Option<Sizes>,
    machine: Machine,
    raw: RawLimits,
    create_full_load: Option<LoadFigures>,
    create_half_rate: Option<LoadFigures>,
    visibility: Option<VisibilityFigures>,
    ingest: Option<IngestFigures>,
    reads_warm: Option<LoadFigures>,
    reads_cold: Option<LoadFigures>,
    isolation: Option<IsolationFigures>,
    /// Peak memory through the phases the memory targets speak of (before the isolation phase).
    memory: Option<MemoryFigures>,
    /// Peak memory once the isolation phase's bodies of 64 KiB have gone through too.
    memory_with_isolation: Option<MemoryFigures>,
    ratios: BTreeMap<&'static str, f64>,
    targets: Vec<Target>,
}

/// Where the figures were measured.
#[derive(Debug, Default, Serialize)]
struct Machine {
    cpus: usize,
    memory_mib: u64,
    mariadb_version: Option<String>,
    redis_version: Option<String>,
}

impl Machine {
    async fn describe(endpoints: &Endpoints) -> Self {
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| {
                let line = meminfo
                    .lines()
                    .find(|line| line.starts_with("MemTotal:"))?
                    .to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        let mariadb_version = async {
            let pool = endpoints.server_pool().await?;
            let (version,): (String,) = sqlx::query_as("SELECT VERSION()").fetch_one(&pool).await?;
            pool.close().await;
            anyhow::Ok(version)
        };
        let redis_version = async {
            let client = redis::Client::open(endpoints.redis_url.as_str())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut connection)
                .await?;
            let version = info
                .lines()
                .find_map(|line| line.strip_prefix("redis_version:"))
                .map(str::to_owned);
            anyhow::Ok(version.unwrap_or_default())
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib: memory_kib / 1024,
            mariadb_version: mariadb_version.await.ok(),
            redis_version: redis_version.await.ok(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct RawLimits {
    queue: Option<QueueLimits>,
    /// Publishing and consuming at once, on one queue and on two.
    queue_flow: Vec<QueueFlow>,
    database: Option<DatabaseLimits>,
    redis_get: Option<Rate>,
    redis_get_cpu: Option<CpuUse>,
    redis_value_bytes: usize,
}

#[derive(Debug, Serialize)]
struct LoadFigures {
    offered_per_second: Option<f64>,
    rate: Rate,
    errors: u64,
    failures: BTreeMap<String, u64>,
    latency: LatencySummary,
    mean_response_bytes: f64,
    /// What each process spent during the phase, per operation completed.
    cpu: CpuUse,
    /// The API's group commits during the phase, when it creates.
    envelopes: Option<EnvelopeFigures>,
}

/// How many commands each message the API published held (its group commits), from its `/metrics`.
#[derive(Debug, Serialize, Default, Clone)]
struct EnvelopeFigures {
    messages: f64,
    commands: f64,
    mean_commands: f64,
    /// The API's summary of the sizes, since it started (quantile to commands).
    quantiles: BTreeMap<String, f64>,
}

impl EnvelopeFigures {
    const METRIC: &str = "chatsys_queue_envelope_commands";

    async fn scrape(addr: std::net::SocketAddr) -> Option<Self> {
        let mut connection = Connection::new(addr, Duration::from_secs(5));
        let response = connection.get("/metrics").await.ok()?;
        let exposition = String::from_utf8_lossy(&response.body);
        let messages = metric_sum(&exposition, &format!("{}_count", Self::METRIC))?;
        let commands = metric_sum(&exposition, &format!("{}_sum", Self::METRIC))?;
        let quantiles = ["0", "0.5", "0.9", "0.99", "1"]
            .into_iter()
            .filter_map(|q| {
                let series = format!("{}{{quantile=\"{q}\"}}", Self::METRIC);
                Some((q.to_string(), metric_sum(&exposition, &series)?))
            })
            .collect();
        Some(Self::new(messages, commands, quantiles))
    }

    fn new(messages: f64, commands: f64, quantiles: BTreeMap<String, f64>) -> Self {
        let mean_commands = if messages > 0.0 {
            commands / messages
        } else {
            0.0
        };
        Self {
            messages,
            commands,
            mean_commands,
            quantiles,
        }
    }

    /// What was published between two scrapes.
    fn since(self, before: &Option<Self>) -> Self {
        let (messages, commands) = before
            .as_ref()
            .map_or((0.0, 0.0), |b| (b.messages, b.commands));
        Self::new(
            self.messages - messages,
            self.commands - commands,
            self.quantiles,
        )
    }
}

impl LoadFigures {
    fn of(outcome: Outcome, offered_per_second: Option<f64>) -> Self {
        let mean_response_bytes = if outcome.ok > 0 {
            outcome.response_bytes as f64 / outcome.ok as f64
        } else {
            0.0
        };
        Self {
            offered_per_second,
            rate: Rate::new(outcome.ok, outcome.elapsed),
            errors: outcome.errors(),
            latency: LatencySummary::of(outcome.latencies),
            failures: outcome.failures,
            mean_response_bytes,
            cpu: CpuUse::default(),
            envelopes: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct VisibilityFigures {
    create: LoadFigures,
    /// From the 201 to the first list response that contains the message.
    latency: LatencySummary,
    /// Messages that got a 201 but never appeared in their list before the watchers stopped.
    never_seen: u64,
    poll_errors: u64,
}

#[derive(Debug, Serialize)]
struct IngestFigures {
    queued: u64,
    fill: LoadFigures,
    /// Messages stored per second, from the last look at the store before the first batch to the last batch.
    rate: Rate,
    /// From starting the worker process to the last message stored.
    seconds_from_start: f64,
    /// What each process spent over the same interval as `rate`, per message.
    cpu: CpuUse,
    /// From the worker's own metrics, when it exposes them: its batches while draining.
    batches: Option<BatchFigures>,
}

#[derive(Debug, Serialize)]
struct BatchFigures {
    count: f64,
    mean_size: f64,
    mean_seconds: f64,
    /// Seconds spent in each stage (`apply`, `cache`, `index`) over the drain, and how many times it ran:
    /// apply and cache run once a batch, index once a commit that may cover several batches.
    stages: BTreeMap<&'static str, StageFigures>,
}

#[derive(Debug, Serialize)]
struct StageFigures {
    runs: f64,
    seconds: f64,
}

impl BatchFigures {
    /// The worker records a batch after acknowledging it, a little after its rows are visible: the
    /// scrape waits for the last one.
    async fn scrape(addr: std::net::SocketAddr) -> Option<Self> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut connection = Connection::new(addr, Duration::from_secs(5));
        let response = connection.get("/metrics").await.ok()?;
        let exposition = String::from_utf8_lossy(&response.body);
        let count = metric_sum(&exposition, "chatsys_worker_batch_seconds_count")?;
        let seconds = metric_sum(&exposition, "chatsys_worker_batch_seconds_sum")?;
        let size = metric_sum(&exposition, "chatsys_worker_batch_size_sum")?;
        let stages = ["apply", "cache", "index"]
            .into_iter()
            .filter_map(|stage| {
                let series =
                    |suffix| format!("chatsys_worker_stage_seconds_{suffix}{{stage=\"{stage}\"}}");
                Some((
                    stage,
                    StageFigures {
                        runs: metric_sum(&exposition, &series("count"))?,
                        seconds: metric_sum(&exposition, &series("sum"))?,
                    },
                ))
            })
            .collect();
        (count > 0.0).then(|| Self {
            count,
            mean_size: size / count,
            mean_seconds: seconds / count,
            stages,
        })
    }
}

#[derive(Debug, Serialize)]
struct MemoryFigures {
    api_peak_mib: f64,
    worker_peak_mib: f64,
}

impl MemoryFigures {
    fn of(system: &System) -> Self {
        Self {
            api_peak_mib: system.peak_rss_bytes(Role::Api) as f64 / MIB,
            worker_peak_mib: system.peak_rss_bytes(Role::Worker) as f64 / MIB,
        }
    }
}

#[derive(Debug, Serialize)]
struct Target {
    name: &'static str,
    measured: f64,
    bound: String,
    pass: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chatsys_bench::run_to_end(async {
        tokio::select! {
            result = run(&args) => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?
}

async fn run(args: &Args) -> anyhow::Result<()> {
    args.endpoints.check_loopback()?;
    if args.apps == 0
        || args.chats_per_app == 0
        || args.connections == 0
        || args.visibility_chats == 0
    {
        bail!("--apps, --chats-per-app, --connections and --visibility-chats must be at least 1");
    }
    if args.visibility_rate.is_nan() || args.visibility_rate <= 0.0 {
        bail!("--visibility-rate must be positive");
    }
    let sizes = Sizes::of(args);
    let mut report = Report {
        smoke: args.smoke,
        machine: Machine::describe(&args.endpoints).await,
        ..Default::default()
    };

    eprintln!("raw limits: RabbitMQ publish and consume, MariaDB inserts");
    let queue_load = QueueLoad {
        payload_len: 150 + sizes.body_bytes,
        outstanding: 1000,
        prefetch: 2000,
        ack_every: 500,
        within: sizes.raw(),
    };
    report.raw.queue = Some(
        raw::amqp_publish_consume(&args.endpoints.amqp_url, sizes.raw_publishes, queue_load)
            .await
            .context("raw RabbitMQ")?,
    );
    for queues in [1, 2] {
        eprintln!("raw limits: RabbitMQ publishing and consuming at once, {queues} queue(s)");
        // Four publishers with fewer unconfirmed each, as the API's channels publish.
        let load = QueueLoad {
            outstanding: 500,
            ..queue_load
        };
        report.raw.queue_flow.push(
            raw::amqp_flow(&args.endpoints.amqp_url, queues, 4, load)
                .await
                .context("raw RabbitMQ flow")?,
        );
    }
    report.raw.database = Some(
        raw::mysql_limits(
            &args.endpoints,
            500,
            sizes.body_bytes,
            sizes.raw(),
            2_000_000,
        )
        .await
        .context("raw MariaDB")?,
    );

    if args.raw_only {
        report.raw.redis_value_bytes = 100 * (sizes.body_bytes + 100);
        let (rate, cpu) = redis_get(args, &sizes, report.raw.redis_value_bytes).await?;
        report.raw.redis_get = Some(rate);
        report.raw.redis_get_cpu = Some(cpu);
    } else {
        let mut system = System::start(
            args.endpoints.clone(),
            Options {
                keep: args.keep,
                env: args.env.clone(),
            },
        )
        .await
        .context("starting chatsys")?;
        let measured = measure_system(args, &sizes, &mut system, &mut report).await;
        let shutdown = system.shutdown().await;
        measured?;
        shutdown?;
    }

    report.sizes = Some(sizes);
    judge(&mut report);
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn redis_get(
    args: &Args,
    sizes: &Sizes,
    value_bytes: usize,
) -> anyhow::Result<(Rate, CpuUse)> {
    eprintln!("raw limits: Redis GET of {value_bytes} bytes");
    raw::redis_get(
        &args.endpoints.redis_url,
        value_bytes,
        sizes.connections,
        sizes.raw(),
    )
    .await
    .context("raw Redis")
}

async fn measure_system(
    args: &Args,
    sizes: &Sizes,
    system: &mut System,
    report: &mut Report,
) -> anyhow::Result<()> {
    let addr = system.api_addr();
    let pool = system.pool().await?;
    let targets = Arc::new(create_chats(system, sizes).await?);
    let mut created = 0u64;

    let warm_up = Duration::from_secs_f64((sizes.phase_secs / 5.0).min(2.0));
    eprintln!("warm-up: {warm_up:?}");
    let outcome = load::create_messages(
        addr,
        targets.clone(),
        sizes.connections,
        sizes.body_bytes,
        sizes.idempotency_keys,
        Pace::Closed {
            within: warm_up,
            max_created: u64::MAX,
        },
    )
    .await;
    created += outcome.ok;

    eprintln!(
        "create at full load: {} connections, {:?}",
        sizes.connections,
        sizes.phase()
    );
    let before = cpu_snapshot(system);
    let envelopes = EnvelopeFigures::scrape(addr).await;
    let outcome = load::create_messages(
        addr,
        targets.clone(),
        sizes.connections,
        sizes.body_bytes,
        sizes.idempotency_keys,
        Pace::Closed {
            within: sizes.phase(),
            max_created: u64::MAX,
        },
    )
    .await;
    created += outcome.ok;
    let mut full = LoadFigures::of(outcome, None);
    full.cpu = CpuUse::between(&before, &cpu_snapshot(system), full.rate.operations);
    full.envelopes = EnvelopeFigures::scrape(addr)
        .await
        .map(|after| after.since(&envelopes));
    let half_rate = (full.rate.per_second / 2.0).max(1.0);
    report.create_full_load = Some(full);
    wait_stored(&pool, created).await?;

    eprintln!("create at a fixed {half_rate:.0}/s");
    let before = cpu_snapshot(system);
    let envelopes = EnvelopeFigures::scrape(addr).await;
    let outcome = load::create_messages(
        addr,
        targets.clone(),
        sizes.connections,
        sizes.body_bytes,
        sizes.idempotency_keys,
        Pace::Open {
            rate: half_rate,
            within: sizes.phase(),
        },
    )
    .await;
    created += outcome.ok;
    let mut half = LoadFigures::of(outcome, Some(half_rate));
    half.cpu = CpuUse::between(&before, &cpu_snapshot(system), half.rate.operations);
    half.envelopes = EnvelopeFigures::scrape(addr)
        .await
        .map(|after| after.since(&envelopes));
    report.create_half_rate = Some(half);
    wait_stored(&pool, created).await?;

    eprintln!(
        "visibility at {}/s over {} chats",
        sizes.visibility_rate, sizes.visibility_chats
    );
    let before = cpu_snapshot(system);
    let mut visibility =
        measure_visibility(addr, &pool, &targets[..sizes.visibility_chats], sizes).await?;
    visibility.create.cpu = CpuUse::between(
        &before,
        &cpu_snapshot(system),
        visibility.create.rate.operations,
    );
    created += visibility.create.rate.operations;
    report.visibility = Some(visibility);
    wait_stored(&pool, created).await?;

    report.ingest = Some(measure_ingest(system, &pool, targets.clone(), sizes, created).await?);

    let (warm_paths, cold_paths) = read_paths(&pool, sizes).await?;
    eprintln!("warm reads of {} latest pages", warm_paths.len());
    let warm_paths = Arc::new(warm_paths);
    load::read_pages(
        addr,
        warm_paths.clone(),
        sizes.connections,
        Duration::from_secs(3600),
        false,
    )
    .await;
    let before = cpu_snapshot(system);
    let mut warm = LoadFigures::of(
        load::read_pages(addr, warm_paths, sizes.connections, sizes.phase(), true).await,
        None,
    );
    warm.cpu = CpuUse::between(&before, &cpu_snapshot(system), warm.rate.operations);
    eprintln!("cold reads of up to {} distinct pages", cold_paths.len());
    let before = cpu_snapshot(system);
    let mut cold = LoadFigures::of(
        load::read_pages(
            addr,
            Arc::new(cold_paths),
            sizes.connections,
            sizes.phase(),
            false,
        )
        .await,
        None,
    );
    cold.cpu = CpuUse::between(&before, &cpu_snapshot(system), cold.rate.operations);
    report.raw.redis_value_bytes = warm.mean_response_bytes.round() as usize;
    report.reads_warm = Some(warm);
    report.reads_cold = Some(cold);
    report.memory = Some(MemoryFigures::of(system));

    eprintln!(
        "isolation: {} bodies of 64 KiB from one application, small messages of another timed to search",
        sizes.isolation_large
    );
    report.isolation = Some(
        isolation::measure(
            addr,
            sizes.isolation_large,
            sizes.isolation_probes,
            sizes.concurrent_searches,
        )
        .await
        .context("isolation")?,
    );

    report.memory_with_isolation = Some(MemoryFigures::of(system));
    pool.close().await;
    let (rate, cpu) = redis_get(args, sizes, report.raw.redis_value_bytes.max(1)).await?;
    report.raw.redis_get = Some(rate);
    report.raw.redis_get_cpu = Some(cpu);
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// CPU time so far of chatsys, the services it uses, and the bench itself (the load generator).
fn cpu_snapshot(system: &System) -> CpuSnapshot {
    let mut processes = services();
    for (role, label) in [(Role::Api, "API"), (Role::Worker, "worker")] {
        if let Some(pid) = system.pid(role) {
            processes.push((label.to_owned(), pid));
        }
    }
    CpuSnapshot::take(&processes)
}

/// Cores used by each process during a phase, and CPU microseconds per operation of the phase.
fn cpu_rows(cpu: &CpuUse) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for (name, figures, precision) in [
        ("  CPU cores used", &cpu.cores, 2),
        ("  CPU µs per operation", &cpu.micros_per_operation, 1),
    ] {
        if figures.is_empty() {
            continue;
        }
        let processes = figures
            .iter()
            .filter(|(label, _)| label.as_str() != MACHINE);
        let parts: Vec<String> = processes
            .clone()
            .map(|(label, used)| format!("{label} {used:.precision$}"))
            .collect();
        let together: f64 = processes.map(|(_, used)| used).sum();
        let machine = figures
            .get(MACHINE)
            .map(|busy| format!(" of {busy:.precision$} busy on the machine"))
            .unwrap_or_default();
        rows.push((
            name.to_owned(),
            format!(
                "{} (together {together:.precision$}{machine})",
                parts.join(", ")
            ),
        ));
    }
    rows
}

/// Applications and their chats, created through the API; chat `i` of every application comes before chat
/// `i + 1` of any, so the first targets spread over applications.
async fn create_chats(system: &System, sizes: &Sizes) -> anyhow::Result<Vec<ChatTarget>> {
    let mut connection = Connection::new(system.api_addr(), Duration::from_secs(30));
    let mut tokens = Vec::new();
    for index in 0..sizes.apps {
        tokens.push(Arc::<str>::from(
            create_application(&mut connection, &format!("bench-{index}")).await?,
        ));
    }
    let mut targets = Vec::new();
    for _ in 0..sizes.chats_per_app {
        for token in &tokens {
            let chat = create_chat_number(&mut connection, token).await?;
            targets.push(ChatTarget {
                token: token.clone(),
                chat,
            });
        }
    }
    Ok(targets)
}

/// Messages stored so far, from the counts the worker keeps in the same transaction as the rows.
async fn stored_messages(pool: &MySqlPool) -> anyhow::Result<u64> {
    let (stored,): (i64,) =
        sqlx::query_as("SELECT CAST(COALESCE(SUM(messages_count), 0) AS SIGNED) FROM chats")
            .fetch_one(pool)
            .await?;
    Ok(stored as u64)
}

/// Waits until at least `expected` messages are stored (bounded).
async fn wait_stored(pool: &MySqlPool, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stored_messages(pool).await?;
        if stored >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {stored} of {expected} messages stored after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pause between two polls of one watched list: fine enough against a 1 s target, and light enough (one
/// poller per chat) not to compete much with the load being measured.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

async fn measure_visibility(
    addr: std::net::SocketAddr,
    pool: &MySqlPool,
    targets: &[ChatTarget],
    sizes: &Sizes,
) -> anyhow::Result<VisibilityFigures> {
    let targets = Arc::new(targets.to_vec());
    let mut floors = Vec::new();
    for target in targets.iter() {
        let (highest,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(MAX(m.number), 0) AS SIGNED) FROM messages m \
             JOIN applications a ON a.id = m.application_id WHERE a.token = ? AND m.chat_number = ?",
        )
        .bind(&*target.token)
        .bind(target.chat)
        .fetch_one(pool)
        .await?;
        floors.push(highest as u64);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (sightings, watchers) =
        load::watch_lists(addr, targets.clone(), floors, WATCH_INTERVAL, stop.clone());
    let outcome = load::create_messages(
        addr,
        targets,
        sizes.connections,
        sizes.body_bytes,
        sizes.idempotency_keys,
        Pace::Open {
            rate: sizes.visibility_rate,
            within: sizes.phase(),
        },
    )
    .await;
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        let all_seen = {
            let seen = sightings.lock().expect("sightings lock");
            outcome
                .created
                .iter()
                .all(|created| seen.contains_key(&(created.target, created.number)))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut poll_errors = 0;
    for watcher in watchers {
        poll_errors += watcher.await?;
    }
    let seen = sightings.lock().expect("sightings lock");
    let mut latencies = Vec::new();
    let mut never_seen = 0;
    for created in &outcome.created {
        match seen.get(&(created.target, created.number)) {
            Some(at) => latencies.push(at.saturating_duration_since(created.at)),
            None => never_seen += 1,
        }
    }
    drop(seen);
    Ok(VisibilityFigures {
        create: LoadFigures::of(outcome, Some(sizes.visibility_rate)),
        latency: LatencySummary::of(latencies),
        never_seen,
        poll_errors,
    })
}

/// Stops the worker, queues messages through the API, starts the worker and times the drain.
async fn measure_ingest(
    system: &mut System,
    pool: &MySqlPool,
    targets: Arc<Vec<ChatTarget>>,
    sizes: &Sizes,
    stored_before: u64,
) -> anyhow::Result<IngestFigures> {
    eprintln!(
        "ingest: stopping the worker, queueing {} messages",
        sizes.ingest_messages
    );
    system.stop(Role::Worker, Duration::from_secs(30)).await?;
    let fill = load::create_messages(
        system.api_addr(),
        targets,
        sizes.connections,
        sizes.body_bytes,
        sizes.idempotency_keys,
        Pace::Closed {
            within: Duration::from_secs(600),
            max_created: sizes.ingest_messages,
        },
    )
    .await;
    let expected = stored_before + fill.ok;
    let baseline = stored_messages(pool).await?;
    eprintln!(
        "ingest: starting the worker to drain {} messages",
        expected.saturating_sub(baseline)
    );
    let started = Instant::now();
    // Timed from the last look that found nothing new stored, so the worker's start-up is left out of
    // the rate and of the CPU per message alike.
    let api = system.pid(Role::Api);
    let snapshot = move || {
        let mut processes = services();
        processes.extend(api.map(|pid| ("API".to_owned(), pid)));
        processes.extend(find_processes(&[("chatsys-worker", "worker")]));
        CpuSnapshot::take(&processes)
    };
    let progress = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let deadline = started + Duration::from_secs(600);
            let mut idle_until = started;
            let mut idle_cpu = snapshot();
            loop {
                let stored = stored_messages(&pool).await?;
                let now = Instant::now();
                if stored <= baseline {
                    idle_until = now;
                    idle_cpu = snapshot();
                }
                if stored >= expected {
                    return anyhow::Ok((
                        idle_until,
                        now,
                        CpuUse::between(&idle_cpu, &snapshot(), expected - baseline),
                    ));
                }
                if now > deadline {
                    bail!("the worker stored {stored} of {expected} messages in 600 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    system.start_role(Role::Worker).await?;
    let (idle_until, done_at, cpu) = progress.await??;
    Ok(IngestFigures {
        batches: BatchFigures::scrape(system.worker_addr()).await,
        queued: expected - baseline,
        fill: LoadFigures::of(fill, None),
        rate: Rate::new(expected - baseline, done_at - idle_until),
        seconds_from_start: (done_at - started).as_secs_f64(),
        cpu,
    })
}

/// The latest page of 100 of every chat (warm reads), and distinct pages of 100 at every offset of every chat,
/// shuffled (cold reads: no two requests alike, so no cache can answer them).
async fn read_paths(pool: &MySqlPool, sizes: &Sizes) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let chats: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.token, CAST(c.number AS SIGNED), CAST(c.messages_count AS SIGNED) \
         FROM chats c JOIN applications a ON a.id = c.application_id",
    )
    .fetch_all(pool)
    .await?;
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for (token, chat, count) in chats {
        let base = chatsys_bench::client::messages_path(&token, chat as u64);
        warm.push(format!("{base}?after={}&limit=100", (count - 100).max(0)));
        for after in 0..(count - 100).max(1) {
            cold.push(format!("{base}?after={after}&limit=100"));
        }
    }
    for index in (1..cold.len()).rev() {
        cold.swap(index, rand::random_range(0..=index));
    }
    cold.truncate((sizes.phase_secs * 20_000.0) as usize);
    Ok((warm, cold))
}

fn judge(report: &mut Report) {
    let mut ratios = BTreeMap::new();
    let mut targets = Vec::new();
    let (queue, database) = (report.raw.queue.as_ref(), report.raw.database.as_ref());
    let raw_publish = queue.map(|queue| queue.publish.per_second);
    let raw_consume = queue.map(|queue| queue.consume.per_second);
    let raw_insert = database.map(|database| database.multi_row_insert.per_second);
    let seed = database.map(|database| database.seed_design.per_second);

    if let (Some(full), Some(publish)) = (&report.create_full_load, raw_publish) {
        let ratio = full.rate.per_second / publish;
        ratios.insert("api_create_over_raw_publish", ratio);
        targets.push(Target {
            name: "API create >= 80% of raw confirmed publishes, zero errors",
            measured: ratio,
            bound: format!(">= 0.80, errors = 0 (errors: {})", full.errors),
            pass: ratio >= 0.8 && full.errors == 0,
        });
    }
    let full_cpu = report.create_full_load.as_ref().map(|full| &full.cpu);
    let ingest_cpu = report.ingest.as_ref().map(|ingest| &ingest.cpu);
    if let Some(cpu) = full_cpu {
        // The processes of the system and the load generator, not the rest of the machine.
        let processes: f64 = cpu
            .micros_per_operation
            .iter()
            .filter(|(label, _)| label.as_str() != MACHINE)
            .map(|(_, micros)| micros)
            .sum();
        ratios.insert("processes_cpu_micros_per_create", processes);
        targets.push(Target {
            name: "all processes' CPU per create at full load <= 200 µs",
            measured: processes,
            bound: "<= 200 µs".to_owned(),
            pass: processes <= 200.0,
        });
    }
    for (key, name, cpu, process, bound) in [
        (
            "api_cpu_micros_per_create",
            "API CPU per create at full load <= 60 µs",
            full_cpu,
            "API",
            60.0,
        ),
        (
            "rabbitmq_cpu_micros_per_create",
            "RabbitMQ CPU per create at full load <= 25 µs",
            full_cpu,
            "RabbitMQ",
            25.0,
        ),
        (
            "redis_cpu_micros_per_create",
            "Redis CPU per create at full load <= 10 µs",
            full_cpu,
            "Redis",
            10.0,
        ),
        (
            "worker_cpu_micros_per_message",
            "worker CPU per message ingested <= 20 µs",
            ingest_cpu,
            "worker",
            20.0,
        ),
    ] {
        if let Some(micros) = cpu.and_then(|cpu| cpu.micros(process)) {
            ratios.insert(key, micros);
            targets.push(Target {
                name,
                measured: micros,
                bound: format!("<= {bound:.0} µs"),
                pass: micros <= bound,
            });
        }
    }
    if let Some(half) = &report.create_half_rate {
        targets.push(Target {
            name: "create p99 at half the full-load rate <= 15 ms",
            measured: half.latency.p99_ms,
            bound: "<= 15 ms".to_owned(),
            pass: half.latency.p99_ms <= 15.0 && half.errors == 0,
        });
    }
    if let (Some(ingest), Some(consume), Some(insert)) = (&report.ingest, raw_consume, raw_insert) {
        let ratio = ingest.rate.per_second / consume.min(insert);
        ratios.insert("worker_ingest_over_min_raw_consume_insert", ratio);
        targets.push(Target {
            name: "worker ingest >= 50% of min(raw consume, raw insert)",
            measured: ratio,
            bound: ">= 0.50".to_owned(),
            pass: ratio >= 0.5,
        });
    }
    if let (Some(ingest), Some(seed)) = (&report.ingest, seed) {
        let ratio = ingest.rate.per_second / seed;
        ratios.insert("worker_ingest_over_seed_design", ratio);
        targets.push(Target {
            name: "worker ingest >= 10x the seed design",
            measured: ratio,
            bound: ">= 10".to_owned(),
            pass: ratio >= 10.0,
        });
    }
    if let Some(visibility) = &report.visibility {
        ratios.insert("visibility_p99_seconds", visibility.latency.p99_ms / 1000.0);
        targets.push(Target {
            name: "end-to-end visibility p99 <= 1 s at the offered rate",
            measured: visibility.latency.p99_ms,
            bound: format!(
                "<= 1000 ms at {:.0}/s, none unseen",
                visibility.create.offered_per_second.unwrap_or(0.0)
            ),
            pass: visibility.latency.p99_ms <= 1000.0
                && visibility.never_seen == 0
                && visibility.create.errors == 0,
        });
    }
    if let (Some(warm), Some(get)) = (&report.reads_warm, report.raw.redis_get) {
        let ratio = warm.rate.per_second / get.per_second;
        ratios.insert("warm_reads_over_raw_redis_get", ratio);
        targets.push(Target {
            name: "warm latest-page reads faster than raw Redis GETs of the same page",
            measured: ratio,
            bound: "> 1.00".to_owned(),
            pass: ratio > 1.0 && warm.errors == 0,
        });
        targets.push(Target {
            name: "warm latest-page reads p99 <= 5 ms",
            measured: warm.latency.p99_ms,
            bound: "<= 5 ms".to_owned(),
            pass: warm.latency.p99_ms <= 5.0,
        });
    }
    if let Some(memory) = &report.memory {
        ratios.insert("api_peak_rss_mib", memory.api_peak_mib);
        ratios.insert("worker_peak_rss_mib", memory.worker_peak_mib);
        targets.push(Target {
            name: "API peak resident memory <= 100 MiB",
            measured: memory.api_peak_mib,
            bound: "<= 100 MiB".to_owned(),
            pass: memory.api_peak_mib <= 100.0,
        });
        targets.push(Target {
            name: "worker peak resident memory <= 200 MiB",
            measured: memory.worker_peak_mib,
            bound: "<= 200 MiB".to_owned(),
            pass: memory.worker_peak_mib <= 200.0,
        });
    }
    report.ratios = ratios;
    report.targets = targets;
}

fn rate_row(name: &str, rate: Rate) -> (String, String) {
    (
        name.to_owned(),
        format!(
            "{:>10.0}/s  ({} in {:.1} s)",
            rate.per_second, rate.operations, rate.seconds
        ),
    )
}

/// The figures of a phase, and the CPU it used when measured.
fn load_rows(name: &str, figures: &LoadFigures) -> Vec<(String, String)> {
    std::iter::once(load_row(name, figures))
        .chain(cpu_rows(&figures.cpu))
        .chain(figures.envelopes.iter().map(envelope_row))
        .collect()
}

fn envelope_row(envelopes: &EnvelopeFigures) -> (String, String) {
    let quantiles: Vec<String> = envelopes
        .quantiles
        .iter()
        .map(|(q, commands)| format!("q{q} {commands:.0}"))
        .collect();
    (
        "  commands per published message".to_owned(),
        format!(
            "mean {:.1} ({:.0} commands in {:.0} messages); API lifetime {}",
            envelopes.mean_commands,
            envelopes.commands,
            envelopes.messages,
            quantiles.join(", ")
        ),
    )
}

fn load_row(name: &str, figures: &LoadFigures) -> (String, String) {
    let offered = figures
        .offered_per_second
        .map(|offered| format!(" offered {offered:.0}/s,"))
        .unwrap_or_default();
    let failures = if figures.failures.is_empty() {
        String::new()
    } else {
        format!(" {:?}", figures.failures)
    };
    (
        name.to_owned(),
        format!(
            "{:>10.0}/s {offered} p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, errors {}{failures}",
            figures.rate.per_second,
            figures.latency.p50_ms,
            figures.latency.p99_ms,
            figures.latency.p999_ms,
            figures.errors,
        ),
    )
}

fn print_table(report: &Report) {
    if report.smoke {
        println!(
            "smoke run: sizes far too small for the figures or the PASS/MISS lines to mean anything"
        );
    }
    println!(
        "machine: {} CPUs, {} MiB, MariaDB {}, Redis {}",
        report.machine.cpus,
        report.machine.memory_mib,
        report.machine.mariadb_version.as_deref().unwrap_or("?"),
        report.machine.redis_version.as_deref().unwrap_or("?")
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(queue) = &report.raw.queue {
        rows.push(rate_row("raw RabbitMQ confirmed publishes", queue.publish));
        rows.extend(cpu_rows(&queue.publish_cpu));
        rows.push(rate_row("raw RabbitMQ consumes with acks", queue.consume));
        rows.extend(cpu_rows(&queue.consume_cpu));
    }
    for flow in &report.raw.queue_flow {
        rows.push(rate_row(
            &format!(
                "raw RabbitMQ publish + consume at once, {} queue(s), consumed",
                flow.queues
            ),
            flow.consumed,
        ));
        rows.push(rate_row("  published meanwhile", flow.published));
        rows.extend(cpu_rows(&flow.cpu));
    }
    if let Some(database) = &report.raw.database {
        rows.push(rate_row(
            "raw MariaDB multi-row inserts (rows)",
            database.multi_row_insert,
        ));
        rows.extend(cpu_rows(&database.multi_row_insert_cpu));
        rows.push(rate_row(
            "raw seed design, 1 tx per message",
            database.seed_design,
        ));
    }
    if let Some(get) = report.raw.redis_get {
        rows.push(rate_row(
            &format!("raw Redis GETs of {} bytes", report.raw.redis_value_bytes),
            get,
        ));
        rows.extend(report.raw.redis_get_cpu.iter().flat_map(cpu_rows));
    }
    if let Some(full) = &report.create_full_load {
        rows.extend(load_rows("API create, full load", full));
    }
    if let Some(half) = &report.create_half_rate {
        rows.extend(load_rows("API create, half the full-load rate", half));
    }
    if let Some(visibility) = &report.visibility {
        rows.extend(load_rows(
            "API create during visibility",
            &visibility.create,
        ));
        rows.push((
            "end-to-end visibility".to_owned(),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, never seen {}",
                visibility.latency.p50_ms, visibility.latency.p99_ms, visibility.never_seen
            ),
        ));
    }
    if let Some(ingest) = &report.ingest {
        rows.push(rate_row(
            &format!("worker ingest of {} queued", ingest.queued),
            ingest.rate,
        ));
        rows.extend(cpu_rows(&ingest.cpu));
        if let Some(batches) = &ingest.batches {
            rows.push((
                "worker batches while draining".to_owned(),
                format!(
                    "{:.0} batches, mean {:.0} commands, mean {:.1} ms",
                    batches.count,
                    batches.mean_size,
                    batches.mean_seconds * 1000.0
                ),
            ));
            for (stage, figures) in &batches.stages {
                rows.push((
                    format!("worker stage {stage}"),
                    format!(
                        "{:.0} runs, {:.2} s in all, mean {:.1} ms",
                        figures.runs,
                        figures.seconds,
                        figures.seconds * 1000.0 / figures.runs.max(1.0)
                    ),
                ));
            }
        }
    }
    if let Some(warm) = &report.reads_warm {
        rows.extend(load_rows("reads, latest page of 100, warm", warm));
    }
    if let Some(cold) = &report.reads_cold {
        rows.extend(load_rows("reads, page of 100, cold", cold));
    }
    if let Some(isolation) = &report.isolation {
        rows.push((
            "small message searchable, its application alone".to_owned(),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                isolation.small_searchable_alone.p50_ms, isolation.small_searchable_alone.p99_ms,
            ),
        ));
        rows.push((
            format!(
                "small message searchable while another app writes {} of 64 KiB",
                isolation.large_created
            ),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, never seen {}",
                isolation.small_searchable.p50_ms,
                isolation.small_searchable.p99_ms,
                isolation.small_searchable.max_ms,
                isolation.small_never_seen
            ),
        ));
        rows.push((
            format!(
                "{} concurrent 1-character searches over those, walked to the end",
                isolation.short_searches.count
            ),
            format!(
                "p50 {:.0} ms, max {:.0} ms, {} pages in all",
                isolation.short_searches.p50_ms,
                isolation.short_searches.max_ms,
                isolation.short_search_pages
            ),
        ));
    }
    for (name, memory) in [
        ("peak RSS", &report.memory),
        (
            "peak RSS with the isolation phase",
            &report.memory_with_isolation,
        ),
    ] {
        if let Some(memory) = memory {
            rows.push((
                name.to_owned(),
                format!(
                    "API {:.1} MiB, worker {:.1} MiB",
                    memory.api_peak_mib, memory.worker_peak_mib
                ),
            ));
        }
    }
    for (name, ratio) in &report.ratios {
        rows.push((format!("ratio {name}"), format!("{ratio:.3}")));
    }
    for target in &report.targets {
        rows.push((
            format!(
                "{} {}",
                if target.pass { "PASS" } else { "MISS" },
                target.name
            ),
            format!("{:.3} ({})", target.measured, target.bound),
        ));
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in rows {
        println!("{name:<width$}  {value}");
    }
}
