//! The MySQL store's behaviour around its connection: migrations run by many processes at once, and
//! how a database that refuses us is reported. MariaDB must be running: a missing one fails the test.
//! Each test drops the databases it made, passed or failed.

use chatsys_adapters::mysql::MySqlStore;
use chatsys_core::CoreError;
use chatsys_core::ports::Store;

// The conformance crate's, which this crate's tests cannot depend on (it depends on the adapters); these
// tests make only databases, so the rest of it goes unused here.
#[allow(dead_code)]
use chatsys_scratch as scratch;
use scratch::Scratch;

use scratch::{mysql_admin as admin, mysql_server as server};

/// An empty database, dropped with the scratch returned. Named like the other suites'
/// (`chatsys_t<seconds>_<random>`), so that their sweep of databases over an hour old removes it if the
/// test's process is killed before the scratch can.
async fn empty_database() -> (String, Scratch) {
    let name = format!(
        "chatsys_t{}_{:08x}",
        chrono::Utc::now().timestamp(),
        rand::random::<u32>()
    );
    let mut scratch = Scratch::default();
    scratch.owns_database(&server(), &name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut admin().await)
        .await
        .unwrap();
    (name, scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_one_empty_database_at_once_all_succeed() {
    let (name, _scratch) = empty_database().await;
    let url = format!("{}/{name}", server());
    let mut runs = Vec::new();
    for _ in 0..8 {
        let store = MySqlStore::connect(&url, 2).unwrap();
        runs.push(tokio::spawn(async move { store.migrate().await }));
    }
    for run in runs {
        run.await
            .unwrap()
            .expect("every concurrent migration succeeds");
    }
    let mut conn = admin().await;
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT table_name FROM information_schema.tables WHERE table_schema = ?")
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut tables: Vec<String> = tables.into_iter().map(|(t,)| t).collect();
    tables.sort();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "applications",
            "chat_events",
            "chats",
            "messages"
        ]
    );
    let applied: Vec<(i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, success FROM `{name}`._sqlx_migrations"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        applied,
        [(1, true), (2, true), (3, true), (4, true)],
        "each migration is applied once"
    );
    // A later start finds everything applied.
    MySqlStore::connect(&url, 1)
        .unwrap()
        .migrate()
        .await
        .unwrap();
}

fn assert_unavailable(what: &str, result: Result<(), CoreError>) {
    match result {
        Err(e @ CoreError::Unavailable { .. }) => assert!(e.is_transient()),
        other => panic!("{what}: expected the database to be unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_the_credentials_is_unavailable() {
    let server = server();
    let (scheme, rest) = server.split_once("://").expect("a URL");
    let (user_info, host) = rest.split_once('@').expect("a URL with a user");
    let user = user_info.split(':').next().unwrap();
    let wrong = format!("{scheme}://{user}:chatsys-wrong-password@{host}/mysql");
    let store = MySqlStore::connect(&wrong, 1).unwrap();
    assert_unavailable("ping", store.ping().await);
    assert_unavailable("read", store.application(1).await.map(|_| ()));
    assert_unavailable("migrate", store.migrate().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_or_has_no_schema_is_unavailable() {
    let missing = format!("chatsys_missing_{:08x}", rand::random::<u32>());
    let store = MySqlStore::connect(&format!("{}/{missing}", server()), 1).unwrap();
    assert_unavailable("ping", store.ping().await);

    // Not migrated yet (an operator's migration job still running): the worker must retry, not
    // dead-letter the commands.
    let (name, _scratch) = empty_database().await;
    let store = MySqlStore::connect(&format!("{}/{name}", server()), 1).unwrap();
    store.ping().await.unwrap();
    assert_unavailable("read", store.application(1).await.map(|_| ()));
}

fn assert_schema_refused(what: &str, result: Result<(), CoreError>) {
    match result {
        Err(e @ CoreError::Schema(_)) => assert!(!e.is_transient(), "{what}: {e}"),
        other => panic!("{what}: expected the schema to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_this_version_cannot_migrate_fails_at_once_rather_than_waiting() {
    let (name, _scratch) = empty_database().await;
    let url = format!("{}/{name}", server());
    let store = MySqlStore::connect(&url, 1).unwrap();
    store.migrate().await.expect("a fresh database migrates");
    let mut conn = admin().await;
    let table = format!("`{name}`._sqlx_migrations");

    // A newer release applied a migration this one does not know: a rolled-back image.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (99, 'from a newer release', TRUE, x'00', 1)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), store.migrate())
        .await
        .expect("refused at once, not retried");
    assert_schema_refused("unknown applied version", outcome);

    // An applied migration whose text changed since.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE version = 99"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET checksum = x'00' WHERE version = 1"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_schema_refused("changed checksum", store.migrate().await);
}

/// The rows the one connection of `store` has read from indexes and sorted so far (its session's
/// handler counters: every row an index walk reads, forwards or backwards, counts once).
async fn rows_read_and_sorted(store: &MySqlStore) -> (u64, u64) {
    let status: Vec<(String, String)> = sqlx::query_as(
        "SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_prev', \
         'Handler_read_rnd_next', 'Sort_rows')",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let value = |names: &[&str]| -> u64 {
        status
            .iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(_, value)| value.parse::<u64>().unwrap())
            .sum()
    };
    (
        value(&[
            "Handler_read_next",
            "Handler_read_prev",
            "Handler_read_rnd_next",
        ]),
        value(&["Sort_rows"]),
    )
}

/// The newest page of a long chat is read from the end of the primary key backwards: about as many
/// rows as the page holds, like the oldest page, and nothing sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_first_page_walks_the_index_backwards_without_a_sort() {
    use chatsys_core::command::Command;
    use chatsys_core::domain::{Order, Page};
    let (name, _scratch) = empty_database().await;
    let store = MySqlStore::connect(&format!("{}/{name}", server()), 1).unwrap();
    store.migrate().await.unwrap();
    let at = chrono::Utc::now();
    let app = store
        .create_application(&chatsys_core::domain::generate_token(), "order", at)
        .await
        .unwrap()
        .id;
    let mut commands = vec![Command::CreateChat {
        application_id: app,
        number: 1,
        at,
    }];
    commands.extend((1..=2000).map(|number| Command::CreateMessage {
        application_id: app,
        chat_number: 1,
        chat_created_at: at,
        number,
        body: format!("message {number}"),
        at,
    }));
    store.apply(&commands).await.unwrap();
    let mut costs = Vec::new();
    for order in [Order::Asc, Order::Desc] {
        let page = Page {
            order,
            ..Page::first(10)
        };
        // What reading the counters costs by itself, to take off.
        let first = rows_read_and_sorted(&store).await;
        let before = rows_read_and_sorted(&store).await;
        let rows = store.list_messages(app, 1, page.scan()).await.unwrap();
        let after = rows_read_and_sorted(&store).await;
        let numbers: Vec<u64> = rows.messages.iter().map(|m| m.number).collect();
        match order {
            Order::Asc => assert_eq!(numbers, (1..=11).collect::<Vec<_>>()),
            Order::Desc => assert_eq!(numbers, (1990..=2000).rev().collect::<Vec<_>>()),
        }
        assert_eq!(rows.last_event, 2000);
        let read = (after.0 - before.0).saturating_sub(before.0 - first.0);
        let sorted = (after.1 - before.1).saturating_sub(before.1 - first.1);
        assert_eq!(sorted, 0, "{order:?}: rows sorted");
        costs.push(read);
    }
    // A page of 10 reads its 11 rows; a scan of the chat would read 2,000.
    assert!(
        costs.iter().all(|read| *read <= 20),
        "rows read per page: {costs:?}"
    );
}
