//! One conformance suite per port, run against the real adapter (MariaDB, Redis) and the embedded one
//! (SQLite, in process). The real services must be running: a missing one fails the test. Each test
//! removes the database and the Redis keys it made, passed or failed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatsys_adapters::{memory, mysql, redis, sqlite, sqlite_keys};
use chatsys_core::CoreResult;
use chatsys_core::command::Command;
use chatsys_core::domain::{AppId, ChangeKind, ChatEvent, Message, Page, Scan};
use chatsys_core::idempotency::{Claim, Held, IdempotencyKey, Intent, KeyCells, KeyScope, Keys};
use chatsys_core::ports::{
    Cache, CachedToken, ListScope, MessageRows, NumberFloor, Numbers, Store, VersionClaim,
    VersionFor,
};
use chrono::{DateTime, Utc};

// The conformance crate's, which this crate's tests cannot depend on (it depends on the adapters); these
// tests make no queue, so its queues' part goes unused here.
#[allow(dead_code)]
use chatsys_scratch as scratch;
use scratch::Scratch;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

fn unique() -> String {
    format!(
        "{}_{:08x}",
        chrono::Utc::now().timestamp(),
        rand::random::<u32>()
    )
}

async fn mysql_store() -> (Arc<dyn Store>, Scratch) {
    use sqlx::Connection;
    let server = std::env::var("CHATSYS_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let mut conn = sqlx::MySqlConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {server}: {e}"));
    let name = format!("chatsys_t{}", unique());
    let mut scratch = Scratch::default();
    scratch.owns_database(&server, &name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut conn)
        .await
        .unwrap();
    let store = mysql::MySqlStore::connect(&format!("{server}/{name}"), 8).unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), scratch)
}

async fn sqlite_store() -> (Arc<dyn Store>, Scratch) {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = sqlite::SqliteStore::new(sqlite::open(&dir.join("chatsys.db")).await.unwrap());
    store.migrate().await.unwrap();
    (Arc::new(store), Scratch::default())
}

fn create_chat(app: AppId, number: u64) -> Command {
    Command::CreateChat {
        application_id: app,
        number,
        at: at(number as i64),
    }
}

fn create_message(app: AppId, chat: u64, number: u64, body: &str) -> Command {
    Command::CreateMessage {
        application_id: app,
        chat_number: chat,
        chat_created_at: at(chat as i64),
        number,
        body: body.into(),
        at: at(100 + number as i64),
    }
}

fn edit_message(app: AppId, chat: u64, number: u64, body: &str, version: u64) -> Command {
    Command::EditMessage {
        application_id: app,
        chat_number: chat,
        chat_created_at: at(chat as i64),
        number,
        body: body.into(),
        version,
        created_at: at(100 + number as i64),
        at: at(1000 + version as i64),
    }
}

async fn messages(store: &dyn Store, app: AppId, chat: u64) -> Vec<Message> {
    store
        .list_messages(app, chat, Page::first(1000).scan())
        .await
        .unwrap()
        .messages
}

async fn app(store: &dyn Store) -> AppId {
    store
        .create_application(
            &chatsys_core::domain::generate_token(),
            "conformance",
            at(0),
        )
        .await
        .unwrap()
        .id
}

fn delete_message(app: AppId, chat: u64, number: u64, version: u64) -> Command {
    Command::DeleteMessage {
        application_id: app,
        chat_number: chat,
        chat_created_at: at(chat as i64),
        number,
        version,
        created_at: at(100 + number as i64),
        at: at(1000 + version as i64),
    }
}

fn delete_chat(app: AppId, chat: u64) -> Command {
    Command::DeleteChat {
        application_id: app,
        number: chat,
        created_at: at(chat as i64),
        at: at(5000),
    }
}

async fn counts(store: &dyn Store, app: AppId, chat: u64) -> (u64, u64) {
    let chats = store.application(app).await.unwrap().unwrap().chats_count;
    let messages = store
        .chat(app, chat)
        .await
        .unwrap()
        .map_or(0, |c| c.messages_count);
    (chats, messages)
}

/// A delete applied before the create it follows, between two edits, or twice, leaves the same
/// tombstone, and the count drops once: commands stay order-free with deletes among them.
async fn a_deleted_message_stays_deleted_whatever_the_order(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let commands = [
        create_chat(app, 1),
        create_message(app, 1, 1, "kept"),
        create_message(app, 1, 2, "doomed"),
        edit_message(app, 1, 2, "edited", 5),
        delete_message(app, 1, 2, 7),
        edit_message(app, 1, 2, "edited after", 9),
    ];
    for order in [[0, 1, 2, 3, 4, 5], [4, 5, 3, 2, 1, 0], [2, 4, 0, 1, 5, 3]] {
        let app = self::app(store.as_ref()).await;
        let retarget = |c: &Command| {
            let mut json = serde_json::to_value(c).unwrap();
            json["application_id"] = app.into();
            serde_json::from_value::<Command>(json).unwrap()
        };
        for i in order {
            store.apply(&[retarget(&commands[i])]).await.unwrap();
        }
        store.apply(&[retarget(&commands[4])]).await.unwrap();
        let listed: Vec<u64> = messages(store.as_ref(), app, 1)
            .await
            .iter()
            .map(|m| m.number)
            .collect();
        assert_eq!(listed, [1], "order {order:?}");
        let tombstone = store.message(app, 1, 2).await.unwrap().unwrap();
        assert!(
            tombstone.deleted && tombstone.body.is_empty(),
            "{tombstone:?}"
        );
        assert_eq!(
            counts(store.as_ref(), app, 1).await,
            (1, 1),
            "order {order:?}"
        );
    }
}

/// A chat's delete takes its messages along (those stored before, and those arriving after it), and
/// the application's count drops once; its events end with the deletion.
async fn a_deleted_chat_takes_its_messages_along(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    store
        .apply(&[
            create_chat(app, 1),
            create_chat(app, 2),
            create_message(app, 1, 1, "one"),
            create_message(app, 1, 2, "two"),
        ])
        .await
        .unwrap();
    let last = store.last_chat_event(app, 1).await.unwrap();
    let applied = store.apply(&[delete_chat(app, 1)]).await.unwrap();
    assert_eq!(applied.deleted_chats, [(app, 1)]);
    let ended = applied.events.last().expect("the deletion is a change");
    assert_eq!((ended.kind, ended.seq), (ChangeKind::ChatDeleted, last + 1));
    store.purge_chat(app, 1).await.unwrap();
    // A create queued before the delete, applied after it, stores nothing.
    let late = store
        .apply(&[create_message(app, 1, 3, "late")])
        .await
        .unwrap();
    assert!(
        late.messages.is_empty() && late.events.is_empty(),
        "{late:?}"
    );
    assert!(messages(store.as_ref(), app, 1).await.is_empty());
    assert!(store.chat(app, 1).await.unwrap().unwrap().deleted);
    assert_eq!(counts(store.as_ref(), app, 2).await.0, 1);
    store.apply(&[delete_chat(app, 1)]).await.unwrap();
    assert_eq!(
        counts(store.as_ref(), app, 2).await.0,
        1,
        "a redelivery counts nothing"
    );
    let events = store.chat_events(app, 1, 0, 0, 100, 1 << 20).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.kind, e.seq)).collect::<Vec<_>>(),
        [(ChangeKind::ChatDeleted, last + 1)]
    );
    let chats: Vec<u64> = store
        .list_chats(app, Page::first(10).scan())
        .await
        .unwrap()
        .iter()
        .map(|c| c.number)
        .collect();
    assert_eq!(chats, [2]);
}

/// Once an application is deleted, batches leave its commands out, and its purge removes it whole.
async fn a_deleted_applications_commands_are_left_out(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let other = self::app(store.as_ref()).await;
    store
        .apply(&[create_chat(app, 1), create_message(app, 1, 1, "before")])
        .await
        .unwrap();
    store.delete_application(app, at(9)).await.unwrap();
    let applied = store
        .apply(&[
            create_message(app, 1, 2, "after"),
            create_chat(other, 1),
            create_message(other, 1, 1, "elsewhere"),
        ])
        .await
        .unwrap();
    assert_eq!(
        applied
            .messages
            .iter()
            .map(|m| (m.application_id, m.number))
            .collect::<Vec<_>>(),
        [(other, 1)],
        "the deleted application's command is left out, the other's applied"
    );
    assert_eq!(messages(store.as_ref(), app, 1).await.len(), 1);
    let purged = store
        .apply(&[Command::PurgeApplication {
            application_id: app,
        }])
        .await
        .unwrap();
    assert_eq!(purged.purged_applications, [app]);
    store.purge_application(app).await.unwrap();
    assert!(store.application(app).await.unwrap().is_none());
    assert!(store.chat(app, 1).await.unwrap().is_none());
    assert!(messages(store.as_ref(), app, 1).await.is_empty());
    assert_eq!(messages(store.as_ref(), other, 1).await.len(), 1);
}

async fn applying_a_batch_twice_changes_nothing(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let batch = vec![
        create_chat(app, 1),
        create_message(app, 1, 1, "one"),
        create_message(app, 1, 2, "two"),
        create_chat(app, 2),
    ];
    store.apply(&batch).await.unwrap();
    store.apply(&batch).await.unwrap();
    store.apply(&batch[1..2]).await.unwrap();
    assert_eq!(
        messages(store.as_ref(), app, 1)
            .await
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(store.chat(app, 1).await.unwrap().unwrap().messages_count, 2);
    assert_eq!(
        store.application(app).await.unwrap().unwrap().chats_count,
        2
    );
}

async fn commands_commute_and_the_newest_edit_wins(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    // Messages and an edit land before the chat's creation, each in its own batch.
    store
        .apply(&[edit_message(app, 1, 1, "edited", 7)])
        .await
        .unwrap();
    store
        .apply(&[
            create_message(app, 1, 1, "original"),
            create_message(app, 1, 2, "second"),
        ])
        .await
        .unwrap();
    store
        .apply(&[edit_message(app, 1, 1, "older edit", 3)])
        .await
        .unwrap();
    store.apply(&[create_chat(app, 1)]).await.unwrap();
    let stored = messages(store.as_ref(), app, 1).await;
    assert_eq!(stored[0].body, "edited");
    assert_eq!(stored[0].version, 7);
    assert_eq!(stored[0].created_at, at(101));
    let chat = store.chat(app, 1).await.unwrap().unwrap();
    assert_eq!(chat.messages_count, 2);
    assert_eq!(chat.created_at, at(1));
    assert_eq!(
        store.application(app).await.unwrap().unwrap().chats_count,
        1
    );
}

async fn concurrent_batches_keep_counts_exact(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10u64 {
                // Every worker writes every message once more, as redeliveries across workers would.
                let batch: Vec<Command> = (1..=20u64)
                    .map(|n| create_message(app, 1 + (n % 3), n, &format!("m{n}")))
                    .chain([create_chat(app, 1 + (worker + round) % 3)])
                    .collect();
                store.apply(&batch).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut total = 0;
    for chat in 1..=3 {
        let stored = messages(store.as_ref(), app, chat).await.len() as u64;
        assert_eq!(
            store.chat(app, chat).await.unwrap().unwrap().messages_count,
            stored,
            "chat {chat}"
        );
        total += stored;
    }
    assert_eq!(total, 20);
    assert_eq!(
        store.application(app).await.unwrap().unwrap().chats_count,
        3
    );
    assert_eq!(store.repair_counts().await.unwrap(), 0, "nothing drifted");
}

async fn the_applied_state_is_what_is_stored(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let mut nanosecond_create = create_message(app, 1, 2, "fresh");
    if let Command::CreateMessage { at, .. } = &mut nanosecond_create {
        *at += chrono::Duration::nanoseconds(123_456_789);
    }
    let fresh = store
        .apply(&[edit_message(app, 1, 1, "newest", 9), nanosecond_create])
        .await
        .unwrap();
    assert_eq!(
        fresh.messages,
        messages(store.as_ref(), app, 1).await,
        "a batch of new rows reports exactly what it stored, to the microsecond"
    );
    let applied = store
        .apply(&[create_message(app, 1, 1, "stale create")])
        .await
        .unwrap();
    assert_eq!(applied.messages.len(), 1);
    assert_eq!(
        applied.messages[0].body, "newest",
        "the index must get the stored body, not the command's"
    );
    assert_eq!(applied.chats, vec![(app, 1)]);
    assert_eq!(store.max_message_number(app, 1).await.unwrap(), 2);
    assert_eq!(store.max_chat_number(app).await.unwrap(), 1);
}

async fn a_batch_of_the_largest_messages_is_stored(store: Arc<dyn Store>) {
    // 300 bodies of 64 KiB: 19 MiB in one batch, over MariaDB's default 16 MiB packet.
    let app = app(store.as_ref()).await;
    let body = "é".repeat(32 * 1024);
    let commands: Vec<Command> = (1..=300)
        .map(|n| create_message(app, 1, n, &body))
        .collect();
    let applied = store.apply(&commands).await.unwrap();
    assert_eq!(applied.messages.len(), 300);
    let stored = messages(store.as_ref(), app, 1).await;
    assert_eq!(stored.len(), 300);
    assert!(stored.iter().all(|m| m.body == body));
    assert_eq!(
        store.chat(app, 1).await.unwrap().unwrap().messages_count,
        300
    );
}

fn changes(events: &[ChatEvent]) -> Vec<(u64, ChangeKind, u64, &str)> {
    events
        .iter()
        .map(|e| (e.seq, e.kind, e.message.number, e.message.body.as_str()))
        .collect()
}

async fn changes_are_numbered_in_the_order_they_were_stored(store: Arc<dyn Store>) {
    use ChangeKind::{Created, Edited};
    let app = app(store.as_ref()).await;
    let first = vec![
        create_chat(app, 1),
        create_message(app, 1, 1, "one"),
        create_message(app, 1, 2, "two"),
    ];
    let applied = store.apply(&first).await.unwrap();
    assert_eq!(
        changes(&applied.events),
        [(1, Created, 1, "one"), (2, Created, 2, "two")]
    );
    // A redelivery and an edit older than the stored one change nothing, so they are no change.
    assert!(store.apply(&first).await.unwrap().events.is_empty());
    let edited = store
        .apply(&[edit_message(app, 1, 1, "one, edited", 9)])
        .await
        .unwrap();
    assert_eq!(changes(&edited.events), [(3, Edited, 1, "one, edited")]);
    assert!(
        store
            .apply(&[edit_message(app, 1, 1, "older", 4)])
            .await
            .unwrap()
            .events
            .is_empty()
    );
    // An edit that arrives before its creation stores the message: that is its creation.
    let early = store
        .apply(&[edit_message(app, 1, 3, "three, edited", 11)])
        .await
        .unwrap();
    assert_eq!(changes(&early.events), [(4, Created, 3, "three, edited")]);
    assert!(
        store
            .apply(&[create_message(app, 1, 3, "three")])
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(store.last_chat_event(app, 1).await.unwrap(), 4);
    assert_eq!(store.last_chat_event(app, 2).await.unwrap(), 0);

    // Read back: each message once, in its present state, where its latest change is.
    let all = store
        .chat_events(app, 1, 0, 0, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        changes(&all),
        [
            (2, Created, 2, "two"),
            (3, Created, 1, "one, edited"),
            (4, Created, 3, "three, edited"),
        ]
    );
    assert_eq!(all[1].message, messages(store.as_ref(), app, 1).await[0]);
    let after_two = store
        .chat_events(app, 1, 2, 2, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        changes(&after_two),
        [
            (3, Edited, 1, "one, edited"),
            (4, Created, 3, "three, edited")
        ]
    );
    // Read a page at a time, as a catch-up does: message 1's creation is on the first page of the log
    // and its edit on a later one, and it still comes once, at its edit.
    // Pages bounded in count, then in bytes: one body of these is 3 to 13 bytes, so 10 bytes take one
    // message a page (at least one, whatever its size) and 16 take one or two.
    for (limit, max_bytes, most) in [
        (1, usize::MAX, 1),
        (2, usize::MAX, 2),
        (100, 10, 1),
        (100, 16, 2),
    ] {
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .chat_events(app, 1, 0, after, limit, max_bytes)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            assert!(
                page.len() <= most,
                "{limit} events, {max_bytes} bytes: {}",
                page.len()
            );
            after = last.seq;
            paged.extend(page);
        }
        assert_eq!(
            changes(&paged),
            changes(&all),
            "pages of {limit} and {max_bytes} bytes"
        );
    }
    assert!(
        store
            .chat_events(app, 1, 4, 4, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_batches_number_a_chats_changes_without_gaps(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for round in 0..10u64 {
                let batch: Vec<Command> = (1..=5u64)
                    .map(|n| create_message(app, 1, worker * 100 + round * 10 + n, "m"))
                    .collect();
                let applied = store.apply(&batch).await.unwrap();
                seqs.extend(applied.events.iter().map(|e| e.seq));
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert_eq!(store.last_chat_event(app, 1).await.unwrap(), 200);
}

/// Lists walk either way from a bound, in the order walked, and a page of messages says the chat's
/// latest change as of the same read.
async fn lists_walk_either_way_with_the_chats_last_change(store: Arc<dyn Store>) {
    let app = app(store.as_ref()).await;
    let mut batch = vec![
        create_chat(app, 1),
        create_chat(app, 2),
        create_chat(app, 3),
    ];
    batch.extend((1..=5).map(|n| create_message(app, 1, n, "m")));
    let created = store.apply(&batch).await.unwrap();
    let mut stored: Vec<(u64, u64)> = created
        .stored_chats
        .iter()
        .map(|c| (c.number, c.last_event))
        .collect();
    stored.sort_unstable();
    assert_eq!(
        stored,
        [(1, 5), (2, 0), (3, 0)],
        "the chats the batch created"
    );
    let edited = store
        .apply(&[edit_message(app, 1, 3, "edited", 9)])
        .await
        .unwrap();
    assert_eq!(
        edited
            .stored_chats
            .iter()
            .map(|c| (c.number, c.last_event))
            .collect::<Vec<_>>(),
        [(1, 6)],
        "the chat the edit changed, after it"
    );
    let numbers = |messages: &[Message]| messages.iter().map(|m| m.number).collect::<Vec<_>>();
    let walk = |scan| {
        let store = store.clone();
        async move { store.list_messages(app, 1, scan).await.unwrap() }
    };
    let newest = walk(Scan::Down {
        before: None,
        above: 0,
        limit: 3,
    })
    .await;
    assert_eq!(numbers(&newest.messages), [5, 4, 3]);
    assert_eq!(newest.last_event, 6, "five creates and an edit");
    assert_eq!(newest.messages[2].body, "edited");
    let older = walk(Scan::Down {
        before: Some(3),
        above: 0,
        limit: 10,
    })
    .await;
    assert_eq!(numbers(&older.messages), [2, 1]);
    let middle = walk(Scan::Up {
        after: 2,
        below: Some(5),
        limit: 5,
    })
    .await;
    assert_eq!(numbers(&middle.messages), [3, 4]);
    assert_eq!(
        store
            .list_messages(
                app,
                9,
                Scan::Up {
                    after: 0,
                    below: None,
                    limit: 5,
                }
            )
            .await
            .unwrap(),
        MessageRows::default(),
        "no such chat"
    );
    let chats = store
        .list_chats(
            app,
            Scan::Down {
                before: Some(3),
                above: 0,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(chats.iter().map(|c| c.number).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(chats[1].last_event, 6);
    assert_eq!(store.chat(app, 1).await.unwrap().unwrap().last_event, 6);
    assert_eq!(store.chat(app, 2).await.unwrap().unwrap().last_event, 0);
}

/// One test per case and adapter: `[module => setup, …] [case, …]` runs every case in each module, on
/// what its setup returns with the scratch that the test removes once the case has run.
macro_rules! adapter_suite {
    ([$($module:ident => $setup:ident),+ $(,)?] $cases:tt) => {
        $(adapter_suite!(@module $module $setup $cases);)+
    };
    (@module $module:ident $setup:ident [$($case:ident),* $(,)?]) => {
        mod $module {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (subject, _scratch) = super::$setup().await;
                super::$case(subject).await;
            })*
        }
    };
}

adapter_suite!(
    [store_mysql => mysql_store, store_sqlite => sqlite_store]
    [
    applying_a_batch_twice_changes_nothing,
    commands_commute_and_the_newest_edit_wins,
    concurrent_batches_keep_counts_exact,
    the_applied_state_is_what_is_stored,
    a_batch_of_the_largest_messages_is_stored,
    changes_are_numbered_in_the_order_they_were_stored,
    concurrent_batches_number_a_chats_changes_without_gaps,
    a_replaced_token_names_nothing,
    lists_walk_either_way_with_the_chats_last_change,
    a_deleted_message_stays_deleted_whatever_the_order,
    a_deleted_chat_takes_its_messages_along,
    a_deleted_applications_commands_are_left_out,
    ]
);

/// A floor that says where a lost counter must restart.
struct FixedFloor(u64);

#[async_trait]
impl NumberFloor for FixedFloor {
    async fn chat_floor(&self, _: AppId) -> CoreResult<u64> {
        Ok(self.0)
    }
    async fn message_floor(&self, _: AppId, _: u64) -> CoreResult<u64> {
        Ok(self.0)
    }
}

/// Numbers with the floor their caller restarts a missing counter from, as the service does.
struct Allocator {
    numbers: Arc<dyn Numbers>,
    floor: FixedFloor,
}

impl Allocator {
    async fn init_application(&self, app: AppId) -> CoreResult<()> {
        self.numbers.init_application(app).await
    }
    async fn next_chat(&self, app: AppId) -> CoreResult<u64> {
        match self.numbers.next_chat(app).await? {
            Some(number) => Ok(number),
            None => {
                let floor = self.floor.chat_floor(app).await?;
                self.numbers.restart_chats(app, floor).await
            }
        }
    }
    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        match self.numbers.next_message(app, chat).await? {
            Some(number) => Ok(number),
            None => {
                let floor = self.floor.message_floor(app, chat).await?;
                self.numbers.restart_messages(app, chat, floor).await
            }
        }
    }
    /// An unconditional edit's version of message 1 of chat 1 of application 1.
    async fn next_version(&self) -> CoreResult<u64> {
        match self
            .numbers
            .next_version((1, 1, 1), 0, None, VersionFor::Edit)
            .await?
        {
            VersionClaim::Granted { version, .. } => Ok(version),
            other => panic!("an unconditional edit of a live message found {other:?}"),
        }
    }
}

/// A key prefix no other test uses, with the scratch that removes its keys (in the test Redis and in
/// its database 1, the cache's).
fn redis_prefix() -> (String, Scratch) {
    let prefix = format!("chatsys-test-{}", unique());
    let mut scratch = Scratch::default();
    scratch.owns_redis_keys(&test_redis_url(), &prefix);
    scratch.owns_redis_keys(&format!("{}/1", test_redis_url()), &prefix);
    (prefix, scratch)
}

async fn redis_numbers(
    prefix: &str,
    floor: u64,
) -> (Arc<Allocator>, ::redis::aio::ConnectionManager) {
    let connection = connect_redis(&test_redis_url()).await;
    let numbers = redis::RedisNumbers::new(connection.clone(), redis::Keys::new(prefix));
    let allocator = Allocator {
        numbers: Arc::new(numbers),
        floor: FixedFloor(floor),
    };
    (Arc::new(allocator), connection)
}

fn local_numbers(floor: u64) -> Arc<Allocator> {
    Arc::new(Allocator {
        numbers: Arc::new(memory::LocalNumbers::new()),
        floor: FixedFloor(floor),
    })
}

async fn numbers_start_at_1_and_never_repeat(numbers: Arc<Allocator>) {
    numbers.init_application(1).await.unwrap();
    assert_eq!(numbers.next_chat(1).await.unwrap(), 1);
    assert_eq!(numbers.next_chat(1).await.unwrap(), 2);
    assert_eq!(
        numbers.next_message(1, 2).await.unwrap(),
        1,
        "a new chat's messages start at 1"
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let numbers = numbers.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                got.push(numbers.next_message(1, 2).await.unwrap());
            }
            got
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (2..=201).collect::<Vec<u64>>());
    let (a, b) = (
        numbers.next_version().await.unwrap(),
        numbers.next_version().await.unwrap(),
    );
    assert!(b > a && a > 0);
    // An edit's `updated_at` is its version read as microseconds since the epoch.
    let now = Utc::now().timestamp_micros() as u64;
    assert!(
        b.abs_diff(now) < 60_000_000,
        "a version is a time in microseconds: {b} vs now {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_redis_start_at_1_and_never_repeat() {
    let (prefix, _scratch) = redis_prefix();
    numbers_start_at_1_and_never_repeat(redis_numbers(&prefix, 0).await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_local_start_at_1_and_never_repeat() {
    numbers_start_at_1_and_never_repeat(local_numbers(0)).await;
}

/// Of edits conditioned on one version, exactly one gets a version, however many run at once; an
/// edit without a condition moves the message on too, so one conditioned on the version before fails.
async fn conditional_versions_are_granted_once(numbers: Arc<Allocator>) {
    let numbers: Arc<dyn Numbers> = numbers.numbers.clone();
    let message = (3, 1, 1);
    let VersionClaim::Granted { version: first, .. } = numbers
        .next_version(message, 0, Some(&[0]), VersionFor::Edit)
        .await
        .unwrap()
    else {
        panic!("a message never edited is at version 0");
    };
    assert_eq!(
        numbers
            .next_version(message, 0, Some(&[0]), VersionFor::Edit)
            .await
            .unwrap(),
        VersionClaim::Moved(first),
        "the newest version handed out is kept, whatever the caller read"
    );
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let numbers = numbers.clone();
            tokio::spawn(async move {
                numbers
                    .next_version(message, 0, Some(&[first]), VersionFor::Edit)
                    .await
            })
        })
        .collect();
    let mut granted = Vec::new();
    for task in racing {
        if let VersionClaim::Granted { version, .. } = task.await.unwrap().unwrap() {
            granted.push(version);
        }
    }
    assert_eq!(granted.len(), 1, "granted {granted:?}");
    let VersionClaim::Granted {
        version: unconditional,
        ..
    } = numbers
        .next_version(message, 0, None, VersionFor::Edit)
        .await
        .unwrap()
    else {
        panic!("an unconditional edit is refused");
    };
    assert!(unconditional > granted[0]);
    assert_eq!(
        numbers
            .next_version(message, 0, Some(&[granted[0], 1]), VersionFor::Edit)
            .await
            .unwrap(),
        VersionClaim::Moved(unconditional)
    );
    assert!(matches!(
        numbers
            .next_version(message, 0, Some(&[7, unconditional]), VersionFor::Edit)
            .await
            .unwrap(),
        VersionClaim::Granted { .. }
    ));
    assert!(
        matches!(
            numbers
                .next_version((3, 1, 2), 40, Some(&[40]), VersionFor::Edit)
                .await
                .unwrap(),
            VersionClaim::Granted { .. }
        ),
        "a message whose newest is not kept is at the version its reader saw"
    );

    // A version taken back (its edit never published) leaves the one before it the newest.
    let withdrawn = (3, 1, 3);
    let VersionClaim::Granted { version, previous } = numbers
        .next_version(withdrawn, 5, Some(&[5]), VersionFor::Edit)
        .await
        .unwrap()
    else {
        panic!("the version read is the newest");
    };
    assert_eq!(previous, 5);
    numbers
        .withdraw_version(withdrawn, version, previous, VersionFor::Edit)
        .await
        .unwrap();
    assert!(
        matches!(
            numbers
                .next_version(withdrawn, 5, Some(&[5]), VersionFor::Edit)
                .await
                .unwrap(),
            VersionClaim::Granted { .. }
        ),
        "a retry conditioned on the version before passes"
    );
    // A version read that is newer than the one kept (handed out by a release that kept none) counts.
    assert_eq!(
        numbers
            .next_version(
                withdrawn,
                u64::MAX >> 12,
                Some(&[version]),
                VersionFor::Edit
            )
            .await
            .unwrap(),
        VersionClaim::Moved(u64::MAX >> 12)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_versions_redis_are_granted_once() {
    let (prefix, _scratch) = redis_prefix();
    conditional_versions_are_granted_once(redis_numbers(&prefix, 0).await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_versions_local_are_granted_once() {
    conditional_versions_are_granted_once(local_numbers(0)).await;
}

/// A delete's version is a message's last: after it no change gets one, whatever it is conditioned on,
/// until the delete is taken back (never published), which makes the message editable again.
async fn a_deletes_version_is_the_last(numbers: Arc<Allocator>) {
    let numbers: Arc<dyn Numbers> = numbers.numbers.clone();
    let message = (4, 1, 1);
    let VersionClaim::Granted { version, previous } = numbers
        .next_version(message, 0, None, VersionFor::Delete)
        .await
        .unwrap()
    else {
        panic!("a live message can be deleted");
    };
    for (expected, change) in [
        (None, VersionFor::Edit),
        (Some(&[version][..]), VersionFor::Edit),
        (None, VersionFor::Delete),
    ] {
        assert_eq!(
            numbers
                .next_version(message, version, expected, change)
                .await
                .unwrap(),
            VersionClaim::Deleted,
            "{change:?} conditioned on {expected:?}"
        );
    }
    numbers
        .withdraw_version(message, version, previous, VersionFor::Delete)
        .await
        .unwrap();
    assert!(matches!(
        numbers
            .next_version(message, 0, Some(&[0]), VersionFor::Edit)
            .await
            .unwrap(),
        VersionClaim::Granted { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletes_version_is_the_last_in_redis() {
    let (prefix, _scratch) = redis_prefix();
    a_deletes_version_is_the_last(redis_numbers(&prefix, 0).await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletes_version_is_the_last_locally() {
    a_deletes_version_is_the_last(local_numbers(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_lost_from_redis_restarts_above_the_floor_and_versions_keep_rising() {
    let (prefix, _scratch) = redis_prefix();
    let (numbers, mut connection) = redis_numbers(&prefix, 500).await;
    numbers.init_application(7).await.unwrap();
    assert_eq!(numbers.next_chat(7).await.unwrap(), 1);
    assert_eq!(numbers.next_message(7, 1).await.unwrap(), 1);
    let version = numbers.next_version().await.unwrap();
    // What a FLUSHALL does to this system's keys, without disturbing anyone else's.
    delete_keys(&mut connection, &format!("{prefix}:*")).await;
    assert_eq!(numbers.next_chat(7).await.unwrap(), 501);
    assert_eq!(numbers.next_message(7, 1).await.unwrap(), 501);
    assert_eq!(
        numbers.next_message(7, 501).await.unwrap(),
        1,
        "a chat created after the loss starts at 1"
    );
    assert!(numbers.next_version().await.unwrap() > version);
}

/// A list's generation that Redis lost restarts at a value it never had, so pages an API process holds
/// under an earlier generation are never served for the list's later state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_generation_lost_from_redis_never_matches_an_earlier_one() {
    let mut connection = connect_redis(&test_redis_url()).await;
    let (prefix, _scratch) = redis_prefix();
    let cache = redis::RedisCache::new(
        connection.clone(),
        None,
        redis::Keys::new(&prefix),
        cache_limits(64 << 20),
    );
    let scope = ListScope::Messages(1, 1);
    let mut seen = vec![cache.list_generation(&scope).await.unwrap()];
    assert_eq!(cache.list_generation(&scope).await.unwrap(), seen[0]);
    for _ in 0..3 {
        cache
            .bump_lists(std::slice::from_ref(&scope))
            .await
            .unwrap();
        delete_keys(&mut connection, &format!("{prefix}:generation:*")).await;
        let restarted = cache.list_generation(&scope).await.unwrap();
        assert!(
            !seen.contains(&restarted),
            "generation {restarted} again after it was lost ({seen:?})"
        );
        seen.push(restarted);
    }
}

/// Deletes the keys matching `pattern`, as a loss of them would.
async fn delete_keys(connection: &mut ::redis::aio::ConnectionManager, pattern: &str) {
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(pattern)
        .query_async(connection)
        .await
        .unwrap();
    let _: () = ::redis::cmd("DEL")
        .arg(keys)
        .query_async(connection)
        .await
        .unwrap();
}

fn test_redis_url() -> String {
    std::env::var("CHATSYS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connect_redis(url: &str) -> ::redis::aio::ConnectionManager {
    redis::connect(url)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

fn cache_limits(max_application_bytes: usize) -> redis::CacheLimits {
    redis::CacheLimits {
        ttl: Duration::from_secs(60),
        max_page_bytes: MAX_PAGE_BYTES,
        max_application_bytes,
    }
}

/// The cache over both its roles: the state in the test Redis, the cache in its logical database 1.
async fn redis_cache(prefix: &str) -> Arc<dyn Cache> {
    let url = test_redis_url();
    Arc::new(redis::RedisCache::new(
        connect_redis(&url).await,
        Some(connect_redis(&format!("{url}/1")).await),
        redis::Keys::new(prefix),
        cache_limits(64 << 20),
    ))
}

/// A Redis of its own for the cache's role, as the operator runs it (`allkeys-lru` under a
/// `maxmemory`), on a free port; stopped when dropped.
struct CacheServer {
    process: std::process::Child,
    url: String,
}

impl CacheServer {
    fn start(maxmemory: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--maxmemory",
                maxmemory,
                "--maxmemory-policy",
                "allkeys-lru",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (the tests run where Redis is installed)");
        CacheServer {
            process,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    async fn connect(&self) -> ::redis::aio::ConnectionManager {
        for _ in 0..100 {
            if let Ok(connection) = redis::connect(&self.url).await {
                return connection;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cache's Redis at {} never answered", self.url)
    }
}

impl Drop for CacheServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Filling the cache's Redis past its `maxmemory` evicts list pages, while numbers, tokens and writes
/// not yet stored, in the state's Redis, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_evicts_pages_and_never_a_counter() {
    let server = CacheServer::start("8mb");
    let cache_connection = server.connect().await;
    let state = connect_redis(&test_redis_url()).await;
    let (prefix, _scratch) = redis_prefix();
    let cache = redis::RedisCache::new(
        state.clone(),
        Some(cache_connection.clone()),
        redis::Keys::new(&prefix),
        cache_limits(usize::MAX),
    );
    let numbers = redis::RedisNumbers::new(state, redis::Keys::new(&prefix));
    numbers.init_application(1).await.unwrap();
    assert_eq!(numbers.next_chat(1).await.unwrap(), Some(1));
    let remembered = Message {
        application_id: 1,
        chat_number: 1,
        number: 1,
        body: "accepted, not stored yet".into(),
        version: 0,
        created_at: at(0),
        updated_at: at(0),
        deleted: false,
    };
    cache.remember_message(&remembered).await.unwrap();
    cache.put_application_id("token", 1).await.unwrap();
    // 32 MB of pages into 8 MB.
    let scope = ListScope::Messages(1, 1);
    let generation = cache.list_generation(&scope).await.unwrap();
    let page = vec![b'p'; 60 * 1024];
    for n in 0..500 {
        cache
            .put_list(&scope, generation, &format!("page{n}"), &page)
            .await
            .unwrap();
    }
    let mut kept = 0;
    for n in 0..500 {
        kept += usize::from(
            cache
                .list_page(&scope, generation, &format!("page{n}"))
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert!(kept > 0 && kept < 200, "{kept} of 500 pages kept in 8 MB");
    assert_eq!(
        numbers.next_chat(1).await.unwrap(),
        Some(2),
        "the counter went on"
    );
    assert_eq!(cache.message((1, 1, 1)).await.unwrap(), Some(remembered));
    assert_eq!(
        cache.application_id("token").await.unwrap(),
        CachedToken::Names(1)
    );
}

/// An application's pages count against its share of the cache: past it, its pages are not kept (it
/// reads the database), and another application's still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_past_its_share_of_page_bytes_is_not_cached() {
    let (prefix, _scratch) = redis_prefix();
    let cache = redis::RedisCache::new(
        connect_redis(&test_redis_url()).await,
        None,
        redis::Keys::new(&prefix),
        cache_limits(100 * 1024),
    );
    let page = vec![b'p'; 40 * 1024];
    let put = |app, n: u32| {
        let (cache, page) = (&cache, &page);
        async move {
            let scope = ListScope::Chats(app);
            cache
                .put_list(&scope, 0, &n.to_string(), page)
                .await
                .unwrap();
            cache
                .list_page(&scope, 0, &n.to_string())
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(put(1, 1).await);
    assert!(put(1, 2).await);
    assert!(!put(1, 3).await, "a third page goes past 100 KiB");
    assert!(put(2, 1).await, "another application's page is kept");
}

/// The largest list page the caches under test keep.
const MAX_PAGE_BYTES: usize = 64 * 1024;

fn memory_cache(max_bytes: u64) -> memory::MemoryCache {
    memory::MemoryCache::new(Duration::from_secs(60), max_bytes, MAX_PAGE_BYTES)
}

async fn the_cache_keeps_the_newer_message_and_bumps_lists(cache: Arc<dyn Cache>) {
    let message = |body: &str, version| Message {
        application_id: 1,
        chat_number: 1,
        number: 1,
        body: body.into(),
        version,
        created_at: at(0),
        updated_at: at(version as i64),
        deleted: false,
    };
    cache.put_message(&message("edit", 5)).await.unwrap();
    cache.put_message(&message("create", 0)).await.unwrap();
    assert_eq!(
        cache.message((1, 1, 1)).await.unwrap().unwrap().body,
        "edit"
    );
    cache.put_message(&message("later edit", 6)).await.unwrap();
    assert_eq!(
        cache.message((1, 1, 1)).await.unwrap().unwrap().body,
        "later edit"
    );

    let scope = ListScope::Messages(1, 1);
    let first_page = |generation| {
        let (cache, scope) = (cache.clone(), scope.clone());
        async move { cache.list_page(&scope, generation, "0:100").await.unwrap() }
    };
    let before = cache.list_generation(&scope).await.unwrap();
    assert!(first_page(before).await.is_none());
    cache
        .put_list(&scope, before, "0:100", b"[1]")
        .await
        .unwrap();
    assert_eq!(first_page(before).await.as_deref(), Some(&b"[1]"[..]));
    cache
        .bump_lists(std::slice::from_ref(&scope))
        .await
        .unwrap();
    let after = cache.list_generation(&scope).await.unwrap();
    assert_ne!(after, before, "a commit moves the list to a new generation");
    assert!(first_page(after).await.is_none(), "a bumped list is stale");
    // A page read before the bump and stored late lands under the old generation, unseen.
    cache
        .put_list(&scope, before, "0:100", b"[stale]")
        .await
        .unwrap();
    assert!(first_page(after).await.is_none());
}

/// A chat read from the store before a commit and cached after the commit's write-through does not
/// hide it: the state with the later change stays.
async fn the_cache_keeps_the_chat_at_its_later_change(cache: Arc<dyn Cache>) {
    let chat = |messages_count, last_event| chatsys_core::domain::Chat {
        application_id: 1,
        number: 4,
        messages_count,
        created_at: at(0),
        updated_at: at(last_event as i64),
        last_event,
        deleted: false,
    };
    cache.put_chats(&[chat(2, 3)]).await.unwrap();
    cache.put_chats(&[chat(1, 2)]).await.unwrap();
    assert_eq!(cache.chat(1, 4).await.unwrap(), Some(chat(2, 3)));
    cache.put_chats(&[chat(3, 5), chat(2, 4)]).await.unwrap();
    assert_eq!(cache.chat(1, 4).await.unwrap(), Some(chat(3, 5)));
}

/// A tombstone is a state's last: a live state of the same change (read before the delete was
/// remembered, or stored by a batch that crossed it) never replaces it, in either order, nor does an
/// older message version; a record an earlier release kept (by version alone) is still compared.
async fn the_cache_keeps_a_tombstone_over_a_live_state_of_the_same_change(cache: Arc<dyn Cache>) {
    let chat = |last_event, deleted| chatsys_core::domain::Chat {
        application_id: 1,
        number: 5,
        messages_count: 1,
        created_at: at(0),
        updated_at: at(1),
        last_event,
        deleted,
    };
    cache.put_chats(&[chat(4, false)]).await.unwrap();
    cache.put_chats(&[chat(4, true)]).await.unwrap();
    cache.put_chats(&[chat(4, false)]).await.unwrap();
    assert_eq!(cache.chat(1, 5).await.unwrap(), Some(chat(4, true)));
    let message = |version, deleted| Message {
        application_id: 1,
        chat_number: 5,
        number: 1,
        body: if deleted {
            String::new()
        } else {
            "live".into()
        },
        version,
        created_at: at(0),
        updated_at: at(version as i64),
        deleted,
    };
    cache.put_message(&message(7, true)).await.unwrap();
    cache.put_message(&message(7, false)).await.unwrap();
    cache.put_message(&message(6, false)).await.unwrap();
    assert_eq!(
        cache.message((1, 5, 1)).await.unwrap(),
        Some(message(7, true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_keeps_a_tombstone_over_a_live_state_of_the_same_change() {
    let (prefix, _scratch) = redis_prefix();
    the_cache_keeps_a_tombstone_over_a_live_state_of_the_same_change(redis_cache(&prefix).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_keeps_a_tombstone_over_a_live_state_of_the_same_change() {
    the_cache_keeps_a_tombstone_over_a_live_state_of_the_same_change(Arc::new(memory_cache(
        64 << 20,
    )))
    .await;
}

/// A Redis cache whose cache entries live in a database of their own (1), with that database's
/// connection and the cache's key prefix, to write there what an earlier release left.
async fn separate_redis_cache() -> (
    redis::RedisCache,
    ::redis::aio::ConnectionManager,
    String,
    Scratch,
) {
    let url = test_redis_url();
    let cache_redis = connect_redis(&format!("{url}/1")).await;
    let (prefix, scratch) = redis_prefix();
    let cache = redis::RedisCache::new(
        connect_redis(&url).await,
        Some(cache_redis.clone()),
        redis::Keys::new(&prefix),
        cache_limits(64 << 20),
    );
    (cache, cache_redis, prefix, scratch)
}

/// A message an earlier release cached (its version in field `v`, no freshness) is compared by
/// version: an older state put after it does not replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_compares_a_record_an_earlier_release_kept_by_its_version() {
    let (cache, mut cache_redis, prefix, _scratch) = separate_redis_cache().await;
    let message = |version: u64, body: &str| Message {
        application_id: 1,
        chat_number: 5,
        number: 2,
        body: body.into(),
        version,
        created_at: at(0),
        updated_at: at(version as i64),
        deleted: false,
    };
    let kept = serde_json::to_string(&message(9, "kept by an earlier release")).unwrap();
    ::redis::cmd("HSET")
        .arg(format!("{prefix}:message:1:5:2"))
        .arg("v")
        .arg(9)
        .arg("d")
        .arg(&kept)
        .query_async::<()>(&mut cache_redis)
        .await
        .unwrap();
    cache.put_message(&message(8, "older")).await.unwrap();
    assert_eq!(
        cache.message((1, 5, 2)).await.unwrap(),
        Some(message(9, "kept by an earlier release"))
    );
    cache.put_message(&message(10, "newer")).await.unwrap();
    assert_eq!(
        cache.message((1, 5, 2)).await.unwrap(),
        Some(message(10, "newer"))
    );
}

/// A chat an earlier release cached as a plain string (`SET`) is replaced by the write-through, not
/// left to fail it until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_replaces_a_chat_an_earlier_release_kept_as_a_string() {
    let (cache, mut cache_redis, prefix, _scratch) = separate_redis_cache().await;
    ::redis::cmd("SET")
        .arg(format!("{prefix}:chat:1:4:stored"))
        .arg(r#"{"application_id":1,"number":4}"#)
        .query_async::<()>(&mut cache_redis)
        .await
        .unwrap();
    let chat = chatsys_core::domain::Chat {
        application_id: 1,
        number: 4,
        messages_count: 1,
        created_at: at(0),
        updated_at: at(1),
        last_event: 1,
        deleted: false,
    };
    cache.put_chats(std::slice::from_ref(&chat)).await.unwrap();
    assert_eq!(cache.chat(1, 4).await.unwrap(), Some(chat));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_keeps_the_chat_at_its_later_change() {
    let (prefix, _scratch) = redis_prefix();
    the_cache_keeps_the_chat_at_its_later_change(redis_cache(&prefix).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_keeps_the_chat_at_its_later_change() {
    the_cache_keeps_the_chat_at_its_later_change(Arc::new(memory_cache(64 << 20))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_keeps_the_newer_message_and_bumps_lists() {
    let (prefix, _scratch) = redis_prefix();
    the_cache_keeps_the_newer_message_and_bumps_lists(redis_cache(&prefix).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_keeps_the_newer_message_and_bumps_lists() {
    the_cache_keeps_the_newer_message_and_bumps_lists(Arc::new(memory_cache(64 << 20))).await;
}

async fn a_page_over_the_size_limit_is_not_cached(cache: Arc<dyn Cache>) {
    let scope = ListScope::Messages(1, 2);
    let generation = cache.list_generation(&scope).await.unwrap();
    let largest = vec![b'x'; MAX_PAGE_BYTES];
    cache
        .put_list(&scope, generation, "0:10", &largest)
        .await
        .unwrap();
    let too_large = vec![b'y'; MAX_PAGE_BYTES + 1];
    cache
        .put_list(&scope, generation, "0:1000", &too_large)
        .await
        .unwrap();
    assert_eq!(
        cache
            .list_page(&scope, generation, "0:10")
            .await
            .unwrap()
            .map(|page| page.len()),
        Some(MAX_PAGE_BYTES),
        "a page at the limit is kept"
    );
    assert!(
        cache
            .list_page(&scope, generation, "0:1000")
            .await
            .unwrap()
            .is_none(),
        "a page over the limit is not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_does_not_keep_a_page_over_the_size_limit() {
    let (prefix, _scratch) = redis_prefix();
    a_page_over_the_size_limit_is_not_cached(redis_cache(&prefix).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_does_not_keep_a_page_over_the_size_limit() {
    a_page_over_the_size_limit_is_not_cached(Arc::new(memory_cache(64 << 20))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_stays_within_its_byte_bound() {
    let max_bytes = 2 << 20;
    let cache = memory_cache(max_bytes);
    let page = vec![b'p'; MAX_PAGE_BYTES];
    let body = "m".repeat(64 * 1024);
    for n in 1..=200u64 {
        let scope = ListScope::Messages(1, n);
        cache.put_list(&scope, 0, "0:1000", &page).await.unwrap();
        let message = Message {
            application_id: 1,
            chat_number: 1,
            number: n,
            body: body.clone(),
            version: 0,
            created_at: at(0),
            updated_at: at(0),
            deleted: false,
        };
        cache.put_message(&message).await.unwrap();
        assert!(
            cache.message((1, 1, n)).await.unwrap().is_some(),
            "a message just written reads back (read your own writes)"
        );
    }
    // 200 pages and 200 messages of 64 KiB were offered: 25 MiB.
    let held = cache.held_bytes().await;
    assert!(
        held <= max_bytes,
        "the cache holds {held} bytes, over its bound of {max_bytes}"
    );
    assert!(held > 0, "the cache still keeps something");
}

/// A replaced token names nothing in the store; the application keeps its id and name.
async fn a_replaced_token_names_nothing(store: Arc<dyn Store>) {
    let app = app(&*store).await;
    let old = store.application(app).await.unwrap().unwrap();
    store
        .replace_token(app, "replacement-token", at(50))
        .await
        .unwrap();
    assert_eq!(store.application_by_token(&old.token).await.unwrap(), None);
    let replaced = store
        .application_by_token("replacement-token")
        .await
        .unwrap()
        .expect("the new token names the application");
    assert_eq!((replaced.id, &replaced.name), (app, &old.name));
    assert_eq!(replaced.updated_at, at(50));
}

/// A forgotten token is not answered from the cache, nor cached again by a lookup that read it from the
/// store before it was forgotten.
async fn a_forgotten_token_is_not_cached_again(cache: Arc<dyn Cache>) {
    cache.put_application_id("kept", 7).await.unwrap();
    cache.put_application_id("replaced", 8).await.unwrap();
    cache.forget_token("replaced").await.unwrap();
    assert_eq!(
        cache.application_id("replaced").await.unwrap(),
        CachedToken::Replaced
    );
    cache.put_application_id("replaced", 8).await.unwrap();
    assert_eq!(
        cache.application_id("replaced").await.unwrap(),
        CachedToken::Replaced
    );
    assert_eq!(
        cache.application_id("kept").await.unwrap(),
        CachedToken::Names(7)
    );
    assert_eq!(
        cache.application_id("never-cached").await.unwrap(),
        CachedToken::Unknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_does_not_cache_a_forgotten_token_again() {
    let (prefix, _scratch) = redis_prefix();
    a_forgotten_token_is_not_cached_again(redis_cache(&prefix).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_does_not_cache_a_forgotten_token_again() {
    a_forgotten_token_is_not_cached_again(Arc::new(memory_cache(1 << 20))).await;
}

async fn redis_key_cells() -> (Arc<dyn KeyCells>, Scratch) {
    let (prefix, scratch) = redis_prefix();
    let cells = redis::RedisKeyCells::new(
        connect_redis(&test_redis_url()).await,
        redis::Keys::new(&prefix),
    );
    (Arc::new(cells), scratch)
}

async fn sqlite_key_cells() -> (Arc<dyn KeyCells>, Scratch) {
    let dir = tempfile::tempdir().unwrap().keep();
    let pool = sqlite::open(&dir.join("chatsys.db")).await.unwrap();
    sqlite::SqliteStore::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    (
        Arc::new(sqlite_keys::SqliteKeyCells::new(pool)),
        Scratch::default(),
    )
}

/// A cell changes only from the value the caller expects: written where there is none, replaced or
/// removed where it holds exactly that value.
async fn a_cell_changes_only_from_the_value_expected(cells: Arc<dyn KeyCells>) {
    assert_eq!(cells.read("c").await.unwrap(), None);
    assert!(!cells.swap("c", Some("x"), Some("a")).await.unwrap());
    assert!(cells.swap("c", None, Some("a")).await.unwrap());
    assert!(!cells.swap("c", None, Some("b")).await.unwrap());
    assert!(!cells.swap("c", Some("b"), Some("c")).await.unwrap());
    assert_eq!(cells.read("c").await.unwrap().as_deref(), Some("a"));
    assert!(cells.swap("c", Some("a"), Some("b")).await.unwrap());
    assert_eq!(cells.read("c").await.unwrap().as_deref(), Some("b"));
    assert!(!cells.swap("c", Some("a"), None).await.unwrap());
    assert!(cells.swap("c", Some("b"), None).await.unwrap());
    assert_eq!(cells.read("c").await.unwrap(), None);
}

/// The records over the cells: a finished key answers its intent; one abandoned after its intent was
/// recorded is taken over with that intent; one held within its lease is busy to others.
async fn keys_follow_their_records(cells: Arc<dyn KeyCells>) {
    let keys = Keys::new(cells);
    let scope = KeyScope::Application { app: 1, token: "t" };
    let key = IdempotencyKey::parse(b"k").unwrap();
    let lease = Duration::from_secs(10);
    let intent = Intent::Command {
        command: create_chat(1, 1),
    };
    let held = |claim: Claim<Held>| match claim {
        Claim::Held(held) => held,
        other => panic!("the key was meant to be held, got {other:?}"),
    };
    let mut first = held(keys.claim(scope, &key, "f", lease).await.unwrap());
    assert_eq!(first.intent(), None);
    assert_eq!(
        keys.claim(scope, &key, "f", lease).await.unwrap(),
        Claim::Busy
    );
    assert_eq!(
        keys.claim(scope, &key, "g", lease).await.unwrap(),
        Claim::Reused
    );
    assert!(keys.record(&mut first, &intent).await.unwrap());
    // The holder fails after recording: the next claim takes the key over, with the intent.
    keys.release(first).await.unwrap();
    let second = held(keys.claim(scope, &key, "f", lease).await.unwrap());
    assert_eq!(second.intent(), Some(&intent));
    keys.finish(second).await.unwrap();
    assert_eq!(
        keys.claim(scope, &key, "f", lease).await.unwrap(),
        Claim::Finished(intent.clone())
    );
    // A holder that fails before recording leaves nothing: the key starts afresh.
    let other = IdempotencyKey::parse(b"other").unwrap();
    let abandoned = held(keys.claim(scope, &other, "f", lease).await.unwrap());
    keys.release(abandoned).await.unwrap();
    assert_eq!(
        held(keys.claim(scope, &other, "f", lease).await.unwrap()).intent(),
        None
    );
    // A holder whose key was taken over can no longer change it.
    let third = IdempotencyKey::parse(b"third").unwrap();
    let mut late = held(keys.claim(scope, &third, "f", lease).await.unwrap());
    keys.release(late.clone()).await.unwrap();
    held(keys.claim(scope, &third, "f", lease).await.unwrap());
    assert!(!keys.record(&mut late, &intent).await.unwrap());
}

adapter_suite!(
    [key_cells_redis => redis_key_cells, key_cells_sqlite => sqlite_key_cells]
    [a_cell_changes_only_from_the_value_expected, keys_follow_their_records]
);
