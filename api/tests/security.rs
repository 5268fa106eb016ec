//! What the API keeps to itself: without an admin key nobody lists the applications (and the answer
//! says how to enable it), and no token reaches the logs, at any level.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Everything logged in this process, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_nobody_lists_applications() {
    let server = common::start(&[]).await;
    let base = server.base();
    let http = reqwest::Client::new();
    for authorization in [None, Some("Bearer anything")] {
        let mut request = http.get(format!("{base}/applications"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 403);
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("CHATSYS_ADMIN_KEY"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = common::start(&["--admin-key", "logs-admin-key"]).await;
    let base = server.base();
    let http = reqwest::Client::new();
    let token = common::create_token(&http, &base, "logged").await;
    let app = format!("{base}/applications/{token}");
    let ok = |reply: reqwest::Response| {
        assert!(reply.status().is_success(), "{reply:?}");
    };
    ok(http.post(format!("{app}/chats")).send().await.unwrap());
    ok(http
        .post(format!("{app}/chats/1/messages"))
        .header("idempotency-key", "logged-key")
        .json(&json!({ "body": "hello" }))
        .send()
        .await
        .unwrap());
    for path in [
        "",
        "/chats",
        "/chats/1",
        "/chats/1/messages/1",
        "/chats/1/messages/search?q=hel",
    ] {
        ok(http.get(format!("{app}{path}")).send().await.unwrap());
    }
    let listed = http
        .get(format!("{base}/applications?after={token}"))
        .header("authorization", "Bearer logs-admin-key")
        .send()
        .await
        .unwrap();
    ok(listed);
    let rotated = common::post_json(&http, format!("{app}/token"), &json!({})).await;
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(
        http.get(format!("{app}/chats/1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.running.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let fingerprint = chatsys_core::idempotency::token_fingerprint(&token);
    assert!(
        logs.contains(&format!("/applications/~{fingerprint}/chats")),
        "requests are logged with the token's fingerprint in their path:\n{logs}"
    );
    for secret in [&token, &new_token] {
        assert!(
            !logs.contains(secret.as_str()),
            "a token was logged:\n{logs}"
        );
    }
}
