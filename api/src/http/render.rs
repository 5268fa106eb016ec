//! What clients read, rendered once: pages of the views as JSON arrays, and a chat's changes as
//! server-sent events. The core keeps the bytes (in its caches, and for every stream of a chat).

use bytes::Bytes;
use chatsys_core::domain::{Application, ChangeKind, Chat, ChatEvent, Message};
use chatsys_core::render::Render;
use serde::Serialize;

use super::views::{ApplicationView, ChatView, FoundMessageView, MessageView};

/// The API's JSON and event-stream shapes.
pub struct ApiRender;

fn json_array<'a, T: 'a, V: Serialize>(rows: &'a [T], view: impl Fn(&'a T) -> V) -> Bytes {
    let views: Vec<V> = rows.iter().map(view).collect();
    serde_json::to_vec(&views).expect("views serialise").into()
}

/// The first bytes of every stream: how long a client waits before it reconnects.
const RETRY: &[u8] = b"retry: 1000\n\n";
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

impl Render for ApiRender {
    fn applications(&self, rows: &[Application]) -> Bytes {
        json_array(rows, ApplicationView::from)
    }

    fn chats(&self, rows: &[Chat]) -> Bytes {
        json_array(rows, ChatView::from)
    }

    fn messages(&self, rows: &[Message]) -> Bytes {
        json_array(rows, MessageView::from)
    }

    fn found(&self, rows: &[Message]) -> Bytes {
        json_array(rows, FoundMessageView::from)
    }

    fn stream_opened(&self) -> Bytes {
        Bytes::from_static(RETRY)
    }

    fn heartbeat(&self) -> Bytes {
        Bytes::from_static(HEARTBEAT)
    }

    /// `id:` the change's number (the cursor to resume after), `event:` what happened, `data:` the
    /// message as `GET …/messages/{number}` shows it. JSON has no raw line breaks, so `data` is one
    /// line. A deletion's `data` names what was deleted and when: `{"number","deleted_at"}` for a
    /// message, `{"deleted_at"}` for the chat, which is its stream's last event.
    fn event(&self, event: &ChatEvent) -> Bytes {
        let m = &event.message;
        let view = || serde_json::to_string(&MessageView::from(m)).expect("views serialise");
        let (name, data) = match event.kind {
            ChangeKind::Created => ("message.created", view()),
            ChangeKind::Edited => ("message.edited", view()),
            ChangeKind::Deleted => (
                "message.deleted",
                serde_json::json!({ "number": m.number, "deleted_at": m.updated_at }).to_string(),
            ),
            ChangeKind::ChatDeleted => (
                "chat.deleted",
                serde_json::json!({ "deleted_at": m.updated_at }).to_string(),
            ),
        };
        Bytes::from(format!(
            "id: {}\nevent: {name}\ndata: {data}\n\n",
            event.seq
        ))
    }

    /// The client resumes after its last id.
    fn overflow(&self, last_event_id: u64) -> Bytes {
        Bytes::from(format!(
            "event: stream.overflow\ndata: {{\"reason\":\"the client read too slowly; resume after the last id\",\"last_event_id\":\"{last_event_id}\"}}\n\n"
        ))
    }
}
