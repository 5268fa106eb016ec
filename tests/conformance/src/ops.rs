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
    let reply = match &target.metrics_url {
        Some(url) => target.send(target.http.get(url)).await,
        None => target.get("/metrics").await,
    };
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
    let routes: [(&str, &str, &[u16]); 17] = [
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
        (
            "/applications/{token}/messages/search",
            "get",
            &[200, 400, 404],
        ),
        ("/healthz", "get", &[200]),
        ("/readyz", "get", &[200, 503]),
        ("/metrics", "get", &[200]),
        ("/openapi.json", "get", &[200]),
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
        let on_data = path.starts_with("/applications");
        let header_rules = [(201, "Location"), (503, "Retry-After")];
        for (status, header) in header_rules.into_iter().filter(|_| on_data) {
            let response = &responses[status.to_string()];
            if response.is_object() && !documents_header(response, header) {
                missing.push(format!("{method} {path}: header {header} of {status}"));
            }
        }
        let is_list = on_data && method == "get" && !path.ends_with('}');
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

/// The methods of each path, as the document lists them.
fn documented_methods(document: &Value) -> Vec<(String, BTreeSet<String>)> {
    let methods = [
        "get", "put", "post", "delete", "patch", "options", "head", "trace",
    ];
    document["paths"]
        .as_object()
        .expect("paths is an object")
        .iter()
        .map(|(path, item)| {
            let listed = methods
                .iter()
                .filter(|method| item[**method].is_object())
                .map(|method| method.to_ascii_uppercase())
                .collect();
            (path.clone(), listed)
        })
        .collect()
}

/// Served and documented are the same routes. Every path of the document, its parameters filled with
/// resources that exist, is asked with a method no route takes: the 405's `Allow` names the methods the
/// server serves there, which must be exactly the documented ones. And the document has no path the
/// contract does not know.
pub async fn the_document_is_the_routes_served(target: &Target) {
    let document = target.get("/openapi.json").await.json();
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let message = target.create_message(&token, chat, "routes").await;
    let mut differences = Vec::new();
    for (path, methods) in documented_methods(&document) {
        let concrete = path
            .replace("{token}", &token)
            .replace("{number}", &chat.to_string())
            .replace("{message}", &message.to_string());
        assert!(
            !concrete.contains('{'),
            "{path}: a path parameter the contract does not know"
        );
        let reply = target.send_raw(Method::TRACE, &concrete, None, "").await;
        reply.expect_error(405, "method_not_allowed");
        let allowed: BTreeSet<String> = reply
            .header("allow")
            .unwrap_or_else(|| panic!("a 405 without Allow: {}", reply.describe()))
            .split(',')
            .map(|method| method.trim().to_ascii_uppercase())
            // HEAD is answered wherever GET is, by HTTP's rule rather than by a route of ours.
            .filter(|method| !method.is_empty() && method != "HEAD")
            .collect();
        if allowed != methods {
            differences.push(format!(
                "{path}: served {allowed:?}, documented {methods:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "served and documented routes differ:\n{}",
        differences.join("\n")
    );
    let paths: BTreeSet<&str> = document["paths"]
        .as_object()
        .expect("paths is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let contract: BTreeSet<&str> = [
        "/applications",
        "/applications/{token}",
        "/applications/{token}/token",
        "/applications/{token}/chats",
        "/applications/{token}/chats/{number}",
        "/applications/{token}/chats/{number}/events",
        "/applications/{token}/chats/{number}/messages",
        "/applications/{token}/chats/{number}/messages/search",
        "/applications/{token}/chats/{number}/messages/{message}",
        "/applications/{token}/messages/search",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ]
    .into();
    assert_eq!(
        paths, contract,
        "the document's paths are not the contract's"
    );
}

/// Every `$ref` of a document, with where it was found.
fn references(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    if let Some(reference) = inner.as_str() {
                        found.push((at.to_owned(), reference.to_owned()));
                    }
                } else {
                    references(inner, &format!("{at}/{key}"), found);
                }
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                references(inner, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// What client generators trip on, checked here so that `cargo nextest` fails on it before any tool
/// runs (scripts/check-openapi.sh then reads the document with the tools themselves): operation ids
/// unique, references that resolve, path parameters that match the template, every operation tagged,
/// summed up and described, every error answer an `ErrorBody` with `X-Request-Id`, and error codes the
/// server really sends.
pub async fn the_document_holds_together(target: &Target) {
    let document = target.get("/openapi.json").await.json();
    let mut problems = Vec::new();
    let tags: BTreeSet<&str> = document["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tag| tag["name"].as_str())
        .collect();
    let mut operation_ids = BTreeSet::new();
    for (path, methods) in documented_methods(&document) {
        let template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in methods {
            let method = method.to_ascii_lowercase();
            let operation = &document["paths"][&path][&method];
            let at = format!("{method} {path}");
            match operation["operationId"].as_str() {
                Some(id) if operation_ids.insert(id.to_owned()) => {}
                Some(id) => problems.push(format!("{at}: operationId {id} is used twice")),
                None => problems.push(format!("{at}: no operationId")),
            }
            for field in ["summary", "description"] {
                if operation[field].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{at}: no {field}"));
                }
            }
            let operation_tags: Vec<&str> = operation["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if operation_tags.is_empty() || !operation_tags.iter().all(|t| tags.contains(t)) {
                problems.push(format!("{at}: tags {operation_tags:?} not among {tags:?}"));
            }
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|parameter| parameter["in"] == "path")
                .filter_map(|parameter| parameter["name"].as_str())
                .collect();
            if declared != template {
                problems.push(format!(
                    "{at}: path parameters {declared:?}, template {template:?}"
                ));
            }
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                if !documents_header(response, "X-Request-Id") {
                    problems.push(format!("{at} {status}: no X-Request-Id header"));
                }
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                // The probes answer their own bodies (a readiness report with its 503).
                let is_error = status.starts_with('4') || status.starts_with('5');
                if is_error
                    && path.starts_with("/applications")
                    && schema != "#/components/schemas/ErrorBody"
                {
                    problems.push(format!("{at} {status}: the body is not an ErrorBody"));
                }
            }
        }
    }
    let mut found = Vec::new();
    references(&document, "#", &mut found);
    for (at, reference) in found {
        let pointer = reference.strip_prefix('#').unwrap_or("(not local)");
        if document.pointer(pointer).is_none() {
            problems.push(format!("{at}: $ref {reference} resolves to nothing"));
        }
    }
    let codes: BTreeSet<&str> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (code, provoked) in [
        ("not_found", target.get("/nope").await),
        (
            "method_not_allowed",
            target
                .send_raw(Method::DELETE, "/applications", None, "")
                .await,
        ),
        (
            "malformed_json",
            target
                .send_raw(Method::POST, "/applications", None, "{")
                .await,
        ),
        (
            "invalid_query",
            target.get_as_admin("/applications?limit=0").await,
        ),
        (
            "invalid_field",
            target.post("/applications", &json!({"name": ""})).await,
        ),
    ] {
        let sent = provoked.json()["error"]["code"].clone();
        assert_eq!(sent, json!(code), "{}", provoked.describe());
        if !codes.contains(code) {
            problems.push(format!(
                "the server sends code {code}, not in ErrorCode {codes:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the OpenAPI document does not hold together:\n{}",
        problems.join("\n")
    );
}
