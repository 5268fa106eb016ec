//! A client of a chat's event stream: opens it (resuming after an id when given) and yields its events as
//! they arrive. Used by the bench's streams phase and the fault suite's stream scenario.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    /// `message.created` or `message.edited`.
    pub kind: String,
    pub number: u64,
    pub body: String,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server closed it, or the connection broke.
    Closed,
    /// The server ended it because the client read too slowly.
    Overflow,
}

pub struct EventStream {
    body: Incoming,
    buffer: String,
}

#[derive(Deserialize)]
struct Data {
    number: u64,
    body: String,
}

impl EventStream {
    /// `GET {path}` on `addr`, with `Last-Event-ID: after` when given; fails unless the answer is 200.
    pub async fn open(addr: SocketAddr, path: &str, after: Option<u64>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::get(path).header(header::HOST, addr.to_string());
        if let Some(after) = after {
            request = request.header("last-event-id", after.to_string());
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await
            .with_context(|| format!("GET {path}"))?;
        if response.status() != StatusCode::OK {
            bail!("GET {path}: {}", response.status());
        }
        Ok(EventStream {
            body: response.into_body(),
            buffer: String::new(),
        })
    }

    /// The next event, skipping comments; `Err(end)` once the stream is over.
    pub async fn next(&mut self) -> Result<Event, End> {
        loop {
            while let Some(split) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..split + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in frame.lines() {
                    match line.split_once(": ") {
                        Some(("id", value)) => id = value.parse().ok(),
                        Some(("event", value)) => kind = Some(value.to_string()),
                        Some(("data", value)) => data = Some(value.to_string()),
                        _ => {}
                    }
                }
                if kind.as_deref() == Some("stream.overflow") {
                    return Err(End::Overflow);
                }
                if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                    let Ok(data) = serde_json::from_str::<Data>(&data) else {
                        return Err(End::Closed);
                    };
                    return Ok(Event {
                        id,
                        kind,
                        number: data.number,
                        body: data.body,
                    });
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Some(Err(_)) | None => return Err(End::Closed),
            }
        }
    }
}
