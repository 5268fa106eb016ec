//! Simultaneous edits of one message: the edit that wins (the highest version, which every store and
//! cache keeps) must be the one whose answer carried the latest `updated_at`, whatever order the
//! requests finish in. Runs over the embedded adapters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chatsys_adapters::{
    embedded_search::EmbeddedSearch, memory, sqlite, sqlite_keys, sqlite_queue,
};
use chatsys_api::http::render::ApiRender;
use chatsys_core::CoreResult;
use chatsys_core::domain::AppId;
use chatsys_core::plan::MessageKey;
use chatsys_core::ports::{Numbers, Store, VersionClaim, VersionFor};
use chatsys_core::service::{ChatService, Ports};

/// In-process numbers whose first version reaches its caller late, as an answer from Redis can when
/// the request's task is descheduled or the network is slow.
struct FirstVersionLate {
    inner: memory::LocalNumbers,
    versions: AtomicUsize,
}

#[async_trait]
impl Numbers for FirstVersionLate {
    async fn ping(&self) -> CoreResult<()> {
        self.inner.ping().await
    }
    async fn init_application(&self, app: AppId) -> CoreResult<()> {
        self.inner.init_application(app).await
    }
    async fn next_chat(&self, app: AppId) -> CoreResult<Option<u64>> {
        self.inner.next_chat(app).await
    }
    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<Option<u64>> {
        self.inner.next_message(app, chat).await
    }
    async fn restart_chats(&self, app: AppId, floor: u64) -> CoreResult<u64> {
        self.inner.restart_chats(app, floor).await
    }
    async fn restart_messages(&self, app: AppId, chat: u64, floor: u64) -> CoreResult<u64> {
        self.inner.restart_messages(app, chat, floor).await
    }
    async fn next_version(
        &self,
        message: MessageKey,
        seen: u64,
        expected: Option<&[u64]>,
        change: VersionFor,
    ) -> CoreResult<VersionClaim> {
        let version = self
            .inner
            .next_version(message, seen, expected, change)
            .await?;
        if self.versions.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(version)
    }
    async fn withdraw_version(
        &self,
        message: MessageKey,
        version: u64,
        previous: u64,
        change: VersionFor,
    ) -> CoreResult<()> {
        self.inner
            .withdraw_version(message, version, previous, change)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edit_answered_with_the_latest_updated_at_is_the_one_that_wins() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite::open(&dir.path().join("chatsys.db")).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    store.migrate().await.unwrap();
    let keys = Arc::new(sqlite_keys::SqliteKeyCells::new(pool.clone()));
    let queue = sqlite_queue::SqliteQueue::new(pool);
    let cache = Arc::new(memory::MemoryCache::new(
        Duration::from_secs(60),
        64 << 20,
        1 << 20,
    ));
    let service = Arc::new(ChatService::new(
        Ports {
            store: store.clone(),
            numbers: Arc::new(FirstVersionLate {
                inner: memory::LocalNumbers::new(),
                versions: AtomicUsize::new(0),
            }),
            floor: Arc::new(queue.clone()),
            queue: Arc::new(queue),
            cache: cache.clone(),
            search: Arc::new(EmbeddedSearch::open(&dir.path().join("search"), true).unwrap()),
            announcements: Arc::new(memory::LocalAnnouncements::default()),
            keys,
        },
        Arc::new(ApiRender),
    ));

    let application = service
        .create_application("edits", None)
        .await
        .unwrap()
        .resource;
    let token = application.token.clone();
    let chat = service
        .create_chat(&token, None)
        .await
        .unwrap()
        .resource
        .number;
    let number = service
        .create_message(&token, chat, "original", None)
        .await
        .unwrap()
        .resource
        .number;

    let edit = |body: &'static str| {
        let (service, token) = (service.clone(), token.clone());
        tokio::spawn(async move { service.edit_message(&token, chat, number, body, None).await })
    };
    // The first PUT takes the lower version, then waits; the second takes a higher one and answers
    // first.
    let first = edit("first");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = edit("second");
    let answers = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];

    let app = store
        .application_by_token(&token)
        .await
        .unwrap()
        .unwrap()
        .id;
    use chatsys_core::ports::Cache;
    let winner = Cache::message(cache.as_ref(), (app, chat, number))
        .await
        .unwrap()
        .expect("the edits are cached");
    assert_eq!(winner.body, "second", "the higher version wins");
    let latest = answers.iter().max_by_key(|a| a.updated_at).unwrap();
    assert_eq!(
        latest.body,
        winner.body,
        "the winner is the edit whose 200 showed the latest updated_at: {:?}",
        answers
            .iter()
            .map(|a| (&a.body, a.updated_at))
            .collect::<Vec<_>>()
    );
    assert!(
        answers.iter().all(|a| a.updated_at >= a.created_at),
        "an edit is never dated before the message's creation"
    );
    assert_eq!(winner.updated_at, latest.updated_at);
}

/// A queue whose publishes fail while `down` is set, as when the broker is unreachable.
struct FlakyQueue {
    inner: sqlite_queue::SqliteQueue,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl chatsys_core::ports::Queue for FlakyQueue {
    async fn ping(&self) -> CoreResult<()> {
        self.inner.ping().await
    }
    async fn publish(&self, command: &chatsys_core::command::Command) -> CoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(chatsys_core::CoreError::unavailable(
                chatsys_core::error::Backend::Queue,
                "down",
            ));
        }
        self.inner.publish(command).await
    }
    async fn backlog(&self) -> CoreResult<u64> {
        self.inner.backlog().await
    }
}

/// A conditional edit whose command could not be published is answered 503 and leaves nothing: its
/// retry, conditioned on the same version, is accepted (not refused for a version nobody stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_edit_that_was_never_published_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite::open(&dir.path().join("chatsys.db")).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    store.migrate().await.unwrap();
    let inner = sqlite_queue::SqliteQueue::new(pool.clone());
    let queue = Arc::new(FlakyQueue {
        inner: inner.clone(),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let service = ChatService::new(
        Ports {
            store,
            numbers: Arc::new(memory::LocalNumbers::new()),
            floor: Arc::new(inner),
            queue: queue.clone(),
            cache: Arc::new(memory::MemoryCache::new(
                Duration::from_secs(60),
                64 << 20,
                1 << 20,
            )),
            search: Arc::new(EmbeddedSearch::open(&dir.path().join("search"), true).unwrap()),
            announcements: Arc::new(memory::LocalAnnouncements::default()),
            keys: Arc::new(sqlite_keys::SqliteKeyCells::new(pool)),
        },
        Arc::new(ApiRender),
    );
    let token = service
        .create_application("retried edits", None)
        .await
        .unwrap()
        .resource
        .token;
    let chat = service
        .create_chat(&token, None)
        .await
        .unwrap()
        .resource
        .number;
    let created = service
        .create_message(&token, chat, "original", None)
        .await
        .unwrap()
        .resource;
    let read = [created.version];

    queue.down.store(true, Ordering::SeqCst);
    let failed = service
        .edit_message(&token, chat, created.number, "edited", Some(&read))
        .await;
    assert!(
        matches!(failed, Err(ref e) if e.is_transient()),
        "{failed:?}"
    );
    queue.down.store(false, Ordering::SeqCst);
    let retried = service
        .edit_message(&token, chat, created.number, "edited", Some(&read))
        .await
        .expect("the retry is conditioned on the version still stored");
    assert_eq!(retried.body, "edited");
}
