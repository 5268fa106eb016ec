//! A chat's live event stream (server-sent events).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use chatsys_core::CoreError;
use chatsys_core::domain::canonical_number;
use chatsys_runtime::server::LongLived;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiResult;
use super::extract::{PathParams, Query};
use super::params::{ChatPath, EventsQuery};
use super::{AppState, Shared};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Follow a chat
///
/// A stream of server-sent events (`text/event-stream`), one per message created or edited in the chat,
/// in the order the chat's messages were stored, each once it is stored (and so listed and searchable):
///
/// ```text
/// id: 42
/// event: message.created
/// data: {"number":7,"body":"hello","created_at":"…","updated_at":"…"}
/// ```
///
/// `event` is `message.created` or `message.edited`; `data` is the message as
/// `GET …/messages/{number}` shows it; `id` is a cursor. A client that reconnects with the last `id` it
/// received, in `Last-Event-ID` (browsers' `EventSource` does this by itself) or in `after`, first gets
/// every change it missed, then the live ones, none twice. Missed changes come as they are now: a
/// message created and edited meanwhile comes once, as `message.created` with its latest body. Without
/// either, the stream starts with the next change.
///
/// A comment line (`: heartbeat`) comes after 15 s without an event. A client that reads too slowly gets
/// a last event `stream.overflow` and the stream ends: it reconnects with its last id. The stream also
/// ends when the server shuts down; the client reconnects the same way, to any replica.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}/events", tag = "chats",
    operation_id = "chats_events", params(ChatPath, EventsQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "The `id` of the last event received; wins over `after` (a reconnecting `EventSource` sends it with the URL it first opened)")),
    responses(
        (status = 200, description = "The chat's events, until the client disconnects", content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = match headers.get("last-event-id") {
        Some(id) => Some(cursor(id.to_str().ok(), "Last-Event-ID")?),
        None => match query.after.as_deref() {
            Some(after) => Some(cursor(Some(after), "after")?),
            None => None,
        },
    };
    let events = state
        .service
        .chat_events(&path.token.0, path.number.0, after)
        .await?;
    let mut response = Response::new(Body::from_stream(futures::StreamExt::map(
        events,
        Ok::<_, std::convert::Infallible>,
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx (and the ingress controllers built on it) pass the stream on as it is written.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(LongLived);
    Ok(response)
}

/// An event id: the number of a change, as the stream wrote it.
fn cursor(raw: Option<&str>, name: &'static str) -> Result<u64, CoreError> {
    raw.and_then(canonical_number)
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| CoreError::invalid_query(name, "must be an event id the stream sent"))
}
