//! Live streams against the embedded store and in-process announcements, which the tests deliver out of
//! order, partly, or not at all: whatever the announcements do, a stream passes every change once, in
//! the chat's order, and a stream that falls too far behind ends with an event saying so.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatsys_core::adapters::{memory, sqlite};
use chatsys_core::command::Command;
use chatsys_core::domain::{self, AppId, ChatEvent};
use chatsys_core::live::{LiveChats, LiveSettings};
use chatsys_core::ports::{Announcer, Store};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

struct Setup {
    store: Arc<dyn Store>,
    announcements: Arc<memory::LocalAnnouncements>,
    live: Arc<LiveChats>,
    app: AppId,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn setup(settings: LiveSettings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(
        sqlite::open(&dir.path().join("chatsys.db")).await.unwrap(),
    ));
    store.migrate().await.unwrap();
    let app = store
        .create_application("tok", "live", domain::now())
        .await
        .unwrap()
        .id;
    let announcements = Arc::new(memory::LocalAnnouncements::default());
    let (stop, stopped) = watch::channel(false);
    let live = LiveChats::new(store.clone(), announcements.clone(), settings, stopped);
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
        let at = domain::now();
        let commands: Vec<Command> = numbers
            .into_iter()
            .map(|number| Command::CreateMessage {
                application_id: self.app,
                chat_number: 1,
                chat_created_at: at,
                number,
                body: format!("message {number}"),
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
