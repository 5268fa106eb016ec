//! How clients see what the use cases read. The API renders (its JSON shapes, its event-stream
//! frames); the core keeps what is rendered as bytes, so that a page held in a cache, or a change sent
//! to every stream of its chat, is rendered once.

use bytes::Bytes;

use crate::domain::{Application, Chat, ChatEvent, Message};

pub trait Render: Send + Sync {
    /// A page of applications, chats or messages, as a JSON array in the order given.
    fn applications(&self, rows: &[Application]) -> Bytes;
    fn chats(&self, rows: &[Chat]) -> Bytes;
    fn messages(&self, rows: &[Message]) -> Bytes;
    /// Messages a search found, each naming its chat.
    fn found(&self, rows: &[Message]) -> Bytes;
    /// The first bytes of every event stream.
    fn stream_opened(&self) -> Bytes;
    /// What a quiet stream sends now and then, so that idle connections stay open.
    fn heartbeat(&self) -> Bytes;
    /// One change of a chat, as an event of its streams.
    fn event(&self, event: &ChatEvent) -> Bytes;
    /// The last event of a stream whose client fell too far behind, naming where to resume.
    fn overflow(&self, last_event_id: u64) -> Bytes;
}
