//! The chat service: every operation of the REST API, over the ports. Creation of chats and messages
//! allocates a number, publishes a durable command and records the new state for read-your-writes; it
//! never writes to the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::command::Command;
use crate::domain::{self, AppId, Application, Chat, Message, Page};
use crate::error::{Backend, CoreError, CoreResult};
use crate::group_commit::{GroupCommit, GroupLimits};
use crate::idempotency::{self, Claim, IdempotencyKey, Intent, KeyCells, KeyScope, Keys};
use crate::list_cache::ListCache;
use crate::live::{LiveChats, LiveSettings};
use crate::message_creates::{MessageCreates, NewMessage, restart_message_counter};
use crate::pages::{ListPage, PageLink, render_page};
use crate::ports::{self, ListScope, NumberFloor, VersionClaim, VersionFor};
use crate::quota::WriteQuota;
use crate::reads::CachedReads;
use crate::render::Render;
use crate::search_text::{SearchCursor, SearchOrder, SearchRequest, SearchScope, SearchTerms};

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
    pub resource: T,
    pub replayed: bool,
}

/// An application as its create answers it: it has no chats yet.
#[derive(Debug, Clone)]
pub struct NewApplication {
    pub token: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The use cases of the REST API. What they read comes through [`CachedReads`] and [`ListCache`], the
/// cache layers in front of the store; what they write goes to the queue.
pub struct ChatService {
    ports: Ports,
    reads: CachedReads,
    lists: ListCache,
    live: Arc<LiveChats>,
    /// How clients see what the use cases read.
    render: Arc<dyn Render>,
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

impl ChatService {
    /// Over `ports`, its lists and events rendered by `render`.
    pub fn new(ports: Ports, render: Arc<dyn Render>) -> Self {
        Self::with_live(
            ports,
            render,
            LiveSettings::default(),
            watch::channel(false).1,
        )
    }

    /// With the live streams' settings, and the signal that ends them (the process shutting down).
    pub fn with_live(
        ports: Ports,
        render: Arc<dyn Render>,
        settings: LiveSettings,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        let live = LiveChats::new(
            ports.store.clone(),
            ports.announcements.clone(),
            render.clone(),
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
            reads: CachedReads::new(ports.store.clone(), ports.cache.clone()),
            lists: ListCache::new(ports.cache.clone()),
            ports,
            live,
            render,
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

    /// Keeps up to `max_bytes` of rendered list pages in process (see [`ListCache::with_hot_pages`]).
    pub fn with_hot_pages(mut self, max_bytes: u64) -> Self {
        self.lists = self.lists.with_hot_pages(max_bytes);
        self
    }

    // Applications are rare and small: written straight to the store.

    pub async fn create_application(
        &self,
        name: &str,
        key: Option<&IdempotencyKey>,
    ) -> CoreResult<Created<NewApplication>> {
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
            self.reads.token_names(token, application.id).await;
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
        let resource = NewApplication {
            token,
            name,
            created_at: at,
        };
        Ok(Created { resource, replayed })
    }

    /// Gives the application a new token and returns it; the old token names nothing from then on, on
    /// every replica within [`TOKEN_RECHECK`]. The old token is marked in the shared cache first, so
    /// that a failure leaves it working rather than the client without a token.
    pub async fn rotate_token(&self, token: &str) -> CoreResult<Application> {
        let app = self.reads.application_id(token).await?;
        self.reads.token_replaced(token).await?;
        let fresh = domain::generate_token();
        self.ports
            .store
            .replace_token(app, &fresh, domain::now())
            .await?;
        self.reads.token_gone(token, app).await;
        self.application(&fresh).await
    }

    /// Whether the token names an application (now: a replaced token stops working within
    /// [`TOKEN_RECHECK`]).
    pub async fn authorize(&self, token: &str) -> CoreResult<()> {
        self.reads.application_id(token).await.map(drop)
    }

    pub async fn rename_application(&self, token: &str, name: &str) -> CoreResult<Application> {
        domain::validate_name(name)?;
        let app = self.reads.application_id(token).await?;
        self.ports
            .store
            .rename_application(app, name, domain::now())
            .await?;
        self.reads.application_changed(app).await;
        self.application(token).await
    }

    pub async fn application(&self, token: &str) -> CoreResult<Application> {
        let app = self.reads.application_id(token).await?;
        self.reads.application(app).await
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
        self.reads.token_replaced(token).await?;
        self.ports
            .store
            .delete_application(application.id, domain::now())
            .await?;
        self.reads.token_gone(token, application.id).await;
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
            Some(token) => Some(self.reads.application_id(token).await?),
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
            |rows| self.render.applications(rows),
        ))
    }

    // Chats.

    pub async fn create_chat(
        &self,
        token: &str,
        key: Option<&IdempotencyKey>,
    ) -> CoreResult<Created<Chat>> {
        let app = self.reads.application_id(token).await?;
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
                self.reads.chat_accepted(&chat).await;
            }
            Ok(intent)
        };
        let (intent, replayed) = self.once(scope, key, &["chat"], make, act).await?;
        let chat = intent
            .command()
            .and_then(Command::created_chat)
            .ok_or(CoreError::KeyReused)?;
        Ok(Created {
            resource: chat,
            replayed,
        })
    }

    pub async fn chat(&self, token: &str, number: u64) -> CoreResult<Chat> {
        let app = self.reads.application_id(token).await?;
        self.reads.chat(app, number).await
    }

    /// Deletes a chat with its messages (queued; the chat and its messages answer 404 at once on this
    /// replica, within [`CHAT_RECHECK`] on the others). Its number is never used again.
    pub async fn delete_chat(&self, token: &str, number: u64) -> CoreResult<()> {
        let app = self.reads.application_id(token).await?;
        self.spend(app, 1)?;
        let chat = self.reads.chat(app, number).await?;
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
        let tombstone = Chat {
            messages_count: 0,
            updated_at: at,
            last_event: chat.last_event + 1,
            deleted: true,
            ..chat
        };
        self.reads.chat_deleted(&tombstone).await;
        Ok(())
    }

    pub async fn list_chats(&self, token: &str, page: Page) -> CoreResult<ListPage> {
        let app = self.reads.application_id(token).await?;
        let store = self.ports.store.clone();
        let render = self.render.clone();
        self.lists
            .list(ListScope::Chats(app), page, || async move {
                let rows = store.list_chats(app, page.scan()).await?;
                Ok(render_page(
                    rows,
                    page,
                    |c| c.number.to_string(),
                    |rows| render.chats(rows),
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
    ) -> CoreResult<Created<Message>> {
        domain::validate_body(body)?;
        let app = self.reads.application_id(token).await?;
        let chat_created_at = self.reads.chat_birth(app, chat).await?;
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
                resource: message,
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
                self.reads.message_changed(&message).await;
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
            resource: message,
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
    ) -> CoreResult<Message> {
        domain::validate_body(body)?;
        let app = self.reads.application_id(token).await?;
        let chat_created_at = self.reads.chat_birth(app, chat).await?;
        self.spend(app, WriteQuota::writes_of(body))?;
        let current = self.reads.message(app, chat, number).await?;
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
        self.reads.message_changed(&message).await;
        Ok(message)
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
        let app = self.reads.application_id(token).await?;
        let chat_created_at = self.reads.chat_birth(app, chat).await?;
        self.spend(app, 1)?;
        let current = self.reads.message(app, chat, number).await?;
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
        self.reads
            .message_changed(&current.tombstone(version, at))
            .await;
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
    pub async fn message(&self, token: &str, chat: u64, number: u64) -> CoreResult<Message> {
        let app = self.reads.application_id(token).await?;
        self.reads.chat_birth(app, chat).await?;
        self.reads.message(app, chat, number).await
    }

    pub async fn list_messages(&self, token: &str, chat: u64, page: Page) -> CoreResult<ListPage> {
        let app = self.reads.application_id(token).await?;
        self.reads.chat_birth(app, chat).await?;
        let store = self.ports.store.clone();
        let render = self.render.clone();
        self.lists
            .list(ListScope::Messages(app, chat), page, || async move {
                let rows = store.list_messages(app, chat, page.scan()).await?;
                Ok(ListPage {
                    last_event: Some(rows.last_event),
                    ..render_page(
                        rows.messages,
                        page,
                        |m| m.number.to_string(),
                        |rows| render.messages(rows),
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
        let app = self.reads.application_id(token).await?;
        if let Some(chat) = chat {
            self.reads.chat_birth(app, chat).await?;
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
        Ok(ListPage {
            json: self.render.found(&messages),
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
            let exists = match self.reads.chat_birth(app, chat).await {
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
        let app = self.reads.application_id(token).await?;
        self.reads.chat_birth(app, chat).await?;
        self.live.open((app, chat), after).await
    }
}

/// How often a request waiting for another that holds its idempotency key looks again.
const KEY_POLL: Duration = Duration::from_millis(50);

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
