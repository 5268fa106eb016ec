//! Hot list pages are served from the API process's own memory, without asking the shared cache, and a
//! commit still shows in them as soon as the list's generation moves (within the 250 ms the process
//! trusts a generation). A page read once only is not held. Runs over the embedded adapters, with the
//! shared cache counting its page reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chatsys_adapters::{
    embedded_search::EmbeddedSearch, memory, sqlite, sqlite_keys, sqlite_queue,
};
use chatsys_api::http::render::ApiRender;
use chatsys_core::CoreResult;
use chatsys_core::command::Command;
use chatsys_core::domain::{AppId, Application, Chat, Cursor, Message, Page};
use chatsys_core::plan::MessageKey;
use chatsys_core::ports::{Cache, CachedToken, ListScope, Store};
use chatsys_core::service::{ChatService, Ports};

/// The in-process cache standing in for Redis, counting the list pages asked of it.
struct CountingCache {
    inner: memory::MemoryCache,
    page_reads: AtomicUsize,
}

#[async_trait]
impl Cache for CountingCache {
    async fn application_id(&self, token: &str) -> CoreResult<CachedToken> {
        self.inner.application_id(token).await
    }
    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()> {
        self.inner.put_application_id(token, app).await
    }
    async fn application(&self, app: AppId) -> CoreResult<Option<Application>> {
        self.inner.application(app).await
    }
    async fn put_application(&self, application: &Application) -> CoreResult<()> {
        self.inner.put_application(application).await
    }
    async fn forget_token(&self, token: &str) -> CoreResult<()> {
        self.inner.forget_token(token).await
    }
    async fn forget_applications(&self, apps: &[AppId]) -> CoreResult<()> {
        self.inner.forget_applications(apps).await
    }
    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.inner.chat(app, number).await
    }
    async fn put_chats(&self, chats: &[Chat]) -> CoreResult<()> {
        self.inner.put_chats(chats).await
    }
    async fn pending_chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.inner.pending_chat(app, number).await
    }
    async fn put_pending_chat(&self, chat: &Chat) -> CoreResult<()> {
        self.inner.put_pending_chat(chat).await
    }
    async fn message(&self, key: MessageKey) -> CoreResult<Option<Message>> {
        self.inner.message(key).await
    }
    async fn put_message(&self, message: &Message) -> CoreResult<()> {
        self.inner.put_message(message).await
    }
    async fn list_generation(&self, scope: &ListScope) -> CoreResult<u64> {
        self.inner.list_generation(scope).await
    }
    async fn list_page(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
    ) -> CoreResult<Option<Vec<u8>>> {
        self.page_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list_page(scope, generation, page).await
    }
    async fn put_list(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
        body: &[u8],
    ) -> CoreResult<()> {
        self.inner.put_list(scope, generation, page, body).await
    }
    async fn bump_lists(&self, scopes: &[ListScope]) -> CoreResult<()> {
        self.inner.bump_lists(scopes).await
    }
}

struct Setup {
    service: ChatService,
    store: Arc<sqlite::SqliteStore>,
    cache: Arc<CountingCache>,
    _dir: tempfile::TempDir,
}

async fn setup(hot_page_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite::open(&dir.path().join("chatsys.db")).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    store.migrate().await.unwrap();
    let keys = Arc::new(sqlite_keys::SqliteKeyCells::new(pool.clone()));
    let queue = sqlite_queue::SqliteQueue::new(pool);
    let cache = Arc::new(CountingCache {
        inner: memory::MemoryCache::new(Duration::from_secs(60), 64 << 20, 1 << 20),
        page_reads: AtomicUsize::new(0),
    });
    let service = ChatService::new(
        Ports {
            store: store.clone(),
            numbers: Arc::new(memory::LocalNumbers::new()),
            floor: Arc::new(queue.clone()),
            queue: Arc::new(queue),
            cache: cache.clone(),
            search: Arc::new(EmbeddedSearch::open(&dir.path().join("search"), true).unwrap()),
            announcements: Arc::new(memory::LocalAnnouncements::default()),
            keys,
        },
        Arc::new(ApiRender),
    )
    .with_hot_pages(hot_page_bytes);
    Setup {
        service,
        store,
        cache,
        _dir: dir,
    }
}

impl Setup {
    /// A stored chat of a new application: its token and its application id.
    async fn chat(&self) -> (String, AppId) {
        let token = self
            .service
            .create_application("hot", None)
            .await
            .unwrap()
            .resource
            .token;
        let app = self
            .store
            .application_by_token(&token)
            .await
            .unwrap()
            .unwrap()
            .id;
        self.service.create_chat(&token, None).await.unwrap();
        self.store
            .apply(&[Command::CreateChat {
                application_id: app,
                number: 1,
                at: chrono::Utc::now(),
            }])
            .await
            .unwrap();
        (token, app)
    }

    /// Stores a message as the worker does: the rows, then the list's generation moves.
    async fn store_message(&self, app: AppId, number: u64, body: &str) {
        let at = chrono::Utc::now();
        self.store
            .apply(&[Command::CreateMessage {
                application_id: app,
                chat_number: 1,
                chat_created_at: at,
                number,
                body: body.to_owned(),
                at,
            }])
            .await
            .unwrap();
        self.cache
            .bump_lists(&[ListScope::Messages(app, 1)])
            .await
            .unwrap();
    }

    async fn page(&self, token: &str) -> String {
        let page = self
            .service
            .list_messages(token, 1, Page::first(100))
            .await
            .unwrap();
        String::from_utf8(page.json.to_vec()).unwrap()
    }

    fn page_reads(&self) -> usize {
        self.cache.page_reads.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_hot_page_is_served_without_the_shared_cache_and_follows_the_lists_generation() {
    let setup = setup(1 << 20).await;
    let (token, app) = setup.chat().await;
    setup.store_message(app, 1, "first").await;

    let first = setup.page(&token).await;
    assert!(first.contains("first"), "{first}");
    // The second read finds the page in the shared cache and keeps it in process.
    assert_eq!(setup.page(&token).await, first);
    let reads = setup.page_reads();
    for _ in 0..10 {
        assert_eq!(setup.page(&token).await, first);
    }
    assert_eq!(
        setup.page_reads(),
        reads,
        "repeated reads of a hot page asked the shared cache"
    );

    setup.store_message(app, 2, "second").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = setup.page(&token).await;
    assert!(
        after.contains("first") && after.contains("second"),
        "a commit 300 ms old is missing from the page: {after}"
    );
}

#[tokio::test]
async fn pages_read_once_are_not_held_in_process() {
    let setup = setup(1 << 20).await;
    let (token, app) = setup.chat().await;
    for number in 1..=3 {
        setup.store_message(app, number, "crawl").await;
    }
    for after in 0..3 {
        setup
            .service
            .list_messages(
                &token,
                1,
                Page {
                    cursor: Cursor::After(after),
                    ..Page::first(1)
                },
            )
            .await
            .unwrap();
    }
    let reads = setup.page_reads();
    setup
        .service
        .list_messages(
            &token,
            1,
            Page {
                cursor: Cursor::After(0),
                ..Page::first(1)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        setup.page_reads(),
        reads + 1,
        "a page read once was served from process memory"
    );
}

#[tokio::test]
async fn without_hot_pages_every_read_asks_the_shared_cache() {
    let setup = setup(0).await;
    let (token, app) = setup.chat().await;
    setup.store_message(app, 1, "first").await;
    setup.page(&token).await;
    let reads = setup.page_reads();
    setup.page(&token).await;
    assert_eq!(setup.page_reads(), reads + 1);
}
