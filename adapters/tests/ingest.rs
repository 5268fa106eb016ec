//! The ingest loop against the embedded store and cache, a scripted command source that acknowledges the
//! way RabbitMQ does (an acknowledgement covers every earlier delivery), and a scripted search port:
//! nothing may be acknowledged that the index did not take.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatsys_adapters::{memory, sqlite};
use chatsys_core::command::Command;
use chatsys_core::domain::{AppId, Application, Chat, ChatEvent, Message};
use chatsys_core::error::{CoreError, CoreResult};
use chatsys_core::ingest::{self, IngestHealth, IngestPorts, IngestSettings};
use chatsys_core::plan::MessageKey;
use chatsys_core::ports::{
    Announcer, BatchLimits, Cache, CachedToken, CommandSource, Delivery, IndexRefusal, ListScope,
    Search, SearchPage, Store,
};
use chatsys_core::search_text::SearchRequest;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq)]
enum Settled {
    /// Every delivery up to this tag (RabbitMQ's `multiple: true`).
    AckedUpTo(u64),
    DeadLettered {
        tag: u64,
        reason: String,
        payload: Vec<u8>,
    },
}

#[derive(Default)]
struct Log {
    settled: Vec<Settled>,
    /// What the index held when each acknowledgement was made.
    indexed_at_ack: Vec<BTreeSet<MessageKey>>,
    /// Each announcement: its changes' numbers and messages, what the index held then, and how many
    /// acknowledgements had been made before it.
    announced: Vec<Announced>,
}

#[derive(Debug)]
struct Announced {
    changes: Vec<(u64, u64)>,
    indexed: BTreeSet<MessageKey>,
    acks_before: usize,
}

/// Records what is announced, against what the index and the source have seen by then.
struct ScriptedAnnouncer {
    log: Arc<Mutex<Log>>,
    search: Arc<ScriptedSearch>,
}

#[async_trait]
impl Announcer for ScriptedAnnouncer {
    async fn announce(&self, events: &[ChatEvent]) -> CoreResult<()> {
        let indexed = self.search.indexed.lock().unwrap().clone();
        let mut log = self.log.lock().unwrap();
        let acks_before = log
            .settled
            .iter()
            .filter(|s| matches!(s, Settled::AckedUpTo(_)))
            .count();
        log.announced.push(Announced {
            changes: events.iter().map(|e| (e.seq, e.message.number)).collect(),
            indexed,
            acks_before,
        });
        Ok(())
    }
}

struct ScriptedSource {
    batches: VecDeque<Vec<(u64, Command)>>,
    log: Arc<Mutex<Log>>,
    search: Arc<ScriptedSearch>,
}

#[async_trait]
impl CommandSource for ScriptedSource {
    async fn next_batch(&mut self, limits: &BatchLimits) -> CoreResult<Vec<Delivery>> {
        match self.batches.pop_front() {
            Some(batch) => Ok(batch
                .into_iter()
                .map(|(tag, command)| Delivery {
                    tag,
                    connection: 0,
                    lane: 0,
                    payload: command.encode(),
                    redelivered: false,
                    headers: Vec::new(),
                })
                .collect()),
            None => {
                tokio::time::sleep(limits.wait).await;
                Ok(Vec::new())
            }
        }
    }

    /// As `basic.ack` with `multiple` set: "the delivery tag is treated as 'up to and including'"
    /// (the AMQP 0-9-1 reference, class basic, method ack, field multiple).
    async fn ack(&mut self, deliveries: &[Delivery]) -> CoreResult<()> {
        if let Some(last) = deliveries.iter().map(|d| d.tag).max() {
            let indexed = self.search.indexed.lock().unwrap().clone();
            let mut log = self.log.lock().unwrap();
            log.settled.push(Settled::AckedUpTo(last));
            log.indexed_at_ack.push(indexed);
        }
        Ok(())
    }

    async fn set_aside(
        &mut self,
        delivery: &Delivery,
        command: &[u8],
        reason: &str,
    ) -> CoreResult<()> {
        self.log
            .lock()
            .unwrap()
            .settled
            .push(Settled::DeadLettered {
                tag: delivery.tag,
                reason: reason.to_string(),
                payload: command.to_vec(),
            });
        Ok(())
    }
}

/// Fails its first `failures` calls with a non-transient error, and refuses the messages in `refuse`.
struct ScriptedSearch {
    failures: Mutex<u32>,
    refuse: Vec<MessageKey>,
    indexed: Mutex<BTreeSet<MessageKey>>,
}

#[async_trait]
impl Search for ScriptedSearch {
    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }

    async fn index(&self, messages: &[Message]) -> CoreResult<Vec<IndexRefusal>> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(CoreError::Rejected("mapping conflict on [body]".into()));
            }
        }
        let mut refused = Vec::new();
        for m in messages {
            let key = (m.application_id, m.chat_number, m.number);
            if self.refuse.contains(&key) {
                refused.push(IndexRefusal {
                    key,
                    reason: "mapper_parsing_exception".into(),
                });
            } else {
                self.indexed.lock().unwrap().insert(key);
            }
        }
        Ok(refused)
    }

    async fn search(&self, _: &SearchRequest) -> CoreResult<SearchPage> {
        Ok(SearchPage::default())
    }

    async fn forget(&self, _: &[(AppId, u64)], _: &[AppId]) -> CoreResult<()> {
        Ok(())
    }
}

fn create_message(app: AppId, number: u64) -> Command {
    let at = chatsys_core::domain::now();
    Command::CreateMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at,
        number,
        body: format!("message {number}"),
        at,
    }
}

/// Runs the loop over two batches (tags 1–2 and 3–4, messages 1–4 of chat 1) until every tag is
/// settled, and returns the log and the last health the loop reported.
fn memory_cache() -> Arc<dyn Cache> {
    Arc::new(memory::MemoryCache::new(
        Duration::from_secs(60),
        1 << 20,
        1 << 16,
    ))
}

async fn ingest_two_batches(
    search: ScriptedSearch,
    cache: Arc<dyn Cache>,
) -> (Log, watch::Receiver<IngestHealth>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite::open(&dir.path().join("chatsys.db")).await.unwrap();
    let store = Arc::new(sqlite::SqliteStore::new(pool));
    store.migrate().await.unwrap();
    let app = store
        .create_application("tok", "app", chatsys_core::domain::now())
        .await
        .unwrap()
        .id;
    let search = Arc::new(search);
    let log = Arc::new(Mutex::new(Log::default()));
    let mut source = ScriptedSource {
        batches: VecDeque::from([
            vec![(1, create_message(app, 1)), (2, create_message(app, 2))],
            vec![(3, create_message(app, 3)), (4, create_message(app, 4))],
        ]),
        log: log.clone(),
        search: search.clone(),
    };
    let ports = IngestPorts {
        store,
        announcer: Arc::new(ScriptedAnnouncer {
            log: log.clone(),
            search: search.clone(),
        }),
        search,
        cache,
    };
    let settings = IngestSettings {
        batch: BatchLimits {
            commands: 2,
            bytes: 1 << 20,
            wait: Duration::from_millis(5),
        },
        max_attempts: 3,
    };
    let (stop, stopped) = watch::channel(false);
    let (health, health_rx) = watch::channel(IngestHealth::default());
    let settled = log.clone();
    let run = tokio::spawn(async move {
        ingest::run(&mut source, &ports, &settings, stopped, health).await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = settled
            .lock()
            .unwrap()
            .settled
            .contains(&Settled::AckedUpTo(4));
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every delivery was settled: {:?}",
            settled.lock().unwrap().settled
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    run.await.unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());
    (log, health_rx)
}

/// A failure of the index that is not marked transient is retried, not skipped: no acknowledgement
/// (which covers every earlier tag) is made before the messages it covers are indexed.
#[tokio::test]
async fn nothing_is_acknowledged_before_the_index_takes_it() {
    let (log, health) = ingest_two_batches(
        ScriptedSearch {
            failures: Mutex::new(2),
            refuse: Vec::new(),
            indexed: Mutex::new(BTreeSet::new()),
        },
        memory_cache(),
    )
    .await;
    for (settled, indexed) in log.settled.iter().zip(&log.indexed_at_ack) {
        let Settled::AckedUpTo(last) = settled else {
            panic!("nothing is dead-lettered here: {settled:?}");
        };
        let covered: Vec<u64> = (1..=*last).filter(|n| *n <= 4).collect();
        for number in covered {
            assert!(
                indexed.iter().any(|k| k.2 == number),
                "message {number} acknowledged (up to tag {last}) before it was indexed: {indexed:?}"
            );
        }
    }
    assert!(health.borrow().search_error.is_none(), "recovered");
}

/// A message the index refuses for good goes to the dead-letter queue with the reason and a command
/// that restores it, before any acknowledgement covers its tag.
#[tokio::test]
async fn a_refused_message_is_dead_lettered_with_its_reason() {
    let (log, _) = ingest_two_batches(
        ScriptedSearch {
            failures: Mutex::new(0),
            refuse: vec![(1, 1, 2)],
            indexed: Mutex::new(BTreeSet::new()),
        },
        memory_cache(),
    )
    .await;
    let dead: Vec<&Settled> = log
        .settled
        .iter()
        .filter(|s| matches!(s, Settled::DeadLettered { .. }))
        .collect();
    assert_eq!(dead.len(), 1, "{:?}", log.settled);
    let Settled::DeadLettered {
        tag,
        reason,
        payload,
    } = dead[0]
    else {
        unreachable!()
    };
    assert_eq!(*tag, 2);
    assert!(reason.contains("stored but not searchable"), "{reason}");
    assert!(reason.contains("mapper_parsing_exception"), "{reason}");
    match Command::decode(payload).unwrap() {
        Command::CreateMessage { number, body, .. } => {
            assert_eq!((number, body.as_str()), (2, "message 2"))
        }
        other => panic!("{other:?}"),
    }
    let dead_at = log.settled.iter().position(|s| s == dead[0]).unwrap();
    let first_covering = log
        .settled
        .iter()
        .position(|s| matches!(s, Settled::AckedUpTo(n) if *n >= 2))
        .unwrap();
    assert!(dead_at < first_covering, "{:?}", log.settled);
}

/// Each change is announced once, numbered in its chat's order, only once its message is indexed, and
/// before the acknowledgement that covers it (a crash in between loses an announcement, never a change:
/// the streams read the store).
#[tokio::test]
async fn changes_are_announced_in_order_once_indexed_and_before_they_are_acknowledged() {
    let (log, _) = ingest_two_batches(
        ScriptedSearch {
            failures: Mutex::new(1),
            refuse: Vec::new(),
            indexed: Mutex::new(BTreeSet::new()),
        },
        memory_cache(),
    )
    .await;
    let changes: Vec<(u64, u64)> = log
        .announced
        .iter()
        .flat_map(|a| a.changes.clone())
        .collect();
    assert_eq!(
        changes,
        vec![(1, 1), (2, 2), (3, 3), (4, 4)],
        "{:?}",
        log.announced
    );
    for announced in &log.announced {
        for (_, number) in &announced.changes {
            assert!(
                announced.indexed.iter().any(|k| k.2 == *number),
                "message {number} announced before it was indexed: {announced:?}"
            );
        }
        let covering_acks = log
            .settled
            .iter()
            .position(|s| {
                matches!(s, Settled::AckedUpTo(n) if announced.changes.iter().any(|(_, m)| m <= n))
            })
            .expect("acknowledged");
        assert!(
            announced.acks_before <= covering_acks,
            "acknowledged before it was announced: {:?} {:?}",
            log.announced,
            log.settled
        );
    }
}

/// The in-process cache, with a slow write of chats, that notes the chat each bump of the lists finds.
struct SlowChatsCache {
    inner: Arc<dyn Cache>,
    /// For each bump of a chat's list of messages: the chat's count the cache held as it began.
    counts_at_bump: Mutex<Vec<Option<u64>>>,
}

#[async_trait]
impl Cache for SlowChatsCache {
    async fn application_id(&self, token: &str) -> CoreResult<CachedToken> {
        self.inner.application_id(token).await
    }
    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()> {
        self.inner.put_application_id(token, app).await
    }
    async fn forget_token(&self, token: &str) -> CoreResult<()> {
        self.inner.forget_token(token).await
    }
    async fn application(&self, app: AppId) -> CoreResult<Option<Application>> {
        self.inner.application(app).await
    }
    async fn put_application(&self, application: &Application) -> CoreResult<()> {
        self.inner.put_application(application).await
    }
    async fn forget_applications(&self, apps: &[AppId]) -> CoreResult<()> {
        self.inner.forget_applications(apps).await
    }
    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.inner.chat(app, number).await
    }
    async fn put_chats(&self, chats: &[Chat]) -> CoreResult<()> {
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        for scope in scopes {
            if let ListScope::Messages(app, chat) = scope {
                let cached = self.inner.chat(*app, *chat).await?;
                let count = cached.map(|chat| chat.messages_count);
                self.counts_at_bump.lock().unwrap().push(count);
            }
        }
        self.inner.bump_lists(scopes).await
    }
}

/// A client that finds a new page of messages (its list's generation moved) and then reads the chat
/// must find the chat's count as of that page: the chats are written to the cache before the lists
/// they are in move on.
#[tokio::test]
async fn a_chat_is_cached_before_its_lists_move_on() {
    let cache = Arc::new(SlowChatsCache {
        inner: memory_cache(),
        counts_at_bump: Mutex::default(),
    });
    let search = ScriptedSearch {
        failures: Mutex::new(0),
        refuse: Vec::new(),
        indexed: Mutex::new(BTreeSet::new()),
    };
    ingest_two_batches(search, cache.clone()).await;
    let counts = cache.counts_at_bump.lock().unwrap().clone();
    assert!(!counts.is_empty(), "no list was bumped");
    assert!(
        counts
            .iter()
            .all(|count| matches!(count, Some(n) if *n > 0)),
        "a list moved on before its chat was cached: {counts:?}"
    );
    assert_eq!(counts.last(), Some(&Some(4)), "{counts:?}");
}
