//! Secure by default and ready for browsers: cross-origin access (CORS) for the allowed origins only,
//! idempotency keys on every create, token rotation, and the request-head limits answered in the API's
//! error format.

use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::events::{EventStream, events_path};
use crate::target::{
    CATCH_UP, Reply, Target, application_path, chats_path, eventually, messages_path, number_of,
    token_of, unique,
};

/// Longer than the API's trust in a token it resolved (2 s), with a margin.
const TOKEN_CHANGE_SEEN_WITHIN: Duration = Duration::from_secs(4);
/// A stream of a replaced token ends within two token checks, with a margin.
const STREAM_ENDS_WITHIN: Duration = Duration::from_secs(8);

/// An origin no system under test allows.
const OTHER_ORIGIN: &str = "http://elsewhere.chatsys.test";

impl Target {
    /// A create with an `Idempotency-Key`.
    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> Reply {
        let request = self
            .request(Method::POST, path)
            .header("idempotency-key", key)
            .json(body);
        self.send(request).await
    }
}

/// A key no other run uses.
fn fresh_key(label: &str) -> String {
    unique(label).replace(' ', "-")
}

fn header_list(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .header(name)
        .unwrap_or_default()
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn assert_lists(reply: &Reply, header: &str, expected: &[&str]) {
    let listed = header_list(reply, header);
    for item in expected {
        assert!(
            listed.iter().any(|l| l == item),
            "{header} lacks {item}: {}",
            reply.describe()
        );
    }
}

fn assert_no_cors_headers(reply: &Reply) {
    let cors: Vec<_> = reply
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .collect();
    assert!(
        cors.is_empty(),
        "CORS headers {cors:?}: {}",
        reply.describe()
    );
}

/// A page of an allowed origin may ask first: the preflight answers 204 with the methods and headers
/// the API takes.
pub async fn preflights_of_allowed_origins_answer_204(target: &Target) {
    let origin = target.allowed_origin();
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let request = target
        .request(Method::OPTIONS, &messages_path(&token, chat))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,idempotency-key,x-request-id",
        );
    let reply = target.send(request).await;
    reply.expect_status(204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(origin),
        "{}",
        reply.describe()
    );
    assert_lists(
        &reply,
        "access-control-allow-methods",
        &["get", "post", "put"],
    );
    assert_lists(
        &reply,
        "access-control-allow-headers",
        &[
            "content-type",
            "authorization",
            "idempotency-key",
            "if-match",
            "last-event-id",
            "x-request-id",
        ],
    );
    assert!(reply.header("access-control-max-age").is_some());
}

/// An allowed origin's page reads answers, and the headers it needs besides the body.
pub async fn allowed_origins_read_answers_and_their_headers(target: &Target) {
    let origin = target.allowed_origin();
    let token = target.create_token().await;
    for _ in 0..2 {
        target.create_chat(&token).await;
    }
    let request = target
        .request(Method::GET, &chats_path(&token))
        .header("origin", origin);
    let reply = target.send(request).await;
    reply.expect_status(200);
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
    assert_lists(
        &reply,
        "access-control-expose-headers",
        &[
            "link",
            "etag",
            "location",
            "retry-after",
            "x-request-id",
            "idempotent-replayed",
        ],
    );
    assert_lists(&reply, "vary", &["origin"]);
    // Errors too: a page must be able to read why it was refused.
    let request = target
        .request(Method::GET, &application_path("no-such-token"))
        .header("origin", origin);
    let reply = target.send(request).await;
    reply.expect_error(404, "not_found");
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
}

/// A page of any other origin gets no CORS headers, and its requests do nothing: a "simple" POST,
/// which browsers send without asking first, creates no message.
pub async fn other_origins_are_refused_before_anything_is_done(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let request = target
        .request(Method::POST, &messages_path(&token, chat))
        .header("origin", OTHER_ORIGIN)
        .header("content-type", "text/plain")
        .body(json!({ "body": "from another origin" }).to_string());
    let reply = target.send(request).await;
    reply.expect_error(403, "origin_not_allowed");
    assert_no_cors_headers(&reply);
    let preflight = target
        .request(Method::OPTIONS, &messages_path(&token, chat))
        .header("origin", OTHER_ORIGIN)
        .header("access-control-request-method", "POST");
    let reply = target.send(preflight).await;
    assert!(reply.status.is_client_error(), "{}", reply.describe());
    assert_no_cors_headers(&reply);
    // The refused POST took no number: the next message is the chat's first.
    assert_eq!(target.create_message(&token, chat, "first").await, 1);
}

/// An allowed origin's `EventSource` gets the stream with CORS headers.
pub async fn event_streams_open_cross_origin(target: &Target) {
    let origin = target.allowed_origin();
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let mut stream =
        EventStream::open_with(target, &events_path(&token, chat), &[("origin", origin)]).await;
    assert_eq!(stream.header("access-control-allow-origin"), Some(origin));
    let number = target
        .create_message(&token, chat, "live, cross-origin")
        .await;
    let events = stream.events(1).await;
    assert_eq!(events[0].number(), number);
}

/// A retried create gets the first answer and creates nothing more: an application, a chat, a message.
pub async fn a_retried_create_gets_the_first_answer(target: &Target) {
    let name = unique("idempotent app");
    let key = fresh_key("key");
    let first = target
        .post_with_key("/applications", &key, &json!({ "name": name }))
        .await;
    first.expect_status(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let retry = target
        .post_with_key("/applications", &key, &json!({ "name": name }))
        .await;
    retry.expect_status(201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json(), first.json(), "{}", retry.describe());
    assert_eq!(retry.header("location"), first.header("location"));
    let token = token_of(&first.json());

    let chat_key = fresh_key("chat-key");
    let chats: Vec<u64> = join_all((0..2).map(|_| async {
        let reply = target
            .post_with_key(&chats_path(&token), &chat_key, &json!({}))
            .await;
        reply.expect_status(201);
        number_of(&reply.json())
    }))
    .await;
    assert_eq!(chats, [1, 1]);

    let message_key = fresh_key("message-key");
    let body = json!({ "body": "said once" });
    let mut numbers = Vec::new();
    for _ in 0..3 {
        let reply = target
            .post_with_key(&messages_path(&token, 1), &message_key, &body)
            .await;
        reply.expect_status(201);
        numbers.push(number_of(&reply.json()));
    }
    assert_eq!(numbers, [1, 1, 1]);
    // Once stored, there is one chat with one message, and the next create is numbered 2.
    eventually(CATCH_UP, || async {
        let chats = target.get(&chats_path(&token)).await.items();
        let messages = target.get(&messages_path(&token, 1)).await.items();
        match (chats.len(), messages.len(), chats.first()) {
            (1, 1, Some(chat)) if chat["messages_count"] == 1 => Ok(()),
            _ => Err(format!("chats {chats:?}, messages {messages:?}")),
        }
    })
    .await;
    assert_eq!(target.create_message(&token, 1, "next").await, 2);
}

/// Retries that race each other create once: every 201 carries the same number.
pub async fn concurrent_retries_create_once(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let key = fresh_key("racing-key");
    let (path, body) = (messages_path(&token, chat), json!({ "body": "raced" }));
    let replies = join_all((0..8).map(|_| target.post_with_key(&path, &key, &body))).await;
    let mut numbers = Vec::new();
    for reply in &replies {
        match reply.status.as_u16() {
            201 => numbers.push(number_of(&reply.json())),
            409 => {
                reply.expect_error(409, "idempotency_key_in_flight");
                assert!(
                    reply.header("retry-after").is_some(),
                    "{}",
                    reply.describe()
                );
            }
            _ => panic!("a racing retry: {}", reply.describe()),
        }
    }
    assert!(!numbers.is_empty(), "no attempt succeeded");
    assert!(
        numbers.iter().all(|n| *n == numbers[0]),
        "numbers {numbers:?}"
    );
    assert_eq!(
        target.create_message(&token, chat, "after").await,
        numbers[0] + 1
    );
}

/// A key used again for another request (another body, chat or operation) is refused, and so is a
/// malformed key.
pub async fn a_key_reused_for_another_request_is_422(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let other_chat = target.create_chat(&token).await;
    let key = fresh_key("reused-key");
    target
        .post_with_key(
            &messages_path(&token, chat),
            &key,
            &json!({ "body": "one" }),
        )
        .await
        .expect_status(201);
    for (path, body) in [
        (messages_path(&token, chat), json!({ "body": "another" })),
        (messages_path(&token, other_chat), json!({ "body": "one" })),
        (chats_path(&token), json!({})),
    ] {
        target
            .post_with_key(&path, &key, &body)
            .await
            .expect_error(422, "idempotency_key_reused");
    }
    for malformed in ["k".repeat(256), "with space".to_owned()] {
        target
            .post_with_key(&chats_path(&token), &malformed, &json!({}))
            .await
            .expect_error(400, "invalid_header");
    }
    let request = target
        .request(Method::POST, &chats_path(&token))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b");
    target
        .send(request)
        .await
        .expect_error(400, "invalid_header");
}

/// Keys are the application's: the same key in two applications creates in each.
pub async fn keys_are_scoped_per_application(target: &Target) {
    let key = fresh_key("shared-key");
    for _ in 0..2 {
        let token = target.create_token().await;
        let reply = target
            .post_with_key(&chats_path(&token), &key, &json!({}))
            .await;
        reply.expect_status(201);
        assert_eq!(reply.header("idempotent-replayed"), None);
    }
}

/// A replaced token names nothing; the new one names the same application with its chats.
pub async fn a_replaced_token_names_nothing(target: &Target) {
    let application = target.create_application().await;
    let old = token_of(&application);
    let chat = target.create_chat(&old).await;
    let reply = target.rotate_token(&old).await;
    reply.expect_status(200);
    let rotated = reply.json();
    let new = token_of(&rotated);
    assert_ne!(new, old);
    assert_eq!(rotated["name"], application["name"]);
    assert_eq!(rotated["created_at"], application["created_at"]);
    eventually(TOKEN_CHANGE_SEEN_WITHIN, || async {
        let status = target.get(&application_path(&old)).await.status;
        if status == 404 {
            Ok(())
        } else {
            Err(format!("the old token answers {status}"))
        }
    })
    .await;
    target
        .get(&chats_path(&old))
        .await
        .expect_error(404, "not_found");
    target
        .rotate_token(&old)
        .await
        .expect_error(404, "not_found");
    let read = target.get(&application_path(&new)).await;
    read.expect_status(200);
    assert_eq!(read.json()["token"], new.as_str());
    assert_eq!(target.create_chat(&new).await, chat + 1);
}

/// A stream opened with a token that is then replaced ends; reopening it with the old token is a 404.
pub async fn streams_end_when_their_token_is_replaced(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let mut stream = EventStream::open(target, &events_path(&token, chat), None).await;
    target.rotate_token(&token).await.expect_status(200);
    stream.expect_end(STREAM_ENDS_WITHIN).await;
    target
        .get(&events_path(&token, chat))
        .await
        .expect_error(404, "not_found");
}

/// A request target over the limit is a 414, too many headers a 431, each in the error format.
pub async fn oversized_request_heads_get_the_error_body(target: &Target) {
    let reply = target.get(&application_path(&"t".repeat(40_000))).await;
    reply.expect_error(414, "uri_too_long");
    assert!(
        reply.header("x-request-id").is_some(),
        "{}",
        reply.describe()
    );
    let mut request = target.request(Method::GET, "/healthz");
    for n in 0..150 {
        request = request.header(format!("x-filler-{n}"), "filler");
    }
    let reply = target.send(request).await;
    reply.expect_error(431, "headers_too_large");
    assert!(
        reply.header("x-request-id").is_some(),
        "{}",
        reply.describe()
    );
    let request = target
        .request(Method::GET, "/healthz")
        .header("x-large", "v".repeat(40_000));
    target
        .send(request)
        .await
        .expect_error(431, "headers_too_large");
}
