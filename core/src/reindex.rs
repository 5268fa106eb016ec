//! Rebuilds the search index from the store: every live message of every application, chat by chat, a
//! page at a time. For an index that is new (a release that changed what the index holds) or lost:
//! indexing is idempotent, so running it over an index that holds some of the messages, or while the
//! worker indexes new ones, is harmless.

use crate::domain::{AppId, Scan};
use crate::error::CoreResult;
use crate::ports::{Search, Store};

/// Rows read per page: messages are indexed a page at a time.
const PAGE: u32 = 1000;

/// Indexes every live message the store holds; returns how many it sent to the index. A message the
/// index refuses for good is logged and skipped.
pub async fn reindex(store: &dyn Store, search: &dyn Search) -> CoreResult<u64> {
    let mut indexed = 0;
    let mut after_app: Option<AppId> = None;
    loop {
        let applications = store.list_applications(after_app, PAGE).await?;
        let Some(last) = applications.last() else {
            return Ok(indexed);
        };
        after_app = Some(last.id);
        for application in &applications {
            let app = application.id;
            let mut after_chat = 0;
            loop {
                let chats = store.list_chats(app, up_from(after_chat)).await?;
                let Some(last) = chats.last() else { break };
                after_chat = last.number;
                for chat in &chats {
                    let mut after_message = 0;
                    loop {
                        let page = store
                            .list_messages(app, chat.number, up_from(after_message))
                            .await?
                            .messages;
                        let Some(last) = page.last() else { break };
                        after_message = last.number;
                        for refusal in search.index(&page).await? {
                            tracing::warn!(message = ?refusal.key, reason = %refusal.reason, "not indexed");
                        }
                        indexed += page.len() as u64;
                    }
                }
            }
        }
    }
}

fn up_from(after: u64) -> Scan {
    Scan::Up {
        after,
        below: None,
        limit: PAGE,
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::adapters::embedded_search::EmbeddedSearch;
    use crate::adapters::sqlite;
    use crate::command::Command;
    use crate::search_text::{SearchOrder, SearchRequest, SearchScope, SearchTerms};

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
                .create_application(&crate::domain::generate_token(), name, at)
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
}
