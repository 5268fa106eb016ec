//! A chat's live event stream (server-sent events).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use chatsys_core::CoreError;
use chatsys_core::domain::canonical_number;
use chatsys_core::reads::TOKEN_RECHECK;
use chatsys_runtime::server::LongLived;
use futures::StreamExt;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
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
/// either, or with an id beyond the chat's last change, the stream starts with the next change.
///
/// A comment line (`: heartbeat`) comes after 15 s without an event. A client that reads too slowly gets
/// a last event `stream.overflow` and the stream ends: it reconnects with its last id. The stream also
/// ends when the server shuts down; the client reconnects the same way, to any replica. It ends for good
/// when its token is replaced (the reconnection is answered 404).
#[utoipa::path(get, path = "/applications/{token}/chats/{number}/events", tag = "chats",
    operation_id = "chats_events", params(ChatPath, EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^(0|[1-9][0-9]{0,17})$",
            description = "The `id` of the last event received; wins over `after` (a reconnecting `EventSource` sends it with the URL it first opened)")),
    responses(
        (status = 200, description = "The chat's events, until the client disconnects: each event as an SSE client reads it", content_type = "text/event-stream", body = ChatEvent)))]
pub async fn stream(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Both are checked when both are given; the header wins.
    let after = match query.after.as_deref() {
        Some(after) => Some(cursor(Some(after), "after")?),
        None => None,
    };
    let after = match headers.get("last-event-id") {
        Some(id) => Some(cursor(id.to_str().ok(), "Last-Event-ID")?),
        None => after,
    };
    let token = path.token.0;
    let events = state
        .service
        .chat_events(&token, path.number.0, after)
        .await?;
    let events = events.take_until(Box::pin(token_replaced(state.clone(), token)));
    let mut response = Response::new(Body::from_stream(
        events.map(Ok::<_, std::convert::Infallible>),
    ));
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

/// Resolves once the token names no application (it was replaced): a stream opened with it ends.
async fn token_replaced(state: Arc<AppState>, token: String) {
    loop {
        tokio::time::sleep(TOKEN_RECHECK).await;
        if let Err(CoreError::NotFound(_)) = state.service.authorize(&token).await {
            return;
        }
    }
}

/// One event of a chat's stream, as an SSE client reads it: each property is a field of the event.
pub struct ChatEvent;

/// An event id as the server writes it.
const EVENT_ID_PATTERN: &str = "^(0|[1-9][0-9]*)$";

fn text() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

impl PartialSchema for ChatEvent {
    fn schema() -> RefOr<Schema> {
        let changed = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("A message created or edited, once stored"))
            .property(
                "event",
                text().enum_values(Some(["message.created", "message.edited"])),
            )
            .property(
                "id",
                text().pattern(Some(EVENT_ID_PATTERN)).description(Some(
                    "The change's number in its chat: the cursor to resume after",
                )),
            )
            .property(
                "data",
                text()
                    .content_media_type("application/json")
                    .content_schema(Some(Ref::from_schema_name("MessageView")))
                    .description(Some("The message as `GET …/messages/{number}` shows it")),
            )
            .required("event")
            .required("id")
            .required("data");
        let overflow = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The last event of a stream whose client read too slowly: reconnect with the last id",
            ))
            .property("event", text().enum_values(Some(["stream.overflow"])))
            .property("id", text().pattern(Some(EVENT_ID_PATTERN)))
            .property(
                "data",
                text().content_media_type("application/json").content_schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .property("reason", text())
                        .property("last_event_id", text().pattern(Some(EVENT_ID_PATTERN)))
                        .required("reason")
                        .required("last_event_id"),
                )),
            )
            .required("event")
            .required("data");
        OneOfBuilder::new().item(changed).item(overflow).into()
    }
}

impl ToSchema for ChatEvent {}

/// An event id: the number of a change, as the stream wrote it.
fn cursor(raw: Option<&str>, name: &'static str) -> Result<u64, CoreError> {
    raw.and_then(canonical_number)
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| CoreError::invalid_query(name, "must be an event id the stream sent"))
}
