//! Probes, metrics, the OpenAPI document and request ids.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::target::{
    Reply, Target, application_path, chat_path, message_path, messages_path, unique,
};

pub async fn health_probes_answer_200(target: &Target) {
    target.get("/healthz").await.expect_status(200);
    target.get("/readyz").await.expect_status(200);
}

pub async fn metrics_count_requests(target: &Target) {
    target.get("/healthz").await.expect_status(200);
    let reply = target.get("/metrics").await;
    reply.expect_status(200);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "{}",
        reply.describe()
    );
    assert!(
        reply.text().contains("http_requests_total"),
        "{}",
        reply.describe()
    );
}

/// The operation of `path` (whatever its parameters are called) and `method` in the document.
fn operation<'a>(document: &'a Value, path: &str, method: &str) -> &'a Value {
    let shape = path_shape(path);
    let paths = document["paths"].as_object().expect("paths is an object");
    let (_, item) = paths
        .iter()
        .find(|(documented, _)| path_shape(documented) == shape)
        .unwrap_or_else(|| {
            let documented: Vec<&String> = paths.keys().collect();
            panic!("no path {path} in the OpenAPI document; it has {documented:?}")
        });
    let operation = &item[method];
    assert!(
        operation.is_object(),
        "no {method} {path} in the OpenAPI document: {item}"
    );
    operation
}

/// `/applications/{token}/chats/{chat_number}` → `/applications/{}/chats/{}`.
fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn documents_header(response: &Value, header: &str) -> bool {
    response["headers"]
        .as_object()
        .is_some_and(|headers| headers.keys().any(|name| name.eq_ignore_ascii_case(header)))
}

/// Every route of the contract, with the status codes that apply to it and the headers they carry.
pub async fn openapi_describes_every_route(target: &Target) {
    let reply = target.get("/openapi.json").await;
    reply.expect_status(200);
    let document = reply.json();
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi is {version:?}");
    let routes: [(&str, &str, &[u16]); 12] = [
        ("/applications", "post", &[201, 400, 413, 422]),
        ("/applications", "get", &[200, 400, 401]),
        ("/applications/{token}", "get", &[200, 404]),
        ("/applications/{token}", "put", &[200, 400, 404, 413, 422]),
        ("/applications/{token}/chats", "post", &[201, 400, 404, 503]),
        ("/applications/{token}/chats", "get", &[200, 400, 404]),
        ("/applications/{token}/chats/{number}", "get", &[200, 404]),
        (
            "/applications/{token}/chats/{number}/messages",
            "post",
            &[201, 400, 404, 413, 422, 503],
        ),
        (
            "/applications/{token}/chats/{number}/messages",
            "get",
            &[200, 400, 404],
        ),
        (
            "/applications/{token}/chats/{number}/messages/{number}",
            "get",
            &[200, 404],
        ),
        (
            "/applications/{token}/chats/{number}/messages/{number}",
            "put",
            &[200, 400, 404, 413, 422, 503],
        ),
        (
            "/applications/{token}/chats/{number}/messages/search",
            "get",
            &[200, 400, 404],
        ),
    ];
    let mut missing = Vec::new();
    for (path, method, statuses) in routes {
        let responses = &operation(&document, path, method)["responses"];
        let documented: BTreeSet<String> = responses
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for status in statuses {
            if !documented.contains(&status.to_string()) {
                missing.push(format!("{method} {path}: status {status}"));
            }
        }
        let header_rules = [(201, "Location"), (503, "Retry-After")];
        for (status, header) in header_rules {
            let response = &responses[status.to_string()];
            if response.is_object() && !documents_header(response, header) {
                missing.push(format!("{method} {path}: header {header} of {status}"));
            }
        }
        let is_list = method == "get" && !path.ends_with('}');
        if is_list && !documents_header(&responses["200"], "Link") {
            missing.push(format!("{method} {path}: header Link of 200"));
        }
    }
    assert!(
        missing.is_empty(),
        "the OpenAPI document misses:\n{}",
        missing.join("\n")
    );
}

fn request_id(reply: &Reply) -> String {
    let id = reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id: {}", reply.describe()));
    assert!(
        !id.trim().is_empty(),
        "an empty X-Request-Id: {}",
        reply.describe()
    );
    id.to_owned()
}

/// Successes and errors alike carry a request id, a fresh one per request.
pub async fn every_response_has_a_request_id(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let replies = [
        target
            .post("/applications", &json!({ "name": "request id" }))
            .await,
        target.get(&application_path(&token)).await,
        target.get(&chat_path(&token, chat)).await,
        target
            .post(&messages_path(&token, chat), &json!({ "body": "id" }))
            .await,
        target
            .put(&message_path(&token, chat, 1), &json!({ "body": "id" }))
            .await,
        target.get(&message_path(&token, chat, 99)).await,
        target.get("/nope").await,
        target
            .send_raw(Method::POST, "/applications", None, "{")
            .await,
        target
            .send_raw(Method::DELETE, "/applications", None, "")
            .await,
        target.get("/healthz").await,
        target.get("/metrics").await,
        target.get("/openapi.json").await,
    ];
    let ids: BTreeSet<String> = replies.iter().map(request_id).collect();
    assert_eq!(ids.len(), replies.len(), "request ids repeat: {ids:?}");
}

pub async fn a_client_request_id_is_echoed(target: &Target) {
    let id = unique("conformance-request").replace(' ', "-");
    for path in ["/healthz", "/applications/unknown-token", "/nope"] {
        let request = target
            .request(Method::GET, path)
            .header("x-request-id", &id);
        let reply = target.send(request).await;
        assert_eq!(
            reply.header("x-request-id"),
            Some(id.as_str()),
            "{}",
            reply.describe()
        );
    }
    let request = target
        .request(Method::POST, "/applications")
        .header("x-request-id", &id)
        .body(r#"{"name":"echo"}"#);
    let reply = target.send(request).await;
    reply.expect_status(201);
    assert_eq!(
        reply.header("x-request-id"),
        Some(id.as_str()),
        "{}",
        reply.describe()
    );
}
