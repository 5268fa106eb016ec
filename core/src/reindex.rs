//! Rebuilds the search index from the store: every live message of every application, chat by chat, a
//! page at a time. For an index that is new (a release that changed what the index holds) or lost:
//! indexing is idempotent, so running it over an index that holds some of the messages, or while the
//! worker indexes new ones, is harmless.

use crate::domain::{AppId, Scan};
use crate::error::CoreResult;
use crate::ports::{Search, Store};

/// Rows read per page: messages are indexed a page at a time.
pub const PAGE: u32 = 1000;

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
