//! One trait per port. Each has a real adapter (MySQL, Redis, RabbitMQ, OpenSearch) and an embedded one
//! (SQLite, in-process, tantivy) in `adapters`, and both pass the same conformance tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::command::Command;
use crate::domain::{AppId, Application, Chat, ChatEvent, Message, Scan};
use crate::error::CoreResult;
use crate::plan::{ChatKey, MessageKey};
use crate::search_text::{SearchCursor, SearchRequest};

/// What one applied batch changed, for the cache and the search index.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub chats: Vec<ChatKey>,
    /// The stored state of every chat the batch changed (created, or added a change to), after it.
    pub stored_chats: Vec<Chat>,
    pub applications: Vec<AppId>,
    /// The stored state of every message the batch touched, after the batch.
    pub messages: Vec<Message>,
    /// The changes the batch made, numbered in their chats' order: what live streams announce.
    pub events: Vec<ChatEvent>,
    /// Chats the batch's commands delete (newly, or again on a redelivery): their messages are to be
    /// purged from the store and the index.
    pub deleted_chats: Vec<ChatKey>,
    /// Deleted applications the batch's commands purge.
    pub purged_applications: Vec<AppId>,
}

impl Applied {
    /// Adds what a later batch changed; a message in both keeps both states, the later one last.
    pub fn absorb(&mut self, later: Applied) {
        self.chats.extend(later.chats);
        self.stored_chats.extend(later.stored_chats);
        self.applications.extend(later.applications);
        self.messages.extend(later.messages);
        self.events.extend(later.events);
        self.deleted_chats.extend(later.deleted_chats);
        self.purged_applications.extend(later.purged_applications);
    }
}

/// Messages read for a page, and the number of their chat's latest change at the time (0 for none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageRows {
    pub messages: Vec<Message>,
    pub last_event: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn migrate(&self) -> CoreResult<()>;
    async fn ping(&self) -> CoreResult<()>;

    async fn create_application(
        &self,
        token: &str,
        name: &str,
        at: DateTime<Utc>,
    ) -> CoreResult<Application>;
    async fn rename_application(&self, id: AppId, name: &str, at: DateTime<Utc>) -> CoreResult<()>;
    /// Gives the application a new token; the old one names nothing from then on.
    async fn replace_token(&self, id: AppId, token: &str, at: DateTime<Utc>) -> CoreResult<()>;
    async fn application_by_token(&self, token: &str) -> CoreResult<Option<Application>>;
    async fn application(&self, id: AppId) -> CoreResult<Option<Application>>;
    /// Applications in creation order, after the one with token `after`.
    async fn list_applications(
        &self,
        after: Option<AppId>,
        limit: u32,
    ) -> CoreResult<Vec<Application>>;

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>>;
    /// An application's chats along one walk of their numbers, in the order walked.
    async fn list_chats(&self, app: AppId, scan: Scan) -> CoreResult<Vec<Chat>>;
    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>>;
    /// A chat's messages along one walk of their numbers, in the order walked, with the chat's
    /// latest change as of the same read: a client that opens the chat's stream after that change
    /// misses no change these rows do not show.
    async fn list_messages(&self, app: AppId, chat: u64, scan: Scan) -> CoreResult<MessageRows>;

    /// The highest chat number stored for an application, and the highest message number of a chat.
    async fn max_chat_number(&self, app: AppId) -> CoreResult<u64>;
    async fn max_message_number(&self, app: AppId, chat: u64) -> CoreResult<u64>;

    /// A chat's changes numbered above `after`, in order, at most `limit` of them and of their bodies
    /// at most `max_bytes` (one at least, whatever its size): each message once,
    /// in the state it has now and at the place of its latest change in the whole log (so reading page
    /// after page never sends a message twice). `from` is where the reader's catch-up began (`after`
    /// for its first page): a message created above it comes as `Created`, since the reader never saw
    /// it. A client that saw every change up to `from` and then these pages has the chat's present state.
    async fn chat_events(
        &self,
        app: AppId,
        chat: u64,
        from: u64,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> CoreResult<Vec<ChatEvent>>;
    /// The number of a chat's latest change (0 for none yet, or no such chat).
    async fn last_chat_event(&self, app: AppId, chat: u64) -> CoreResult<u64>;

    /// Applies a batch in one transaction, idempotently, keeping the counts exact. Commands of deleted
    /// applications are left out.
    async fn apply(&self, commands: &[Command]) -> CoreResult<Applied>;
    /// Marks an application deleted: its token names nothing from then on, and batches leave its
    /// commands out. Its rows stay until [`Store::purge_application`].
    async fn delete_application(&self, id: AppId, at: DateTime<Utc>) -> CoreResult<()>;
    /// Removes a deleted chat's messages and change log, a bounded number of rows per statement; its
    /// tombstone stays. Idempotent.
    async fn purge_chat(&self, app: AppId, chat: u64) -> CoreResult<()>;
    /// Removes a deleted application's chats (each purged) and then the application. Idempotent.
    async fn purge_application(&self, app: AppId) -> CoreResult<()>;
    /// Recomputes counts that drifted from the rows; returns how many were fixed.
    async fn repair_counts(&self) -> CoreResult<u64>;
}

/// Allocates chat numbers, message numbers and edit versions, atomically across every API replica.
/// A counter that is missing (lost from Redis, or not yet loaded by this process) is never guessed:
/// `next_chat` and `next_message` answer `None`, and the caller restarts it above a floor it computes
/// from the store and the queue (see [`NumberFloor`]), so no adapter reaches back into them.
#[async_trait]
pub trait Numbers: Send + Sync {
    async fn ping(&self) -> CoreResult<()>;
    /// Marks a new application's chat counter as started at 0.
    async fn init_application(&self, app: AppId) -> CoreResult<()>;
    async fn next_chat(&self, app: AppId) -> CoreResult<Option<u64>>;
    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<Option<u64>>;
    /// The next message number of each chat, in order (a chat named twice gets two), at once.
    async fn next_messages(&self, chats: &[ChatKey]) -> CoreResult<Vec<Option<u64>>> {
        let mut numbers = Vec::with_capacity(chats.len());
        for (app, chat) in chats {
            numbers.push(self.next_message(*app, *chat).await?);
        }
        Ok(numbers)
    }
    /// Starts a missing chat counter at `floor` (one started meanwhile is kept) and allocates from it.
    async fn restart_chats(&self, app: AppId, floor: u64) -> CoreResult<u64>;
    /// Starts a missing message counter at `floor` (one started meanwhile is kept) and allocates from it.
    async fn restart_messages(&self, app: AppId, chat: u64, floor: u64) -> CoreResult<u64>;
    /// The version of an edit of `message`: strictly increasing over the whole system, so the last
    /// edit accepted is the one that wins; a time in microseconds since the epoch (an edit's
    /// `updated_at` is read from it). The version handed out last for each message is kept for
    /// [`VERSION_HEAD_LIFETIME`] (`seen`, the newest the caller read, stands in for one not kept).
    /// With `expected`, a version is handed out only while the message's newest is one of them, in
    /// the same atomic step: of edits conditioned on one version, one wins, on every replica.
    /// A version for a delete (`change`) is the message's last: from then on, while it is kept, no
    /// version is handed out for the message ([`VersionClaim::Deleted`]).
    async fn next_version(
        &self,
        message: MessageKey,
        seen: u64,
        expected: Option<&[u64]>,
        change: VersionFor,
    ) -> CoreResult<VersionClaim>;
    /// Takes back a version handed out for a change that was never published: the message's newest
    /// is `previous` again, unless another version was handed out since.
    async fn withdraw_version(
        &self,
        message: MessageKey,
        version: u64,
        previous: u64,
        change: VersionFor,
    ) -> CoreResult<()>;
}

/// How long the newest version handed out for a message is kept: far longer than an edit takes to be
/// stored, after which what the caller read (the store's or the cache's state) is as new.
pub const VERSION_HEAD_LIFETIME: Duration = Duration::from_secs(3600);

/// What a version is handed out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionFor {
    Edit,
    Delete,
}

/// What asking for a change's version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionClaim {
    /// The change's version, from now on the message's newest, and the newest before it.
    Granted { version: u64, previous: u64 },
    /// The message's newest version, which is none the change was conditioned on: nothing was handed
    /// out.
    Moved(u64),
    /// The message was deleted: nothing was handed out.
    Deleted,
}

/// Where a lost counter restarts: above every number that may already have been handed out.
#[async_trait]
pub trait NumberFloor: Send + Sync {
    async fn chat_floor(&self, app: AppId) -> CoreResult<u64>;
    async fn message_floor(&self, app: AppId, chat: u64) -> CoreResult<u64>;
}

/// The durable command queue, publishing side.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn ping(&self) -> CoreResult<()>;
    /// Returns once the broker has durably stored the command.
    async fn publish(&self, command: &Command) -> CoreResult<()>;
    /// Messages waiting to be consumed.
    async fn backlog(&self) -> CoreResult<u64>;
    /// Commands waiting to be consumed, at most (a message may carry several).
    async fn queued_commands_at_most(&self) -> CoreResult<u64> {
        self.backlog().await
    }
}

#[derive(Debug)]
pub struct Delivery {
    pub tag: u64,
    /// Which connection of the source delivered it: a tag is only valid on its own connection.
    pub connection: u64,
    /// Which of the source's queues delivered it, on a channel of its own: a tag is also only valid on
    /// its own channel.
    pub lane: usize,
    /// One command, or an envelope of several (see [`crate::envelope`]).
    pub payload: Vec<u8>,
    pub redelivered: bool,
    /// The message's headers that hold text, kept on whatever is set aside from it.
    pub headers: Vec<(String, String)>,
}

/// How large a batch of deliveries may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Commands, counting each of an envelope's: a batch holds more only when its one delivery does.
    pub commands: usize,
    /// Payload bytes: a batch holds more only when its one delivery is larger.
    pub bytes: usize,
    /// How long to wait for more once the first delivery has arrived.
    pub wait: Duration,
}

/// The durable command queue, consuming side: deliveries stay unacknowledged until `ack`.
#[async_trait]
pub trait CommandSource: Send {
    /// Deliveries within the limits, waiting for the first. An empty batch says the source has just
    /// (re)connected.
    async fn next_batch(&mut self, limits: &BatchLimits) -> CoreResult<Vec<Delivery>>;
    async fn ack(&mut self, deliveries: &[Delivery]) -> CoreResult<()>;
    /// Sends an encoded command taken from `delivery` (the whole payload, or one command of its
    /// envelope) to the dead-letter queue with the reason and the delivery's headers. The delivery
    /// itself is acknowledged with its batch, after everything else it holds is stored or set aside.
    async fn set_aside(
        &mut self,
        delivery: &Delivery,
        command: &[u8],
        reason: &str,
    ) -> CoreResult<()>;
}

/// What the shared cache holds for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachedToken {
    /// Nothing: never cached, expired, or lost with the cache (or the cache failed).
    #[default]
    Unknown,
    Names(AppId),
    /// Replaced by another token ([`Cache::forget_token`]): only the store may still answer for it.
    Replaced,
}

/// Shared cache: read-your-writes records and hot-path lookups. Every method may fail; callers treat
/// a failure as a miss.
#[async_trait]
pub trait Cache: Send + Sync {
    async fn application_id(&self, token: &str) -> CoreResult<CachedToken>;
    /// Caches a token's application, unless the token was forgotten meanwhile.
    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()>;
    /// A token replaced by another: never answered from the cache again, nor cached again by a lookup
    /// that read it from the store before it was replaced.
    async fn forget_token(&self, token: &str) -> CoreResult<()>;
    async fn application(&self, app: AppId) -> CoreResult<Option<Application>>;
    async fn put_application(&self, application: &Application) -> CoreResult<()>;
    async fn forget_applications(&self, apps: &[AppId]) -> CoreResult<()>;

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>>;
    /// Keeps, for each chat, whichever of the cached and the given state has the later change (a
    /// chat's counts only move with a change), so a state read before a commit never hides the
    /// commit's.
    async fn put_chats(&self, chats: &[Chat]) -> CoreResult<()>;
    /// A chat accepted but maybe not stored yet (read your own write).
    async fn pending_chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>>;
    async fn put_pending_chat(&self, chat: &Chat) -> CoreResult<()>;

    async fn message(&self, key: MessageKey) -> CoreResult<Option<Message>>;
    /// Keeps whichever of the cached and the given message has the higher version.
    async fn put_message(&self, message: &Message) -> CoreResult<()>;
    /// A message accepted but maybe not stored yet (read your own write), which the cache must not
    /// drop before it is stored; otherwise as `put_message`.
    async fn remember_message(&self, message: &Message) -> CoreResult<()> {
        self.put_message(message).await
    }
    /// The same for many messages at once.
    async fn remember_messages(&self, messages: &[Message]) -> CoreResult<()> {
        for message in messages {
            self.remember_message(message).await?;
        }
        Ok(())
    }
    /// The same for many messages at once (the worker's write-through after a batch).
    async fn put_messages(&self, messages: &[Message]) -> CoreResult<()> {
        for message in messages {
            self.put_message(message).await?;
        }
        Ok(())
    }

    /// The generation a list's pages are stored under now; a commit that changes the list bumps it. A
    /// generation never repeats, even after the cache lost it, so a page held under one is never
    /// taken for a later state of the list.
    async fn list_generation(&self, scope: &ListScope) -> CoreResult<u64>;
    /// A rendered page of a list, stored under that generation; `page` names the page within the list.
    async fn list_page(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
    ) -> CoreResult<Option<Vec<u8>>>;
    async fn put_list(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
        body: &[u8],
    ) -> CoreResult<()>;
    /// Makes every cached page of these lists stale.
    async fn bump_lists(&self, scopes: &[ListScope]) -> CoreResult<()>;
}

/// What a process following chats hears.
#[derive(Debug, Clone)]
pub enum Heard {
    /// Changes of one chat, in its order, as stored, cached and indexed.
    Changes(Arc<[ChatEvent]>),
    /// The connection to the announcements was lost (or this listener fell behind): whatever was
    /// announced meanwhile is unknown, and the store has it.
    Interrupted,
}

/// The worker's side of live streams: it announces each batch's changes once they are stored, cached
/// and indexed. At most once: an announcement lost on the way is read from the store instead.
#[async_trait]
pub trait Announcer: Send + Sync {
    async fn announce(&self, events: &[ChatEvent]) -> CoreResult<()>;
}

/// The API's side of live streams: the announcements of the chats this process follows.
#[async_trait]
pub trait Announcements: Send + Sync {
    /// Hears a chat's announcements from when this returns (while the connection holds).
    async fn follow(&self, chat: ChatKey) -> CoreResult<()>;
    async fn unfollow(&self, chat: ChatKey) -> CoreResult<()>;
    /// Everything heard from now on, for the chats followed (and possibly others).
    fn listen(&self) -> broadcast::Receiver<Heard>;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListScope {
    Chats(AppId),
    Messages(AppId, u64),
}

/// One page of search results, in the search's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchPage {
    pub messages: Vec<Message>,
    /// Where the next page starts: set when more matches may follow, either because the page is full
    /// or because the engine reached its budget first (a page may then be short, even empty).
    pub next: Option<SearchCursor>,
}

/// A message the search engine refused for a reason retrying cannot change (the rest were indexed).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRefusal {
    pub key: MessageKey,
    pub reason: String,
}

#[async_trait]
pub trait Search: Send + Sync {
    async fn ping(&self) -> CoreResult<()>;
    /// Indexes the stored state of these messages, replacing older versions (a deleted message's state
    /// removes it); re-indexing is harmless.
    /// A transient failure is an error (nothing is known to be indexed); refusals come back one by one.
    async fn index(&self, messages: &[Message]) -> CoreResult<Vec<IndexRefusal>>;
    /// The messages in the request's scope whose folded body holds every term of its query, in its
    /// order, from after its cursor, at most `limit` of them.
    async fn search(&self, request: &SearchRequest) -> CoreResult<SearchPage>;
    /// Removes every message of these chats and applications (deleted ones) from the index.
    async fn forget(&self, chats: &[ChatKey], applications: &[AppId]) -> CoreResult<()>;
}
