//! In-process adapters of standalone mode: number allocation and the cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache as Moka;
use tokio::sync::Mutex;

use crate::domain::{AppId, Application, Chat, Message};
use crate::error::CoreResult;
use crate::plan::{ChatKey, MessageKey};
use crate::ports::{Cache, ListScope, NumberFloor, Numbers};

/// Counters in memory, each loaded on first use from the floor (every number stored or queued), so
/// a restart continues where the last run stopped.
pub struct LocalNumbers {
    floor: Arc<dyn NumberFloor>,
    chats: Mutex<HashMap<AppId, u64>>,
    messages: Mutex<HashMap<ChatKey, u64>>,
    version: std::sync::Mutex<u64>,
}

impl LocalNumbers {
    pub fn new(floor: Arc<dyn NumberFloor>) -> Self {
        LocalNumbers {
            floor,
            chats: Mutex::new(HashMap::new()),
            messages: Mutex::new(HashMap::new()),
            version: std::sync::Mutex::new(0),
        }
    }
}

#[async_trait]
impl Numbers for LocalNumbers {
    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }

    async fn init_application(&self, app: AppId) -> CoreResult<()> {
        self.chats.lock().await.entry(app).or_insert(0);
        Ok(())
    }

    async fn next_chat(&self, app: AppId) -> CoreResult<u64> {
        let mut chats = self.chats.lock().await;
        let counter = match chats.get_mut(&app) {
            Some(counter) => counter,
            None => {
                let floor = self.floor.chat_floor(app).await?;
                chats.entry(app).or_insert(floor)
            }
        };
        *counter += 1;
        let number = *counter;
        drop(chats);
        self.messages.lock().await.entry((app, number)).or_insert(0);
        Ok(number)
    }

    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let mut messages = self.messages.lock().await;
        let counter = match messages.get_mut(&(app, chat)) {
            Some(counter) => counter,
            None => {
                let floor = self.floor.message_floor(app, chat).await?;
                messages.entry((app, chat)).or_insert(floor)
            }
        };
        *counter += 1;
        Ok(*counter)
    }

    async fn next_version(&self) -> CoreResult<u64> {
        let now = chrono::Utc::now().timestamp_micros() as u64;
        let mut last = self.version.lock().expect("version lock");
        *last = (*last + 1).max(now);
        Ok(*last)
    }
}

/// The shared cache, in process. Same rules as the Redis one: messages keep the higher version, list
/// pages live under a generation that a commit bumps.
pub struct MemoryCache {
    ids: Moka<String, AppId>,
    applications: Moka<AppId, Application>,
    chats: Moka<ChatKey, Chat>,
    pending_chats: Moka<ChatKey, Chat>,
    messages: Moka<MessageKey, Message>,
    message_writes: Mutex<()>,
    generations: Mutex<HashMap<ListScope, u64>>,
    pages: Moka<(ListScope, u64, String), Arc<Vec<u8>>>,
}

impl MemoryCache {
    pub fn new(ttl: Duration) -> Self {
        fn build<K, V>(ttl: Duration, capacity: u64) -> Moka<K, V>
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Moka::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        }
        MemoryCache {
            ids: build(ttl, 100_000),
            applications: build(ttl, 100_000),
            chats: build(ttl, 100_000),
            pending_chats: build(ttl, 100_000),
            messages: build(ttl, 200_000),
            message_writes: Mutex::new(()),
            generations: Mutex::new(HashMap::new()),
            pages: build(ttl, 10_000),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn application_id(&self, token: &str) -> CoreResult<Option<AppId>> {
        Ok(self.ids.get(token).await)
    }

    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()> {
        self.ids.insert(token.to_string(), app).await;
        Ok(())
    }

    async fn application(&self, app: AppId) -> CoreResult<Option<Application>> {
        Ok(self.applications.get(&app).await)
    }

    async fn put_application(&self, application: &Application) -> CoreResult<()> {
        self.applications
            .insert(application.id, application.clone())
            .await;
        Ok(())
    }

    async fn forget_applications(&self, apps: &[AppId]) -> CoreResult<()> {
        for app in apps {
            self.applications.invalidate(app).await;
        }
        Ok(())
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        Ok(self.chats.get(&(app, number)).await)
    }

    async fn put_chat(&self, chat: &Chat) -> CoreResult<()> {
        self.chats
            .insert((chat.application_id, chat.number), chat.clone())
            .await;
        Ok(())
    }

    async fn forget_chats(&self, chats: &[ChatKey]) -> CoreResult<()> {
        for key in chats {
            self.chats.invalidate(key).await;
        }
        Ok(())
    }

    async fn pending_chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        Ok(self.pending_chats.get(&(app, number)).await)
    }

    async fn put_pending_chat(&self, chat: &Chat) -> CoreResult<()> {
        self.pending_chats
            .insert((chat.application_id, chat.number), chat.clone())
            .await;
        Ok(())
    }

    async fn message(&self, key: MessageKey) -> CoreResult<Option<Message>> {
        Ok(self.messages.get(&key).await)
    }

    async fn put_message(&self, message: &Message) -> CoreResult<()> {
        let key = (message.application_id, message.chat_number, message.number);
        let _serialised = self.message_writes.lock().await;
        let newer = self
            .messages
            .get(&key)
            .await
            .is_none_or(|cached| cached.version <= message.version);
        if newer {
            self.messages.insert(key, message.clone()).await;
        }
        Ok(())
    }

    async fn list_generation(&self, scope: &ListScope) -> CoreResult<u64> {
        Ok(self
            .generations
            .lock()
            .await
            .get(scope)
            .copied()
            .unwrap_or(0))
    }

    async fn list_page(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
    ) -> CoreResult<Option<Vec<u8>>> {
        let body = self
            .pages
            .get(&(scope.clone(), generation, page.to_string()))
            .await;
        Ok(body.map(|b| b.as_ref().clone()))
    }

    async fn put_list(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
        body: &[u8],
    ) -> CoreResult<()> {
        self.pages
            .insert(
                (scope.clone(), generation, page.to_string()),
                Arc::new(body.to_vec()),
            )
            .await;
        Ok(())
    }

    async fn bump_lists(&self, scopes: &[ListScope]) -> CoreResult<()> {
        let mut generations = self.generations.lock().await;
        for scope in scopes {
            *generations.entry(scope.clone()).or_insert(0) += 1;
        }
        Ok(())
    }
}
