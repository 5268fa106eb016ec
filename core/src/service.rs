//! The chat service: every operation of the REST API, over the ports. Creation of chats and messages
//! allocates a number, publishes a durable command and records the new state for read-your-writes; it
//! never writes to the store.

use crate::telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use quick_cache::Weighter;
use quick_cache::sync::Cache as LocalCache;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::Command;
use crate::domain::{self, AppId, Chat, Message, Order, Page, Scan};
use crate::error::{Backend, CoreError, CoreResult};
use crate::group_commit::{GroupCommit, GroupLimits};
use crate::idempotency::{self, Claim, IdempotencyKey, Intent, KeyCells, KeyScope, Keys};
use crate::live::{LiveChats, LiveSettings};
use crate::message_creates::{MessageCreates, NewMessage, restart_message_counter};
use crate::plan::ChatKey;
use crate::ports::{self, CachedToken, ListScope, NumberFloor, VersionClaim, VersionFor};
use crate::quota::WriteQuota;
use crate::search_text::{SearchCursor, SearchOrder, SearchRequest, SearchScope, SearchTerms};
use crate::view::{ApplicationView, ChatView, FoundMessageView, MessageView};

#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn ports::Store>,
    pub numbers: Arc<dyn ports::Numbers>,
    /// Where a missing number counter restarts.
    pub floor: Arc<dyn NumberFloor>,
    pub queue: Arc<dyn ports::Queue>,
    pub cache: Arc<dyn ports::Cache>,
    pub search: Arc<dyn ports::Search>,
    /// What the workers announce they stored, for live streams.
    pub announcements: Arc<dyn ports::Announcements>,
    /// The records of idempotency keys.
    pub keys: Arc<dyn KeyCells>,
}

/// A created resource, and whether an earlier request with the same idempotency key created it (this
/// answer repeats that request's).
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub view: T,
    pub replayed: bool,
}

/// A rendered page of a list: the JSON array, the cursors of its neighbours, and for a chat's messages
/// the chat's latest change as of the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub json: Bytes,
    pub next: Option<PageLink>,
    pub prev: Option<PageLink>,
    pub last_event: Option<u64>,
}

/// Where a neighbouring page is: the `after` and `before` it is asked with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageLink {
    pub after: Option<String>,
    pub before: Option<String>,
}

impl PageLink {
    pub fn after(cursor: String) -> Self {
        PageLink {
            after: Some(cursor),
            before: None,
        }
    }

    pub fn before(cursor: String) -> Self {
        PageLink {
            after: None,
            before: Some(cursor),
        }
    }

    /// The query parameters naming the page.
    pub fn params(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [("after", &self.after), ("before", &self.before)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_deref()?)))
    }
}

/// A page of a list as rendered at one generation of the list.
type HotPageKey = (ListScope, u64, Page);

pub struct ChatService {
    ports: Ports,
    /// A token's application id, kept in process in front of Redis for [`TOKEN_RECHECK`] (a token
    /// can be replaced), and a chat's creation time, which never changes, for [`CHAT_RECHECK`] (a chat
    /// can be deleted).
    app_ids: LocalCache<String, (AppId, Instant)>,
    /// Tokens the store named no application, for [`UNKNOWN_TOKEN_RECHECK`]: a client repeating a
    /// guess costs no query. Bounded in entries, like the known ones.
    unknown_tokens: LocalCache<String, Instant>,
    chat_births: LocalCache<ChatKey, (DateTime<Utc>, Instant)>,
    /// Each list's generation and when Redis said so.
    list_generations: LocalCache<ListScope, (u64, Instant)>,
    /// Rendered pages held in process, so that a hot page is served without the network; keyed by the
    /// list's generation, they are exactly as fresh as `list_generations`. Bounded in bytes.
    hot_pages: Option<LocalCache<HotPageKey, ListPage, PageWeight>>,
    live: Arc<LiveChats>,
    keys: Keys,
    /// Each application's writes per second, when limited.
    quota: Option<WriteQuota>,
    /// Message creates without an idempotency key, in group commits.
    creates: GroupCommit<MessageCreates>,
}

/// Message creates taken in one group at most, and how many groups go through at once: while one
/// waits for its confirm, the next takes its numbers.
const CREATES_PER_GROUP: GroupLimits = GroupLimits {
    count: 256,
    bytes: 4 << 20,
    lanes: 2,
};

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

/// How long a list's generation is trusted in process before Redis is asked again.
const LIST_GENERATION_TTL: Duration = Duration::from_millis(250);

/// The size the hot-page cache expects of a page (100 messages of 200 bytes), to size its table.
const HOT_PAGE_TYPICAL_BYTES: u64 = 32 * 1024;

/// What a held page costs: its bytes and a little for its cursors, key and bookkeeping.
#[derive(Debug, Clone)]
struct PageWeight;

impl Weighter<HotPageKey, ListPage> for PageWeight {
    fn weight(&self, _key: &HotPageKey, page: &ListPage) -> u64 {
        (page.json.len() + 256) as u64
    }
}

impl ChatService {
    pub fn new(ports: Ports) -> Self {
        Self::with_live(ports, LiveSettings::default(), watch::channel(false).1)
    }

    /// With the live streams' settings, and the signal that ends them (the process shutting down).
    pub fn with_live(ports: Ports, settings: LiveSettings, stopped: watch::Receiver<bool>) -> Self {
        let live = LiveChats::new(
            ports.store.clone(),
            ports.announcements.clone(),
            settings,
            stopped,
        );
        let keys = Keys::new(ports.keys.clone());
        let creates = MessageCreates {
            numbers: ports.numbers.clone(),
            floor: ports.floor.clone(),
            queue: ports.queue.clone(),
            cache: ports.cache.clone(),
        };
        ChatService {
            creates: GroupCommit::start(creates, CREATES_PER_GROUP),
            ports,
            app_ids: LocalCache::new(100_000),
            unknown_tokens: LocalCache::new(UNKNOWN_TOKENS_HELD),
            chat_births: LocalCache::new(1_000_000),
            list_generations: LocalCache::new(100_000),
            hot_pages: None,
            live,
            keys,
            quota: None,
        }
    }

    /// Limits each application's writes (see [`WriteQuota`]); 0 leaves them unlimited.
    pub fn with_write_quota(mut self, writes_per_second: f64) -> Self {
        self.quota = WriteQuota::new(writes_per_second);
        self
    }

    /// Spends an application's quota for a write.
    fn spend(&self, app: AppId, writes: u32) -> CoreResult<()> {
        match &self.quota {
            Some(quota) => quota.spend(app, writes),
            None => Ok(()),
        }
    }

    /// Keeps up to `max_bytes` of rendered list pages in process (0: none), in front of the shared
    /// cache. Worth it where that cache is across the network; standalone's is in process already.
    pub fn with_hot_pages(mut self, max_bytes: u64) -> Self {
        self.hot_pages = (max_bytes > 0).then(|| {
            let pages = (max_bytes / HOT_PAGE_TYPICAL_BYTES).max(1) as usize;
            LocalCache::with_weighter(pages, max_bytes, PageWeight)
        });
        self
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    // Applications are rare and small: written straight to the store.

    pub async fn create_application(
        &self,
        name: &str,
        key: Option<&IdempotencyKey>,
    ) -> CoreResult<Created<ApplicationView>> {
        domain::validate_name(name)?;
        let make = || async {
            Ok(Intent::Application {
                token: domain::generate_token(),
                name: name.to_string(),
                at: domain::now(),
            })
        };
        let act = |intent: Intent| async move {
            let Intent::Application { token, name, at } = &intent else {
                return Err(CoreError::Rejected(
                    "an application's key names a command".into(),
                ));
            };
            // Acting an intent out again finds the application it created, under its token.
            let application = match self.ports.store.application_by_token(token).await? {
                Some(application) => application,
                None => {
                    self.ports
                        .store
                        .create_application(token, name, *at)
                        .await?
                }
            };
            self.ports.numbers.init_application(application.id).await?;
            // Every replica rechecks tokens in the shared cache; one it holds needs no store there.
            soft(
                self.ports
                    .cache
                    .put_application_id(token, application.id)
                    .await,
            );
            self.app_ids
                .insert(token.clone(), (application.id, Instant::now()));
            Ok(intent)
        };
        let (intent, replayed) = self
            .once(
                KeyScope::NewApplications,
                key,
                &["application", name],
                make,
                act,
            )
            .await?;
        let Intent::Application { token, name, at } = intent else {
            return Err(CoreError::KeyReused);
        };
        let view = ApplicationView {
            token,
            name,
            chats_count: 0,
            created_at: at,
            updated_at: at,
        };
        Ok(Created { view, replayed })
    }

    /// Gives the application a new token and returns it; the old token names nothing from then on, on
    /// every replica within [`TOKEN_RECHECK`]. The old token is marked in the shared cache first, so
    /// that a failure leaves it working rather than the client without a token.
    pub async fn rotate_token(&self, token: &str) -> CoreResult<ApplicationView> {
        let app = self.resolve(token).await?;
        self.ports.cache.forget_token(token).await?;
        let fresh = domain::generate_token();
        self.ports
            .store
            .replace_token(app, &fresh, domain::now())
            .await?;
        self.app_ids.remove(token);
        soft(self.ports.cache.forget_applications(&[app]).await);
        self.application(&fresh).await
    }

    /// Whether the token names an application (now: a replaced token stops working within
    /// [`TOKEN_RECHECK`]).
    pub async fn authorize(&self, token: &str) -> CoreResult<()> {
        self.resolve(token).await.map(drop)
    }

    pub async fn rename_application(&self, token: &str, name: &str) -> CoreResult<ApplicationView> {
        domain::validate_name(name)?;
        let app = self.resolve(token).await?;
        self.ports
            .store
            .rename_application(app, name, domain::now())
            .await?;
        soft(self.ports.cache.forget_applications(&[app]).await);
        self.application(token).await
    }

    pub async fn application(&self, token: &str) -> CoreResult<ApplicationView> {
        let app = self.resolve(token).await?;
        if let Some(cached) = counted("application", soft(self.ports.cache.application(app).await))
        {
            return Ok(ApplicationView::from(&cached));
        }
        let application = self
            .ports
            .store
            .application(app)
            .await?
            .filter(|application| !application.deleted)
            .ok_or(CoreError::NotFound("application"))?;
        soft(self.ports.cache.put_application(&application).await);
        Ok(ApplicationView::from(&application))
    }

    /// Deletes an application with everything in it: its token names nothing from now on (on every
    /// replica within [`TOKEN_RECHECK`]), and the worker removes its chats, messages and their index.
    /// Asked again, it queues the removal again, finishing what a failed attempt left.
    pub async fn delete_application(&self, token: &str) -> CoreResult<()> {
        if !domain::plausible_token(token) {
            return Err(CoreError::NotFound("application"));
        }
        let application = self
            .ports
            .store
            .application_by_token(token)
            .await?
            .ok_or(CoreError::NotFound("application"))?;
        // Marked first, so that no replica answers the token from the shared cache once the store
        // says it is deleted.
        self.ports.cache.forget_token(token).await?;
        self.ports
            .store
            .delete_application(application.id, domain::now())
            .await?;
        self.app_ids.remove(token);
        soft(
            self.ports
                .cache
                .forget_applications(&[application.id])
                .await,
        );
        self.ports
            .queue
            .publish(&Command::PurgeApplication {
                application_id: application.id,
            })
            .await
    }

    pub async fn list_applications(&self, after: Option<&str>, limit: u32) -> CoreResult<ListPage> {
        let after_id = match after {
            None => None,
            Some(token) => Some(self.resolve(token).await?),
        };
        let rows = self
            .ports
            .store
            .list_applications(after_id, limit + 1)
            .await?;
        Ok(render_page(
            rows,
            Page::first(limit),
            |a| a.token.clone(),
            |a| ApplicationView::from(a),
        ))
    }

    // Chats.

    pub async fn create_chat(
        &self,
        token: &str,
        key: Option<&IdempotencyKey>,
    ) -> CoreResult<Created<ChatView>> {
        let app = self.resolve(token).await?;
        self.spend(app, 1)?;
        let scope = KeyScope::Application { app, token };
        let make = || async {
            let number = match self.ports.numbers.next_chat(app).await? {
                Some(number) => number,
                None => {
                    let floor = self.ports.floor.chat_floor(app).await?;
                    self.ports.numbers.restart_chats(app, floor).await?
                }
            };
            Ok(Intent::Command {
                command: Command::CreateChat {
                    application_id: app,
                    number,
                    at: domain::now(),
                },
            })
        };
        let act = |intent: Intent| async move {
            self.publish(&intent).await?;
            if let Some(chat) = intent.command().and_then(Command::created_chat) {
                soft(self.ports.cache.put_pending_chat(&chat).await);
                self.chat_births
                    .insert((app, chat.number), (chat.created_at, Instant::now()));
            }
            Ok(intent)
        };
        let (intent, replayed) = self.once(scope, key, &["chat"], make, act).await?;
        let chat = intent
            .command()
            .and_then(Command::created_chat)
            .ok_or(CoreError::KeyReused)?;
        Ok(Created {
            view: ChatView::from(&chat),
            replayed,
        })
    }

    pub async fn chat(&self, token: &str, number: u64) -> CoreResult<ChatView> {
        let app = self.resolve(token).await?;
        self.load_chat(app, number)
            .await
            .map(|chat| ChatView::from(&chat))
    }

    /// Deletes a chat with its messages (queued; the chat and its messages answer 404 at once on this
    /// replica, within [`CHAT_RECHECK`] on the others). Its number is never used again.
    pub async fn delete_chat(&self, token: &str, number: u64) -> CoreResult<()> {
        let app = self.resolve(token).await?;
        self.spend(app, 1)?;
        let chat = self.load_chat(app, number).await?;
        let at = domain::now().max(chat.created_at);
        self.ports
            .queue
            .publish(&Command::DeleteChat {
                application_id: app,
                number,
                created_at: chat.created_at,
                at,
            })
            .await?;
        self.chat_births.remove(&(app, number));
        let tombstone = Chat {
            messages_count: 0,
            updated_at: at,
            last_event: chat.last_event + 1,
            deleted: true,
            ..chat
        };
        soft(
            self.ports
                .cache
                .put_chats(std::slice::from_ref(&tombstone))
                .await,
        );
        Ok(())
    }

    pub async fn list_chats(&self, token: &str, page: Page) -> CoreResult<ListPage> {
        let app = self.resolve(token).await?;
        let store = self.ports.store.clone();
        self.cached_list(ListScope::Chats(app), page, || async move {
            let rows = store.list_chats(app, page.scan()).await?;
            Ok(render_page(
                rows,
                page,
                |c| c.number.to_string(),
                |c| ChatView::from(c),
            ))
        })
        .await
    }

    // Messages.

    pub async fn create_message(
        &self,
        token: &str,
        chat: u64,
        body: &str,
        key: Option<&IdempotencyKey>,
    ) -> CoreResult<Created<MessageView>> {
        domain::validate_body(body)?;
        let app = self.resolve(token).await?;
        let chat_created_at = self.chat_birth(app, chat).await?;
        self.spend(app, WriteQuota::writes_of(body))?;
        let Some(key) = key else {
            let create = NewMessage {
                app,
                chat,
                chat_created_at,
                body: body.to_string(),
            };
            let message = self
                .creates
                .submit(body.len(), create)
                .await
                .unwrap_or_else(|| {
                    Err(CoreError::unavailable(
                        Backend::Queue,
                        "the message creates stopped",
                    ))
                })?;
            return Ok(Created {
                view: MessageView::from(&message),
                replayed: false,
            });
        };
        let scope = KeyScope::Application { app, token };
        let make = || async {
            let number = match self.ports.numbers.next_message(app, chat).await? {
                Some(number) => number,
                None => {
                    let (numbers, floor) = (self.ports.numbers.as_ref(), self.ports.floor.as_ref());
                    restart_message_counter(numbers, floor, (app, chat)).await?
                }
            };
            Ok(Intent::Command {
                command: Command::CreateMessage {
                    application_id: app,
                    chat_number: chat,
                    chat_created_at,
                    number,
                    body: body.to_string(),
                    at: domain::now(),
                },
            })
        };
        let act = |intent: Intent| async move {
            self.publish(&intent).await?;
            if let Some(message) = intent.command().and_then(Command::created_message) {
                soft(self.ports.cache.remember_message(&message).await);
            }
            Ok(intent)
        };
        let chat_text = chat.to_string();
        let (intent, replayed) = self
            .once(scope, Some(key), &["message", &chat_text, body], make, act)
            .await?;
        let message = intent
            .command()
            .and_then(Command::created_message)
            .ok_or(CoreError::KeyReused)?;
        Ok(Created {
            view: MessageView::from(&message),
            replayed,
        })
    }

    /// Publishes the command an intent holds.
    async fn publish(&self, intent: &Intent) -> CoreResult<()> {
        let command = intent
            .command()
            .ok_or_else(|| CoreError::Rejected("an application's intent has no command".into()))?;
        self.ports.queue.publish(command).await
    }

    /// Runs a create once per idempotency key: `make` decides what to do (allocating its number),
    /// `act` does it. Without a key it simply runs. With one, a request that finds the key finished
    /// answers what the first did; one that finds it held waits for it, then answers 409; one that
    /// finds it abandoned acts the recorded intent out again. Returns the intent acted out, and
    /// whether it was another request's.
    async fn once<Make, MakeFuture, Act, ActFuture>(
        &self,
        scope: KeyScope<'_>,
        key: Option<&IdempotencyKey>,
        request: &[&str],
        make: Make,
        act: Act,
    ) -> CoreResult<(Intent, bool)>
    where
        Make: FnOnce() -> MakeFuture,
        MakeFuture: Future<Output = CoreResult<Intent>>,
        Act: FnOnce(Intent) -> ActFuture,
        ActFuture: Future<Output = CoreResult<Intent>>,
    {
        let Some(key) = key else {
            return Ok((act(make().await?).await?, false));
        };
        let fingerprint = idempotency::fingerprint(request);
        let waiting_since = Instant::now();
        let mut held = loop {
            match self
                .keys
                .claim(scope, key, &fingerprint, idempotency::LEASE)
                .await?
            {
                Claim::Held(held) => break held,
                Claim::Finished(intent) => return Ok((intent, true)),
                Claim::Reused => return Err(CoreError::KeyReused),
                Claim::Busy if waiting_since.elapsed() < idempotency::WAIT_FOR_OWNER => {
                    tokio::time::sleep(KEY_POLL).await;
                }
                Claim::Busy => return Err(CoreError::KeyInFlight),
            }
        };
        let resumed = held.intent().cloned();
        let replayed = resumed.is_some();
        let acted = match resumed {
            Some(intent) => act(intent).await,
            None => match make().await {
                Ok(intent) => match self.keys.record(&mut held, &intent).await {
                    Ok(true) => act(intent).await,
                    Ok(false) => Err(CoreError::KeyInFlight),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        match acted {
            Ok(intent) => {
                // Unfinished, the record is acted out again by a retry after its lease: harmless.
                if let Err(e) = self.keys.finish(held).await {
                    tracing::warn!(error = %e, "an idempotency key could not be marked finished");
                }
                Ok((intent, replayed))
            }
            Err(e) => {
                if let Err(e) = self.keys.release(held).await {
                    tracing::warn!(error = %e, "an idempotency key could not be released");
                }
                Err(e)
            }
        }
    }

    /// Replaces a message's body. With `expected`, only while the message's newest version is one of
    /// those (else [`CoreError::VersionMoved`]), decided in the atomic step that hands out versions,
    /// so that of edits conditioned on one version exactly one is accepted, on any replica.
    pub async fn edit_message(
        &self,
        token: &str,
        chat: u64,
        number: u64,
        body: &str,
        expected: Option<&[u64]>,
    ) -> CoreResult<MessageView> {
        domain::validate_body(body)?;
        let app = self.resolve(token).await?;
        let chat_created_at = self.chat_birth(app, chat).await?;
        self.spend(app, WriteQuota::writes_of(body))?;
        let current = self.load_message(app, chat, number).await?;
        let (version, at) = self
            .change_message(&current, expected, VersionFor::Edit, |version, at| {
                Command::EditMessage {
                    application_id: app,
                    chat_number: chat,
                    chat_created_at,
                    number,
                    body: body.to_string(),
                    version,
                    created_at: current.created_at,
                    at,
                }
            })
            .await?;
        let message = Message {
            body: body.to_string(),
            version,
            updated_at: at,
            ..current
        };
        soft(self.ports.cache.remember_message(&message).await);
        Ok(MessageView::from(&message))
    }

    /// Deletes a message (queued; a read answers 404 at once). With `expected`, as an edit. A delete
    /// is a message's last change: an edit after it is not found, and one racing it ends deleted.
    pub async fn delete_message(
        &self,
        token: &str,
        chat: u64,
        number: u64,
        expected: Option<&[u64]>,
    ) -> CoreResult<()> {
        let app = self.resolve(token).await?;
        let chat_created_at = self.chat_birth(app, chat).await?;
        self.spend(app, 1)?;
        let current = self.load_message(app, chat, number).await?;
        let (version, at) = self
            .change_message(&current, expected, VersionFor::Delete, |version, at| {
                Command::DeleteMessage {
                    application_id: app,
                    chat_number: chat,
                    chat_created_at,
                    number,
                    version,
                    created_at: current.created_at,
                    at,
                }
            })
            .await?;
        soft(
            self.ports
                .cache
                .remember_message(&current.tombstone(version, at))
                .await,
        );
        Ok(())
    }

    /// Takes the next version of a message for a change, and publishes the command `command` makes of
    /// it and of the change's time. A change never published gives its version back, so that a retry
    /// conditioned on the version before it can still pass.
    async fn change_message(
        &self,
        current: &Message,
        expected: Option<&[u64]>,
        change: VersionFor,
        command: impl FnOnce(u64, DateTime<Utc>) -> Command,
    ) -> CoreResult<(u64, DateTime<Utc>)> {
        let key = (current.application_id, current.chat_number, current.number);
        let claim = self
            .ports
            .numbers
            .next_version(key, current.version, expected, change)
            .await?;
        let (version, previous) = match claim {
            VersionClaim::Granted { version, previous } => (version, previous),
            VersionClaim::Moved(newest) => return Err(CoreError::VersionMoved { newest }),
            VersionClaim::Deleted => return Err(CoreError::NotFound("message")),
        };
        // The version is a strictly increasing time in microseconds, taken in the atomic step that
        // orders the changes, so the change's time comes from it: of simultaneous edits, the one that
        // wins (the highest version) is the one whose answer shows the latest `updated_at`.
        let at = DateTime::from_timestamp_micros(version as i64)
            .unwrap_or_else(domain::now)
            .max(current.created_at);
        if let Err(error) = self.ports.queue.publish(&command(version, at)).await {
            if let Err(e) = self
                .ports
                .numbers
                .withdraw_version(key, version, previous, change)
                .await
            {
                tracing::warn!(error = %e, "a version not published could not be taken back");
            }
            return Err(error);
        }
        Ok((version, at))
    }

    /// A message of a chat that exists (a deleted chat's messages are not found).
    pub async fn message(&self, token: &str, chat: u64, number: u64) -> CoreResult<MessageView> {
        let app = self.resolve(token).await?;
        self.chat_birth(app, chat).await?;
        let message = self.load_message(app, chat, number).await?;
        Ok(MessageView::from(&message))
    }

    pub async fn list_messages(&self, token: &str, chat: u64, page: Page) -> CoreResult<ListPage> {
        let app = self.resolve(token).await?;
        self.chat_birth(app, chat).await?;
        let store = self.ports.store.clone();
        self.cached_list(ListScope::Messages(app, chat), page, || async move {
            let rows = store.list_messages(app, chat, page.scan()).await?;
            Ok(ListPage {
                last_event: Some(rows.last_event),
                ..render_page(
                    rows.messages,
                    page,
                    |m| m.number.to_string(),
                    |m| MessageView::from(m),
                )
            })
        })
        .await
    }

    /// Messages holding every term of `query`, in one chat (`chat`) or in every chat of the
    /// application, in `order`, paginated by the opaque cursor the previous page's `next` gave. Every
    /// match is reachable by following the pages.
    pub async fn search(
        &self,
        token: &str,
        chat: Option<u64>,
        query: &str,
        order: SearchOrder,
        after: Option<&str>,
        limit: u32,
    ) -> CoreResult<ListPage> {
        let terms = SearchTerms::parse(query)?;
        let app = self.resolve(token).await?;
        if let Some(chat) = chat {
            self.chat_birth(app, chat).await?;
        }
        let scope = SearchScope { app, chat };
        let after = after
            .map(|raw| SearchCursor::parse(raw, order, scope))
            .transpose()?;
        let found = self
            .ports
            .search
            .search(&SearchRequest {
                scope,
                terms,
                order,
                after,
                limit: limit as usize,
            })
            .await?;
        let messages = match chat {
            // The chat was found above.
            Some(_) => found.messages,
            None => self.in_live_chats(app, found.messages).await?,
        };
        let views: Vec<FoundMessageView> = messages.iter().map(FoundMessageView::from).collect();
        Ok(ListPage {
            json: serde_json::to_vec(&views).expect("views serialise").into(),
            next: found.next.map(|next| PageLink::after(next.render(scope))),
            ..ListPage::default()
        })
    }

    /// The messages whose chat exists. The index may still hold a message of a chat deleted a moment
    /// ago, indexed by another worker after the chat left the index: a hit shows only while its chat
    /// exists. Each chat is asked once.
    async fn in_live_chats(&self, app: AppId, messages: Vec<Message>) -> CoreResult<Vec<Message>> {
        let mut live: HashMap<u64, bool> = HashMap::new();
        for chat in messages.iter().map(|m| m.chat_number) {
            if live.contains_key(&chat) {
                continue;
            }
            let exists = match self.chat_birth(app, chat).await {
                Ok(_) => true,
                Err(CoreError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            live.insert(chat, exists);
        }
        Ok(messages
            .into_iter()
            .filter(|m| live[&m.chat_number])
            .collect())
    }

    /// The chat's changes as an event stream, after `after` (or from now on without it).
    pub async fn chat_events(
        &self,
        token: &str,
        chat: u64,
        after: Option<u64>,
    ) -> CoreResult<impl futures::Stream<Item = bytes::Bytes> + Send + use<>> {
        let app = self.resolve(token).await?;
        self.chat_birth(app, chat).await?;
        self.live.open((app, chat), after).await
    }

    // Lookups.

    /// A token's application. A token this process knew keeps working while the shared cache knows
    /// nothing of it and the store is down (an outage of the store is no reason to refuse a token
    /// that worked a moment ago); one the cache marks replaced is only ever answered by the store.
    async fn resolve(&self, token: &str) -> CoreResult<AppId> {
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
        let cached = soft(self.ports.cache.application_id(token).await);
        let app = match cached {
            CachedToken::Names(app) => Some(app),
            CachedToken::Unknown | CachedToken::Replaced => None,
        };
        let app = match counted("token", app) {
            Some(app) => app,
            None => match self.ports.store.application_by_token(token).await {
                Ok(None) => {
                    self.unknown_tokens
                        .insert(token.to_string(), Instant::now());
                    return Err(CoreError::NotFound("application"));
                }
                Ok(Some(application)) if application.deleted => {
                    return Err(CoreError::NotFound("application"));
                }
                Ok(Some(application)) => {
                    soft(
                        self.ports
                            .cache
                            .put_application_id(token, application.id)
                            .await,
                    );
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
    async fn load_chat(&self, app: AppId, number: u64) -> CoreResult<Chat> {
        let found = match counted("chat", soft(self.ports.cache.chat(app, number).await)) {
            Some(chat) => Some(chat),
            None => match self.ports.store.chat(app, number).await? {
                Some(chat) => {
                    soft(
                        self.ports
                            .cache
                            .put_chats(std::slice::from_ref(&chat))
                            .await,
                    );
                    Some(chat)
                }
                None => soft(self.ports.cache.pending_chat(app, number).await),
            },
        };
        found
            .filter(|chat| !chat.deleted)
            .ok_or(CoreError::NotFound("chat"))
    }

    /// A chat's creation time, which also proves it exists (stored or accepted). A chat this process
    /// knew keeps working while the store and the cache cannot say (an outage of the database is no
    /// reason to refuse creates into a chat that took them a moment ago); one found deleted does not.
    async fn chat_birth(&self, app: AppId, number: u64) -> CoreResult<DateTime<Utc>> {
        let known = self.chat_births.get(&(app, number));
        if let Some((at, checked)) = known
            && checked.elapsed() < CHAT_RECHECK
        {
            return Ok(at);
        }
        match self.load_chat(app, number).await {
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
    async fn load_message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Message> {
        let key = (app, chat, number);
        let message = match counted("message", soft(self.ports.cache.message(key).await)) {
            Some(message) => message,
            None => {
                let message = self
                    .ports
                    .store
                    .message(app, chat, number)
                    .await?
                    .ok_or(CoreError::NotFound("message"))?;
                soft(self.ports.cache.put_message(&message).await);
                message
            }
        };
        if message.deleted {
            return Err(CoreError::NotFound("message"));
        }
        Ok(message)
    }

    /// The list's current generation, held in process for a moment: a commit shows in lists at most
    /// `LIST_GENERATION_TTL` later, well within the second the contract allows.
    async fn list_generation(&self, scope: &ListScope) -> Option<u64> {
        if let Some((generation, asked)) = self.list_generations.get(scope)
            && asked.elapsed() < LIST_GENERATION_TTL
        {
            return Some(generation);
        }
        let asked = Instant::now();
        let generation = soft(self.ports.cache.list_generation(scope).await.map(Some))?;
        self.list_generations
            .insert(scope.clone(), (generation, asked));
        Some(generation)
    }

    async fn cached_list<F, Fut>(
        &self,
        scope: ListScope,
        page: Page,
        load: F,
    ) -> CoreResult<ListPage>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = CoreResult<ListPage>>,
    {
        let Some(generation) = self.list_generation(&scope).await else {
            return load().await;
        };
        let hot_key = (scope, generation, page);
        if let Some(hot_pages) = &self.hot_pages {
            let held = hot_pages.get(&hot_key);
            if let Some(held) = counted("list_in_process", held) {
                return Ok(held);
            }
        }
        let scope = &hot_key.0;
        let page_key = cached_page_name(&page);
        let cached = soft(
            self.ports
                .cache
                .list_page(scope, generation, &page_key)
                .await,
        )
        .and_then(|bytes| decode_cached_page(&bytes));
        if let Some(cached) = counted("list", cached) {
            // Found in the shared cache, the page has been read before: only pages read twice take
            // this process's memory, so a crawl through a long history does not evict the hot ones.
            if let Some(hot_pages) = &self.hot_pages {
                hot_pages.insert(hot_key.clone(), cached.clone());
            }
            return Ok(cached);
        }
        let fresh = load().await?;
        let encoded = encode_cached_page(&fresh);
        soft(
            self.ports
                .cache
                .put_list(scope, generation, &page_key, &encoded)
                .await,
        );
        Ok(fresh)
    }
}

/// How often a request waiting for another that holds its idempotency key looks again.
const KEY_POLL: Duration = Duration::from_millis(50);

/// Renders the rows of one page, read in the order its scan walked with one row more than the page
/// holds: that row says whether the list goes on the way the scan walked; the other way, it goes on
/// when the page was asked for next to a cursor. The rows are shown in the page's order.
fn render_page<T, V: Serialize>(
    mut rows: Vec<T>,
    page: Page,
    cursor: impl Fn(&T) -> String,
    view: impl Fn(&T) -> V,
) -> ListPage {
    let walked_on = rows.len() > page.limit as usize;
    rows.truncate(page.limit as usize);
    // The page the walk would read next keeps its far bound; the one the other way starts afresh.
    let (above, below) = match page.scan() {
        Scan::Up { below: far, .. } => (
            rows.last().filter(|_| walked_on).map(|row| PageLink {
                after: Some(cursor(row)),
                before: far.map(|n| n.to_string()),
            }),
            rows.first()
                .filter(|_| page.has_cursor())
                .map(|row| PageLink::before(cursor(row))),
        ),
        Scan::Down { above: far, .. } => (
            rows.first()
                .filter(|_| page.has_cursor())
                .map(|row| PageLink::after(cursor(row))),
            rows.last().filter(|_| walked_on).map(|row| PageLink {
                after: (far > 0).then(|| far.to_string()),
                before: Some(cursor(row)),
            }),
        ),
    };
    if page.scans_backwards() {
        rows.reverse();
    }
    let (next, prev) = match page.order {
        Order::Asc => (above, below),
        Order::Desc => (below, above),
    };
    let views: Vec<V> = rows.iter().map(view).collect();
    ListPage {
        json: serde_json::to_vec(&views).expect("views serialise").into(),
        next,
        prev,
        last_event: None,
    }
}

/// A page's name within its list in the shared cache.
fn cached_page_name(page: &Page) -> String {
    let order = match page.order {
        Order::Asc => "asc",
        Order::Desc => "desc",
    };
    let cursor = match page.cursor {
        domain::Cursor::Start => String::new(),
        domain::Cursor::After(n) => format!(">{n}"),
        domain::Cursor::Before(n) => format!("<{n}"),
        domain::Cursor::Between(after, before) => format!(">{after}<{before}"),
    };
    format!("{order}{cursor}:{}", page.limit)
}

/// What a cached page holds besides its JSON, on the line before it.
#[derive(Serialize, Deserialize)]
struct CachedPageHead {
    next: Option<PageLink>,
    prev: Option<PageLink>,
    last_event: Option<u64>,
}

fn encode_cached_page(page: &ListPage) -> Vec<u8> {
    let head = CachedPageHead {
        next: page.next.clone(),
        prev: page.prev.clone(),
        last_event: page.last_event,
    };
    let mut out = serde_json::to_vec(&head).expect("a page head serialises");
    out.push(b'\n');
    out.extend_from_slice(&page.json);
    out
}

/// A page cached by an older release (or otherwise unreadable) is a miss.
fn decode_cached_page(bytes: &[u8]) -> Option<ListPage> {
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let head: CachedPageHead = serde_json::from_slice(&bytes[..split]).ok()?;
    Some(ListPage {
        json: Bytes::copy_from_slice(&bytes[split + 1..]),
        next: head.next,
        prev: head.prev,
        last_event: head.last_event,
    })
}

/// A cache failure is a miss: the store answers instead.
/// Counts a cache lookup as a hit or a miss, by kind.
fn counted<T>(kind: &'static str, found: Option<T>) -> Option<T> {
    let result = if found.is_some() { "hit" } else { "miss" };
    metrics::counter!(telemetry::CACHE_LOOKUPS.name, "kind" => kind, "result" => result)
        .increment(1);
    found
}

fn soft<T: Default>(result: CoreResult<T>) -> T {
    result.unwrap_or_else(|e| {
        metrics::counter!(telemetry::CACHE_ERRORS.name).increment(1);
        tracing::debug!(error = %e, "cache unavailable, using the store");
        T::default()
    })
}

/// Where a counter lost from the number allocator restarts: above the stored maximum, every command
/// still queued, and a margin for deliveries in flight (unacknowledged or being published).
pub struct ReseedFloor {
    pub store: Arc<dyn ports::Store>,
    pub queue: Arc<dyn ports::Queue>,
    pub margin: u64,
}

#[async_trait]
impl NumberFloor for ReseedFloor {
    async fn chat_floor(&self, app: AppId) -> CoreResult<u64> {
        let stored = self.store.max_chat_number(app).await?;
        Ok(stored + self.queue.queued_commands_at_most().await? + self.margin)
    }

    async fn message_floor(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let stored = self.store.max_message_number(app, chat).await?;
        Ok(stored + self.queue.queued_commands_at_most().await? + self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers_page(rows: Vec<u64>, page: Page) -> ListPage {
        render_page(rows, page, |n| n.to_string(), |n| *n)
    }

    fn after(n: &str) -> Option<PageLink> {
        Some(PageLink::after(n.to_string()))
    }

    fn before(n: &str) -> Option<PageLink> {
        Some(PageLink::before(n.to_string()))
    }

    #[test]
    fn a_page_with_one_extra_row_points_at_the_next_page() {
        let page = numbers_page(vec![1, 2, 3], Page::first(2));
        assert_eq!(page.json, &b"[1,2]"[..]);
        assert_eq!((page.next, page.prev), (after("2"), None));
        let last = numbers_page(vec![1, 2], Page::first(2));
        assert_eq!(last.next, None);
        let empty = numbers_page(Vec::new(), Page::first(2));
        assert_eq!(empty.json, &b"[]"[..]);
    }

    #[test]
    fn newest_first_pages_point_at_older_ones_next() {
        let newest = Page {
            order: Order::Desc,
            ..Page::first(2)
        };
        let page = numbers_page(vec![9, 8, 7], newest);
        assert_eq!(page.json, &b"[9,8]"[..]);
        assert_eq!((page.next, page.prev), (before("8"), None));
        let older = Page {
            cursor: domain::Cursor::Before(8),
            ..newest
        };
        let page = numbers_page(vec![7, 6], older);
        assert_eq!(page.json, &b"[7,6]"[..]);
        assert_eq!((page.next, page.prev), (None, after("7")));
    }

    #[test]
    fn a_page_read_against_its_order_is_shown_in_it() {
        // `order=desc&after=5`: the two messages right above 5, read upwards, shown newest first.
        let newer = Page {
            order: Order::Desc,
            cursor: domain::Cursor::After(5),
            ..Page::first(2)
        };
        let page = numbers_page(vec![6, 7, 8], newer);
        assert_eq!(page.json, &b"[7,6]"[..]);
        assert_eq!((page.next, page.prev), (before("6"), after("7")));
        // `before=5` in ascending order: the two right below 5, read downwards, shown oldest first.
        let earlier = Page {
            cursor: domain::Cursor::Before(5),
            ..Page::first(2)
        };
        let page = numbers_page(vec![4, 3], earlier);
        assert_eq!(page.json, &b"[3,4]"[..]);
        assert_eq!((page.next, page.prev), (after("4"), None));
    }

    #[test]
    fn a_page_between_two_numbers_keeps_its_far_bound_in_the_next_link() {
        // `after=2&before=9&limit=2`: 3 and 4, then the page after 4 still stops before 9.
        let range = Page {
            cursor: domain::Cursor::Between(2, 9),
            ..Page::first(2)
        };
        let page = numbers_page(vec![3, 4, 5], range);
        assert_eq!(page.json, &b"[3,4]"[..]);
        let next = PageLink {
            after: Some("4".into()),
            before: Some("9".into()),
        };
        assert_eq!((page.next, page.prev), (Some(next), before("3")));
    }

    #[test]
    fn cached_pages_round_trip() {
        for (next, last_event) in [(None, None), (after("42"), Some(7))] {
            let page = ListPage {
                json: bytes::Bytes::from_static(b"[{\"a\":\"x\\ny\"}]"),
                next,
                prev: before("3"),
                last_event,
            };
            assert_eq!(decode_cached_page(&encode_cached_page(&page)), Some(page));
        }
    }
}
