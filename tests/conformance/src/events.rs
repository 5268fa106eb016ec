//! `GET …/chats/{number}/events`: a chat's live event stream (server-sent events).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::checks::assert_message;
use crate::target::{CATCH_UP, Target, chat_path, message_path};

/// How long a case waits for the next event: the same bound as the worker-follows guarantees.
const EVENT_WITHIN: Duration = CATCH_UP;
/// The contract's longest silence on an idle stream, and a margin for the network.
const HEARTBEAT_WITHIN: Duration = Duration::from_secs(20);

pub fn events_path(token: &str, chat: u64) -> String {
    format!("{}/events", chat_path(token, chat))
}

/// One frame of the stream: an event, or a comment (`: …`), or the reconnection delay (`retry:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: bool,
}

impl Frame {
    fn parse(text: &str) -> Frame {
        let mut frame = Frame {
            id: None,
            event: None,
            data: None,
            comment: false,
        };
        for line in text.lines().filter(|line| !line.is_empty()) {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "" => frame.comment = true,
                "id" => frame.id = Some(value),
                "event" => frame.event = Some(value),
                "data" => frame.data = Some(value),
                _ => {}
            }
        }
        frame
    }

    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("")).unwrap_or_else(|e| {
            panic!("an event's data is not JSON ({e}): {self:?}");
        })
    }

    pub fn number(&self) -> u64 {
        self.json()["number"]
            .as_u64()
            .expect("the message's number")
    }

    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("an event without a numeric id: {self:?}"))
    }

    /// `(event, number, body)`.
    pub fn summary(&self) -> (String, u64, String) {
        let data = self.json();
        (
            self.event.clone().unwrap_or_default(),
            self.number(),
            data["body"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// An open stream, read frame by frame.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    what: String,
}

impl EventStream {
    /// Opens the stream, with a `Last-Event-ID` when given, and checks its head.
    pub async fn open(target: &Target, path: &str, last_event_id: Option<&str>) -> EventStream {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("last-event-id", id))
            .into_iter()
            .collect();
        Self::open_with(target, path, &headers).await
    }

    /// Opens the stream with these request headers, and checks its head.
    pub async fn open_with(target: &Target, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut request = target
            .request(Method::GET, path)
            // The client's overall timeout would cut a stream that is meant to stay open.
            .timeout(Duration::from_secs(3600));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no response: {e:?}"));
        assert_eq!(response.status(), 200, "GET {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "GET {path}: Content-Type {content_type:?}"
        );
        EventStream {
            response,
            buffer: String::new(),
            what: format!("GET {path}"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// Reads (and drops) frames until the server ends the stream, failing the case if it has not
    /// ended within `within`.
    pub async fn expect_end(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => panic!("{}: still open after {within:?}", self.what),
                Ok(Ok(None) | Err(_)) => return,
                Ok(Ok(Some(_))) => {}
            }
        }
    }

    /// The next frame, failing the case if none arrives within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Frame {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                return Frame::parse(&text);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing within {within:?}", self.what))
                .unwrap_or_else(|e| panic!("{}: reading failed: {e:?}", self.what))
                .unwrap_or_else(|| panic!("{}: the stream ended", self.what));
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("the stream is UTF-8"));
        }
    }

    /// The next `count` events, skipping comments; fails unless all arrive within `EVENT_WITHIN`.
    pub async fn events(&mut self, count: usize) -> Vec<Frame> {
        let deadline = Instant::now() + EVENT_WITHIN;
        let mut events = Vec::new();
        while events.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: {} of {count} events within {EVENT_WITHIN:?}: {events:?}",
                    self.what,
                    events.len()
                );
            }
            let frame = self.next_frame(left).await;
            if frame.is_event() {
                events.push(frame);
            }
        }
        events
    }

    /// Fails if an event arrives within `quiet`.
    pub async fn expect_no_event(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(frame) =
                tokio::time::timeout(left, self.next_frame(quiet + Duration::from_secs(1))).await
            else {
                return;
            };
            assert!(!frame.is_event(), "{}: unexpected {frame:?}", self.what);
        }
    }
}

/// Every event carries an id that grows along the stream.
fn assert_ids_grow(events: &[Frame]) {
    let seqs: Vec<u64> = events.iter().map(Frame::seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids do not grow: {seqs:?}"
    );
}

async fn edit(target: &Target, token: &str, chat: u64, number: u64, body: &str) {
    target
        .put(&message_path(token, chat, number), &json!({ "body": body }))
        .await
        .expect_status(200);
}

/// The data of an event is the message as `GET …/messages/{number}` shows it.
async fn assert_data_is_the_message(target: &Target, token: &str, chat: u64, event: &Frame) {
    let data = event.json();
    assert_message(&data);
    let read = target.get(&message_path(token, chat, event.number())).await;
    read.expect_status(200);
    assert_eq!(data, read.json(), "event {event:?}");
}

pub async fn events_follow_creates_and_edits_in_order(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let mut stream = EventStream::open(target, &events_path(&token, chat), None).await;
    for body in ["first", "second", "third"] {
        target.create_message(&token, chat, body).await;
    }
    let created = stream.events(3).await;
    assert_eq!(
        created.iter().map(Frame::summary).collect::<Vec<_>>(),
        [
            ("message.created".to_string(), 1, "first".to_string()),
            ("message.created".to_string(), 2, "second".to_string()),
            ("message.created".to_string(), 3, "third".to_string()),
        ]
    );
    for event in &created {
        assert_data_is_the_message(target, &token, chat, event).await;
    }
    edit(target, &token, chat, 2, "second, edited").await;
    let edited = stream.events(1).await;
    assert_eq!(
        edited[0].summary(),
        (
            "message.edited".to_string(),
            2,
            "second, edited".to_string()
        )
    );
    assert_data_is_the_message(target, &token, chat, &edited[0]).await;
    assert_ids_grow(&[created, edited].concat());
}

pub async fn a_stream_resumes_after_its_last_event_id(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let path = events_path(&token, chat);
    let mut first = EventStream::open(target, &path, None).await;
    target.create_message(&token, chat, "one").await;
    target.create_message(&token, chat, "two").await;
    let seen = first.events(2).await;
    let last_id = seen[1].id.clone().expect("an id");
    drop(first);

    // While no stream is open: two new messages and an edit of one the client saw.
    target.create_message(&token, chat, "three").await;
    target.create_message(&token, chat, "four").await;
    edit(target, &token, chat, 1, "one, edited").await;

    let mut resumed = EventStream::open(target, &path, Some(&last_id)).await;
    let missed = resumed.events(3).await;
    let got: BTreeSet<(String, u64, String)> = missed.iter().map(Frame::summary).collect();
    let want: BTreeSet<(String, u64, String)> = [
        ("message.created".to_string(), 3, "three".to_string()),
        ("message.created".to_string(), 4, "four".to_string()),
        ("message.edited".to_string(), 1, "one, edited".to_string()),
    ]
    .into();
    assert_eq!(got, want, "{missed:?}");
    assert!(missed.iter().all(|e| e.seq() > seen[1].seq()));
    assert_ids_grow(&missed);
    // Then the live ones, and nothing twice.
    target.create_message(&token, chat, "five").await;
    let live = resumed.events(1).await;
    assert_eq!(
        live[0].summary(),
        ("message.created".to_string(), 5, "five".to_string())
    );
    resumed.expect_no_event(Duration::from_millis(500)).await;

    // An id beyond the chat's last change (a store restored from a backup, say) starts from now.
    let mut beyond = EventStream::open(target, &format!("{path}?after=1000000"), None).await;
    target.create_message(&token, chat, "six").await;
    assert_eq!(
        beyond.events(1).await[0].summary(),
        ("message.created".to_string(), 6, "six".to_string())
    );

    // `after` resumes the same way.
    let mut by_query =
        EventStream::open(target, &format!("{path}?after={}", seen[0].seq()), None).await;
    let replayed = by_query.events(4).await;
    let numbers: BTreeSet<u64> = replayed.iter().map(Frame::number).collect();
    assert_eq!(numbers, [1, 2, 3, 4].into(), "{replayed:?}");
}

pub async fn two_subscribers_see_the_same_sequence(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let path = events_path(&token, chat);
    let mut a = EventStream::open(target, &path, None).await;
    let mut b = EventStream::open(target, &path, None).await;
    join_all((1..=10).map(|n| {
        let token = token.clone();
        async move { target.create_message(&token, chat, &format!("m{n}")).await }
    }))
    .await;
    let seen_by_a = a.events(10).await;
    let seen_by_b = b.events(10).await;
    assert_eq!(seen_by_a, seen_by_b);
    let numbers: BTreeSet<u64> = seen_by_a.iter().map(Frame::number).collect();
    assert_eq!(numbers, (1..=10).collect());
    assert_ids_grow(&seen_by_a);
}

pub async fn streams_of_unknown_chats_are_404(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target
        .get(&events_path(&token, chat + 1000))
        .await
        .expect_error(404, "not_found");
    target
        .get(&events_path("unknown-token", 1))
        .await
        .expect_error(404, "not_found");
    let path = events_path(&token, chat);
    for cursor in ["abc", "-1", "01"] {
        let request = target
            .request(Method::GET, &path)
            .header("last-event-id", cursor);
        target
            .send(request)
            .await
            .expect_error(400, "invalid_query");
        target
            .get(&format!("{path}?after={cursor}"))
            .await
            .expect_error(400, "invalid_query");
    }
}

pub async fn an_idle_stream_sends_heartbeats(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let mut stream = EventStream::open(target, &events_path(&token, chat), None).await;
    let started = Instant::now();
    loop {
        let frame = stream.next_frame(HEARTBEAT_WITHIN).await;
        assert!(!frame.is_event(), "an idle chat sent {frame:?}");
        if frame.comment {
            break;
        }
        assert!(
            started.elapsed() < HEARTBEAT_WITHIN,
            "no heartbeat within {HEARTBEAT_WITHIN:?}"
        );
    }
}
