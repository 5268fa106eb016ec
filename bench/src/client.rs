//! A lean HTTP/1.1 client: one keep-alive connection per load task, and the chat API calls on top.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn has_retry_after(&self) -> bool {
        self.headers.contains_key(header::RETRY_AFTER)
    }

    /// How long `Retry-After` says to wait (1 s when it says nothing readable).
    pub fn retry_after(&self) -> Duration {
        let seconds = self
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(1);
        Duration::from_secs(seconds)
    }

    /// The `number` field of a created chat or message.
    pub fn number(&self) -> anyhow::Result<u64> {
        #[derive(Deserialize)]
        struct Numbered {
            number: u64,
        }
        let numbered: Numbered = serde_json::from_slice(&self.body)
            .with_context(|| format!("no number in {}", String::from_utf8_lossy(&self.body)))?;
        Ok(numbered.number)
    }
}

/// One keep-alive connection to the API, reopened on the next request after a failure.
pub struct Connection {
    addr: SocketAddr,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            sender: None,
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Response> {
        self.send(
            Method::POST,
            path,
            Some(Bytes::from(serde_json::to_vec(body)?)),
        )
        .await
    }

    /// Sends one request; a transport error or a timeout drops the connection so the next call reconnects.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Connection::send`] with extra request headers.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, body, headers)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                bail!("{path}: no response within {:?}", self.timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(connect(self.addr).await?);
        }
        let sender = self.sender.as_mut().expect("connected above");
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{path}: request failed"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("{path}: body failed"))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

pub fn chats_path(token: &str) -> String {
    format!("/applications/{token}/chats")
}

pub fn messages_path(token: &str, chat: u64) -> String {
    format!("/applications/{token}/chats/{chat}/messages")
}

/// Creates an application and returns its token.
pub async fn create_application(connection: &mut Connection, name: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Created {
        token: String,
    }
    let response = connection
        .post_json("/applications", &serde_json::json!({ "name": name }))
        .await?;
    if response.status != StatusCode::CREATED {
        bail!(
            "POST /applications answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(serde_json::from_slice::<Created>(&response.body)?.token)
}

pub async fn create_chat(connection: &mut Connection, token: &str) -> anyhow::Result<Response> {
    connection
        .send(Method::POST, &chats_path(token), None)
        .await
}

/// Posts a message, with an `Idempotency-Key` when given (so that it may be retried).
pub async fn create_message(
    connection: &mut Connection,
    token: &str,
    chat: u64,
    body: &str,
    key: Option<&str>,
) -> anyhow::Result<Response> {
    let body = serde_json::to_vec(&serde_json::json!({ "body": body }))?;
    let header = key.map(|key| ("idempotency-key", key));
    connection
        .send_with(
            Method::POST,
            &messages_path(token, chat),
            Some(Bytes::from(body)),
            header.as_slice(),
        )
        .await
}

/// Creates a chat and returns its number, failing on anything but 201.
pub async fn create_chat_number(connection: &mut Connection, token: &str) -> anyhow::Result<u64> {
    let response = create_chat(connection, token).await?;
    if response.status != StatusCode::CREATED {
        bail!(
            "POST chats answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    response.number()
}

/// The numbers in a list of messages.
pub fn listed_numbers(body: &[u8]) -> anyhow::Result<Vec<u64>> {
    #[derive(Deserialize)]
    struct Numbered {
        number: u64,
    }
    let listed: Vec<Numbered> = serde_json::from_slice(body)?;
    Ok(listed.into_iter().map(|message| message.number).collect())
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text exposition; a `name` with
/// labels (`metric{label="value"}`) matches that one series exactly.
pub fn metric_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut samples = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = if name.contains('{') {
                series
            } else {
                series.split('{').next()?
            };
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        });
    let first = samples.next()?;
    Some(samples.fold(first, |sum, value| sum + value))
}

/// Waits until `GET path` answers 200, checking every 100 ms.
pub async fn wait_for_ok(addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let mut connection = Connection::new(addr, Duration::from_secs(2));
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        match connection.get(path).await {
            Ok(response) if response.status == StatusCode::OK => return Ok(()),
            Ok(response) => {
                last = format!(
                    "{} {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                )
            }
            Err(error) => last = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr}{path} not ready within {within:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_numbers_ignore_other_fields() {
        let body = br#"[{"number":1,"body":"a"},{"number":7,"body":"b","created_at":"x"}]"#;
        assert_eq!(listed_numbers(body).unwrap(), vec![1, 7]);
    }

    #[test]
    fn metric_sums_add_up_every_label_set() {
        let exposition = "# TYPE x counter\nx_total{result=\"a\"} 3\nx_total{result=\"b\"} 4.5\nx_total_other 9\n";
        assert_eq!(metric_sum(exposition, "x_total"), Some(7.5));
        assert_eq!(metric_sum(exposition, "missing"), None);
        assert_eq!(metric_sum(exposition, "x_total{result=\"b\"}"), Some(4.5));
    }

    #[test]
    fn a_response_without_a_number_is_an_error() {
        let response = Response {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from("{}"),
        };
        assert!(response.number().is_err());
    }
}
