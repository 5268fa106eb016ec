//! The cached reader in front of the store: what the use cases look up (a token's application, an
//! application, a chat, a message) comes from memos in process, then the shared cache, then the store,
//! and what they change is recorded here for read-your-writes. Each memo says how fresh it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::sync::Cache as LocalCache;

use crate::domain::{self, AppId, Application, Chat, Message};
use crate::error::{CoreError, CoreResult};
use crate::plan::ChatKey;
use crate::ports::{Cache, CachedToken, Store};
use crate::telemetry;

/// How long a token's application is trusted in process: a replaced token stops working on every
/// replica at most this long after it was replaced.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(2);

/// How long a chat is trusted to exist in process: a deleted chat's messages answer 404 on every replica
/// at most this long after the delete (at once on the replica that took it, and for the chat itself).
pub const CHAT_RECHECK: Duration = Duration::from_secs(1);

/// How long a token the store did not know is answered 404 without asking again. Tokens are generated
/// by the server, so one unknown now becomes known only if it was guessed before it was created.
pub const UNKNOWN_TOKEN_RECHECK: Duration = Duration::from_secs(10);

/// Unknown tokens held at most (about 100 bytes each).
const UNKNOWN_TOKENS_HELD: usize = 100_000;

pub struct CachedReads {
    store: Arc<dyn Store>,
    cache: Arc<dyn Cache>,
    /// A token's application, fresh for [`TOKEN_RECHECK`] (a token can be replaced).
    app_ids: LocalCache<String, (AppId, Instant)>,
    /// Tokens the store named no application, for [`UNKNOWN_TOKEN_RECHECK`]: a client repeating a
    /// guess costs no query. Bounded in entries, like the known ones.
    unknown_tokens: LocalCache<String, Instant>,
    /// A chat's creation time, which never changes, fresh for [`CHAT_RECHECK`] (a chat can be deleted).
    chat_births: LocalCache<ChatKey, (DateTime<Utc>, Instant)>,
}

impl CachedReads {
    pub fn new(store: Arc<dyn Store>, cache: Arc<dyn Cache>) -> Self {
        CachedReads {
            store,
            cache,
            app_ids: LocalCache::new(100_000),
            unknown_tokens: LocalCache::new(UNKNOWN_TOKENS_HELD),
            chat_births: LocalCache::new(1_000_000),
        }
    }

    /// A token's application. A token this process knew keeps working while the shared cache knows
    /// nothing of it and the store is down (an outage of the store is no reason to refuse a token
    /// that worked a moment ago); one the cache marks replaced is only ever answered by the store.
    pub async fn application_id(&self, token: &str) -> CoreResult<AppId> {
        if !domain::plausible_token(token) {
            return Err(CoreError::NotFound("application"));
        }
        let known = self.app_ids.get(token);
        if let Some((app, checked)) = known
            && checked.elapsed() < TOKEN_RECHECK
        {
            return Ok(app);
        }
        if self
            .unknown_tokens
            .get(token)
            .is_some_and(|checked| checked.elapsed() < UNKNOWN_TOKEN_RECHECK)
        {
            return Err(CoreError::NotFound("application"));
        }
        let cached = soft(self.cache.application_id(token).await);
        let app = match cached {
            CachedToken::Names(app) => Some(app),
            CachedToken::Unknown | CachedToken::Replaced => None,
        };
        let app = match counted("token", app) {
            Some(app) => app,
            None => match self.store.application_by_token(token).await {
                Ok(None) => {
                    self.unknown_tokens
                        .insert(token.to_string(), Instant::now());
                    return Err(CoreError::NotFound("application"));
                }
                Ok(Some(application)) if application.deleted => {
                    return Err(CoreError::NotFound("application"));
                }
                Ok(Some(application)) => {
                    soft(self.cache.put_application_id(token, application.id).await);
                    application.id
                }
                // Kept for another TOKEN_RECHECK, so that the store is asked once per period.
                Err(error) if error.is_transient() && cached == CachedToken::Unknown => {
                    let (app, _) = known.ok_or(error)?;
                    app
                }
                Err(error) => return Err(error),
            },
        };
        self.app_ids
            .insert(token.to_string(), (app, Instant::now()));
        Ok(app)
    }

    /// A chat that exists (stored or accepted); a deleted one is not found.
    pub async fn chat(&self, app: AppId, number: u64) -> CoreResult<Chat> {
        let found = match counted("chat", soft(self.cache.chat(app, number).await)) {
            Some(chat) => Some(chat),
            None => match self.store.chat(app, number).await? {
                Some(chat) => {
                    soft(self.cache.put_chats(std::slice::from_ref(&chat)).await);
                    Some(chat)
                }
                None => soft(self.cache.pending_chat(app, number).await),
            },
        };
        found
            .filter(|chat| !chat.deleted)
            .ok_or(CoreError::NotFound("chat"))
    }

    /// A chat's creation time, which also proves it exists (stored or accepted). A chat this process
    /// knew keeps working while the store and the cache cannot say (an outage of the database is no
    /// reason to refuse creates into a chat that took them a moment ago); one found deleted does not.
    pub async fn chat_birth(&self, app: AppId, number: u64) -> CoreResult<DateTime<Utc>> {
        let known = self.chat_births.get(&(app, number));
        if let Some((at, checked)) = known
            && checked.elapsed() < CHAT_RECHECK
        {
            return Ok(at);
        }
        match self.chat(app, number).await {
            Ok(chat) => {
                self.chat_births
                    .insert((app, number), (chat.created_at, Instant::now()));
                Ok(chat.created_at)
            }
            Err(error) if error.is_transient() => known.map(|(at, _)| at).ok_or(error),
            Err(error) => {
                self.chat_births.remove(&(app, number));
                Err(error)
            }
        }
    }

    /// A message that exists (stored or accepted); a deleted one is not found.
    pub async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Message> {
        let key = (app, chat, number);
        let message = match counted("message", soft(self.cache.message(key).await)) {
            Some(message) => message,
            None => {
                let message = self
                    .store
                    .message(app, chat, number)
                    .await?
                    .ok_or(CoreError::NotFound("message"))?;
                soft(self.cache.put_message(&message).await);
                message
            }
        };
        if message.deleted {
            return Err(CoreError::NotFound("message"));
        }
        Ok(message)
    }

    /// An application that exists, from the shared cache or the store.
    pub async fn application(&self, app: AppId) -> CoreResult<Application> {
        if let Some(cached) = counted("application", soft(self.cache.application(app).await)) {
            return Ok(cached);
        }
        let application = self
            .store
            .application(app)
            .await?
            .filter(|application| !application.deleted)
            .ok_or(CoreError::NotFound("application"))?;
        soft(self.cache.put_application(&application).await);
        Ok(application)
    }

    // What the use cases changed, recorded for read-your-writes.

    /// A new application's token: every replica rechecks tokens in the shared cache, and one it holds
    /// needs no store there.
    pub async fn token_names(&self, token: &str, app: AppId) {
        soft(self.cache.put_application_id(token, app).await);
        self.app_ids
            .insert(token.to_string(), (app, Instant::now()));
    }

    /// Marks a token replaced in the shared cache, before the store forgets it: no replica answers it
    /// from the cache from then on. A failure here fails the change.
    pub async fn token_replaced(&self, token: &str) -> CoreResult<()> {
        self.cache.forget_token(token).await
    }

    /// A token the store no longer names: forgotten here, with its application's record.
    pub async fn token_gone(&self, token: &str, app: AppId) {
        self.app_ids.remove(token);
        self.application_changed(app).await;
    }

    pub async fn application_changed(&self, app: AppId) {
        soft(self.cache.forget_applications(&[app]).await);
    }

    /// A chat accepted (queued, not yet stored): it exists from now on.
    pub async fn chat_accepted(&self, chat: &Chat) {
        soft(self.cache.put_pending_chat(chat).await);
        self.chat_births.insert(
            (chat.application_id, chat.number),
            (chat.created_at, Instant::now()),
        );
    }

    /// A chat deleted: its tombstone answers from now on.
    pub async fn chat_deleted(&self, tombstone: &Chat) {
        self.chat_births
            .remove(&(tombstone.application_id, tombstone.number));
        soft(self.cache.put_chats(std::slice::from_ref(tombstone)).await);
    }

    /// A message's new state (an edit, or a delete's tombstone), queued.
    pub async fn message_changed(&self, message: &Message) {
        soft(self.cache.remember_message(message).await);
    }
}

/// A cache failure is a miss: the store answers instead.
/// Counts a cache lookup as a hit or a miss, by kind.
pub(crate) fn counted<T>(kind: &'static str, found: Option<T>) -> Option<T> {
    let result = if found.is_some() { "hit" } else { "miss" };
    metrics::counter!(telemetry::CACHE_LOOKUPS.name, "kind" => kind, "result" => result)
        .increment(1);
    found
}

pub(crate) fn soft<T: Default>(result: CoreResult<T>) -> T {
    result.unwrap_or_else(|e| {
        metrics::counter!(telemetry::CACHE_ERRORS.name).increment(1);
        tracing::debug!(error = %e, "cache unavailable, using the store");
        T::default()
    })
}
