//! An application-wide search shows a hit only while its chat exists: the index can still hold a
//! message of a chat deleted a moment ago (indexed by another worker after the chat left the index).
//! Runs over the embedded adapters, writing into the index directly as that worker would have.

use std::sync::Arc;
use std::time::Duration;

use chatsys_adapters::{
    embedded_search::EmbeddedSearch, memory, sqlite, sqlite_keys, sqlite_queue,
};
use chatsys_api::http::render::ApiRender;
use chatsys_core::domain::Message;
use chatsys_core::ports::Search;
use chatsys_core::search_text::SearchOrder;
use chatsys_core::service::{ChatService, Ports};

#[tokio::test]
async fn an_application_wide_search_hides_hits_of_chats_that_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite::open(&dir.path().join("chatsys.db")).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(pool.clone()));
    chatsys_core::ports::Store::migrate(store.as_ref())
        .await
        .unwrap();
    let queue = sqlite_queue::SqliteQueue::new(pool.clone());
    let search = EmbeddedSearch::open(&dir.path().join("search"), true).unwrap();
    let service = ChatService::new(
        Ports {
            store: store.clone(),
            numbers: Arc::new(memory::LocalNumbers::new()),
            floor: Arc::new(queue.clone()),
            queue: Arc::new(queue),
            cache: Arc::new(memory::MemoryCache::new(
                Duration::from_secs(60),
                64 << 20,
                1 << 20,
            )),
            search: Arc::new(search.clone()),
            announcements: Arc::new(memory::LocalAnnouncements::default()),
            keys: Arc::new(sqlite_keys::SqliteKeyCells::new(pool)),
        },
        Arc::new(ApiRender),
    );
    let token = service
        .create_application("hits", None)
        .await
        .unwrap()
        .resource
        .token;
    let app = chatsys_core::ports::Store::application_by_token(store.as_ref(), &token)
        .await
        .unwrap()
        .unwrap()
        .id;
    let chat = service
        .create_chat(&token, None)
        .await
        .unwrap()
        .resource
        .number;
    let at = chatsys_core::domain::now();
    let indexed = |chat_number, body: &str| Message {
        application_id: app,
        chat_number,
        number: 1,
        body: body.into(),
        version: 0,
        created_at: at,
        updated_at: at,
        deleted: false,
    };
    search
        .index(&[
            indexed(chat, "curlew here"),
            indexed(chat + 1, "curlew gone"),
        ])
        .await
        .unwrap();
    let page = service
        .search(&token, None, "curlew", SearchOrder::Newest, None, 10)
        .await
        .unwrap();
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&page.json).unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["chat_number"], chat);
}
