//! The HTTP edge against clients that hold sockets or memory without finishing a request: silent and
//! dripping connections, idle kept-alive ones, stalled bodies, more connections than allowed, stalled
//! uploads over the body budget, more streams or writes than allowed. Each case runs a standalone server with short limits and talks to it
//! over raw TCP. Timings are only ever upper bounds with a wide margin.

use std::time::Duration;

mod common;

use common::{Server, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long past a limit a case waits for the server to act on it.
const MARGIN: Duration = Duration::from_secs(3);

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.running.addr).await.unwrap()
}

/// Reads until the server closes the connection (a reset counts), or fails after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration, what: &str) {
    let mut buffer = [0; 4096];
    let result = timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(result.is_ok(), "{what}: still open after {within:?}");
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.head))
    }

    fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        assert_eq!(self.json()["error"]["code"], code, "{}", self.head);
        assert!(self.header("x-request-id").is_some(), "{}", self.head);
    }
}

/// Reads one response (head, then a body of its Content-Length), or `None` if none came within `within`.
async fn answer_within(stream: &mut TcpStream, within: Duration) -> Option<Answer> {
    let read = async {
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    let body = received[end + 4..end + 4 + length].to_vec();
                    return Some(Answer { status, head, body });
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    timeout(within, read).await.ok().flatten()
}

/// The head of a request with a body of `length` bytes, of which the caller sends what it wants.
fn post_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n";

async fn healthz_answers(server: &Server) {
    let mut stream = connect(server).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let answer = answer_within(&mut stream, MARGIN)
        .await
        .expect("an answer to a plain request");
    assert_eq!(answer.status, 200, "{}", answer.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_dripping_connections_are_closed_after_the_header_timeout() {
    let server = start(&["--header-timeout-ms", "500", "--max-connections", "2"]).await;
    let mut silent = connect(&server).await;
    let mut dripping = connect(&server).await;
    let started = Instant::now();
    dripping
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let drip = async {
        // A header line every 100 ms: the connection is never quiet, but its head never ends.
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let line = format!("x-drip-{i}: 1\r\n");
            if dripping.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    assert!(
        timeout(Duration::from_millis(500) + MARGIN, drip)
            .await
            .is_ok(),
        "a dripped head is still being read after {:?}",
        started.elapsed()
    );
    closed_within(&mut silent, MARGIN, "a connection that sent nothing").await;
    // Both slots were taken by the two; they are free again.
    healthz_answers(&server).await;
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let server = start(&["--header-timeout-ms", "60000", "--idle-timeout-secs", "1"]).await;
    let mut stream = connect(&server).await;
    for _ in 0..2 {
        stream.write_all(HEALTHZ).await.unwrap();
        let answer = answer_within(&mut stream, MARGIN).await.expect("an answer");
        assert_eq!(answer.status, 200, "{}", answer.head);
    }
    closed_within(
        &mut stream,
        Duration::from_secs(1) + MARGIN,
        "an idle kept-alive connection",
    )
    .await;
    server.running.stop().await;
}

/// The header timeout holds for every request of a kept-alive connection, not only its first: a head
/// that starts after an answer and never ends is cut after the header timeout, long before the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_that_never_ends_is_cut_after_the_header_timeout() {
    let server = start(&["--header-timeout-ms", "500", "--idle-timeout-secs", "30"]).await;
    let mut stream = connect(&server).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let answer = answer_within(&mut stream, MARGIN).await.expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    // Idle past a few header timeouts first: the head then starts on a connection the watchdog last
    // saw idle, with the idle deadline far away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    closed_within(
        &mut stream,
        Duration::from_millis(500) + MARGIN,
        "a kept-alive connection whose second head never ends",
    )
    .await;
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_within_the_body_timeout() {
    let server = start(&["--body-timeout-ms", "500"]).await;
    let mut stream = connect(&server).await;
    stream
        .write_all(post_head("/applications", 100).as_bytes())
        .await
        .unwrap();
    stream.write_all(br#"{"name":"#).await.unwrap();
    let answer = answer_within(&mut stream, Duration::from_millis(500) + MARGIN)
        .await
        .expect("an answer to a body that stopped arriving");
    answer.expect_error(408, "timeout");
    closed_within(&mut stream, MARGIN, "the connection of a timed-out body").await;
    healthz_answers(&server).await;
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let server = start(&["--max-connections", "2", "--header-timeout-ms", "60000"]).await;
    let first = connect(&server).await;
    let _second = connect(&server).await;
    let mut third = connect(&server).await;
    third.write_all(HEALTHZ).await.unwrap();
    assert!(
        answer_within(&mut third, Duration::from_millis(500))
            .await
            .is_none(),
        "a third connection was served while two held the only slots"
    );
    drop(first);
    let answer = answer_within(&mut third, MARGIN)
        .await
        .expect("served once a slot is free");
    assert_eq!(answer.status, 200, "{}", answer.head);
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_over_the_body_budget_get_503_and_the_budget_comes_back() {
    let budget = 256 * 1024;
    let server = start(&[
        "--max-inflight-body-bytes",
        &budget.to_string(),
        "--body-timeout-ms",
        "30000",
    ])
    .await;
    // Most of the budget, then nothing more.
    let mut first = connect(&server).await;
    first
        .write_all(post_head("/applications", 1_000_000).as_bytes())
        .await
        .unwrap();
    first.write_all(&vec![b' '; 200 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // More than what is left, then nothing more.
    let mut second = connect(&server).await;
    second
        .write_all(post_head("/applications", 1_000_000).as_bytes())
        .await
        .unwrap();
    second.write_all(&vec![b' '; 100 * 1024]).await.unwrap();
    let answer = answer_within(&mut second, MARGIN)
        .await
        .expect("an answer to an upload over the budget");
    answer.expect_error(503, "service_unavailable");
    assert_eq!(answer.header("retry-after"), Some("1"), "{}", answer.head);
    drop(second);

    // The stalled uploads end; what they held is free again for a whole body.
    drop(first);
    let body = format!(r#"{{"name":"after","pad":"{}"}}"#, "a".repeat(200 * 1024));
    let deadline = Instant::now() + MARGIN;
    loop {
        let mut stream = connect(&server).await;
        stream
            .write_all(post_head("/applications", body.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let answer = answer_within(&mut stream, MARGIN).await.expect("an answer");
        if answer.status == 201 {
            break;
        }
        // The server may see the first upload's end a moment after the close.
        answer.expect_error(503, "service_unavailable");
        assert!(
            Instant::now() < deadline,
            "the budget of closed uploads never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let server = start(&["--idle-timeout-secs", "60", "--header-timeout-ms", "60000"]).await;
    let mut idle = connect(&server).await;
    idle.write_all(HEALTHZ).await.unwrap();
    answer_within(&mut idle, MARGIN).await.expect("an answer");
    let body = br#"{"name":"in flight"}"#;
    let mut in_flight = connect(&server).await;
    in_flight
        .write_all(post_head("/applications", body.len()).as_bytes())
        .await
        .unwrap();
    in_flight.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(server.running.stop());
    closed_within(&mut idle, MARGIN, "an idle connection at shutdown").await;
    in_flight.write_all(&body[5..]).await.unwrap();
    let answer = answer_within(&mut in_flight, MARGIN)
        .await
        .expect("the request in flight is answered");
    assert_eq!(answer.status, 201, "{}", answer.head);
    timeout(MARGIN, stopping)
        .await
        .expect("stop returns once the request is done")
        .unwrap();
}

/// An application and a chat in it, made over plain HTTP/1.1; returns the chat's event stream path.
async fn a_chat(server: &Server) -> String {
    let mut stream = connect(server).await;
    let body = br#"{"name":"streams"}"#;
    stream
        .write_all(post_head("/applications", body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    let answer = answer_within(&mut stream, MARGIN).await.expect("an answer");
    let token = answer.json()["token"].as_str().unwrap().to_string();
    let path = format!("/applications/{token}/chats");
    stream
        .write_all(post_head(&path, 2).as_bytes())
        .await
        .unwrap();
    stream.write_all(b"{}").await.unwrap();
    let answer = answer_within(&mut stream, MARGIN).await.expect("an answer");
    assert_eq!(answer.status, 201, "{}", answer.head);
    format!("{path}/1/events")
}

/// Opens an event stream over raw TCP and reads its head.
async fn open_events(server: &Server, path: &str) -> TcpStream {
    let mut stream = connect(server).await;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(MARGIN, stream.read_exact(&mut byte))
            .await
            .expect("the stream's head")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    stream
}

/// A stream is a long response, not an idle connection: it stays open past the idle timeout while it
/// writes (heartbeats here), however long that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_idle_timeout_while_it_writes() {
    let server = start(&["--idle-timeout-secs", "1", "--event-heartbeat-ms", "300"]).await;
    let path = a_chat(&server).await;
    let mut stream = open_events(&server, &path).await;
    let until = Instant::now() + Duration::from_secs(4);
    let mut heartbeats = 0;
    let mut buffer = [0; 4096];
    while Instant::now() < until {
        let read = timeout(MARGIN, stream.read(&mut buffer))
            .await
            .expect("a heartbeat within the margin")
            .unwrap();
        assert!(
            read > 0,
            "the stream was closed after {heartbeats} heartbeats"
        );
        heartbeats += String::from_utf8_lossy(&buffer[..read])
            .matches(": heartbeat")
            .count();
    }
    assert!(heartbeats >= 5, "{heartbeats} heartbeats in 4 s");
    server.running.stop().await;
}

/// Shutting down ends the streams (their clients resume from their last id on another replica), so
/// stopping does not wait for clients that would never leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_event_streams() {
    let server = start(&[]).await;
    let path = a_chat(&server).await;
    let mut stream = open_events(&server, &path).await;
    timeout(MARGIN, server.running.stop())
        .await
        .expect("stop returns although a stream was open");
    closed_within(&mut stream, MARGIN, "an event stream at shutdown").await;
}

/// Streams stop short of the connection limit: once they hold all the connections they may, one more
/// is refused with 429 and a health check still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_leave_room_for_health_checks_under_the_connection_limit() {
    // 20 connections: streams may hold 12, eight are kept.
    let server = start(&["--max-connections", "20"]).await;
    let path = a_chat(&server).await;
    let mut open = Vec::new();
    for _ in 0..12 {
        open.push(open_events(&server, &path).await);
    }
    let mut refused = connect(&server).await;
    refused
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = answer_within(&mut refused, MARGIN)
        .await
        .expect("an answer to a stream over the limit");
    answer.expect_error(429, "too_many_requests");
    assert!(answer.header("retry-after").is_some(), "{}", answer.head);
    healthz_answers(&server).await;
    drop(open);
    server.running.stop().await;
}

/// Heartbeats keep proxies from closing a quiet stream, but they do not keep it: a stream with no event
/// for its quiet limit ends, and its client resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_ends_though_heartbeats_go_on() {
    let server = start(&["--event-heartbeat-ms", "200", "--event-max-quiet-secs", "1"]).await;
    let path = a_chat(&server).await;
    let mut stream = open_events(&server, &path).await;
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let ended = timeout(Duration::from_secs(1) + MARGIN, async {
        // The response ends with its last chunk (the connection itself may be kept alive).
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let received = String::from_utf8_lossy(&received);
    assert!(ended.is_ok(), "still streaming: {received}");
    assert!(received.contains(": heartbeat"), "{received}");
    server.running.stop().await;
}

/// With a write quota, an application past it gets 429 with Retry-After, and another application's
/// writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_over_its_write_quota_gets_429_and_others_do_not() {
    let server = common::start(&["--rate-limit-per-app", "5"]).await;
    let base = server.base();
    let client = reqwest::Client::new();
    let heavy = common::create_token(&client, &base, "heavy").await;
    let light = common::create_token(&client, &base, "light").await;
    let create_chat = |token: &str| {
        client
            .post(format!("{base}/applications/{token}/chats"))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(create_chat(&heavy).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 429]);
    let refused = create_chat(&heavy).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    assert_eq!(create_chat(&light).await.unwrap().status(), 201);
    server.running.stop().await;
}
