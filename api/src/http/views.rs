//! The JSON shapes clients see. Internal ids never appear here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chatsys_core::domain::{Application, Chat, Message};
use chatsys_core::service::NewApplication;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplicationView {
    /// Generated, unguessable; the application's only identifier.
    pub token: String,
    pub name: String,
    pub chats_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatView {
    /// 1, 2, 3… within the application.
    #[schema(minimum = 1)]
    pub number: u64,
    pub messages_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The chat's latest stored change (0 before its first): its event stream opened with `after` set
    /// to this sends every change the chat's state here does not show yet.
    pub last_event_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    /// 1, 2, 3… within the chat.
    #[schema(minimum = 1)]
    pub number: u64,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The stored version this state is (0 before any edit): the `ETag` says it, not the body.
    #[serde(skip)]
    pub version: u64,
}

/// A message a search found, naming its chat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FoundMessageView {
    /// The chat the message is in.
    #[schema(minimum = 1)]
    pub chat_number: u64,
    /// 1, 2, 3… within the chat.
    #[schema(minimum = 1)]
    pub number: u64,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Message> for FoundMessageView {
    fn from(m: &Message) -> Self {
        FoundMessageView {
            chat_number: m.chat_number,
            number: m.number,
            body: m.body.clone(),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<&Application> for ApplicationView {
    fn from(a: &Application) -> Self {
        ApplicationView {
            token: a.token.clone(),
            name: a.name.clone(),
            chats_count: a.chats_count,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

impl From<&Chat> for ChatView {
    fn from(c: &Chat) -> Self {
        ChatView {
            number: c.number,
            messages_count: c.messages_count,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_event_id: c.last_event,
        }
    }
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        MessageView {
            number: m.number,
            body: m.body.clone(),
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
        }
    }
}

impl From<&NewApplication> for ApplicationView {
    fn from(a: &NewApplication) -> Self {
        ApplicationView {
            token: a.token.clone(),
            name: a.name.clone(),
            chats_count: 0,
            created_at: a.created_at,
            updated_at: a.created_at,
        }
    }
}
