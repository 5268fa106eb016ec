//! The fault suite of issue 6: each scenario starts chatsys on fresh resources, puts it under a bounded load,
//! injects one fault, and ends with the check that every acknowledged chat and message is stored exactly once
//! with its number and body, and that the counts match the rows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chatsys_bench::client::{self, Connection, create_application, create_chat_number};
use chatsys_bench::events::{Event, EventStream};
use chatsys_bench::ledger::{self, AckedMessage, Ledger};
use chatsys_bench::raw::{amqp_close, amqp_connect};
use chatsys_bench::services::{RestoreOnDrop, Service, queue_types};
use chatsys_bench::system::{Endpoints, Options, Role, System, parse_env};
use clap::{Parser, ValueEnum};
use http::StatusCode;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;

/// Injects faults into a running chatsys under load and checks that nothing acknowledged is lost.
#[derive(Debug, Parser)]
#[command(name = "faults")]
struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Run only this scenario; all of them when absent.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Concurrent clients creating chats and messages.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Requests per second of each client, at most.
    #[arg(long, default_value_t = 100)]
    client_rate: u32,
    #[arg(long, default_value_t = 3)]
    apps: usize,
    /// Slowest answer allowed while a service is down: the API must answer, not hang.
    #[arg(long, default_value_t = 6)]
    max_latency_secs: u64,
    /// How long the final check waits for the worker to store everything acknowledged.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    /// Keep each scenario's database, queues, Redis keys and process logs.
    #[arg(long)]
    keep: bool,
    /// Extra environment for the chatsys processes, e.g. `--env CHATSYS_BATCH_SIZE=100`; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The worker killed with SIGKILL twice mid-load, restarted each time.
    WorkerKill,
    /// RabbitMQ stopped for a few seconds with the command queues quorum queues (checked): 503 with
    /// Retry-After meanwhile, then recovery without restarts.
    RabbitmqRestart,
    /// MariaDB stopped for a few seconds: creations still accepted, the worker catches up.
    MariadbRestart,
    /// Redis restarted without its data: numbering resumes without reusing a number.
    RedisRestart,
    /// Redis FLUSHALL mid-load: numbering resumes without reusing a number.
    RedisFlush,
    /// The API killed with SIGKILL mid-load and restarted, three times: every 201 it gave is stored, and every
    /// message whose answer was lost, retried with its idempotency key, is stored once.
    ApiKill,
    /// Random bytes published to the command queue reach the dead-letter queue; later commands still flow.
    Poison,
    /// A client follows a chat on a second API replica, which is killed with SIGKILL under load: it
    /// reconnects to the other replica with its last event id and ends with every message once.
    StreamReplicaKill,
    /// Redis at its memory limit under load: the cache's Redis (8 MB, allkeys-lru) evicts while readers
    /// fill it with pages, then the state's Redis is held at its maxmemory (noeviction) for 4 s: creates
    /// answer 201 or 503, nothing acknowledged is lost and no number is given twice.
    RedisMaxmemory,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_owned()
    }
}

/// How long a client retries a create with its idempotency key before it gives up.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// How a request was answered: its status and whether it carried Retry-After; `None` for a transport
/// error or timeout.
fn answer(response: &anyhow::Result<client::Response>) -> Option<(u16, bool)> {
    response
        .as_ref()
        .ok()
        .map(|response| (response.status.as_u16(), response.has_retry_after()))
}

/// One request of the load and how it ended.
#[derive(Debug, Clone)]
struct Observation {
    sent: Instant,
    answered: Instant,
    /// The HTTP status and whether it carried Retry-After; `None` for a transport error or timeout.
    status: Option<(u16, bool)>,
}

/// Clients creating chats and messages until stopped, recording every 201 and every answer.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    /// Messages whose first attempt got no answer and whose retry was answered from that attempt's
    /// record (the server died after accepting it, before answering).
    finished_by_retry: Arc<AtomicUsize>,
    observations: Arc<Mutex<Vec<Observation>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(system: &System, args: &Args) -> anyhow::Result<Self> {
        let mut connection = Connection::new(system.api_addr(), Duration::from_secs(30));
        let mut ledger = Ledger::default();
        let mut tokens = Vec::new();
        for index in 0..args.apps {
            let token: Arc<str> =
                Arc::from(create_application(&mut connection, &format!("faults-{index}")).await?);
            for _ in 0..2 {
                ledger.chats.push((
                    token.clone(),
                    create_chat_number(&mut connection, &token).await?,
                ));
            }
            tokens.push(token);
        }
        let load = Self {
            ledger: Arc::new(Mutex::new(ledger)),
            finished_by_retry: Arc::default(),
            observations: Arc::default(),
            stop: Arc::default(),
            clients: Vec::new(),
        };
        let tokens = Arc::new(tokens);
        let pause = Duration::from_secs_f64(1.0 / f64::from(args.client_rate.max(1)));
        let clients = (0..args.clients)
            .map(|client| {
                let (ledger, observations, stop, tokens, finished_by_retry) = (
                    load.ledger.clone(),
                    load.observations.clone(),
                    load.stop.clone(),
                    tokens.clone(),
                    load.finished_by_retry.clone(),
                );
                let addr = system.api_addr();
                tokio::spawn(async move {
                    let mut connection = Connection::new(addr, Duration::from_secs(30));
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        sequence += 1;
                        let mut sent = Instant::now();
                        let status = if sequence.is_multiple_of(20) {
                            let token = tokens[rand::random_range(0..tokens.len())].clone();
                            let response = client::create_chat(&mut connection, &token).await;
                            if let Ok(response) = &response
                                && response.status == StatusCode::CREATED
                                && let Ok(number) = response.number()
                            {
                                ledger
                                    .lock()
                                    .expect("ledger lock")
                                    .chats
                                    .push((token, number));
                            }
                            answer(&response)
                        } else {
                            let (token, chat) = {
                                let ledger = ledger.lock().expect("ledger lock");
                                ledger.chats[rand::random_range(0..ledger.chats.len())].clone()
                            };
                            let body = format!(
                                "client {client} message {sequence} {:016x} ünïcödé 🦀",
                                rand::random::<u64>()
                            );
                            // Retried with its key until answered, as a client is told to: a
                            // create whose answer was lost is then acknowledged once, with the
                            // number it was first given.
                            let key = format!("faults-{client}-{sequence}");
                            let retrying_since = Instant::now();
                            let mut lost_answer = false;
                            let response = loop {
                                sent = Instant::now();
                                let response = client::create_message(
                                    &mut connection,
                                    &token,
                                    chat,
                                    &body,
                                    Some(&key),
                                )
                                .await;
                                let retry = match &response {
                                    Err(_) => true,
                                    Ok(response) => matches!(response.status.as_u16(), 409 | 503),
                                };
                                if !retry || retrying_since.elapsed() > RETRY_FOR {
                                    break response;
                                }
                                lost_answer |= response.is_err();
                                observations
                                    .lock()
                                    .expect("observations lock")
                                    .push(Observation {
                                        sent,
                                        answered: Instant::now(),
                                        status: answer(&response),
                                    });
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            };
                            if lost_answer
                                && let Ok(response) = &response
                                && response.headers.contains_key("idempotent-replayed")
                            {
                                finished_by_retry.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Ok(response) = &response
                                && response.status == StatusCode::CREATED
                                && let Ok(number) = response.number()
                            {
                                ledger
                                    .lock()
                                    .expect("ledger lock")
                                    .messages
                                    .push(AckedMessage {
                                        token,
                                        chat,
                                        number,
                                        body,
                                    });
                            }
                            answer(&response)
                        };
                        let answered = Instant::now();
                        observations
                            .lock()
                            .expect("observations lock")
                            .push(Observation {
                                sent,
                                answered,
                                status,
                            });
                        tokio::time::sleep(pause.saturating_sub(answered - sent)).await;
                        if status.is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        Ok(Self { clients, ..load })
    }

    fn observations(&self) -> Vec<Observation> {
        self.observations.lock().expect("observations lock").clone()
    }

    /// Waits (bounded) for a 201 answered after `since`.
    async fn wait_for_created(&self, since: Instant, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .observations()
                .iter()
                .any(|observation| observation.answered > since && created(observation))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn stop(self) -> (Ledger, Vec<Observation>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.await;
        }
        let ledger = self.ledger.lock().expect("ledger lock").clone();
        let observations = self.observations.lock().expect("observations lock").clone();
        (
            ledger,
            observations,
            self.finished_by_retry.load(Ordering::Relaxed),
        )
    }
}

fn created(observation: &Observation) -> bool {
    matches!(observation.status, Some((201, _)))
}

/// Problems with the answers given during `[from, until]` (requests sent and answered inside it), where
/// only `allowed` is acceptable; a 503 must carry Retry-After.
fn answers_during(
    observations: &[Observation],
    from: Instant,
    until: Instant,
    what: &str,
    allowed: impl Fn(u16) -> bool,
) -> Vec<String> {
    let inside: Vec<&Observation> = observations
        .iter()
        .filter(|observation| observation.sent >= from && observation.answered <= until)
        .collect();
    let mut problems = Vec::new();
    if inside.is_empty() {
        problems.push(format!("no request was answered {what}"));
    }
    let transport = inside
        .iter()
        .filter(|observation| observation.status.is_none())
        .count();
    if transport > 0 {
        problems.push(format!("{transport} requests got no HTTP answer {what}"));
    }
    let mut refused = std::collections::BTreeMap::new();
    for observation in &inside {
        if let Some((status, retry_after)) = observation.status
            && (!allowed(status) || (status == 503 && !retry_after))
        {
            let key = if status == 503 && !retry_after {
                "503 without Retry-After".to_owned()
            } else {
                status.to_string()
            };
            *refused.entry(key).or_insert(0u64) += 1;
        }
    }
    if !refused.is_empty() {
        problems.push(format!(
            "answers {what} that break the contract: {refused:?} of {}",
            inside.len()
        ));
    }
    problems
}

/// No 5xx other than 503, and no answer slower than `max_latency`, over the whole scenario.
fn no_errors_or_hangs(observations: &[Observation], max_latency: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let server_errors = observations
        .iter()
        .filter(|observation| matches!(observation.status, Some((status, _)) if status >= 500 && status != 503))
        .count();
    if server_errors > 0 {
        problems.push(format!("{server_errors} answers were 5xx other than 503"));
    }
    let slowest = observations
        .iter()
        .map(|observation| observation.answered - observation.sent)
        .max()
        .unwrap_or_default();
    if slowest > max_latency {
        problems.push(format!(
            "the slowest request took {slowest:?}, more than {max_latency:?}"
        ));
    }
    problems
}

/// Scenario-specific problems seen while the fault was injected.
async fn inject(
    scenario: Scenario,
    system: &mut System,
    load: &Load,
    args: &Args,
) -> anyhow::Result<Vec<String>> {
    let endpoints = &args.endpoints;
    let max_latency = Duration::from_secs(args.max_latency_secs);
    let mut problems = Vec::new();
    match scenario {
        Scenario::WorkerKill => {
            for _ in 0..2 {
                wait_for_progress(system).await?;
                system.kill(Role::Worker).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                system.start_role(Role::Worker).await?;
            }
        }
        Scenario::ApiKill => {
            // Three kills, so that some land between a create's publish and its answer.
            for _ in 0..3 {
                system.kill(Role::Api).await?;
                let restarted = Instant::now();
                system.start_role(Role::Api).await?;
                if !load
                    .wait_for_created(restarted, Duration::from_secs(30))
                    .await
                {
                    problems.push("no 201 within 30 s of the API restart".to_owned());
                }
            }
        }
        Scenario::RabbitmqRestart | Scenario::RedisRestart => {
            let service = if scenario == Scenario::RabbitmqRestart {
                problems.extend(not_quorum_queues(&system.queue).await?);
                Service::RabbitMq
            } else {
                Service::Redis
            };
            service.stop(endpoints).await?;
            let down = Instant::now();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let starting = Instant::now();
            service.start(endpoints).await?;
            let up = Instant::now();
            let observations = load.observations();
            let during = format!("while {} was down", service.name());
            problems.extend(answers_during(
                &observations,
                down,
                starting,
                &during,
                |status| status == 201 || status == 503,
            ));
            if !observations.iter().any(|o| {
                o.sent >= down && o.answered <= starting && o.status.is_some_and(|(s, _)| s == 503)
            }) {
                problems.push(format!("no 503 {during}"));
            }
            if !load.wait_for_created(up, Duration::from_secs(30)).await {
                problems.push(format!(
                    "no 201 within 30 s of {} being back",
                    service.name()
                ));
            }
            problems.extend(no_errors_or_hangs(&load.observations(), max_latency));
        }
        Scenario::MariadbRestart => {
            Service::MariaDb.stop(endpoints).await?;
            let down = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let starting = Instant::now();
            Service::MariaDb.start(endpoints).await?;
            let observations = load.observations();
            problems.extend(answers_during(
                &observations,
                down,
                starting,
                "while MariaDB was down",
                |status| status == 201,
            ));
            problems.extend(no_errors_or_hangs(&observations, max_latency));
            if system.has_exited(Role::Worker) {
                problems.push("the worker exited instead of retrying".to_owned());
            }
        }
        Scenario::RedisFlush => {
            for _ in 0..2 {
                let client = redis::Client::open(endpoints.redis_url.as_str())?;
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("FLUSHALL")
                    .query_async::<()>(&mut connection)
                    .await?;
                let flushed = Instant::now();
                if !load
                    .wait_for_created(flushed, Duration::from_secs(30))
                    .await
                {
                    problems.push("no 201 within 30 s of FLUSHALL".to_owned());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            problems.extend(no_errors_or_hangs(&load.observations(), max_latency));
        }
        Scenario::Poison => {
            let poisons = 3;
            let queue = chatsys_settings::command_queue_name(&system.queue, 0);
            publish_random_commands(&args.endpoints.amqp_url, &queue, poisons).await?;
            let published = Instant::now();
            let dead = chatsys_settings::dead_letter_queue_name(&system.queue);
            let dead_lettered = wait_for_queue_depth(
                &args.endpoints.amqp_url,
                &dead,
                poisons,
                Duration::from_secs(60),
            )
            .await?;
            if dead_lettered < poisons {
                problems.push(format!(
                    "{dead_lettered} of {poisons} malformed commands reached {dead} within 60 s"
                ));
            }
            if !load
                .wait_for_created(published, Duration::from_secs(10))
                .await
            {
                problems.push("no 201 after the malformed commands".to_owned());
            }
        }
        Scenario::StreamReplicaKill => {
            problems.extend(kill_a_streaming_replica(system, load).await?);
        }
        Scenario::RedisMaxmemory => {
            problems.extend(fill_both_redis_roles(system, load, args).await?);
        }
    }
    for role in [Role::Api, Role::Worker] {
        if system.has_exited(role) {
            problems.push(format!("{role:?} process exited during the scenario"));
        }
    }
    Ok(problems)
}

/// The cache's Redis of the `redis-maxmemory` scenario, on a free port: small, evicting the least
/// recently used key when full, as the operator runs it. Stopped when dropped.
struct CacheRedis {
    process: std::process::Child,
    url: String,
}

impl CacheRedis {
    const MAXMEMORY: &str = "8mb";

    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--maxmemory",
                Self::MAXMEMORY,
                "--maxmemory-policy",
                "allkeys-lru",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server for the cache")?;
        Ok(CacheRedis {
            process,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }
}

impl Drop for CacheRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A field of `INFO`, as a number.
async fn info_field(
    connection: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("INFO {section} has no {field}"))
}

/// Readers walk the chats' message lists (each commit makes new pages) until the cache's Redis has
/// evicted keys; then the state's Redis is held at its maxmemory with noeviction for 4 s, and put back.
async fn fill_both_redis_roles(
    system: &System,
    load: &Load,
    args: &Args,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let cache_url = system
        .env_value("REDIS_CACHE_URL")
        .context("the scenario runs with a cache Redis")?;
    let mut cache = redis::Client::open(cache_url)?
        .get_multiplexed_async_connection()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ledger, addr) = (stop.clone(), load.ledger.clone(), system.api_addr());
            tokio::spawn(async move {
                let mut connection = Connection::new(addr, Duration::from_secs(30));
                while !stop.load(Ordering::Relaxed) {
                    let (token, chat) = {
                        let ledger = ledger.lock().expect("ledger lock");
                        ledger.chats[rand::random_range(0..ledger.chats.len())].clone()
                    };
                    let limit = rand::random_range(1..=100);
                    let path = format!("/applications/{token}/chats/{chat}/messages?limit={limit}");
                    let _ = connection.get(&path).await;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut evicted = 0;
    while evicted == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        evicted = info_field(&mut cache, "stats", "evicted_keys").await?;
    }
    if evicted == 0 {
        problems.push(format!(
            "the cache's Redis never reached its {} in 60 s",
            CacheRedis::MAXMEMORY
        ));
    }
    let mut state = redis::Client::open(args.endpoints.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(&mut state)
        .await?;
    let used = info_field(&mut state, "memory", "used_memory").await?;
    let held = async {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .arg("maxmemory")
            .arg(used + 512 * 1024)
            .query_async::<()>(&mut state)
            .await?;
        let full = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        anyhow::Ok(full)
    }
    .await;
    // Put back as it was, whatever happened meanwhile.
    let mut restore = redis::cmd("CONFIG");
    restore.arg("SET").arg(&config);
    restore.query_async::<()>(&mut state).await?;
    let full = held?;
    let released = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    problems.extend(answers_during(
        &load.observations(),
        full,
        released,
        "while the state's Redis was at its maxmemory",
        |status| status == 201 || status == 503,
    ));
    if !load
        .wait_for_created(released, Duration::from_secs(30))
        .await
    {
        problems.push("no 201 within 30 s of the state's Redis having room again".to_owned());
    }
    problems.extend(no_errors_or_hangs(
        &load.observations(),
        Duration::from_secs(args.max_latency_secs),
    ));
    eprintln!("redis-maxmemory: the cache's Redis evicted {evicted} keys");
    Ok(problems)
}

/// Follows the first chat of the load on the second replica, kills that replica, and checks that the
/// client, reconnecting to the first replica with its last id, gets every message acknowledged in that
/// chat up to a moment after the kill, and none twice.
async fn kill_a_streaming_replica(system: &mut System, load: &Load) -> anyhow::Result<Vec<String>> {
    system.start_role(Role::SecondApi).await?;
    let (token, chat) = load.ledger.lock().expect("ledger lock").chats[0].clone();
    let path = format!("/applications/{token}/chats/{chat}/events?after=0");
    let received: Arc<Mutex<Vec<Event>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let follower = tokio::spawn({
        let (received, stop, connections) = (received.clone(), stop.clone(), connections.clone());
        let mut replicas = vec![system.api_addr(), system.second_api_addr()];
        async move {
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                // The second replica first; once it is gone, the first.
                let replica = *replicas.last().expect("a replica");
                match EventStream::open(replica, &path, last).await {
                    Ok(mut stream) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                        while let Ok(event) = stream.next().await {
                            last = Some(event.id);
                            received.lock().expect("events lock").push(event);
                        }
                    }
                    Err(_) if replicas.len() > 1 => {
                        replicas.pop();
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_kill = received.lock().expect("events lock").len();
    system.kill(Role::SecondApi).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acknowledged: Vec<(u64, String)> = load
        .ledger
        .lock()
        .expect("ledger lock")
        .messages
        .iter()
        .filter(|m| m.token == token && m.chat == chat)
        .map(|m| (m.number, m.body.clone()))
        .collect();
    let mut problems = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let seen: std::collections::HashMap<u64, String> = received
            .lock()
            .expect("events lock")
            .iter()
            .map(|e| (e.number, e.body.clone()))
            .collect();
        let missing: Vec<u64> = acknowledged
            .iter()
            .filter(|(number, body)| seen.get(number) != Some(body))
            .map(|(number, _)| *number)
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::Relaxed);
    follower.abort();
    let received = received.lock().expect("events lock").clone();
    if before_kill == 0 {
        problems.push("the stream received nothing before the kill".to_owned());
    }
    if connections.load(Ordering::Relaxed) < 2 {
        problems.push("the client never reconnected to the other replica".to_owned());
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged messages of the followed chat never reached the stream: {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let mut once = std::collections::HashSet::new();
    let repeated: Vec<u64> = received
        .iter()
        .filter(|e| !once.insert((e.kind.clone(), e.number)))
        .map(|e| e.number)
        .collect();
    if !repeated.is_empty() {
        problems.push(format!("events received twice, for messages {repeated:?}"));
    }
    if received.windows(2).any(|w| w[0].id >= w[1].id) {
        problems.push("event ids did not grow along the stream".to_owned());
    }
    Ok(problems)
}

/// The system's queues (named after `base`) that are not quorum queues, and the command queue and
/// dead-letter queue if they are missing: a restart of RabbitMQ loses nothing only with quorum queues,
/// so the scenario must not pass on classic ones.
async fn not_quorum_queues(base: &str) -> anyhow::Result<Vec<String>> {
    let types: std::collections::BTreeMap<String, String> = queue_types()
        .await?
        .into_iter()
        .filter(|(name, _)| name == base || name.starts_with(&format!("{base}.")))
        .collect();
    let mut problems: Vec<String> = types
        .iter()
        .filter(|(_, kind)| *kind != "quorum")
        .map(|(name, kind)| format!("queue {name} is a {kind} queue, not a quorum queue"))
        .collect();
    for needed in [
        chatsys_settings::command_queue_name(base, 0),
        chatsys_settings::dead_letter_queue_name(base),
    ] {
        if !types.contains_key(&needed) {
            problems.push(format!("queue {needed} was not declared"));
        }
    }
    Ok(problems)
}

/// Waits until the worker has stored something new, so that a kill lands while it is busy.
async fn wait_for_progress(system: &System) -> anyhow::Result<()> {
    let pool = system.pool().await?;
    let count = || async {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
            .fetch_one(&pool)
            .await?;
        anyhow::Ok(count)
    };
    let before = count().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count().await? == before {
        if Instant::now() > deadline {
            bail!("the worker stored nothing in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;
    Ok(())
}

async fn publish_random_commands(amqp_url: &str, queue: &str, count: u32) -> anyhow::Result<()> {
    let connection = amqp_connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    for _ in 0..count {
        let mut garbage = vec![0u8; rand::random_range(1..512)];
        rand::fill(&mut garbage[..]);
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &garbage,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    amqp_close(connection, "faults done").await;
    Ok(())
}

/// The number of ready messages in `queue`, once it reaches `wanted` or when `within` has passed.
async fn wait_for_queue_depth(
    amqp_url: &str,
    queue: &str,
    wanted: u32,
    within: Duration,
) -> anyhow::Result<u32> {
    let connection = amqp_connect(amqp_url).await?;
    let deadline = Instant::now() + within;
    let mut depth = 0;
    while Instant::now() < deadline {
        // Passive: only look. A channel is closed by a failed passive declare, so each look gets its own.
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(declared) = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
        {
            depth = declared.message_count();
            let _ = channel.close(200, "look".into()).await;
            if depth >= wanted {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    amqp_close(connection, "faults done").await;
    Ok(depth)
}

/// Waits (bounded) until the stored rows agree with the ledger; the problems left when they never do.
async fn wait_consistent(
    system: &System,
    ledger: &Ledger,
    within: Duration,
    exactly_once: bool,
) -> anyhow::Result<Vec<String>> {
    let pool = system.pool().await?;
    let deadline = Instant::now() + within;
    loop {
        let stored = ledger::read_stored(&pool).await?;
        let mut problems = ledger::check(ledger, &stored);
        if exactly_once {
            problems.extend(ledger::unacknowledged_messages(ledger, &stored));
        }
        if problems.is_empty() || Instant::now() > deadline {
            pool.close().await;
            return Ok(problems);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Verdict {
    problems: Vec<String>,
    acknowledged: usize,
    answers: String,
}

/// How the load's requests were answered, e.g. `201: 950, 503 with Retry-After: 40, slowest 1.2 s`.
fn describe_answers(observations: &[Observation]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for observation in observations {
        let key = match observation.status {
            Some((503, true)) => "503 with Retry-After".to_owned(),
            Some((status, _)) => status.to_string(),
            None => "no answer".to_owned(),
        };
        *counts.entry(key).or_insert(0u64) += 1;
    }
    let slowest = observations
        .iter()
        .map(|observation| observation.answered - observation.sent)
        .max()
        .unwrap_or_default();
    let counts: Vec<String> = counts
        .iter()
        .map(|(key, count)| format!("{key}: {count}"))
        .collect();
    format!(
        "{}, slowest {:.2} s",
        counts.join(", "),
        slowest.as_secs_f64()
    )
}

async fn run_scenario(scenario: Scenario, args: &Args) -> anyhow::Result<Verdict> {
    let _restore = RestoreOnDrop {
        endpoints: args.endpoints.clone(),
    };
    let cache_redis = match scenario {
        Scenario::RedisMaxmemory => Some(CacheRedis::start()?),
        _ => None,
    };
    let mut env = args.env.clone();
    if let Some(cache) = &cache_redis {
        env.push(("REDIS_CACHE_URL".to_owned(), cache.url.clone()));
    }
    let mut system = System::start(
        args.endpoints.clone(),
        Options {
            keep: args.keep,
            env,
        },
    )
    .await?;
    let outcome = async {
        let load = Load::start(&system, args).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let injected = inject(scenario, &mut system, &load, args).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ledger, observations, finished_by_retry) = load.stop().await;
        let mut problems = injected?;
        // Where every idempotency key outlives the fault, a message retried with its key is stored
        // once: no message is stored that was not acknowledged.
        let exactly_once = scenario == Scenario::ApiKill;
        let drain = Duration::from_secs(args.drain_secs);
        problems.extend(wait_consistent(&system, &ledger, drain, exactly_once).await?);
        let mut answers = describe_answers(&observations);
        if finished_by_retry > 0 {
            answers.push_str(&format!(
                "; {finished_by_retry} messages whose answer was lost finished by their retry"
            ));
        }
        anyhow::Ok(Verdict {
            problems,
            acknowledged: ledger.messages.len() + ledger.chats.len(),
            answers,
        })
    }
    .await;
    let mut restore_failures = Vec::new();
    for service in Service::ALL {
        if let Err(error) = service.ensure_up(&args.endpoints).await {
            restore_failures.push(format!("{}: {error:#}", service.name()));
        }
    }
    if let Err(error) = system.shutdown().await {
        eprintln!("cleanup after {}: {error:#}", scenario.name());
    }
    if !restore_failures.is_empty() {
        bail!("could not restore {}", restore_failures.join("; "));
    }
    outcome
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let failed = chatsys_bench::run_to_end(async {
        tokio::select! {
            failed = run_all(&args) => failed,
            _ = tokio::signal::ctrl_c() => {
                for service in Service::ALL {
                    let _ = service.ensure_up(&args.endpoints).await;
                }
                bail!("interrupted")
            }
        }
    })??;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_all(args: &Args) -> anyhow::Result<usize> {
    args.endpoints.check_loopback()?;
    for service in Service::ALL {
        if !service.is_up(&args.endpoints).await {
            bail!(
                "{} is not answering; start it before the fault suite",
                service.name()
            );
        }
    }
    let scenarios: Vec<Scenario> = match args.scenario {
        Some(scenario) => vec![scenario],
        None => Scenario::value_variants().to_vec(),
    };
    let (mut passed, mut failed) = (0, 0);
    for scenario in scenarios {
        let started = Instant::now();
        eprintln!("{}: running", scenario.name());
        match run_scenario(scenario, args)
            .await
            .with_context(|| scenario.name())
        {
            Ok(verdict) if verdict.problems.is_empty() => {
                passed += 1;
                println!(
                    "PASS {} ({} acknowledged creations checked, {:.1} s; answers {})",
                    scenario.name(),
                    verdict.acknowledged,
                    started.elapsed().as_secs_f64(),
                    verdict.answers
                );
            }
            Ok(verdict) => {
                failed += 1;
                println!(
                    "FAIL {} ({} acknowledged creations checked, {:.1} s; answers {})\n{}",
                    scenario.name(),
                    verdict.acknowledged,
                    started.elapsed().as_secs_f64(),
                    verdict.answers,
                    indent(&ledger::summarize(&verdict.problems, 15))
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "FAIL {}: {}",
                    scenario.name(),
                    indent(&format!("{error:#}"))
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(status: u16, retry_after: bool, sent: Instant) -> Observation {
        Observation {
            sent,
            answered: sent,
            status: Some((status, retry_after)),
        }
    }

    #[test]
    fn a_refused_answer_is_reported_by_what_it_lacked() {
        let at = Instant::now();
        let observations = [
            observed(201, false, at),
            observed(503, true, at),
            observed(503, false, at),
        ];
        let problems = answers_during(&observations, at, at, "meanwhile", |status| status == 201);
        assert_eq!(
            problems,
            [
                r#"answers meanwhile that break the contract: {"503": 1, "503 without Retry-After": 1} of 3"#
            ]
        );
    }
}
