//! While the store is down, creations still take the queued path: a token the process knew keeps
//! working past [`TOKEN_RECHECK`], whether or not the shared cache still holds it, and a token the
//! cache marks replaced does not. Runs over the embedded adapters; the store is taken down by closing
//! its pool, which its adapter reports as the database being unavailable.

use std::sync::Arc;
use std::time::Duration;

use chatsys_adapters::{
    embedded_search::EmbeddedSearch, memory, sqlite, sqlite_keys, sqlite_queue,
};
use chatsys_api::http::render::ApiRender;
use chatsys_core::CoreError;
use chatsys_core::ports::Store;
use chatsys_core::reads::TOKEN_RECHECK;
use chatsys_core::service::{ChatService, Ports};
use sqlx::SqlitePool;

struct Setup {
    ports: Ports,
    /// The store's own pool: closing it takes the store down and nothing else.
    store_pool: SqlitePool,
    _dir: tempfile::TempDir,
}

/// The embedded ports, with a shared cache that keeps entries for `cache_ttl`.
async fn setup(cache_ttl: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatsys.db");
    let store_pool = sqlite::open(&path).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(store_pool.clone()));
    store.migrate().await.unwrap();
    let pool = sqlite::open(&path).await.unwrap();
    let queue = sqlite_queue::SqliteQueue::new(pool.clone());
    let ports = Ports {
        store,
        numbers: Arc::new(memory::LocalNumbers::new()),
        floor: Arc::new(queue.clone()),
        queue: Arc::new(queue),
        cache: Arc::new(memory::MemoryCache::new(cache_ttl, 64 << 20, 1 << 20)),
        search: Arc::new(EmbeddedSearch::open(&dir.path().join("search"), true).unwrap()),
        announcements: Arc::new(memory::LocalAnnouncements::default()),
        keys: Arc::new(sqlite_keys::SqliteKeyCells::new(pool)),
    };
    Setup {
        ports,
        store_pool,
        _dir: dir,
    }
}

impl Setup {
    /// Takes the store down, then waits until every token a process knows is due for a recheck.
    async fn store_down(&self) {
        self.store_pool.close().await;
        tokio::time::sleep(TOKEN_RECHECK + Duration::from_millis(300)).await;
    }
}

/// The token of a new application.
async fn new_token(service: &ChatService) -> String {
    service
        .create_application("outage", None)
        .await
        .unwrap()
        .resource
        .token
}

/// Creates a chat and a message in it with `token`.
async fn create_chat_and_message(service: &ChatService, token: &str) -> Result<(), CoreError> {
    let chat = service.create_chat(token, None).await?.resource.number;
    service.create_message(token, chat, "hello", None).await?;
    Ok(())
}

#[tokio::test]
async fn a_token_created_before_the_store_went_down_keeps_working() {
    let setup = setup(Duration::from_secs(600)).await;
    let service = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let token = new_token(&service).await;
    setup.store_down().await;
    create_chat_and_message(&service, &token)
        .await
        .expect("a known token is served from the cache while the store is down");
    // Another replica, which never saw the token, finds it in the shared cache.
    let replica = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    create_chat_and_message(&replica, &token)
        .await
        .expect("the shared cache holds a created token");
}

#[tokio::test]
async fn a_token_the_shared_cache_lost_keeps_working_on_a_replica_that_knew_it() {
    // The cache's entries expire before the recheck, as Redis's do after their TTL or a restart.
    let setup = setup(Duration::from_secs(1)).await;
    let service = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let token = new_token(&service).await;
    setup.store_down().await;
    create_chat_and_message(&service, &token)
        .await
        .expect("a token this replica knew keeps working while the store is down");
}

/// A chat this replica knew keeps taking messages while the store is down, past its recheck, even when
/// the shared cache lost it (as Redis's entries go after their TTL).
#[tokio::test]
async fn a_chat_the_shared_cache_lost_keeps_taking_messages_while_the_store_is_down() {
    let setup = setup(Duration::from_secs(1)).await;
    let service = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let token = new_token(&service).await;
    let chat = service
        .create_chat(&token, None)
        .await
        .unwrap()
        .resource
        .number;
    service
        .create_message(&token, chat, "before", None)
        .await
        .unwrap();
    setup.store_down().await;
    // `store_down` waited past the tokens' recheck, longer than the chats': the chat is due for one,
    // and the cache's entry for it is gone.
    service
        .create_message(&token, chat, "during the outage", None)
        .await
        .expect("a chat this replica knew keeps working while the store is down");
}

#[tokio::test]
async fn a_replaced_token_stops_working_even_while_the_store_is_down() {
    let setup = setup(Duration::from_secs(600)).await;
    let rotating = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let other = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let old = new_token(&rotating).await;
    // The other replica knows the old token before it is replaced.
    other.authorize(&old).await.unwrap();
    let fresh = rotating.rotate_token(&old).await.unwrap().token;
    setup.store_down().await;
    let refused = other.create_chat(&old, None).await;
    assert!(
        refused.is_err(),
        "a replaced token was accepted while the store was down: {refused:?}"
    );
    create_chat_and_message(&other, &fresh)
        .await
        .expect("the new token works");
}

/// A token the store did not know is answered from memory for a while: a client repeating a guess costs
/// no query (here the store is down, so a query would be a 503).
#[tokio::test]
async fn a_repeated_unknown_token_is_refused_without_asking_the_store() {
    let setup = setup(Duration::from_secs(600)).await;
    let service = ChatService::new(setup.ports.clone(), Arc::new(ApiRender));
    let guess = chatsys_core::domain::generate_token();
    for _ in 0..2 {
        assert!(matches!(
            service.authorize(&guess).await,
            Err(CoreError::NotFound(_))
        ));
    }
    setup.store_down().await;
    assert!(matches!(
        service.authorize(&guess).await,
        Err(CoreError::NotFound(_))
    ));
    let other_guess = chatsys_core::domain::generate_token();
    assert!(
        matches!(service.authorize(&other_guess).await, Err(e) if e.is_transient()),
        "a token never asked about is still asked about"
    );
}
