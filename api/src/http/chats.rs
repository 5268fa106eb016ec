use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chatsys_core::view::ChatView;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiResult;
use super::extract::{IdempotencyKeyHeader, OptionalJson, PathParams, Query};
use super::params::{ApplicationPath, ChatPath, PageQuery};
use super::{AppState, Shared, created, list_response};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read))
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
            headers(("Location" = String, description = "The new chat's path")))))]
pub async fn create(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    OptionalJson(_): OptionalJson<NewChat>,
) -> ApiResult<Response> {
    let token = path.token.0;
    let chat = state.service.create_chat(&token, key.as_ref()).await?;
    Ok(created(
        format!("/applications/{token}/chats/{}", chat.view.number),
        chat,
    ))
}

/// List an application's chats
///
/// Chats in number order, a page at a time: follow the `Link` header's `rel="next"` until there is none.
#[utoipa::path(get, path = "/applications/{token}/chats", tag = "chats", operation_id = "chats_list",
    params(ApplicationPath, PageQuery),
    responses(
        (status = 200, description = "A page of chats, by number", body = [ChatView],
            headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, while there is one")))))]
pub async fn list(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Response> {
    let page = query.page()?;
    let token = path.token.0;
    let chats = state.service.list_chats(&token, page).await?;
    Ok(list_response(
        chats,
        &format!("/applications/{token}/chats"),
        page.limit,
        &[],
    ))
}

/// Read a chat
///
/// The chat with its `messages_count`, including a chat accepted but not stored yet.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}", tag = "chats", operation_id = "chats_read",
    params(ChatPath),
    responses((status = 200, description = "The chat", body = ChatView)))]
pub async fn read(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
) -> ApiResult<Json<ChatView>> {
    Ok(Json(
        state.service.chat(&path.token.0, path.number.0).await?,
    ))
}
