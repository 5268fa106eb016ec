use std::sync::Arc;

use crate::http::views::ChatView;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::conditional::{IfNoneMatch, Tagged};
use super::error::ApiResult;
use super::extract::{IdempotencyKeyHeader, OptionalJson, PathParams, Query};
use super::params::{ApplicationPath, ChatPath, ListQuery};
use super::{AppState, ListLinks, Shared, created, list_response};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, delete))
}

/// A chat's creation body: a JSON object whose members are all ignored (a chat has nothing to set yet),
/// so clients that always send `{}` are served.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct NewChat {}

/// Start a chat
///
/// Numbers the chat at once (1, 2, 3… within the application) and queues its storage: the chat is
/// readable right away and listed once the worker has stored it. The body may be left out, or be `{}`.
#[utoipa::path(post, path = "/applications/{token}/chats", tag = "chats", operation_id = "chats_create",
    params(ApplicationPath, IdempotencyKeyHeader),
    request_body(content = Option<NewChat>, description = "Optional; no member is read"),
    responses(
        (status = 201, description = "Accepted and numbered", body = ChatView,
            headers(
                ("Location" = String, description = "The new chat's path"),
                ("ETag" = String, description = "The chat's state")))))]
pub async fn create(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    OptionalJson(_): OptionalJson<NewChat>,
) -> ApiResult<Response> {
    let token = path.token.0;
    let chat = state.service.create_chat(&token, key.as_ref()).await?;
    let view = ChatView::from(&chat.resource);
    let etag = view.etag();
    let mut response = created(
        format!("/applications/{token}/chats/{}", view.number),
        view,
        chat.replayed,
    );
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// List an application's chats
///
/// Stored chats by number, oldest first or with `order=desc` newest first, a page at a time: follow the
/// `Link` header's `rel="next"` until there is none (`rel="prev"` leads back).
#[utoipa::path(get, path = "/applications/{token}/chats", tag = "chats", operation_id = "chats_list",
    params(ApplicationPath, ListQuery),
    responses(
        (status = 200, description = "A page of chats, by number in the order asked", body = [ChatView],
            headers(("Link" = String, description = "`<…>; rel=\"next\"` while the list goes on, and `<…>; rel=\"prev\"` when the page was asked for next to a cursor, both in the same order")))))]
pub async fn list(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let page = query.page()?;
    let token = path.token.0;
    let chats = state.service.list_chats(&token, page).await?;
    Ok(list_response(
        chats,
        &format!("/applications/{token}/chats"),
        &ListLinks::of(page),
    ))
}

/// Read a chat
///
/// The chat with its `messages_count` and `last_event_id`, including a chat accepted but not stored
/// yet, with its `ETag`.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}", tag = "chats", operation_id = "chats_read",
    params(ChatPath, IfNoneMatch),
    responses(
        (status = 200, description = "The chat", body = ChatView,
            headers(("ETag" = String, description = "The chat's state, for `If-None-Match`"))),
        (status = 304, description = "The chat is still in the state `If-None-Match` named",
            headers(("ETag" = String, description = "The chat's state")))))]
pub async fn read(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    if_none_match: IfNoneMatch,
) -> ApiResult<Response> {
    let chat = state.service.chat(&path.token.0, path.number.0).await?;
    Ok(if_none_match.answer(ChatView::from(&chat)))
}

/// Delete a chat
///
/// Queues the deletion of the chat with all its messages and answers at once: from then on the chat and
/// its messages answer 404 (on every replica within a second); the application's `chats_count`, its list
/// of chats and search forget it once the worker has stored the delete, and the chat's event streams end
/// with `chat.deleted`. Its number is never used again.
#[utoipa::path(delete, path = "/applications/{token}/chats/{number}", tag = "chats", operation_id = "chats_delete",
    params(ChatPath),
    responses((status = 202, description = "Deleted (the worker removes its messages)")))]
pub async fn delete(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
) -> ApiResult<StatusCode> {
    state
        .service
        .delete_chat(&path.token.0, path.number.0)
        .await?;
    Ok(StatusCode::ACCEPTED)
}
