//! Rebuilding the search index from the store, for real: SQLite and the embedded index.

use chrono::DateTime;

use chatsys_adapters::embedded_search::EmbeddedSearch;
use chatsys_adapters::sqlite;
use chatsys_core::command::Command;
use chatsys_core::ports::{Search, Store};
use chatsys_core::reindex::{PAGE, reindex};
use chatsys_core::search_text::{SearchOrder, SearchRequest, SearchScope, SearchTerms};

/// An index that never saw the store's messages (new with a release, or lost) finds every live
/// message once rebuilt, across applications, chats and pages, and no deleted one.
#[tokio::test]
async fn a_new_index_finds_every_live_message_once_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::new(sqlite::open(&dir.path().join("db")).await.unwrap());
    store.migrate().await.unwrap();
    let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let mut apps = Vec::new();
    for name in ["one", "two"] {
        let app = store
            .create_application(&chatsys_core::domain::generate_token(), name, at)
            .await
            .unwrap()
            .id;
        let mut commands = Vec::new();
        for chat in 1..=3 {
            for number in 1..=(PAGE as u64 + 5) {
                commands.push(Command::CreateMessage {
                    application_id: app,
                    chat_number: chat,
                    chat_created_at: at,
                    number,
                    body: format!("plover {chat}.{number}."),
                    at,
                });
            }
        }
        commands.push(Command::DeleteMessage {
            application_id: app,
            chat_number: 2,
            chat_created_at: at,
            number: 7,
            version: 9,
            created_at: at,
            at,
        });
        store.apply(&commands).await.unwrap();
        apps.push(app);
    }
    let search = EmbeddedSearch::open(&dir.path().join("search"), true).unwrap();
    let per_app = 3 * (PAGE as u64 + 5) - 1;
    assert_eq!(reindex(&store, &search).await.unwrap(), 2 * per_app);
    for app in apps {
        let found = |q: &str| {
            let search = search.clone();
            let request = SearchRequest {
                scope: SearchScope { app, chat: None },
                terms: SearchTerms::parse(q).unwrap(),
                order: SearchOrder::Newest,
                after: None,
                limit: 1000,
            };
            async move { search.search(&request).await.unwrap().messages.len() }
        };
        assert_eq!(found("\"plover 3.1005.\"").await, 1, "past the first page");
        assert_eq!(found("\"plover 1.1.\"").await, 1);
        assert_eq!(found("\"plover 2.7.\"").await, 0, "the deleted message");
    }
}
