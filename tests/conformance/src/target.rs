//! The system under test seen from outside: a base URL, an optional admin key and an HTTP client,
//! with the few request helpers every case uses.

use std::future::Future;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the worker-follows guarantees (lists, counts, search) are given before a case fails.
pub const CATCH_UP: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Target {
    pub base_url: String,
    pub admin_key: Option<String>,
    /// Where `/metrics` is served when not on the API's port (a deployed API's metrics port).
    pub metrics_url: Option<String>,
    /// A web origin the system allows (CORS).
    pub allowed_origin: Option<String>,
    pub http: reqwest::Client,
}

/// Anything a test binary's setup returns that gives access to the system under test.
pub trait HoldsTarget {
    fn target(&self) -> &Target;
}

impl HoldsTarget for Target {
    fn target(&self) -> &Target {
        self
    }
}

/// One HTTP exchange, kept whole so that a failed assertion can say what was asked and answered.
pub struct Reply {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Target {
    pub fn new(base_url: impl Into<String>, admin_key: Option<String>) -> Self {
        static CRYPTO_PROVIDER: Once = Once::new();
        // The workspace builds reqwest without a bundled crypto provider; another crate in the same
        // process may already have installed one, which is just as good.
        CRYPTO_PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build the HTTP client");
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            admin_key,
            metrics_url: None,
            allowed_origin: None,
            http,
        }
    }

    pub fn with_allowed_origin(self, origin: &str) -> Self {
        Self {
            allowed_origin: Some(origin.to_owned()),
            ..self
        }
    }

    /// The web origin the system allows: the cases of cross-origin access need one.
    pub fn allowed_origin(&self) -> &str {
        self.allowed_origin.as_deref().unwrap_or_else(|| {
            panic!(
                "no allowed web origin is known: set CHATSYS_ALLOWED_ORIGIN to one of the system's \
                 CORS origins (spec.api.cors.allowedOrigins)"
            )
        })
    }

    /// The deployed system named by `CHATSYS_BASE_URL` (and `CHATSYS_ADMIN_KEY` when it has one;
    /// `CHATSYS_METRICS_URL` when its metrics are on a port of their own, `CHATSYS_ALLOWED_ORIGIN`
    /// for one of the web origins it allows).
    pub fn from_env() -> Self {
        let base_url = std::env::var("CHATSYS_BASE_URL").unwrap_or_else(|_| {
            panic!(
                "CHATSYS_BASE_URL is not set: point it at a running chatsys API, e.g. \
                 CHATSYS_BASE_URL=http://127.0.0.1:8080 (and CHATSYS_ADMIN_KEY when the system has one)"
            )
        });
        let admin_key = std::env::var("CHATSYS_ADMIN_KEY")
            .ok()
            .filter(|key| !key.is_empty());
        Self {
            metrics_url: std::env::var("CHATSYS_METRICS_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            allowed_origin: std::env::var("CHATSYS_ALLOWED_ORIGIN")
                .ok()
                .filter(|origin| !origin.is_empty()),
            ..Self::new(base_url, admin_key)
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base_url, path))
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let request = request.build().expect("build the request");
        let method = request.method().clone();
        let path = match request.url().query() {
            Some(query) => format!("{}?{query}", request.url().path()),
            None => request.url().path().to_owned(),
        };
        let response = self
            .http
            .execute(request)
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: no response: {error:?}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: reading the body failed: {error:?}"))
            .to_vec();
        Reply {
            method,
            path,
            status,
            headers,
            bytes,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    /// A GET carrying the admin key when the target has one.
    pub async fn get_as_admin(&self, path: &str) -> Reply {
        let request = self.request(Method::GET, path);
        let request = match &self.admin_key {
            Some(key) => request.header(AUTHORIZATION, format!("Bearer {key}")),
            None => request,
        };
        self.send(request).await
    }

    /// A DELETE carrying the admin key when the target has one.
    pub async fn delete_as_admin(&self, path: &str) -> Reply {
        let request = self.request(Method::DELETE, path);
        let request = match &self.admin_key {
            Some(key) => request.header(AUTHORIZATION, format!("Bearer {key}")),
            None => request,
        };
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PUT, path, body).await
    }

    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Reply {
        let request = self
            .request(method, path)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("serialize the request body"));
        self.send(request).await
    }

    /// Sends bytes exactly as given, with the given Content-Type (or none).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        let request = self.request(method, path).body(body.into());
        let request = match content_type {
            Some(content_type) => request.header(CONTENT_TYPE, content_type),
            None => request,
        };
        self.send(request).await
    }

    /// Sends a request whose body the server may refuse before reading it whole (413): writes and reads
    /// at once over a plain HTTP/1.1 connection, so the answer is seen even when the server stops reading
    /// and closes while the body is still being sent (a client library reports a broken pipe instead).
    pub async fn send_unread(&self, method: Method, path: &str, body: Vec<u8>) -> Reply {
        let url = reqwest::Url::parse(&format!("{}{}", self.base_url, path)).expect("a valid URL");
        if url.scheme() != "http" {
            return self
                .send_raw(method, path, Some("application/json"), body)
                .await;
        }
        let host = url.host_str().expect("a host");
        let port = url.port_or_known_default().expect("a port");
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: cannot connect: {error}"));
        let (mut reader, mut writer) = stream.into_split();
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The write half stays open until the answer is read: a server may take a half-closed
        // connection for an abandoned request and close it without answering.
        let write = async move {
            // The server may stop reading and close early; what it answered is what matters.
            if writer.write_all(head.as_bytes()).await.is_ok() {
                let _ = writer.write_all(&body).await;
            }
            writer
        };
        let read = async move {
            let mut received = Vec::new();
            let mut chunk = vec![0; 64 * 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) => return (received, None),
                    Err(error) => return (received, Some(error)),
                    Ok(count) => received.extend_from_slice(&chunk[..count]),
                }
            }
        };
        let (writer, (received, read_error)) = tokio::join!(write, read);
        drop(writer);
        parse_response(method, target, &received, read_error)
    }

    /// Creates an application with a fresh name and returns its body (asserting the 201).
    pub async fn create_application(&self) -> Value {
        let name = unique("conformance app");
        let reply = self
            .post("/applications", &serde_json::json!({ "name": name }))
            .await;
        reply.expect_status(201);
        let application = reply.json();
        assert_eq!(application["name"], name.as_str(), "{}", reply.describe());
        application
    }

    /// Creates an application and returns its token.
    pub async fn create_token(&self) -> String {
        token_of(&self.create_application().await)
    }

    /// Creates the next chat of the application and returns its number (asserting the 201).
    pub async fn create_chat(&self, token: &str) -> u64 {
        let reply = self
            .send_raw(
                Method::POST,
                &format!("/applications/{token}/chats"),
                None,
                "",
            )
            .await;
        reply.expect_status(201);
        number_of(&reply.json())
    }

    /// Asks for a new token for the application named by `token`; the reply is the server's.
    pub async fn rotate_token(&self, token: &str) -> Reply {
        self.send_raw(
            Method::POST,
            &format!("{}/token", application_path(token)),
            None,
            "",
        )
        .await
    }

    /// Posts a message and returns its number (asserting the 201).
    pub async fn create_message(&self, token: &str, chat: u64, body: &str) -> u64 {
        let reply = self
            .post(
                &messages_path(token, chat),
                &serde_json::json!({ "body": body }),
            )
            .await;
        reply.expect_status(201);
        let message = reply.json();
        assert_eq!(message["body"], body, "{}", reply.describe());
        number_of(&message)
    }
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|error| panic!("the body is not JSON ({error}): {}", self.describe()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| {
            value.to_str().unwrap_or_else(|_| {
                panic!("header {name} is not visible ASCII: {}", self.describe())
            })
        })
    }

    /// The request and the response in a few lines, for failure messages.
    pub fn describe(&self) -> String {
        const SHOWN: usize = 2000;
        let text = self.text();
        let shown: String = text.chars().take(SHOWN).collect();
        let ellipsis = if shown.len() < text.len() { "…" } else { "" };
        format!(
            "{} {} → {} {:?}\n{shown}{ellipsis}",
            self.method, self.path, self.status, self.headers
        )
    }

    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status: {}",
            self.describe()
        );
        self
    }

    /// Asserts the status and the error body `{"error":{"code":code,"message":"…"}}`.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        self.expect_status(status);
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "an error without a JSON Content-Type: {}",
            self.describe()
        );
        let body = self.json();
        let error = body
            .get("error")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("no error object: {}", self.describe()));
        assert_eq!(
            error.get("code"),
            Some(&Value::from(code)),
            "{}",
            self.describe()
        );
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            !message.trim().is_empty(),
            "empty error message: {}",
            self.describe()
        );
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(1),
            "{}",
            self.describe()
        );
        self
    }

    /// The message of an error body, lower-cased.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
    }

    /// Asserts a client mistake: a 4xx carrying the error body.
    pub fn expect_client_error(&self) -> &Self {
        assert!(
            self.status.is_client_error(),
            "expected a 4xx: {}",
            self.describe()
        );
        let code = self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.expect_error(self.status.as_u16(), &code)
    }

    /// The target of `Link: <…>; rel="next"`, if the response has one.
    /// The `Link` header's `rel="next"` target, a path on the server.
    pub fn next_link(&self) -> Option<String> {
        self.link("next")
    }

    /// The `Link` header's target of relation `rel` (`next`, `prev`), a path on the server.
    pub fn link(&self, rel: &str) -> Option<String> {
        let link = self.header("link")?;
        let target = link.split(',').find_map(|part| {
            let (target, params) = part.trim().split_once(';')?;
            let matches = params.split(';').any(|param| {
                let param = param.trim().replace(' ', "");
                param == format!("rel=\"{rel}\"") || param == format!("rel={rel}")
            });
            matches.then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
        })?;
        assert!(
            target.starts_with('/'),
            "the {rel} link is not a relative path: {}",
            self.describe()
        );
        Some(target)
    }

    pub fn items(&self) -> Vec<Value> {
        match self.json() {
            Value::Array(items) => items,
            _ => panic!("expected a JSON array: {}", self.describe()),
        }
    }
}

/// Parses an HTTP/1.1 response read to the end of the connection.
fn parse_response(
    method: Method,
    path: String,
    received: &[u8],
    read_error: Option<std::io::Error>,
) -> Reply {
    let head_end = received
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{method} {path}: no complete response ({read_error:?}), got {:?}",
                String::from_utf8_lossy(received)
            )
        });
    let head = String::from_utf8_lossy(&received[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {head:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("a malformed header line {line:?}"));
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("a header name"),
            HeaderValue::from_str(value.trim()).expect("a header value"),
        );
    }
    let body = &received[head_end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let bytes = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Reply {
        method,
        path,
        status,
        headers,
        bytes,
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(line_end) = body.windows(2).position(|pair| pair == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        bytes.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
    bytes
}

/// Polls `probe` until it succeeds or `timeout` passes; fails with the last thing it observed.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last_observed) if Instant::now() >= deadline => {
                panic!("not within {timeout:?}; last observed: {last_observed}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A string no other case or run uses, so cases can share one deployed system.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{label} {}-{nanos:x}-{sequence}", std::process::id())
}

/// Percent-encodes a query value (everything but the unreserved characters).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

pub fn token_of(application: &Value) -> String {
    application["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no string token in {application}"))
        .to_owned()
}

pub fn number_of(item: &Value) -> u64 {
    item["number"]
        .as_u64()
        .unwrap_or_else(|| panic!("no unsigned number in {item}"))
}

pub fn numbers_of(items: &[Value]) -> Vec<u64> {
    items.iter().map(number_of).collect()
}

pub fn application_path(token: &str) -> String {
    format!("/applications/{token}")
}

pub fn chats_path(token: &str) -> String {
    format!("/applications/{token}/chats")
}

pub fn chat_path(token: &str, chat: u64) -> String {
    format!("/applications/{token}/chats/{chat}")
}

pub fn messages_path(token: &str, chat: u64) -> String {
    format!("/applications/{token}/chats/{chat}/messages")
}

pub fn message_path(token: &str, chat: u64, message: u64) -> String {
    format!("/applications/{token}/chats/{chat}/messages/{message}")
}

pub fn search_path(token: &str, chat: u64, query: &str) -> String {
    format!(
        "/applications/{token}/chats/{chat}/messages/search?q={}",
        encode(query)
    )
}
