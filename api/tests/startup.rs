//! Start-up against a backing service that is not there yet: the API listens at once, says in
//! `/readyz` what it waits for, refuses requests with a 503 that says to retry, and serves once the
//! service appears; it does not exit. Needs MariaDB, Redis and RabbitMQ (`make services`). Each test
//! deletes the command queues its API declared, passed or failed.

use std::net::SocketAddr;
use std::time::Duration;

use chatsys_settings::{Cli, Command};
use clap::Parser;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

// The conformance crate's, which this crate's tests cannot depend on (it depends on the API); these
// tests make only queues, so the rest of it goes unused here.
#[allow(dead_code)]
use chatsys_scratch as scratch;
use scratch::Scratch;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn mysql_url() -> String {
    std::env::var("CHATSYS_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn redis_address() -> String {
    std::env::var("CHATSYS_TEST_REDIS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

async fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port")
        .local_addr()
        .expect("an address")
}

/// Forwards every connection on `listen` to `target`: Redis "coming up" on a new address.
async fn forward(listen: SocketAddr, target: String) {
    let listener = TcpListener::bind(listen).await.expect("the forwarded port");
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Command queues no other test uses, deleted with the scratch returned: the API declares its queues
/// once it reaches RabbitMQ.
fn test_queue() -> (String, Scratch) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let queue = format!("chatsys.test.startup-{}-{nanos:x}", std::process::id());
    let mut scratch = Scratch::default();
    scratch.owns_command_queues(AMQP_URL, &queue);
    (queue, scratch)
}

/// `serve` on `listen` against the test MariaDB's `mysql` database (left unmigrated), `redis_url`
/// and `queue` on the local RabbitMQ, with `extra` flags.
fn serve_args(
    listen: SocketAddr,
    redis_url: &str,
    queue: &str,
    data: &std::path::Path,
    extra: &[&str],
) -> chatsys_settings::ServeArgs {
    let database = format!("{}/mysql", mysql_url());
    let listen = listen.to_string();
    let mut argv = vec![
        "chatsys-api",
        "serve",
        "--listen",
        &listen,
        "--database-url",
        &database,
        "--redis-url",
        redis_url,
        "--amqp-url",
        AMQP_URL,
        "--queue",
        queue,
        "--data-dir",
        data.to_str().expect("UTF-8"),
        "--migrate",
        "false",
    ];
    argv.extend_from_slice(extra);
    let Some(Command::Serve(args)) = Cli::try_parse_from(argv)
        .expect("a serve command line")
        .command
    else {
        unreachable!("a serve command line");
    };
    args
}

async fn get(url: &str) -> Option<(u16, Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn the_api_waits_for_redis_saying_so_then_serves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (queue, _scratch) = test_queue();
    let data = tempfile::tempdir().expect("a data directory");
    let listen = free_port().await;
    let redis = free_port().await;
    let redis_url = format!("redis://{redis}");
    let args = serve_args(listen, &redis_url, &queue, data.path(), &[]);
    let starting = tokio::spawn(async move { chatsys_api::start(&args).await });

    let base = format!("http://{listen}");
    let mut waiting = None;
    for _ in 0..100 {
        if let Some(answer) = get(&format!("{base}/readyz")).await {
            waiting = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = waiting.expect("/readyz answers while the API waits");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({ "status": "unavailable", "checks": { "database": "ok", "redis": "waiting", "search": "waiting" } })
    );
    assert_eq!(
        get(&format!("{base}/healthz")).await.map(|(s, _)| s),
        Some(200)
    );
    let refused = reqwest::Client::new()
        .post(format!("{base}/applications"))
        .json(&json!({ "name": "early" }))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(!starting.is_finished(), "waiting is not a failure");

    tokio::spawn(forward(redis, redis_address()));
    let running = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("started once Redis answers")
        .expect("the start task ran")
        .expect("started");
    let (status, body) = get(&format!("{base}/readyz"))
        .await
        .expect("/readyz answers");
    assert_eq!(status, 200, "{body}");
    running.stop().await;
}

#[tokio::test]
async fn with_a_metrics_port_the_metrics_are_served_there_from_the_start_and_not_on_the_api_port() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (queue, _scratch) = test_queue();
    let data = tempfile::tempdir().expect("a data directory");
    let (listen, metrics) = (free_port().await, free_port().await);
    let redis_url = format!("redis://{}", redis_address());
    let args = serve_args(
        listen,
        &redis_url,
        &queue,
        data.path(),
        &["--metrics-listen", &metrics.to_string()],
    );
    let running = tokio::time::timeout(Duration::from_secs(30), chatsys_api::start(&args))
        .await
        .expect("started")
        .expect("started");
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("the metrics port answers");
    assert_eq!(scraped.status().as_u16(), 200);
    assert!(scraped.text().await.expect("text").contains("# HELP"));
    let (status, body) = get(&format!("http://{listen}/metrics"))
        .await
        .expect("the API port answers");
    assert_eq!(
        status, 404,
        "what routes clients to the API cannot reach the metrics"
    );
    assert_eq!(body["error"]["code"], "not_found");
    running.stop().await;
}
