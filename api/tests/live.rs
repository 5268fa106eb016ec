//! Live streams against the embedded store and in-process announcements, which the tests deliver out of
//! order, partly, or not at all: whatever the announcements do, a stream passes every change once, in
//! the chat's order, and a stream that falls too far behind ends with an event saying so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatsys_adapters::{memory, sqlite};
use chatsys_api::http::render::ApiRender;
use chatsys_core::CoreError;
use chatsys_core::command::Command;
use chatsys_core::domain::{self, AppId, ChatEvent};
use chatsys_core::domain::{Application, Chat, Message, Scan};
use chatsys_core::error::CoreResult;
use chatsys_core::live::{LiveChats, LiveSettings};
use chatsys_core::ports::{Announcer, Store};
use chatsys_core::ports::{Applied, MessageRows};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

/// The embedded store, counting the bytes of bodies the change log reads hand out.
struct CountingStore {
    inner: sqlite::SqliteStore,
    event_bytes: AtomicUsize,
}

#[async_trait]
impl Store for CountingStore {
    async fn migrate(&self) -> CoreResult<()> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> CoreResult<()> {
        self.inner.ping().await
    }
    async fn create_application(
        &self,
        token: &str,
        name: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> CoreResult<Application> {
        self.inner.create_application(token, name, at).await
    }
    async fn rename_application(
        &self,
        id: AppId,
        name: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> CoreResult<()> {
        self.inner.rename_application(id, name, at).await
    }
    async fn replace_token(
        &self,
        id: AppId,
        token: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> CoreResult<()> {
        self.inner.replace_token(id, token, at).await
    }
    async fn application_by_token(&self, token: &str) -> CoreResult<Option<Application>> {
        self.inner.application_by_token(token).await
    }
    async fn application(&self, id: AppId) -> CoreResult<Option<Application>> {
        self.inner.application(id).await
    }
    async fn list_applications(
        &self,
        after: Option<AppId>,
        limit: u32,
    ) -> CoreResult<Vec<Application>> {
        self.inner.list_applications(after, limit).await
    }
    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.inner.chat(app, number).await
    }
    async fn list_chats(&self, app: AppId, scan: Scan) -> CoreResult<Vec<Chat>> {
        self.inner.list_chats(app, scan).await
    }
    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>> {
        self.inner.message(app, chat, number).await
    }
    async fn list_messages(&self, app: AppId, chat: u64, scan: Scan) -> CoreResult<MessageRows> {
        self.inner.list_messages(app, chat, scan).await
    }
    async fn max_chat_number(&self, app: AppId) -> CoreResult<u64> {
        self.inner.max_chat_number(app).await
    }
    async fn max_message_number(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        self.inner.max_message_number(app, chat).await
    }
    async fn chat_events(
        &self,
        app: AppId,
        chat: u64,
        from: u64,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> CoreResult<Vec<ChatEvent>> {
        let events = self
            .inner
            .chat_events(app, chat, from, after, limit, max_bytes)
            .await?;
        let bytes: usize = events.iter().map(|e| e.message.body.len()).sum();
        self.event_bytes.fetch_add(bytes, Ordering::SeqCst);
        Ok(events)
    }
    async fn last_chat_event(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        self.inner.last_chat_event(app, chat).await
    }
    async fn apply(&self, commands: &[Command]) -> CoreResult<Applied> {
        self.inner.apply(commands).await
    }
    async fn repair_counts(&self) -> CoreResult<u64> {
        self.inner.repair_counts().await
    }
    async fn delete_application(
        &self,
        id: AppId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> CoreResult<()> {
        self.inner.delete_application(id, at).await
    }
    async fn purge_chat(&self, app: AppId, chat: u64) -> CoreResult<()> {
        self.inner.purge_chat(app, chat).await
    }
    async fn purge_application(&self, app: AppId) -> CoreResult<()> {
        self.inner.purge_application(app).await
    }
}

struct Setup {
    store: Arc<CountingStore>,
    announcements: Arc<memory::LocalAnnouncements>,
    live: Arc<LiveChats>,
    app: AppId,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn setup(settings: LiveSettings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore {
        inner: sqlite::SqliteStore::new(
            sqlite::open(&dir.path().join("chatsys.db")).await.unwrap(),
        ),
        event_bytes: AtomicUsize::new(0),
    });
    store.migrate().await.unwrap();
    let app = store
        .create_application("tok", "live", domain::now())
        .await
        .unwrap()
        .id;
    let announcements = Arc::new(memory::LocalAnnouncements::default());
    let (stop, stopped) = watch::channel(false);
    let live = LiveChats::new(
        store.clone(),
        announcements.clone(),
        Arc::new(ApiRender),
        settings,
        stopped,
    );
    Setup {
        store,
        announcements,
        live,
        app,
        stop,
        _dir: dir,
    }
}

impl Setup {
    /// Stores messages `numbers` of chat 1 in one batch; returns the changes it made.
    async fn store_messages(&self, numbers: impl IntoIterator<Item = u64>) -> Vec<ChatEvent> {
        self.store_bodies(numbers, |number| format!("message {number}"))
            .await
    }

    /// The same with each message's body made by `body`.
    async fn store_bodies(
        &self,
        numbers: impl IntoIterator<Item = u64>,
        body: impl Fn(u64) -> String,
    ) -> Vec<ChatEvent> {
        let at = domain::now();
        let commands: Vec<Command> = numbers
            .into_iter()
            .map(|number| Command::CreateMessage {
                application_id: self.app,
                chat_number: 1,
                chat_created_at: at,
                number,
                body: body(number),
                at,
            })
            .collect();
        self.store.apply(&commands).await.unwrap().events
    }

    async fn announce(&self, events: &[ChatEvent]) {
        self.announcements.announce(events).await.unwrap();
    }
}

/// The next frame of the stream, or `None` once it ended; fails after `within`.
async fn next(
    stream: &mut (impl Stream<Item = Bytes> + Unpin),
    within: Duration,
) -> Option<String> {
    tokio::time::timeout(within, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no frame within {within:?}"))
        .map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
}

/// The ids of the next `count` events, skipping the retry line and heartbeats; fails after `within`.
async fn ids(
    stream: &mut (impl Stream<Item = Bytes> + Unpin),
    count: usize,
    within: Duration,
) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + within;
    let mut ids = Vec::new();
    while ids.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = next(stream, left)
            .await
            .unwrap_or_else(|| panic!("the stream ended after {ids:?}"));
        if let Some(id) = frame.strip_prefix("id: ") {
            ids.push(id.split('\n').next().unwrap().parse().unwrap());
        }
    }
    ids
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn announcements_out_of_order_are_passed_on_in_the_chats_order() {
    let setup = setup(LiveSettings::default()).await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    let first = setup.store_messages([1, 2]).await;
    let second = setup.store_messages([3]).await;
    setup.announce(&second).await;
    setup.announce(&first).await;
    assert_eq!(ids(&mut stream, 3, SOON).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_missed_announcement_is_read_from_the_store() {
    let setup = setup(LiveSettings::default()).await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    setup.store_messages([1, 2]).await;
    let second = setup.store_messages([3]).await;
    setup.announce(&second).await;
    assert_eq!(ids(&mut stream, 3, SOON).await, [1, 2, 3]);
}

/// No announcement at all (the broker was down): the feed's periodic check finds the change.
#[tokio::test]
async fn a_change_never_announced_still_reaches_the_stream() {
    let setup = setup(LiveSettings::default()).await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    setup.store_messages([1]).await;
    assert_eq!(ids(&mut stream, 1, Duration::from_secs(15)).await, [1]);
}

#[tokio::test]
async fn a_stream_too_far_behind_ends_with_an_overflow_event() {
    let setup = setup(LiveSettings {
        max_behind: 4,
        ..LiveSettings::default()
    })
    .await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    // The client reads nothing while twenty changes go by.
    let events = setup.store_messages(1..=20).await;
    setup.announce(&events).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(next(&mut stream, SOON).await.unwrap(), "retry: 1000\n\n");
    let last = next(&mut stream, SOON).await.unwrap();
    assert!(
        last.starts_with("event: stream.overflow\n") && last.contains("\"last_event_id\":\"0\""),
        "{last}"
    );
    assert_eq!(next(&mut stream, SOON).await, None, "the stream ends");
}

#[tokio::test]
async fn streams_end_when_the_process_stops() {
    let setup = setup(LiveSettings::default()).await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    assert_eq!(next(&mut stream, SOON).await.unwrap(), "retry: 1000\n\n");
    setup.stop.send(true).unwrap();
    assert_eq!(next(&mut stream, SOON).await, None);
}

/// A stream ends after its lifetime (its client resumes, possibly on another replica).
#[tokio::test]
async fn streams_end_after_their_lifetime() {
    let setup = setup(LiveSettings {
        max_lifetime: Duration::from_millis(300),
        ..LiveSettings::default()
    })
    .await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    assert_eq!(next(&mut stream, SOON).await.unwrap(), "retry: 1000\n\n");
    assert_eq!(next(&mut stream, SOON).await, None);
}

/// A stream that falls behind by more bytes than its chat keeps ends like one behind by too many events.
#[tokio::test]
async fn a_stream_further_behind_than_the_bytes_kept_ends_with_an_overflow_event() {
    let setup = setup(LiveSettings {
        max_behind_bytes: 8 * 1024,
        ..LiveSettings::default()
    })
    .await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    // Twenty changes of 1 KiB each, and the client reads none of them meanwhile.
    let events = setup.store_bodies(1..=20, |_| "x".repeat(1024)).await;
    setup.announce(&events).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(next(&mut stream, SOON).await.unwrap(), "retry: 1000\n\n");
    let last = next(&mut stream, SOON).await.unwrap();
    assert!(last.starts_with("event: stream.overflow\n"), "{last}");
    assert_eq!(next(&mut stream, SOON).await, None, "the stream ends");
}

/// A stream catching up reads the store a page at a time, the next only once its client took the
/// previous one: however much it is asked to replay, it holds about a page.
#[tokio::test]
async fn a_catch_up_reads_the_next_page_only_when_the_client_took_the_last() {
    let setup = setup(LiveSettings::default()).await;
    let body = 60 * 1024;
    setup.store_bodies(1..=100, |_| "y".repeat(body)).await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), Some(0)).await.unwrap());
    assert_eq!(ids(&mut stream, 1, SOON).await, [1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = setup.store.event_bytes.load(Ordering::SeqCst);
    assert!(
        read <= 256 * 1024 + body,
        "{read} bytes read for a client that took one event"
    );
    // The rest comes as the client reads on, each change once.
    let rest = ids(&mut stream, 99, SOON).await;
    assert_eq!(rest, (2..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn streams_over_an_applications_limit_or_the_chats_limit_are_refused() {
    let setup = setup(LiveSettings {
        max_streams_per_application: 2,
        max_chats: 3,
        ..LiveSettings::default()
    })
    .await;
    let first = setup.live.open((setup.app, 1), None).await.unwrap();
    let _second = setup.live.open((setup.app, 2), None).await.unwrap();
    let refused = setup.live.open((setup.app, 3), None).await;
    assert!(
        matches!(refused, Err(CoreError::TooMany { .. })),
        "a third stream of the application"
    );
    drop(first);
    let _third = setup.live.open((setup.app, 3), None).await.unwrap();
    // Another application's stream, on a fourth chat: over the chats this process streams.
    let refused = setup.live.open((setup.app + 1, 1), None).await;
    assert!(
        matches!(refused, Err(CoreError::TooMany { .. })),
        "a fourth chat"
    );
}

/// Heartbeats do not keep a stream: one with no event for its quiet limit ends.
#[tokio::test]
async fn a_quiet_stream_ends_after_its_limit_though_heartbeats_go_on() {
    let setup = setup(LiveSettings {
        heartbeat: Duration::from_millis(100),
        max_quiet: Duration::from_millis(500),
        ..LiveSettings::default()
    })
    .await;
    let mut stream = Box::pin(setup.live.open((setup.app, 1), None).await.unwrap());
    let mut heartbeats = 0;
    let ended = tokio::time::timeout(SOON, async {
        while let Some(frame) = stream.next().await {
            heartbeats += usize::from(&frame[..] == b": heartbeat\n\n");
        }
    })
    .await;
    assert!(ended.is_ok(), "still open after {heartbeats} heartbeats");
    assert!(heartbeats >= 2, "{heartbeats} heartbeats before the end");
}
