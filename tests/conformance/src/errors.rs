//! Client mistakes and hostile input: the right 4xx with the error body, never a 5xx.

use reqwest::Method;
use serde_json::json;

use crate::target::{
    Reply, Target, application_path, chat_path, chats_path, message_path, messages_path,
};

/// The default `CHATSYS_MAX_REQUEST_BYTES`.
const MAX_REQUEST_BYTES: usize = 1_048_576;

/// An application with one chat holding one message: every route of the contract has something to hit.
struct Fixture {
    token: String,
    chat: u64,
}

impl Fixture {
    async fn new(target: &Target) -> Self {
        let token = target.create_token().await;
        let chat = target.create_chat(&token).await;
        target.create_message(&token, chat, "fixture").await;
        Self { token, chat }
    }

    /// The routes that take a JSON body, with the method to send it by.
    fn json_routes(&self) -> Vec<(Method, String)> {
        vec![
            (Method::POST, "/applications".to_owned()),
            (Method::PUT, application_path(&self.token)),
            (Method::POST, messages_path(&self.token, self.chat)),
            (Method::PUT, message_path(&self.token, self.chat, 1)),
        ]
    }

    /// Every list, with a query that is valid on its own.
    fn lists(&self) -> Vec<String> {
        vec![
            chats_path(&self.token),
            messages_path(&self.token, self.chat),
            format!("{}/search?q=fixture", messages_path(&self.token, self.chat)),
        ]
    }
}

fn with_query(path: &str, parameter: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{parameter}")
}

fn assert_not_server_error(reply: &Reply) {
    assert!(
        !reply.status.is_server_error(),
        "a 5xx for a client's request: {}",
        reply.describe()
    );
    if !reply.status.is_success() {
        reply.expect_client_error();
    }
}

pub async fn malformed_json_is_400(target: &Target) {
    let fixture = Fixture::new(target).await;
    let malformed = [
        "{",
        "{\"name\":",
        "{name: \"x\", body: \"x\"}",
        "{\"name\":\"x\",\"body\":\"x\"} trailing",
        "{\"name\":\"x\",\"body\":\"x\",}",
        "{'name':'x'}",
        "nul",
    ];
    // An empty request is no JSON either, except for chat creation, which needs no body.
    for (method, path) in fixture.json_routes() {
        target
            .send_raw(method, &path, Some("application/json"), "")
            .await
            .expect_error(400, "malformed_json");
    }
    let mut routes = fixture.json_routes();
    routes.push((Method::POST, chats_path(&fixture.token)));
    for (method, path) in &routes {
        for body in malformed {
            for content_type in [Some("application/json"), Some("text/plain"), None] {
                let reply = target
                    .send_raw(method.clone(), path, content_type, body)
                    .await;
                reply.expect_error(400, "malformed_json");
            }
        }
    }
}

/// Bytes that are not UTF-8 are not JSON.
pub async fn invalid_utf8_is_400(target: &Target) {
    let fixture = Fixture::new(target).await;
    let invalid: [&[u8]; 4] = [
        b"{\"name\":\"\xff\xfe\",\"body\":\"\xff\xfe\"}",
        b"\xff{\"name\":\"x\",\"body\":\"x\"}",
        b"{\"name\":\"\xc3\x28\",\"body\":\"\xc3\x28\"}",
        b"{\"name\":\"\xed\xa0\x80\",\"body\":\"\xed\xa0\x80\"}",
    ];
    for (method, path) in fixture.json_routes() {
        for body in invalid {
            let reply = target
                .send_raw(method.clone(), &path, Some("application/json"), body)
                .await;
            reply.expect_error(400, "malformed_json");
        }
        let lone_surrogate = "{\"name\":\"\\ud800\",\"body\":\"\\ud800\"}";
        let reply = target
            .send_raw(
                method.clone(),
                &path,
                Some("application/json"),
                lone_surrogate,
            )
            .await;
        reply.expect_client_error();
    }
}

/// The body is JSON whatever the Content-Type says, or when there is none.
pub async fn content_type_is_not_required(target: &Target) {
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let reply = target
            .send_raw(
                Method::POST,
                "/applications",
                content_type,
                r#"{"name":"typed loosely"}"#,
            )
            .await;
        reply.expect_status(201);
        let token = reply.json()["token"].as_str().expect("a token").to_owned();
        let chat = target.create_chat(&token).await;
        let message = target
            .send_raw(
                Method::POST,
                &messages_path(&token, chat),
                content_type,
                r#"{"body":"loose"}"#,
            )
            .await;
        message.expect_status(201);
        assert_eq!(message.json()["body"], "loose", "{}", message.describe());
    }
}

/// A request body over 1 MiB is 413; one of exactly 1 MiB is judged on its content.
pub async fn oversized_requests_are_413(target: &Target) {
    let fixture = Fixture::new(target).await;
    let envelope = r#"{"name":"","body":""}"#.len();
    let at_limit = MAX_REQUEST_BYTES - envelope;
    for (method, path) in fixture.json_routes() {
        let exact = format!(r#"{{"name":"{}","body":""}}"#, "a".repeat(at_limit));
        assert_eq!(exact.len(), MAX_REQUEST_BYTES);
        let reply = target
            .send_raw(method.clone(), &path, Some("application/json"), exact)
            .await;
        reply.expect_error(422, "invalid_field");
        let over = format!(r#"{{"name":"{}","body":""}}"#, "a".repeat(at_limit + 1));
        let reply = target
            .send_unread(method.clone(), &path, over.into_bytes())
            .await;
        reply.expect_error(413, "payload_too_large");
        let far_over = vec![b'a'; 4 * MAX_REQUEST_BYTES];
        let reply = target.send_unread(method.clone(), &path, far_over).await;
        reply.expect_error(413, "payload_too_large");
    }
}

pub async fn unknown_routes_are_404(target: &Target) {
    let fixture = Fixture::new(target).await;
    let message = message_path(&fixture.token, fixture.chat, 1);
    for path in [
        "/nope".to_owned(),
        "/application".to_owned(),
        "/applications/x/y/z/w/v/u/t/s".to_owned(),
        format!("{}/nope", application_path(&fixture.token)),
        format!("{}/nope", chat_path(&fixture.token, fixture.chat)),
        format!("{message}/extra"),
        format!(
            "{}/search/more?q=x",
            messages_path(&fixture.token, fixture.chat)
        ),
    ] {
        target.get(&path).await.expect_error(404, "not_found");
        target
            .post(&path, &json!({ "name": "x", "body": "x" }))
            .await
            .expect_error(404, "not_found");
    }
}

pub async fn wrong_methods_are_405(target: &Target) {
    let fixture = Fixture::new(target).await;
    let token = &fixture.token;
    let chat = fixture.chat;
    let cases = [
        (Method::DELETE, "/applications".to_owned()),
        (Method::PUT, "/applications".to_owned()),
        (Method::PATCH, application_path(token)),
        (Method::POST, application_path(token)),
        (Method::PUT, chats_path(token)),
        (Method::DELETE, chats_path(token)),
        (Method::PUT, chat_path(token, chat)),
        (Method::POST, chat_path(token, chat)),
        (Method::PUT, messages_path(token, chat)),
        (Method::DELETE, messages_path(token, chat)),
        (Method::POST, message_path(token, chat, 1)),
        (Method::PATCH, message_path(token, chat, 1)),
        (
            Method::POST,
            format!("{}/search?q=x", messages_path(token, chat)),
        ),
        (Method::DELETE, "/healthz".to_owned()),
        (Method::POST, "/openapi.json".to_owned()),
    ];
    for (method, path) in cases {
        let request = target
            .request(method, &path)
            .header("content-type", "application/json")
            .body(r#"{"name":"x","body":"x"}"#);
        target
            .send(request)
            .await
            .expect_error(405, "method_not_allowed");
    }
}

/// Tokens that cannot exist, however strange, are unknown tokens.
pub async fn hostile_tokens_are_404(target: &Target) {
    let long_token = "T".repeat(4096);
    let hostile = [
        "..%2f..%2fetc%2fpasswd",
        "..%2F..%2F..%2Fetc%2Fshadow",
        "%2e%2e%2f%2e%2e%2fetc",
        "'%20OR%20'1'%3D'1",
        "1%3BDROP%20TABLE%20applications",
        "%00",
        "abc%00def",
        "%FF%FE",
        "%F0%9F%98%80",
        "%25",
        "*",
        long_token.as_str(),
    ];
    for token in hostile {
        let path = format!("/applications/{token}");
        target.get(&path).await.expect_error(404, "not_found");
        target
            .put(&path, &json!({ "name": "x" }))
            .await
            .expect_error(404, "not_found");
        target
            .get(&format!("{path}/chats"))
            .await
            .expect_error(404, "not_found");
        target
            .send_raw(Method::POST, &format!("{path}/chats"), None, "")
            .await
            .expect_error(404, "not_found");
        target
            .get(&format!("{path}/chats/1/messages/1"))
            .await
            .expect_error(404, "not_found");
    }
}

/// `limit` is 1 to 1000 and `after` a number; anything else is 400 `invalid_query`.
pub async fn invalid_list_queries_are_400(target: &Target) {
    let fixture = Fixture::new(target).await;
    let bad_limits = [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=99999999999999999999",
    ];
    let bad_afters = ["after=abc", "after=", "after=1.5", "after=1e3"];
    for list in fixture.lists() {
        for parameter in bad_limits.iter().chain(&bad_afters) {
            target
                .get(&with_query(&list, parameter))
                .await
                .expect_error(400, "invalid_query");
        }
        target
            .get(&with_query(&list, "limit=1000"))
            .await
            .expect_status(200);
        target
            .get(&with_query(&list, "limit=1"))
            .await
            .expect_status(200);
    }
    for parameter in bad_limits {
        target
            .get_as_admin(&format!("/applications?{parameter}"))
            .await
            .expect_error(400, "invalid_query");
    }
    target
        .get_as_admin("/applications?limit=1000")
        .await
        .expect_status(200);
}

/// Numbers out of range, strange parameters and repeated parameters are a client's problem at most.
pub async fn hostile_queries_are_never_5xx(target: &Target) {
    let fixture = Fixture::new(target).await;
    let hostile = [
        "after=-1",
        "after=0",
        "after=9223372036854775807",
        "after=9223372036854775808",
        "after=99999999999999999999999999",
        "limit=1&limit=2",
        "after=1&after=2",
        "limit=%00",
        "limit=1%27%20OR%201%3D1",
        "q=%00",
        "q=%27%20OR%201%3D1%20--",
        "key=x&q=y",
        "q=%FF%FE",
        "unknown=1",
    ];
    for list in fixture.lists() {
        for parameter in hostile {
            assert_not_server_error(&target.get(&with_query(&list, parameter)).await);
        }
    }
    for parameter in hostile {
        assert_not_server_error(
            &target
                .get_as_admin(&format!("/applications?{parameter}"))
                .await,
        );
    }
    let long_query = format!("q={}", "a".repeat(4000));
    assert_not_server_error(
        &target
            .get(&with_query(
                &format!("{}/search", messages_path(&fixture.token, fixture.chat)),
                &long_query,
            ))
            .await,
    );
}

/// `limit` and `after` are written one way: no leading zero, no sign.
pub async fn non_canonical_list_queries_are_400(target: &Target) {
    let fixture = Fixture::new(target).await;
    let non_canonical = [
        "limit=01",
        "limit=+1",
        "limit=%2B1",
        "limit=0100",
        "after=00",
        "after=01",
        "after=+1",
        "after=%2B0",
    ];
    for list in fixture.lists() {
        for parameter in non_canonical {
            target
                .get(&with_query(&list, parameter))
                .await
                .expect_error(400, "invalid_query");
        }
        target
            .get(&with_query(&list, "limit=10&after=0"))
            .await
            .expect_status(200);
    }
    for parameter in ["limit=01", "limit=+1"] {
        target
            .get_as_admin(&format!("/applications?{parameter}"))
            .await
            .expect_error(400, "invalid_query");
    }
}

/// A name needs a visible character: zero-width, control and other invisible characters are blank.
pub async fn invisible_names_are_422(target: &Target) {
    let token = target.create_token().await;
    for name in [
        "\u{200B}",
        "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
        "\u{0000}",
        "\u{0001}\u{007F}\u{0085}",
        "\u{00AD}\u{034F}",
        " \u{200B}\t\u{3000}",
    ] {
        target
            .post("/applications", &json!({ "name": name }))
            .await
            .expect_error(422, "invalid_field");
        target
            .put(&application_path(&token), &json!({ "name": name }))
            .await
            .expect_error(422, "invalid_field");
    }
    target
        .post("/applications", &json!({ "name": "\u{200B}visible" }))
        .await
        .expect_status(201);
}

/// A client's request id is echoed when it is 1 to 128 bytes of visible ASCII; any other is replaced
/// by a fresh one, never echoed.
pub async fn unusable_request_ids_are_replaced(target: &Target) {
    let at_limit = "r".repeat(128);
    let request = target
        .request(Method::GET, "/healthz")
        .header("x-request-id", &at_limit);
    let reply = target.send(request).await;
    assert_eq!(
        reply.header("x-request-id"),
        Some(at_limit.as_str()),
        "{}",
        reply.describe()
    );
    let over_limit = "r".repeat(129);
    let huge = "r".repeat(64 * 1024);
    let unusable: [&[u8]; 5] = [
        over_limit.as_bytes(),
        huge.as_bytes(),
        b"with space",
        b"caf\xc3\xa9",
        b"tab\there",
    ];
    for id in unusable {
        for path in ["/healthz", "/nope"] {
            let request = target.request(Method::GET, path).header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(id).expect("a header value"),
            );
            let reply = target.send(request).await;
            let echoed = reply.headers.get("x-request-id").map(|v| v.as_bytes());
            let fresh = echoed.unwrap_or_else(|| panic!("no request id: {}", reply.describe()));
            assert_ne!(fresh, id, "echoed: {}", reply.describe());
            assert!(
                (1..=128).contains(&fresh.len()) && fresh.iter().all(u8::is_ascii_graphic),
                "{}",
                reply.describe()
            );
        }
    }
    let request = target
        .request(Method::GET, "/healthz")
        .header("x-request-id", "first")
        .header("x-request-id", "second");
    let reply = target.send(request).await;
    let ids: Vec<_> = reply.headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{}", reply.describe());
    assert!(
        ids[0] != "first" && ids[0] != "second",
        "{}",
        reply.describe()
    );
}
