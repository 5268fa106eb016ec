//! The worker against real MariaDB, Redis and RabbitMQ, driven at the queue: redelivery, commands out of
//! order, a crash with a batch unacknowledged, poison commands, and commands spread over several
//! queues. A missing service fails the test. Each test removes the database, queues and Redis keys it
//! made, passed or failed.

use std::time::{Duration, Instant};

use chatsys_adapters::amqp::CommandQueues;
use chatsys_core::command::Command;
use chatsys_settings::Backends;
use chatsys_settings::WorkerArgs;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use sqlx::{Connection as _, MySqlConnection};

// The conformance crate's, which this crate's tests cannot depend on (it depends on the worker).
use chatsys_scratch as scratch;
use scratch::{Scratch, off_runtime};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

struct Setup {
    database_url: String,
    /// The base name of the command queues.
    queue: String,
    /// The first command queue, declared as the release declares it.
    commands: String,
    dead: String,
    args: WorkerArgs,
    _data: tempfile::TempDir,
    _scratch: Scratch,
}

async fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = env_or("CHATSYS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306");
    let run = format!("t{}_{:08x}", Utc::now().timestamp(), rand::random::<u32>());
    let queue = format!("chatsys.test.{run}");
    let redis_url = env_or("CHATSYS_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let redis_prefix = format!("chatsys-test-{run}");
    let mut scratch = Scratch::default();
    scratch.owns_command_queues(&amqp_url(), &queue);
    scratch.owns_redis_keys(&redis_url, &redis_prefix);
    scratch.owns_database(&server, &format!("chatsys_{run}"));
    let mut conn = MySqlConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `chatsys_{run}`"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let database_url = format!("{server}/chatsys_{run}");
    let data = tempfile::tempdir().unwrap();
    let args = WorkerArgs {
        backends: Backends {
            database_url: Some(database_url.clone()),
            redis_url: Some(redis_url),
            redis_cache_url: None,
            amqp_url: Some(amqp_url()),
            opensearch_url: None,
            data_dir: data.path().to_path_buf(),
            queue: queue.clone(),
            queue_shards: 1,
            redis_prefix,
            migrate: true,
            cache_ttl_secs: 60,
            cache_max_page_bytes: 1 << 20,
            cache_max_app_bytes: 64 << 20,
            log_format: "text".into(),
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_size: 100,
        batch_wait_ms: 10,
        batch_bytes: chatsys_settings::DEFAULT_BATCH_BYTES,
        prefetch: 500,
        prefetch_bytes: chatsys_settings::DEFAULT_PREFETCH_BYTES,
        max_attempts: 2,
        repair_interval_secs: 300,
    };
    declare_queues(&queue).await;
    Setup {
        database_url,
        commands: chatsys_settings::command_queue_name(&queue, 0),
        dead: chatsys_settings::dead_letter_queue_name(&queue),
        queue,
        args,
        _data: data,
        _scratch: scratch,
    }
}

fn amqp_url() -> String {
    env_or(
        "CHATSYS_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

async fn open_channel() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is running");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Declares the command queues named `base` as the worker and the API do, so that a test can publish
/// before either has.
async fn declare_queues(base: &str) {
    let (connection, channel) = open_channel().await;
    chatsys_adapters::amqp::declare(&channel, &CommandQueues::new(base, 1))
        .await
        .unwrap();
    connection
        .close(200, ShortString::from("declared"))
        .await
        .unwrap();
}

/// Publishes to a queue that exists: mandatory, so that a message no queue took fails the test.
async fn publish(channel: &Channel, queue: &str, payloads: &[Vec<u8>]) {
    for payload in payloads {
        let properties = BasicProperties::default().with_delivery_mode(2);
        publish_with(channel, queue, payload, properties).await;
    }
}

/// Publishes one message with these properties.
async fn publish_with(channel: &Channel, queue: &str, payload: &[u8], properties: BasicProperties) {
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties,
        )
        .await
        .unwrap();
    let confirmation = confirm.await.unwrap();
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "{queue} took the message: {confirmation:?}"
    );
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

async fn application(database_url: &str) -> u64 {
    // The worker migrates at start; the test creates the application as the API would.
    let mut conn = MySqlConnection::connect(database_url).await.unwrap();
    sqlx::query("INSERT INTO applications (token, name, chats_count, created_at, updated_at) VALUES (?, 'queue test', 0, NOW(6), NOW(6))")
        .bind(chatsys_core::domain::generate_token())
        .execute(&mut conn)
        .await
        .unwrap()
        .last_insert_id()
}

fn message(app: u64, number: u64, body: &str) -> Vec<u8> {
    Command::CreateMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at(0),
        number,
        body: body.into(),
        at: at(number as i64),
    }
    .encode()
}

fn edit(app: u64, number: u64, body: &str, version: u64) -> Vec<u8> {
    Command::EditMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at(0),
        number,
        body: body.into(),
        version,
        created_at: at(number as i64),
        at: at(1000 + version as i64),
    }
    .encode()
}

fn chat(app: u64) -> Vec<u8> {
    Command::CreateChat {
        application_id: app,
        number: 1,
        at: at(0),
    }
    .encode()
}

/// (messages stored, messages_count, chats_count) once they stop changing, or the last seen after 15 s.
async fn drained(database_url: &str, app: u64, expected_messages: i64) -> (i64, i64, i64) {
    let mut conn = MySqlConnection::connect(database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (stored,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM messages WHERE application_id = ?")
                .bind(app)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let counted: Option<(u64,)> = sqlx::query_as(
            "SELECT messages_count FROM chats WHERE application_id = ? AND number = 1",
        )
        .bind(app)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        let (chats,): (u64,) = sqlx::query_as("SELECT chats_count FROM applications WHERE id = ?")
            .bind(app)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let state = (stored, counted.map_or(-1, |c| c.0 as i64), chats as i64);
        if (stored == expected_messages && state.1 == stored) || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn body_of(database_url: &str, app: u64, number: u64) -> String {
    let mut conn = MySqlConnection::connect(database_url).await.unwrap();
    let (body,): (String,) = sqlx::query_as(
        "SELECT body FROM messages WHERE application_id = ? AND chat_number = 1 AND number = ?",
    )
    .bind(app)
    .bind(number)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    body
}

/// A started worker, stopped when dropped too: a test that fails drops it before its [`Setup`] (declared
/// first), and a worker still running would declare its queues again once they were deleted.
struct Worker {
    addr: std::net::SocketAddr,
    running: Option<chatsys_runtime::Running>,
}

impl Worker {
    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            off_runtime(running.stop());
        }
    }
}

/// The worker waits for a missing service rather than fail: the wait is bounded, so a missing service
/// fails the test instead of hanging it.
async fn start(args: &WorkerArgs) -> Worker {
    let running = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        chatsys_worker::start(args),
    )
    .await
    .expect("the worker started within 30 s (are MariaDB, Redis and RabbitMQ running?)")
    .expect("the worker starts");
    Worker {
        addr: running.addr,
        running: Some(running),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_reordered_commands_are_applied_once_and_never_revert() {
    let s = setup().await;
    let worker = start(&s.args).await;
    let app = application(&s.database_url).await;
    let (_connection, channel) = open_channel().await;
    let mut commands = vec![
        edit(app, 1, "edited", 5),
        message(app, 1, "original"),
        message(app, 2, "two"),
    ];
    commands.extend((3..=50).map(|n| message(app, n, &format!("m{n}"))));
    commands.push(chat(app));
    // Every command arrives twice, as after a redelivery, and the creation of message 1 again at the end.
    let mut twice = commands.clone();
    twice.extend(commands);
    twice.push(message(app, 1, "original"));
    publish(&channel, &s.commands, &twice).await;
    assert_eq!(drained(&s.database_url, app, 50).await, (50, 50, 1));
    assert_eq!(body_of(&s.database_url, app, 1).await, "edited");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_unacknowledged_by_a_crash_is_redelivered_and_stored_once() {
    let s = setup().await;
    let app = application_after_migration(&s).await;
    let (_connection, channel) = open_channel().await;
    let commands: Vec<Vec<u8>> = std::iter::once(chat(app))
        .chain((1..=30).map(|n| message(app, n, &format!("m{n}"))))
        .collect();
    publish(&channel, &s.commands, &commands).await;
    // A consumer takes the whole batch and dies without acknowledging it.
    take_and_die(&s.commands, commands.len()).await;
    let worker = start(&s.args).await;
    assert_eq!(drained(&s.database_url, app, 30).await, (30, 30, 1));
    worker.stop().await;
}

/// A consumer that takes `deliveries` from the queue and dies without acknowledging them, as a worker
/// that crashes mid-batch: the broker delivers them again.
async fn take_and_die(queue: &str, deliveries: usize) {
    let (crashed, channel) = open_channel().await;
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("doomed"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..deliveries {
        consumer.next().await.unwrap().unwrap();
    }
    drop(consumer);
    crashed
        .close(320, ShortString::from("simulated crash"))
        .await
        .unwrap();
}

/// The schema exists before the application row is inserted; the worker is stopped right after.
async fn application_after_migration(s: &Setup) -> u64 {
    let worker = start(&s.args).await;
    worker.stop().await;
    application(&s.database_url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_commands_go_to_the_dead_letter_queue_with_the_reason_and_the_rest_flow() {
    let s = setup().await;
    let worker = start(&s.args).await;
    let app = application(&s.database_url).await;
    let (_connection, channel) = open_channel().await;
    let invalid = Command::CreateMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at(0),
        number: 3,
        body: String::new(),
        at: at(3),
    }
    .encode();
    publish(
        &channel,
        &s.commands,
        &[
            chat(app),
            message(app, 1, "before"),
            b"\xff not a command".to_vec(),
            invalid,
            message(app, 2, "after"),
        ],
    )
    .await;
    assert_eq!(drained(&s.database_url, app, 2).await, (2, 2, 1));

    let dead = &s.dead;
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reasons.len() < 2 && Instant::now() < deadline {
        match channel
            .basic_get(
                ShortString::from(dead.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(message) => {
                let headers = message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default();
                match headers.inner().get("x-chatsys-reason") {
                    Some(AMQPValue::LongString(reason)) => reasons.push(reason.to_string()),
                    other => panic!("dead letter without a reason: {other:?}"),
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        reasons.len(),
        2,
        "both poison commands are dead-lettered: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("undecodable")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("body")), "{reasons:?}");
    worker.stop().await;
}

/// Stops the worker once its last batch had the moment it takes to be acknowledged (a batch is
/// acknowledged once indexed and cached too, a little after its rows show; a stop before then leaves it
/// to be redelivered, by design), then finds none of these queues given deliveries back: every one was
/// acknowledged.
async fn stop_and_expect_acknowledged(worker: Worker, channel: &Channel, queues: &[&str]) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for queue in queues {
        assert_eq!(
            depth(channel, queue).await,
            0,
            "queue {queue} got deliveries back: they were never acknowledged"
        );
    }
}

/// Messages waiting in a queue, by a passive declare.
async fn depth(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::durable()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_spread_over_three_queues_are_all_stored_once_and_acknowledged_on_each() {
    use chatsys_adapters::amqp::AmqpQueue;
    use chatsys_core::ports::Queue;

    let mut s = setup().await;
    s.args.backends.queue_shards = 3;
    let app = application_after_migration(&s).await;
    let queues = CommandQueues::new(&s.queue, 3);
    // Published as the API publishes: each command to its chat's queue.
    let api = AmqpQueue::new(&amqp_url(), queues.clone(), 2, Duration::from_secs(5));
    let chats = 1..=12u64;
    for chat in chats.clone() {
        api.publish(&Command::CreateChat {
            application_id: app,
            number: chat,
            at: at(0),
        })
        .await
        .unwrap();
        for number in 1..=5 {
            let command = Command::CreateMessage {
                application_id: app,
                chat_number: chat,
                chat_created_at: at(0),
                number,
                body: format!("c{chat}m{number}"),
                at: at(number as i64),
            };
            api.publish(&command).await.unwrap();
            // The same command again in another queue, as a retried publish could land.
            if number == 1 {
                let other = queues.name((queues.of(&command) + 1) % 3);
                let (_connection, channel) = open_channel().await;
                publish(&channel, &other, &[command.encode()]).await;
            }
        }
    }
    let (_connection, channel) = open_channel().await;
    for queue in queues.names() {
        assert!(
            depth(&channel, &queue).await > 0,
            "twelve chats left queue {queue} empty"
        );
    }

    let worker = start(&s.args).await;
    let mut conn = MySqlConnection::connect(&s.database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored = loop {
        let stored: (i64, i64, u64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM messages WHERE application_id = ?), \
                    (SELECT CAST(COALESCE(SUM(messages_count), 0) AS SIGNED) FROM chats WHERE application_id = ?), \
                    (SELECT chats_count FROM applications WHERE id = ?)",
        )
        .bind(app)
        .bind(app)
        .bind(app)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if stored == (60, 60, 12) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored, (60, 60, 12), "(messages, their count, chats)");
    let names = queues.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    stop_and_expect_acknowledged(worker, &channel, &names).await;
    assert_eq!(api.backlog().await.unwrap(), 0);
}

/// An API replica spreading commands over more queues than the worker was told of strands none: the
/// worker finds the queues declared after it connected and consumes them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_queues_an_api_declared_beyond_its_own_setting() {
    use chatsys_adapters::amqp::AmqpQueue;
    use chatsys_core::ports::Queue;

    let s = setup().await;
    let app = application_after_migration(&s).await;
    let worker = start(&s.args).await;
    // The worker consumes its one queue before the API declares three.
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker_connection(&s.queue).is_none() {
        assert!(Instant::now() < deadline, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = AmqpQueue::new(
        &amqp_url(),
        CommandQueues::new(&s.queue, 3),
        1,
        Duration::from_secs(5),
    );
    api.publish(&Command::CreateChat {
        application_id: app,
        number: 1,
        at: at(0),
    })
    .await
    .unwrap();
    let (_connection, channel) = open_channel().await;
    let queues = CommandQueues::new(&s.queue, 3);
    let mut published = 0;
    for number in 1..=30 {
        let command = Command::CreateMessage {
            application_id: app,
            chat_number: 1,
            chat_created_at: at(0),
            number,
            body: format!("m{number}"),
            at: at(number as i64),
        };
        // Every queue gets some, whichever the chat maps to.
        publish(
            &channel,
            &queues.name(number as usize % 3),
            &[command.encode()],
        )
        .await;
        published += 1;
    }
    assert_eq!(drained(&s.database_url, app, published).await, (30, 30, 1));
    api.ping().await.expect("every queue has a consumer again");
    assert_eq!(api.backlog().await.unwrap(), 0);
    worker.stop().await;
}

/// An application queued behind another's long run is not stored after all of it: batches take each
/// application's commands in turn from what the worker holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_behind_anothers_long_run_is_stored_early() {
    let mut s = setup().await;
    // Small batches: forty of them for the heavy run, so its commands are all delivered to the worker
    // (within its prefetch) long before it has stored them, however busy the machine.
    s.args.batch_size = 10;
    let heavy = application_after_migration(&s).await;
    let light = application(&s.database_url).await;
    let (_connection, channel) = open_channel().await;
    let mut commands = vec![chat(heavy), chat(light)];
    commands.extend((1..=400).map(|n| message(heavy, n, &format!("h{n}"))));
    commands.extend((1..=5).map(|n| message(light, n, &format!("l{n}"))));
    publish(&channel, &s.commands, &commands).await;
    let worker = start(&s.args).await;
    assert_eq!(drained(&s.database_url, light, 5).await.0, 5);
    assert_eq!(drained(&s.database_url, heavy, 400).await.0, 400);
    worker.stop().await;
    // The batch that stored the light application's messages, and the heavy one's it stored with them.
    let mut conn = MySqlConnection::connect(&s.database_url).await.unwrap();
    let (earliest,): (Option<u64>,) = sqlx::query_as(
        "SELECT MIN(h.number) FROM messages h JOIN messages l ON l.changed_by = h.changed_by \
         WHERE h.application_id = ? AND l.application_id = ?",
    )
    .bind(heavy)
    .bind(light)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // Batches in queue order would store them with the heavy application's last ones.
    let earliest = earliest.expect("stored in a batch with some of the heavy application's");
    assert!(
        earliest <= 250,
        "stored with the heavy application's message {earliest} and after"
    );
}

/// The broker's process id of the worker's connection to these queues, from `rabbitmqctl` (the worker
/// names its connection after its first queue).
fn worker_connection(queue: &str) -> Option<String> {
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (the tests run where RabbitMQ is installed)");
    assert!(
        listed.status.success(),
        "rabbitmqctl list_connections failed"
    );
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|line| line.contains(&format!("chatsys-worker {queue}")))
        .and_then(|line| line.split('\t').next())
        .map(str::to_string)
}

async fn readyz(worker: &Worker) -> u16 {
    reqwest::get(format!("http://{}/readyz", worker.addr))
        .await
        .map_or(0, |answer| answer.status().as_u16())
}

/// An idle worker whose connection the broker closed is ready again once it has reconnected, without
/// waiting for a command to arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_ready_again_once_it_has_reconnected() {
    let s = setup().await;
    let worker = start(&s.args).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let (200, Some(name)) = (readyz(&worker).await, worker_connection(&s.queue)) {
            break name;
        }
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &first, "closed by a test"])
        .status()
        .unwrap();
    assert!(closed.success(), "rabbitmqctl close_connection failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reconnected = worker_connection(&s.queue).is_some_and(|name| name != first);
        if reconnected && readyz(&worker).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 s after its connection was closed the worker is not ready (reconnected: {reconnected})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

/// A worker stored part of an envelope (its batch was split after a refusal, say) and died before
/// acknowledging it: the envelope comes back whole, and every command in it is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_a_worker_died_in_is_stored_once_when_redelivered() {
    use chatsys_adapters::mysql::MySqlStore;
    use chatsys_core::ports::Store;

    let s = setup().await;
    let app = application_after_migration(&s).await;
    let commands: Vec<Vec<u8>> = std::iter::once(chat(app))
        .chain((1..=30).map(|n| message(app, n, &format!("m{n}"))))
        .collect();
    let (_connection, channel) = open_channel().await;
    publish(
        &channel,
        &s.commands,
        &[chatsys_core::envelope::seal(&commands)],
    )
    .await;
    // The worker that died had stored the chat and the first fifteen messages.
    let store = MySqlStore::connect(&s.database_url, 2).unwrap();
    let stored_first: Vec<Command> = commands[..16]
        .iter()
        .map(|c| Command::decode(c).unwrap())
        .collect();
    store.apply(&stored_first).await.unwrap();
    take_and_die(&s.commands, 1).await;
    let worker = start(&s.args).await;
    assert_eq!(drained(&s.database_url, app, 30).await, (30, 30, 1));
    stop_and_expect_acknowledged(worker, &channel, &[&s.commands]).await;
}

/// One bad command in an envelope goes to the dead-letter queue alone, as itself, with its reason and
/// the envelope's headers; the envelope's other commands are stored, and the envelope acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_command_in_an_envelope_is_dead_lettered_alone() {
    let s = setup().await;
    let app = application_after_migration(&s).await;
    let (_connection, channel) = open_channel().await;
    let invalid = Command::CreateMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at(0),
        number: 0,
        body: "numbered zero".into(),
        at: at(0),
    }
    .encode();
    let commands = vec![
        chat(app),
        message(app, 1, "before"),
        invalid.clone(),
        message(app, 2, "after"),
    ];
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-chatsys-commands"),
        AMQPValue::LongString("4".into()),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    publish_with(
        &channel,
        &s.commands,
        &chatsys_core::envelope::seal(&commands),
        properties,
    )
    .await;
    let worker = start(&s.args).await;
    assert_eq!(drained(&s.database_url, app, 2).await, (2, 2, 1));

    let dead = &s.dead;
    let deadline = Instant::now() + Duration::from_secs(10);
    let letter = loop {
        let got = channel
            .basic_get(
                ShortString::from(dead.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(message) => break message,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("nothing was dead-lettered"),
        }
    };
    assert_eq!(letter.delivery.data, invalid, "the bad command alone");
    let headers = letter
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert!(
        text("x-chatsys-reason").contains("out of range"),
        "{headers:?}"
    );
    assert_eq!(text("x-chatsys-commands"), "4", "the envelope's header");
    stop_and_expect_acknowledged(worker, &channel, &[&s.commands]).await;
    assert_eq!(depth(&channel, &dead).await, 0, "one dead letter only");
}

/// Publishes as the API does: a lone command goes at once, as itself; commands published together
/// while the channel awaits a confirm share envelopes, each command in exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_envelopes_and_a_lone_one_goes_as_itself() {
    use chatsys_adapters::amqp::AmqpQueue;
    use chatsys_core::ports::Queue;
    use std::sync::Arc;

    let s = setup().await;
    let api = Arc::new(AmqpQueue::new(
        &amqp_url(),
        CommandQueues::new(&s.queue, 1),
        1,
        Duration::from_secs(5),
    ));
    let lone = Command::CreateChat {
        application_id: 1,
        number: 1,
        at: at(0),
    };
    api.publish(&lone).await.unwrap();
    let (_connection, channel) = open_channel().await;
    let get = || async {
        channel
            .basic_get(
                ShortString::from(s.commands.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
    };
    let first = get().await.expect("the lone command is queued");
    assert_eq!(first.delivery.data, lone.encode());

    let publishes: Vec<_> = (1..=300)
        .map(|n| {
            let api = api.clone();
            tokio::spawn(async move {
                let command = Command::CreateMessage {
                    application_id: 1,
                    chat_number: 1,
                    chat_created_at: at(0),
                    number: n,
                    body: format!("m{n}"),
                    at: at(0),
                };
                api.publish(&command).await.map(|()| command)
            })
        })
        .collect();
    let mut published = Vec::new();
    for publish in publishes {
        published.push(publish.await.unwrap().unwrap().encode());
    }
    let mut queued = Vec::new();
    let mut messages = 0;
    while let Some(message) = get().await {
        messages += 1;
        let parts = chatsys_core::envelope::open(&message.delivery.data).unwrap();
        queued.extend(parts.into_iter().map(<[u8]>::to_vec));
    }
    published.sort();
    queued.sort();
    assert_eq!(queued, published, "each command in exactly one message");
    assert!(
        messages < 300 / 4,
        "300 concurrent publishes on one channel went out as {messages} messages"
    );
    println!("300 concurrent publishes went out as {messages} messages");
}

/// A counter lost from Redis restarts above every number still queued: a queued message may be an
/// envelope of many commands, so each counts as a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_counter_restarts_above_every_number_an_envelope_in_the_queue_holds() {
    use chatsys_adapters::amqp::AmqpQueue;
    use chatsys_adapters::mysql::MySqlStore;
    use chatsys_core::ports::NumberFloor;
    use chatsys_core::service::ReseedFloor;
    use std::sync::Arc;

    let s = setup().await;
    let app = application_after_migration(&s).await;
    let queued: Vec<Vec<u8>> = (1..=10)
        .map(|n| message(app, n, &format!("m{n}")))
        .collect();
    let (_connection, channel) = open_channel().await;
    publish(
        &channel,
        &s.commands,
        &[chatsys_core::envelope::seal(&queued)],
    )
    .await;
    let floor = ReseedFloor {
        store: Arc::new(MySqlStore::connect(&s.database_url, 2).unwrap()),
        queue: Arc::new(AmqpQueue::new(
            &amqp_url(),
            CommandQueues::new(&s.queue, 1),
            1,
            Duration::from_secs(5),
        )),
        margin: 0,
    };
    let restart_at = floor.message_floor(app, 1).await.unwrap();
    assert!(
        restart_at >= 10,
        "a counter restarted at {restart_at} would hand out a number the queue holds"
    );
}

/// The type and arguments of every queue, as `rabbitmqctl` lists them (a passive declare says neither).
fn declared_queues() -> Vec<serde_json::Value> {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--formatter", "json"])
        .args(["name", "type", "arguments"])
        .output()
        .expect("rabbitmqctl runs (the tests run where RabbitMQ is installed)");
    assert!(listed.status.success(), "rabbitmqctl list_queues failed");
    serde_json::from_slice(&listed.stdout).expect("rabbitmqctl's JSON")
}

fn declared(queues: &[serde_json::Value], name: &str) -> serde_json::Value {
    queues
        .iter()
        .find(|queue| queue["name"] == name)
        .unwrap_or_else(|| panic!("queue {name} is not declared"))
        .clone()
}

/// The value of a queue's argument; `rabbitmqctl` lists each as `[name, type, value]`.
fn argument(queue: &serde_json::Value, name: &str) -> serde_json::Value {
    queue["arguments"]
        .as_array()
        .and_then(|arguments| arguments.iter().find(|argument| argument[0] == name))
        .map(|argument| argument[2].clone())
        .unwrap_or_default()
}

/// The worker and the API declare the command queues as quorum queues (replicated on a cluster) that
/// move a command delivered too often to the dead-letter queue, a quorum queue too, at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_queues_are_quorum_queues_that_dead_letter_a_command_delivered_too_often() {
    use chatsys_adapters::amqp::{AmqpQueue, DELIVERY_LIMIT};
    use chatsys_core::ports::Queue;

    let mut s = setup().await;
    s.args.backends.queue_shards = 2;
    let app = application_after_migration(&s).await;
    let worker = start(&s.args).await;
    let api = AmqpQueue::new(
        &amqp_url(),
        CommandQueues::new(&s.queue, 2),
        1,
        Duration::from_secs(5),
    );
    api.publish(&Command::decode(&chat(app)).unwrap())
        .await
        .unwrap();
    assert_eq!(drained(&s.database_url, app, 0).await, (0, 0, 1));
    let queues = declared_queues();
    for name in CommandQueues::new(&s.queue, 2).names() {
        let queue = declared(&queues, &name);
        assert_eq!(queue["type"], "quorum", "{queue}");
        let argument = |name: &str| argument(&queue, name);
        assert_eq!(argument("x-delivery-limit"), DELIVERY_LIMIT, "{queue}");
        assert_eq!(argument("x-dead-letter-exchange"), "", "{queue}");
        assert_eq!(argument("x-dead-letter-routing-key"), s.dead, "{queue}");
        assert_eq!(argument("x-dead-letter-strategy"), "at-least-once");
        assert_eq!(argument("x-overflow"), "reject-publish", "{queue}");
    }
    assert_eq!(declared(&queues, &s.dead)["type"], "quorum");
    worker.stop().await;
}

/// A command whose deliveries keep coming back unacknowledged (every worker it reaches dies) goes to the
/// dead-letter queue once it was delivered `DELIVERY_LIMIT` times more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_past_the_limit_goes_to_the_dead_letter_queue() {
    use chatsys_adapters::amqp::DELIVERY_LIMIT;

    let s = setup().await;
    let (_connection, channel) = open_channel().await;
    let command = chat(1);
    publish(&channel, &s.commands, std::slice::from_ref(&command)).await;
    for delivery in 0..=DELIVERY_LIMIT {
        let (crashed, channel) = open_channel().await;
        let got = channel
            .basic_get(
                ShortString::from(s.commands.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        assert!(got.is_some(), "delivery {delivery} of the command");
        crashed
            .close(320, ShortString::from("simulated crash"))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth(&channel, &s.dead).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the command never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth(&channel, &s.commands).await, 0);
    let letter = channel
        .basic_get(
            ShortString::from(s.dead.as_str()),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(letter.delivery.data, command);
    let headers = letter.delivery.properties.headers().clone();
    let reason = headers
        .unwrap_or_default()
        .inner()
        .get("x-first-death-reason")
        .cloned();
    assert_eq!(reason, Some(AMQPValue::LongString("delivery_limit".into())));
}

/// Declares a classic queue as the releases before quorum queues did.
async fn declare_classic(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Whether a queue exists, by a passive declare on a channel of its own (a missing queue closes it).
async fn exists(connection: &Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::durable()
    };
    channel
        .queue_declare(ShortString::from(queue), options, FieldTable::default())
        .await
        .is_ok()
}

/// The migration from classic queues: an earlier release's two classic queues hold commands when the
/// new release starts. Its API publishes to the quorum queues only, its worker drains the classic ones
/// too: every command is stored once, then the drained classic queues are deleted; the classic
/// dead-letter queue, which may hold commands nobody replayed yet, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_the_classic_queues_of_an_earlier_release_are_stored_once_and_the_queues_deleted()
 {
    use chatsys_adapters::amqp::AmqpQueue;
    use chatsys_core::ports::Queue;

    let s = setup().await;
    let app = application_after_migration(&s).await;
    let (connection, channel) = open_channel().await;
    let classic = [
        chatsys_settings::classic_command_queue_name(&s.queue, 0),
        chatsys_settings::classic_command_queue_name(&s.queue, 1),
    ];
    let classic_dead = chatsys_settings::classic_dead_letter_queue_name(&s.queue);
    for queue in classic.iter().chain([&classic_dead]) {
        declare_classic(&channel, queue).await;
    }
    publish(&channel, &classic[0], &[chat(app)]).await;
    let queued: Vec<Vec<u8>> = (1..=40)
        .map(|n| message(app, n, &format!("m{n}")))
        .collect();
    publish(&channel, &classic[0], &queued[..20]).await;
    publish(&channel, &classic[1], &queued[20..30]).await;
    let api = AmqpQueue::new(
        &amqp_url(),
        CommandQueues::new(&s.queue, 1),
        1,
        Duration::from_secs(5),
    );
    for command in &queued[30..] {
        api.publish(&Command::decode(command).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(api.backlog().await.unwrap(), 41, "every command waits");
    assert_eq!(depth(&channel, &classic[0]).await, 21);

    let worker = start(&s.args).await;
    assert_eq!(drained(&s.database_url, app, 40).await, (40, 40, 1));
    let deadline = Instant::now() + Duration::from_secs(20);
    for queue in &classic {
        while exists(&connection, queue).await {
            assert!(
                Instant::now() < deadline,
                "the drained classic queue {queue} is still there"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(exists(&connection, &classic_dead).await);
    api.ping().await.expect("no queue strands commands");
    stop_and_expect_acknowledged(worker, &channel, &[&s.commands]).await;
    assert_eq!(drained(&s.database_url, app, 40).await, (40, 40, 1));
}
