//! In-process adapters of standalone mode: number allocation, the cache and live announcements.

use chatsys_core::telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache as Moka;
use moka::policy::EvictionPolicy;
use tokio::sync::Mutex;

use chatsys_core::domain::{AppId, Application, Chat, ChatEvent, Message};
use chatsys_core::error::CoreResult;
use chatsys_core::plan::{ChatKey, MessageKey};
use chatsys_core::ports::{
    Announcements, Announcer, Cache, CachedToken, Heard, ListScope, Numbers, VERSION_HEAD_LIFETIME,
    VersionClaim, VersionFor,
};

/// Counters in memory. Each is missing until its first use restarts it from the floor (every number
/// stored or queued), so a restart of the process continues where the last run stopped.
#[derive(Default)]
pub struct LocalNumbers {
    chats: std::sync::Mutex<HashMap<AppId, u64>>,
    messages: std::sync::Mutex<HashMap<ChatKey, u64>>,
    versions: std::sync::Mutex<Versions>,
}

/// The last version handed out, and the newest of each message edited within
/// [`VERSION_HEAD_LIFETIME`] with when it was handed out. Expired ones are dropped whenever the table
/// has doubled since it was last pruned, so it holds about twice the messages of the last hour.
#[derive(Debug)]
struct Versions {
    last: u64,
    /// The newest version of each message, whether it was a delete's, and when it was handed out.
    heads: HashMap<MessageKey, (u64, bool, Instant)>,
    pruned_at: usize,
}

impl Default for Versions {
    fn default() -> Self {
        Versions {
            last: 0,
            heads: HashMap::new(),
            pruned_at: VERSION_HEADS_PRUNED_FROM,
        }
    }
}

/// The table is not pruned below this many heads.
const VERSION_HEADS_PRUNED_FROM: usize = 1024;

impl LocalNumbers {
    pub fn new() -> Self {
        LocalNumbers::default()
    }

    fn allocate_chat(&self, chats: &mut HashMap<AppId, u64>, app: AppId, counter: u64) -> u64 {
        let number = counter + 1;
        chats.insert(app, number);
        lock(&self.messages).entry((app, number)).or_insert(0);
        number
    }
}

#[async_trait]
impl Numbers for LocalNumbers {
    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }

    async fn init_application(&self, app: AppId) -> CoreResult<()> {
        lock(&self.chats).entry(app).or_insert(0);
        Ok(())
    }

    async fn next_chat(&self, app: AppId) -> CoreResult<Option<u64>> {
        let mut chats = lock(&self.chats);
        let Some(&counter) = chats.get(&app) else {
            return Ok(None);
        };
        Ok(Some(self.allocate_chat(&mut chats, app, counter)))
    }

    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<Option<u64>> {
        Ok(lock(&self.messages).get_mut(&(app, chat)).map(|counter| {
            *counter += 1;
            *counter
        }))
    }

    async fn restart_chats(&self, app: AppId, floor: u64) -> CoreResult<u64> {
        let mut chats = lock(&self.chats);
        let counter = *chats.entry(app).or_insert(floor);
        Ok(self.allocate_chat(&mut chats, app, counter))
    }

    async fn restart_messages(&self, app: AppId, chat: u64, floor: u64) -> CoreResult<u64> {
        let mut messages = lock(&self.messages);
        let counter = messages.entry((app, chat)).or_insert(floor);
        *counter += 1;
        Ok(*counter)
    }

    async fn next_version(
        &self,
        message: MessageKey,
        seen: u64,
        expected: Option<&[u64]>,
        change: VersionFor,
    ) -> CoreResult<VersionClaim> {
        let mut versions = lock(&self.versions);
        let now = Instant::now();
        let head = match versions.heads.get(&message) {
            Some(&(_, true, kept)) if now.duration_since(kept) < VERSION_HEAD_LIFETIME => {
                return Ok(VersionClaim::Deleted);
            }
            Some(&(head, false, kept)) if now.duration_since(kept) < VERSION_HEAD_LIFETIME => {
                head.max(seen)
            }
            _ => seen,
        };
        if let Some(expected) = expected
            && !expected.contains(&head)
        {
            return Ok(VersionClaim::Moved(head));
        }
        let time = chrono::Utc::now().timestamp_micros() as u64;
        versions.last = (versions.last + 1).max(time);
        let version = versions.last;
        versions
            .heads
            .insert(message, (version, change == VersionFor::Delete, now));
        if versions.heads.len() > versions.pruned_at * 2 {
            versions
                .heads
                .retain(|_, (_, _, kept)| now.duration_since(*kept) < VERSION_HEAD_LIFETIME);
            versions.pruned_at = versions.heads.len().max(VERSION_HEADS_PRUNED_FROM);
        }
        Ok(VersionClaim::Granted {
            version,
            previous: head,
        })
    }

    async fn withdraw_version(
        &self,
        message: MessageKey,
        version: u64,
        previous: u64,
        change: VersionFor,
    ) -> CoreResult<()> {
        let mut versions = lock(&self.versions);
        if let Some((head, deleted, kept)) = versions.heads.get_mut(&message)
            && *head == version
            && *deleted == (change == VersionFor::Delete)
        {
            (*head, *deleted, *kept) = (previous, false, Instant::now());
        }
        Ok(())
    }
}

/// The counters are only held for an update in memory, never across an await.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an entry costs beyond its body (keys, the other fields, moka's bookkeeping), counted so many
/// small entries weigh something too.
const ENTRY_OVERHEAD: usize = 256;

fn message_weight(message: &Message) -> u32 {
    weight(message.body.len())
}

fn page_weight(key: &(ListScope, u64, String), body: &Arc<Vec<u8>>) -> u32 {
    weight(key.2.len() + body.len())
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// Counts a rendered list page too large to cache (it is answered from the store every time).
pub(crate) fn page_too_large(bytes: usize, max_page_bytes: usize) -> bool {
    let too_large = bytes > max_page_bytes;
    if too_large {
        metrics::counter!(telemetry::CACHE_PAGES_TOO_LARGE.name).increment(1);
    }
    too_large
}

/// The shared cache, in process. Same rules as the Redis one: messages keep the higher version, list
/// pages live under a generation that a commit bumps.
///
/// Messages and list pages are bounded by bytes, half of `max_bytes` each, since one page of a thousand
/// 64 KiB messages is 63 MB; the other entries are small and bounded by count. Messages are evicted
/// least recently used first, so a write just made is always admitted (read your own writes).
pub struct MemoryCache {
    /// `None` marks a forgotten token.
    ids: Moka<String, Option<AppId>>,
    applications: Moka<AppId, Application>,
    chats: Moka<ChatKey, Chat>,
    pending_chats: Moka<ChatKey, Chat>,
    messages: Moka<MessageKey, Message>,
    message_writes: Mutex<()>,
    /// The same for chats, which keep the later change.
    chat_writes: Mutex<()>,
    generations: Mutex<HashMap<ListScope, u64>>,
    pages: Moka<(ListScope, u64, String), Arc<Vec<u8>>>,
    max_page_bytes: usize,
}

impl MemoryCache {
    /// `max_bytes` bounds the messages and list pages held; a page over `max_page_bytes` is not kept.
    pub fn new(ttl: Duration, max_bytes: u64, max_page_bytes: usize) -> Self {
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
        let half = max_bytes / 2;
        MemoryCache {
            ids: build(ttl, 100_000),
            applications: build(ttl, 100_000),
            chats: build(ttl, 100_000),
            pending_chats: build(ttl, 100_000),
            messages: Moka::builder()
                .max_capacity(half)
                .weigher(|_, message| message_weight(message))
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(ttl)
                .build(),
            message_writes: Mutex::new(()),
            chat_writes: Mutex::new(()),
            generations: Mutex::new(HashMap::new()),
            pages: Moka::builder()
                .max_capacity(half)
                .weigher(page_weight)
                .time_to_live(ttl)
                .build(),
            max_page_bytes,
        }
    }

    /// The bytes the messages and list pages held now weigh (after pending evictions ran), counted
    /// entry by entry.
    pub async fn held_bytes(&self) -> u64 {
        self.messages.run_pending_tasks().await;
        self.pages.run_pending_tasks().await;
        let messages: u64 = self
            .messages
            .iter()
            .map(|(_, message)| u64::from(message_weight(&message)))
            .sum();
        let pages: u64 = self
            .pages
            .iter()
            .map(|(key, body)| u64::from(page_weight(&key, &body)))
            .sum();
        messages + pages
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn application_id(&self, token: &str) -> CoreResult<CachedToken> {
        Ok(match self.ids.get(token).await {
            None => CachedToken::Unknown,
            Some(Some(app)) => CachedToken::Names(app),
            Some(None) => CachedToken::Replaced,
        })
    }

    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()> {
        self.ids.entry(token.to_string()).or_insert(Some(app)).await;
        Ok(())
    }

    async fn forget_token(&self, token: &str) -> CoreResult<()> {
        self.ids.insert(token.to_string(), None).await;
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

    async fn put_chats(&self, chats: &[Chat]) -> CoreResult<()> {
        let _serialised = self.chat_writes.lock().await;
        for chat in chats {
            let key = (chat.application_id, chat.number);
            let later = self
                .chats
                .get(&key)
                .await
                .is_none_or(|cached| cached.freshness() <= chat.freshness());
            if later {
                self.chats.insert(key, chat.clone()).await;
            }
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
            .is_none_or(|cached| cached.freshness() <= message.freshness());
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
        if page_too_large(body.len(), self.max_page_bytes) {
            return Ok(());
        }
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

/// Announcements within one process (standalone mode): the ingest loop announces, the streams hear.
/// Every chat is heard, so following is nothing; a listener that falls behind hears `Interrupted`.
pub struct LocalAnnouncements {
    heard: tokio::sync::broadcast::Sender<Heard>,
}

/// Announcements a listener may be behind before it is told it missed some.
const LOCAL_ANNOUNCEMENTS: usize = 4096;

impl Default for LocalAnnouncements {
    fn default() -> Self {
        LocalAnnouncements {
            heard: tokio::sync::broadcast::channel(LOCAL_ANNOUNCEMENTS).0,
        }
    }
}

#[async_trait]
impl Announcer for LocalAnnouncements {
    async fn announce(&self, events: &[ChatEvent]) -> CoreResult<()> {
        for chat in events.chunk_by(|a, b| {
            (a.message.application_id, a.message.chat_number)
                == (b.message.application_id, b.message.chat_number)
        }) {
            // No listener (no stream open) is not a failure.
            let _ = self.heard.send(Heard::Changes(chat.into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Announcements for LocalAnnouncements {
    async fn follow(&self, _: ChatKey) -> CoreResult<()> {
        Ok(())
    }

    async fn unfollow(&self, _: ChatKey) -> CoreResult<()> {
        Ok(())
    }

    fn listen(&self) -> tokio::sync::broadcast::Receiver<Heard> {
        self.heard.subscribe()
    }
}
